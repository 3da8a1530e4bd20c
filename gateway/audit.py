"""The gateway's audit store: one append-only record per decision (SQLite, WAL).

Each record keeps its canonical leaf bytes (``leaf``: msgpack of the fields in
a fixed order) so the Merkle tree of the audit issue can be built over exactly
what was stored. Never plaintext, never keys. UPDATE and DELETE are refused by
triggers; ``decided_once`` makes the first decision per envelope (or per
notice) unique even with several gateway processes on one store.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import msgpack

LEAF_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
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
    leaf BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_envelope ON records(envelope_id);
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
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
"""

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

    def leaf(self, seq: int) -> bytes:
        """Canonical leaf bytes: fixed field order, integers and strings only."""
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


class AuditStore:
    """Thread-safe append-only store; every append is committed (durable) before it returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, record: Record, *, once_key: str | None = None) -> tuple[int, str, str, bool]:
        """Append one record, durably; with ``once_key`` only the first record for that key.

        Returns ``(seq, decision, rule_id, new)``: if a record for ``once_key``
        exists (a redelivery, or another gateway process was first), nothing is
        appended and that record's decision is returned with ``new=False``.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if once_key is not None:
                    row = self._db.execute(
                        "SELECT seq, decision, rule_id FROM decided_once WHERE once_key=?",
                        (once_key,),
                    ).fetchone()
                    if row is not None:
                        self._db.execute("ROLLBACK")
                        return int(row[0]), str(row[1]), str(row[2]), False
                seq = self._insert(record)
                if once_key is not None:
                    self._db.execute(
                        "INSERT INTO decided_once VALUES (?,?,?,?)",
                        (once_key, record.decision, record.rule_id, seq),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return seq, record.decision, record.rule_id, True

    def _insert(self, r: Record) -> int:
        next_seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM records").fetchone()[0]
        self._db.execute(
            "INSERT INTO records (seq, time, event, envelope_id, sender, recipients, level,"
            " urgency, size, digest, decision, rule_id, reason, gateway_id, leaf)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                next_seq,
                r.time.isoformat(),
                r.event,
                r.envelope_id,
                r.sender,
                json.dumps(list(r.recipients)),
                r.level,
                r.urgency,
                r.size,
                r.digest,
                r.decision,
                r.rule_id,
                r.reason,
                r.gateway_id,
                r.leaf(next_seq),
            ),
        )
        return int(next_seq)

    def decision_for(self, once_key: str) -> tuple[str, str] | None:
        """The decision and rule id recorded under ``once_key``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT decision, rule_id FROM decided_once WHERE once_key=?", (once_key,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def was_forwarded(self, envelope_id: str, part: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM forwarded WHERE envelope_id=? AND part=?", (envelope_id, part)
            ).fetchone()
        return row is not None

    def mark_forwarded(self, envelope_id: str, part: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO forwarded VALUES (?,?)", (envelope_id, part))

    def records(self, envelope_id: str | None = None) -> list[dict[str, object]]:
        """Records as dicts, oldest first (all, or one envelope's)."""
        query = (
            "SELECT seq, time, event, envelope_id, sender, recipients, level, urgency, size,"
            " digest, decision, rule_id, reason, gateway_id FROM records"
        )
        args: tuple[str, ...] = ()
        if envelope_id is not None:
            query += " WHERE envelope_id=?"
            args = (envelope_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        keys = (
            "seq",
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
        out = []
        for row in rows:
            d = dict(zip(keys, row, strict=True))
            d["recipients"] = json.loads(str(d["recipients"]))
            out.append(d)
        return out
