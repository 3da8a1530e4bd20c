"""A log's documented end (gateway/ending.py): signed by the CA, honoured by witness and verify."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import AuditStore
from gateway.auditlog import verify_store
from gateway.checkpoint import (
    COSIGN_CONTEXT,
    cosign,
    parse_checkpoint,
    read_checkpoint_file,
    verify_checkpoint,
)
from gateway.ending import read_ending, sign_ending
from gateway.witness import Witness, WitnessAlarm
from keys import ca
from keys.auditkey import parse_audit_certificate
from keys.certs import ROLE_WITNESS
from keys.errors import CipherpostError, Refused, UsageError
from tests.gateway_kit import A, B, delivery, make_gateway, make_kit, parts, witness_signer


@pytest.fixture
def kit(tmp_path):
    return make_kit(tmp_path / "kit")


def published_checkpoints(gw) -> list[bytes]:
    return [p.body for p in gw._transport.published if p.exchange == "cp.audit.checkpoints"]


def run(kit, root, n: int) -> tuple[list[bytes], object]:
    gw = make_gateway(kit, root)
    for _ in range(n):
        gw.handle(delivery(parts(kit.seal(A, [B]))[0], A))
        gw.commit_batch()
        gw._checkpoint(force=True)
    cps, cert = published_checkpoints(gw), gw.checkpointer.certificate
    gw.close()
    return cps, cert


def test_an_ending_is_signed_by_the_ca_over_its_exact_bytes(kit, tmp_path):
    cps, _ = run(kit, tmp_path, 2)
    last = parse_checkpoint(json.loads(cps[-1])["checkpoint"].encode())
    data = sign_ending(kit.world.authority, last, "gw2", "disk lost", kit.now)
    ending = read_ending(data, kit.world.authority.certificate)
    assert (ending.origin, ending.size, ending.root, ending.successor) == (
        last.origin,
        last.size,
        last.root,
        "gw2",
    )
    doc = json.loads(data)
    doc["ending"] = doc["ending"].replace('"gw2"', '"gw3"')
    with pytest.raises(Refused, match="bad signature"):
        read_ending(json.dumps(doc).encode(), kit.world.authority.certificate)
    other = ca.init_ca(tmp_path / "other-ca", b"other-passphrase", kit.now, "Other CA")
    with pytest.raises(Refused, match="bad signature"):
        read_ending(data, other)
    with pytest.raises(Refused, match="not a log ending"):
        read_ending(b"{}", kit.world.authority.certificate)
    with pytest.raises(UsageError, match="new log id"):
        sign_ending(kit.world.authority, last, last.log_id, "x", kit.now)


def test_the_witness_takes_an_ending_only_at_its_last_checkpoint_and_holds_to_it(kit, tmp_path):
    cps, _ = run(kit, tmp_path, 3)
    w = Witness(tmp_path / "w", kit.world.root / "ca" / "ca.crt", witness_signer(kit, tmp_path))
    for m in cps[:2]:
        w.observe(m)
    second = parse_checkpoint(json.loads(cps[1])["checkpoint"].encode())
    first = parse_checkpoint(json.loads(cps[0])["checkpoint"].encode())
    with pytest.raises(CipherpostError, match="not at the last checkpoint held"):
        w.end(sign_ending(kit.world.authority, first, "gw2", "x", kit.now))
    w.end(sign_ending(kit.world.authority, second, "gw2", "disk lost", kit.now))
    assert not w.observe(cps[1])[1]  # its last checkpoint again: fine, not new
    with pytest.raises(WitnessAlarm, match="after the end of its log"):
        w.observe(cps[2])  # the ended log written further
    again = Witness(tmp_path / "w")  # the end is kept on disk
    with pytest.raises(WitnessAlarm, match="after the end of its log"):
        again.observe(cps[2])
    assert again.stale(0) == []  # an ended log is not silent, it is over


def test_verify_reports_an_ended_log_and_refuses_leaves_after_its_end(kit, tmp_path):
    cps, cert = run(kit, tmp_path, 3)
    second = parse_checkpoint(json.loads(cps[1])["checkpoint"].encode())
    ending = read_ending(
        sign_ending(kit.world.authority, second, "gw2", "disk lost", kit.now),
        kit.world.authority.certificate,
    )
    store = AuditStore(tmp_path / "audit.db", readonly=True)
    try:
        checkpoints = [(verify_checkpoint(n, cert), cert) for n in store.checkpoints()]
        report = verify_store(store, checkpoints, endings=[ending])
    finally:
        store.close()
    assert "gw1" in report.ended and "disk lost" in report.ended["gw1"]
    assert any("written after its end" in p for p in report.problems)
    # A store without the ended log: reported as ended, not as a deleted log.
    empty = AuditStore(tmp_path / "new.db", log_id="gw2")
    try:
        report = verify_store(empty, checkpoints[:2], endings=[ending])
    finally:
        empty.close()
    assert report.ok and "gw1" in report.ended
    root = base64.b64encode(second.root).decode()
    assert root in sign_ending(kit.world.authority, second, "gw2", "r", kit.now).decode()


def test_a_checkpoint_cosignature_is_checked(kit, tmp_path):
    cps, _ = run(kit, tmp_path, 1)
    w = Witness(tmp_path / "w", kit.world.root / "ca" / "ca.crt", witness_signer(kit, tmp_path))
    w.observe(cps[0])
    [stored] = list((tmp_path / "w").rglob("*.checkpoint.json"))
    ca_cert = kit.world.authority.certificate
    assert read_checkpoint_file(stored.read_bytes(), ca_cert).cosigned
    assert not read_checkpoint_file(cps[0], ca_cert).cosigned  # as the gateway published it
    doc = json.loads(stored.read_bytes())
    doc["cosignatures"][0]["time"] += 1
    with pytest.raises(Refused, match="checkpoint file: bad witness cosignature"):
        read_checkpoint_file(json.dumps(doc).encode(), ca_cert)
    doc = json.loads(stored.read_bytes())
    doc["cosignatures"][0]["witness_certificate"] = json.loads(cps[0])["audit_certificate"]
    with pytest.raises(Refused, match="not a witness one"):
        read_checkpoint_file(json.dumps(doc).encode(), ca_cert)


def test_load_endings_takes_every_signed_ending_and_names_each_bad_file(kit, tmp_path):
    from gateway.auditlog import load_endings
    from gateway.ending import FILE_NAME

    cps, _ = run(kit, tmp_path / "gw", 2)
    last = parse_checkpoint(json.loads(cps[-1])["checkpoint"].encode())
    data = sign_ending(kit.world.authority, last, "gw2", "disk lost", kit.now)
    folder = tmp_path / "witness"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / FILE_NAME).write_bytes(data)
    (folder / "b").mkdir()
    (folder / "b" / FILE_NAME).write_bytes(b"{}")
    good, problems = load_endings(folder, kit.world.authority.certificate)
    assert good == [read_ending(data, kit.world.authority.certificate)]
    assert good[0].size == last.size
    with pytest.raises(Refused) as e:
        read_ending(b"{}", kit.world.authority.certificate)
    assert problems == [f"{folder / 'b' / FILE_NAME}: {e.value}"]


# --- every refusal of an ending, by its exact words ------------------------------------------


def _signed(kit, text: str) -> bytes:
    """An ending file the CA signed over ``text`` (what only the CA can make)."""
    from gateway.ending import CONTEXT

    sig = kit.world.authority.private_key.sign(CONTEXT + text.encode())
    return json.dumps({"ending": text, "signature": base64.b64encode(sig).decode()}).encode()


def _refusal(data: bytes, ca_cert) -> str:
    with pytest.raises(Refused) as e:
        read_ending(data, ca_cert)
    return str(e.value)


def test_read_ending_refuses_each_bad_file_by_name(kit, tmp_path):
    from gateway.ending import FORMAT, MAX_BYTES

    cert = kit.world.authority.certificate
    cps, _ = run(kit, tmp_path, 1)
    last = parse_checkpoint(json.loads(cps[-1])["checkpoint"].encode())
    data = sign_ending(kit.world.authority, last, "gw2", "disk lost", kit.now)
    assert read_ending(data, cert).raw == data
    assert _refusal(b" " * (MAX_BYTES + 1), cert) == "log ending file too large"
    assert _refusal(b" " * MAX_BYTES, cert).startswith("not a log ending file: Expecting value")
    doc = json.loads(data)
    junk_sig = json.dumps({**doc, "signature": "!" + doc["signature"]}).encode()
    assert _refusal(junk_sig, cert).startswith("not a log ending file: ")  # base64 checked
    not_text = json.dumps({**doc, "ending": 7}).encode()
    assert _refusal(not_text, cert) == "not a log ending file: ending is not a string"
    tampered = json.dumps({**doc, "ending": doc["ending"].replace("disk", "disc")}).encode()
    assert _refusal(tampered, cert) == "log ending: bad signature (not signed by this CA)"
    body = json.loads(doc["ending"])
    wrong = _signed(kit, json.dumps({**body, "format": FORMAT + "x"}))
    assert _refusal(wrong, cert) == "log ending is malformed: unknown format"
    bad_root = _signed(kit, json.dumps({**body, "root": "!" + body["root"]}))
    assert _refusal(bad_root, cert).startswith("log ending is malformed: ")


def test_read_ending_needs_an_ed25519_ca(kit, tmp_path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not an Ed25519 CA")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(kit.now - dt.timedelta(days=1))
        .not_valid_after(kit.now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cps, _ = run(kit, tmp_path, 1)
    last = parse_checkpoint(json.loads(cps[-1])["checkpoint"].encode())
    data = sign_ending(kit.world.authority, last, "gw2", "disk lost", kit.now)
    assert _refusal(data, cert) == "the CA key is not Ed25519"


@pytest.mark.parametrize("successor", ["", "gw 2", "gw/2", "gw\t2"])
def test_sign_ending_refuses_a_successor_that_is_no_log_id(kit, tmp_path, successor):
    cps, _ = run(kit, tmp_path, 1)
    last = parse_checkpoint(json.loads(cps[-1])["checkpoint"].encode())
    with pytest.raises(UsageError) as e:
        sign_ending(kit.world.authority, last, successor, "x", kit.now)
    assert str(e.value) == "the successor log id must be non-empty, without spaces or '/'"


def test_sign_ending_refuses_the_ended_log_as_its_successor_and_bounds_the_reason(kit, tmp_path):
    from keys.errors import clip

    cps, _ = run(kit, tmp_path, 1)
    last = parse_checkpoint(json.loads(cps[-1])["checkpoint"].encode())
    with pytest.raises(UsageError) as e:
        sign_ending(kit.world.authority, last, last.log_id, "x", kit.now)
    assert str(e.value) == "the successor must be a new log id: an ended log is never reused"
    long = "ổ đĩa hỏng " * 40
    ending = read_ending(
        sign_ending(kit.world.authority, last, "gw2", long, kit.now),
        kit.world.authority.certificate,
    )
    assert ending.reason == clip(long, 280) and len(ending.reason) <= 280 < len(long)


def _cosigned_file(kit, tmp_path):
    """A gateway checkpoint file, a function cosigning it at a chosen time, the witness
    certificate and the CA."""
    cps, _ = run(kit, tmp_path, 1)
    key, pem = witness_signer(kit, tmp_path)
    ca_cert = kit.world.authority.certificate
    cert = parse_audit_certificate(pem, ca_cert, ROLE_WITNESS)
    doc = json.loads(cps[0])

    def signed(when, base=doc):
        return cosign(base, key, pem, when)

    return doc, signed, cert, ca_cert


def test_a_cosignature_counts_only_inside_the_witness_certificate_validity(kit, tmp_path):
    doc, signed, cert, ca_cert = _cosigned_file(kit, tmp_path)

    def cosigned(d) -> bool:
        return read_checkpoint_file(json.dumps(d).encode(), ca_cert).cosigned

    second = dt.timedelta(seconds=1)
    assert cosigned(signed(cert.not_before))  # both edges belong to the validity
    assert cosigned(signed(cert.not_after))
    assert not cosigned(signed(cert.not_before - second))  # a well-made signature, but
    assert not cosigned(signed(cert.not_after + second))  # made when the key was not valid
    # One valid cosignature among others is enough; the order does not matter.
    assert cosigned(signed(cert.not_after, signed(cert.not_before - second)))


def test_a_second_cosignature_is_added_beside_the_first(kit, tmp_path):
    doc, signed, cert, _ = _cosigned_file(kit, tmp_path)
    once = signed(cert.not_before)
    twice = signed(cert.not_after, once)
    assert twice["cosignatures"][0] == once["cosignatures"][0]
    assert [c["time"] for c in twice["cosignatures"]] == [
        int(cert.not_before.timestamp()),
        int(cert.not_after.timestamp()),
    ]
    assert twice["checkpoint"] == doc["checkpoint"] and "cosignatures" not in doc


def _first(doc) -> dict:
    return doc["cosignatures"][0]


MALFORMED = "checkpoint file: malformed cosignature"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(cosignatures={}), "checkpoint file: cosignatures must be a list"),
        (lambda d: _first(d).pop("signature"), MALFORMED),
        (lambda d: _first(d).update(time="soon"), MALFORMED),
        (lambda d: _first(d).update(time=-1), MALFORMED),
        (lambda d: _first(d).update(time=2**64), MALFORMED),
        (lambda d: _first(d).update(witness_certificate="x"), "witness certificate is not a PEM"),
        # Strict base64: characters outside the alphabet are refused, not skipped.
        (lambda d: _first(d).update(signature="*" + _first(d)["signature"]), MALFORMED),
        (lambda d: _first(d).update(signature="AAAA"), "checkpoint file: bad witness cosignature"),
    ],
)
def test_a_bad_cosignature_refuses_the_file_by_name(kit, tmp_path, edit, message):
    _, signed, cert, ca_cert = _cosigned_file(kit, tmp_path)
    doc = signed(cert.not_before)
    read_checkpoint_file(json.dumps(doc).encode(), ca_cert)  # as signed: fine
    edit(doc)
    with pytest.raises(Refused, match=f"^{re.escape(message)}"):
        read_checkpoint_file(json.dumps(doc).encode(), ca_cert)


def test_the_cosigned_bytes_are_context_time_big_endian_and_the_note(kit, tmp_path):
    doc, signed, cert, _ = _cosigned_file(kit, tmp_path)
    entry = signed(cert.not_before)["cosignatures"][0]
    t = int(cert.not_before.timestamp())
    Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
        base64.b64decode(entry["signature"]),
        COSIGN_CONTEXT + t.to_bytes(8, "big") + doc["checkpoint"].encode(),
    )


def test_the_witness_ends_a_log_only_at_the_largest_of_three_held(kit, tmp_path):
    cps, _ = run(kit, tmp_path, 4)
    w = Witness(tmp_path / "w", kit.world.root / "ca" / "ca.crt")
    for m in cps[:3]:
        w.observe(m)
    middle, last = (parse_checkpoint(json.loads(m)["checkpoint"].encode()) for m in cps[1:3])
    with pytest.raises(CipherpostError, match="is not at the last checkpoint held"):
        w.end(sign_ending(kit.world.authority, middle, "gw2", "x", kit.now))
    assert w.end(sign_ending(kit.world.authority, last, "gw2", "x", kit.now)).size == last.size
    with pytest.raises(WitnessAlarm, match=r"an ended log is being written again \(a restored"):
        w.observe(cps[3])


def test_the_witness_names_a_log_it_does_not_hold_when_asked_to_end_it(kit, tmp_path):
    cps, _ = run(kit, tmp_path, 1)
    w = Witness(tmp_path / "w", kit.world.root / "ca" / "ca.crt")
    first = parse_checkpoint(json.loads(cps[0])["checkpoint"].encode())
    message = f"^this witness holds no checkpoint of {first.origin}$"
    with pytest.raises(CipherpostError, match=message):
        w.end(sign_ending(kit.world.authority, first, "gw2", "x", kit.now))


def test_staleness_counts_from_the_last_checkpoint_and_from_a_restart(kit, tmp_path):
    cps, _ = run(kit, tmp_path, 1)
    w = Witness(tmp_path / "w", kit.world.root / "ca" / "ca.crt")
    origin = w.observe(cps[0])[0].origin
    assert w.stale(60) == []  # heard just now
    assert w.stale(-1) == [origin]
    again = Witness(tmp_path / "w")  # a restart: held logs count from now, not as silent
    assert again.stale(60) == [] and again.stale(-1) == [origin]
