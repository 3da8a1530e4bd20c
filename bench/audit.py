"""Audit log: append, full verify, inclusion proofs, against raw baselines measured in the same run.

    .venv/bin/python bench/audit.py [--json] [--leaves 200000] [--batch 16]

- append: ``--leaves`` decision records through ``AuditStore.commit`` in batches
  of ``--batch`` (one durable commit, synchronous=FULL, per batch), a signed
  checkpoint every 100,000 leaves; baseline: the same rows into a plain SQLite
  table (no Merkle tree, no leaf encoding) with the same batching. The
  headline batch is 16, the most the gateway commits at once (a quarter of
  its prefetch window of 64); CPU seconds per leaf are reported beside
  wall-clock, for both.
- verify: ``verify_store`` over the whole store (every leaf decoded, compared
  with its record, re-hashed, the tree rebuilt, every checkpoint root checked);
  baseline: reading the same rows and SHA-256 over each leaf.
- proofs: 1,000 inclusion proofs at random leaves of the full tree (O(log n)
  node reads each), and their verification.
"""
# Oversized: main() runs the benchmark's phases top to bottom, each printed as it ends

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from gateway import merkle  # noqa: E402
from gateway.audit import ACCEPTED, RECORD_FIELDS, AuditStore, Entry, Record  # noqa: E402
from gateway.auditlog import verify_store  # noqa: E402
from gateway.checkpoint import parse_checkpoint, sign_checkpoint  # noqa: E402
from keys.codes import AgencyCode  # noqa: E402

GATEWAY = AgencyCode.parse("000.00.99.G99")
T0 = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def record(i: int) -> Record:
    return Record(
        time=T0 + dt.timedelta(milliseconds=i),
        event="submission",
        envelope_id=f"{i:032x}",
        sender="000.00.00.H41",
        recipients=(f"000.{i % 75:02d}.12.H41",),
        level="mat",
        urgency="thuong",
        size=1024 + i % 4096,
        digest=os.urandom(32).hex(),
        decision=ACCEPTED,
        rule_id="h41-internal",
        reason="exchanges inside province H41",
        gateway_id="gw1",
        part=0,
        message_digest=os.urandom(32).hex(),
    )


def baseline_append(path: Path, records: list[Record], batch: int) -> tuple[float, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"CREATE TABLE r (seq INTEGER PRIMARY KEY, {', '.join(RECORD_FIELDS)})")
    insert = f"INSERT INTO r VALUES (NULL, {', '.join('?' * len(RECORD_FIELDS))})"  # noqa: S608

    def row(r: Record) -> tuple[object, ...]:
        values = r.values()
        values["recipients"] = json.dumps(values["recipients"])
        return tuple(values[f] for f in RECORD_FIELDS)

    start, cpu = time.perf_counter(), time.process_time()
    for k in range(0, len(records), batch):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(insert, [row(r) for r in records[k : k + batch]])
        db.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    db.close()
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--leaves", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=16, help="leaves per commit (gateway: 16)")
    parser.add_argument("--proofs", type=int, default=1000)
    args = parser.parse_args()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    key = Ed25519PrivateKey.generate()
    every = 100_000
    with tempfile.TemporaryDirectory(prefix="cp-bench-audit-", dir=ROOT) as tmp:
        work = Path(tmp)
        log(f"preparing {args.leaves:,} records ...")
        records = [record(i) for i in range(args.leaves)]

        log("baseline: plain SQLite inserts ...")
        base_append, base_append_cpu = baseline_append(work / "base.db", records, args.batch)

        log("append through AuditStore ...")
        store = AuditStore(work / "audit.db", log_id="gw1")
        checkpoints = []
        start, cpu = time.perf_counter(), time.process_time()
        for k in range(0, args.leaves, args.batch):
            batch = records[k : k + args.batch]
            store.commit(
                [
                    Entry(
                        r,
                        decides=(r.envelope_id, r.digest),
                        part=(r.envelope_id, r.digest, 0, r.message_digest),
                    )
                    for r in batch
                ]
            )
            if store.size() % every < args.batch or k + args.batch >= args.leaves:
                size, root = store.root()
                note = sign_checkpoint(key, GATEWAY, "gw1", size, root, T0)
                checkpoints.append(parse_checkpoint(note))
        append_s, append_cpu = time.perf_counter() - start, time.process_time() - cpu
        store.close()
        del records
        db_bytes = sum(p.stat().st_size for p in work.glob("audit.db*"))
        log(f"  {args.leaves / append_s:,.0f} leaves/s (baseline {args.leaves / base_append:,.0f})")

        log("baseline: read every row and hash its leaf ...")
        raw = sqlite3.connect(work / "audit.db")
        start = time.perf_counter()
        for (leaf,) in raw.execute("SELECT leaf FROM records ORDER BY leaf_index"):
            merkle.leaf_hash(leaf)
        base_verify = time.perf_counter() - start
        raw.close()

        log("full verify ...")
        store = AuditStore(work / "audit.db", readonly=True)
        start = time.perf_counter()

        class _Cert:  # the bench checks roots, not certificate chains
            code = GATEWAY

        report = verify_store(store, [(c, _Cert()) for c in checkpoints])  # type: ignore[misc]
        verify_s = time.perf_counter() - start
        assert report.ok, report.problems[:3]
        log(f"  {verify_s:.1f} s (baseline read + hash {base_verify:.1f} s)")

        log(f"{args.proofs} inclusion proofs ...")
        size, root = store.root("gw1")
        rng = random.Random(7)
        prove_ms, check_ms = [], []
        for _ in range(args.proofs):
            i = rng.randrange(size)
            t = time.perf_counter()
            proof = store.inclusion_proof("gw1", i, size)
            prove_ms.append((time.perf_counter() - t) * 1000)
            leaf = store.leaf("gw1", i)
            t = time.perf_counter()
            merkle.verify_inclusion(merkle.leaf_hash(leaf), i, size, proof, root)
            check_ms.append((time.perf_counter() - t) * 1000)
        store.close()
        prove_ms.sort()

    result = {
        "leaves": args.leaves,
        "batch": args.batch,
        "append_leaves_s": round(args.leaves / append_s),
        "append_baseline_rows_s": round(args.leaves / base_append),
        "append_ratio": round(base_append / append_s, 3),
        "append_cpu_us_per_leaf": round(append_cpu * 1e6 / args.leaves, 2),
        "append_baseline_cpu_us_per_row": round(base_append_cpu * 1e6 / args.leaves, 2),
        "append_cpu_ratio": round(base_append_cpu / append_cpu, 3),
        "verify_s": round(verify_s, 2),
        "verify_baseline_s": round(base_verify, 2),
        "verify_ratio": round(base_verify / verify_s, 3),
        "proof_ms_p50": round(statistics.median(prove_ms), 3),
        "proof_ms_p99": round(prove_ms[int(len(prove_ms) * 0.99) - 1], 3),
        "check_proof_ms_p50": round(statistics.median(check_ms), 3),
        "db_bytes_per_leaf": round(db_bytes / args.leaves, 1),
        "checkpoints": len(checkpoints),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
