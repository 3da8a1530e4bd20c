"""The gateway's decision: a pure function of verified facts, bound to the exact header.

:func:`decide` takes one incoming message (its bytes, its AMQP type, the
publisher login RabbitMQ validated, the submit lane it came through), the
gateway's state as recorded in its audit store (:class:`State`), and the
context in force (directory, policy, time), and returns a :class:`Verdict`.
It does no I/O; :mod:`gateway.service` settles the verdict (audit record,
forward, notice, ack) over the broker.

The order of checks is the security argument:

1. Bytes parse strictly; the publisher is a login RabbitMQ validated, it came
   through its own lane, and it is the signer the bytes name; the signer's
   certified key signed these exact header bytes. Until all of that holds,
   nothing the bytes say is a fact: the verdict is :class:`Junk` (recorded
   with the publisher, size and digest only, aggregated, notified only to the
   verified publisher).
2. The state is looked up by (envelope id, header hash): a header already
   decided keeps its decision; another header under a decided id is refused
   (``invariant:id-reuse``) and decides nothing else.
3. A new header: segment signature, lifetime, parties, clearances, retired
   codes (invariants no rule can switch off), then the policy's first matching
   rule. The decision names its rule id, the policy and directory versions.
4. Later parts of an accepted header are forwarded once: a byte-identical copy
   from the signer is a duplicate (no leaf, no notice), another part at the
   same position is refused (``invariant:part-conflict``).

Notices (receipts, statuses, recalls) pass the same first step, then travel
only along an edge the gateway accepted: a receipt or status from a recipient
of that exact header to its sender; a recall from its sender to its recipients.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, replace
from typing import Protocol

from broker.topology import lane_code
from envelopes.checking import (
    CheckedHeader,
    check_header_rest,
    check_header_signature,
    check_segment,
)
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.header import Header
from envelopes.notices import KIND_RECALL, KIND_REJECTION, Notice, parse_notice, verify_notice
from envelopes.parts import Part, parse_part
from gateway.audit import ACCEPTED, REFUSED, SUBMISSION, Decided, Record
from gateway.policy import Policy
from keys.codes import AgencyCode
from keys.directory import Directory
from keys.errors import UsageError

MESSAGE_PART = "part"
MESSAGE_NOTICE = "notice"
MESSAGE_AUDIT_PROOF = "audit-proof"
PART_REFUSED = "part-refused"
NOTICE_REFUSED = "notice-refused"


class State(Protocol):
    """What the gateway recorded so far (the audit store, plus forwards in flight)."""

    def decision(self, envelope_id: str, header_hash: str) -> Decided | None: ...

    def has_envelope(self, envelope_id: str) -> bool: ...

    def forwarded(self, envelope_id: str, header_hash: str, part: int) -> str | None: ...

    def relayed(self, digest: str) -> bool: ...


@dataclass(frozen=True)
class Context:
    """What decides, besides the message: all of it verified before it got here."""

    directory: Directory
    policy: Policy
    now: dt.datetime
    gateway_id: str
    login_prefix: str = ""

    @property
    def versions(self) -> tuple[int, int]:
        return self.policy.version, self.directory.version


@dataclass(frozen=True)
class Incoming:
    """One message as the broker vouches for it."""

    body: bytes
    kind: str | None
    user_id: str | None  # validated by RabbitMQ against the login, when set
    queue: str = ""  # the submit lane it came through

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


# --- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Junk:
    """Refused before any signature was verified: counted per publisher, never attributed."""

    publisher: str  # the validated login, or "" when there is none
    notify: AgencyCode | None  # the verified publisher's code, if it is an agency
    reason: Reason


@dataclass(frozen=True)
class Decide:
    """The first decision on one exact header: recorded once; accepted -> forward this part."""

    record: Record
    key: tuple[str, str]
    part: Part
    checked: CheckedHeader | None  # None when refused before the policy could run
    notify: AgencyCode


@dataclass(frozen=True)
class Refuse:
    """A verified message refused without deciding any header (a bad part, a bad notice)."""

    record: Record
    notify: AgencyCode
    header: Header | None = None


@dataclass(frozen=True)
class Forward:
    """Another part of an accepted header: forwarded (once) after the batch commit."""

    part: Part
    checked: CheckedHeader
    digest: str


@dataclass(frozen=True)
class Duplicate:
    """Already handled (a copy of a forwarded part, a part of a refused header): ack only."""

    what: str


@dataclass(frozen=True)
class Relay:
    """A notice along an accepted edge: recorded once, then relayed to its addressee."""

    record: Record
    notice: Notice


Verdict = Junk | Decide | Refuse | Forward | Duplicate | Relay


def decide(message: Incoming, state: State, ctx: Context) -> Verdict:
    """The verdict on one message. Never raises for anything a sender can put in it."""
    try:
        if message.kind == MESSAGE_NOTICE:
            return _notice(message, state, ctx)
        return _part(message, state, ctx)
    except EnvelopeRefused as e:  # a check below failed before any signature verified
        return _junk(message, ctx, e.reason)


def id_reuse(record: Record) -> Record:
    """The record made instead of a decision, for a second header under a decided id."""
    return _refused_as(record, Reason.ID_REUSE, Reason.ID_REUSE.text)


# --- parts -------------------------------------------------------------------------------------


def _part(message: Incoming, state: State, ctx: Context) -> Verdict:
    part = parse_part(message.body)
    h = part.header
    publisher = _verified_publisher(message, h.sender, ctx)
    sender = check_header_signature(h, part.header_signature, ctx.directory, ctx.now)
    # Verified from here: the sender signed these header bytes and published them itself.
    eid, hh = h.envelope_id.hex(), h.hash.hex()
    standing = state.decision(eid, hh)
    if standing is None and state.has_envelope(eid):
        return Decide(id_reuse(_record(h, ctx, publisher)), (eid, hh), part, None, publisher)
    if standing is not None and standing.decision != ACCEPTED:
        return Duplicate("part of a refused envelope")
    try:
        if standing is not None and ctx.now > h.expires:
            raise EnvelopeRefused(
                Reason.EXPIRED, f"envelope expired at {h.expires:%Y-%m-%d %H:%M}Z"
            )
        # A bad segment decides nothing: the header may still come with good ones.
        check_segment(CheckedHeader(h, sender, ()), part.segment)
    except EnvelopeRefused as e:
        record = _refused_as(_record(h, ctx, publisher, PART_REFUSED), e.reason, str(e))
        return Refuse(record, publisher, h)
    if standing is not None:  # another part of an accepted header
        return _later_part(message, part, CheckedHeader(h, sender, ()), state, ctx, publisher)
    try:
        checked = check_header_rest(h, sender, ctx.directory, ctx.now)
        _check_not_retired(h, ctx)
    except EnvelopeRefused as e:
        record = _refused_as(_record(h, ctx, publisher), e.reason, str(e))
        return Decide(record, (eid, hh), part, None, publisher)
    verdict = ctx.policy.decide(checked)
    record = _record(h, ctx, publisher)
    record = _with(record, ACCEPTED if verdict.allow else REFUSED, verdict.rule_id, verdict.reason)
    return Decide(record, (eid, hh), part, checked, publisher)


def _later_part(
    message: Incoming,
    part: Part,
    checked: CheckedHeader,
    state: State,
    ctx: Context,
    publisher: AgencyCode,
) -> Verdict:
    h = checked.header
    done = state.forwarded(h.envelope_id.hex(), h.hash.hex(), part.segment.index)
    if done == message.digest:
        return Duplicate("a byte-identical copy of a forwarded part")
    if done is not None:
        reason = Reason.PART_CONFLICT
        record = _refused_as(_record(h, ctx, publisher, PART_REFUSED), reason, reason.text)
        return Refuse(record, publisher, h)
    return Forward(part, checked, message.digest)


def _check_not_retired(h: Header, ctx: Context) -> None:
    """Merged communes: the refusal names the code that took over."""
    for r in h.recipients:
        successor = ctx.directory.successor(r.code, ctx.now)
        if successor is not None:
            raise EnvelopeRefused(
                Reason.RETIRED,
                f"recipient {r.code} is retired (merged into {successor}): send to {successor}",
            )


# --- notices -----------------------------------------------------------------------------------


def _notice(message: Incoming, state: State, ctx: Context) -> Verdict:
    claimed, _ = parse_notice(message.body)
    publisher = _verified_publisher(message, claimed.signer, ctx)
    notice = verify_notice(message.body, ctx.directory, ctx.now)
    # Verified from here: the signer signed these bytes and published them itself.
    record = Record(
        time=ctx.now,
        event=notice.kind,
        envelope_id=notice.envelope_id.hex(),
        sender=notice.signer.text,
        recipients=(notice.addressee.text,),
        level="",
        urgency="",
        size=len(message.body),
        digest=message.digest,
        decision=ACCEPTED,
        rule_id="notice",
        reason=f"status {notice.status}",
        gateway_id=ctx.gateway_id,
        publisher=message.user_id or "",
        policy_version=ctx.policy.version,
        directory_version=ctx.directory.version,
    )
    refused = replace(record, event=NOTICE_REFUSED)
    if notice.kind == KIND_REJECTION:
        reason = Reason.NOTICE_KIND
        return Refuse(_refused_as(refused, reason, reason.text), publisher)
    if not _along_an_accepted_edge(notice, state):
        reason = Reason.NOTICE_EDGE
        return Refuse(_refused_as(refused, reason, reason.text), publisher)
    if state.relayed(message.digest):
        return Duplicate("a notice relayed already")
    return Relay(record, notice)


def _along_an_accepted_edge(notice: Notice, state: State) -> bool:
    if len(notice.header_hash) != 32:
        return False
    standing = state.decision(notice.envelope_id.hex(), notice.header_hash.hex())
    if standing is None or standing.decision != ACCEPTED:
        return False
    signer, addressee = notice.signer.text, notice.addressee.text
    if notice.kind == KIND_RECALL:
        return signer == standing.sender and addressee in standing.recipients
    return signer in standing.recipients and addressee == standing.sender


# --- shared ------------------------------------------------------------------------------------


def _verified_publisher(message: Incoming, signer: AgencyCode, ctx: Context) -> AgencyCode:
    """The agency RabbitMQ vouches published this, which must be the one that signed it."""
    publisher = _publisher_code(message, ctx)
    if publisher is None:
        raise EnvelopeRefused(Reason.PUBLISHER_MISSING)
    lane = lane_code(message.queue) if message.queue else publisher
    if publisher != signer or lane != publisher:
        raise EnvelopeRefused(Reason.PUBLISHER)
    return publisher


def _publisher_code(message: Incoming, ctx: Context) -> AgencyCode | None:
    login = message.user_id
    if not login or not login.startswith(ctx.login_prefix):
        return None
    try:
        return AgencyCode.parse(login[len(ctx.login_prefix) :])
    except UsageError:
        return None


def _junk(message: Incoming, ctx: Context, reason: Reason) -> Junk:
    publisher = _publisher_code(message, ctx)
    known = publisher is not None and publisher.text in ctx.directory.entries
    return Junk(message.user_id or "", publisher if known else None, reason)


def _record(h: Header, ctx: Context, publisher: AgencyCode, event: str = SUBMISSION) -> Record:
    """A record of verified header facts (the decision fields are set by the caller)."""
    return Record(
        time=ctx.now,
        event=event,
        envelope_id=h.envelope_id.hex(),
        sender=h.sender.text,
        recipients=tuple(r.code.text for r in h.recipients),
        level=h.level.value,
        urgency=h.urgency.value,
        size=h.payload_size,
        digest=h.hash.hex(),
        decision=REFUSED,
        rule_id="",
        reason="",
        gateway_id=ctx.gateway_id,
        publisher=ctx.login_prefix + publisher.text,
        policy_version=ctx.policy.version,
        directory_version=ctx.directory.version,
    )


def _with(record: Record, decision: str, rule_id: str, reason: str) -> Record:
    return replace(record, decision=decision, rule_id=rule_id, reason=reason)


def _refused_as(record: Record, reason: Reason, text: str) -> Record:
    return _with(record, REFUSED, reason.rule_id, text)
