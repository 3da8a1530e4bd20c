import datetime as dt
import os
import stat

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keys import agency, ca
from keys.certs import AGENCY_EXTENSION_OID, AgencyCertificate, decode_agency_extension
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused, UsageError
from keys.levels import Level
from tests.helpers import NOW, PASSPHRASE


@pytest.fixture
def authority(tmp_path):
    ca.init_ca(tmp_path / "ca", PASSPHRASE, NOW, "Test CA")
    return ca.open_ca(tmp_path / "ca", PASSPHRASE)


def _keys(code="000.00.12.H41"):
    return agency.AgencyKeys(
        AgencyCode.parse(code), "Xã Test", Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    )


def test_ca_folder_is_made_private_with_its_parents(tmp_path):
    """The CA's folder holds its (encrypted) key and its bookkeeping: only its owner may
    list it, even where the umask would allow more."""
    folder = tmp_path / "offline" / "ca"
    old = os.umask(0o022)
    try:
        ca.init_ca(folder, PASSPHRASE, NOW, "Test CA")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_ca_init_refuses_to_overwrite(tmp_path, authority):
    with pytest.raises(CipherpostError, match="refusing to overwrite"):
        ca.init_ca(tmp_path / "ca", PASSPHRASE, NOW, "again")


def test_ca_wrong_passphrase(tmp_path, authority):
    with pytest.raises(CipherpostError, match="wrong passphrase"):
        ca.open_ca(tmp_path / "ca", b"nope")


def test_issue_carries_code_and_clearance(tmp_path, authority):
    keys = _keys()
    request = agency.EnrollmentRequest.parse(agency.build_request(keys, NOW))
    sign_path, enc_path = ca.issue(authority, request, Level.MAT, tmp_path / "certs", NOW, 30)
    sign = x509.load_pem_x509_certificate(sign_path.read_bytes())
    ext = sign.extensions.get_extension_for_oid(AGENCY_EXTENSION_OID)
    assert ext.critical
    assert decode_agency_extension(ext.value.value) == (keys.code, Level.MAT, "sign")
    parsed = AgencyCertificate.parse(
        sign.public_bytes(__import__("cryptography").hazmat.primitives.serialization.Encoding.DER),
        authority.certificate,
    )
    assert parsed.public_key == keys.sign_public
    assert parsed.not_after - parsed.not_before == dt.timedelta(days=30, minutes=5)
    enc = x509.load_pem_x509_certificate(enc_path.read_bytes())
    assert isinstance(enc.public_key(), type(keys.encryption_key.public_key()))


def test_request_with_bad_proof_of_possession_is_refused():
    keys = _keys()
    magic, body, sig = msgpack.unpackb(agency.build_request(keys, NOW))
    other = Ed25519PrivateKey.generate().sign(agency.REQUEST_CONTEXT + body)
    forged = msgpack.packb([magic, body, other], use_bin_type=True)
    with pytest.raises(Refused, match="proof of possession failed"):
        agency.EnrollmentRequest.parse(forged)


def test_request_whose_signed_body_was_changed_is_refused():
    keys = _keys()
    magic, body, sig = msgpack.unpackb(agency.build_request(keys, NOW))
    fields = msgpack.unpackb(body)
    fields[0] = "000.00.13.H41"  # claim another code with the same signature
    forged = msgpack.packb(
        [magic, msgpack.packb(fields, use_bin_type=True), sig], use_bin_type=True
    )
    with pytest.raises(Refused, match="proof of possession failed"):
        agency.EnrollmentRequest.parse(forged)


def test_request_with_malformed_code_is_refused():
    keys = _keys()
    magic, body, _ = msgpack.unpackb(agency.build_request(keys, NOW))
    fields = msgpack.unpackb(body)
    fields[0] = "H41"
    body = msgpack.packb(fields, use_bin_type=True)
    sig = keys.signing_key.sign(agency.REQUEST_CONTEXT + body)
    with pytest.raises(Refused, match="invalid agency code"):
        agency.EnrollmentRequest.parse(msgpack.packb([magic, body, sig], use_bin_type=True))


@pytest.mark.parametrize("data", [b"", b"\xff\xff", msgpack.packb(["x", b"", b""])])
def test_garbage_request_is_refused(data):
    with pytest.raises(Refused):
        agency.EnrollmentRequest.parse(data)


def test_revoke_writes_crl_and_blocks_reissue(tmp_path, authority):
    keys = _keys()
    request = agency.EnrollmentRequest.parse(agency.build_request(keys, NOW))
    ca.issue(authority, request, Level.MAT, tmp_path / "certs", NOW)
    assert ca.revoke(authority, keys.code, "key compromise", NOW)
    assert not ca.revoke(authority, keys.code, "again", NOW)
    crl = x509.load_der_x509_crl((tmp_path / "ca" / ca.CRL_FILE).read_bytes())
    assert crl.is_signature_valid(authority.certificate.public_key())
    serials = {int(s) for s in authority.load_state()["issued"][keys.code.text]["serials"]}
    assert {r.serial_number for r in crl} == serials
    with pytest.raises(CipherpostError, match="revoked"):
        ca.issue(authority, request, Level.MAT, tmp_path / "certs", NOW)
    with pytest.raises(CipherpostError, match="no certificate was issued"):
        ca.revoke(authority, AgencyCode.parse("000.00.99.H41"), "x", NOW)


def _issue(authority, tmp_path, code="000.00.12.H41", **kwargs):
    keys = _keys(code)
    request = agency.EnrollmentRequest.parse(agency.build_request(keys, NOW))
    return request, ca.issue(authority, request, Level.MAT, tmp_path / "certs", NOW, **kwargs)


@pytest.mark.parametrize("days", [0, -1, 3651])
def test_issue_validity_out_of_range(tmp_path, authority, days):
    with pytest.raises(UsageError, match=r"--valid-days must be 1\.\.3650"):
        _issue(authority, tmp_path, valid_days=days)
    assert authority.load_state()["issued"] == {}


@pytest.mark.parametrize("days", [1, 3650])
def test_issue_validity_bounds(tmp_path, authority, days):
    _, (sign_path, _) = _issue(authority, tmp_path, valid_days=days)
    cert = x509.load_pem_x509_certificate(sign_path.read_bytes())
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=days)
    assert cert.not_valid_before_utc == NOW - ca.CLOCK_SKEW


def test_certificates_are_end_entity_with_their_own_usage(tmp_path, authority):
    _, paths = _issue(authority, tmp_path)
    sign, enc = (x509.load_pem_x509_certificate(p.read_bytes()) for p in paths)
    for cert in (sign, enc):
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca is False
        assert cert.issuer == authority.certificate.subject
        cert.verify_directly_issued_by(authority.certificate)
    for cert, signs in ((sign, True), (enc, False)):
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical
        u = usage.value
        assert (u.digital_signature, u.key_agreement) == (signs, not signs)
        # An agency key certifies nothing, signs no CRL, commits to nothing else.
        for flag in ("content_commitment", "key_encipherment", "data_encipherment"):
            assert getattr(u, flag) is False, flag
        assert u.key_cert_sign is False and u.crl_sign is False
        if not signs:
            assert u.encipher_only is False and u.decipher_only is False
        agency_ext = cert.extensions.get_extension_for_oid(AGENCY_EXTENSION_OID)
        assert agency_ext.critical
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        assert not aki.critical


def test_revoke_covers_every_certificate_ever_issued(tmp_path, authority):
    request, first = _issue(authority, tmp_path)
    old = {x509.load_pem_x509_certificate(p.read_bytes()).serial_number for p in first}
    ca.issue(authority, request, Level.TOI_MAT, tmp_path / "certs", NOW, replace=True)
    number = authority.load_state()["crl_number"]
    assert ca.revoke(authority, request.code, "key compromise", NOW)
    crl = x509.load_der_x509_crl((tmp_path / "ca" / ca.CRL_FILE).read_bytes())
    new = {int(s) for s in authority.load_state()["issued"][request.code.text]["serials"]}
    assert {r.serial_number for r in crl} == old | new and len(old | new) == 4
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert crl.issuer == authority.certificate.subject


def test_issue_audit_needs_a_code_in_good_standing(tmp_path, authority):
    from keys.auditkey import AuditKeyRequest

    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    stranger = AuditKeyRequest(AgencyCode.parse("000.00.99.G99"), public, NOW)
    with pytest.raises(CipherpostError, match="holds no valid certificates from this CA"):
        ca.issue_audit(authority, stranger, tmp_path / "certs", NOW)
    request, _ = _issue(authority, tmp_path)
    mine = AuditKeyRequest(request.code, public, NOW)
    for days in (0, 3651):
        with pytest.raises(UsageError, match="--valid-days"):
            ca.issue_audit(authority, mine, tmp_path / "certs", NOW, days)
    path = ca.issue_audit(authority, mine, tmp_path / "certs", NOW, 30)
    cert = AgencyCertificate.parse(
        x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
            __import__("cryptography").hazmat.primitives.serialization.Encoding.DER
        ),
        authority.certificate,
    )
    assert (cert.role, cert.code, cert.clearance) == ("audit", request.code, Level.THUONG)
    ca.revoke(authority, request.code, "gone", NOW)
    with pytest.raises(CipherpostError, match="holds no valid certificates from this CA"):
        ca.issue_audit(authority, mine, tmp_path / "certs", NOW)


def test_retire_refuses_nonsense(tmp_path, authority):
    a, b, c, d = (_issue(authority, tmp_path, code)[0].code for code in CODES)
    with pytest.raises(UsageError, match="^a code cannot be its own successor$"):
        ca.retire(authority, a, a, NOW)
    with pytest.raises(CipherpostError, match="000.77.77.H41 holds no certificates"):
        ca.retire(authority, AgencyCode.parse("000.77.77.H41"), a, NOW)
    with pytest.raises(CipherpostError, match="000.77.77.H41 holds no certificates"):
        ca.retire(authority, a, AgencyCode.parse("000.77.77.H41"), NOW)
    ca.revoke(authority, d, "gone", NOW)
    with pytest.raises(CipherpostError, match="is revoked; choose a successor"):
        ca.retire(authority, a, d, NOW)
    ca.retire(authority, b, a, NOW)
    with pytest.raises(CipherpostError, match=r"itself retired \(into 000.00.12.H41\)"):
        ca.retire(authority, c, b, NOW)
    ca.retire(authority, a, c, NOW)  # b -> a, a -> c: b now goes straight to c
    retired = authority.load_state()["retired"]
    assert {k: v["successor"] for k, v in retired.items()} == {b.text: c.text, a.text: c.text}


CODES = ("000.00.12.H41", "000.00.13.H41", "000.00.14.H41", "000.00.15.H41")


def test_load_ca_certificate_refuses_what_is_not_a_ca(tmp_path, authority):
    _, (sign_path, _) = _issue(authority, tmp_path)
    (tmp_path / "garbage.crt").write_bytes(b"-----BEGIN nonsense")
    for path in (sign_path, tmp_path / "garbage.crt"):
        with pytest.raises(CipherpostError, match="not a cipherpost CA certificate"):
            ca.load_ca_certificate(path)
    with pytest.raises(CipherpostError, match="cannot read CA certificate"):
        ca.load_ca_certificate(tmp_path / "missing.crt")
    assert ca.load_ca_certificate(tmp_path / "ca" / ca.CA_CERT_FILE) == authority.certificate


def test_open_ca_refuses_a_certificate_of_another_key(tmp_path, authority):
    ca.init_ca(tmp_path / "other", PASSPHRASE, NOW, "Other CA")
    (tmp_path / "ca" / ca.CA_CERT_FILE).write_bytes(
        (tmp_path / "other" / ca.CA_CERT_FILE).read_bytes()
    )
    with pytest.raises(CipherpostError, match="CA key and certificate do not match"):
        ca.open_ca(tmp_path / "ca", PASSPHRASE)
    with pytest.raises(CipherpostError, match="is not a CA folder"):
        ca.open_ca(tmp_path / "nothing", PASSPHRASE)


def test_issue_audit_validity_bounds_and_folder(tmp_path, authority):
    from keys.auditkey import AuditKeyRequest

    request, _ = _issue(authority, tmp_path)
    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    mine = AuditKeyRequest(request.code, public, NOW)
    for days in (1, 3650):
        path = ca.issue_audit(authority, mine, tmp_path / f"new-{days}" / "certs", NOW, days)
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        assert cert.not_valid_after_utc == NOW + dt.timedelta(days=days)
    path = ca.issue_audit(authority, mine, tmp_path / "default", NOW)
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)


def test_retired_codes_reach_the_directory(tmp_path, authority):
    from keys.directory import Directory, TrustState, build_directory

    a, b = (_issue(authority, tmp_path, code)[0].code for code in CODES[:2])
    later = NOW + dt.timedelta(days=3)
    ca.retire(authority, b, a, later)
    d = Directory.load(
        build_directory(authority, tmp_path / "certs", NOW), TrustState(None), now=NOW
    )
    assert d.successor(b) == a.text and d.retired_from[b.text] == later


def test_revocation_is_recorded_with_its_reason(tmp_path, authority):
    request, _ = _issue(authority, tmp_path)
    ca.revoke(authority, request.code, "key compromise", NOW)
    entries = authority.load_state()["revoked"]
    assert len(entries) == 2
    for entry in entries:
        assert (entry["code"], entry["reason"], entry["time"]) == (
            request.code.text,
            "key compromise",
            NOW.isoformat(),
        )


def test_issue_twice_needs_replace_and_keeps_every_serial(tmp_path, authority):
    request, first = _issue(authority, tmp_path, valid_days=365)
    with pytest.raises(
        CipherpostError,
        match=f"^{request.code} already holds certificates; use --replace to re-issue them$",
    ):
        ca.issue(authority, request, Level.MAT, tmp_path / "certs", NOW)
    serials = {x509.load_pem_x509_certificate(p.read_bytes()).serial_number for p in first}
    for _ in range(2):
        paths = ca.issue(authority, request, Level.MAT, tmp_path / "certs", NOW, replace=True)
        serials |= {x509.load_pem_x509_certificate(p.read_bytes()).serial_number for p in paths}
    ca.revoke(authority, request.code, "rotated out", NOW)
    crl = x509.load_der_x509_crl((tmp_path / "ca" / ca.CRL_FILE).read_bytes())
    assert {r.serial_number for r in crl} == serials and len(serials) == 6


def test_issue_defaults_and_bookkeeping(tmp_path, authority):
    keys = _keys()
    request = agency.EnrollmentRequest.parse(agency.build_request(keys, NOW))
    sign_path, _ = ca.issue(authority, request, Level.TOI_MAT, tmp_path / "new" / "certs", NOW)
    cert = x509.load_pem_x509_certificate(sign_path.read_bytes())
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)
    entry = authority.load_state()["issued"][request.code.text]
    assert (entry["clearance"], entry["not_after"], entry["revoked"]) == (
        "toi-mat",
        cert.not_valid_after_utc.isoformat(),
        False,
    )


def test_the_root_certificate_and_first_crl(tmp_path, authority):
    """The CA's own certificate: a critical CA constraint with no sub-CA, certificate and CRL
    signing only; its CRL numbered from 1, dated with the clock skew."""
    cert = authority.certificate
    assert cert.not_valid_before_utc == NOW - ca.CLOCK_SKEW
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    u = usage.value
    assert (u.key_cert_sign, u.crl_sign, u.digital_signature) == (True, True, True)
    for flag in ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"):
        assert getattr(u, flag) is False, flag
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical
    crl = x509.load_der_x509_crl((tmp_path / "ca" / ca.CRL_FILE).read_bytes())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    assert number.value.crl_number == 1 and not number.critical
    assert crl.last_update_utc == NOW - ca.CLOCK_SKEW
    assert authority.load_state()["crl_number"] == 1


def test_ca_certificate_in_der_and_a_folder_that_is_not_a_ca(tmp_path, authority):
    from cryptography.hazmat.primitives import serialization

    der = tmp_path / "ca.der"
    der.write_bytes(authority.certificate.public_bytes(serialization.Encoding.DER))
    assert ca.load_ca_certificate(der) == authority.certificate
    with pytest.raises(CipherpostError, match=r"is not a CA folder \(run: cipherpost ca init\)$"):
        ca.load_ca_state(tmp_path / "nothing")


def test_fingerprint_is_the_sha256_of_the_der_bytes(tmp_path, authority):
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = authority.certificate.public_bytes(serialization.Encoding.DER)
    assert ca.fingerprint(authority.certificate) == "SHA256:" + hashlib.sha256(der).hexdigest()
    _, (sign_path, _) = _issue(authority, tmp_path)
    sign = x509.load_pem_x509_certificate(sign_path.read_bytes())
    expected = hashlib.sha256(sign.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert ca.fingerprint(sign) == f"SHA256:{expected}"


def test_issue_audit_names_the_role_in_the_subject(tmp_path, authority):
    from keys.auditkey import AuditKeyRequest
    from keys.certs import ROLE_AUDIT, ROLE_WITNESS

    request, _ = _issue(authority, tmp_path)
    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    mine = AuditKeyRequest(request.code, public, NOW)
    for role, text in ((ROLE_AUDIT, "Xã Test (audit log)"), (ROLE_WITNESS, "Xã Test (witness)")):
        path = ca.issue_audit(authority, mine, tmp_path / "out", NOW, 30, role)
        assert path == tmp_path / "out" / f"{request.code}.{role}.crt"
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        (cn,) = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        assert cn.value == text
        assert decode_agency_extension(
            cert.extensions.get_extension_for_oid(AGENCY_EXTENSION_OID).value.value
        ) == (request.code, Level.THUONG, role)
    for role in ("sign", "official", ""):
        with pytest.raises(UsageError, match="^--role must be audit or witness$"):
            ca.issue_audit(authority, mine, tmp_path / "refused", NOW, 30, role)
    assert not (tmp_path / "refused").exists()


def test_a_new_ca_starts_its_bookkeeping_empty_and_its_directories_at_version_1(
    tmp_path, authority
):
    from keys.directory import Directory, TrustState, build_directory

    assert authority.load_state() == {
        "issued": {},
        "revoked": [],
        "crl_number": 1,  # the first CRL, written by init
        "directory_version": 0,
    }
    _issue(authority, tmp_path)
    d = Directory.load(
        build_directory(authority, tmp_path / "certs", NOW), TrustState(None), now=NOW
    )
    assert d.version == 1
