"""The audit record: its one field tuple, its canonical leaf bytes, and the claims an append makes.

:data:`RECORD_FIELDS` is the one list of a record's fields; the leaf order
(:data:`LEAF_FIELDS`), the stored columns and the SQL schema derive from it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, fields
from typing import Protocol

import msgpack

LEAF_VERSION = 2
ACCEPTED = "accepted"
REFUSED = "refused"
SUBMISSION = "submission"  # the event of a decision on one verified header
PART = "part"  # the event of a later part accepted under a decided header
NOTICE_EVENTS = ("receipt", "status", "recall")  # relayed notices
REFUSAL_EVENTS = ("part-refused", "notice-refused")  # verified messages refused once


@dataclass(frozen=True)
class Record:
    """One audit record (no plaintext, no keys).

    Before any signature was verified a record names only ``publisher`` (the
    broker-validated login, or ``none``), ``size``, ``digest``, ``count`` and a
    typed reason: ``envelope_id``, ``sender``, ``recipients`` and ``level`` stay
    empty. ``count`` > 1: one record for that many refused messages of one
    publisher (``digest`` then chains their digests, :mod:`gateway.junk`).
    """

    time: dt.datetime
    event: str
    envelope_id: str
    sender: str
    recipients: tuple[str, ...]
    level: str
    urgency: str
    size: int
    digest: str
    decision: str
    rule_id: str
    reason: str
    gateway_id: str
    publisher: str = ""
    count: int = 1
    policy_version: int = 0
    directory_version: int = 0
    part: int = -1  # the part (segment index) this leaf is about, if any
    message_digest: str = ""  # SHA-256 of the exact message (part or notice) it is about

    def values(self) -> dict[str, object]:
        """Every field by name, as stored (time ISO 8601, recipients a list)."""
        out = {f: getattr(self, f) for f in RECORD_FIELDS}
        out["time"] = self.time.isoformat()
        out["recipients"] = list(self.recipients)
        return out

    def leaf(self, seq: int) -> bytes:
        """Canonical leaf bytes: fixed field order (:data:`LEAF_FIELDS`), integers and strings."""
        return self.stored(seq)[1]

    def stored(self, seq: int) -> tuple[tuple[object, ...], bytes]:
        """The stored columns (:data:`RECORD_FIELDS` order, time ISO 8601, recipients a JSON
        list) and the canonical leaf bytes, computed together (the store appends both)."""
        fields: list[object] = [getattr(self, f) for f in RECORD_FIELDS]
        recipients = list(self.recipients)
        fields[_RECIPIENTS_AT] = recipients
        fields[_TIME_AT] = int(self.time.timestamp() * 1000)
        leaf = bytes(msgpack.packb([LEAF_VERSION, seq, *fields], use_bin_type=True))
        fields[_TIME_AT] = self.time.isoformat()
        fields[_RECIPIENTS_AT] = json.dumps(recipients)
        return tuple(fields), leaf


# The one list of a record's fields, in leaf order. Everything else derives from it.
RECORD_FIELDS = (
    "time",
    "event",
    "envelope_id",
    "publisher",
    "sender",
    "recipients",
    "level",
    "urgency",
    "size",
    "digest",
    "count",
    "decision",
    "rule_id",
    "reason",
    "policy_version",
    "directory_version",
    "part",
    "message_digest",
    "gateway_id",
)
assert set(RECORD_FIELDS) == {f.name for f in fields(Record)}
LEAF_FIELDS = ("version", "leaf_index", "time_ms", *RECORD_FIELDS[1:])
_TIME_AT = RECORD_FIELDS.index("time")  # a leaf holds the time in milliseconds
_RECIPIENTS_AT = RECORD_FIELDS.index("recipients")  # a list in a leaf, JSON in a column
RECORD_COLUMNS = ("seq", "log_id", "leaf_index", *RECORD_FIELDS)
_INTEGER = {"size", "count", "policy_version", "directory_version", "part"}
# Version 1 leaves (before decisions were bound to headers): same order, fewer fields.
_V1_FIELDS = (
    "version",
    "leaf_index",
    "time_ms",
    "event",
    "envelope_id",
    "sender",
    "recipients",
    "level",
    "urgency",
    "size",
    "digest",
    "decision",
    "rule_id",
    "reason",
    "gateway_id",
)
_V2_DEFAULTS: dict[str, object] = {
    "publisher": "",
    "count": 1,
    "policy_version": 0,
    "directory_version": 0,
    "part": -1,
    "message_digest": "",
}


@dataclass(frozen=True)
class Decided:
    """The decision standing for one exact header."""

    decision: str
    rule_id: str
    sender: str
    recipients: tuple[str, ...]
    leaf_index: int


@dataclass(frozen=True)
class Entry:
    """One record to append, and what it claims.

    ``decides``: the (envelope id, header hash) it decides. ``part``: (envelope
    id, header hash, index, digest) of the part it accepts at that position.
    ``relays``: the key of a notice relayed once. ``refuses``: the digest of a
    verified message refused once. A claim already made returns the standing
    outcome and appends nothing; a contradicting one appends what the
    :class:`Resolver` says instead.
    """

    record: Record
    decides: tuple[str, str] | None = None
    part: tuple[str, str, int, str] | None = None
    relays: str | None = None
    refuses: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What an append decided: the leaf it became (or the earlier decision that stands).

    ``conflict``: ``"id"`` (another header under a decided id) or ``"part"``
    (another part at an accepted position) when the resolver's record was
    appended instead; ``part_new``: the entry's part claim was new.
    """

    leaf_index: int
    decision: str
    rule_id: str
    new: bool
    conflict: str | None = None
    reason: str = ""


class Resolver(Protocol):
    """What to record instead, when an entry contradicts what is already decided."""

    def id_reuse(self, record: Record) -> Record:
        """A second header under a decided envelope id."""

    def part_conflict(self, record: Record) -> Record:
        """Another part at a position whose part was already accepted."""

    def later_part(self, record: Record, standing: Outcome) -> Record:
        """A decision attempt on a header already accepted: the record of its part instead."""


def decode_leaf(leaf: bytes) -> dict[str, object]:
    """The fields of canonical leaf bytes (ValueError if they are not an audit leaf).

    Version 1 leaves read with the fields they lack at their defaults.
    """
    try:
        items = msgpack.unpackb(leaf, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:
        raise ValueError(f"leaf is not msgpack: {e}") from None
    if not isinstance(items, list) or not items:
        raise ValueError("leaf is not an audit leaf")
    if items[0] == LEAF_VERSION and len(items) == len(LEAF_FIELDS):
        return dict(zip(LEAF_FIELDS, items, strict=True))
    if items[0] == 1 and len(items) == len(_V1_FIELDS):
        return {**_V2_DEFAULTS, **dict(zip(_V1_FIELDS, items, strict=True))}
    raise ValueError("leaf is not a v1 or v2 audit leaf")


def relay_key(envelope_id: str, signer: str, kind: str, status: str, addressee: str = "") -> str:
    """A notice is relayed once per (envelope, signer, kind, status): the key. A recall goes
    from the one sender to each recipient: once per addressee."""
    key = f"{envelope_id}/{signer}/{kind}/{status}"
    return f"{key}/{addressee}" if kind == "recall" else key


def notice_reason(status: str) -> str:
    """The reason of a relayed notice's leaf (status is a validated code)."""
    return f"status {status}"
