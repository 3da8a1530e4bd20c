"""The audit store's SQL schema: the records, the Merkle nodes, the checkpoints, and the
state tables derived from the leaves; append-only triggers."""

from __future__ import annotations

from gateway.audit.records import _INTEGER, RECORD_FIELDS

# Column lists of the state tables, shared by the store and a commit's group.
_DECISION_COLUMNS = "envelope_id, header_hash, decision, rule_id, leaf_index"
_PART_COLUMNS = "envelope_id, header_hash, part, digest"
_PART_KEY = "(envelope_id, header_hash, part)"

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
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS relayed (
    relay_key TEXT PRIMARY KEY,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refused (
    digest TEXT PRIMARY KEY,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forwarded (
    envelope_id TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    part INTEGER NOT NULL,
    digest TEXT NOT NULL,
    log_id TEXT NOT NULL,
    leaf_index INTEGER NOT NULL,
    PRIMARY KEY (envelope_id, header_hash, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS confirmed (
    envelope_id TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    part INTEGER NOT NULL,
    PRIMARY KEY (envelope_id, header_hash, part)
) WITHOUT ROWID;
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
