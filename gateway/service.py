"""The gateway service: consume every submit lane, decide, settle.

Each message goes through :func:`gateway.decide.decide` (pure: verified facts
in, a verdict out) and the verdict is settled here over a small transport
(:mod:`gateway.transport`). Settlement order, for every verdict (ack order:
verify -> audit record durable -> forwards confirmed -> ack):

- records of one consumer batch are committed together (group commit: one
  fsync); forwards, notices and acks of the batch run only after that commit,
  so nothing acts on a decision that is not durable;
- an accepted part goes to every recipient's inbox in one publish (``CC``),
  marked forwarded (with the digest of its bytes) once the broker confirmed;
- a refusal gets one signed rejection notice, to the verified publisher only;
- junk (refused before any signature verified) is tallied per publisher and
  written as one leaf per tally (:mod:`gateway.junk`); it is acked after that.

The gateway decides only on a policy and a directory that are in force: when
either expires it holds what it receives (unacknowledged, bounded by the
prefetch windows) and decides again once a newer version is installed.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import wire
from broker.connection import BrokerConfig
from broker.consumer import Consumer
from broker.directory_feed import DirectoryFeed
from broker.publisher import ConfirmingPublisher, Unroutable
from broker.topology import (
    CHECKPOINT_EXCHANGE,
    DELIVER_EXCHANGE,
    gateway_directory_queue,
    submit_queue,
)
from envelopes.errors import Reason
from envelopes.header import Header
from envelopes.notices import GATEWAY_REFUSED, KIND_REJECTION, Notice, sign_notice
from envelopes.parts import Part
from gateway.audit import ACCEPTED, AuditStore, Decided, Entry, Outcome, Record
from gateway.auditlog import Checkpointer
from gateway.config import GatewayConfig
from gateway.decide import (
    RESOLVE,
    Context,
    Decide,
    Duplicate,
    Forward,
    Incoming,
    Junk,
    Refuse,
    Relay,
    decide,
)
from gateway.junk import JunkLedger
from gateway.metrics import GatewayMetrics, HealthServer
from gateway.notify import sd_notify
from gateway.policy import Policy, PolicyTrust
from gateway.transport import Settleable, Transport
from keys.agency import AgencyKeys, load_agency
from keys.auditkey import AUDIT_CERT_FILE, load_audit_certificate, load_audit_key
from keys.ca import load_ca_certificate
from keys.certs import AgencyCertificate
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState
from keys.errors import CipherpostError, clip
from keys.logsetup import get_logger

__all__ = ["Gateway", "Loaded", "load"]

log = get_logger("cipherpost.gateway")

NO_ENVELOPE = b"\0" * 16
POLICY_FILE_CHECK = dt.timedelta(seconds=5)  # a running gateway looks for a newer policy file
PAUSED_REMINDER = dt.timedelta(seconds=60)
EXPIRY_WARNING = dt.timedelta(days=3)  # as the Prometheus alert: log it too, once a day
EXPIRY_REMINDER = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    now = now or _now()
    ca_cert = load_ca_certificate(config.ca_cert)
    trust = TrustState(config.state_dir / "trust.json")
    try:
        directory_bytes = config.directory.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {e.filename}: {e.strerror}") from e
    directory = Directory.load(directory_bytes, trust, now=now, ca_certificate=ca_cert)
    policy = _read_policy(config, ca_cert, now)
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


def _read_policy(config: GatewayConfig, ca_cert: x509.Certificate, now: dt.datetime) -> Policy:
    try:
        data = config.policy.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {e.filename}: {e.strerror}") from e
    return Policy.load_signed(data, ca_cert.public_key(), now)  # type: ignore[arg-type]


class _State:
    """The audit store's decision state, plus the forwards in flight (sent, not confirmed)."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.in_flight: dict[tuple[str, str, int], str] = {}
        self._lock = threading.Lock()

    def decision(self, envelope_id: str, header_hash: str) -> Decided | None:
        return self.store.decision(envelope_id, header_hash)

    def has_envelope(self, envelope_id: str) -> bool:
        return self.store.has_envelope(envelope_id)

    def relayed(self, key: str) -> bool:
        return self.store.relayed(key)

    def refused(self, digest: str) -> bool:
        return self.store.refused(digest)

    def part(self, envelope_id: str, header_hash: str, index: int) -> str | None:
        with self._lock:
            flying = self.in_flight.get((envelope_id, header_hash, index))
        return flying or self.store.part(envelope_id, header_hash, index)

    def confirmed(self, envelope_id: str, header_hash: str, index: int) -> bool:
        """Confirmed by the broker, or on its way: a copy now is a duplicate either way."""
        with self._lock:
            if (envelope_id, header_hash, index) in self.in_flight:
                return True
        return self.store.confirmed(envelope_id, header_hash, index)

    def flying(self, key: tuple[str, str, int], digest: str | None) -> None:
        with self._lock:
            if digest is None:
                self.in_flight.pop(key, None)
            else:
                self.in_flight[key] = digest


Then = Callable[[Outcome | None], None]


class Gateway:
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
        self.state = _State(self.audit)
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
        self._policy_checked = _now()
        self._policy_problem = ""
        self.counters: collections.Counter[str] = collections.Counter()
        self._transport: Transport | None = transport
        self._consumer: Consumer | None = None
        self._stopping = threading.Event()
        self._pending: list[tuple[list[Settleable], Entry | None, Then]] = []
        self._pending_lock = threading.Lock()
        self.junk: JunkLedger[tuple[Settleable, AgencyCode | None]] = JunkLedger()
        # Messages given back to their queue while no policy or directory was in force.
        self._returned_in_pause = 0
        self._paused_since: dt.datetime | None = None
        self._paused_told = _now()
        self._expiry_told: dict[str, dt.datetime] = {}
        self._proofs = ThreadPoolExecutor(1, thread_name_prefix="audit-proofs")
        self.ready = threading.Event()
        self.audit_certificate = loaded.audit_certificate
        self.metrics = GatewayMetrics(config.gateway_id)
        self.metrics.connected_gauge.set_function(self._is_connected)
        self._store_ok = True
        self._in_force_metrics()
        self._health: HealthServer | None = None
        self._last_published = _now()

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

    def _in_force_metrics(self) -> None:
        self.metrics.in_force(
            directory=(self.directory.version, self.directory.expires_at),
            policy=(self.policy.version, self.policy.expires),
            audit_certificate=self.audit_certificate.not_after,
        )

    def close(self) -> None:
        """Write what is pending (junk tallies included), sign a last checkpoint, let go."""
        sd_notify("STOPPING=1")
        self.feed.stop()
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

    # --- per message -------------------------------------------------------------------------

    def context(self, now: dt.datetime) -> Context:
        return Context(
            self.directory, self.policy, now, self.config.gateway_id, self.config.login_prefix
        )

    def handle(self, d: Settleable) -> None:
        """Entry point for every delivery (consumer thread)."""
        if self._stopping.is_set():
            return  # not acked: redelivered after restart or to another instance
        now = _now()
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
                Incoming(d.body, d.kind, d.user_id, d.queue), self.state, self.context(now)
            )
            self._settle(d, verdict, now)
        except Exception as e:  # our own failure, never a verdict: retry, then dead-letter
            self.counters["internal_error"] += 1
            self.metrics.internal_errors.inc()
            log.error(
                "gateway_internal_error", error=type(e).__name__, detail=clip(str(e)), exc_info=True
            )
            d.reject(requeue=True)

    def _settle(self, d: Settleable, verdict: object, now: dt.datetime) -> None:
        if isinstance(verdict, Junk):
            self.counters[f"junk_{verdict.reason.value}"] += 1
            self.junk.add(verdict.publisher, verdict.reason, d.body, (d, verdict.notify), now)
            d.body = b""  # only its digest and size are kept
        elif isinstance(verdict, Decide):
            entry = Entry(verdict.record, decides=verdict.key, part=verdict.claim)
            self._stage([d], entry, self._decided(d, verdict))
        elif isinstance(verdict, Refuse):
            self._refused(d, verdict)
        elif isinstance(verdict, Forward):
            if verdict.record is None:  # recorded before; only its forward is missing
                self._later(d, lambda: self._send_part(d, verdict.header, verdict.part,
                                                       verdict.digest, verdict.to))  # fmt: skip
            else:
                entry = Entry(verdict.record, part=verdict.claim)
                self._stage([d], entry, self._part_settled(d, verdict))
        elif isinstance(verdict, Duplicate):
            self.counters["duplicate"] += 1
            self.metrics.duplicates.inc()
            self._later(d, d.ack)
        elif isinstance(verdict, Relay):
            notice = verdict.notice
            self._stage(
                [d],
                Entry(verdict.record, relays=verdict.key),
                lambda o: self._relay(d, notice) if o is not None and o.new else d.ack(),
            )

    def _part_settled(self, d: Settleable, v: Forward) -> Then:
        def then(o: Outcome | None) -> None:
            assert o is not None
            if o.conflict == "part":
                self.counters["refused"] += 1
                self.metrics.refused(o.rule_id)
                self._notify([d], _publisher_of(v.part.header), v.header, o.rule_id, o.reason)
            else:
                self._send_part(d, v.header, v.part, v.digest, v.to)

        return then

    def _send_part(
        self, d: Settleable, h: Header, part: Part, digest: str, to: tuple[str, ...]
    ) -> None:
        """Forward a part whose record is durable, unless a forward of it is confirmed or in
        flight already (then the copy is a duplicate)."""
        key = (h.envelope_id.hex(), h.hash.hex(), part.segment.index)
        if self.state.confirmed(*key):
            self.counters["duplicate"] += 1
            self.metrics.duplicates.inc()
            d.ack()
            return
        self.state.flying(key, digest)
        self._forward(d, h, part, to)

    def _decided(self, d: Settleable, v: Decide) -> Then:
        h = v.part.header

        def then(o: Outcome | None) -> None:
            assert o is not None
            if o.new and o.conflict is None:
                self.metrics.decided(o.decision, o.rule_id)
            log.info(
                "gateway_decision",
                envelope=h.envelope_id.hex(),
                sender=h.sender.text,
                recipients=len(h.recipients),
                label=h.level.value,
                decision=o.decision,
                rule=o.rule_id,
                leaf=o.leaf_index,
            )
            if o.decision == ACCEPTED:
                codes = tuple(r.code.text for r in h.recipients)
                self._send_part(d, h, v.part, v.digest, codes)
            elif o.new:
                self.counters["refused"] += 1
                self._notify([d], v.notify, h, o.rule_id, o.reason)
            else:
                self.counters["refused_envelope_part"] += 1
                d.ack()  # audited and notified once already

        return then

    def _refused(self, d: Settleable, v: Refuse) -> None:
        self.counters[f"refused_{v.record.event}"] += 1
        self.metrics.refused(v.record.rule_id)
        log.warning(
            "gateway_refused",
            kind=v.record.event,
            envelope=v.record.envelope_id or None,
            publisher=v.record.publisher,
            rule=v.record.rule_id,
        )
        self._stage(
            [d],
            Entry(v.record, refuses=v.record.message_digest),
            lambda o: (
                self._notify([d], v.notify, v.header, v.record.rule_id, v.record.reason)
                if o is not None and o.new
                else d.ack()
            ),
        )

    # --- group commit ------------------------------------------------------------------------

    def _stage(self, ds: list[Settleable], entry: Entry | None, then: Then) -> None:
        """Audit ``entry`` at the batch end; ``then`` (forward, notify, ack) runs after it."""
        with self._pending_lock:
            self._pending.append((ds, entry, then))

    def _later(self, d: Settleable, action: Callable[[], None]) -> None:
        """Run ``action`` after the batch's audit records are durable."""
        self._stage([d], None, lambda _: action())

    def commit_batch(self, *, everything: bool = False) -> None:
        """End of a consumer batch: one durable audit commit, then the batch's actions."""
        now = _now()
        self._tallies(now, everything)
        with self._pending_lock:
            pending, self._pending = self._pending, []
        entries = [e for _, e, _ in pending if e is not None]
        started = time.perf_counter()
        try:
            results = self.audit.commit(entries, resolver=RESOLVE)
            outcomes = iter(results)
        except Exception as e:  # the records are not durable: nothing may act on them
            self._store_ok = False
            self.metrics.commit_failures.inc()
            log.error("gateway_audit_commit_failed", error=type(e).__name__, detail=clip(str(e)))
            for ds, _, _ in pending:
                for d in ds:
                    d.reject(requeue=True)
            return
        self._store_ok = True
        if entries:
            self.metrics.committed(time.perf_counter() - started, sum(o.new for o in results))
        for ds, entry, then in pending:
            try:
                then(next(outcomes) if entry is not None else None)
            except Exception as e:
                self.counters["internal_error"] += 1
                log.error("gateway_internal_error", error=type(e).__name__, detail=clip(str(e)))
                for d in ds:
                    d.reject(requeue=True)
        self._checkpoint()
        self._resume(now)

    def _tallies(self, now: dt.datetime, everything: bool) -> None:
        """Junk tallies that are due become one record each; their messages are acked after."""
        for tally in self.junk.due(now, everything=everything):
            ds = [d for d, _ in tally.held]
            notify = tally.held[0][1]
            record = tally.record(now, self.config.gateway_id, self.context(now).versions)
            for reason, n in tally.reasons.items():
                self.metrics.junk_tallied(reason.rule_id, n)
            log.warning(
                "gateway_junk",
                publisher=tally.publisher,
                count=tally.count,
                rule=record.rule_id,
            )

            def then(o: Outcome | None, ds: list[Settleable] = ds, record: Record = record,
                     notify: AgencyCode | None = notify) -> None:  # fmt: skip
                self._notify(ds, notify, None, record.rule_id, record.reason)

            self._stage(ds, Entry(record), then)

    # --- policy and directory in force -------------------------------------------------------

    def _in_force(self, now: dt.datetime) -> bool:
        """Whether a decision may be made now: policy and directory both unexpired."""
        if self.policy.expired(now):
            why = f"policy version {self.policy.version} expired"
        elif now > self.directory.expires_at:
            why = f"directory version {self.directory.version} expired"
        else:
            self._warn_before_expiry(now)
            return True
        self.metrics.pause(True, self._returned_in_pause)
        if self._paused_since is None or (now - self._paused_told) >= PAUSED_REMINDER:
            self._paused_since = self._paused_since or now
            self._paused_told = now
            log.error(
                "gateway_paused",
                reason=why,
                returned_to_queue=self._returned_in_pause,
                since=self._paused_since.isoformat(),
                fix="install a newer signed policy file / publish a newer directory version",
            )
        return False

    def _warn_before_expiry(self, now: dt.datetime) -> None:
        """Days before decisions stop, say so (once a day per thing, while it lasts)."""
        for what, version, expires in (
            ("policy", self.policy.version, self.policy.expires),
            ("directory", self.directory.version, self.directory.expires_at),
        ):
            if expires is None or expires - now > EXPIRY_WARNING:
                continue
            key = f"{what}:{version}"
            told = self._expiry_told.get(key)
            if told is not None and now - told < EXPIRY_REMINDER:
                continue
            self._expiry_told[key] = now
            log.warning(
                "gateway_expires_soon",
                what=what,
                version=version,
                expires=expires.isoformat(),
                hours_left=round((expires - now).total_seconds() / 3600, 1),
                fix=f"sign and install a newer {what} before then: decisions stop when it expires",
            )

    def _resume(self, now: dt.datetime) -> None:
        """Pick up a newer policy file; decide what was held once everything is in force."""
        self._refresh_policy(now, paused=self._paused_since is not None)
        if self._paused_since is None or not self._in_force(now):
            return
        log.info(
            "gateway_resumed",
            returned_to_queue=self._returned_in_pause,
            policy_version=self.policy.version,
            directory_version=self.directory.version,
        )
        self._paused_since = None
        self._returned_in_pause = 0
        self.metrics.pause(False, 0)
        if self._consumer is not None:
            self._consumer.resume()  # what was given back is delivered again and decided

    def _refresh_policy(self, now: dt.datetime, *, paused: bool = False) -> None:
        """A newer signed policy file replaces the one in force (never an older one)."""
        if not paused and (now - self._policy_checked) < POLICY_FILE_CHECK:
            return
        self._policy_checked = now
        try:
            policy = _read_policy(self.config, self.ca_certificate, now)
            if (policy.version, policy.digest, policy.expires) == (
                self.policy.version,
                self.policy.digest,
                self.policy.expires,
            ):
                return
            self.policy_trust.accept(policy)
        except CipherpostError as e:  # Refused included: rollback, bad signature, expired
            if str(e) != self._policy_problem:
                self._policy_problem = str(e)
                log.error("policy_refused", reason=str(e), kept_version=self.policy.version)
            return
        self._policy_problem = ""
        self.policy = policy
        self.counters["policy_updates"] += 1
        self._in_force_metrics()
        log.info(
            "policy_updated",
            policy=policy.name,
            version=policy.version,
            expires=policy.expires.isoformat() if policy.expires else None,
        )

    # --- settling ----------------------------------------------------------------------------

    def _forward(self, d: Settleable, h: Header, part: Part, to: tuple[str, ...]) -> None:
        eid, hh, index = h.envelope_id.hex(), h.hash.hex(), part.segment.index
        props = wire.forwarded_part(list(to[1:]), eid, index, h.segment_count, h.sender.text)
        assert self._transport is not None
        future = self._transport.publish(DELIVER_EXCHANGE, to[0], d.body, props)

        def done(f: Future[None]) -> None:
            error = f.exception()
            if error is None:
                self.audit.mark_confirmed(eid, hh, index)
                self.state.flying((eid, hh, index), None)
                self.counters["forwarded"] += 1
                self.metrics.forwards.inc()
                d.ack()
                return
            self.state.flying((eid, hh, index), None)
            if isinstance(error, Unroutable):
                self.counters["undeliverable"] += 1
                reason = Reason.UNDELIVERABLE
                record = Record(
                    time=_now(),
                    event="undeliverable",
                    envelope_id=eid,
                    sender=h.sender.text,
                    recipients=to,
                    level=h.level.value,
                    urgency=h.urgency.value,
                    size=h.payload_size,
                    digest=hh,
                    decision="refused",
                    rule_id=reason.rule_id,
                    reason=clip(str(error)),
                    gateway_id=self.config.gateway_id,
                    publisher=d.user_id or "",
                    policy_version=self.policy.version,
                    directory_version=self.directory.version,
                    part=index,
                )
                # To the dead-letter queue (kept, not dropped) once the record is durable.
                self._stage([d], Entry(record), lambda _: d.reject(requeue=False))
            else:
                d.reject(requeue=True)

        future.add_done_callback(done)

    def _notify(
        self,
        ds: Sequence[Settleable],
        addressee: AgencyCode | None,
        h: Header | None,
        rule_id: str,
        reason: str,
    ) -> None:
        """One signed rejection notice to the verified publisher; then ack ``ds``."""
        if addressee is None or addressee.text not in self.directory.entries:
            for d in ds:
                d.ack()  # nobody verified to tell; the audit record is the trace
            return
        notice = sign_notice(
            self.keys.signing_key,
            kind=KIND_REJECTION,
            envelope_id=h.envelope_id if h else NO_ENVELOPE,
            header_hash=h.hash if h else b"",
            signer=self.keys.code,
            addressee=addressee,
            status=GATEWAY_REFUSED,
            now=_now(),
            rule_id=rule_id,
            reason=clip(reason),
        )
        self._publish_notice(ds, addressee, notice)

    def _relay(self, d: Settleable, notice: Notice) -> None:
        self.counters["notices"] += 1
        self.metrics.notices.inc()
        self._publish_notice([d], notice.addressee, notice)

    def _publish_notice(
        self, ds: Sequence[Settleable], addressee: AgencyCode, notice: Notice
    ) -> None:
        assert self._transport is not None
        future = self._transport.publish(
            DELIVER_EXCHANGE,
            addressee.text,
            notice.raw,
            wire.notice(),
        )

        def done(f: Future[None]) -> None:
            error = f.exception()
            for d in ds:
                if error is None or isinstance(error, Unroutable):
                    d.ack()
                else:
                    d.reject(requeue=True)

        future.add_done_callback(done)

    # --- checkpoints and proofs --------------------------------------------------------------

    def _checkpoint(self, *, force: bool = False) -> None:
        """Sign, store and publish a checkpoint when N leaves or T seconds have passed."""
        now = _now()
        previous = self.checkpointer.last.size if self.checkpointer.last else 0
        try:
            if not force and not self.checkpointer.due(now):
                self._heartbeat(now)
                return
            message = self.checkpointer.sign(now)
        except Exception as e:  # the log goes on; the next checkpoint covers this one
            log.error("checkpoint_failed", error=type(e).__name__, detail=clip(str(e)))
            return
        if message is None or self._transport is None:
            return
        self.counters["checkpoints"] += 1
        self._last_published = now
        if self.checkpointer.last is not None:
            self.metrics.checkpointed(self.checkpointer.last.size, now)
        future = self._transport.publish(
            CHECKPOINT_EXCHANGE,
            self.config.gateway_id,
            message,
            wire.checkpoint(),
        )
        size = self.checkpointer.last.size if self.checkpointer.last else 0
        future.add_done_callback(
            lambda f: (
                log.info("checkpoint_published", size=size)
                if f.exception() is None
                else log.error("checkpoint_not_published", size=size, error=str(f.exception()))
            )
        )
        self._proofs.submit(self._send_proofs, previous, size, message)

    def _heartbeat(self, now: dt.datetime) -> None:
        """Idle: publish the last checkpoint again every interval, so that the witness can tell
        a quiet gateway from one that stopped signing (it alarms after 3 intervals)."""
        last = self.checkpointer.last
        since = (now - self._last_published).total_seconds()
        if last is None or self._transport is None or since < self.config.checkpoint_seconds:
            return
        self._last_published = now
        self._transport.publish(
            CHECKPOINT_EXCHANGE,
            self.config.gateway_id,
            self.checkpointer.message(last.note, None),
            wire.checkpoint(),
        )

    def _send_proofs(self, start: int, end: int, message: bytes) -> None:
        """Each sender gets, for its envelopes accepted in leaves [start, end), the leaf index
        and an inclusion proof in the new checkpoint: one message per sender."""
        try:
            checkpoint = json.loads(message)
            checkpoint.pop("consistency", None)
            by_sender: dict[str, list[dict[str, Any]]] = {}
            for index, eid, sender, leaf, proof in self.audit.proofs(start, end):
                by_sender.setdefault(sender, []).append(
                    {
                        "envelope_id": eid,
                        "leaf_index": index,
                        "leaf": base64.b64encode(leaf).decode(),
                        "proof": [base64.b64encode(h).decode() for h in proof],
                    }
                )
            assert self._transport is not None
            for sender, entries in by_sender.items():
                body = json.dumps({"checkpoint": checkpoint, "entries": entries}).encode()
                self._transport.publish(
                    DELIVER_EXCHANGE,
                    sender,
                    body,
                    wire.audit_proof(),
                )
        except Exception as e:  # proofs can be made again any time: `cipherpost audit prove`
            log.error("audit_proofs_failed", error=type(e).__name__, detail=clip(str(e)))


def _publisher_of(h: Header) -> AgencyCode:
    """The verified publisher of a part of ``h``: its signer (decide checked they are one)."""
    return h.sender
