"""The gateway: check every submission without reading it, decide, forward or refuse, audit.

Per message on ``cp.gateway.submit`` (ack order: verify -> audit record durable
-> forwards confirmed -> ack):

- a **part** (header frame + one segment frame): strict parse; the AMQP
  ``user_id`` must be the signed sender's login; header and segment signatures;
  parties known, valid, not revoked, cleared; not expired; the envelope's one
  decision (policy) recorded once; accepted parts go to every recipient's inbox
  in one publish (``CC`` header), refused ones get a signed rejection notice;
- a **notice** (receipt or status from a recipient): signature, signer equal to
  the publisher, recorded, forwarded to its addressee.

Group commit: the audit records of one consumer batch are committed together
(one fsync); forwards, notices and acks of that batch run only after the
commit, so nothing acts on a decision that is not yet durable.

Redeliveries (``redelivered`` flag, after a crash or a lost connection) of a
part already forwarded are acked without a second forward; the same part
published again (no redelivered flag) is a replay and is refused.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pika
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.connection import BrokerConfig
from broker.consumer import Consumer, Delivery
from broker.directory_feed import DirectoryFeed
from broker.publisher import ConfirmingPublisher, Unroutable
from broker.topology import (
    CHECKPOINT_EXCHANGE,
    DELIVER_EXCHANGE,
    SUBMIT_QUEUE,
    gateway_directory_queue,
)
from envelopes.checking import (
    CheckedHeader,
    check_header,
    check_header_rest,
    check_header_signature,
    check_segment,
)
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.header import Header
from envelopes.notices import (
    GATEWAY_REFUSED,
    KIND_REJECTION,
    Notice,
    sign_notice,
    verify_notice,
)
from envelopes.parts import Part, parse_part
from gateway.audit import ACCEPTED, REFUSED, AuditStore, Outcome, Record
from gateway.auditlog import Checkpointer
from gateway.config import GatewayConfig
from gateway.policy import Policy
from keys.agency import AgencyKeys, load_agency
from keys.auditkey import AUDIT_CERT_FILE, load_audit_certificate, load_audit_key
from keys.ca import load_ca_certificate
from keys.certs import AgencyCertificate
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState
from keys.errors import CipherpostError, UsageError

log = structlog.get_logger("cipherpost.gateway")

MESSAGE_PART = "part"
MESSAGE_NOTICE = "notice"
MESSAGE_AUDIT_PROOF = "audit-proof"
NO_ENVELOPE = b"\0" * 16


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
        policy_bytes = config.policy.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {e.filename}: {e.strerror}") from e
    directory = Directory.load(directory_bytes, trust, now=now, ca_certificate=ca_cert)
    policy = Policy.load_signed(policy_bytes, ca_cert.public_key(), now)  # type: ignore[arg-type]
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


class Gateway:
    """One gateway instance. ``run()`` blocks; ``stop()`` (any thread, or SIGTERM) drains."""

    def __init__(self, config: GatewayConfig, loaded: Loaded) -> None:
        self.config = config
        self.directory = loaded.directory
        self.policy = loaded.policy
        self.keys = loaded.keys
        self.broker = loaded.broker
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
        self.counters: collections.Counter[str] = collections.Counter()
        self._publisher: ConfirmingPublisher | None = None
        self._consumer: Consumer | None = None
        self._stopping = threading.Event()
        # Staged for the batch end: (delivery, audit record or None, once key, then).
        self._pending: list[
            tuple[Delivery, Record | None, str | None, Callable[[Outcome | None], None]]
        ] = []
        self._pending_lock = threading.Lock()
        self._proofs = ThreadPoolExecutor(1, thread_name_prefix="audit-proofs")
        self.ready = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self, *, until_idle: float | None = None) -> None:
        """Consume until stopped; in-flight work is finished and acked before returning."""
        self._publisher = ConfirmingPublisher(self.broker)
        self.feed.start()  # new directory versions apply while running
        self._consumer = Consumer(
            self.broker,
            SUBMIT_QUEUE,
            self.handle,
            prefetch=self.config.prefetch,
            on_connected=self.ready.set,
            on_batch_end=self._commit_batch,
        )
        log.info(
            "gateway_started",
            gateway=self.config.gateway_id,
            policy=self.policy.name,
            directory_version=self.directory.version,
        )
        try:
            self._consumer.run(until_idle=until_idle, drain=self._publisher.flush)
        finally:
            self.feed.stop()
            self.counters["directory_refused"] = self.feed.refused
            self._commit_batch()
            self._checkpoint(force=True)  # the log as it stands at shutdown is signed too
            self._proofs.shutdown(wait=True)
            self._publisher.close()
            self.audit.close()
            log.info("gateway_stopped", gateway=self.config.gateway_id, **dict(self.counters))

    def _directory_updated(self, directory: Directory) -> None:
        """A new verified directory version: revocations and new agencies apply from now."""
        self.directory = directory
        self.counters["directory_updates"] += 1

    def audit_records(self) -> list[dict[str, object]]:
        """Every audit record so far (opens the store read-side; usable after ``run``)."""
        store = AuditStore(self.config.audit_db)
        try:
            return store.records()
        finally:
            store.close()

    def stop(self) -> None:
        """Stop taking messages; what is in flight completes."""
        self._stopping.set()
        if self._consumer is not None:
            self._consumer.stop()

    # --- group commit ------------------------------------------------------------------------

    def _stage(
        self,
        d: Delivery,
        record: Record | None,
        once_key: str | None,
        then: Callable[[Outcome | None], None],
    ) -> None:
        """Audit ``record`` at the batch end; ``then`` (forward, notify, ack) runs after it."""
        with self._pending_lock:
            self._pending.append((d, record, once_key, then))

    def _later(self, d: Delivery, action: Callable[[], None]) -> None:
        """Run ``action`` after the batch's audit records are durable."""
        self._stage(d, None, None, lambda _: action())

    def _commit_batch(self) -> None:
        """End of a consumer batch: one durable audit commit, then the batch's actions."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        try:
            outcomes = iter(self.audit.commit([(r, k) for _, r, k, _ in pending if r is not None]))
        except Exception as e:  # the records are not durable: nothing may act on them
            log.error("gateway_audit_commit_failed", error=type(e).__name__, detail=str(e)[:200])
            for d, *_ in pending:
                d.reject(requeue=True)
            return
        for d, record, _, then in pending:
            try:
                then(next(outcomes) if record is not None else None)
            except Exception as e:
                self.counters["internal_error"] += 1
                log.error("gateway_internal_error", error=type(e).__name__, detail=str(e)[:200])
                d.reject(requeue=True)
        self._checkpoint()

    def _checkpoint(self, *, force: bool = False) -> None:
        """Sign, store and publish a checkpoint when N leaves or T seconds have passed."""
        now = _now()
        previous = self.checkpointer.last.size if self.checkpointer.last else 0
        try:
            if not force and not self.checkpointer.due(now):
                return
            message = self.checkpointer.sign(now)
        except Exception as e:  # the log goes on; the next checkpoint covers this one
            log.error("checkpoint_failed", error=type(e).__name__, detail=str(e)[:200])
            return
        if message is None or self._publisher is None:
            return
        self.counters["checkpoints"] += 1
        future = self._publisher.publish(
            CHECKPOINT_EXCHANGE,
            self.config.gateway_id,
            message,
            pika.BasicProperties(type="checkpoint", content_type="application/json"),
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

    def _send_proofs(self, start: int, end: int, message: bytes) -> None:
        """Each sender gets, for its envelopes accepted in leaves [start, end), the leaf index
        and an inclusion proof in the new checkpoint: one message per sender."""
        try:
            log_id = self.audit.log_id
            checkpoint = json.loads(message)
            checkpoint.pop("consistency", None)
            by_sender: dict[str, list[dict[str, object]]] = {}
            for index, eid, sender in self.audit.accepted_between(log_id, start, end):
                proof = self.audit.inclusion_proof(log_id, index, end)
                by_sender.setdefault(sender, []).append(
                    {
                        "envelope_id": eid,
                        "leaf_index": index,
                        "leaf": base64.b64encode(self.audit.leaf(log_id, index)).decode(),
                        "proof": [base64.b64encode(h).decode() for h in proof],
                    }
                )
            assert self._publisher is not None
            for sender, entries in by_sender.items():
                body = json.dumps({"checkpoint": checkpoint, "entries": entries}).encode()
                self._publisher.publish(
                    DELIVER_EXCHANGE,
                    sender,
                    body,
                    pika.BasicProperties(type=MESSAGE_AUDIT_PROOF, content_type="application/json"),
                )
        except Exception as e:  # proofs can be made again any time: `cipherpost audit prove`
            log.error("audit_proofs_failed", error=type(e).__name__, detail=str(e)[:200])

    # --- per message -------------------------------------------------------------------------

    def handle(self, d: Delivery) -> None:
        """Entry point for every delivery (consumer thread)."""
        if self._stopping.is_set():
            return  # not acked: redelivered after restart or to another instance
        try:
            if d.kind == MESSAGE_NOTICE:
                self._notice(d)
            else:
                self._part(d)
        except Exception as e:  # an internal failure is not a verdict: retry, then dead-letter
            self.counters["internal_error"] += 1
            log.error("gateway_internal_error", error=type(e).__name__, detail=str(e)[:200])
            d.reject(requeue=True)

    def _publisher_code(self, d: Delivery) -> AgencyCode | None:
        login = d.user_id
        prefix = self.config.login_prefix
        if not login or not login.startswith(prefix):
            return None
        try:
            return AgencyCode.parse(login[len(prefix) :])
        except UsageError:
            return None

    def _check_publisher(self, d: Delivery, sender: AgencyCode) -> None:
        publisher = self._publisher_code(d)
        if publisher is None:
            raise EnvelopeRefused(
                Reason.PUBLISHER_MISSING, "submission has no valid user_id (publisher unknown)"
            )
        if publisher != sender:
            raise EnvelopeRefused(
                Reason.PUBLISHER, f"published by {publisher} but signed by {sender}"
            )

    def _check_not_retired(self, h: Header) -> None:
        """Merged communes: the notice names the code that took over."""
        for r in h.recipients:
            successor = self.directory.successor(r.code, _now())
            if successor is not None:
                raise EnvelopeRefused(
                    Reason.RETIRED,
                    f"recipient {r.code} is retired (merged into {successor}): send to {successor}",
                )

    def _part(self, d: Delivery) -> None:
        now = _now()
        try:
            part = parse_part(d.body)
        except EnvelopeRefused as e:
            self._refuse(d, None, "malformed", e.reason.rule_id, str(e), once_key=None, now=now)
            return
        h = part.header
        eid = h.envelope_id.hex()
        prior = self.audit.decision_for(eid)
        if prior is not None:
            self._known_envelope(d, part, prior[0], now)
            return
        try:
            sender = check_header_signature(h, part.header_signature, self.directory, now)
            self._check_publisher(d, h.sender)
        except EnvelopeRefused as e:
            # Not proven to come from the signer: recorded, but it does not decide the
            # envelope id (else anyone could block a real envelope by sending junk first).
            self._refuse(d, h, "submission", e.reason.rule_id, str(e), once_key=None, now=now)
            return
        try:
            checked = check_header_rest(h, sender, self.directory, now)
            check_segment(checked, part.segment)
            self._check_not_retired(h)
        except EnvelopeRefused as e:
            self._refuse(d, h, "submission", e.reason.rule_id, str(e), once_key=eid, now=now)
            return
        decision = self.policy.decide(checked)
        record = self._record(
            h,
            "submission",
            ACCEPTED if decision.allow else REFUSED,
            decision.rule_id,
            decision.reason,
            now,
        )

        def decided(o: Outcome | None) -> None:
            assert o is not None
            log.info(
                "gateway_decision",
                envelope=eid,
                sender=h.sender.text,
                recipients=len(h.recipients),
                label=h.level.value,
                decision=o.decision,
                rule=o.rule_id,
                leaf=o.leaf_index,
            )
            if o.decision == ACCEPTED:
                self._forward(d, checked, part)
            elif o.new:
                self.counters["refused"] += 1
                self._notify(d, h, o.rule_id, decision.reason, now)
            else:
                d.ack()

        self._stage(d, record, eid, decided)

    def _known_envelope(self, d: Delivery, part: Part, decision: str, now: dt.datetime) -> None:
        h = part.header
        eid = h.envelope_id.hex()
        if decision != ACCEPTED:
            self.counters["refused_envelope_part"] += 1
            self._later(d, d.ack)  # already audited and notified once
            return
        if self.audit.was_forwarded(eid, part.segment.index):
            if d.redelivered:
                self.counters["duplicate"] += 1
                self._later(d, d.ack)  # a redelivery after a crash: forwarded already, never twice
                return
            self._refuse(
                d,
                h,
                "replay",
                "replay",
                "envelope already delivered (replay refused)",
                once_key=None,
                now=now,
            )
            return
        try:
            checked = check_header(h.raw, part.header_signature, self.directory, now)
            self._check_publisher(d, h.sender)
            check_segment(checked, part.segment)
        except EnvelopeRefused as e:
            self._refuse(d, h, "part-refused", e.reason.rule_id, str(e), once_key=None, now=now)
            return
        # The decision may still be in this batch's open transaction: forward after the commit.
        self._later(d, lambda: self._forward(d, checked, part))

    def _forward(self, d: Delivery, checked: CheckedHeader, part: Part) -> None:
        h = checked.header
        eid = h.envelope_id.hex()
        codes = [r.code.text for r in h.recipients]
        props = pika.BasicProperties(
            type=MESSAGE_PART,
            content_type="application/x-cipherpost-part",
            headers={
                "CC": codes[1:],
                "x-cp-envelope-id": eid,
                "x-cp-part": part.segment.index,
                "x-cp-parts": h.segment_count,
                "x-cp-sender": h.sender.text,
            },
        )
        assert self._publisher is not None
        future = self._publisher.publish(DELIVER_EXCHANGE, codes[0], d.body, props)
        index = part.segment.index

        def done(f: Future[None]) -> None:
            error = f.exception()
            if error is None:
                self.audit.mark_forwarded(eid, index)
                self.counters["forwarded"] += 1
                d.ack()
            elif isinstance(error, Unroutable):
                self.counters["undeliverable"] += 1
                # To the dead-letter queue (kept, not dropped) once the record is durable.
                self._stage(
                    d,
                    self._record(h, "undeliverable", REFUSED, "undeliverable", str(error), _now()),
                    None,
                    lambda _: d.reject(requeue=False),
                )
            else:
                d.reject(requeue=True)

        future.add_done_callback(done)

    def _record(
        self,
        h: Header | None,
        event: str,
        decision: str,
        rule_id: str,
        reason: str,
        now: dt.datetime,
        *,
        sender: str = "",
        digest: str = "",
    ) -> Record:
        return Record(
            time=now,
            event=event,
            envelope_id=h.envelope_id.hex() if h else "",
            sender=h.sender.text if h else sender,
            recipients=tuple(r.code.text for r in h.recipients) if h else (),
            level=h.level.value if h else "",
            urgency=h.urgency.value if h else "",
            size=h.payload_size if h else 0,
            digest=h.hash.hex() if h else digest,
            decision=decision,
            rule_id=rule_id,
            reason=reason,
            gateway_id=self.config.gateway_id,
        )

    def _refuse(
        self,
        d: Delivery,
        h: Header | None,
        event: str,
        rule_id: str,
        reason: str,
        *,
        once_key: str | None,
        now: dt.datetime,
    ) -> None:
        publisher = self._publisher_code(d)
        record = self._record(
            h,
            event,
            REFUSED,
            rule_id,
            reason,
            now,
            sender=publisher.text if publisher else (d.user_id or "?"),
            digest=hashlib.sha256(d.body).hexdigest(),
        )
        self.counters[f"refused_{event}"] += 1
        log.info(
            "gateway_refused",
            kind=event,
            envelope=record.envelope_id or None,
            publisher=publisher.text if publisher else None,
            rule=rule_id,
            reason=reason,
        )

        def decided(o: Outcome | None) -> None:
            if o is not None and o.new:
                self._notify(d, h, rule_id, reason, now)
            else:
                d.ack()

        self._stage(d, record, once_key, decided)

    def _notify(
        self, d: Delivery, h: Header | None, rule_id: str, reason: str, now: dt.datetime
    ) -> None:
        """A signed rejection notice to the publisher (or, lacking one, the signed sender)."""
        addressee = self._publisher_code(d) or (h.sender if h else None)
        if addressee is None or addressee.text not in self.directory.entries:
            d.ack()  # nobody to tell; the audit record is the trace
            return
        notice = sign_notice(
            self.keys.signing_key,
            kind=KIND_REJECTION,
            envelope_id=h.envelope_id if h else NO_ENVELOPE,
            header_hash=h.hash if h else b"",
            signer=self.keys.code,
            addressee=addressee,
            status=GATEWAY_REFUSED,
            now=now,
            rule_id=rule_id,
            reason=reason,
        )
        assert self._publisher is not None
        future = self._publisher.publish(
            DELIVER_EXCHANGE,
            addressee.text,
            notice.raw,
            pika.BasicProperties(
                type=MESSAGE_NOTICE, content_type="application/x-cipherpost-notice"
            ),
        )
        future.add_done_callback(
            lambda f: (
                d.ack()
                if f.exception() is None or isinstance(f.exception(), Unroutable)
                else d.reject(requeue=True)
            )
        )

    def _notice(self, d: Delivery) -> None:
        now = _now()
        try:
            notice = verify_notice(d.body, self.directory, now)
            self._check_publisher(d, notice.signer)
            if notice.kind == KIND_REJECTION:
                raise EnvelopeRefused(Reason.NOTICE_KIND)
        except EnvelopeRefused as e:
            self._refuse(
                d, None, "notice-refused", e.reason.rule_id, str(e), once_key=None, now=now
            )
            return
        digest = hashlib.sha256(notice.raw).hexdigest()
        record = Record(
            now,
            notice.kind,
            notice.envelope_id.hex(),
            notice.signer.text,
            (notice.addressee.text,),
            "",
            "",
            0,
            digest,
            ACCEPTED,
            "notice",
            f"status {notice.status}",
            self.config.gateway_id,
        )
        self._stage(d, record, f"notice:{digest}", lambda _: self._relay_notice(d, notice))

    def _relay_notice(self, d: Delivery, notice: Notice) -> None:
        assert self._publisher is not None
        future = self._publisher.publish(
            DELIVER_EXCHANGE,
            notice.addressee.text,
            notice.raw,
            pika.BasicProperties(
                type=MESSAGE_NOTICE, content_type="application/x-cipherpost-notice"
            ),
        )
        self.counters["notices"] += 1
        future.add_done_callback(
            lambda f: (
                d.ack()
                if f.exception() is None or isinstance(f.exception(), Unroutable)
                else d.reject(requeue=True)
            )
        )
