"""TLS for the broker: the cipher department's TLS CA, node and client certificates.

The agency's Ed25519 signing and X25519 encryption keys never double as TLS keys: a TLS
key is its own P-256 key, made where it is used (the agent, the gateway, a broker node),
and only its public half travels, in a certificate request, to the cipher department.

Why a separate P-256 CA and not a sub-CA of the Ed25519 root: the root is made with
``path_length=0`` (it certifies agencies directly, never another CA), and P-256 is what
Erlang/OTP TLS (RabbitMQ) and OpenSSL (pika) both verify everywhere. The TLS CA lives in
the cipher department's CA folder beside the root; its certificate is what the broker
nodes trust (``ssl_options.cacertfile``) and what clients pin for the nodes.

A client certificate's common name is the broker login (RabbitMQ
``ssl_cert_login_from = common_name``, SASL EXTERNAL): whoever holds the key logs in as
that user, and the broker checks ``user_id`` against it as before.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.errors import CipherpostError
from keys.keystore import read_secret, write_private_file, write_secret

TLS_CA_CERT_FILE = "tls-ca.crt"
TLS_CA_KEY_FILE = "tls-ca.key"  # a throwaway CA (the native test cluster): PEM, mode 0600
TLS_CA_SEALED_KEY_FILE = "tls-ca.key.sec"  # the cipher department's: under the CA passphrase
TLS_CA_VALID_DAYS = 3650
CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_CSR_BYTES = 16 * 1024


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 TLS key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM: pika and RabbitMQ read it at start-up, so it is
    protected by its file mode (0600), as a web server's key is."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM bytes of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _usage(**on: bool) -> x509.KeyUsage:
    """Key usage with only the named bits set."""
    bits = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )  # fmt: skip
    return x509.KeyUsage(**{**bits, **on})


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(name: str, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed TLS CA (P-256) that issues node and client certificates only."""
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=TLS_CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def init_ca(
    directory: Path, name: str, now: dt.datetime, passphrase: bytes | None = None
) -> x509.Certificate:
    """Create the TLS CA in ``directory`` (the cipher department's CA folder, its key sealed
    with ``passphrase`` like the root's). Never overwrites one."""
    if (directory / TLS_CA_KEY_FILE).exists() or (directory / TLS_CA_SEALED_KEY_FILE).exists():
        raise CipherpostError(f"{directory} already holds a TLS CA; refusing to overwrite it")
    cert, key = make_ca(name, now)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if passphrase is None:
        write_private_file(directory / TLS_CA_KEY_FILE, key_pem(key))
    else:
        write_secret(directory / TLS_CA_SEALED_KEY_FILE, key_pem(key), passphrase)
    (directory / TLS_CA_CERT_FILE).write_bytes(cert_pem(cert))
    return cert


def open_ca(
    directory: Path, passphrase: bytes | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The TLS CA certificate and key from ``directory`` (``passphrase`` for a sealed key)."""
    sealed = directory / TLS_CA_SEALED_KEY_FILE
    try:
        cert = x509.load_pem_x509_certificate((directory / TLS_CA_CERT_FILE).read_bytes())
        if sealed.exists():
            if passphrase is None:
                raise CipherpostError(f"{sealed}: the TLS CA key needs the CA passphrase")
            pem = read_secret(sealed, passphrase)
        else:
            pem = (directory / TLS_CA_KEY_FILE).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
    except FileNotFoundError:
        raise CipherpostError(f"{directory} holds no TLS CA") from None
    except ValueError as e:
        raise CipherpostError(f"{directory}: unreadable TLS CA") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CipherpostError(f"{directory}: the TLS CA key is not an EC key")
    return cert, key


def make_request(common_name: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM certificate request for ``key`` with ``common_name`` (the broker login)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(common_name))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    usage: x509.ObjectIdentifier,
    now: dt.datetime,
    valid_days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def issue_client(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    request_pem: bytes,
    now: dt.datetime,
    valid_days: int = 365,
) -> x509.Certificate:
    """A client certificate for a request: its common name is the broker login it asked for.
    The request's own signature is checked (the requester holds the key)."""
    if len(request_pem) > MAX_CSR_BYTES:
        raise CipherpostError("TLS certificate request too large")
    try:
        csr = x509.load_pem_x509_csr(request_pem)
    except ValueError as e:
        raise CipherpostError("not a TLS certificate request (PEM)") from e
    public_key = csr.public_key()
    if not csr.is_signature_valid or not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CipherpostError("TLS certificate request: bad signature or not a P-256 key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not str(names[0].value):
        raise CipherpostError("TLS certificate request: exactly one common name (the login)")
    login = str(names[0].value)
    return _leaf(
        ca_cert, ca_key, login, public_key, ExtendedKeyUsageOID.CLIENT_AUTH, now, valid_days
    ).sign(ca_key, hashes.SHA256())


def issue_server(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    hosts: Iterable[str],
    now: dt.datetime,
    valid_days: int = 365,
) -> x509.Certificate:
    """A broker node's certificate: every host name or IP address it answers on in the SAN."""
    hosts = list(hosts)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return (
        _leaf(
            ca_cert,
            ca_key,
            hosts[0],
            key.public_key(),
            ExtendedKeyUsageOID.SERVER_AUTH,
            now,
            valid_days,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def write_key_and_cert(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, key_path: Path, cert_path: Path
) -> None:
    """The key (mode 0600) and its certificate, as PEM files."""
    write_private_file(key_path, key_pem(key))
    cert_path.write_bytes(cert_pem(cert))
