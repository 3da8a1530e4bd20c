"""The gateway's audit store: an append-only Merkle log of every decision (SQLite, WAL).

Each record keeps its canonical leaf bytes (``leaf``: msgpack of the fields in
a fixed order, :data:`LEAF_FIELDS`) and becomes the next leaf of its gateway's
RFC 6962 log (``log_id``); the perfect-subtree hashes are stored beside it
(``nodes``) so roots and proofs cost O(log n) reads. Never plaintext, never
keys. UPDATE and DELETE are refused by triggers (an operator with the file can
still edit it: that is what the signed checkpoints and the witness catch).

Beside the leaves, four tables drive the gateway and are **derived from the
leaves** (:meth:`AuditStore.state_problems` checks them against the leaves,
both ways; ``audit verify`` reports any difference):

- ``decisions``: the one decision per exact signed header, keyed on
  (envelope id, header hash). A second header under a decided id never gets a
  decision of its own: the store records what the resolver says instead (the
  gateway: an ``invariant:id-reuse`` refusal).
- ``forwarded``: the one accepted part per position of an accepted header,
  with the digest of its bytes (a byte-identical copy is a duplicate, another
  one a conflict, recorded as the resolver says).
- ``relayed``: notices relayed once per (envelope, signer, kind, status).
- ``refused``: verified messages refused once (by the digest of their bytes).

``confirmed`` (which forwards the broker confirmed) is operational only: a
lost row means one more forward, which the agents deduplicate.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, TypeVar

import msgpack

from gateway import merkle
from keys.errors import CipherpostError

LEAF_VERSION = 2
ACCEPTED = "accepted"
REFUSED = "refused"
SUBMISSION = "submission"  # the event of a decision on one verified header
PART = "part"  # the event of a later part accepted under a decided header
NOTICE_EVENTS = ("receipt", "status", "recall")  # relayed notices
REFUSAL_EVENTS = ("part-refused", "notice-refused")  # verified messages refused once
_T = TypeVar("_T")
_DECISION_COLUMNS = "envelope_id, header_hash, decision, rule_id, leaf_index"
_PART_COLUMNS = "envelope_id, header_hash, part, digest"
_PART_KEY = "(envelope_id, header_hash, part)"
MAX_RECENT_NODES = 1 << 16  # about 6 MB of hashes kept for checkpoint proofs, at most


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
        return self.leaf_from(self.values(), seq)

    def leaf_from(self, values: dict[str, object], seq: int) -> bytes:
        """:meth:`leaf` from :meth:`values` computed already (the store needs both)."""
        fields = [values[f] for f in RECORD_FIELDS]
        fields[_TIME_AT] = int(self.time.timestamp() * 1000)
        return bytes(msgpack.packb([LEAF_VERSION, seq, *fields], use_bin_type=True))


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

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL,
    {", ".join(f"{f} {'INTEGER' if f in _INTEGER else 'TEXT'} NOT NULL" for f in RECORD_FIELDS)},
    leaf BLOB NOT NULL,
    leaf_hash BLOB NOT NULL,
    UNIQUE (log_id, leaf_index)
);
CREATE INDEX IF NOT EXISTS records_envelope ON records(envelope_id);
CREATE TABLE IF NOT EXISTS nodes (
    log_id TEXT NOT NULL,
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (log_id, level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    log_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    time TEXT NOT NULL,
    note BLOB NOT NULL,
    PRIMARY KEY (log_id, size)
);
CREATE TABLE IF NOT EXISTS decisions (
    envelope_id TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    decision TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL,
    PRIMARY KEY (envelope_id, header_hash)
);
CREATE TABLE IF NOT EXISTS relayed (
    relay_key TEXT PRIMARY KEY,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    digest TEXT PRIMARY KEY,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS forwarded (
    envelope_id TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    part INTEGER NOT NULL,
    digest TEXT NOT NULL,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL,
    PRIMARY KEY (envelope_id, header_hash, part)
);
CREATE TABLE IF NOT EXISTS confirmed (
    envelope_id TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    part INTEGER NOT NULL,
    PRIMARY KEY (envelope_id, header_hash, part)
);
"""
APPEND_ONLY = ("records", "nodes", "checkpoints")
TRIGGERS = "".join(
    f"""
CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t}
BEGIN SELECT RAISE(ABORT, 'audit {t} are append-only'); END;
CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t}
BEGIN SELECT RAISE(ABORT, 'audit {t} are append-only'); END;"""
    for t in APPEND_ONLY
)


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


class AuditStore:
    """Append-only audit store (SQLite, WAL, synchronous=FULL), one Merkle log per gateway.

    :meth:`commit` appends a group of records in one short transaction (one
    fsync): each becomes the next leaf of the log ``log_id``, its Merkle nodes
    and the state it decides are stored with it. The write lock is held only
    for the commit itself, so several gateway processes on one store take
    turns, and the first decision per header is final across all of them.
    Thread-safe. Created mode 0600.
    """

    def __init__(self, path: Path, *, log_id: str = "", readonly: bool = False) -> None:
        self.path = path
        self.log_id = log_id
        self._lock = threading.Lock()
        if readonly:
            if not path.is_file():
                raise FileNotFoundError(path)
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                # Who can read the store can read every party and level exchanged.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=60.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._check_format()
            self._db.executescript(SCHEMA + TRIGGERS)
        self._range: merkle.CompactRange | None = None
        self._marks: set[tuple[str, str, int]] = set()
        # Nodes (level 0: leaf hashes) and leaves this process appended to its own log since
        # its last proofs: checkpoint proofs are made from memory, not O(log n) reads each.
        # A node hash of an append-only log never changes, so a kept one is never stale.
        self._recent_nodes: dict[tuple[int, int], bytes] = {}
        self._recent_leaves: dict[int, bytes] = {}

    def _check_format(self) -> None:
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(records)")}
        if columns and not set(RECORD_FIELDS) <= columns:
            self._db.close()
            raise CipherpostError(
                f"audit store {self.path} is of an older format (leaf version 1): keep it for "
                "the auditors and start the gateway on a new store and log id "
                "(docs/operations.md, recovery)"
            )

    def close(self) -> None:
        with self._lock:
            if self._marks:
                self._db.execute("BEGIN IMMEDIATE")
                self._write_marks()
                self._db.execute("COMMIT")
            self._db.close()

    # --- appending ---------------------------------------------------------------------------

    def append(self, record: Record, *, decides: tuple[str, str] | None = None) -> Outcome:
        """Append one record durably (see :meth:`commit`)."""
        return self.commit([Entry(record, decides)])[0]

    def commit(self, entries: Sequence[Entry], resolver: Resolver | None = None) -> list[Outcome]:
        """Append ``entries`` in order, durably, in one transaction; one outcome per entry.

        Claims already made (by a redelivery, another gateway process, or an
        earlier entry of this group) append nothing and return the standing
        outcome with ``new=False``; a contradicting claim appends what
        ``resolver`` says instead (required then). Confirmed forwards
        remembered with :meth:`mark_confirmed` are written in the same
        transaction.
        """
        with self._lock:
            if not entries and not self._marks:
                return []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                group = _Group(self, resolver)
                outcomes = group.append(entries)
                self._write_marks()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._range = None  # re-read from the store next time
                raise
            self._remember(group)
            return outcomes

    def _remember(self, group: _Group) -> None:
        """Keep what a durable commit appended, for :meth:`proofs` (bounded)."""
        if len(self._recent_nodes) > MAX_RECENT_NODES:
            self._recent_nodes.clear()  # proofs read the store instead: slower, still right
            self._recent_leaves.clear()
        for row in group.rows:
            index, leaf, lh = int(row[1]), bytes(row[-2]), bytes(row[-1])  # type: ignore[call-overload]
            self._recent_nodes[(0, index)] = lh
            self._recent_leaves[index] = leaf
        for _, level, index, h in group.nodes:
            self._recent_nodes[(int(level), int(index))] = bytes(h)  # type: ignore[call-overload]

    def _tree(self) -> merkle.CompactRange:
        """This log's compact range, re-read if another process appended since."""
        size = self._size(self.log_id)
        if self._range is None or self._range.size != size:
            self._range = merkle.CompactRange.from_store(size, self._node_reader(self.log_id))
        return self._range

    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[object, ...] | None:
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else tuple(row)

    # --- the state the gateway decides on (see gateway.decide.State) -------------------------

    def decision(self, envelope_id: str, header_hash: str) -> Decided | None:
        """The decision standing for this exact header, if any."""
        with self._lock:
            row = self._one(
                "SELECT decision, rule_id, sender, recipients, leaf_index FROM decisions"
                " WHERE envelope_id=? AND header_hash=?",
                (envelope_id, header_hash),
            )
        if row is None:
            return None
        return Decided(
            str(row[0]),
            str(row[1]),
            str(row[2]),
            tuple(json.loads(str(row[3]))),
            int(row[4]),  # type: ignore[call-overload]
        )

    def has_envelope(self, envelope_id: str) -> bool:
        """Whether any header was decided under this envelope id."""
        with self._lock:
            return (
                self._one("SELECT 1 FROM decisions WHERE envelope_id=?", (envelope_id,)) is not None
            )

    def relayed(self, key: str) -> bool:
        """Whether a notice with this relay key was relayed already."""
        with self._lock:
            return self._one("SELECT 1 FROM relayed WHERE relay_key=?", (key,)) is not None

    def refused(self, digest: str) -> bool:
        """Whether the verified message with these bytes was refused already."""
        with self._lock:
            return self._one("SELECT 1 FROM refused WHERE digest=?", (digest,)) is not None

    def part(self, envelope_id: str, header_hash: str, index: int) -> str | None:
        """The digest of the part accepted at this position, if one was."""
        with self._lock:
            row = self._one(
                "SELECT digest FROM forwarded WHERE envelope_id=? AND header_hash=? AND part=?",
                (envelope_id, header_hash, index),
            )
        return None if row is None else str(row[0])

    def confirmed(self, envelope_id: str, header_hash: str, index: int) -> bool:
        """Whether the broker confirmed the forward of the part at this position."""
        key = (envelope_id, header_hash, index)
        with self._lock:
            if key in self._marks:
                return True
            return (
                self._one(
                    "SELECT 1 FROM confirmed WHERE envelope_id=? AND header_hash=? AND part=?",
                    key,
                )
                is not None
            )

    def mark_confirmed(self, envelope_id: str, header_hash: str, index: int) -> None:
        """Remember a confirmed forward; written with the next :meth:`commit`."""
        with self._lock:
            self._marks.add((envelope_id, header_hash, index))

    def _write_marks(self) -> None:
        marks, self._marks = self._marks, set()
        self._db.executemany("INSERT OR IGNORE INTO confirmed VALUES (?,?,?)", sorted(marks))

    def state_problems(self) -> list[str]:
        """Differences between the state tables and the leaves they derive from (both ways)."""
        with self._lock:
            derived = _derived_state(self._db)
            held: dict[str, dict[tuple[object, ...], tuple[object, ...]]] = {
                "decision": {
                    (str(r[0]), str(r[1])): tuple(r[2:])
                    for r in self._db.execute(
                        "SELECT envelope_id, header_hash, decision, rule_id, sender, recipients,"
                        " log_id, leaf_index FROM decisions"
                    )
                },
                "forwarded part": {
                    (str(r[0]), str(r[1]), int(r[2])): tuple(r[3:])
                    for r in self._db.execute(
                        "SELECT envelope_id, header_hash, part, digest, log_id, leaf_index"
                        " FROM forwarded"
                    )
                },
                "relayed notice": {
                    (str(r[0]),): tuple(r[1:])
                    for r in self._db.execute("SELECT relay_key, log_id, leaf_index FROM relayed")
                },
                "refused message": {
                    (str(r[0]),): tuple(r[1:])
                    for r in self._db.execute("SELECT digest, log_id, leaf_index FROM refused")
                },
            }
            confirmed = self._db.execute(
                "SELECT envelope_id, header_hash, part FROM confirmed"
            ).fetchall()
        problems = []
        for what, rows in held.items():
            leaves = derived[what]
            for key in sorted(rows.keys() - leaves.keys()):
                problems.append(f"{what} {'/'.join(map(str, key))[:80]} has no leaf")
            for key in sorted(leaves.keys() - rows.keys()):
                problems.append(f"leaf of {what} {'/'.join(map(str, key))[:80]} has no row")
            for key in sorted(rows.keys() & leaves.keys()):
                if rows[key] != leaves[key]:
                    problems.append(f"{what} {'/'.join(map(str, key))[:80]} differs from its leaf")
        forwarded = held["forwarded part"]
        for eid, header_hash, index in confirmed:
            if (eid, header_hash, index) not in forwarded:
                problems.append(f"part {index} of envelope {eid} confirmed, never accepted")
        return [f"state: {p}" for p in problems]

    # --- the Merkle log ----------------------------------------------------------------------

    def logs(self) -> list[str]:
        """Every log id in this store."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT log_id FROM records ORDER BY 1").fetchall()
        return [str(r[0]) for r in rows]

    def _size(self, log_id: str) -> int:
        row = self._db.execute(
            "SELECT MAX(leaf_index) FROM records WHERE log_id=?", (log_id,)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def size(self, log_id: str | None = None) -> int:
        """Number of leaves in a log (this store's own by default)."""
        with self._lock:
            return self._size(self.log_id if log_id is None else log_id)

    def _node_reader(self, log_id: str) -> merkle.GetNode:
        def get_node(level: int, index: int) -> bytes:
            if level == 0:
                row = self._db.execute(
                    "SELECT leaf_hash FROM records WHERE log_id=? AND leaf_index=?",
                    (log_id, index),
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT hash FROM nodes WHERE log_id=? AND level=? AND idx=?",
                    (log_id, level, index),
                ).fetchone()
            if row is None:
                raise LookupError(f"audit log {log_id!r} has no node ({level}, {index})")
            return bytes(row[0])

        return get_node

    def root(self, log_id: str | None = None, size: int | None = None) -> tuple[int, bytes]:
        """``(size, root hash)`` of a log, now or at an earlier size."""
        log_id = self.log_id if log_id is None else log_id
        with self._lock:
            size = self._size(log_id) if size is None else size
            return size, merkle.root_at(size, self._node_reader(log_id))

    def inclusion_proof(self, log_id: str, index: int, size: int) -> list[bytes]:
        with self._lock:
            return merkle.inclusion_proof(index, size, self._node_reader(log_id))

    def consistency_proof(self, log_id: str, old_size: int, new_size: int) -> list[bytes]:
        with self._lock:
            return merkle.consistency_proof(old_size, new_size, self._node_reader(log_id))

    def leaf(self, log_id: str, index: int) -> bytes:
        with self._lock:
            row = self._db.execute(
                "SELECT leaf FROM records WHERE log_id=? AND leaf_index=?", (log_id, index)
            ).fetchone()
        if row is None:
            raise LookupError(f"audit log {log_id!r} has no leaf {index}")
        return bytes(row[0])

    def leaves(self, log_id: str) -> Iterator[tuple[int, bytes, bytes, dict[str, object]]]:
        """``(leaf_index, leaf, leaf hash, stored fields)`` of a log in order (for verifiers)."""
        cursor = self._db.execute(
            "SELECT leaf_index, leaf, leaf_hash, "  # noqa: S608 - fixed names
            + ", ".join(RECORD_FIELDS)
            + " FROM records WHERE log_id=? ORDER BY leaf_index",
            (log_id,),
        )
        for row in cursor:
            yield (
                int(row[0]),
                bytes(row[1]),
                bytes(row[2]),
                dict(zip(RECORD_FIELDS, row[3:], strict=True)),
            )

    def proofs(self, start: int, end: int) -> list[tuple[int, str, str, bytes, list[bytes]]]:
        """``(leaf_index, envelope_id, sender, leaf, inclusion proof at size end)`` of each
        accepted decision in leaves [start, end) of this store's own log.

        Nodes this process appended come from memory; any other node is read once for all
        the proofs. What memory holds for leaves before ``end`` is then let go, except the
        border of the tree at ``end`` (later proofs need it).
        """
        log_id = self.log_id
        rows = self.accepted_between(log_id, start, end)
        with self._lock:
            read = self._node_reader(log_id)
            recent = self._recent_nodes
            seen: dict[tuple[int, int], bytes] = {}

            def get_node(level: int, index: int) -> bytes:
                key = (level, index)
                h = recent.get(key) or seen.get(key)
                if h is None:
                    h = seen[key] = read(level, index)
                return h

            out = []
            for index, eid, sender in rows:
                leaf = self._recent_leaves.get(index)
                if leaf is None:
                    row = self._db.execute(
                        "SELECT leaf FROM records WHERE log_id=? AND leaf_index=?", (log_id, index)
                    ).fetchone()
                    leaf = bytes(row[0])
                out.append((index, eid, sender, leaf, merkle.inclusion_proof(index, end, get_node)))
            border = set(merkle.border(end))
            self._recent_nodes = {
                k: h for k, h in recent.items() if (k[1] + 1) << k[0] > end or k in border
            }
            self._recent_leaves = {i: v for i, v in self._recent_leaves.items() if i >= end}
        return out

    def accepted_between(self, log_id: str, start: int, end: int) -> list[tuple[int, str, str]]:
        """``(leaf_index, envelope_id, sender)`` of accepted decisions in leaves [start, end)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT leaf_index, envelope_id, sender FROM records WHERE log_id=?"
                " AND leaf_index>=? AND leaf_index<? AND event=?"
                " AND decision=? ORDER BY leaf_index",
                (log_id, start, end, SUBMISSION, ACCEPTED),
            ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def find(self, envelope_id: str, log_id: str | None = None) -> list[tuple[str, int]]:
        """``(log_id, leaf_index)`` of every verified record about an envelope, decisions first.

        Only records whose sender was verified name an envelope: junk that merely
        quotes an id cannot stand in for the envelope's own record.
        """
        query = "SELECT log_id, leaf_index FROM records WHERE envelope_id=? AND sender != ''"
        args: tuple[str, ...] = (envelope_id,)
        if log_id is not None:
            query += " AND log_id=?"
            args += (log_id,)
        with self._lock:
            rows = self._db.execute(
                query + " ORDER BY event != ?, seq", (*args, SUBMISSION)
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    # --- checkpoints -------------------------------------------------------------------------

    def add_checkpoint(self, log_id: str, size: int, root: bytes, time: str, note: bytes) -> bool:
        """Store a signed checkpoint durably; False if one of that size is already stored."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO checkpoints VALUES (?,?,?,?,?)",
                (log_id, size, root, time, note),
            )
            return cursor.rowcount == 1

    def checkpoint_sizes(self, log_id: str, below: int, limit: int) -> list[int]:
        """The sizes of the latest ``limit`` stored checkpoints of a log smaller than ``below``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT size FROM checkpoints WHERE log_id=? AND size<? ORDER BY size DESC LIMIT ?",
                (log_id, below, limit),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def checkpoints(self, log_id: str | None = None) -> list[bytes]:
        """Stored signed checkpoint notes, oldest first."""
        query = "SELECT note FROM checkpoints"
        args: tuple[str, ...] = ()
        if log_id is not None:
            query += " WHERE log_id=?"
            args = (log_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY log_id, size", args).fetchall()
        return [bytes(r[0]) for r in rows]

    def copy_to(self, path: Path) -> None:
        """A consistent copy of the whole store in a new file (``VACUUM INTO``)."""
        with self._lock:
            self._db.execute("VACUUM INTO ?", (str(path),))

    # --- reading -----------------------------------------------------------------------------

    def query(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        level: str | None = None,
        decision: str | None = None,
        agency: str | None = None,
    ) -> list[dict[str, object]]:
        """Records matching every filter given, oldest first, selected in SQL.

        ``since``/``until``: ISO times in UTC, ``until`` exclusive; ``agency``: a
        shell pattern (``*.H41``) on the sender or any recipient.
        """
        where, args = [], []
        for clause, value in (
            ("time >= ?", since),
            ("time < ?", until),
            ("level = ?", level),
            ("decision = ?", decision),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        if agency is not None:
            where.append(
                "(sender GLOB ? OR EXISTS (SELECT 1 FROM json_each(records.recipients)"
                " WHERE json_each.value GLOB ?))"
            )
            args += [agency, agency]
        sql = "SELECT " + ", ".join(RECORD_COLUMNS) + " FROM records"  # noqa: S608 - fixed names
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        out = []
        for row in rows:
            d = dict(zip(RECORD_COLUMNS, row, strict=True))
            d["recipients"] = json.loads(str(d["recipients"]))
            out.append(d)
        return out

    def records(self, envelope_id: str | None = None) -> list[dict[str, object]]:
        """Records as dicts, oldest first (all, or one envelope's)."""
        query = "SELECT " + ", ".join(RECORD_COLUMNS) + " FROM records"  # noqa: S608 - fixed names
        args: tuple[str, ...] = ()
        if envelope_id is not None:
            query += " WHERE envelope_id=?"
            args = (envelope_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        out = []
        for row in rows:
            d = dict(zip(RECORD_COLUMNS, row, strict=True))
            d["recipients"] = json.loads(str(d["recipients"]))
            out.append(d)
        return out


def relay_key(envelope_id: str, signer: str, kind: str, status: str, addressee: str = "") -> str:
    """A notice is relayed once per (envelope, signer, kind, status): the key. A recall goes
    from the one sender to each recipient: once per addressee."""
    key = f"{envelope_id}/{signer}/{kind}/{status}"
    return f"{key}/{addressee}" if kind == "recall" else key


def notice_reason(status: str) -> str:
    """The reason of a relayed notice's leaf (status is a validated code)."""
    return f"status {status}"


def _derived_state(
    db: sqlite3.Connection,
) -> dict[str, dict[tuple[object, ...], tuple[object, ...]]]:
    """What the state tables must hold, recomputed from the leaves."""
    out: dict[str, dict[tuple[object, ...], tuple[object, ...]]] = {
        "decision": {},
        "forwarded part": {},
        "relayed notice": {},
        "refused message": {},
    }
    rows = db.execute(
        "SELECT event, envelope_id, digest, decision, rule_id, sender, recipients, log_id,"
        " leaf_index, part, message_digest, reason FROM records WHERE sender != '' ORDER BY seq"
    )
    for (
        event,
        eid,
        digest,
        decision,
        rule,
        sender,
        recipients,
        log_id,
        index,
        part,
        md,
        reason,
    ) in rows:
        where = (log_id, index)
        if event == SUBMISSION:
            out["decision"].setdefault((eid, digest), (decision, rule, sender, recipients, *where))
        if (event == SUBMISSION and decision == ACCEPTED) or event == PART:
            out["forwarded part"].setdefault((eid, digest, part), (md, *where))
        if event in NOTICE_EVENTS and decision == ACCEPTED:
            status = str(reason).removeprefix("status ")
            to = json.loads(recipients)[0] if event == "recall" else ""
            out["relayed notice"].setdefault((relay_key(eid, sender, event, status, to),), where)
        if event in REFUSAL_EVENTS:
            out["refused message"].setdefault((md,), where)
    return out


class _Group:
    """One commit's appends: the claims of each entry checked against the store and the group."""

    def __init__(self, store: AuditStore, resolver: Resolver | None) -> None:
        self.store = store
        self.db = store._db
        self.resolver = resolver
        self.tree = store._tree()
        self.decided: dict[tuple[str, str], Outcome] = {}
        self.ids: set[str] = set()
        self.parts: dict[tuple[str, str, int], str] = {}
        self.relays: set[str] = set()
        self.refusals: set[str] = set()
        self.rows: list[tuple[object, ...]] = []
        self.nodes: list[tuple[object, ...]] = []
        self.decision_rows: list[tuple[object, ...]] = []
        self.part_rows: list[tuple[object, ...]] = []
        self.relay_rows: list[tuple[object, ...]] = []
        self.refusal_rows: list[tuple[object, ...]] = []
        # What the store holds about this group's claims, read in a few queries up front
        # (inside the write transaction: nobody else can change it until the commit).
        self.fetched: set[str] = set()  # envelope ids whose decisions and parts were read
        self.stored: dict[tuple[str, str], Outcome] = {}
        self.stored_ids: set[str] = set()
        self.stored_parts: dict[tuple[str, str, int], str] = {}
        self.fetched_parts: set[tuple[str, str, int]] = set()
        self.seen_keys: dict[str, set[str]] = {"refused": set(), "relayed": set()}
        self.fetched_keys: dict[str, set[str]] = {"refused": set(), "relayed": set()}

    def prefetch(self, entries: Sequence[Entry]) -> None:
        """Read the standing decisions, parts, relays and refusals the entries ask about."""
        ids = sorted({e.decides[0] for e in entries if e.decides is not None})
        parts = sorted({e.part[:3] for e in entries if e.part is not None})
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE envelope_id IN ({marks})"  # noqa: S608 - placeholders only
            for eid, hh, decision, rule, index in self.db.execute(sql, chunk):
                self.stored[(eid, hh)] = Outcome(int(index), str(decision), str(rule), False)
                self.stored_ids.add(eid)
            self.fetched.update(chunk)
        for chunk3 in _chunks(parts):
            ids3 = sorted({k[0] for k in chunk3})
            # The envelope ids first, so that the primary key's index is used.
            sql = (
                f"SELECT {_PART_COLUMNS} FROM forwarded WHERE envelope_id IN"  # noqa: S608 - placeholders only
                f" ({','.join('?' * len(ids3))}) AND {_PART_KEY} IN"
                f" (VALUES {','.join('(?,?,?)' for _ in chunk3)})"
            )
            args = [*ids3, *(x for k in chunk3 for x in k)]
            for eid, hh, part, digest in self.db.execute(sql, args):
                self.stored_parts[(eid, hh, int(part))] = str(digest)
        self.fetched_parts = set(parts)
        for table, column, keys in (
            ("refused", "digest", sorted({e.refuses for e in entries if e.refuses})),
            ("relayed", "relay_key", sorted({e.relays for e in entries if e.relays})),
        ):
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {column} FROM {table} WHERE {column} IN ({marks})"  # noqa: S608 - fixed names
                self.seen_keys[table].update(str(r[0]) for r in self.db.execute(sql, chunk))
                self.fetched_keys[table].update(chunk)

    def _need(self) -> Resolver:
        if self.resolver is None:
            raise ValueError("a claim contradicts the store and no resolver was given")
        return self.resolver

    def _standing(self, key: tuple[str, str]) -> Outcome | None:
        if key in self.decided:
            return self.decided[key]
        if key[0] in self.fetched:
            return self.stored.get(key)
        row = self.store._one(
            "SELECT decision, rule_id, leaf_index FROM decisions WHERE envelope_id=? AND"
            " header_hash=?",
            key,
        )
        return None if row is None else Outcome(int(row[2]), str(row[0]), str(row[1]), False)  # type: ignore[call-overload]

    def _part(self, key: tuple[str, str, int]) -> str | None:
        if key in self.parts:
            return self.parts[key]
        if key in self.fetched_parts:
            return self.stored_parts.get(key)
        row = self.store._one(
            "SELECT digest FROM forwarded WHERE envelope_id=? AND header_hash=? AND part=?", key
        )
        return None if row is None else str(row[0])

    def _seen(self, table: str, column: str, key: str, local: set[str]) -> bool:
        if key in local:
            return True
        if key in self.fetched_keys[table]:
            return key in self.seen_keys[table]
        return (
            self.store._one(f"SELECT 1 FROM {table} WHERE {column}=?", (key,)) is not None  # noqa: S608 - fixed names
        )

    def _id_decided(self, envelope_id: str) -> bool:
        if envelope_id in self.fetched:
            return envelope_id in self.stored_ids
        row = self.store._one("SELECT 1 FROM decisions WHERE envelope_id=?", (envelope_id,))
        return row is not None

    def append(self, entries: Sequence[Entry]) -> list[Outcome]:
        self.prefetch(entries)
        outcomes = [self._one_entry(e) for e in entries]
        db = self.db
        db.executemany(
            f"INSERT INTO records ({', '.join(RECORD_COLUMNS[1:])}, leaf, leaf_hash)"  # noqa: S608 - fixed names
            f" VALUES ({', '.join('?' * (len(RECORD_COLUMNS) + 1))})",
            self.rows,
        )
        db.executemany("INSERT INTO nodes VALUES (?,?,?,?)", self.nodes)
        db.executemany("INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?)", self.decision_rows)
        db.executemany("INSERT INTO forwarded VALUES (?,?,?,?,?,?)", self.part_rows)
        db.executemany("INSERT INTO relayed VALUES (?,?,?)", self.relay_rows)
        db.executemany("INSERT INTO refused VALUES (?,?,?)", self.refusal_rows)
        return outcomes

    def _one_entry(self, entry: Entry) -> Outcome:
        record = entry.record
        decides, part, conflict = entry.decides, entry.part, None
        if entry.refuses is not None and self._seen(
            "refused", "digest", entry.refuses, self.refusals
        ):
            return Outcome(-1, REFUSED, record.rule_id, False)
        if entry.relays is not None and self._seen(
            "relayed", "relay_key", entry.relays, self.relays
        ):
            return Outcome(-1, ACCEPTED, record.rule_id, False)
        if decides is not None:
            standing = self._standing(decides)
            if standing is None and (decides[0] in self.ids or self._id_decided(decides[0])):
                record, conflict, part = self._need().id_reuse(record), "id", None
            elif standing is not None:
                if part is None or standing.decision != ACCEPTED:
                    return standing
                record, decides = self._need().later_part(record, standing), None
        if part is not None and record.decision == ACCEPTED:
            claimed = self._part(part[:3])
            if claimed == part[3]:
                return Outcome(-1, ACCEPTED, record.rule_id, False)
            if claimed is not None:
                record, conflict, part = self._need().part_conflict(record), "part", None
        index = self._leaf(record)
        if decides is not None:
            self.decided[decides] = Outcome(index, record.decision, record.rule_id, False)
            self.ids.add(decides[0])
            self.decision_rows.append(
                (*decides, record.decision, record.rule_id, record.sender,
                 json.dumps(list(record.recipients)), self.store.log_id, index)
            )  # fmt: skip
        if part is not None and record.decision == ACCEPTED:
            self.parts[part[:3]] = part[3]
            self.part_rows.append((*part, self.store.log_id, index))
        if entry.relays is not None:
            self.relays.add(entry.relays)
            self.relay_rows.append((entry.relays, self.store.log_id, index))
        if entry.refuses is not None or record.event in REFUSAL_EVENTS:
            key = entry.refuses or record.message_digest
            self.refusals.add(key)
            self.refusal_rows.append((key, self.store.log_id, index))
        return Outcome(index, record.decision, record.rule_id, True, conflict, record.reason)

    def _leaf(self, record: Record) -> int:
        index = self.tree.size
        values = record.values()
        leaf = record.leaf_from(values, index)
        lh = merkle.leaf_hash(leaf)
        self.nodes += [
            (self.store.log_id, lvl, i, h) for lvl, i, h in self.tree.append(lh) if lvl > 0
        ]
        values["recipients"] = json.dumps(values["recipients"])
        self.rows.append((self.store.log_id, index, *(values[f] for f in RECORD_FIELDS), leaf, lh))
        return index


def _chunks(items: Sequence[_T], size: int = 300) -> Iterator[Sequence[_T]]:
    """``items`` in slices small enough for one statement's bound parameters."""
    for k in range(0, len(items), size):
        yield items[k : k + size]
