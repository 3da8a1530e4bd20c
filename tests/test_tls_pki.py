"""The TLS PKI for the broker: the cipher department's TLS CA, a holder's own key and request."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agents.cli import main
from keys import tls
from keys.errors import CipherpostError

LOGIN = "000.01.12.H41"


def test_a_holder_makes_its_key_the_department_issues_its_login_certificate(
    state_env, tmp_path, capsys
):
    ca_dir, holder = tmp_path / "ca", tmp_path / "holder"
    assert main(["ca", "init", "--dir", str(ca_dir)]) == 0
    assert main(["ca", "tls-init", "--ca", str(ca_dir)]) == 0
    # The TLS CA key is sealed under the CA passphrase, like the root's.
    assert (ca_dir / tls.TLS_CA_SEALED_KEY_FILE).exists()
    assert not (ca_dir / tls.TLS_CA_KEY_FILE).exists()
    assert main(["ca", "tls-init", "--ca", str(ca_dir)]) == 1  # never overwritten
    assert main(["broker", "tls-request", LOGIN, "--dir", str(holder)]) == 0
    key_path, request = holder / f"{LOGIN}.tls.key", holder / f"{LOGIN}.tls.csr"
    assert key_path.stat().st_mode & 0o077 == 0
    out = holder / f"{LOGIN}.tls.crt"
    assert main(["ca", "tls-issue", str(request), "--ca", str(ca_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "PRIVATE KEY" not in printed.out + printed.err
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    ca_cert = x509.load_pem_x509_certificate((ca_dir / tls.TLS_CA_CERT_FILE).read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == LOGIN
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    # The key the holder made is the key certified: nobody else ever saw it.
    held = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert held.public_key() == cert.public_key()


def test_a_request_with_a_bad_signature_or_two_names_is_refused():
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = tls.make_ca("t", now)
    der = x509.load_pem_x509_csr(tls.make_request(LOGIN, tls.new_key())).public_bytes(
        serialization.Encoding.DER
    )
    flipped = x509.load_der_x509_csr(der[:-1] + bytes([der[-1] ^ 1]))  # the signature's last byte
    with pytest.raises(CipherpostError, match="bad signature"):
        tls.issue_client(ca_cert, ca_key, flipped.public_bytes(serialization.Encoding.PEM), now)
    with pytest.raises(CipherpostError, match="not a TLS certificate request"):
        tls.issue_client(ca_cert, ca_key, b"junk", now)
    key = tls.new_key()
    two = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, LOGIN),
                    x509.NameAttribute(NameOID.COMMON_NAME, "000.02.12.H41"),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )

    with pytest.raises(CipherpostError, match="exactly one common name"):
        tls.issue_client(ca_cert, ca_key, two.public_bytes(serialization.Encoding.PEM), now)
