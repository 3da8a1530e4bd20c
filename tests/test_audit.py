"""The audit log offline: Merkle store, signed checkpoints, witness, verify/prove/query/export.

Every tampering the audit issue names is tried on a copy of a real store and
``cipherpost audit verify`` must exit 3 and say where.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import merkle
from gateway.audit import ACCEPTED, RECORD_FIELDS, REFUSED, AuditStore, Entry, Record
from gateway.auditlog import Checkpointer, verify_store
from gateway.checkpoint import parse_checkpoint, verify_checkpoint
from gateway.decide import RESOLVE
from gateway.witness import Witness, WitnessAlarm
from keys import agency, ca
from keys.auditkey import AuditKeyRequest, load_audit_certificate, load_audit_key, make_audit_key
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused
from keys.levels import Level
from tests.helpers import cli

PASSPHRASE = b"audit-test-passphrase"
GATEWAY = "000.00.99.G99"
OTHER_GATEWAY = "000.00.98.G98"
NOW = dt.datetime(2026, 11, 28, 8, 0, tzinfo=dt.UTC)
FIELDS = ", ".join(RECORD_FIELDS)


@dataclass
class Env:
    root: Path
    ca_cert: Path
    audit_dirs: dict[str, Path]
    witness: tuple[object, bytes]  # the witness's key and certificate: it cosigns


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("audit")
    ca.init_ca(root / "ca", PASSPHRASE, NOW, "Ban Cơ yếu (test)")
    authority = ca.open_ca(root / "ca", PASSPHRASE)
    dirs = {}
    for code in (GATEWAY, OTHER_GATEWAY):
        folder = root / code
        agency.enroll(folder / "keys", AgencyCode.parse(code), "Cổng", PASSPHRASE, NOW)
        request = agency.EnrollmentRequest.parse(
            (folder / "keys" / agency.REQUEST_FILE).read_bytes()
        )
        ca.issue(authority, request, Level.TUYET_MAT, root / "certs", NOW)
        req = make_audit_key(folder / "audit", AgencyCode.parse(code), PASSPHRASE, NOW)
        path = ca.issue_audit(
            authority, AuditKeyRequest.parse(req.read_bytes()), root / "certs", NOW
        )
        shutil.copy(path, folder / "audit" / "audit.crt")
        dirs[code] = folder / "audit"
    req = make_audit_key(root / "witness-key", AgencyCode.parse(GATEWAY), PASSPHRASE, NOW)
    cert = ca.issue_audit(
        authority, AuditKeyRequest.parse(req.read_bytes()), root / "wcerts", NOW, 365, "witness"
    )
    signer = (load_audit_key(root / "witness-key", PASSPHRASE), cert.read_bytes())
    return Env(root, root / "ca" / "ca.crt", dirs, signer)


def record(i: int, *, sender: str = "000.00.00.H41", decision: str = ACCEPTED) -> Record:
    return Record(
        time=NOW + dt.timedelta(seconds=i),
        event="submission",
        envelope_id=f"{i:032x}",
        sender=sender,
        recipients=("000.01.12.H41", "000.02.12.H41") if i % 3 else ("000.00.00.H42",),
        level="toi-mat" if i % 2 else "mat",
        urgency="thuong",
        size=1000 + i,
        digest=f"{i:064x}",
        decision=decision if i % 7 else REFUSED,
        rule_id="h41-internal" if i % 7 else "no-tuyet-mat-online",
        reason="test",
        gateway_id="gw1",
        part=0,
        message_digest=f"{i:064x}"[::-1],
    )


def entries(numbers) -> list[Entry]:
    """Decision records as the gateway commits them: each decides its own header."""
    out = []
    for i in numbers:
        r = record(i)
        claim = (r.envelope_id, r.digest, r.part, r.message_digest)
        out.append(Entry(r, decides=(r.envelope_id, r.digest), part=claim))
    return out


def checkpointer(env: Env, store: AuditStore, code: str = GATEWAY, state: Path | None = None):
    folder = env.audit_dirs[code]
    cert_pem = (folder / "audit.crt").read_bytes()
    ca_cert = ca.load_ca_certificate(env.ca_cert)
    return Checkpointer(
        store,
        load_audit_key(folder, PASSPHRASE),
        load_audit_certificate(folder / "audit.crt", ca_cert),
        cert_pem,
        state or store.path.parent / f"state-{store.log_id}",
        every=10,
        seconds=3600,
    )


def build_log(
    env: Env, folder: Path, sizes: tuple[int, ...] = (10, 25, 40), log_id: str = "gw1"
) -> tuple[Path, Path, list[bytes]]:
    """A store with checkpoints at ``sizes``, witnessed into ``folder/witness``."""
    db = folder / "audit.db"
    store = AuditStore(db, log_id=log_id)
    cp = checkpointer(env, store)
    witness = Witness(folder / "witness", env.ca_cert, env.witness)  # type: ignore[arg-type]
    messages = []
    done = store.size()
    for n, size in enumerate(sizes):
        store.commit(entries(range(done, size)))
        done = size
        message = cp.sign(NOW + dt.timedelta(minutes=n + 1))
        assert message is not None
        witness.observe(message)
        messages.append(message)
    store.close()
    return db, folder / "witness", messages


@pytest.fixture
def log(env: Env, tmp_path: Path) -> tuple[Path, Path]:
    db, witness, _ = build_log(env, tmp_path)
    return db, witness


def verify(db: Path, witness: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli("audit", "verify", "--db", db, "--checkpoints", witness)
    out = capsys.readouterr()
    return code, out.out + out.err


def tamper(db: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    """What an operator with the file can do: drop the triggers and edit."""
    con = sqlite3.connect(db)
    for t in ("records", "nodes", "checkpoints"):
        con.execute(f"DROP TRIGGER IF EXISTS {t}_no_update")
        con.execute(f"DROP TRIGGER IF EXISTS {t}_no_delete")
    for s in statements:
        con.execute(s, params if "?" in s else ())
    con.commit()
    con.close()


# --- the store ------------------------------------------------------------------------------------


def test_store_root_matches_a_naive_tree(env: Env, tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "a.db", log_id="gw1")
    store.commit(entries(range(37)))
    leaves = [store.leaf("gw1", i) for i in range(37)]
    for size in (1, 2, 7, 16, 37):
        assert store.root(size=size) == (
            size,
            merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves[:size]]),
        )
    proof = store.inclusion_proof("gw1", 5, 37)
    merkle.verify_inclusion(merkle.leaf_hash(leaves[5]), 5, 37, proof, store.root()[1])
    store.close()


def test_checkpoint_proofs_from_memory_are_the_stores_proofs(tmp_path: Path) -> None:
    """The proofs a gateway sends at each checkpoint (nodes it appended kept in memory,
    the rest read from the store) are exactly the proofs the store gives, checkpoint after
    checkpoint, in commits of any size, and from a store reopened with nothing in memory."""
    store = AuditStore(tmp_path / "a.db", log_id="gw1")
    bounds = [0]
    for start, stop in ((0, 5), (5, 21), (21, 22), (22, 64), (64, 100), (100, 133)):
        for k in range(start, stop, 16):
            store.commit(entries(range(k, min(stop, k + 16))))
        bounds.append(stop)
    reopened = AuditStore(tmp_path / "a.db", log_id="gw1")
    for start, end in itertools.pairwise(bounds):
        _, root = store.root(size=end)
        for got in (store.proofs(start, end), reopened.proofs(start, end)):
            assert [i for i, *_ in got] == [
                i for i in range(start, end) if i % 7
            ]  # the accepted decisions only
            for index, eid, sender, leaf, proof in got:
                want = (f"{index:032x}", "000.00.00.H41", store.leaf("gw1", index))
                assert (eid, sender, leaf) == want
                assert proof == store.inclusion_proof("gw1", index, end)
                merkle.verify_inclusion(merkle.leaf_hash(leaf), index, end, proof, root)
    store.close()
    reopened.close()


def test_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "a.db", log_id="gw1")
    store.commit(entries([1, 2]))  # two leaves: one node
    store.close()
    con = sqlite3.connect(tmp_path / "a.db")
    for sql in ("UPDATE records SET decision='x'", "DELETE FROM records", "DELETE FROM nodes"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(sql)
    con.close()


def test_a_header_is_decided_once_across_stores_of_one_file(tmp_path: Path) -> None:
    a = AuditStore(tmp_path / "a.db", log_id="gw1")
    b = AuditStore(tmp_path / "a.db", log_id="gw2")
    first = a.commit([Entry(record(1), decides=("env1", "h1"))])[0]
    second = b.commit([Entry(record(8, decision=REFUSED), decides=("env1", "h1")), *entries([2])])
    assert first.new and not second[0].new and second[0].decision == first.decision
    assert second[1].new and second[1].leaf_index == 0  # gw2's own log starts at 0
    assert a.size("gw1") == 1 and a.size("gw2") == 1
    a.close()
    b.close()


def test_another_header_under_a_decided_id_records_what_on_conflict_says(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "a.db", log_id="gw1")
    store.commit([Entry(record(1), decides=("env1", "h1"))])
    with pytest.raises(ValueError, match="no resolver"):
        store.commit([Entry(record(2), decides=("env1", "h2"))])
    [o] = store.commit([Entry(record(3), decides=("env1", "h2"))], resolver=RESOLVE)
    assert (o.new, o.decision, o.rule_id) == (True, REFUSED, "invariant:id-reuse")
    assert store.decision("env1", "h2").rule_id == "invariant:id-reuse"  # decided: refused
    assert store.decision("env1", "h1").decision == ACCEPTED  # the first one stands
    again = store.commit([Entry(record(4), decides=("env1", "h2"))], resolver=RESOLVE)
    assert not again[0].new and store.size() == 2
    store.close()


# --- verify: the clean log and every tampering -------------------------------------------------


def test_verify_accepts_the_untouched_log(log, capsys) -> None:
    code, out = verify(*log, capsys)
    assert code == 0, out
    assert "40 leaves recomputed" in out and "3 signed checkpoint(s)" in out


@pytest.mark.parametrize(
    ("name", "statements", "where"),
    [
        (
            "modified column",
            ("UPDATE records SET decision='accepted', rule_id='x' WHERE leaf_index=14",),
            "leaf 14: stored decision differs",
        ),
        (
            "modified leaf bytes",
            ("UPDATE records SET leaf=CAST(leaf || X'00' AS BLOB) WHERE leaf_index=17",),
            "leaf 17",
        ),
        ("deleted leaf", ("DELETE FROM records WHERE leaf_index=12",), "leaf 12 is missing"),
        (
            "inserted leaf",
            (
                "UPDATE records SET leaf_index=leaf_index+1000 WHERE leaf_index>=20",
                "UPDATE records SET leaf_index=leaf_index-999 WHERE leaf_index>=1000",
                f"INSERT INTO records (log_id, leaf_index, {FIELDS}, leaf, leaf_hash)"
                f" SELECT log_id, 20, {FIELDS}, leaf, leaf_hash FROM records WHERE leaf_index=3",
            ),
            "leaf 20 holds the record of sequence 3",
        ),
        (
            "two leaves swapped",
            (
                "UPDATE records SET leaf_index=-1 WHERE leaf_index=30",
                "UPDATE records SET leaf_index=30 WHERE leaf_index=31",
                "UPDATE records SET leaf_index=31 WHERE leaf_index=-1",
            ),
            "leaf 30 holds the record of sequence 31",
        ),
        (
            "truncated",
            ("DELETE FROM records WHERE leaf_index>=30",),
            "the store holds 30 leaves but checkpoint",
        ),
    ],
)
def test_verify_names_each_tampering(log, capsys, name, statements, where) -> None:
    db, witness = log
    tamper(db, *statements)
    code, out = verify(db, witness, capsys)
    assert code == 3, (name, out)
    assert where in out, (name, out)


def test_a_consistent_rewrite_is_caught_by_the_witnessed_roots(env, log, capsys) -> None:
    """The operator rewrites a leaf and every hash after it: only the checkpoints show it."""
    db, witness = log
    store = AuditStore(db, log_id="gw1")
    leaves = [store.leaf("gw1", i) for i in range(40)]
    store.close()
    forged = record(22, decision=REFUSED)
    leaves[22] = forged.leaf(22)
    tamper(
        db,
        "DELETE FROM nodes",
        "UPDATE records SET decision=?, rule_id=?, leaf=?, leaf_hash=? WHERE leaf_index=22",
        params=(forged.decision, forged.rule_id, leaves[22], merkle.leaf_hash(leaves[22])),
    )
    rebuilt = merkle.CompactRange()
    con = sqlite3.connect(db)
    for leaf in leaves:
        for level, idx, h in rebuilt.append(merkle.leaf_hash(leaf)):
            if level:
                con.execute("INSERT INTO nodes VALUES ('gw1',?,?,?)", (level, idx, h))
    con.commit()
    con.close()
    code, out = verify(db, witness, capsys)
    assert code == 3
    assert "root at size 25 differs" in out and "between 10 and 24" in out


def test_a_forged_checkpoint_signature_is_refused(log, capsys) -> None:
    db, witness = log
    path = sorted(witness.rglob("*.checkpoint.json"))[0]
    doc = json.loads(path.read_text())
    doc["checkpoint"] = doc["checkpoint"].replace("\n10\n", "\n11\n", 1)
    path.write_text(json.dumps(doc))
    code, out = verify(db, witness, capsys)
    assert code == 3 and "bad signature on checkpoint" in out


def test_a_checkpoint_from_another_log_is_refused(env, log, tmp_path, capsys) -> None:
    db, witness = log
    other = tmp_path / "other"
    other.mkdir()
    other_store = AuditStore(other / "audit.db", log_id="gw9")
    other_store.commit(entries(range(5)))
    message = checkpointer(env, other_store, OTHER_GATEWAY).sign(NOW)
    other_store.close()
    (witness / "stray.checkpoint.json").write_bytes(message)
    code, out = verify(db, witness, capsys)
    assert code == 3 and "which this store does not hold" in out


def test_verify_does_not_say_ok_without_any_witnessed_checkpoint(log, tmp_path, capsys, env):
    db, _ = log
    empty = tmp_path / "empty"
    Witness(empty, env.ca_cert)
    code, out = verify(db, empty, capsys)
    assert code == 4, out
    assert "UNWITNESSED: log 'gw1': leaves 0..39" in out
    assert "no witnessed checkpoint at all" in out and "OK" not in out


def test_verify_reports_leaves_after_the_last_witnessed_checkpoint(log, capsys) -> None:
    db, witness = log
    store = AuditStore(db, log_id="gw1")
    store.commit(entries(range(40, 43)))  # appended after the last checkpoint
    store.close()
    code, out = verify(db, witness, capsys)
    assert code == 4, out
    assert "UNWITNESSED: log 'gw1': leaves 40..42 are not covered" in out
    assert "OK" not in out


# --- the gateway's own guard -------------------------------------------------------------------


def test_gateway_refuses_a_store_that_no_longer_matches(env, log) -> None:
    db, _ = log
    store = AuditStore(db, log_id="gw1")
    assert checkpointer(env, store).check_on_start().size == 40
    store.close()
    tamper(db, "UPDATE records SET reason='edited' WHERE leaf_index=3")
    store = AuditStore(db, log_id="gw1")
    with pytest.raises(CipherpostError, match="no longer matches checkpoint"):
        checkpointer(env, store).check_on_start()
    store.close()


def test_gateway_refuses_a_rolled_back_store(env, tmp_path) -> None:
    db, _, _ = build_log(env, tmp_path, sizes=(10,))
    old = tmp_path / "old.db"
    store = AuditStore(db, log_id="gw1")
    store.copy_to(old)
    cp = checkpointer(env, store)
    cp.check_on_start()
    store.commit(entries(range(10, 20)))
    assert cp.sign(NOW + dt.timedelta(hours=1)) is not None
    store.close()
    shutil.copy(old, db)  # the operator restores last week's copy; the state file says 20
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = AuditStore(db, log_id="gw1")
    with pytest.raises(CipherpostError, match="holds 10 leaves .* truncated or rolled back"):
        checkpointer(env, store).check_on_start()
    store.close()


# --- the witness -------------------------------------------------------------------------------


def test_witness_accepts_growth_and_alarms_on_rollback_and_fork(env, tmp_path) -> None:
    db, _, messages = build_log(env, tmp_path / "a", sizes=(10, 20))
    w = Witness(tmp_path / "w", env.ca_cert)
    for m in messages:
        assert w.observe(m)[1]
    assert not w.observe(messages[1])[1]  # the same checkpoint again: fine, not new
    # A restart on the copy taken at size 10, then other leaves: the same sizes, other roots.
    _, _, forked = build_log(env, tmp_path / "b", sizes=(10, 15, 30))
    with pytest.raises(WitnessAlarm, match="rollback or truncation"):
        w.observe(forked[1])  # size 15 < 20, no proof it is a prefix
    with pytest.raises(WitnessAlarm, match=r"^no consistency proof from .* size 20 .* size 30 "):
        w.observe(forked[2])  # size 30, its proof from 20 is of another tree
    # The alarm survives a restart of the witness: what it holds is on disk.
    again = Witness(tmp_path / "w")
    assert [
        c.size
        for c in again.held(parse_checkpoint(json.loads(messages[0])["checkpoint"].encode()).origin)
    ] == [10, 20]


def test_witness_alarms_on_a_forged_signature(env, tmp_path) -> None:
    _, _, messages = build_log(env, tmp_path / "a", sizes=(10,))
    doc = json.loads(messages[0])
    doc["checkpoint"] = doc["checkpoint"].replace("time ", "time 1", 1)
    with pytest.raises(WitnessAlarm, match="bad signature"):
        Witness(tmp_path / "w", env.ca_cert).observe(json.dumps(doc).encode())


def test_checkpoint_note_is_a_c2sp_signed_note(env, tmp_path) -> None:
    _, _, messages = build_log(env, tmp_path, sizes=(3,))
    note = json.loads(messages[0])["checkpoint"]
    lines = note.split("\n")
    assert lines[0] == f"cipherpost.audit/{GATEWAY}/gw1" and lines[1] == "3"
    assert lines[4] == "" and lines[5].startswith("\u2014 cipherpost.audit/")
    cert = load_audit_certificate(
        env.audit_dirs[GATEWAY] / "audit.crt", ca.load_ca_certificate(env.ca_cert)
    )
    assert verify_checkpoint(note.encode(), cert).size == 3
    other = load_audit_certificate(
        env.audit_dirs[OTHER_GATEWAY] / "audit.crt", ca.load_ca_certificate(env.ca_cert)
    )
    with pytest.raises(Refused):
        verify_checkpoint(note.encode(), other)


# --- prove, check-proof, query, export ---------------------------------------------------------


def test_prove_and_check_proof_offline(log, tmp_path, env, capsys) -> None:
    db, witness = log
    cp_file = sorted(witness.rglob("*.checkpoint.json"))[-1]
    proof = tmp_path / "proof.json"
    eid = f"{23:032x}"
    ca_args = ("--checkpoint", cp_file, "--ca", env.ca_cert)
    assert cli("audit", "prove", eid, "--db", db, *ca_args, "--out", proof) == 0
    assert cli("audit", "check-proof", proof, *ca_args) == 0
    assert f"envelope {eid}" in capsys.readouterr().out
    doc = json.loads(proof.read_text())
    doc["proof"][0] = doc["proof"][1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert cli("audit", "check-proof", bad, *ca_args) == 3
    assert "does not verify" in capsys.readouterr().err
    older = sorted(witness.rglob("*.checkpoint.json"))[0]  # size 10: another tree size
    assert cli("audit", "check-proof", proof, "--checkpoint", older, "--ca", env.ca_cert) == 3


def test_query_filters(log, capsys) -> None:
    db, _ = log
    assert (
        cli("audit", "query", "--db", db, "--agency", "*.H42", "--level", "toi-mat", "--json") == 0
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows
    assert all(r["level"] == "toi-mat" and "000.00.00.H42" in r["recipients"] for r in rows)
    assert cli("audit", "query", "--db", db, "--decision", "refused", "--csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("seq,log_id")
    assert len(lines) - 1 == sum(1 for i in range(40) if i % 7 == 0)
    assert cli("audit", "query", "--db", db, "--since", "not-a-time") == 2


def test_export_verifies_offline_and_catches_tampering(log, tmp_path, env, capsys) -> None:
    db, witness = log
    out = tmp_path / "export.cpa"
    export = ("audit", "export", "--db", db, "--checkpoints", witness, "--out", out)
    assert cli(*export) == 0
    assert cli("audit", "verify", "--export", out, "--ca", env.ca_cert) == 0
    assert cli(*export) == 1  # never overwrites
    tamper(out, "DELETE FROM records WHERE leaf_index=39")
    capsys.readouterr()
    assert cli("audit", "verify", "--export", out, "--ca", env.ca_cert) == 3
    assert "truncated" in capsys.readouterr().err


def test_store_level_report_for_a_clean_multi_log_store(env, tmp_path) -> None:
    db, witness, _ = build_log(env, tmp_path, sizes=(5,))
    store = AuditStore(db, log_id="gw2")
    store.commit(entries(range(100, 104)))
    report = verify_store(store, [])
    store.close()
    assert report.ok and report.logs == {"gw1": 5, "gw2": 4}


def test_query_until_a_date_takes_that_whole_day_in(log, capsys) -> None:
    db, _ = log
    # The records of the log fixture are at NOW + i seconds: all on 2026-11-28.
    assert cli("audit", "query", "--db", db, "--until", "2026-11-28", "--json") == 0
    inclusive = capsys.readouterr().out.splitlines()
    assert len(inclusive) == 40
    assert cli("audit", "query", "--db", db, "--until", "2026-11-28T08:00:10", "--json") == 0
    assert len(capsys.readouterr().out.splitlines()) == 10  # a time stays exclusive
    assert cli("audit", "query", "--db", db, "--since", "2026-11-29", "--json") == 0
    assert capsys.readouterr().out == ""


# --- prove / check_proof, each refusal by its exact message ----------------------------------


def _checkpoint(env: Env, witness: Path, n: int = -1):
    from gateway.checkpoint import read_checkpoint_file

    path = sorted(witness.rglob("*.checkpoint.json"), key=lambda p: p.stat().st_mtime_ns)[n]
    return read_checkpoint_file(path.read_bytes(), ca.load_ca_certificate(env.ca_cert))


def test_a_proof_from_the_stores_own_checkpoints_names_the_smallest_covering_one(log) -> None:
    from gateway.auditlog import PROOF_MAGIC, prove

    db, _ = log
    store = AuditStore(db, readonly=True)
    try:
        proof = prove(store, f"{12:032x}", None)  # checkpoints at 10, 25, 40: 25 covers leaf 12
        assert proof["format"] == PROOF_MAGIC and proof["envelope_id"] == f"{12:032x}"
        assert (proof["log_id"], proof["leaf_index"], proof["tree_size"]) == ("gw1", 12, 25)
        assert parse_checkpoint(proof["checkpoint"].encode()).size == 25
        assert "audit_certificate" not in proof  # the store's notes carry no certificate
        assert len(proof["proof"]) == len(store.inclusion_proof("gw1", 12, 25))
        edge = prove(store, f"{9:032x}", None)  # leaf 9 is the last one the first covers
        assert edge["tree_size"] == 10
    finally:
        store.close()


def test_a_proof_against_a_checkpoint_file_carries_its_certificate(log, env) -> None:
    from gateway.auditlog import check_proof, prove

    db, witness = log
    cp = _checkpoint(env, witness)
    store = AuditStore(db, readonly=True)
    try:
        proof = prove(store, f"{39:032x}", cp)
    finally:
        store.close()
    assert proof["audit_certificate"] == cp.certificate_pem.decode()
    assert proof["checkpoint"] == cp.checkpoint.note.decode() and proof["tree_size"] == 40
    fields = check_proof(proof, cp)
    assert fields["envelope_id"] == f"{39:032x}" and fields["leaf_index"] == 39


def test_prove_refuses_what_it_cannot_prove(env, tmp_path) -> None:
    from gateway.auditlog import prove

    db, witness, _ = build_log(env, tmp_path, sizes=(10,))
    store = AuditStore(db, log_id="gw1")
    store.commit(entries(range(10, 12)))  # leaves 10 and 11: in no checkpoint yet
    cp = _checkpoint(env, witness)
    try:
        with pytest.raises(CipherpostError) as e:
            prove(store, "f" * 32, None)
        assert str(e.value) == f"no audit record of envelope {'f' * 32} in {db}"
        with pytest.raises(CipherpostError) as e:
            prove(store, f"{10:032x}", None)
        assert str(e.value) == (
            "leaf 10 of log 'gw1' is not in a signed checkpoint yet; try again later"
        )
        with pytest.raises(CipherpostError) as e:
            prove(store, f"{10:032x}", cp)  # the checkpoint's size is 10: leaf 10 is beyond it
        assert str(e.value) == f"checkpoint {cp.checkpoint.describe()} does not cover leaf 10 yet"
    finally:
        store.close()


def test_prove_with_a_checkpoint_takes_the_record_in_that_checkpoints_log(env, tmp_path) -> None:
    from gateway.auditlog import prove

    earlier = AuditStore(tmp_path / "audit.db", log_id="gw0")  # an earlier log of this store
    earlier.commit([Entry(record(3))])  # holds a record of the same envelope, first in order
    earlier.close()
    db, witness, _ = build_log(env, tmp_path, sizes=(10,))
    store = AuditStore(db, readonly=True)
    try:
        assert store.find(f"{3:032x}") == [("gw0", 0), ("gw1", 3)]
        proof = prove(store, f"{3:032x}", _checkpoint(env, witness))
        assert (proof["log_id"], proof["leaf_index"]) == ("gw1", 3)
    finally:
        store.close()


def test_check_proof_refuses_each_mismatch_by_name(log, env) -> None:
    from gateway.auditlog import check_proof, prove

    db, witness = log
    cp = _checkpoint(env, witness)
    store = AuditStore(db, readonly=True)
    try:
        good = prove(store, f"{21:032x}", cp)
    finally:
        store.close()
    described = cp.checkpoint.describe()

    def refused(**changes: object) -> str:
        doc = {**good, **changes}
        with pytest.raises(Refused) as e:
            check_proof({k: v for k, v in doc.items() if v is not None}, cp)
        return str(e.value)

    assert refused(format="x") == "malformed proof: not a cipherpost inclusion proof"
    # Standard base64 only: characters outside its alphabet are refused, not skipped.
    assert refused(leaf="!" + good["leaf"]).startswith("malformed proof: ")
    assert refused(proof=["!" + good["proof"][0], *good["proof"][1:]]).startswith(
        "malformed proof: "
    )
    assert refused(log_id="gw9") == "proof is for log 'gw9', checkpoint for 'gw1'"
    assert refused(tree_size=25) == f"proof is for tree size 25, checkpoint is {described}"
    assert refused(envelope_id="e" * 32) == "proof names another envelope than its leaf"
    assert refused(leaf_index=20).startswith(
        f"inclusion proof does not verify against {described}: "
    )
    # A leaf that is in the tree but is not an audit record, and one that claims another index:
    # both need a tree the proof verifies against, so they are built below.
    assert check_proof({**good, "envelope_id": None} | {"envelope_id": f"{21:032x}"}, cp)


def test_check_proof_refuses_a_proven_leaf_that_is_not_a_record_or_sits_elsewhere(env) -> None:
    """A gateway's key signs what its store holds: a forged store's leaves are proven, then read."""
    import base64

    from gateway.auditlog import PROOF_MAGIC, check_proof
    from gateway.checkpoint import VerifiedFile, sign_checkpoint

    folder = env.audit_dirs[GATEWAY]
    cert = load_audit_certificate(folder / "audit.crt", ca.load_ca_certificate(env.ca_cert))
    r = record(0)
    leaves = [r.leaf(5), b"\x93\x01\x02\x03"]  # claims index 5 at 0; not a record
    hashes = [merkle.leaf_hash(x) for x in leaves]
    note = sign_checkpoint(
        load_audit_key(folder, PASSPHRASE),
        AgencyCode.parse(GATEWAY),
        "gw1",
        2,
        merkle.root_from_leaf_hashes(hashes),
        NOW,
    )
    cp = VerifiedFile(verify_checkpoint(note, cert), cert, b"")

    def proof(index: int) -> dict[str, object]:
        return {
            "format": PROOF_MAGIC,
            "log_id": "gw1",
            "leaf_index": index,
            "tree_size": 2,
            "leaf": base64.b64encode(leaves[index]).decode(),
            "proof": [base64.b64encode(hashes[1 - index]).decode()],
        }

    with pytest.raises(Refused) as e:
        check_proof(proof(0), cp)
    assert str(e.value) == "leaf claims sequence 5 but sits at 0"
    with pytest.raises(Refused) as e:
        check_proof(proof(1), cp)
    assert str(e.value) == ("proven leaf is not an audit record: leaf is not a v1 or v2 audit leaf")


def test_the_state_note_is_the_last_checkpoint_signed_for_that_log(env, tmp_path) -> None:
    store = AuditStore(tmp_path / "a.db", log_id="gw1")
    state = tmp_path / "state"
    cp = checkpointer(env, store, state=state)
    assert Checkpointer.read_state_note(state, "gw1") is None  # nothing signed yet
    store.commit(entries(range(3)))
    assert cp.sign(NOW) is not None
    note = Checkpointer.read_state_note(state, "gw1")
    store.close()
    assert note == (state / "checkpoint-gw1.txt").read_bytes()
    assert note is not None and parse_checkpoint(note).size == 3
    assert Checkpointer.read_state_note(state, "gw2") is None


def test_verify_json_says_complete_only_when_every_leaf_is_witnessed(log, env, capsys) -> None:
    db, witness = log  # checkpoints at 10, 25, 40, all cosigned by the witness: complete
    args = ("audit", "verify", "--db", db, "--checkpoints", witness, "--json")
    assert cli(*args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "ok": True,
        "complete": True,
        "logs": {"gw1": 40},
        "witnessed": {"gw1": 40},
        "unwitnessed": [],
        "ended": {},
        "checkpoints_checked": 3,
        "problems": [],
    }
    store = AuditStore(db, log_id="gw1")
    store.commit(entries(range(40, 42)))  # two leaves beyond the last witnessed checkpoint
    store.close()
    assert cli(*args) == 4
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["complete"], doc["logs"], doc["witnessed"]) == (
        True, False, {"gw1": 42}, {"gw1": 40}
    )  # fmt: skip
    assert doc["unwitnessed"] == [
        "log 'gw1': leaves 40..41 are not covered by any witnessed checkpoint"
    ]
    bare = AuditStore(db.parent / "bare.db", log_id="gw1")  # leaves and no checkpoint at all
    bare.commit(entries(range(3)))
    assert verify_store(bare, []).tails() == [
        "log 'gw1': leaves 0..2 are not covered by any witnessed checkpoint"
        " (the log has no witnessed checkpoint at all)"
    ]
    bare.close()
    tamper(db, "UPDATE records SET sender='000.00.00.H42' WHERE leaf_index=3")
    assert cli(*args) == 3
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["complete"]) == (False, False) and len(doc["problems"]) >= 1


# --- verify_store directly: the exact problems, the witnessed sizes, filters and endings --------


def gateway_cert(env: Env, code: str = GATEWAY):
    return load_audit_certificate(
        env.audit_dirs[code] / "audit.crt", ca.load_ca_certificate(env.ca_cert)
    )


def store_report(db: Path, env: Env, **kw):
    cert = gateway_cert(env)
    store = AuditStore(db, readonly=True)
    try:
        cps = kw.pop("checkpoints", None)
        if cps is None:
            cps = [(verify_checkpoint(n, cert), cert) for n in store.checkpoints()]
        return verify_store(store, cps, **kw), cps
    finally:
        store.close()


def test_verify_store_lists_exactly_the_first_bad_leaf_and_every_root_it_breaks(log, env) -> None:
    db, _ = log
    for i in (5, 8):  # each leaf rewritten as a well-formed record; its stored hash kept
        forged = record(i, decision=REFUSED).leaf(i)
        tamper(db, "UPDATE records SET leaf=? WHERE leaf_index=?", params=(forged, i))
    report, cps = store_report(db, env)
    described = {cp.size: cp.describe() for cp, _ in cps}
    assert report.problems == [
        "log 'gw1': leaf 5: its bytes do not match its stored hash (modified)",
        *(
            f"log 'gw1': root at size {size} differs from checkpoint {described[size]}: a leaf"
            f" between 0 and {size - 1} was modified, inserted, deleted or reordered"
            for size in (10, 25, 40)
        ),
    ]
    assert report.witnessed == {} and report.logs == {"gw1": 40}


def test_verify_store_names_a_deleted_leaf_and_a_tampered_time(log, env) -> None:
    db, _ = log
    tamper(db, "DELETE FROM records WHERE leaf_index=12")
    report, _ = store_report(db, env)
    assert report.problems[0] == "log 'gw1': leaf 12 is missing (next stored is 13): deleted"
    fresh, _, _ = build_log(env, db.parent / "fresh")
    tamper(fresh, "UPDATE records SET time='2026-11-28T09:00:00+00:00' WHERE leaf_index=3")
    report, _ = store_report(fresh, env)
    assert report.problems == [
        "log 'gw1': leaf 3: stored time_ms differs from the signed-over leaf bytes"
    ]


def test_verify_store_counts_as_witnessed_only_what_the_witness_cosigned(log, env) -> None:
    db, _ = log
    report, _ = store_report(db, env, cosigned=[])
    assert report.ok and report.witnessed == {} and report.checkpoints == 3
    report, _ = store_report(db, env, cosigned=[("gw1", 10), ("gw2", 40)])
    assert report.witnessed == {"gw1": 10}
    report, _ = store_report(db, env)  # no witness information: every good checkpoint counts
    assert report.witnessed == {"gw1": 40}


def test_verify_store_names_a_checkpoint_under_another_gateways_certificate_and_goes_on(
    log, env
) -> None:
    db, _ = log
    _, cps = store_report(db, env)
    other = gateway_cert(env, OTHER_GATEWAY)
    wrong = [(cps[0][0], other), *cps[1:]]
    report, _ = store_report(db, env, checkpoints=wrong)
    assert report.problems == [
        f"checkpoint {cps[0][0].describe()} with another gateway's certificate"
    ]
    assert report.checkpoints == 2 and report.witnessed == {"gw1": 40}


def test_verify_store_names_the_largest_checkpoint_of_a_log_it_does_not_hold(env, tmp_path) -> None:
    other = AuditStore(tmp_path / "other.db", log_id="gw9")
    cp = checkpointer(env, other)
    other.commit(entries(range(2)))
    cp.sign(NOW)
    other.commit(entries(range(2, 5)))
    cp.sign(NOW + dt.timedelta(minutes=1))
    cert = gateway_cert(env)
    gw9 = [(verify_checkpoint(n, cert), cert) for n in other.checkpoints()]
    other.close()
    db, _, _ = build_log(env, tmp_path, sizes=(10,))
    largest = max(gw9, key=lambda c: c[0].size)[0]
    report, _ = store_report(db, env, checkpoints=gw9)
    assert report.problems == [
        f"checkpoint {largest.describe()} is of log 'gw9', which this store does not hold "
        "(a checkpoint from another log, or the whole log was deleted)"
    ]
    report, _ = store_report(db, env, checkpoints=gw9, logs=["gw1"])
    assert report.problems == [] and report.logs == {"gw1": 10}


def test_verify_store_checks_only_the_logs_asked_for(env, tmp_path) -> None:
    db, _, _ = build_log(env, tmp_path, sizes=(10,))
    store = AuditStore(db, log_id="gw2")
    store.commit(entries(range(100, 103)))
    store.close()
    tamper(db, "UPDATE records SET reason='x' WHERE log_id='gw1' AND leaf_index=4")
    report, _ = store_report(db, env)
    assert report.problems == [
        "log 'gw1': leaf 4: stored reason differs from the signed-over leaf bytes"
    ]
    report, _ = store_report(db, env, logs=["gw2"])
    assert report.problems == [] and report.logs == {"gw2": 3}


def test_checkpoints_signed_at_the_same_time_are_in_order_and_an_older_larger_one_is_not(
    env, tmp_path
) -> None:
    store = AuditStore(tmp_path / "a.db", log_id="gw1")
    cp = checkpointer(env, store)
    store.commit(entries(range(3)))
    cp.sign(NOW)
    store.commit(entries(range(3, 6)))
    cp.sign(NOW)  # the same millisecond: not out of order
    store.commit(entries(range(6, 9)))
    cp.sign(NOW - dt.timedelta(minutes=1))  # larger, yet older than the one before
    store.close()
    report, cps = store_report(tmp_path / "a.db", env)
    by_size = {c.size: c for c, _ in cps}
    assert report.problems == [
        f"log 'gw1': checkpoint {by_size[9].describe()} is older than the smaller "
        f"{by_size[6].describe()}"
    ]


def test_an_ended_log_counts_as_witnessed_to_its_end_and_no_further(log, env) -> None:
    from gateway.ending import read_ending, sign_ending

    db, _ = log
    authority = ca.open_ca(env.root / "ca", PASSPHRASE)
    report, cps = store_report(db, env)
    last = max((c for c, _ in cps), key=lambda c: c.size)  # size 40: the whole log
    end = read_ending(sign_ending(authority, last, "gw2", "disk lost", NOW), authority.certificate)
    report, _ = store_report(db, env, endings=[end], cosigned=[])
    assert report.ok and report.witnessed == {"gw1": 40} and report.ended == {"gw1": end.describe()}
    store = AuditStore(db, log_id="gw1")
    store.commit(entries(range(40, 41)))  # a leaf written after the log's documented end
    store.close()
    report, _ = store_report(db, env, endings=[end], cosigned=[])
    assert report.problems == [
        f"log 'gw1': 41 leaves, but it {end.describe()}: leaves were written after its end"
    ]
    assert report.witnessed == {"gw1": 40}
    empty = AuditStore(db.parent / "empty.db", log_id="gw2")
    try:
        report = verify_store(empty, cps, endings=[end])  # the ended log is not held at all
    finally:
        empty.close()
    assert report.ok and report.ended == {"gw1": end.describe()} and report.logs == {}


def test_a_checkpoint_is_due_after_enough_leaves_or_enough_time(env, tmp_path) -> None:
    store = AuditStore(tmp_path / "a.db", log_id="gw1")
    cp = checkpointer(env, store)  # every 10 leaves or 3600 s
    assert not cp.due(NOW)  # nothing to sign
    store.commit(entries(range(1)))
    assert cp.due(NOW)  # no checkpoint yet: the first leaf is overdue
    cp.sign(NOW)
    assert not cp.due(NOW + dt.timedelta(hours=2))  # nothing new since
    store.commit(entries(range(1, 10)))
    assert not cp.due(NOW + dt.timedelta(seconds=3599))  # 9 new leaves, 3599 s
    assert cp.due(NOW + dt.timedelta(seconds=3600))
    store.commit(entries(range(10, 11)))
    assert cp.due(NOW)  # 10 new leaves
    store.close()


def test_verify_store_names_a_truncated_log_by_the_checkpoint_it_contradicts(log, env) -> None:
    db, _ = log
    tamper(db, "DELETE FROM records WHERE leaf_index>=30")
    report, cps = store_report(db, env)
    forty = next(cp for cp, _ in cps if cp.size == 40)
    assert (
        f"log 'gw1': the store holds 30 leaves but checkpoint {forty.describe()} was signed:"
        " truncated or rolled back"
    ) in report.problems


def test_an_ended_log_does_not_hide_a_deleted_one(env, tmp_path) -> None:
    from gateway.ending import read_ending, sign_ending

    authority = ca.open_ca(env.root / "ca", PASSPHRASE)
    cert = gateway_cert(env)
    gone: list = []
    for log_id in ("gw0", "gw9"):  # two logs this store will not hold
        other = AuditStore(tmp_path / f"{log_id}.db", log_id=log_id)
        other.commit(entries(range(3)))
        checkpointer(env, other).sign(NOW)
        gone += [(verify_checkpoint(n, cert), cert) for n in other.checkpoints()]
        other.close()
    end = read_ending(
        sign_ending(authority, gone[0][0], "gw1", "disk lost", NOW), authority.certificate
    )
    db, _, _ = build_log(env, tmp_path, sizes=(10,))
    report, _ = store_report(db, env, checkpoints=gone, endings=[end])
    assert report.ended == {"gw0": end.describe()}
    assert report.problems == [
        f"checkpoint {gone[1][0].describe()} is of log 'gw9', which this store does not hold "
        "(a checkpoint from another log, or the whole log was deleted)"
    ]


def test_prove_uses_only_the_checkpoints_of_the_records_own_log(env, tmp_path) -> None:
    from gateway.auditlog import prove

    earlier = AuditStore(tmp_path / "audit.db", log_id="gw0")
    earlier.commit(entries(range(100, 110)))
    checkpointer(env, earlier).sign(NOW)  # gw0 has a checkpoint of size 10
    earlier.close()
    store = AuditStore(tmp_path / "audit.db", log_id="gw1")
    store.commit(entries(range(3)))  # gw1 has none yet
    try:
        with pytest.raises(CipherpostError) as e:
            prove(store, f"{2:032x}", None)
    finally:
        store.close()
    assert str(e.value) == "leaf 2 of log 'gw1' is not in a signed checkpoint yet; try again later"


# --- the gateway's rollback guard (Checkpointer) --------------------------------------------


def test_a_checkpointer_signs_nothing_for_an_empty_log_and_makes_its_state_folder(
    env, tmp_path
) -> None:
    store = AuditStore(tmp_path / "a.db", log_id="gw1")
    state = tmp_path / "deep" / "er" / "state"  # none of it exists yet
    cp = checkpointer(env, store, state=state)
    assert cp.sign(NOW) is None and store.checkpoints() == []
    store.commit(entries(range(2)))
    assert cp.sign(NOW) is not None
    assert (state / "checkpoint-gw1.txt").is_file()
    store.close()


def test_on_start_the_last_checkpoint_is_remembered_and_other_logs_are_not_its_business(
    env, tmp_path
) -> None:
    db = tmp_path / "audit.db"
    other = AuditStore(db, log_id="gw0")  # an earlier log, signed under another gateway's key
    other.commit(entries(range(100, 103)))
    checkpointer(env, other, OTHER_GATEWAY, state=tmp_path / "other-state").sign(NOW)
    other.close()
    tamper(db, "UPDATE records SET reason='x' WHERE log_id='gw0' AND leaf_index=1")
    store = AuditStore(db, log_id="gw1")
    store.commit(entries(range(5)))
    checkpointer(env, store, state=tmp_path / "state").sign(NOW)
    again = checkpointer(env, store, state=tmp_path / "state")  # a restart
    last = again.check_on_start()
    assert last is not None and last.size == 5 and again.last == last
    assert not again.due(NOW + dt.timedelta(hours=2))  # nothing new since the last one
    store.close()


def test_on_start_a_truncated_store_is_refused_by_name(env, tmp_path) -> None:
    db = tmp_path / "audit.db"
    store = AuditStore(db, log_id="gw1")
    store.commit(entries(range(5)))
    signed = checkpointer(env, store, state=tmp_path / "state")
    signed.sign(NOW)
    last = signed.last
    store.close()
    tamper(db, "DELETE FROM records WHERE leaf_index>=3")
    store = AuditStore(db, log_id="gw1")
    try:
        with pytest.raises(CipherpostError) as e:
            checkpointer(env, store, state=tmp_path / "state").check_on_start()
    finally:
        store.close()
    assert last is not None
    assert str(e.value) == (
        f"audit store {db} holds 3 leaves of log gw1 but checkpoint {last.describe()} was "
        "signed: the store was truncated or rolled back; refusing to run"
    )


def test_a_published_checkpoint_carries_consistency_proofs_from_its_own_logs_earlier_sizes(
    env, tmp_path
) -> None:
    import base64
    import stat

    db = tmp_path / "audit.db"
    other = AuditStore(db, log_id="gw0")  # another log of this store, checkpointed at size 3
    other.commit(entries(range(100, 103)))
    checkpointer(env, other, state=tmp_path / "state0").sign(NOW)
    other.close()
    store = AuditStore(db, log_id="gw1")
    state = tmp_path / "gw1-state"
    cp = checkpointer(env, store, state=state)
    messages = []
    for n, size in enumerate((10, 25, 40)):
        store.commit(entries(range(store.size(), size)))
        messages.append(cp.sign(NOW + dt.timedelta(minutes=n)))
    roots = {size: store.root(size=size)[1] for size in (10, 25, 40)}
    store.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700  # the rollback guard's folder is private
    docs = [json.loads(m) for m in messages]  # type: ignore[arg-type]
    assert [[c["old_size"] for c in d["consistency"]] for d in docs] == [[], [10], [10, 25]]
    for c in docs[2]["consistency"]:
        proof = [base64.b64decode(h) for h in c["proof"]]
        merkle.verify_consistency(c["old_size"], 40, proof, roots[c["old_size"]], roots[40])
