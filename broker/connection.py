"""Broker connection settings: one frozen config, pika parameters built in one place."""

from __future__ import annotations

import json
import random
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.adapters.utils.connection_workflow
import pika.credentials

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
class TlsFiles:
    """TLS for the broker link: the CA that issued the nodes' certificates, and (for
    certificate login) this client's certificate and key. ``server_name`` is checked against
    the node certificates (default: the host connected to)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def context(self) -> ssl.SSLContext:
        """A client context: the nodes' CA pinned, host names checked, TLS 1.2 at least."""
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert is not None:
                ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        except (OSError, ssl.SSLError) as e:
            raise BrokerError(
                f"cannot load the broker TLS files ({self.ca}, {self.cert}): {e}"
            ) from e
        return ctx


@dataclass(frozen=True)
class BrokerConfig:
    """Where and as whom to connect. The password never goes into logs or reprs.

    ``host``/``port`` is the first node; ``nodes`` (when given) lists every node of a
    cluster, tried in shuffled order. With ``tls`` carrying a client certificate and no
    password, the login is the certificate (SASL EXTERNAL; the broker takes the login from
    its common name).
    """

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
    nodes: tuple[tuple[str, int], ...] = ()
    tls: TlsFiles | None = None

    def __repr__(self) -> str:
        return (
            f"BrokerConfig(login={self.login!r}, nodes={self.endpoints!r},"
            f" vhost={self.vhost!r}, tls={self.tls is not None})"
        )

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Every node, (host, port), in the configured order."""
        return self.nodes or ((self.host, self.port),)

    @property
    def certificate_login(self) -> bool:
        """Whether the broker takes the login from the client certificate (EXTERNAL)."""
        return self.tls is not None and self.tls.cert is not None and not self.password

    def parameters(self, node: int = 0) -> pika.ConnectionParameters:
        """pika parameters for one node (by index into :attr:`endpoints`): heartbeats on,
        blocked-connection timeout set, TLS and certificate login when configured."""
        host, port = self.endpoints[node % len(self.endpoints)]
        credentials: pika.credentials.VALID_TYPES[0] | pika.credentials.VALID_TYPES[1]
        if self.certificate_login:
            credentials = pika.credentials.ExternalCredentials()
        else:
            credentials = pika.PlainCredentials(self.login, self.password)
        ssl_options = None
        if self.tls is not None:
            ssl_options = pika.SSLOptions(self.tls.context(), self.tls.server_name or host)
        return pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=self.vhost,
            credentials=credentials,
            ssl_options=ssl_options,
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

    def node_order(self) -> list[int]:
        """The nodes' indexes in a fresh random order: clients spread over the cluster, and
        a failed node is not everybody's first try again."""
        order = list(range(len(self.endpoints)))
        random.shuffle(order)
        return order

    def parameter_list(self) -> list[pika.ConnectionParameters]:
        """Parameters for every node, shuffled (pika tries them in turn)."""
        return [self.parameters(i) for i in self.node_order()]

    def where(self) -> str:
        """The nodes as ``host:port,host:port`` (for messages)."""
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    def describe(self) -> str:
        """For messages: no password."""
        scheme = "amqps" if self.tls is not None else "amqp"
        hosts = self.where()
        return f"{scheme}://{self.login}@{hosts}/{urllib.parse.quote(self.vhost, safe='')}"

    def to_json(self, base: Path | None = None) -> str:
        """The credentials file; TLS paths relative to ``base`` (its folder) when inside it."""
        doc: dict[str, object] = {"login": self.login, "password": self.password}
        if self.nodes:
            doc["nodes"] = [[h, p] for h, p in self.nodes]
        else:
            doc["host"], doc["port"] = self.host, self.port
        doc["vhost"] = self.vhost
        if self.tls is not None:
            tls: dict[str, str] = {"ca": _rel(self.tls.ca, base)}
            if self.tls.cert is not None:
                tls["cert"] = _rel(self.tls.cert, base)
            if self.tls.key is not None:
                tls["key"] = _rel(self.tls.key, base)
            if self.tls.server_name:
                tls["server_name"] = self.tls.server_name
            doc["tls"] = tls
        if self.inbox or self.feed:
            doc["queues"] = {"inbox": self.inbox, "feed": self.feed}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> BrokerConfig:
        """Read a credentials file written by provisioning (must be mode 0600).

        ``{"login", "password", "vhost", "host", "port"}``, or for a cluster ``"nodes":
        [[host, port], ...]``; ``"tls": {"ca", "cert", "key", "server_name"}`` (paths
        relative to the file's folder). ``password`` is empty with certificate login.
        """
        try:
            raw = json.loads(read_private_file(path, 64 * 1024))
            nodes = tuple((str(h), int(p)) for h, p in raw.get("nodes", ()))
            tls = None
            if "tls" in raw:
                t = raw["tls"]
                tls = TlsFiles(
                    ca=path.parent / str(t["ca"]),
                    cert=path.parent / str(t["cert"]) if "cert" in t else None,
                    key=path.parent / str(t["key"]) if "key" in t else None,
                    server_name=str(t["server_name"]) if "server_name" in t else None,
                )
            first = (
                nodes[0]
                if nodes
                else (str(raw.get("host", "127.0.0.1")), int(raw.get("port", 5672)))
            )
            config = cls(
                login=str(raw["login"]),
                password=str(raw.get("password", "")),
                host=first[0],
                port=first[1],
                vhost=str(raw.get("vhost", "/")),
                inbox=str(raw.get("queues", {}).get("inbox", "")),
                feed=str(raw.get("queues", {}).get("feed", "")),
                nodes=nodes,
                tls=tls,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BrokerError(f"{path}: not a broker credentials file") from e
        if not config.password and not config.certificate_login:
            raise BrokerError(f"{path}: neither a password nor a TLS client certificate")
        return config

    def save(self, path: Path) -> None:
        """Write the credentials file, mode 0600."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(path, self.to_json(path.parent).encode())


def _rel(p: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return str(p.resolve())


class Backoff:
    """Reconnect delays: doubling from :data:`RECONNECT_INITIAL_S` up to
    :data:`RECONNECT_MAX_S`, each drawn at random from its upper half, so that the clients of
    a failed node do not all knock on the survivors at the same instant."""

    def __init__(self) -> None:
        self._ceiling = RECONNECT_INITIAL_S

    def reset(self) -> None:
        self._ceiling = RECONNECT_INITIAL_S

    def next(self) -> float:
        delay = random.uniform(self._ceiling / 2, self._ceiling)  # noqa: S311 - jitter
        self._ceiling = min(self._ceiling * 2, RECONNECT_MAX_S)
        return delay


def connect_blocking(config: BrokerConfig) -> pika.BlockingConnection:
    """One blocking connection; errors become :class:`BrokerError` with a clear reason."""
    try:
        return pika.BlockingConnection(config.parameter_list())
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
