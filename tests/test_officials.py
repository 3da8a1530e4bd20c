"""Officials' signatures offline: certified under an agency, inside the payload, refused loudly.

Every attack is tried and must fail with its own reason: a revoked official, an
unknown one, another agency's official posing as the sender's, a signature over
other bytes or another subject, a header flag that lies either way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
from pathlib import Path

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import envelopes
from envelopes import _crypto
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.payload import Metadata, PayloadSplitter
from envelopes.signatures import CONTEXT, MAGIC, SIGNED_CAVEAT, sign_document
from keys import ca
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused, UsageError
from keys.levels import Level
from keys.officials import (
    OfficialKeys,
    OfficialRequest,
    build_request,
    enroll_official,
    load_official,
)
from tests.forge import Forgery
from tests.helpers import PASSPHRASE, World, make_world

SENDER = "000.01.12.H41"
OTHER = "000.02.12.H41"
TO = "000.00.00.H41"
DOC = "Quyết định về việc sáp nhập thôn (demo)\n".encode() * 300


@pytest.fixture
def w(tmp_path: Path) -> World:
    return make_world(tmp_path, {SENDER: Level.TOI_MAT, OTHER: Level.TOI_MAT, TO: Level.TOI_MAT})


def official(
    w: World, code: str, name: str = "Nguyễn Văn A", title: str = "Chủ tịch UBND xã An Bình"
) -> OfficialKeys:
    key = Ed25519PrivateKey.generate()
    request = OfficialRequest.parse(
        build_request(key, AgencyCode.parse(code), name, title, "CT", w.now)
    )
    path = ca.issue_official(w.authority, request, w.root / "officials", w.now)
    der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)
    return OfficialKeys(request.code, name, title, "CT", key, der)


def signed(
    o: OfficialKeys, doc: bytes = DOC, subject: str = "Sáp nhập", notation: str = "12/QĐ-UBND"
) -> bytes:
    when = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    return sign_document(o, io.BytesIO(doc), subject=subject, notation=notation, now=when)


def seal(
    w: World,
    signatures: tuple[bytes, ...],
    *,
    doc: bytes = DOC,
    subject: str = "Sáp nhập",
    notation: str = "12/QĐ-UBND",
    caveats: tuple[str, ...] = (),
    sender: str = SENDER,
) -> bytes:
    directory = w.directory()
    out = io.BytesIO()
    envelopes.seal(
        io.BytesIO(doc),
        out,
        keys=w.keys[sender],
        directory=directory,
        to=[AgencyCode.parse(TO)],
        level=Level.TOI_MAT,
        size=len(doc),
        metadata=envelopes.Metadata(
            subject=subject, filename="qd.txt", fields={"notation": notation}, signatures=signatures
        ),
        caveats=caveats,
        now=w.now,
    )
    return out.getvalue()


def open_(w: World, data: bytes) -> envelopes.Opened:
    return envelopes.open(
        io.BytesIO(data), io.BytesIO(), keys=w.keys[TO], directory=w.directory(), now=w.now
    )


def refused(w: World, data: bytes) -> EnvelopeRefused:
    with pytest.raises(EnvelopeRefused) as e:
        open_(w, data)
    return e.value


def test_a_chairmans_signature_is_verified_and_named(w: World) -> None:
    chairman = official(w, SENDER)
    data = seal(w, (signed(chairman),))
    opened = open_(w, data)
    (sig,) = opened.signatures
    assert sig.signer == "Nguyễn Văn A, Chủ tịch UBND xã An Bình"
    assert sig.as_dict()["position"] == "CT"
    assert sig.certificate.code.text == SENDER
    assert SIGNED_CAVEAT in opened.info.checked.header.caveats  # all the gateway learns


def test_two_officials_may_sign_one_document(w: World) -> None:
    a, b = official(w, SENDER), official(w, SENDER, "Trần Thị B", "Phó Chủ tịch UBND xã")
    opened = open_(w, seal(w, (signed(a), signed(b))))
    assert [s.certificate.name for s in opened.signatures] == ["Nguyễn Văn A", "Trần Thị B"]


def test_an_unsigned_document_carries_no_flag_and_opens_as_before(w: World) -> None:
    opened = open_(w, seal(w, ()))
    assert opened.signatures == ()
    assert SIGNED_CAVEAT not in opened.info.checked.header.caveats


def test_a_revoked_officials_signature_is_refused(w: World) -> None:
    chairman = official(w, SENDER)
    data = seal(w, (signed(chairman),))
    ca.revoke_official(w.authority, chairman.key_id.hex(), "left office (merger)", w.now)
    e = refused(w, data)
    assert e.reason is Reason.OFFICIAL_REVOKED
    assert "Nguyễn Văn A, Chủ tịch UBND xã An Bình" in str(e) and "revoked" in str(e)


def test_valid_when_signed_against_the_directory_of_that_time(w: World) -> None:
    chairman = official(w, SENDER)
    data = seal(w, (signed(chairman),))
    before = w.directory()
    ca.revoke_official(w.authority, chairman.key_id.hex(), "left office", w.now)
    opened = envelopes.open(
        io.BytesIO(data), io.BytesIO(), keys=w.keys[TO], directory=before, now=w.now
    )
    assert opened.signatures[0].certificate.name == "Nguyễn Văn A"
    assert refused(w, data).reason is Reason.OFFICIAL_REVOKED  # the current directory


def test_a_signature_over_other_bytes_is_refused(w: World) -> None:
    chairman = official(w, SENDER)
    sig = signed(chairman, doc=b"the draft the chairman actually signed\n")
    e = refused(w, seal(w, (sig,)))
    assert e.reason is Reason.OFFICIAL_SIGNATURE
    assert "over other bytes" in str(e)


def test_a_signature_over_another_subject_or_number_is_refused(w: World) -> None:
    chairman = official(w, SENDER)
    e = refused(w, seal(w, (signed(chairman),), notation="13/QĐ-UBND"))
    assert e.reason is Reason.OFFICIAL_SIGNATURE
    assert "another subject or document number" in str(e)


def test_another_agencys_official_posing_as_the_senders_is_refused(w: World) -> None:
    theirs = official(w, OTHER, "Lê Văn C", "Chủ tịch UBND xã Phú Mỹ")
    e = refused(w, seal(w, (signed(theirs),)))
    assert e.reason is Reason.OFFICIAL_AGENCY
    assert f"an official of {OTHER}, not of the sending agency {SENDER}" in str(e)


def test_an_official_certified_by_another_ca_is_unknown(w: World, tmp_path: Path) -> None:
    rogue = make_world(tmp_path / "rogue", {SENDER: Level.TOI_MAT})
    impostor = official(rogue, SENDER)
    e = refused(w, seal(w, (signed(impostor),)))
    assert e.reason is Reason.OFFICIAL_UNKNOWN
    assert "did not certify" in str(e)


def test_an_agency_key_is_not_an_officials_key(w: World) -> None:
    # The agency's own signing certificate (role sign) in place of an official's.
    agency_cert = w.directory().entries[SENDER].sign.der
    posing = OfficialKeys(
        AgencyCode.parse(SENDER), "x", "y", "", w.keys[SENDER].signing_key, agency_cert
    )
    e = refused(w, seal(w, (signed(posing),)))
    assert e.reason is Reason.OFFICIAL_UNKNOWN
    assert "certified as sign" in str(e)


def test_a_forged_signature_is_refused(w: World) -> None:
    chairman = official(w, SENDER)
    magic, body, sig = msgpack.unpackb(signed(chairman), raw=False)
    forged = msgpack.packb([magic, body, bytes(64)], use_bin_type=True)
    e = refused(w, seal(w, (forged,)))
    assert e.reason is Reason.OFFICIAL_SIGNATURE and "does not verify" in str(e)


def test_a_malformed_signature_is_refused(w: World) -> None:
    e = refused(w, seal(w, (b"\x93not a signature",)))
    assert e.reason is Reason.OFFICIAL_SIGNATURE and "malformed" in str(e)


def test_a_header_claiming_signed_without_a_signature_is_refused(w: World) -> None:
    # A sender flags "signed" to pass the gateway's rule, with nothing inside (seal() never
    # does: a rogue agency builds its header by hand).
    meta = envelopes.Metadata(subject="Sáp nhập", filename="qd.txt")
    forged = Forgery(
        w.keys[SENDER], w.directory(), [TO], w.now, payload=meta.encode() + DOC,
        caveats=(SIGNED_CAVEAT,),
    ).build()  # fmt: skip
    e = refused(w, forged)
    assert e.reason is Reason.SIGNED_FLAG
    assert "no signature" in str(e)


def test_signatures_the_header_does_not_declare_are_refused(w: World) -> None:
    chairman = official(w, SENDER)
    meta = envelopes.Metadata(
        subject="Sáp nhập", filename="qd.txt", fields={"notation": "12/QĐ-UBND"},
        signatures=(signed(chairman),),
    )  # fmt: skip
    # seal() always flags a signed payload; a rogue agency builds its header by hand.
    forged = Forgery(
        w.keys[SENDER], w.directory(), [TO], w.now, payload=meta.encode() + DOC
    ).build()
    e = refused(w, forged)
    assert e.reason is Reason.SIGNED_FLAG
    assert "does not declare" in str(e)


def test_the_signature_body_is_checked_as_received(w: World) -> None:
    chairman = official(w, SENDER)
    magic, body, sig = msgpack.unpackb(signed(chairman), raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields[2] = "13/QĐ-UBND"  # re-encode with another number, keep the old signature
    forged = msgpack.packb(
        [magic, msgpack.packb(fields, use_bin_type=True), sig], use_bin_type=True
    )
    e = refused(w, seal(w, (forged,), notation="13/QĐ-UBND"))
    assert e.reason is Reason.OFFICIAL_SIGNATURE and "does not verify" in str(e)
    assert MAGIC == magic and CONTEXT.endswith(b"\x00")
    assert _crypto.verify_signature(
        chairman.signing_key.public_key().public_bytes_raw(), sig, CONTEXT, body
    )


def test_enroll_on_the_officials_machine_then_load_with_the_certificate(w: World) -> None:
    folder = w.root / "chairman"
    request = enroll_official(
        folder, AgencyCode.parse(SENDER), "Nguyễn Văn A", "Chủ tịch UBND xã", "", PASSPHRASE, w.now
    )
    with pytest.raises(CipherpostError, match="no certificate yet"):
        load_official(folder, PASSPHRASE, w.authority.certificate)
    path = ca.issue_official(
        w.authority,
        OfficialRequest.parse((folder / "official.req").read_bytes()),
        w.root / "o",
        w.now,
    )
    (folder / "official.crt").write_bytes(path.read_bytes())
    loaded = load_official(folder, PASSPHRASE, w.authority.certificate)
    assert loaded.key_id == request.key_id and loaded.title == "Chủ tịch UBND xã"
    with pytest.raises(CipherpostError, match="already holds"):
        enroll_official(folder, AgencyCode.parse(SENDER), "X", "Y", "", PASSPHRASE, w.now)


def test_the_ca_certifies_a_key_once_and_only_under_a_live_agency(w: World) -> None:
    key = Ed25519PrivateKey.generate()
    request = OfficialRequest.parse(
        build_request(key, AgencyCode.parse(SENDER), "A", "B", "", w.now)
    )
    ca.issue_official(w.authority, request, w.root / "o", w.now)
    with pytest.raises(CipherpostError, match="already certified"):
        ca.issue_official(w.authority, request, w.root / "o", w.now)
    unknown = OfficialRequest.parse(
        build_request(key, AgencyCode.parse("000.77.12.H41"), "A", "B", "", w.now)
    )
    with pytest.raises(CipherpostError, match="certify the agency first"):
        ca.issue_official(w.authority, unknown, w.root / "o", w.now)
    assert ca.revoke_official(w.authority, request.key_id.hex(), "r", w.now)
    assert not ca.revoke_official(w.authority, request.key_id.hex(), "r", w.now)


def test_a_request_without_proof_of_possession_is_refused(w: World) -> None:
    good = build_request(
        Ed25519PrivateKey.generate(), AgencyCode.parse(SENDER), "A", "B", "", w.now
    )
    magic, body, sig = msgpack.unpackb(good, raw=False)
    bad = msgpack.packb([magic, body, bytes(64)], use_bin_type=True)
    with pytest.raises(Refused, match="proof of possession"):
        OfficialRequest.parse(bad)


def test_the_signed_document_is_written_only_after_every_signature_verified(
    w: World, tmp_path: Path
) -> None:
    chairman = official(w, SENDER)
    data = seal(w, (signed(chairman, doc=b"other"),))
    target = tmp_path / "inbox" / "qd.txt"
    target.parent.mkdir()
    with pytest.raises(EnvelopeRefused):
        envelopes.open_to_path(
            io.BytesIO(data), target, keys=w.keys[TO], directory=w.directory(), now=w.now
        )
    assert list(target.parent.iterdir()) == []  # no plaintext left behind


def test_dataclass_is_frozen(w: World) -> None:
    chairman = official(w, SENDER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chairman.name = "x"  # type: ignore[misc]


# The CA's bookkeeping of officials (keys/ca.py), called in-process: every outcome exact.


def _request(
    w: World,
    code: str = SENDER,
    name: str = "Phạm Văn D",
    title: str = "Chủ tịch",
    position: str = "",
) -> OfficialRequest:
    key = Ed25519PrivateKey.generate()
    return OfficialRequest.parse(
        build_request(key, AgencyCode.parse(code), name, title, position, w.now)
    )


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _validity(path: Path) -> dt.timedelta:
    cert = _cert(path)
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def test_issue_officials_records_each_and_writes_into_a_new_nested_folder(w: World) -> None:
    a = _request(w, name="Nguyễn Văn A", title="Chủ tịch UBND xã", position="CT")
    b = _request(w, OTHER, name="Trần Thị B", title="Phó Chủ tịch")
    out_a, out_b = w.root / "new" / "deep" / "a", w.root / "other" / "deep" / "b"
    paths = ca.issue_officials(w.authority, [(a, out_a), (b, out_b)], w.now)
    ka, kb = a.key_id.hex(), b.key_id.hex()
    assert paths == [
        out_a / f"{SENDER}.{ka[:16]}.official.crt",
        out_b / f"{OTHER}.{kb[:16]}.official.crt",
    ]
    officials = w.authority.load_state()["officials"]
    assert set(officials) == {ka, kb}
    for request, kid, path in ((a, ka, paths[0]), (b, kb, paths[1])):
        cert = _cert(path)
        assert officials[kid] == {
            "code": request.code.text,
            "name": request.name,
            "title": request.title,
            "position": request.position,
            "serial": str(cert.serial_number),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "revoked": False,
        }
        assert cert.not_valid_after_utc == w.now + dt.timedelta(days=365)  # the default
        assert _validity(path) == dt.timedelta(days=365) + ca.CLOCK_SKEW
    subject = _cert(paths[0]).subject
    assert subject.get_attributes_for_oid(x509.NameOID.TITLE)[0].value == "Chủ tịch UBND xã"
    assert _cert(paths[1]).subject.get_attributes_for_oid(ca.POSITION_OID) == []


def test_issue_official_defaults_to_365_days_and_passes_valid_days_on(w: World) -> None:
    path = ca.issue_official(w.authority, _request(w), w.root / "n" / "o", w.now)
    assert _validity(path) == dt.timedelta(days=365) + ca.CLOCK_SKEW
    path = ca.issue_official(w.authority, _request(w), w.root / "o", w.now, 30)
    assert _validity(path) == dt.timedelta(days=30) + ca.CLOCK_SKEW


@pytest.mark.parametrize("days", [1, ca.MAX_VALID_DAYS])
def test_official_validity_bounds_are_accepted(w: World, days: int) -> None:
    path = ca.issue_official(w.authority, _request(w), w.root / "o", w.now, days)
    assert _cert(path).not_valid_after_utc == w.now + dt.timedelta(days=days)
    (path,) = ca.issue_officials(w.authority, [(_request(w), w.root / "o")], w.now, days)
    assert _cert(path).not_valid_after_utc == w.now + dt.timedelta(days=days)


@pytest.mark.parametrize("days", [0, ca.MAX_VALID_DAYS + 1])
def test_official_validity_out_of_range_is_refused(w: World, days: int) -> None:
    for issue in (
        lambda: ca.issue_official(w.authority, _request(w), w.root / "o", w.now, days),
        lambda: ca.issue_officials(w.authority, [(_request(w), w.root / "o")], w.now, days),
    ):
        with pytest.raises(UsageError, match=r"^--valid-days must be 1\.\.3650$"):
            issue()
    assert "officials" not in w.authority.load_state()
    assert not (w.root / "o").exists()


def test_no_official_is_certified_under_a_revoked_agency(w: World) -> None:
    assert ca.revoke(w.authority, AgencyCode.parse(OTHER), "merged", w.now)
    with pytest.raises(
        CipherpostError,
        match=f"^{OTHER} holds no valid certificates from this CA: certify the agency first$",
    ):
        ca.issue_official(w.authority, _request(w, OTHER), w.root / "o", w.now)
    assert "officials" not in w.authority.load_state()


def test_a_key_certified_twice_is_refused_naming_it_and_a_refused_batch_records_nothing(
    w: World,
) -> None:
    first = _request(w)
    kid = first.key_id.hex()
    ca.issue_official(w.authority, first, w.root / "o", w.now)
    before = w.authority.load_state()
    fresh = _request(w)
    with pytest.raises(
        CipherpostError, match=rf"^this key is already certified \(official {kid[:12]}\)$"
    ):
        ca.issue_officials(w.authority, [(fresh, w.root / "p"), (first, w.root / "p")], w.now)
    assert w.authority.load_state() == before  # the fresh one is not recorded either
    assert not (w.root / "p").exists()


def test_revoke_official_records_the_revocation_once(w: World) -> None:
    request = _request(w)
    kid = request.key_id.hex()
    # A CA that never certified an official (no "officials" in its bookkeeping yet).
    with pytest.raises(
        CipherpostError, match=f"^no official's key {kid} was certified by this CA$"
    ):
        ca.revoke_official(w.authority, kid, "left office", w.now)
    path = ca.issue_official(w.authority, request, w.root / "o", w.now)
    serial = _cert(path).serial_number
    with pytest.raises(CipherpostError, match="^no official's key 00 was certified by this CA$"):
        ca.revoke_official(w.authority, "00", "left office", w.now)
    later = w.now + dt.timedelta(hours=1)
    assert ca.revoke_official(w.authority, kid, "left office", later) is True
    state = w.authority.load_state()
    assert state["revoked"][-1] == {
        "serial": str(serial),
        "code": SENDER,
        "reason": "left office",
        "time": later.isoformat(),
        "official": kid,
    }
    assert state["officials"][kid]["revoked"] is True
    assert ca.revoke_official(w.authority, kid, "again", later) is False
    assert w.authority.load_state()["revoked"] == state["revoked"]
    crl = x509.load_der_x509_crl((w.authority.directory / ca.CRL_FILE).read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def _first_letter_prefix(kid: str) -> str:
    """The shortest prefix (at least 2 characters) that holds a hex letter a-f."""
    i = next(i for i, c in enumerate(kid) if c in "abcdef")
    return kid[: max(i + 1, 2)]


def test_find_official_by_a_prefix(w: World) -> None:
    with pytest.raises(CipherpostError, match="^no official's key 'ab' was certified by this CA$"):
        ca.find_official(w.authority, "ab")  # no official at all yet
    request = _request(w)
    kid = request.key_id.hex()
    ca.issue_official(w.authority, request, w.root / "o", w.now)
    prefix = _first_letter_prefix(kid)
    assert ca.find_official(w.authority, f"  {prefix.upper()}\t") == kid
    assert ca.find_official(w.authority, kid) == kid
    for blank in ("", "   "):
        with pytest.raises(
            CipherpostError, match=f"^no official's key {blank!r} was certified by this CA$"
        ):
            ca.find_official(w.authority, blank)
    unknown = "0" * 32 if not kid.startswith("0") else "f" * 32
    with pytest.raises(
        CipherpostError, match=f"^no official's key '{unknown}' was certified by this CA$"
    ):
        ca.find_official(w.authority, unknown)


def test_find_official_refuses_an_ambiguous_prefix(w: World) -> None:
    # Two officials whose key ids start alike (among 17 keys, two share the first digit).
    seen: dict[str, OfficialRequest] = {}
    while True:
        request = _request(w)
        kid = request.key_id.hex()
        if kid[0] in seen:
            break
        seen[kid[0]] = request
    pair = [seen[kid[0]], request]
    ca.issue_officials(w.authority, [(r, w.root / "o") for r in pair], w.now)
    ids = [r.key_id.hex() for r in pair]
    common = ids[0][: next(i for i, (x, y) in enumerate(zip(*ids, strict=True)) if x != y)]
    assert common
    with pytest.raises(UsageError, match=f"^'{common}' is the start of 2 officials' keys$"):
        ca.find_official(w.authority, common)
    for kid in ids:  # one more character tells them apart
        assert ca.find_official(w.authority, kid[: len(common) + 1]) == kid


def test_the_document_is_hashed_exactly_when_the_metadata_carries_signatures() -> None:
    """The digest officials' signatures are checked against covers every document byte
    from the first, in chunks of any size; an unsigned document is not hashed at all."""
    document = bytes(range(256)) * 40
    for signatures in ((), (b"s" * 64,)):
        payload = Metadata(subject="x", signatures=signatures).encode() + document
        for size in (1, 7, 4096, len(payload)):
            out = io.BytesIO()
            splitter = PayloadSplitter(out)
            for k in range(0, len(payload), size):
                splitter.feed(payload[k : k + size])
            assert splitter.finish().signatures == signatures
            assert out.getvalue() == document and splitter.document_bytes == len(document)
            want = hashlib.sha256(document).digest() if signatures else b""
            assert splitter.document_digest == want, (signatures, size)
