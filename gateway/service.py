"""The gateway service: consume every submit lane, decide, settle.

Each message goes through :func:`gateway.decide.decide` (pure: verified facts
in, a verdict out) and the verdict is settled (:mod:`gateway.settle`: audit
record durable, then forward, notify, ack) over a small transport
(:mod:`gateway.transport`); the audit log is published as checkpoints and
proofs (:mod:`gateway.proofs`).

The gateway decides only on a policy and a directory that are in force: when
either expires it holds what it receives (unacknowledged, bounded by the
prefetch windows) and decides again once a newer version is installed
(:mod:`gateway.pause`).
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.connection import BrokerConfig
from broker.consumer import Consumer
from broker.directory_feed import DirectoryFeed
from broker.management import Management
from broker.publisher import ConfirmingPublisher
from broker.topology import gateway_directory_queue, submit_queue
from gateway import clock
from gateway.audit import AuditStore
from gateway.auditlog import Checkpointer
from gateway.config import GatewayConfig
from gateway.decide import decide
from gateway.flood import FloodGuard
from gateway.incoming import Incoming
from gateway.junk import JunkLedger
from gateway.metrics import GatewayMetrics, HealthServer
from gateway.notify import sd_notify
from gateway.pause import read_policy
from gateway.policy import Policy, PolicyTrust
from gateway.settle import DecisionState, Settle
from gateway.transport import Settleable, Transport
from keys.agency import AgencyKeys, load_agency
from keys.auditkey import AUDIT_CERT_FILE, load_audit_certificate, load_audit_key
from keys.ca import load_ca_certificate
from keys.certs import AgencyCertificate
from keys.directory import Directory, TrustState
from keys.errors import CipherpostError, clip
from keys.logsetup import get_logger

__all__ = ["Gateway", "Loaded", "load"]

log = get_logger("cipherpost.gateway")


@dataclass(frozen=True)
class Loaded:
    """What the gateway checked before starting."""

    directory: Directory
    policy: Policy
    keys: AgencyKeys
    broker: BrokerConfig
    audit_key: Ed25519PrivateKey
    audit_certificate: AgencyCertificate
    audit_certificate_pem: bytes
    ca_certificate: x509.Certificate


def load(config: GatewayConfig, passphrase: bytes, now: dt.datetime | None = None) -> Loaded:
    """Load and verify everything the gateway needs; refuse to start on any doubt."""
    now = now or clock.now()
    ca_cert = load_ca_certificate(config.ca_cert)
    trust = TrustState(config.state_dir / "trust.json")
    try:
        directory_bytes = config.directory.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {e.filename}: {e.strerror}") from e
    directory = Directory.load(directory_bytes, trust, now=now, ca_certificate=ca_cert)
    policy = read_policy(config, ca_cert, now)
    PolicyTrust(config.state_dir / "policy.json").accept(policy)  # versions never go back
    keys = load_agency(config.agency_dir, passphrase)
    entry = directory.get(keys.code, "gateway")
    if entry.sign.public_key != keys.sign_public:
        raise CipherpostError(
            f"gateway keys are not the ones the directory certifies for {keys.code}"
        )
    audit_key = load_audit_key(config.audit_keys, passphrase)
    cert_path = config.audit_keys / AUDIT_CERT_FILE
    audit_cert = load_audit_certificate(cert_path, ca_cert)
    if audit_cert.code != keys.code or audit_cert.public_key != audit_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ):
        raise CipherpostError(f"{cert_path} does not certify this gateway's audit key")
    if not audit_cert.valid_at(now):
        raise CipherpostError(f"{cert_path} is not valid now (expired or not yet valid)")
    return Loaded(
        directory,
        policy,
        keys,
        BrokerConfig.load(config.broker_credentials),
        audit_key,
        audit_cert,
        cert_path.read_bytes(),
        ca_cert,
    )


class Gateway(Settle):
    """One gateway instance. ``run()`` blocks; ``stop()`` (any thread, or SIGTERM) drains.

    ``transport`` replaces the broker publisher (the in-memory one of the fast
    tests, which call :meth:`handle` and :meth:`commit_batch` themselves).
    """

    def __init__(
        self, config: GatewayConfig, loaded: Loaded, *, transport: Transport | None = None
    ) -> None:
        self.config = config
        self.directory = loaded.directory
        self.policy = loaded.policy
        self.keys = loaded.keys
        self.broker = loaded.broker
        self.ca_certificate = loaded.ca_certificate
        self.feed = DirectoryFeed(
            self.broker,
            gateway_directory_queue(config.gateway_id),
            current=self.directory,
            trust=TrustState(config.state_dir / "trust.json"),
            ca_certificate=loaded.ca_certificate,
            path=config.directory,
            on_update=self._directory_updated,
            declare=True,
        )
        self.audit = AuditStore(config.audit_db, log_id=config.gateway_id)
        self.state = DecisionState(self.audit)
        self.checkpointer = Checkpointer(
            self.audit,
            loaded.audit_key,
            loaded.audit_certificate,
            loaded.audit_certificate_pem,
            config.state_dir,
            every=config.checkpoint_every,
            seconds=config.checkpoint_seconds,
        )
        try:
            self.checkpointer.check_on_start()
        except BaseException:
            self.audit.close()
            raise
        self.policy_trust = PolicyTrust(config.state_dir / "policy.json")
        self._policy_checked = clock.now()
        self._policy_problem = ""
        self.counters = collections.Counter()
        self._transport = transport
        self._consumer = None
        self._stopping = threading.Event()
        self._pending = []
        self._pending_lock = threading.Lock()
        self.junk = JunkLedger()
        self.flood = FloodGuard(
            Management.for_operator(config.flood_admin_url, config.flood_admin_password_file)
            if config.flood_admin_url
            else None,
            config.suspend_after,
            protected=frozenset({self.broker.login}),
            on_suspended=self._suspended,
        )
        self._returned_in_pause = 0
        self._paused_since = None
        self._paused_told = clock.now()
        self._expiry_told = {}
        self._proofs = ThreadPoolExecutor(1, thread_name_prefix="audit-proofs")
        self.ready = threading.Event()
        self.audit_certificate = loaded.audit_certificate
        self.metrics = GatewayMetrics(config.gateway_id)
        self.metrics.connected_gauge.set_function(self._is_connected)
        self._store_ok = True
        self._in_force_metrics()
        self._health: HealthServer | None = None
        self._last_published = clock.now()

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self, *, until_idle: float | None = None) -> None:
        """Consume until stopped; in-flight work is finished and acked before returning."""
        address = self.config.metrics_address
        if address is not None:
            self._health = HealthServer(address, self.metrics, self.not_ready)
            self._health.start()
        if self._transport is None:
            self._transport = ConfirmingPublisher(self.broker)
        self.feed.start()  # new directory versions apply while running
        self._consumer = Consumer(
            self.broker,
            self.lanes,
            self.handle,
            prefetch=self.config.prefetch,
            on_connected=self._connected,
            on_batch_end=self.commit_batch,
        )
        log.info(
            "gateway_started",
            gateway=self.config.gateway_id,
            policy=self.policy.name,
            policy_version=self.policy.version,
            directory_version=self.directory.version,
            lanes=len(self.lanes()),
            flood_guard=f"suspends at {self.flood.threshold} junk/s" if self.flood.on else "off",
        )
        try:
            self._consumer.run(until_idle=until_idle, drain=self._transport.flush)
        finally:
            self.close()

    def _connected(self) -> None:
        self.metrics.connected(True)
        if not self.ready.is_set():
            self.ready.set()
            sd_notify("READY=1")
        else:
            log.info("gateway_reconnected", lanes=len(self.lanes()))

    def _is_connected(self) -> float:
        consumer = self._consumer
        return 1.0 if consumer is not None and consumer.connected.is_set() else 0.0

    def not_ready(self) -> list[str]:
        """Why this gateway is not ready to decide, one reason each (empty: ready)."""
        reasons = []
        if not self._is_connected():
            reasons.append("not connected to the broker")
        if self._paused_since is not None:
            reasons.append("paused: the policy or the directory in force has expired")
        if not self._store_ok:
            reasons.append("the audit store is not writable (the last commit failed)")
        if self._stopping.is_set():
            reasons.append("stopping")
        return reasons

    def close(self) -> None:
        """Write what is pending (junk tallies included), sign a last checkpoint, let go."""
        sd_notify("STOPPING=1")
        self.feed.stop()
        self.flood.close()
        self.counters["directory_refused"] = self.feed.refused
        self.commit_batch(everything=True)
        self._checkpoint(force=True)  # the log as it stands at shutdown is signed too
        self._proofs.shutdown(wait=True)
        if self._transport is not None:
            self._transport.close()
        self.audit.close()
        if self._health is not None:
            self._health.stop()
        log.info("gateway_stopped", gateway=self.config.gateway_id, **dict(self.counters))

    def lanes(self) -> list[str]:
        """The submit lane of every agency in the directory in force."""
        return [submit_queue(e.code) for e in self.directory.entries.values()]

    def _directory_updated(self, directory: Directory) -> None:
        """A new verified directory version: revocations and new agencies apply from now."""
        self.directory = directory
        self.counters["directory_updates"] += 1
        self._in_force_metrics()

    def audit_records(self) -> list[dict[str, object]]:
        """Every audit record so far (opens the store read-side; usable after ``run``)."""
        store = AuditStore(self.config.audit_db, readonly=True)
        try:
            return store.records()
        finally:
            store.close()

    def stop(self) -> None:
        """Stop taking messages; what is in flight completes."""
        self._stopping.set()
        if self._consumer is not None:
            self._consumer.stop()

    # --- per message ------------------------------------------------------------------------------

    def handle(self, d: Settleable) -> None:
        """Entry point for every delivery (consumer thread)."""
        if self._stopping.is_set():
            return  # not acked: redelivered after restart or to another instance
        now = clock.now()
        if not self._in_force(now):
            # Never held unacked: the broker's consumer_timeout would close the channel and
            # every return counts towards the delivery limit (then cp.dead). Given back at
            # once, and no more taken until a policy and a directory are in force again.
            d.reject(requeue=True)
            self._returned_in_pause += 1
            if self._consumer is not None:
                self._consumer.pause()
            return
        try:
            verdict = decide(
                Incoming(d.body, d.kind, d.user_id, d.queue, d.routing_key),
                self.state,
                self.context(now),
            )
            self._settle(d, verdict, now)
        except Exception as e:  # our own failure, never a verdict: retry, then dead-letter
            self.counters["internal_error"] += 1
            self.metrics.internal_errors.inc()
            log.error(
                "gateway_internal_error", error=type(e).__name__, detail=clip(str(e)), exc_info=True
            )
            d.reject(requeue=True)
