"""``cipherpost gateway``: set one up, run it, back it up.

``init`` makes, in one folder, everything the gateway itself must create (its
agency keys and enrollment request, its audit key and request, a commented
GATEWAY.toml) and prints what the cipher department does next with the
existing commands. ``backup`` copies the audit store online (SQLite's backup
API, consistent while the gateway runs) with the gateway's state, and checks
the copy against the last checkpoint the gateway signed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

from agents.cli.common import Subcommands, add, group, now
from keys import agency
from keys.auditkey import make_audit_key
from keys.codes import AgencyCode
from keys.errors import CipherpostError, UsageError
from keys.keystore import read_passphrase, unlock

CONFIG_FILE = "GATEWAY.toml"
BACKUP_MANIFEST = "backup.json"


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.config import example

    code = AgencyCode.from_user(args.code)
    folder: Path = args.dir
    config = folder / CONFIG_FILE
    if config.exists():
        raise CipherpostError(f"{config} exists; refusing to overwrite a gateway's set-up")
    passphrase = read_passphrase(confirm=True)
    agency.enroll(folder / "keys", code, args.name, passphrase, now())
    audit_request = make_audit_key(folder / "audit", code, passphrase, now())
    config.write_text(example(args.id, code.text), encoding="utf-8")
    steps = [
        f"cipherpost ca issue {folder / 'keys' / agency.REQUEST_FILE} --ca CA_DIR"
        " --clearance tuyet-mat --out CERTS_DIR",
        f"cipherpost ca issue-audit {audit_request} --ca CA_DIR --out CERTS_DIR",
        f"copy CERTS_DIR/{code}.audit.crt to {folder / 'audit' / 'audit.crt'}",
        "cipherpost directory build --ca CA_DIR --certs CERTS_DIR --out "
        f"{folder / 'directory.cpd'}",
        f"cipherpost policy sign policy.toml --ca CA_DIR --out {folder / 'policy.cpp'}",
        f"copy CA_DIR/ca.crt to {folder / 'ca.crt'}",
        "cipherpost broker provision --directory ... --credentials-dir "
        f"{folder}  (writes cp-gateway.broker.json)",
        f"cipherpost gateway run --config {config}",
    ]
    if args.json:
        print(json.dumps({"config": str(config), "code": code.text, "next": steps}))
        return 0
    print(f"gateway {args.id} ({code}) set up in {folder}: keys, audit key, {CONFIG_FILE}")
    print("next, at the cipher department and here:")
    for n, step in enumerate(steps, 1):
        print(f"  {n}. {step}")
    return 0


GATEWAY_ID_ENV = "CIPHERPOST_GATEWAY_ID"


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig
    from gateway.service import Gateway, load
    from keys.logsetup import configure

    config = GatewayConfig.load(args.config)
    declared = os.environ.get(GATEWAY_ID_ENV)
    if declared is not None and declared != config.gateway_id:
        # The deployment (compose, a unit file) names each instance; two instances that
        # share a gateway_id would interleave two logs under one name (docs/audit.md).
        raise UsageError(
            f"{args.config} says gateway_id = {config.gateway_id!r} but {GATEWAY_ID_ENV} is"
            f" {declared!r}: one of them names another instance"
        )
    configure(
        json_lines=config.log_format == "json",
        level=getattr(logging, config.log_level.upper()),
        static={"gateway_id": config.gateway_id, "log_id": config.gateway_id},
    )
    gateway = Gateway(config, unlock(lambda passphrase: load(config, passphrase)))
    signal.signal(signal.SIGTERM, lambda *_: gateway.stop())
    signal.signal(signal.SIGINT, lambda *_: gateway.stop())
    gateway.run()
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    manifest = backup(args.config, args.out)
    if args.json:
        print(json.dumps(manifest))
    else:
        print(
            f"audit store of {manifest['gateway_id']} backed up to {args.out}: "
            f"{manifest['leaves']} leaves, last checkpoint {manifest['checkpoint_size']}"
        )
    return 0


def backup(config_path: Path, out: Path) -> dict[str, Any]:
    """An online copy of the audit store and the gateway's state files, checked, with a manifest.

    The copy holds at least every leaf of the last checkpoint the gateway signed
    and matches it (recomputed); a copy that does not is refused, not kept.
    """
    from gateway.audit import AuditStore
    from gateway.auditlog import Checkpointer, verify_store
    from gateway.checkpoint import parse_checkpoint
    from gateway.config import GatewayConfig

    config = GatewayConfig.load(config_path)
    if not config.audit_db.is_file():
        raise CipherpostError(f"no audit store at {config.audit_db}")
    if out.exists() and any(out.iterdir()):
        raise CipherpostError(f"{out} is not empty; refusing to mix two backups")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = out / "audit.db"
    source = sqlite3.connect(f"file:{config.audit_db}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)  # consistent while the gateway writes
        finally:
            copy.close()
    finally:
        source.close()
    target.chmod(0o600)
    state = out / "state"
    shutil.copytree(config.state_dir, state, dirs_exist_ok=True)
    last = Checkpointer.read_state_note(config.state_dir, config.gateway_id)
    store = AuditStore(target, readonly=True)
    try:
        leaves = store.size(config.gateway_id)
        if last is not None:
            cp = parse_checkpoint(last)
            report = verify_store(store, [], logs=[config.gateway_id])
            if leaves < cp.size or store.root(config.gateway_id, cp.size)[1] != cp.root:
                raise CipherpostError(
                    f"the copy does not hold the checkpointed log {cp.describe()}: not kept"
                )
            if not report.ok:
                raise CipherpostError(f"the copy does not verify: {report.problems[0]}")
    except BaseException:
        store.close()
        shutil.rmtree(out, ignore_errors=True)
        raise
    store.close()
    manifest = {
        "gateway_id": config.gateway_id,
        "time": now().isoformat(),
        "leaves": leaves,
        "checkpoint_size": parse_checkpoint(last).size if last else 0,
        "files": {
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file()
        },
    }
    (out / BACKUP_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def register(sub: Subcommands) -> None:
    """``cipherpost gateway init|run|backup``."""
    gw_sub = group(sub, "gateway", "the gateway service: set it up, run it, back it up")
    sp = add(
        gw_sub,
        "init",
        cmd_init,
        "create a gateway's keys, audit key and a commented GATEWAY.toml in one folder",
    )
    sp.add_argument("--dir", required=True, type=Path, metavar="DIR")
    sp.add_argument("--code", required=True, metavar="CODE", help="the gateway's agency code")
    sp.add_argument("--name", default="Cổng trao đổi", help="its name in the directory")
    sp.add_argument("--id", default="gw1", help="this instance's audit log id (default gw1)")
    sp = add(
        gw_sub,
        "run",
        cmd_run,
        "verify, apply the signed policy, forward or refuse, audit; until SIGTERM",
        json_help=None,
    )
    sp.add_argument("--config", required=True, type=Path, metavar="GATEWAY.toml")
    sp = add(
        gw_sub,
        "backup",
        cmd_backup,
        "copy the audit store (online) and the gateway's state, checked against its checkpoint",
    )
    sp.add_argument("--config", required=True, type=Path, metavar="GATEWAY.toml")
    sp.add_argument("--out", required=True, type=Path, metavar="DIR", help="an empty folder")
