"""A gateway's audit key: a separate Ed25519 key that signs audit checkpoints only.

The gateway makes it in its own key folder (``audit.key``, encrypted like the
agency keys) with a request proving possession (``audit.req``); the cipher
department certifies it (``ca issue-audit``), giving ``<CODE>.audit.crt``: an
agency certificate with the role ``audit``. Whoever holds the CA certificate
can then check any checkpoint offline.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keys import container
from keys.agency import raw_private
from keys.certs import ROLE_AUDIT, AgencyCertificate
from keys.codes import AgencyCode
from keys.errors import CipherpostError, KeyStoreError, Refused, UsageError
from keys.keystore import read_secret, write_secret

AUDIT_KEY_FILE = "audit.key"
AUDIT_REQUEST_FILE = "audit.req"
AUDIT_CERT_FILE = "audit.crt"
REQUEST_MAGIC = "cipherpost-audit-key-request-v1"
REQUEST_CONTEXT = b"cipherpost audit key request v1\x00"
MAX_REQUEST_BYTES = 4096


@dataclass(frozen=True)
class AuditKeyRequest:
    """A checked request to certify an audit key. Build with :meth:`parse`."""

    code: AgencyCode
    public_key: bytes
    created: dt.datetime

    @classmethod
    def parse(cls, data: bytes) -> AuditKeyRequest:
        """Parse and check proof of possession; :class:`Refused` otherwise."""
        if len(data) > MAX_REQUEST_BYTES:
            raise Refused("audit key request too large")
        try:
            body, sig = container.unpack(data, REQUEST_MAGIC)
            code_s, public, created = msgpack.unpackb(body, raw=False, use_list=False)
            if not (isinstance(public, bytes) and len(public) == 32) or not isinstance(
                created, int
            ):
                raise ValueError("bad fields")
            code = AgencyCode.parse(code_s)
        except (ValueError, TypeError, UsageError, msgpack.ExtraData, msgpack.FormatError) as e:
            raise Refused("not an audit key request (malformed)") from e
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig, REQUEST_CONTEXT + body)
        except InvalidSignature:
            raise Refused("audit key request: proof of possession failed") from None
        return cls(code, public, dt.datetime.fromtimestamp(created, dt.UTC))


def make_audit_key(directory: Path, code: AgencyCode, passphrase: bytes, now: dt.datetime) -> Path:
    """Make the audit key in ``directory`` and write its request; never overwrites."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (directory / AUDIT_KEY_FILE).exists():
        raise CipherpostError(f"{directory} already holds an audit key; refusing to overwrite it")
    key = Ed25519PrivateKey.generate()
    write_secret(directory / AUDIT_KEY_FILE, raw_private(key), passphrase)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    body = msgpack.packb([code.text, public, int(now.timestamp())], use_bin_type=True)
    request = container.pack(REQUEST_MAGIC, REQUEST_CONTEXT, bytes(body), key)[0]
    path = directory / AUDIT_REQUEST_FILE
    path.write_bytes(request)
    return path


def load_audit_key(directory: Path, passphrase: bytes) -> Ed25519PrivateKey:
    """Decrypt the audit key of the gateway whose key folder is ``directory``."""
    path = directory / AUDIT_KEY_FILE
    if not path.exists():
        raise KeyStoreError(f"{directory}: no audit key here (run: cipherpost audit keygen)")
    try:
        return Ed25519PrivateKey.from_private_bytes(read_secret(path, passphrase))
    except ValueError as e:
        raise KeyStoreError(f"{path}: damaged audit key file") from e


def load_audit_certificate(
    path: Path, ca: x509.Certificate, role: str = ROLE_AUDIT
) -> AgencyCertificate:
    """An audit (or witness) certificate issued by ``ca``; :class:`Refused` otherwise."""
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {role} certificate {path}: {e.strerror}") from e
    return parse_audit_certificate(pem, ca, role)


def parse_audit_certificate(
    pem: bytes, ca: x509.Certificate, role: str = ROLE_AUDIT
) -> AgencyCertificate:
    """Parse a PEM certificate and check ``ca`` issued it for ``role`` (audit or witness)."""
    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        raise Refused(f"{role} certificate is not a PEM certificate") from None
    cert = AgencyCertificate.parse(der, ca)
    if cert.role != role:
        article = "an" if role[0] in "aeiou" else "a"
        raise Refused(
            f"certificate of {cert.code} is a {cert.role} certificate, not {article} {role} one"
        )
    return cert
