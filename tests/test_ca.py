import datetime as dt

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keys import agency, ca
from keys.certs import AGENCY_EXTENSION_OID, AgencyCertificate, decode_agency_extension
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused
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
