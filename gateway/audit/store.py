"""The audit store (SQLite, WAL): appends, derived state, Merkle log, proofs, queries
(:mod:`gateway.audit` says what the tables hold and why)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway import merkle
from gateway.audit.group import _derived_state, _Group
from gateway.audit.records import (
    ACCEPTED,
    RECORD_COLUMNS,
    RECORD_FIELDS,
    SUBMISSION,
    Decided,
    Entry,
    Outcome,
    Record,
    Resolver,
)
from gateway.audit.schema import SCHEMA, TRIGGERS
from keys.errors import CipherpostError

MAX_RECENT_NODES = 1 << 16  # about 6 MB of hashes kept for checkpoint proofs, at most


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
        where: list[str] = []
        args: list[str] = []
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
        return self._select(" AND ".join(where), tuple(args))

    def records(self, envelope_id: str | None = None) -> list[dict[str, object]]:
        """Records as dicts, oldest first (all, or one envelope's)."""
        if envelope_id is None:
            return self._select("", ())
        return self._select("envelope_id=?", (envelope_id,))

    def _select(self, where: str, args: tuple[str, ...]) -> list[dict[str, object]]:
        """The records matching ``where`` (SQL over fixed column names), oldest first."""
        sql = "SELECT " + ", ".join(RECORD_COLUMNS) + " FROM records"  # noqa: S608 - fixed names
        if where:
            sql += " WHERE " + where
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        out = []
        for row in rows:
            d = dict(zip(RECORD_COLUMNS, row, strict=True))
            d["recipients"] = json.loads(str(d["recipients"]))
            out.append(d)
        return out
