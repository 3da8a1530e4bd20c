"""Red team: what "witnessed" means to the offline verifier (THREATS.md A4; invariant 7).

The witness keeps the gateway-signed checkpoint files it accepted and adds no
signature of its own; an export (``cipherpost audit export``) copies whatever
``*.checkpoint.json`` files the folder it is given holds. So the offline
verifier counts as "witnessed" any checkpoint signed with the gateway's audit
key, which the gateway operator holds. This test FAILS on the current code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from broker.topology import CHECKPOINT_EXCHANGE
from gateway.audit import AuditStore, Record
from gateway.checkpoint import checkpoint_file, parse_checkpoint, sign_checkpoint
from gateway.witness import Witness, WitnessAlarm
from keys.auditkey import load_audit_key
from keys.levels import Level
from tests.gateway_kit import OTHER, A, B, delivery, make_gateway, make_kit, parts, witness_signer
from tests.helpers import PASSPHRASE, cli


@pytest.fixture
def kit(tmp_path):
    return make_kit(tmp_path / "kit")


def _record(row: dict) -> Record:
    values = {f.name: row[f.name] for f in dataclasses.fields(Record)}
    values["time"] = dt.datetime.fromisoformat(row["time"])
    values["recipients"] = tuple(row["recipients"])
    return Record(**values)


def test_an_export_the_witness_never_saw_does_not_verify_as_witnessed(kit, tmp_path):
    """A4 (the gateway operator: it holds the store and the gateway's audit key) breaks
    invariant 7.

    The genuine log holds two decisions: A -> B accepted, and A -> another
    province at Tối mật *refused*; the witness holds the checkpoint of size 2.
    The operator writes a new store in which the second decision reads
    "accepted", signs a checkpoint of it with the audit key, puts that file
    in a folder and runs ``audit export`` on it. ``audit verify --export
    ... --ca ca.crt`` on the auditor's offline machine exits 0: "OK: ... a
    witnessed checkpoint covers all". Shown that checkpoint, the real
    witness raises a fork alarm; the verifier never asks it, and nothing in
    the export could tell it.

    Observed: exit 0. Expected: a checkpoint counts as witnessed only with
    the witness's own signature (a C2SP cosignature by a CA-certified
    witness key) over it; without one, exit 4 (unwitnessed), not 0.
    """
    gw = make_gateway(kit, tmp_path)
    gw.handle(delivery(parts(kit.seal(A, [B]))[0], A))
    gw.handle(delivery(parts(kit.seal(A, [OTHER], level=Level.TOI_MAT))[0], A))
    gw.commit_batch()
    gw._checkpoint(force=True)
    [published] = [p for p in gw._transport.published if p.exchange == CHECKPOINT_EXCHANGE]
    gw.close()
    ca_cert = kit.world.root / "ca" / "ca.crt"
    witness = Witness(tmp_path / "witness", ca_cert, witness_signer(kit, tmp_path))
    witness.observe(published.body)
    genuine = tmp_path / "genuine.cpa"
    assert cli("audit", "export", "--db", tmp_path / "audit.db", "--checkpoints",
               tmp_path / "witness", "--ca", ca_cert, "--out", genuine) == 0  # fmt: skip
    assert cli("audit", "verify", "--export", genuine, "--ca", ca_cert) == 0

    # The operator's rewrite: the refused Tối mật exchange becomes "accepted".
    store = AuditStore(tmp_path / "audit.db", readonly=True)
    first, second = store.records()
    store.close()
    assert (second["decision"], second["rule_id"]) == ("refused", "default-deny")
    forged_db = tmp_path / "forged.db"
    forged = AuditStore(forged_db, log_id="gw1")
    for row, changes in ((first, {}), (second, {"decision": "accepted",
                                                 "rule_id": "h41-internal"})):  # fmt: skip
        record = dataclasses.replace(_record(row), **changes)
        forged.append(record, decides=(record.envelope_id, record.digest))
    size, root = forged.root()
    forged.close()
    audit_key = load_audit_key(tmp_path / "gw-audit", PASSPHRASE)
    note = sign_checkpoint(
        audit_key, parse_checkpoint(published_note(published.body)).code, "gw1", size, root,
        dt.datetime.now(dt.UTC),
    )  # fmt: skip
    folder = tmp_path / "not-the-witness" / "000.00.99.G99_gw1"
    folder.mkdir(parents=True)
    pem = (tmp_path / "gw-audit" / "audit.crt").read_bytes()
    (folder / f"{size:012d}.checkpoint.json").write_bytes(checkpoint_file(note, pem))
    with pytest.raises(WitnessAlarm, match="fork"):
        witness.observe(checkpoint_file(note, pem))  # the witness knows better
    export = tmp_path / "forged.cpa"
    assert cli("audit", "export", "--db", forged_db, "--checkpoints",
               tmp_path / "not-the-witness", "--ca", ca_cert, "--out", export) == 0  # fmt: skip
    code = cli("audit", "verify", "--export", export, "--ca", ca_cert)
    assert code != 0, "a rewritten log, checkpointed by the operator alone, verifies as OK"


def published_note(message: bytes) -> bytes:
    return json.loads(message)["checkpoint"].encode()
