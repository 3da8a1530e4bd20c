"""The audit log on the real RabbitMQ: checkpoints published, witnessed, verified, proven;
a gateway restarted on an older copy of its store is caught by the witness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agents.cli import main
from agents.world import PASSPHRASE, World
from broker.provision import WITNESS_LOGIN
from gateway.audit import AuditStore
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import (
    PROVINCE,
    A,
    make_world,
    wait_for,
)
from tests.helpers import cli
from tests.sync import receive_until


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The witness's cosigning key and the CA are unlocked with the world's passphrase.
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())
    w = make_world(tmp_path / "w", checkpoint_every=4, checkpoint_seconds=0.5)
    yield w
    w.cleanup()


def send(world: World, tmp_path: Path, n: int, tag: str) -> list[str]:
    ids = []
    with world.client(PROVINCE) as province:
        for i in range(n):
            doc = tmp_path / f"{tag}-{i}.txt"
            doc.write_text(f"{tag} {i}\n")
            ids.append(
                province.send(doc, to=[AgencyCode.parse(A)], level=Level.MAT, progress=False)
            )
    return ids


def run_gateway(world: World, tmp_path: Path, n: int, tag: str) -> list[str]:
    """Start the gateway, exchange ``n`` documents (with receipts), stop it (it signs at stop)."""
    world.start_gateway()
    gw = world.gateways[-1][0]
    ids = send(world, tmp_path, n, tag)
    with world.client(A) as a:
        got = receive_until(a, ids)
    assert {d.envelope_id for d in got} == set(ids)
    # Their receipts decided too (a leaf each) before the gateway stops and signs.
    assert wait_for(lambda: gw.counters["notices"] >= n, 60), dict(gw.counters)
    world.stop_gateways()
    return ids


def witness(world: World, store: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the witness (with its cosigning key) once over what the gateways published."""
    creds = world.root / "broker-credentials" / f"{world.prefix}{WITNESS_LOGIN}.broker.json"
    code = main(
        [
            "audit",
            "witness",
            "--store",
            str(store),
            "--ca",
            str(world.ca_dir / "ca.crt"),
            "--broker",
            str(creds),
            "--key",
            str(world.witness_key),
            "--idle",
            "2",
        ]
    )
    out = capsys.readouterr()
    return code, out.out + out.err


def test_checkpoints_are_witnessed_verified_and_prove_an_envelope(
    world, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())
    ids = run_gateway(world, tmp_path, 10, "a")
    store = tmp_path / "witness"
    code, out = witness(world, store, capsys)
    assert code == 0, out
    assert "all consistent" in out
    db = world.root / "audit.db"
    assert main(["audit", "verify", "--db", str(db), "--checkpoints", str(store), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # 10 submissions + 10 receipts, one leaf each, all covered by the final checkpoint.
    assert report["ok"] and report["logs"] == {"gw1": 20} and report["checkpoints_checked"] >= 2
    latest = sorted(store.rglob("*.checkpoint.json"))[-1]
    proof = tmp_path / "proof.json"
    ca_args = ("--checkpoint", latest, "--ca", world.ca_dir / "ca.crt")
    assert cli("audit", "prove", ids[3], "--db", db, *ca_args, "--out", proof) == 0
    assert cli("audit", "check-proof", proof, *ca_args) == 0
    assert f"envelope {ids[3]}" in capsys.readouterr().out
    # The sender's agent got each envelope's leaf index and proof with the checkpoints.
    with world.client(PROVINCE) as province:
        receive_until(
            province,
            until=lambda: all(province.state.proof(eid) is not None for eid in ids),
            what="the inclusion proof of each envelope sent",
        )
        audits = [province.status(eid)["audit"] for eid in ids]
    assert all(a is not None and a["verified"] and a["log_id"] == "gw1" for a in audits), audits
    assert sorted(a["leaf_index"] for a in audits) == sorted(set(a["leaf_index"] for a in audits))
    code = main(["status", ids[3], "--config", str(world.agent_config(PROVINCE)), "--idle", "0.5"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert "audit: logged at leaf" in out and "[verified]" in out


def test_witness_catches_a_gateway_restarted_on_an_older_store(world, tmp_path, capsys):
    store = tmp_path / "witness"
    run_gateway(world, tmp_path, 3, "first")
    assert witness(world, store, capsys)[0] == 0
    backup = tmp_path / "backup"
    backup.mkdir()
    db = world.root / "audit.db"
    s = AuditStore(db, readonly=True)
    s.copy_to(backup / "audit.db")
    s.close()
    shutil.copytree(world.root / "gw1-state", backup / "gw1-state")

    run_gateway(world, tmp_path, 3, "second")
    assert witness(world, store, capsys)[0] == 0

    # The operator restores the older copy (store and state alike) and carries on.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup / "audit.db", db)
    shutil.rmtree(world.root / "gw1-state")
    shutil.copytree(backup / "gw1-state", world.root / "gw1-state")
    run_gateway(world, tmp_path, 4, "third")
    code, out = witness(world, store, capsys)
    assert code == 3, out
    assert "ALARM" in out and "cipherpost.audit/" in out


def test_each_gateway_instance_keeps_its_own_log_and_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())
    w = make_world(tmp_path / "w", gateways=("gw1", "gw2"), checkpoint_seconds=0.5)
    try:
        for name in ("gw1", "gw2"):  # one after the other: both logs certainly get leaves
            gw = w.start_gateway(name)
            send(w, tmp_path, 3, name)
            assert wait_for(lambda gw=gw: gw.counters["forwarded"] == 3, 30)
            w.stop_gateways()
        store = tmp_path / "witness"
        code, out = witness(w, store, capsys)
        assert code == 0, out
        assert (
            main(
                [
                    "audit",
                    "verify",
                    "--db",
                    str(w.root / "audit.db"),
                    "--checkpoints",
                    str(store),
                    "--json",
                ]
            )
            == 0
        )
        report = json.loads(capsys.readouterr().out)
        assert report["logs"] == {"gw1": 3, "gw2": 3}
        keys = {
            json.loads(p.read_text())["checkpoint"].split("\n")[0]: json.loads(p.read_text())[
                "audit_certificate"
            ]
            for p in store.rglob("*.checkpoint.json")
        }
        assert len(keys) == 2 and len(set(keys.values())) == 2  # two logs, two audit keys
    finally:
        w.cleanup()


def test_a_lost_store_is_recovered_under_a_new_log_and_the_old_one_ended(
    world, tmp_path, capsys, monkeypatch
):
    """The runbook of docs/operations.md: back up, lose the store, end the old log,
    run under a new one; a restore of an older copy under the old id is still an alarm."""
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())
    store = tmp_path / "witness"
    run_gateway(world, tmp_path, 2, "before-backup")
    backup = tmp_path / "backup"
    assert cli("gateway", "backup", "--config", world.gateway_config(), "--out", backup) == 0
    manifest = json.loads((backup / "backup.json").read_text())
    assert manifest["leaves"] >= 4 and manifest["checkpoint_size"] == manifest["leaves"]
    run_gateway(world, tmp_path, 2, "after-backup")
    assert witness(world, store, capsys)[0] == 0
    # The disk holding the store and the state is lost.
    db = world.root / "audit.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(world.root / "gw1-state")
    # The cipher department ends the old log at its last witnessed checkpoint ...
    gateway_code = "000.00.99.G99"
    assert (
        cli("audit", "end-log", "--store", store, "--log", f"{gateway_code}/gw1",
            "--successor", "gw2", "--reason", "disk lost", "--ca", world.ca_dir) == 0
    )  # fmt: skip
    assert "ended at size" in capsys.readouterr().out
    # ... and the gateway starts a new log, with a new audit key, on a new store.
    audit2 = world.root / "gw2-audit"
    assert cli("audit", "keygen", "--dir", audit2, "--code", gateway_code) == 0
    certs = tmp_path / "certs2"
    assert cli("ca", "issue-audit", audit2 / "audit.req", "--ca", world.ca_dir, "--out", certs) == 0
    shutil.copy(certs / f"{gateway_code}.audit.crt", audit2 / "audit.crt")
    config = world.gateway_config("gw1").read_text()
    config = config.replace('gateway_id = "gw1"', 'gateway_id = "gw2"')
    config = config.replace('audit_db = "audit.db"', 'audit_db = "audit2.db"')
    config = config.replace('state_dir = "gw1-state"', 'state_dir = "gw2-state"')
    config = config.replace('audit_dir = "gw1-audit"', 'audit_dir = "gw2-audit"')
    world.gateway_config("gw2").write_text(config)
    world.start_gateway("gw2")
    ids = send(world, tmp_path, 2, "recovered")
    with world.client(A) as a:
        assert {d.envelope_id for d in receive_until(a, set(ids))} >= set(ids)
    world.stop_gateways()
    code, out = witness(world, store, capsys)
    assert code == 0, out
    assert main(["audit", "verify", "--db", str(world.root / "audit2.db"),
                 "--checkpoints", str(store)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "ENDED: log 'gw1'" in out and "disk lost" in out and "OK" in out
    # Someone restores last week's copy under the old log id: the witness still alarms.
    shutil.copy(backup / "audit.db", db)
    shutil.copytree(backup / "state", world.root / "gw1-state")
    run_gateway(world, tmp_path, 2, "restored-old")
    code, out = witness(world, store, capsys)
    assert code == 3, out
    assert "ALARM" in out and "gw1" in out, out
