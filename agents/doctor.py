"""``cipherpost doctor --config AGENT.toml``: check an agent end to end, one line per check.

Each check prints ``ok``, ``WARN`` or ``FAIL``, what it found and, for a
failure, the fix. Later checks that depend on a failed one are skipped (and
say so). Exit code 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika

from agents.config import AgentConfig
from broker.connection import BrokerConfig, BrokerError, connect_blocking
from broker.topology import submit_queue
from keys.agency import PUBLIC_FILE, TRUST_FILE, AgencyKeys, load_agency
from keys.ca import load_ca_certificate
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState
from keys.errors import CipherpostError, KeyStoreError, Refused

CERT_WARNING_DAYS = 30
DIRECTORY_WARNING = dt.timedelta(days=1)


@dataclass
class Check:
    name: str
    status: str  # ok, WARN, FAIL, skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix else ""
        return f"{self.status:<4} {self.name}: {self.detail}{fix}"


class Doctor:
    def __init__(self, config_path: Path, passphrase: Callable[[], bytes]) -> None:
        self.config_path = config_path
        self.passphrase = passphrase
        self.checks: list[Check] = []
        self.now = dt.datetime.now(dt.UTC)

    def _add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    def run(self) -> list[Check]:
        try:
            config = AgentConfig.load(self.config_path)
        except CipherpostError as e:
            self._add("config", "FAIL", str(e), "give the agent.toml written by `agency join`")
            return self.checks
        self._add("config", "ok", str(self.config_path))
        keys = self._keys(config)
        directory = self._directory(config)
        if keys is not None and directory is not None:
            self._certificates(keys, directory)
        else:
            self._add("certificates", "skip", "needs the keys and the directory")
        broker = self._broker(config)
        code = keys.code if keys is not None else self._public_code(config)
        if broker is not None and code is not None:
            self._queues(broker, code)
        else:
            self._add("queues", "skip", "needs the broker login and the agency code")
        return self.checks

    def _public_code(self, config: AgentConfig) -> AgencyCode | None:
        """The agency code from the public half of the keys (when the passphrase is wrong)."""
        try:
            return AgencyCode.parse(
                json.loads((config.agency_dir / PUBLIC_FILE).read_text())["code"]
            )
        except (OSError, ValueError, KeyError, CipherpostError):
            return None

    def _keys(self, config: AgentConfig) -> AgencyKeys | None:
        try:
            keys = load_agency(config.agency_dir, self.passphrase())
        except KeyStoreError as e:
            fix = (
                "set CIPHERPOST_PASSPHRASE to the passphrase chosen at `agency join`"
                if "passphrase" in str(e)
                else f"check {config.agency_dir} (made by `agency join`)"
            )
            self._add("keys", "FAIL", str(e), fix)
            return None
        except CipherpostError as e:
            self._add("keys", "FAIL", str(e), "set CIPHERPOST_PASSPHRASE or run in a terminal")
            return None
        self._add("keys", "ok", f"{keys.code} ({keys.name}): keys decrypt with the passphrase")
        return keys

    def _directory(self, config: AgentConfig) -> Directory | None:
        try:
            ca_cert = load_ca_certificate(config.ca_cert)
            data = config.directory.read_bytes()
            # A throwaway copy of the trust state: the doctor only looks.
            trust = TrustState(None)
            seen = TrustState(config.agency_dir / TRUST_FILE)
            directory = Directory.load(data, trust, now=self.now, ca_certificate=ca_cert)
        except OSError as e:
            self._add(
                "directory",
                "FAIL",
                f"cannot read {e.filename}: {e.strerror}",
                "copy the directory from the cipher department (or `agency finish`)",
            )
            return None
        except Refused as e:
            fix = (
                "the directory is stale: run `cipherpost receive` to pick up the published "
                "one, or ask the cipher department to publish a new version"
                if "expired" in str(e)
                else "get the directory signed by your CA from the cipher department"
            )
            self._add("directory", "FAIL", str(e), fix)
            return None
        except CipherpostError as e:
            self._add("directory", "FAIL", str(e), "check ca_cert and directory in the config")
            return None
        highest = seen.highest_version(directory.ca_fingerprint)
        if directory.version < highest:
            self._add(
                "directory",
                "FAIL",
                f"version {directory.version} is older than version {highest} already seen",
                "restore the latest directory file (run `cipherpost receive`)",
            )
            return None
        left = directory.expires_at - self.now
        if left < DIRECTORY_WARNING:
            self._add(
                "directory",
                "WARN",
                f"version {directory.version} expires in {left.seconds // 3600} h",
                "ask the cipher department to publish a new version",
            )
        else:
            self._add(
                "directory",
                "ok",
                f"version {directory.version}, signed by the pinned CA, "
                f"valid until {directory.expires_at:%Y-%m-%d %H:%M}Z",
            )
        return directory

    def _certificates(self, keys: AgencyKeys, directory: Directory) -> None:
        entry = directory.entries.get(keys.code.text)
        if entry is None:
            self._add(
                "certificates",
                "FAIL",
                f"{keys.code} is not in the directory",
                "ask the cipher department to approve this agency (`ca approve`)",
            )
            return
        if entry.sign.public_key != keys.sign_public or entry.enc.public_key != keys.enc_public:
            self._add(
                "certificates",
                "FAIL",
                "the directory certifies other keys for this code",
                "re-enroll and ask for re-issue (`ca issue --replace`)",
            )
            return
        if entry.revoked:
            self._add(
                "certificates", "FAIL", f"{keys.code} is revoked", "contact the cipher department"
            )
            return
        self._retirement(keys, directory)
        not_after = min(entry.sign.not_after, entry.enc.not_after)
        if not (entry.sign.valid_at(self.now) and entry.enc.valid_at(self.now)):
            self._add(
                "certificates",
                "FAIL",
                f"expired (valid until {not_after:%Y-%m-%d})",
                "ask the cipher department to re-issue them (`ca issue --replace`)",
            )
        elif not_after - self.now < dt.timedelta(days=CERT_WARNING_DAYS):
            self._add(
                "certificates",
                "FAIL",
                f"expire on {not_after:%Y-%m-%d}, within {CERT_WARNING_DAYS} days",
                "ask the cipher department to re-issue them now (`ca issue --replace`)",
            )
        else:
            self._add("certificates", "ok", f"valid until {not_after:%Y-%m-%d}, not revoked")

    def _retirement(self, keys: AgencyKeys, directory: Directory) -> None:
        """A merged commune: when its code stops working and what replaces it."""
        successor = directory.retired.get(keys.code.text)
        if successor is None:
            return
        since = directory.retired_from[keys.code.text]
        if self.now >= since:
            self._add(
                "retirement",
                "FAIL",
                f"{keys.code} retired on {since:%Y-%m-%d} (merged into {successor}): envelopes"
                " from and to it are refused",
                f"send as {successor}; this agent may still receive what was already on its way",
            )
        else:
            self._add(
                "retirement",
                "WARN",
                f"{keys.code} retires on {since:%Y-%m-%d %H:%M}Z (merged into {successor});"
                " after that envelopes from and to it are refused",
                f"move the work to {successor}'s agent before then",
            )

    def _broker(self, config: AgentConfig) -> BrokerConfig | None:
        try:
            broker = BrokerConfig.load(config.broker_credentials)
        except CipherpostError as e:
            self._add("broker", "FAIL", str(e), "copy broker.json from the kit (`agency finish`)")
            return None
        try:
            connect_blocking(broker).close()
        except BrokerError as e:
            text = str(e)
            fix = (
                "the broker refused the login: ask the cipher department for new credentials "
                "(`broker provision`) and put them in " + str(config.broker_credentials)
                if "refused" in text or "password" in text or "login" in text
                else f"check that RabbitMQ runs at {broker.where()} and is reachable"
            )
            self._add("broker", "FAIL", text, fix)
            return None
        self._add("broker", "ok", f"logged in as {broker.login} at {broker.describe()}")
        return broker

    def _queues(self, broker: BrokerConfig, code: AgencyCode) -> None:
        try:
            inbox, feed = broker.agency_queues()
        except BrokerError as e:
            self._add("inbox", "FAIL", str(e), "ask the cipher department for new credentials")
            return
        connection = connect_blocking(broker)
        try:
            # The names carry a secret suffix (broker/topology.py): not printed.
            for queue, what in ((inbox, "inbox"), (feed, "directory feed")):
                try:
                    ch = connection.channel()
                    ch.queue_declare(queue, passive=True)
                    ch.basic_qos(prefetch_count=1)
                    tag = ch.basic_consume(queue, lambda *a: None, auto_ack=False)
                    ch.basic_cancel(tag)
                    ch.close()
                    self._add(what, "ok", f"the {what} queue exists and this login may read it")
                except pika.exceptions.ChannelClosedByBroker as e:
                    if e.reply_code == 404:
                        self._add(
                            what,
                            "FAIL",
                            f"the {what} queue named in the credentials file is missing",
                            "ask the cipher department to run `broker provision`",
                        )
                    else:
                        self._add(
                            what,
                            "FAIL",
                            f"not allowed to read the {what} queue (code {e.reply_code})",
                            "ask the cipher department to run `broker provision`",
                        )
            ch = connection.channel()
            lane = submit_queue(code)
            consumers = ch.queue_declare(lane, passive=True).method.consumer_count
            if consumers:
                self._add("gateway", "ok", f"{consumers} gateway instance(s) consuming {lane}")
            else:
                self._add(
                    "gateway",
                    "FAIL",
                    f"no gateway is consuming {lane}",
                    "ask the cipher department to start `cipherpost gateway run`",
                )
        except pika.exceptions.AMQPError as e:
            self._add(
                "gateway",
                "FAIL",
                f"cannot ask the broker ({type(e).__name__})",
                "ask the cipher department to run `broker provision`",
            )
        finally:
            if connection.is_open:
                connection.close()
