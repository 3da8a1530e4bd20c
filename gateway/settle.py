"""Settling a verdict of :func:`gateway.decide.decide` over the transport
(:mod:`gateway.transport`). Settlement order, for every verdict (ack order: verify -> audit
record durable -> forwards confirmed -> ack):

- records of one consumer batch are committed together (group commit: one
  fsync); forwards, notices and acks of the batch run only after that commit,
  so nothing acts on a decision that is not durable;
- an accepted part goes to every recipient's inbox in one publish (``CC``),
  marked forwarded (with the digest of its bytes) once the broker confirmed;
- a refusal gets one signed rejection notice, to the verified publisher only;
- junk (refused before any signature verified) is tallied per publisher and
  written as one leaf per tally (:mod:`gateway.junk`); it is acked after that.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from broker import wire
from broker.publisher import Unroutable
from broker.topology import DELIVER_EXCHANGE
from envelopes.errors import Reason
from envelopes.header import Header
from envelopes.notices import GATEWAY_REFUSED, KIND_REJECTION, Notice, sign_notice
from envelopes.parts import Part
from gateway import clock
from gateway.audit import ACCEPTED, REFUSED, AuditStore, Decided, Entry, Outcome, Record
from gateway.decide import (
    RESOLVE,
    Decide,
    Duplicate,
    Forward,
    Junk,
    Refuse,
    Relay,
)
from gateway.flood import SUSPEND_RULE, SUSPENDED, FloodGuard
from gateway.junk import LANE_PUBLISHER, JunkLedger
from gateway.pause import Pause
from gateway.proofs import Proofs
from gateway.transport import Settleable
from keys.codes import AgencyCode
from keys.errors import clip
from keys.logsetup import get_logger

log = get_logger("cipherpost.gateway")

NO_ENVELOPE = b"\0" * 16


class DecisionState:
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


class Settle(Pause, Proofs):
    """The gateway's settling of verdicts (a part of :class:`gateway.service.Gateway`): the
    batch end also signs a checkpoint when one is due and resumes a pause that is over."""

    state: DecisionState
    junk: JunkLedger[tuple[Settleable, AgencyCode | None]]
    flood: FloodGuard
    _pending: list[tuple[list[Settleable], Entry | None, Then]]
    _pending_lock: threading.Lock
    _store_ok: bool

    def _settle(self, d: Settleable, verdict: object, now: dt.datetime) -> None:
        if isinstance(verdict, Junk):
            self.counters[f"junk_{verdict.reason.value}"] += 1
            count = self.junk.add(verdict.publisher, verdict.reason, d.body,
                                  (d, verdict.notify), now)  # fmt: skip
            d.body = b""  # only its digest and size are kept
            if verdict.notify is not None:  # a login of a directory agency
                self.flood.junk(self._login(verdict.publisher), count)
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
            if verdict.publisher is not None:  # verified: the signer published it itself
                self.flood.duplicate(self.config.login_prefix + verdict.publisher.text)
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

    # --- group commit -----------------------------------------------------------------------------

    def _keep_unbacked(
        self, pending: list[tuple[list[Settleable], Entry | None, Then]], error: Exception
    ) -> None:
        """After a failed commit: a record with no delivery behind it (a suspension) has no
        redelivery to bring it back. When the store failed (disk full, I/O, locked) it waits
        for the next commit; after any other error it might be the cause itself, and one that
        fails every commit must not hold up the gateway's records: it is logged as lost."""
        transient = isinstance(error, OSError | sqlite3.OperationalError)
        kept = []
        for item in pending:
            ds, entry, _ = item
            if ds or entry is None:
                continue
            if transient:
                kept.append(item)
            else:
                log.error("gateway_record_lost", record_event=entry.record.event,
                          publisher=entry.record.publisher, error=type(error).__name__)  # fmt: skip
        with self._pending_lock:
            self._pending[:0] = kept

    def _stage(self, ds: list[Settleable], entry: Entry | None, then: Then) -> None:
        """Audit ``entry`` at the batch end; ``then`` (forward, notify, ack) runs after it."""
        with self._pending_lock:
            self._pending.append((ds, entry, then))

    def _later(self, d: Settleable, action: Callable[[], None]) -> None:
        """Run ``action`` after the batch's audit records are durable."""
        self._stage([d], None, lambda _: action())

    def commit_batch(self, *, everything: bool = False) -> None:
        """End of a consumer batch: one durable audit commit, then the batch's actions."""
        now = clock.now()
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
                    d.reject(requeue=True)  # the broker brings it again
            self._keep_unbacked(pending, e)
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

    def _login(self, publisher: str) -> str:
        """The broker login behind a junk tally's publisher name (a ``lane:`` name is the
        routing key's owner: only that login may publish with it)."""
        if publisher.startswith(LANE_PUBLISHER):
            return self.config.login_prefix + publisher[len(LANE_PUBLISHER) :]
        return publisher

    def _suspended(self, login: str, closed: int, count: int, what: str) -> None:
        """The flood guard suspended ``login`` (its thread): a leaf at the next batch end."""
        self.counters["suspended"] += 1
        now = clock.now()
        versions = self.context(now).versions
        record = Record(
            time=now,
            event=SUSPENDED,
            envelope_id="",
            sender="",
            recipients=(),
            level="",
            urgency="",
            size=0,
            digest="",
            decision=REFUSED,
            rule_id=SUSPEND_RULE,
            reason=f"{count} {what}: login suspended on the broker, {closed} connection(s) closed",
            gateway_id=self.config.gateway_id,
            publisher=login,
            count=count,
            policy_version=versions[0],
            directory_version=versions[1],
        )
        self._stage([], Entry(record), lambda _: None)

    # --- forwards and notices ---------------------------------------------------------------------

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
                    time=clock.now(),
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
            now=clock.now(),
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


def _publisher_of(h: Header) -> AgencyCode:
    """The verified publisher of a part of ``h``: its signer (decide checked they are one)."""
    return h.sender
