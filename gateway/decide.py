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
2. A verified message refused before is acked again without a second record.
3. The state is looked up by (envelope id, header hash): a header already
   decided keeps its decision; another header under a decided id is refused
   (``invariant:id-reuse``) and decides nothing else.
4. A new header: the sender not retired, the segment signature, lifetime,
   parties, clearances, retired recipients (invariants no rule can switch
   off), then the policy's first matching rule. The decision names its rule
   id, the policy and directory versions, and the part it came with.
5. Later parts of an accepted header: one part per position, recorded before
   it is forwarded (a byte-identical copy is a duplicate, another part a
   conflict), not after the envelope expired, and never to a recipient the
   directory in force no longer lets take part (revoked, retired, expired).

Notices (receipts, statuses, recalls) pass the same first steps, then travel
only along an edge the gateway accepted: a receipt or status from a recipient
of that exact header to its sender; a recall from its sender to its
recipients; each (envelope, signer, kind, status) once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Protocol

from broker.wire import MESSAGE_NOTICE
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
from gateway.audit import (
    ACCEPTED,
    PART,
    REFUSED,
    SUBMISSION,
    Decided,
    Outcome,
    Record,
    notice_reason,
    relay_key,
)
from gateway.incoming import (
    Incoming,
    key_owner,
    misrouted,
    publisher_code,
    verified_publisher,
)
from gateway.junk import LANE_PUBLISHER
from gateway.policy import Policy
from keys.codes import AgencyCode
from keys.directory import Directory

PART_REFUSED = "part-refused"
NOTICE_REFUSED = "notice-refused"


class State(Protocol):
    """What the gateway recorded so far (the audit store, plus forwards in flight)."""

    def decision(self, envelope_id: str, header_hash: str) -> Decided | None: ...

    def has_envelope(self, envelope_id: str) -> bool: ...

    def part(self, envelope_id: str, header_hash: str, index: int) -> str | None: ...

    def confirmed(self, envelope_id: str, header_hash: str, index: int) -> bool: ...

    def relayed(self, key: str) -> bool: ...

    def refused(self, digest: str) -> bool: ...


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


# --- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Junk:
    """Refused before any signature was verified: counted per publisher, never attributed."""

    publisher: str  # the validated login, ``lane:<code>`` without one, or ""
    notify: AgencyCode | None  # the verified publisher's code, if it is an agency
    reason: Reason


@dataclass(frozen=True)
class Decide:
    """The first decision on one exact header: recorded once with the part it came with;
    accepted -> that part is forwarded."""

    record: Record
    key: tuple[str, str]
    part: Part
    digest: str
    notify: AgencyCode

    @property
    def claim(self) -> tuple[str, str, int, str]:
        return (*self.key, self.part.segment.index, self.digest)


@dataclass(frozen=True)
class Refuse:
    """A verified message refused without deciding any header (a bad part, a bad notice);
    recorded once per message."""

    record: Record
    notify: AgencyCode
    header: Header | None = None


@dataclass(frozen=True)
class Forward:
    """Another part of an accepted header: recorded (``record``, unless it was before and
    only its forward is missing), then forwarded to ``to`` after the batch commit."""

    part: Part
    header: Header
    digest: str
    to: tuple[str, ...]
    record: Record | None

    @property
    def claim(self) -> tuple[str, str, int, str]:
        h = self.header
        return (h.envelope_id.hex(), h.hash.hex(), self.part.segment.index, self.digest)


@dataclass(frozen=True)
class Duplicate:
    """Already handled (a copy of a forwarded part, of a refusal, of a relayed notice).

    ``publisher``: the verified publisher (every copy is found after the signature and
    publisher checks), whose copies the flood guard counts."""

    what: str
    publisher: AgencyCode | None = None


@dataclass(frozen=True)
class Relay:
    """A notice along an accepted edge: recorded once, then relayed to its addressee."""

    record: Record
    notice: Notice
    key: str


Verdict = Junk | Decide | Refuse | Forward | Duplicate | Relay


def decide(message: Incoming, state: State, ctx: Context) -> Verdict:
    """The verdict on one message. Never raises for anything a sender can put in it."""
    try:
        if misrouted(message):
            raise EnvelopeRefused(Reason.MISROUTED, Reason.MISROUTED.text)
        if message.kind == MESSAGE_NOTICE:
            return _notice(message, state, ctx)
        return _part(message, state, ctx)
    except EnvelopeRefused as e:  # a check below failed before any signature verified
        return _junk(message, ctx, e.reason)


class Resolve:
    """What the audit store records instead of a claim that contradicts the store."""

    def id_reuse(self, record: Record) -> Record:
        """A second header under a decided envelope id: refused, decides nothing else."""
        return _refused_as(record, Reason.ID_REUSE, Reason.ID_REUSE.text)

    def part_conflict(self, record: Record) -> Record:
        """Another part at a position already accepted: refused."""
        r = _refused_as(record, Reason.PART_CONFLICT, Reason.PART_CONFLICT.text)
        return replace(r, event=PART_REFUSED)

    def later_part(self, record: Record, standing: Outcome) -> Record:
        """A second part decided in the deciding batch: the record of that part."""
        return replace(record, event=PART, rule_id=standing.rule_id, reason="")


RESOLVE = Resolve()


def id_reuse(record: Record) -> Record:
    """The record made instead of a decision, for a second header under a decided id."""
    return RESOLVE.id_reuse(record)


# --- parts -------------------------------------------------------------------------------------


def _part(message: Incoming, state: State, ctx: Context) -> Verdict:
    part = parse_part(message.body)
    h = part.header
    publisher = verified_publisher(message, h.sender, ctx.login_prefix)
    sender = check_header_signature(h, part.header_signature, ctx.directory, ctx.now)
    # Verified from here: the sender signed these header bytes and published them itself.
    if state.refused(message.digest):
        return Duplicate("a refused part again", publisher)
    eid, hh = h.envelope_id.hex(), h.hash.hex()
    standing = state.decision(eid, hh)
    record = _record(h, ctx, publisher, message, part.segment.index)
    if standing is None and state.has_envelope(eid):
        return Decide(id_reuse(record), (eid, hh), part, message.digest, publisher)
    if standing is not None:
        if standing.decision != ACCEPTED:
            return Duplicate("part of a refused envelope", publisher)
        return _later_part(message, part, sender_checked(h, sender), state, ctx, publisher)
    try:
        _check_not_retired(h.sender, ctx, "sender")
        # A bad segment decides nothing: the header may still come with good ones.
        check_segment(sender_checked(h, sender), part.segment)
    except EnvelopeRefused as e:
        if e.reason is Reason.RETIRED:
            return Decide(_refused_as(record, e.reason, str(e)), (eid, hh), part, message.digest,
                          publisher)  # fmt: skip
        return Refuse(_refused_as(replace(record, event=PART_REFUSED), e.reason, str(e)),
                      publisher, h)  # fmt: skip
    try:
        checked = check_header_rest(h, sender, ctx.directory, ctx.now)
        for r in h.recipients:
            _check_not_retired(r.code, ctx, "recipient")
    except EnvelopeRefused as e:
        return Decide(_refused_as(record, e.reason, str(e)), (eid, hh), part, message.digest,
                      publisher)  # fmt: skip
    verdict = ctx.policy.decide(checked)
    record = replace(
        record,
        decision=ACCEPTED if verdict.allow else REFUSED,
        rule_id=verdict.rule_id,
        reason=verdict.reason,
    )
    return Decide(record, (eid, hh), part, message.digest, publisher)


def sender_checked(h: Header, sender: object) -> CheckedHeader:
    """A header whose sender and signature checked out (what a segment check needs)."""
    return CheckedHeader(h, sender, ())  # type: ignore[arg-type]


def _later_part(
    message: Incoming,
    part: Part,
    checked: CheckedHeader,
    state: State,
    ctx: Context,
    publisher: AgencyCode,
) -> Verdict:
    h = checked.header
    eid, hh, index = h.envelope_id.hex(), h.hash.hex(), part.segment.index
    claimed = state.part(eid, hh, index)
    if claimed == message.digest and state.confirmed(eid, hh, index):
        return Duplicate("a byte-identical copy of a forwarded part", publisher)
    record = _record(h, ctx, publisher, message, index, PART_REFUSED)
    if claimed is not None and claimed != message.digest:
        return Refuse(RESOLVE.part_conflict(record), publisher, h)
    try:
        if ctx.now > h.expires:
            raise EnvelopeRefused(
                Reason.EXPIRED, f"envelope expired at {h.expires:%Y-%m-%d %H:%M}Z"
            )
        check_segment(checked, part.segment)
    except EnvelopeRefused as e:
        return Refuse(_refused_as(record, e.reason, str(e)), publisher, h)
    to, withheld = _still_recipients(h, ctx)
    if not to:
        reason, text = withheld[0][1], f"no recipient may take part now: {withheld[0][2]}"
        return Refuse(_refused_as(record, reason, text), publisher, h)
    part_record = None
    if claimed is None:  # recorded before it is forwarded: what reaches an inbox is in the log
        part_record = replace(
            record,
            event=PART,
            decision=ACCEPTED,
            rule_id=PART,
            recipients=to,
            reason=(
                "withheld from "
                + ", ".join(f"{code} ({reason.value})" for code, reason, _ in withheld)
                if withheld
                else ""
            ),
        )
    return Forward(part, h, message.digest, to, part_record)


def _still_recipients(
    h: Header, ctx: Context
) -> tuple[tuple[str, ...], list[tuple[str, Reason, str]]]:
    """The header's recipients the directory in force still lets take part, and the others
    (revoked or retired since the decision: a later part never reaches them)."""
    to: list[str] = []
    withheld: list[tuple[str, Reason, str]] = []
    for r in h.recipients:
        entry = ctx.directory.entries.get(r.code.text)
        if entry is None:
            withheld.append((r.code.text, Reason.RECIPIENT_UNKNOWN, f"{r.code} unknown"))
        elif entry.revoked:
            withheld.append((r.code.text, Reason.RECIPIENT_REVOKED, f"{r.code} revoked"))
        elif not entry.enc.valid_at(ctx.now):
            text = f"{r.code} has no valid certificate"
            withheld.append((r.code.text, Reason.RECIPIENT_CERTIFICATE, text))
        elif ctx.directory.successor(r.code, ctx.now) is not None:
            withheld.append((r.code.text, Reason.RETIRED, f"{r.code} retired"))
        else:
            to.append(r.code.text)
    return tuple(to), withheld


def _check_not_retired(code: AgencyCode, ctx: Context, role: str) -> None:
    """Merged communes: the refusal names the code that took over."""
    successor = ctx.directory.successor(code, ctx.now)
    if successor is not None:
        then = f"send to {successor}" if role == "recipient" else f"it is {successor} now"
        raise EnvelopeRefused(
            Reason.RETIRED, f"{role} {code} is retired (merged into {successor}): {then}"
        )


# --- notices -----------------------------------------------------------------------------------


def _notice(message: Incoming, state: State, ctx: Context) -> Verdict:
    claimed, _ = parse_notice(message.body)
    publisher = verified_publisher(message, claimed.signer, ctx.login_prefix)
    notice = verify_notice(message.body, ctx.directory, ctx.now)
    # Verified from here: the signer signed these bytes and published them itself.
    if state.refused(message.digest):
        return Duplicate("a refused notice again", publisher)
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
        reason=notice_reason(notice.status),
        gateway_id=ctx.gateway_id,
        publisher=message.user_id or "",
        policy_version=ctx.policy.version,
        directory_version=ctx.directory.version,
        message_digest=message.digest,
    )
    refused = replace(record, event=NOTICE_REFUSED)
    try:
        _check_not_retired(notice.signer, ctx, "signer")
    except EnvelopeRefused as e:
        return Refuse(_refused_as(refused, e.reason, str(e)), publisher)
    if notice.kind == KIND_REJECTION:
        reason = Reason.NOTICE_KIND
        return Refuse(_refused_as(refused, reason, reason.text), publisher)
    if not _along_an_accepted_edge(notice, state):
        reason = Reason.NOTICE_EDGE
        return Refuse(_refused_as(refused, reason, reason.text), publisher)
    key = relay_key(
        record.envelope_id, record.sender, notice.kind, notice.status, notice.addressee.text
    )
    if state.relayed(key):
        return Duplicate("this status along this edge was relayed already", publisher)
    return Relay(record, notice, key)


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


def _junk(message: Incoming, ctx: Context, reason: Reason) -> Junk:
    publisher = publisher_code(message, ctx.login_prefix)
    name = message.user_id or ""
    if not message.user_id:
        # No user_id: the routing key names its owner, the only login its topic permission
        # lets publish with it. Never the lane: CC/BCC put a copy in any lane (3.10).
        publisher = key_owner(message)
        name = f"{LANE_PUBLISHER}{publisher.text}" if publisher else ""
    known = publisher is not None and publisher.text in ctx.directory.entries
    return Junk(name, publisher if known else None, reason)


def _record(
    h: Header,
    ctx: Context,
    publisher: AgencyCode,
    message: Incoming,
    part: int,
    event: str = SUBMISSION,
) -> Record:
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
        part=part,
        message_digest=message.digest,
    )


def _refused_as(record: Record, reason: Reason, text: str) -> Record:
    return replace(record, decision=REFUSED, rule_id=reason.rule_id, reason=text)
