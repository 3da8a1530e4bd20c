"""The witness and checkpoints (docs/audit.md "The witness"): each alarm is raised by the
one inconsistency it names, and a checkpoint is refused for each way it can be wrong.

Logs here are in-memory RFC 6962 trees signed with a CA-certified audit key, so these
tests depend on nothing but ``gateway.merkle``, ``gateway.checkpoint`` and the witness."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import merkle
from gateway.checkpoint import (
    MAX_FILE_BYTES,
    MAX_NOTE_BYTES,
    checkpoint_file,
    key_hash,
    origin_for,
    parse_checkpoint,
    read_checkpoint_file,
    sign_checkpoint,
    verify_checkpoint,
)
from gateway.witness import Witness, WitnessAlarm
from keys import ca
from keys.auditkey import AuditKeyRequest, parse_audit_certificate
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused, UsageError
from keys.levels import Level
from tests.helpers import NOW, World, make_world

GATEWAY = "000.00.99.G99"
OTHER = "000.00.98.G98"


@dataclass
class AuditKey:
    code: AgencyCode
    key: Ed25519PrivateKey
    pem: bytes


def certify(world: World, code: str, days: int = 30) -> AuditKey:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    request = AuditKeyRequest(AgencyCode.parse(code), public, world.now)
    path = ca.issue_audit(world.authority, request, world.root / code, world.now, days)
    return AuditKey(request.code, key, path.read_bytes())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(
        tmp_path_factory.mktemp("witness"), {GATEWAY: Level.TUYET_MAT, OTHER: Level.TUYET_MAT}
    )


@pytest.fixture(scope="module")
def audit(world: World) -> AuditKey:
    return certify(world, GATEWAY)


@pytest.fixture
def witness(world: World, tmp_path: Path) -> Witness:
    return Witness(tmp_path / "witness", world.root / "ca" / "ca.crt")


class Log:
    """An RFC 6962 log in memory, signing checkpoints as a gateway publishes them."""

    def __init__(self, audit: AuditKey, tag: str, log_id: str = "gw1") -> None:
        self.audit, self.tag, self.log_id = audit, tag, log_id
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.range = merkle.CompactRange()
        self.signed: list[int] = []

    def grow(self, size: int) -> Log:
        while self.range.size < size:
            leaf = merkle.leaf_hash(f"{self.tag} {self.range.size}".encode())
            for level, index, h in self.range.append(leaf):
                self.nodes[(level, index)] = h
        return self

    def get(self, level: int, index: int) -> bytes:
        return self.nodes[(level, index)]

    def note(self, size: int | None = None, *, at: dt.datetime = NOW, key=None) -> bytes:
        size = self.range.size if size is None else size
        root = merkle.root_at(size, self.get)
        return sign_checkpoint(key or self.audit.key, self.audit.code, self.log_id, size, root, at)

    def message(
        self, proofs_from: tuple[int, ...] | None = None, note: bytes | None = None
    ) -> bytes:
        """The checkpoint at the current size, with proofs from the earlier signed sizes."""
        size = self.range.size
        olds = self.signed if proofs_from is None else proofs_from
        doc = json.loads(checkpoint_file(note or self.note(), self.audit.pem))
        doc["consistency"] = [
            {
                "old_size": s,
                "proof": [
                    base64.b64encode(h).decode()
                    for h in merkle.consistency_proof(s, size, self.get)
                ],
            }
            for s in olds
            if 0 < s < size
        ]
        self.signed.append(size)
        return json.dumps(doc).encode()


def alarm(witness: Witness, message: bytes) -> str:
    with pytest.raises(WitnessAlarm) as e:
        witness.observe(message)
    return str(e.value)


def described(message: bytes) -> str:
    """How alarms name the checkpoint that ``message`` carries."""
    return parse_checkpoint(json.loads(message)["checkpoint"].encode()).describe()


def held_sizes(witness: Witness, log: Log) -> list[int]:
    origin = f"cipherpost.audit/{log.audit.code.text}/{log.log_id}"
    return [c.size for c in witness.held(origin)]


def test_growth_with_proofs_is_accepted(witness, audit):
    log = Log(audit, "a")
    for size in (1, 5, 8, 13, 64):
        checkpoint, new = witness.observe(log.grow(size).message())
        assert new and checkpoint.size == size
    assert held_sizes(witness, log) == [1, 5, 8, 13, 64]
    assert witness.observe(log.message())[1] is False  # the same checkpoint again


def test_same_size_other_root_is_a_fork(witness, audit):
    honest, forked = Log(audit, "a").grow(10), Log(audit, "b").grow(10)
    witness.observe(honest.message())
    message = alarm(witness, forked.message())
    theirs = parse_checkpoint(forked.note()).describe()
    ours = parse_checkpoint(honest.note()).describe()
    assert re.fullmatch(r"fork: (.+) and (.+)", message)
    assert message == f"fork: {theirs} and {ours}"
    assert held_sizes(witness, honest) == [10]


def test_larger_without_a_proof_from_the_held_size(witness, audit):
    log = Log(audit, "a").grow(10)
    first = log.message()
    held_first = described(first)
    witness.observe(first)
    log.grow(20)
    for proofs in ((), (5,)):  # none at all, or one from a size the witness does not hold
        message = log.message(proofs_from=proofs)
        assert alarm(witness, message) == (
            f"no consistency proof from {held_first} to {described(message)}: "
            "the log was forked or rolled back"
        )
    assert held_sizes(witness, log) == [10]


def test_larger_that_does_not_extend_the_held_one(witness, audit):
    """Another history grown to a larger size: its own proof does not match our root."""
    honest, rewritten = Log(audit, "a").grow(10), Log(audit, "b").grow(10)
    witness.observe(honest.message())
    rewritten.signed = [10]
    message = alarm(witness, rewritten.grow(30).message())
    assert message.startswith("inconsistent: ") and " does not extend " in message
    assert held_sizes(witness, honest) == [10]


def test_a_proof_is_checked_not_just_present(witness, audit):
    log = Log(audit, "a").grow(10)
    witness.observe(log.message())
    doc = json.loads(log.grow(16).message())
    proof = doc["consistency"][0]["proof"]
    proof[0] = base64.b64encode(bytes(32)).decode()
    assert alarm(witness, json.dumps(doc).encode()).startswith("inconsistent: ")


def test_smaller_without_proof_is_a_rollback(witness, audit):
    log = Log(audit, "a").grow(20)
    witness.observe(log.message())
    older = Log(audit, "a").grow(12).message()  # the store restored from a copy at 12 leaves
    assert alarm(witness, older) == (
        f"rollback or truncation: {described(older)} after {described(log.message())}, "
        "with no proof that the smaller one is a prefix"
    )


def test_smaller_checkpoint_published_late_is_checked_against_a_later_proof(witness, audit):
    log = Log(audit, "a").grow(8)
    first = log.message()
    late = log.grow(12).message()
    last = log.grow(20).message()  # carries proofs from 8 and 12
    for message in (first, last):
        witness.observe(message)
    assert witness.observe(late) == (
        parse_checkpoint(json.loads(late)["checkpoint"].encode()),
        True,
    )
    assert held_sizes(witness, log) == [8, 12, 20]
    # A late checkpoint of size 12 from another history: the held proof refutes it.
    other = Log(audit, "b").grow(12).message()
    assert alarm(witness, other).startswith("inconsistent: ")


def test_a_late_checkpoint_is_checked_against_the_smallest_later_one(witness, audit):
    log = Log(audit, "a").grow(8)
    messages = [log.message()]
    late = log.grow(12).message()
    messages += [log.grow(20).message(), log.grow(30).message()]  # both prove 12 a prefix
    for message in messages:
        witness.observe(message)
    assert witness.observe(late)[1]
    assert held_sizes(witness, log) == [8, 12, 20, 30]


def test_a_first_checkpoint_needs_no_proof(witness, audit):
    doc = json.loads(Log(audit, "a").grow(5).message())
    del doc["consistency"]
    assert witness.observe(json.dumps(doc).encode())[1]
    assert witness.held("cipherpost.audit/000.00.77.G77/gw1") == []


def test_alarms_survive_a_restart(world, witness, audit, tmp_path):
    log = Log(audit, "a").grow(10)
    witness.observe(log.message())
    again = Witness(tmp_path / "witness")  # the pinned CA, the held checkpoints: from disk
    assert held_sizes(again, log) == [10]
    assert alarm(again, Log(audit, "b").grow(10).message()).startswith("fork: ")


def test_logs_are_held_apart(witness, audit):
    one, two = Log(audit, "a", "gw1").grow(10), Log(audit, "b", "gw2").grow(10)
    witness.observe(one.message())
    witness.observe(two.message())  # same size, other root, but another log: no fork
    assert held_sizes(witness, one) == [10] and held_sizes(witness, two) == [10]


# --- refused checkpoints ---------------------------------------------------------------------


def test_forged_signature(witness, audit):
    log = Log(audit, "a").grow(4)
    doc = json.loads(log.message())
    doc["checkpoint"] = doc["checkpoint"].replace("\n4\n", "\n5\n", 1)
    message = alarm(witness, json.dumps(doc).encode())
    assert message.startswith("checkpoint refused: bad signature on checkpoint ")


def test_signed_with_another_key_than_the_certified_one(witness, audit):
    log = Log(audit, "a").grow(4)
    note = log.note(key=Ed25519PrivateKey.generate())
    message = alarm(witness, log.message(note=note))
    assert message.startswith("checkpoint refused: checkpoint ")
    assert message.endswith("is not signed with this audit key")


def test_certificate_of_another_gateway(world, witness, audit):
    other = certify(world, OTHER)
    log = Log(audit, "a").grow(4)
    doc = json.loads(log.message())
    doc["audit_certificate"] = other.pem.decode()
    message = alarm(witness, json.dumps(doc).encode())
    assert message == (
        f"checkpoint refused: checkpoint of {GATEWAY} but audit certificate of {OTHER}"
    )


def test_certificate_from_another_ca(tmp_path, witness):
    stranger = make_world(tmp_path / "other", {GATEWAY: Level.TUYET_MAT})
    log = Log(certify(stranger, GATEWAY), "a").grow(4)
    message = alarm(witness, log.message())
    assert message == "checkpoint refused: certificate not issued by the trusted CA"


def test_an_agency_certificate_is_not_an_audit_certificate(world, witness, audit):
    log = Log(audit, "a").grow(4)
    doc = json.loads(log.message())
    doc["audit_certificate"] = (world.certs / f"{GATEWAY}.sign.crt").read_text()
    message = alarm(witness, json.dumps(doc).encode())
    assert message.endswith("is a sign certificate, not an audit one")


def test_signed_outside_the_certificate_validity(world, witness, audit):
    log = Log(audit, "a").grow(4)
    late = log.note(at=NOW + dt.timedelta(days=31))
    message = alarm(witness, log.message(note=late))
    assert message.endswith("signed outside the audit certificate's validity")


@pytest.mark.parametrize(
    ("consistency", "message"),
    [
        ("not a list", "consistency must be a list"),
        ([{"old_size": 2}], "malformed consistency proof"),
        ([{"old_size": 2, "proof": ["!!"]}], "malformed consistency proof"),
        ([{"old_size": "two", "proof": []}], "malformed consistency proof"),
    ],
)
def test_malformed_consistency_list(witness, audit, consistency, message):
    doc = json.loads(Log(audit, "a").grow(4).message())
    doc["consistency"] = consistency
    assert (
        alarm(witness, json.dumps(doc).encode())
        == f"checkpoint refused: checkpoint message: {message}"
    )


@pytest.mark.parametrize(
    "data",
    [b"", b"{}", b"[1]", b'{"checkpoint": 1, "audit_certificate": "x"}', b"\xff"],
)
def test_not_a_checkpoint_file(witness, data):
    message = alarm(witness, data)
    assert message == (
        "checkpoint refused: not a checkpoint file (expected JSON with checkpoint and certificate)"
    )


def test_checkpoint_file_too_large(world, audit):
    ca_cert = ca.load_ca_certificate(world.root / "ca" / "ca.crt")
    data = Log(audit, "a").grow(1).message()
    with pytest.raises(Refused, match="^checkpoint file too large$"):
        read_checkpoint_file(data + b" " * (MAX_FILE_BYTES + 1 - len(data)), ca_cert)
    read_checkpoint_file(data + b" " * (MAX_FILE_BYTES - len(data)), ca_cert)


# --- the note itself -------------------------------------------------------------------------


def good_note(audit: AuditKey) -> str:
    return Log(audit, "a").grow(7).note().decode()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda n: n.replace("\n\n", "\n", 1), "no signature block"),
        (
            lambda n: n.replace("cipherpost.audit/", "other.audit/", 1),
            "not a cipherpost audit origin",
        ),
        (lambda n: n.replace("/gw1\n", "\n", 1), "malformed origin"),
        (
            lambda n: n.replace("/gw1\n", "/\n", 1),
            "log id '' must be non-empty, without spaces or '/'",
        ),
        (
            lambda n: n.replace("/gw1\n", "/gw 1\n", 1),
            "log id 'gw 1' must be non-empty, without spaces or '/'",
        ),
        (lambda n: n.replace("\n7\n", "\n07\n", 1), "malformed tree size"),
        (lambda n: n.replace("\n7\n", "\n-7\n", 1), "malformed tree size"),
        (
            lambda n: n.replace("\n7\n", "\n\n", 1),
            r"not enough values to unpack \(expected 4, got 1\)",
        ),
        (lambda n: n.replace("\ntime ", "\nclock ", 1), "missing time extension line"),
        (lambda n: n.replace("\ntime ", "\ntime x", 1), "missing time extension line"),
        (
            lambda n: n.replace("\n\n", "\nextra\n\n", 1),
            r"too many values to unpack \(expected 4\)",
        ),
        (lambda n: n + "— second line\n", "expected exactly one signature line"),
        (lambda n: n.replace("— ", "- ", 1), "malformed signature line"),
        (
            lambda n: n.replace("— cipherpost", "— other", 1),
            "signature key name is not the log origin",
        ),
    ],
)
def test_malformed_note(audit, edit, message):
    with pytest.raises(Refused, match=f"^not a cipherpost checkpoint: ({message})$"):
        parse_checkpoint(edit(good_note(audit)).encode())


def test_root_and_signature_lengths(audit):
    note = good_note(audit)
    lines = note.split("\n")
    short_root = note.replace(lines[2], base64.b64encode(bytes(31)).decode(), 1)
    with pytest.raises(Refused, match="root hash is not 32 bytes$"):
        parse_checkpoint(short_root.encode())
    name, sig = lines[-2].rsplit(" ", 1)
    short_sig = note.replace(sig, base64.b64encode(base64.b64decode(sig)[:-1]).decode())
    with pytest.raises(Refused, match="signature is not key hash \\+ Ed25519$"):
        parse_checkpoint(short_sig.encode())


def test_note_too_large(audit):
    note = good_note(audit).encode()
    with pytest.raises(Refused, match="^checkpoint note too large$"):
        parse_checkpoint(note + b"x" * (MAX_NOTE_BYTES + 1 - len(note)))


def test_a_valid_note_parses_to_what_was_signed(world, audit):
    log = Log(audit, "a").grow(7)
    note = log.note()
    cert = parse_audit_certificate(audit.pem, ca.load_ca_certificate(world.root / "ca" / "ca.crt"))
    cp = verify_checkpoint(note, cert)
    assert (cp.code, cp.log_id, cp.size) == (audit.code, "gw1", 7)
    assert cp.root == merkle.root_at(7, log.get)
    assert cp.time == NOW


# --- the store -------------------------------------------------------------------------------


def test_witness_store_pins_its_ca(world, tmp_path):
    store = tmp_path / "new" / "w"
    with pytest.raises(CipherpostError, match="is not a witness store yet"):
        Witness(store)
    Witness(store, world.root / "ca" / "ca.crt")
    Witness(store, world.root / "ca" / "ca.crt")  # the same CA again: fine
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert (store / "ca.crt").read_bytes() == (world.root / "ca" / "ca.crt").read_bytes()
    stranger = make_world(tmp_path / "other", {GATEWAY: Level.TUYET_MAT})
    with pytest.raises(CipherpostError, match="already pins another CA certificate"):
        Witness(store, stranger.root / "ca" / "ca.crt")
    Witness(store)  # the pinned one, from disk


def test_witness_keeps_checkpoint_files(witness, audit, tmp_path):
    log = Log(audit, "a").grow(3)
    message = log.message()
    witness.observe(message)
    folder = tmp_path / "witness" / f"{GATEWAY}_gw1"
    assert [p.name for p in folder.iterdir()] == ["000000000003.checkpoint.json"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "000000000003.checkpoint.json").read_bytes() == message


def test_origin_names_a_log_id_without_spaces_or_slashes():
    code = AgencyCode.parse(GATEWAY)
    assert origin_for(code, "gw-1") == f"cipherpost.audit/{GATEWAY}/gw-1"
    for bad in ("", "gw/1", "gw 1", "gw\t1"):
        with pytest.raises(UsageError, match="must be non-empty, without spaces or '/'"):
            origin_for(code, bad)


def test_key_hash_is_the_signed_note_one(audit):
    """C2SP signed-note: SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ Ed25519 public key)[:4]."""
    public = audit.key.public_key().public_bytes_raw()
    name = f"cipherpost.audit/{GATEWAY}/gw1"
    want = hashlib.sha256(name.encode() + b"\n" + b"\x01" + public).digest()[:4]
    assert key_hash(name, public) == want
    assert parse_checkpoint(Log(audit, "a").grow(2).note()).key_hash == want


def test_describe_names_origin_size_root_and_time(audit):
    log = Log(audit, "a").grow(3)
    cp = parse_checkpoint(log.note())
    root = merkle.root_at(3, log.get).hex()
    assert cp.describe() == f"{cp.origin} size 3 root {root[:16]}… at 2026-11-01T12:00:00+00:00"


def test_an_empty_log_has_a_checkpoint(audit):
    cp = parse_checkpoint(Log(audit, "a").note(0))
    assert (cp.size, cp.root) == (0, merkle.EMPTY_ROOT)


@pytest.mark.parametrize("line", [2, -2])  # the root hash, the signature
def test_base64_is_strict(audit, line):
    note = good_note(audit)
    lines = note.split("\n")
    lines[line] = lines[line][:-4] + "!" + lines[line][-4:]  # decodes the same, leniently
    with pytest.raises(Refused, match="^not a cipherpost checkpoint: "):
        parse_checkpoint("\n".join(lines).encode())


def test_nothing_may_follow_the_signature_line(audit):
    with pytest.raises(Refused, match="expected exactly one signature line$"):
        parse_checkpoint((good_note(audit) + "trailing").encode())


def test_note_size_limit_is_inclusive(audit):
    note = good_note(audit).encode()
    exactly = note.replace(b"\n\n", b"\n" + b"x" * (MAX_NOTE_BYTES - len(note) - 1) + b"\n\n", 1)
    assert len(exactly) == MAX_NOTE_BYTES
    with pytest.raises(Refused, match="^not a cipherpost checkpoint: "):  # not "too large"
        parse_checkpoint(exactly)


def test_parsed_checkpoint_keeps_its_note(audit):
    note = Log(audit, "a").grow(2).note()
    assert parse_checkpoint(note).note == note


def test_signed_at_the_edges_of_the_certificate_validity(world, audit):
    cert = parse_audit_certificate(audit.pem, ca.load_ca_certificate(world.root / "ca" / "ca.crt"))
    log = Log(audit, "a").grow(2)
    for at in (cert.not_before, cert.not_after):
        assert verify_checkpoint(log.note(at=at), cert).time == at
    for at in (cert.not_before - dt.timedelta(seconds=1), cert.not_after + dt.timedelta(seconds=1)):
        with pytest.raises(Refused, match="signed outside the audit certificate's validity$"):
            verify_checkpoint(log.note(at=at), cert)


def test_a_checkpoint_file_carries_its_certificate(world, audit):
    data = Log(audit, "a").grow(2).message()
    verified = read_checkpoint_file(data, ca.load_ca_certificate(world.root / "ca" / "ca.crt"))
    assert verified.certificate_pem == audit.pem
    assert (verified.certificate.code, verified.certificate.role) == (audit.code, "audit")
