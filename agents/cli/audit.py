"""``cipherpost audit ...``: the cipher department's commands over the gateways' audit logs.

- ``keygen``: a gateway's audit key and its request (the CA certifies it: ``ca issue-audit``);
- ``witness``: keep every published checkpoint, alarm on fork, rollback, truncation;
- ``verify``: recompute every log, check every record and checkpoint, name what is wrong;
- ``prove`` / ``check-proof``: one envelope's inclusion proof, checked offline;
- ``query``: everyday questions; ``export``: one file for an offline machine.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agents.cli.common import Subcommands, add, group, now
from agents.cli.witness import register as register_witness
from agents.output import emit, say
from gateway.audit import RECORD_COLUMNS, AuditStore
from gateway.auditlog import (
    Unwitnessed,
    check_proof,
    load_checkpoint_dir,
    load_checkpoint_files,
    load_endings,
    prove,
    verify_store,
)
from gateway.checkpoint import VerifiedFile, origin_for, read_checkpoint_file
from gateway.ending import FILE_NAME as ENDING_FILE
from gateway.ending import read_ending
from gateway.witness import CA_FILE, Witness
from keys.auditkey import make_audit_key
from keys.ca import load_ca_certificate
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused, UsageError
from keys.keystore import read_passphrase, unlock
from keys.levels import Level
from keys.logsetup import get_logger

log = get_logger("cipherpost.audit")


def _open_store(path: Path) -> AuditStore:
    try:
        return AuditStore(path, readonly=True)
    except (FileNotFoundError, sqlite3.Error):
        raise CipherpostError(f"cannot open audit store {path}") from None


def _checkpoint_file(path: Path, ca_cert: Path) -> VerifiedFile:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read checkpoint {path}: {e.strerror}") from e
    return read_checkpoint_file(data, load_ca_certificate(ca_cert))


# --- commands ----------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    code = AgencyCode.from_user(args.code)
    request = make_audit_key(args.dir, code, read_passphrase(confirm=True), now())
    emit(
        args,
        {"code": code.text, "key_dir": str(args.dir), "request": str(request)},
        f"audit key made in {args.dir}; request: {request}",
    )
    say(
        args,
        f"next, at the cipher department: cipherpost ca issue-audit {request} --ca CA_DIR"
        f" --out DIR; then copy DIR/{code}.audit.crt to {args.dir}/audit.crt",
    )
    return 0


def cmd_end_log(args: argparse.Namespace) -> int:
    from gateway.ending import sign_ending
    from keys import ca as ca_module

    witness = Witness(args.store)
    code, _, log_id = args.log.partition("/")
    origin = origin_for(AgencyCode.parse(code), log_id)
    held = witness.held(origin)
    if not held:
        raise CipherpostError(f"the witness store {args.store} holds no checkpoint of {origin}")
    authority = unlock(lambda passphrase: ca_module.open_ca(args.ca, passphrase))
    if authority.certificate != witness.certificate:
        raise CipherpostError("this CA is not the one the witness store pins")
    data = sign_ending(authority, held[-1], args.successor, args.reason, now())
    ending = witness.end(data)
    if args.out is not None:
        args.out.write_bytes(data)
    emit(
        args,
        {"ending": ending.describe(), "store": str(args.store),
         "out": str(args.out) if args.out else None},
        f"{ending.describe()}; recorded in the witness store {args.store}",
    )  # fmt: skip
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    endings: list[Any] = []
    files: list[VerifiedFile] = []
    problems: list[str] = []
    if args.export is not None:
        store, items, embedded_ca = _open_export(args.export)
        ca = load_ca_certificate(args.ca) if args.ca else embedded_ca
        ca_note = None if args.ca else _fingerprint(embedded_ca)
        for name, data in items:
            try:
                if name.endswith(ENDING_FILE):
                    endings.append(read_ending(data, ca))
                else:
                    files.append(read_checkpoint_file(data, ca))
            except Refused as e:
                problems.append(f"{name} in export: {e}")
    else:
        if args.db is None or args.checkpoints is None:
            raise UsageError("give --db AUDIT_DB and --checkpoints DIR, or --export FILE")
        store = _open_store(args.db)
        ca_path = args.ca or args.checkpoints / CA_FILE
        ca = load_ca_certificate(ca_path)
        ca_note = None
        files, problems = load_checkpoint_files(args.checkpoints, ca)
        endings, ending_problems = load_endings(args.checkpoints, ca)
        problems += ending_problems
    checkpoints = [(f.checkpoint, f.certificate) for f in files]
    # Witnessed means cosigned by a witness the CA certified: files in a folder prove nothing.
    cosigned = [(f.checkpoint.log_id, f.checkpoint.size) for f in files if f.cosigned]
    try:
        report = verify_store(store, checkpoints, endings=endings, cosigned=cosigned)
    finally:
        store.close()
    report.problems[:0] = problems
    if args.json:
        out = report.as_dict()
        if ca_note:
            out["ca_fingerprint_sha256"] = ca_note
        print(json.dumps(out, ensure_ascii=False))
    else:
        for log_id, size in report.logs.items():
            print(f"log {log_id}: {size} leaves recomputed")
        print(f"{report.checkpoints} signed checkpoint(s) checked")
        if ca_note:
            print(f"CA taken from the export, SHA-256 fingerprint {ca_note}: compare it!")
        for p in report.problems:
            print(f"PROBLEM: {p}")
        for tail in report.tails():
            print(f"UNWITNESSED: {tail}")
        for log_id, end in report.ended.items():
            print(f"ENDED: log {log_id!r}: {end}")
    if not report.ok:
        raise Refused(f"audit log does not verify: {report.problems[0]}")
    if report.unwitnessed:
        raise Unwitnessed(
            f"{report.tails()[0]}: verified, but nobody outside the gateway vouches for them yet"
            " (run the witness, then verify again)"
        )
    if not args.json:
        print("OK: every leaf, record and checkpoint holds, and a witnessed checkpoint covers all")
    return 0


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def cmd_prove(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    try:
        checkpoint = _checkpoint_file(args.checkpoint, args.ca) if args.checkpoint else None
        if args.checkpoint and not args.ca:
            raise UsageError("--checkpoint needs --ca CA_CERT")
        proof = prove(store, args.envelope_id.lower(), checkpoint)
    finally:
        store.close()
    text = json.dumps(proof, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
        sys.stderr.write(f"proof of leaf {proof['leaf_index']} written to {args.out}\n")
    else:
        sys.stdout.write(text)
    return 0


def cmd_check_proof(args: argparse.Namespace) -> int:
    try:
        proof = json.loads(args.proof.read_bytes())
    except OSError as e:
        raise CipherpostError(f"cannot read proof {args.proof}: {e.strerror}") from e
    except ValueError:
        raise Refused("proof is not JSON") from None
    if not isinstance(proof, dict):
        raise Refused("proof is not a JSON object")
    checkpoint = _checkpoint_file(args.checkpoint, args.ca)
    fields = check_proof(proof, checkpoint)
    cp = checkpoint.checkpoint
    if args.json:
        print(json.dumps({"ok": True, "checkpoint": cp.describe(), "leaf": fields}))
    else:
        print(
            f"OK: envelope {fields['envelope_id'] or '-'} ({fields['event']}, {fields['decision']}"
            f", rule {fields['rule_id']}) is leaf {proof['leaf_index']} of log {cp.log_id}, "
            f"proven in checkpoint {cp.describe()}"
        )
    return 0


def _parse_time(text: str, *, end: bool = False) -> str:
    """An ISO time in UTC for the queries. A date alone means its whole day: from its start
    (``--since``), or up to its end included (``--until 2026-11-28`` takes the 28th in)."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}: use e.g. 2026-11-20 or 2026-11-20T08:00"
        ) from None
    if end and len(text.strip()) == 10:  # YYYY-MM-DD
        t += dt.timedelta(days=1)
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat()


def cmd_query(args: argparse.Namespace) -> int:
    if args.json and args.csv:
        raise UsageError("choose --json or --csv")
    since = _parse_time(args.since) if args.since else None
    until = _parse_time(args.until, end=True) if args.until else None
    level = Level.parse(args.level).value if args.level else None
    store = _open_store(args.db)
    try:
        found: list[dict[str, Any]] = store.query(
            since=since, until=until, level=level, decision=args.decision, agency=args.agency
        )
    finally:
        store.close()
    if args.json:
        for r in found:
            print(json.dumps(r, ensure_ascii=False))
    elif args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(RECORD_COLUMNS)
        for r in found:
            w.writerow([" ".join(r[c]) if c == "recipients" else r[c] for c in RECORD_COLUMNS])
    else:
        for r in found:
            print(
                f"{r['time'][:19]}  {r['log_id']}#{r['leaf_index']}  {r['event']:<12} "
                f"{r['decision']:<8} {r['sender'] or '-':<14} -> {','.join(r['recipients']) or '-'}"
                f"  {r['level'] or '-'}  rule {r['rule_id']}"
            )
    sys.stderr.write(f"{len(found)} record(s)\n")
    return 0


EXPORT_TABLE = "export_checkpoints"


def cmd_export(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise CipherpostError(f"{args.out} already exists; refusing to overwrite it")
    ca_path = args.ca or args.checkpoints / CA_FILE
    ca = load_ca_certificate(ca_path)
    checkpoints, problems = load_checkpoint_dir(args.checkpoints, ca)
    if problems:
        raise Refused(f"witness store has a bad checkpoint: {problems[0]}")
    src = _open_store(args.db)
    try:
        src.copy_to(args.out)
    finally:
        src.close()
    db = sqlite3.connect(args.out)
    try:
        db.execute(f"CREATE TABLE {EXPORT_TABLE} (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
        kept = [*args.checkpoints.rglob("*.checkpoint.json"), *args.checkpoints.rglob(ENDING_FILE)]
        for path in sorted(kept):
            db.execute(
                f"INSERT INTO {EXPORT_TABLE} VALUES (?,?)",  # noqa: S608 - constant name
                (str(path.relative_to(args.checkpoints)), path.read_bytes()),
            )
        db.execute(
            f"INSERT INTO {EXPORT_TABLE} VALUES (?,?)",  # noqa: S608 - constant name
            (CA_FILE, ca_path.read_bytes()),
        )
        db.commit()
    finally:
        db.close()
    emit(
        args,
        {"out": str(args.out), "checkpoints": len(checkpoints)},
        f"exported {len(checkpoints)} checkpoint(s) and the audit store to {args.out}",
    )
    say(args, f"check it offline: cipherpost audit verify --export {args.out} --ca CA_CERT")
    return 0


def _open_export(path: Path) -> tuple[AuditStore, list[tuple[str, bytes]], x509.Certificate]:
    if not path.is_file():
        raise CipherpostError(f"cannot read export {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(f"SELECT name, data FROM {EXPORT_TABLE}").fetchall()  # noqa: S608
        finally:
            db.close()
    except sqlite3.Error:
        raise CipherpostError(f"{path} is not a cipherpost audit export") from None
    ca_pem = next((bytes(d) for n, d in rows if n == CA_FILE), None)
    if ca_pem is None:
        raise CipherpostError(f"{path}: the export carries no CA certificate")
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise CipherpostError(f"{path}: the export's CA certificate is malformed") from None
    return _open_store(path), [(str(n), bytes(d)) for n, d in rows if n != CA_FILE], ca


# --- parser ------------------------------------------------------------------------------------


def register(sub: Subcommands) -> None:
    """Add ``cipherpost audit ...`` to the CLI."""
    audit = group(sub, "audit", "the gateways' audit logs: witness, verify, prove, query, export")

    sp = add(audit, "keygen", cmd_keygen, "make a gateway's audit key and its request for the CA")
    sp.add_argument("--dir", required=True, type=Path, metavar="AUDIT_DIR")
    sp.add_argument("--code", required=True, metavar="CODE", help="the gateway's agency code")

    register_witness(audit)

    sp = add(
        audit,
        "verify",
        cmd_verify,
        "recompute every log; check every record and signed checkpoint; exit 3 on tampering",
    )
    sp.add_argument("--db", type=Path, metavar="AUDIT_DB")
    sp.add_argument(
        "--checkpoints", type=Path, metavar="DIR", help="the witness store (its ca.crt is used)"
    )
    sp.add_argument("--export", type=Path, metavar="FILE", help="an `audit export` file instead")
    sp.add_argument(
        "--ca", type=Path, metavar="CA_CERT", help="your own copy of the CA certificate"
    )

    sp = add(
        audit,
        "end-log",
        cmd_end_log,
        "after a lost audit store: end its log at the last witnessed checkpoint (CA-signed)",
    )
    sp.add_argument("--store", required=True, type=Path, metavar="WITNESS_DIR")
    sp.add_argument("--log", required=True, metavar="CODE/LOG_ID", help="e.g. 000.00.99.G99/gw1")
    sp.add_argument("--successor", required=True, metavar="LOG_ID", help="the new log's id")
    sp.add_argument("--reason", required=True, help="what happened (kept in the ending)")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--out", type=Path, metavar="FILE", help="also write the ending here")

    sp = add(audit, "prove", cmd_prove, "an inclusion proof (JSON) of an envelope's audit record")
    sp.add_argument("envelope_id", metavar="ENVELOPE_ID")
    sp.add_argument("--db", required=True, type=Path, metavar="AUDIT_DB")
    sp.add_argument("--checkpoint", type=Path, metavar="FILE", help="prove against this one")
    sp.add_argument("--ca", type=Path, metavar="CA_CERT", help="to check --checkpoint")
    sp.add_argument("--out", type=Path, metavar="PROOF.json")

    sp = add(audit, "check-proof", cmd_check_proof, "verify an inclusion proof offline")
    sp.add_argument("proof", type=Path, metavar="PROOF.json")
    sp.add_argument("--checkpoint", required=True, type=Path, metavar="FILE")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_CERT")

    sp = add(
        audit,
        "query",
        cmd_query,
        "list audit records by agency, time, level, decision",
        json_help="one JSON object per record, one per line",
    )
    sp.add_argument("--db", required=True, type=Path, metavar="AUDIT_DB")
    sp.add_argument("--agency", metavar="CODE", help="sender or recipient; patterns like *.H41")
    sp.add_argument("--since", metavar="TIME", help="ISO time, UTC unless it says otherwise")
    sp.add_argument("--until", metavar="TIME")
    sp.add_argument("--level", metavar="LEVEL")
    sp.add_argument("--decision", choices=("accepted", "refused"))
    sp.add_argument("--csv", action="store_true")

    sp = add(audit, "export", cmd_export, "the store and the witness's checkpoints in one file")
    sp.add_argument("--db", required=True, type=Path, metavar="AUDIT_DB")
    sp.add_argument("--checkpoints", required=True, type=Path, metavar="DIR")
    sp.add_argument("--ca", type=Path, metavar="CA_CERT")
    sp.add_argument("--out", required=True, type=Path, metavar="FILE")
