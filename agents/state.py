"""The agent's local state in SQLite: what it sent, received, and every status seen."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from envelopes.notices import Notice

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    envelope_id TEXT PRIMARY KEY, time TEXT NOT NULL, recipients TEXT NOT NULL,
    level TEXT NOT NULL, urgency TEXT NOT NULL, subject TEXT NOT NULL, filename TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS received (
    envelope_id TEXT PRIMARY KEY, time TEXT NOT NULL, sender TEXT NOT NULL,
    header_hash TEXT NOT NULL, path TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    envelope_id TEXT NOT NULL, part INTEGER NOT NULL, PRIMARY KEY (envelope_id, part)
);
CREATE TABLE IF NOT EXISTS statuses (
    digest TEXT PRIMARY KEY, envelope_id TEXT NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL,
    signer TEXT NOT NULL, addressee TEXT NOT NULL, status TEXT NOT NULL, rule_id TEXT NOT NULL,
    reason TEXT NOT NULL, note TEXT NOT NULL, verified INTEGER NOT NULL, raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS statuses_envelope ON statuses(envelope_id);
CREATE TABLE IF NOT EXISTS marks (
    envelope_id TEXT NOT NULL, mark TEXT NOT NULL, value TEXT NOT NULL, time TEXT NOT NULL,
    PRIMARY KEY (envelope_id, mark)
);
CREATE TABLE IF NOT EXISTS proofs (
    envelope_id TEXT PRIMARY KEY, log_id TEXT NOT NULL, leaf_index INTEGER NOT NULL,
    tree_size INTEGER NOT NULL, proof TEXT NOT NULL, checkpoint TEXT NOT NULL
);
"""


# What the sender knows of each envelope's submission: recorded before the first part leaves.
SENT_PROGRESS = {
    "parts": "INTEGER NOT NULL DEFAULT 0",
    "confirmed": "INTEGER NOT NULL DEFAULT 0",
    "state": "TEXT NOT NULL DEFAULT 'sent'",
}
SENDING, SENT, INTERRUPTED = "sending", "sent", "interrupted"


class AgentState:
    """Thread-safe; every write is committed before it returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the agent; after a power loss the last
        # records may be gone, and a redelivered document could then be written twice.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(sent)")}
        for column, kind in SENT_PROGRESS.items():
            if column not in columns:  # a state file from before these columns
                self._db.execute(f"ALTER TABLE sent ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group the writes inside into one commit (the agent's batch end)."""
        with self._lock:
            self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            # Nothing of a failed batch is recorded: its messages are redelivered and
            # must not then look like duplicates of documents never announced.
            with self._lock:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def record_sent(
        self,
        envelope_id: str,
        recipients: list[str],
        level: str,
        urgency: str,
        subject: str,
        filename: str,
        size: int,
        *,
        parts: int = 0,
        state: str = SENT,
    ) -> None:
        """Remember a sent (or about to be sent) envelope; once."""
        self._exec(
            "INSERT OR IGNORE INTO sent (envelope_id, time, recipients, level, urgency, subject,"
            " filename, size, parts, confirmed, state) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                envelope_id,
                _now(),
                json.dumps(recipients),
                level,
                urgency,
                subject,
                filename,
                size,
                parts,
                parts if state == SENT else 0,
                state,
            ),
        )

    def mark_sent(self, envelope_id: str, confirmed: int, state: str) -> None:
        """How far the submission got: every part confirmed (``sent``) or ``interrupted``."""
        self._exec(
            "UPDATE sent SET confirmed=?, state=? WHERE envelope_id=?",
            (confirmed, state, envelope_id),
        )

    def mark_sent_many(self, rows: list[tuple[str, int, str]]) -> None:
        """:meth:`mark_sent` for many ``(envelope_id, confirmed, state)``, in one commit (or
        in the transaction already open on this connection)."""
        with self._lock:
            own = not self._db.in_transaction
            if own:
                self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "UPDATE sent SET confirmed=?, state=? WHERE envelope_id=?",
                    [(confirmed, state, eid) for eid, confirmed, state in rows],
                )
            except BaseException:
                if own:
                    self._db.execute("ROLLBACK")
                raise
            if own:
                self._db.execute("COMMIT")

    _SENT_COLUMNS = (
        "envelope_id",
        "recipients",
        "level",
        "urgency",
        "subject",
        "filename",
        "size",
        "time",
        "parts",
        "confirmed",
        "state",
    )

    def _sent_rows(self, where: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        rows = self._exec(
            f"SELECT {', '.join(self._SENT_COLUMNS)} FROM sent {where}",  # noqa: S608 - fixed
            args,
        )
        out = []
        for row in rows:
            d = dict(zip(self._SENT_COLUMNS, row, strict=True))
            d["recipients"] = json.loads(d["recipients"])
            out.append(d)
        return out

    def sent(self, envelope_id: str) -> dict[str, Any] | None:
        rows = self._sent_rows("WHERE envelope_id=?", (envelope_id,))
        if not rows:
            return None
        row = rows[0]
        del row["envelope_id"]
        return row

    def outbox(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Sent envelopes, newest first."""
        return self._sent_rows("ORDER BY time DESC, rowid DESC LIMIT ?", (limit,))

    def resolve(self, prefix: str) -> list[str]:
        """The envelope ids this agent knows that start with ``prefix`` (sent, received,
        or named by a status), for commands that take a short id."""
        like = prefix.lower().replace("%", "").replace("_", "") + "%"
        rows = self._exec(
            "SELECT envelope_id FROM sent WHERE envelope_id LIKE ? UNION"
            " SELECT envelope_id FROM received WHERE envelope_id LIKE ? UNION"
            " SELECT envelope_id FROM statuses WHERE envelope_id LIKE ?",
            (like, like, like),
        )
        return sorted(str(r[0]) for r in rows)

    def received(self, envelope_id: str) -> dict[str, Any] | None:
        rows = self._exec(
            "SELECT sender, header_hash, path, outcome, reason, time FROM received"
            " WHERE envelope_id=?",
            (envelope_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return {
            "sender": r[0],
            "header_hash": r[1],
            "path": r[2],
            "outcome": r[3],
            "reason": r[4],
            "time": r[5],
        }

    def record_received(
        self,
        envelope_id: str,
        sender: str,
        header_hash: str,
        path: str,
        outcome: str,
        reason: str = "",
    ) -> None:
        self._exec(
            "INSERT OR IGNORE INTO received VALUES (?,?,?,?,?,?,?)",
            (envelope_id, _now(), sender, header_hash, path, outcome, reason),
        )

    def move_received(self, envelope_id: str, path: str) -> None:
        """Where a received document is now (moved to the recalled folder)."""
        self._exec("UPDATE received SET path=? WHERE envelope_id=?", (path, envelope_id))

    def set_mark(self, envelope_id: str, mark: str, value: str) -> None:
        """Remember one fact about an envelope (its header hash, replaced by, recalled ...);
        a later value of the same mark replaces the earlier one."""
        self._exec(
            "INSERT OR REPLACE INTO marks VALUES (?,?,?,?)", (envelope_id, mark, value, _now())
        )

    def marks(self, envelope_id: str) -> dict[str, str]:
        """Every mark of an envelope."""
        rows = self._exec("SELECT mark, value FROM marks WHERE envelope_id=?", (envelope_id,))
        return {str(m): str(v) for m, v in rows}

    def add_part(self, envelope_id: str, part: int) -> int:
        """Record a spooled part; returns how many parts of the envelope are spooled."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO parts VALUES (?,?)", (envelope_id, part))
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM parts WHERE envelope_id=?", (envelope_id,)
                ).fetchone()[0]
            )

    def count_parts(self, envelope_id: str) -> int:
        return int(
            self._exec("SELECT COUNT(*) FROM parts WHERE envelope_id=?", (envelope_id,))[0][0]
        )

    def has_part(self, envelope_id: str, part: int) -> bool:
        return bool(
            self._exec("SELECT 1 FROM parts WHERE envelope_id=? AND part=?", (envelope_id, part))
        )

    def record_status(self, notice: Notice, verified: bool) -> bool:
        """Store a notice once (by digest); False if it was already there."""
        digest = hashlib.sha256(notice.raw).hexdigest()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO statuses VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    digest,
                    notice.envelope_id.hex(),
                    notice.time.isoformat(),
                    notice.kind,
                    notice.signer.text,
                    notice.addressee.text,
                    notice.status,
                    notice.rule_id,
                    notice.reason,
                    notice.note,
                    int(verified),
                    notice.raw,
                ),
            )
            return cur.rowcount == 1

    def record_proof(
        self, envelope_id: str, log_id: str, leaf_index: int, tree_size: int, proof: str, cp: str
    ) -> None:
        """Keep the first verified inclusion proof of a sent envelope's audit record."""
        self._exec(
            "INSERT OR IGNORE INTO proofs VALUES (?,?,?,?,?,?)",
            (envelope_id, log_id, leaf_index, tree_size, proof, cp),
        )

    def proof(self, envelope_id: str) -> dict[str, Any] | None:
        rows = self._exec(
            "SELECT log_id, leaf_index, tree_size, proof, checkpoint FROM proofs"
            " WHERE envelope_id=?",
            (envelope_id,),
        )
        if not rows:
            return None
        keys = ("log_id", "leaf_index", "tree_size", "proof", "checkpoint")
        return dict(zip(keys, rows[0], strict=True))

    def statuses(self, envelope_id: str) -> list[dict[str, Any]]:
        rows = self._exec(
            "SELECT time, kind, signer, addressee, status, rule_id, reason, note,"
            " verified, raw FROM statuses WHERE envelope_id=? ORDER BY time, rowid",
            (envelope_id,),
        )
        keys = (
            "time",
            "kind",
            "signer",
            "addressee",
            "status",
            "rule_id",
            "reason",
            "note",
            "verified",
            "raw",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
