"""One commit's appends (:class:`_Group`), and the state tables recomputed from the leaves."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

from gateway import merkle
from gateway.audit.records import (
    _RECIPIENTS_AT,
    ACCEPTED,
    NOTICE_EVENTS,
    PART,
    RECORD_COLUMNS,
    REFUSAL_EVENTS,
    REFUSED,
    SUBMISSION,
    Entry,
    Outcome,
    Record,
    Resolver,
    relay_key,
)
from gateway.audit.schema import _DECISION_COLUMNS, _PART_COLUMNS, _PART_KEY

_T = TypeVar("_T")


class _Store(Protocol):
    """What a group reads of the store it appends to (:class:`gateway.audit.store.AuditStore`)."""

    log_id: str
    _db: sqlite3.Connection

    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[object, ...] | None: ...

    def _tree(self) -> merkle.CompactRange: ...


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

    def __init__(self, store: _Store, resolver: Resolver | None) -> None:
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
        index, recipients = self._leaf(record)
        if decides is not None:
            self.decided[decides] = Outcome(index, record.decision, record.rule_id, False)
            self.ids.add(decides[0])
            self.decision_rows.append(
                (*decides, record.decision, record.rule_id, record.sender,
                 recipients, self.store.log_id, index)
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

    def _leaf(self, record: Record) -> tuple[int, object]:
        """Append ``record``'s leaf: its index, and its recipients as stored (JSON)."""
        index = self.tree.size
        columns, leaf = record.stored(index)
        lh = merkle.leaf_hash(leaf)
        self.nodes += [
            (self.store.log_id, lvl, i, h) for lvl, i, h in self.tree.append(lh) if lvl > 0
        ]
        self.rows.append((self.store.log_id, index, *columns, leaf, lh))
        return index, columns[_RECIPIENTS_AT]


def _chunks(items: Sequence[_T], size: int = 300) -> Iterator[Sequence[_T]]:
    """``items`` in slices small enough for one statement's bound parameters."""
    for k in range(0, len(items), size):
        yield items[k : k + size]
