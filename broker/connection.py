"""Broker connection settings: one frozen config, pika parameters built in one place."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.adapters.utils.connection_workflow

from keys.errors import CipherpostError
from keys.keystore import read_private_file, write_private_file

HEARTBEAT_S = 20
BLOCKED_CONNECTION_TIMEOUT_S = 60.0
SOCKET_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 30.0
RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 15.0


class BrokerError(CipherpostError):
    """The broker could not be reached or refused us (exit code 1)."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where and as whom to connect. The password never goes into logs or reprs."""

    login: str
    password: str
    host: str = "127.0.0.1"
    port: int = 5672
    vhost: str = "/"
    heartbeat: int = HEARTBEAT_S
    # An agency's own queues, named by provisioning with a secret suffix (broker/topology.py);
    # empty for the gateway's, witness's and cipher department's logins.
    inbox: str = ""
    feed: str = ""

    def __repr__(self) -> str:
        return (
            f"BrokerConfig(login={self.login!r}, host={self.host!r}, port={self.port},"
            f" vhost={self.vhost!r})"
        )

    def parameters(self) -> pika.ConnectionParameters:
        """pika parameters: heartbeats on, blocked-connection timeout set."""
        return pika.ConnectionParameters(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.login, self.password),
            heartbeat=self.heartbeat,
            blocked_connection_timeout=BLOCKED_CONNECTION_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            # The whole TCP + AMQP handshake: a busy node (a burst of agents starting, many
            # queues being declared) can take longer than a socket timeout to say hello.
            stack_timeout=HANDSHAKE_TIMEOUT_S,
            connection_attempts=1,
            client_properties={"connection_name": f"cipherpost {self.login}"},
        )

    def agency_queues(self) -> tuple[str, str]:
        """The agency's inbox and directory-feed queue names, from its credentials file."""
        if not (self.inbox and self.feed):
            raise BrokerError(
                f"the credentials of {self.login!r} name no inbox queue (written before queue"
                f" names were private): ask the cipher department for new ones"
                f" (`cipherpost broker rotate {self.login}`)"
            )
        return self.inbox, self.feed

    def describe(self) -> str:
        """For messages: no password."""
        return (
            f"amqp://{self.login}@{self.host}:{self.port}/{urllib.parse.quote(self.vhost, safe='')}"
        )

    def to_json(self) -> str:
        fields: dict[str, object] = {
            "login": self.login,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "vhost": self.vhost,
        }
        if self.inbox or self.feed:
            fields["queues"] = {"inbox": self.inbox, "feed": self.feed}
        return json.dumps(fields, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> BrokerConfig:
        """Read a credentials file written by provisioning (must be mode 0600)."""
        try:
            raw = json.loads(read_private_file(path, 64 * 1024))
            return cls(
                login=str(raw["login"]),
                password=str(raw["password"]),
                host=str(raw.get("host", "127.0.0.1")),
                port=int(raw.get("port", 5672)),
                vhost=str(raw.get("vhost", "/")),
                inbox=str(raw.get("queues", {}).get("inbox", "")),
                feed=str(raw.get("queues", {}).get("feed", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BrokerError(f"{path}: not a broker credentials file") from e

    def save(self, path: Path) -> None:
        """Write the credentials file, mode 0600."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(path, self.to_json().encode())


def connect_blocking(config: BrokerConfig) -> pika.BlockingConnection:
    """One blocking connection; errors become :class:`BrokerError` with a clear reason."""
    try:
        return pika.BlockingConnection(config.parameters())
    except pika.exceptions.ProbableAuthenticationError as e:
        raise BrokerError(f"broker refused the login {config.login!r} (wrong credentials?)") from e
    except pika.exceptions.ProbableAccessDeniedError as e:
        raise BrokerError(f"broker denied {config.login!r} access to vhost {config.vhost!r}") from e
    except (
        pika.exceptions.AMQPError,
        pika.adapters.utils.connection_workflow.AMQPConnectorException,
        pika.adapters.utils.connection_workflow.AMQPConnectionWorkflowFailed,
    ) as e:
        raise BrokerError(f"broker not reachable at {config.describe()}: {type(e).__name__}") from e
    except OSError as e:
        raise BrokerError(f"broker not reachable at {config.describe()}: {e.strerror or e}") from e
