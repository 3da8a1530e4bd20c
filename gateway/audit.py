"""The gateway's audit store: an append-only Merkle log of every decision (SQLite, WAL).

Each record keeps its canonical leaf bytes (``leaf``: msgpack of the fields in
a fixed order, :data:`LEAF_FIELDS`) and becomes the next leaf of its gateway's
RFC 6962 log (``log_id``); the perfect-subtree hashes are stored beside it
(``nodes``) so roots and proofs cost O(log n) reads. Never plaintext, never
keys. UPDATE and DELETE are refused by triggers (an operator with the file can
still edit it: that is what the signed checkpoints and the witness catch);
``decided_once`` makes the first decision per envelope (or per notice) unique
even with several gateway processes on one store.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from gateway import merkle

LEAF_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL,
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    envelope_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    level TEXT NOT NULL,
    urgency TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    decision TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
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
CREATE TABLE IF NOT EXISTS decided_once (
    once_key TEXT PRIMARY KEY,
    decision TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS forwarded (
    envelope_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    PRIMARY KEY (envelope_id, part)
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

ACCEPTED = "accepted"
REFUSED = "refused"


@dataclass(frozen=True)
class Record:
    """One audit record (no plaintext, no keys)."""

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

    def columns(self) -> tuple[object, ...]:
        """The record's stored columns (after log id and leaf index), as in the leaf."""
        return (
            self.time.isoformat(),
            self.event,
            self.envelope_id,
            self.sender,
            json.dumps(list(self.recipients)),
            self.level,
            self.urgency,
            self.size,
            self.digest,
            self.decision,
            self.rule_id,
            self.reason,
            self.gateway_id,
        )

    def leaf(self, seq: int) -> bytes:
        """Canonical leaf bytes: fixed field order (:data:`LEAF_FIELDS`), integers and strings."""
        return bytes(
            msgpack.packb(
                [
                    LEAF_VERSION,
                    seq,
                    int(self.time.timestamp() * 1000),
                    self.event,
                    self.envelope_id,
                    self.sender,
                    list(self.recipients),
                    self.level,
                    self.urgency,
                    self.size,
                    self.digest,
                    self.decision,
                    self.rule_id,
                    self.reason,
                    self.gateway_id,
                ],
                use_bin_type=True,
            )
        )


@dataclass(frozen=True)
class Outcome:
    """What an append decided: the leaf it became (or the earlier decision that stands)."""

    leaf_index: int
    decision: str
    rule_id: str
    new: bool


LEAF_FIELDS = (
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
RECORD_COLUMNS = (
    "seq",
    "log_id",
    "leaf_index",
    "time",
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


def decode_leaf(leaf: bytes) -> dict[str, object]:
    """The fields of canonical leaf bytes (ValueError if they are not a v1 leaf)."""
    try:
        items = msgpack.unpackb(leaf, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:
        raise ValueError(f"leaf is not msgpack: {e}") from None
    if not isinstance(items, list) or len(items) != len(LEAF_FIELDS) or items[0] != LEAF_VERSION:
        raise ValueError("leaf is not a v1 audit leaf")
    return dict(zip(LEAF_FIELDS, items, strict=True))


class AuditStore:
    """Append-only audit store (SQLite, WAL, synchronous=FULL), one Merkle log per gateway.

    :meth:`commit` appends a group of records in one short transaction (one
    fsync): each becomes the next leaf of the log ``log_id``, its Merkle nodes
    are stored with it, and ``once_key`` makes the first decision per envelope
    (or notice) final even with several gateway processes on one store. The
    write lock is held only for the commit itself, so processes take turns.
    Thread-safe.
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
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=60.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA + TRIGGERS)
        self._range: merkle.CompactRange | None = None
        self._marks: set[tuple[str, int]] = set()

    def close(self) -> None:
        with self._lock:
            if self._marks:
                self._write_marks()
            self._db.close()

    # --- appending ---------------------------------------------------------------------------

    def append(self, record: Record, *, once_key: str | None = None) -> Outcome:
        """Append one record durably (see :meth:`commit`)."""
        return self.commit([(record, once_key)])[0]

    def commit(self, items: Sequence[tuple[Record, str | None]]) -> list[Outcome]:
        """Append ``items`` in order, durably, in one transaction; one outcome per item.

        With a ``once_key`` already decided (a redelivery, another gateway
        process, or an earlier item of this group) nothing is appended and the
        standing decision is returned with ``new=False``. Forwards remembered
        with :meth:`mark_forwarded` are written in the same transaction.
        """
        with self._lock:
            if not items and not self._marks:
                return []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                outcomes = self._append_all(items)
                self._write_marks()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._range = None  # re-read from the store next time
                raise
            return outcomes

    def _append_all(self, items: Sequence[tuple[Record, str | None]]) -> list[Outcome]:
        tree = self._tree()
        outcomes: list[Outcome] = []
        decided: dict[str, Outcome] = {}
        rows = []
        nodes = []
        once_rows = []
        for record, once_key in items:
            if once_key is not None:
                prior = decided.get(once_key) or self._decided(once_key)
                if prior is not None:
                    outcomes.append(prior)
                    continue
            index = tree.size
            leaf = record.leaf(index)
            lh = merkle.leaf_hash(leaf)
            nodes += [(self.log_id, lvl, i, h) for lvl, i, h in tree.append(lh) if lvl > 0]
            rows.append((self.log_id, index, *record.columns(), leaf, lh))
            outcome = Outcome(index, record.decision, record.rule_id, True)
            if once_key is not None:
                decided[once_key] = Outcome(index, record.decision, record.rule_id, False)
                once_rows.append((once_key, record.decision, record.rule_id, index))
            outcomes.append(outcome)
        self._db.executemany(
            "INSERT INTO records (log_id, leaf_index, time, event, envelope_id, sender,"
            " recipients, level, urgency, size, digest, decision, rule_id, reason, gateway_id,"
            " leaf, leaf_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        self._db.executemany("INSERT INTO nodes VALUES (?,?,?,?)", nodes)
        self._db.executemany("INSERT INTO decided_once VALUES (?,?,?,?)", once_rows)
        return outcomes

    def _tree(self) -> merkle.CompactRange:
        """This log's compact range, re-read if another process appended since."""
        size = self._size(self.log_id)
        if self._range is None or self._range.size != size:
            self._range = merkle.CompactRange.from_store(size, self._node_reader(self.log_id))
        return self._range

    def _decided(self, once_key: str) -> Outcome | None:
        row = self._db.execute(
            "SELECT decision, rule_id, seq FROM decided_once WHERE once_key=?", (once_key,)
        ).fetchone()
        return None if row is None else Outcome(int(row[2]), str(row[0]), str(row[1]), False)

    def decision_for(self, once_key: str) -> tuple[str, str] | None:
        """The decision and rule id recorded under ``once_key``, if any."""
        with self._lock:
            prior = self._decided(once_key)
        return None if prior is None else (prior.decision, prior.rule_id)

    # --- forwards ----------------------------------------------------------------------------

    def was_forwarded(self, envelope_id: str, part: int) -> bool:
        with self._lock:
            if (envelope_id, part) in self._marks:
                return True
            row = self._db.execute(
                "SELECT 1 FROM forwarded WHERE envelope_id=? AND part=?", (envelope_id, part)
            ).fetchone()
        return row is not None

    def mark_forwarded(self, envelope_id: str, part: int) -> None:
        """Remember a confirmed forward; written with the next :meth:`commit`."""
        with self._lock:
            self._marks.add((envelope_id, part))

    def _write_marks(self) -> None:
        marks, self._marks = self._marks, set()
        self._db.executemany("INSERT OR IGNORE INTO forwarded VALUES (?,?)", sorted(marks))

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

    def leaves(self, log_id: str) -> Iterator[tuple[int, bytes, bytes, tuple[object, ...]]]:
        """``(leaf_index, leaf, leaf hash, record columns)`` of a log in order (for verifiers)."""
        cursor = self._db.execute(
            "SELECT leaf_index, leaf, leaf_hash, " + ", ".join(RECORD_COLUMNS[3:]) + " FROM records"  # noqa: S608 - fixed names
            " WHERE log_id=? ORDER BY leaf_index",
            (log_id,),
        )
        for row in cursor:
            yield int(row[0]), bytes(row[1]), bytes(row[2]), tuple(row[3:])

    def accepted_between(self, log_id: str, start: int, end: int) -> list[tuple[int, str, str]]:
        """``(leaf_index, envelope_id, sender)`` of accepted submissions in leaves [start, end)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT leaf_index, envelope_id, sender FROM records WHERE log_id=?"
                " AND leaf_index>=? AND leaf_index<? AND event='submission'"
                " AND decision='accepted' ORDER BY leaf_index",
                (log_id, start, end),
            ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def find(self, envelope_id: str, log_id: str | None = None) -> list[tuple[str, int]]:
        """``(log_id, leaf_index)`` of every record about an envelope."""
        query = "SELECT log_id, leaf_index FROM records WHERE envelope_id=?"
        args: tuple[str, ...] = (envelope_id,)
        if log_id is not None:
            query += " AND log_id=?"
            args += (log_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
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
