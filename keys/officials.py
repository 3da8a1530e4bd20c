"""An official's personal signing key: enrollment on the official's own machine, the request.

A commune chairman, a vice-chairman, a department head signs documents with a
personal Ed25519 key; the cipher department certifies it under the agency
(certificate role ``official``: agency code, name, title and an optional
position code; :func:`keys.ca.issue_official`). The agency's own key stays
the seal of the envelope; an official's signature travels inside the
encrypted payload (:mod:`envelopes.signatures`).

``OFFICIAL_DIR`` holds:

- ``official.json``  public facts (agency, name, title, position, public key);
- ``official.sec``   the Ed25519 seed, encrypted (argon2id), mode 0600;
- ``official.req``   the request the cipher department certifies;
- ``official.crt``   the certificate, once issued (copied here by the official).

The request is ``msgpack([MAGIC, body, signature])``, ``body = msgpack([code,
name, title, position, public_key, created])``, signed by the official's own
key (proof of possession), like an agency's enrollment request.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keys import container
from keys.agency import raw_private, validate_name
from keys.certs import ROLE_OFFICIAL, AgencyCertificate, key_id
from keys.codes import AgencyCode
from keys.errors import CipherpostError, KeyStoreError, Refused, UsageError
from keys.keystore import read_secret, write_secret

REQUEST_MAGIC = "cipherpost.official-request/1"
REQUEST_CONTEXT = b"cipherpost official request v1\x00"
MAX_REQUEST_BYTES = 4 * 1024
MAX_TITLE_LENGTH = 200
MAX_POSITION_LENGTH = 32
PUBLIC_FILE = "official.json"
SECRET_FILE = "official.sec"  # noqa: S105 - a file name, not a secret
REQUEST_FILE = "official.req"
CERT_FILE = "official.crt"

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def validate_title(title: str) -> str:
    """An official's title ("Chủ tịch UBND xã An Bình"): non-empty, printable, bounded."""
    title = title.strip()
    if not title or len(title) > MAX_TITLE_LENGTH or not title.isprintable():
        raise UsageError(f"a title must be 1..{MAX_TITLE_LENGTH} printable characters")
    return title


def validate_position(position: str) -> str:
    """An optional position code: up to 32 letters, digits, ``.``, ``-`` or ``_``."""
    position = position.strip()
    if len(position) > MAX_POSITION_LENGTH or not all(
        c.isascii() and (c.isalnum() or c in ".-_") for c in position
    ):
        raise UsageError(f"a position code is up to {MAX_POSITION_LENGTH} of A-Z 0-9 . - _")
    return position


@dataclass(frozen=True)
class OfficialRequest:
    """A checked request for an official's certificate. Build with :meth:`parse`."""

    code: AgencyCode
    name: str
    title: str
    position: str
    public_key: bytes
    created: dt.datetime

    @property
    def key_id(self) -> bytes:
        """Identifier of the official's key (what the CA and the signatures name)."""
        return key_id(self.public_key)

    @classmethod
    def parse(cls, data: bytes) -> OfficialRequest:
        """Parse and check proof of possession; :class:`Refused` otherwise."""
        if len(data) > MAX_REQUEST_BYTES:
            raise Refused("official request too large")
        try:
            body, sig = container.unpack(data, REQUEST_MAGIC)
            code_s, name, title, position, public, created = msgpack.unpackb(
                body, raw=False, use_list=False, max_map_len=0
            )
            if not (isinstance(public, bytes) and len(public) == 32):
                raise ValueError("bad public key")
            if not all(isinstance(v, str) for v in (code_s, name, title, position)):
                raise ValueError("bad text field")
            if not isinstance(created, int) or isinstance(created, bool) or created < 0:
                raise ValueError("bad time")
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
            raise Refused("not an official's request (malformed)") from e
        try:
            code = AgencyCode.parse(code_s)
            name, title = validate_name(name), validate_title(title)
            position = validate_position(position)
        except UsageError as e:
            raise Refused(f"official request: {e}") from e
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig, REQUEST_CONTEXT + body)
        except InvalidSignature:
            raise Refused("official request: proof of possession failed") from None
        return cls(code, name, title, position, public, dt.datetime.fromtimestamp(created, dt.UTC))


def build_request(
    key: Ed25519PrivateKey,
    code: AgencyCode,
    name: str,
    title: str,
    position: str,
    now: dt.datetime,
) -> bytes:
    """A request signed with the official's own key (proof of possession)."""
    public = key.public_key().public_bytes(*_RAW)
    body = msgpack.packb(
        [code.text, name, title, position, public, int(now.timestamp())], use_bin_type=True
    )
    return container.pack(REQUEST_MAGIC, REQUEST_CONTEXT, bytes(body), key)[0]


@dataclass(frozen=True)
class OfficialKeys:
    """An official's decrypted key and, once issued, certificate (DER)."""

    code: AgencyCode
    name: str
    title: str
    position: str
    signing_key: Ed25519PrivateKey
    certificate: bytes

    @property
    def key_id(self) -> bytes:
        """Identifier of the official's key."""
        return key_id(self.signing_key.public_key().public_bytes(*_RAW))


def enroll_official(
    directory: Path,
    code: AgencyCode,
    name: str,
    title: str,
    position: str,
    passphrase: bytes,
    now: dt.datetime,
) -> OfficialRequest:
    """Make a fresh key in ``directory`` (never overwriting one) and write the request."""
    name, title, position = validate_name(name), validate_title(title), validate_position(position)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (directory / SECRET_FILE).exists():
        raise CipherpostError(f"{directory} already holds an official's key; refusing to overwrite")
    key = Ed25519PrivateKey.generate()
    secret = msgpack.packb([code.text, raw_private(key)], use_bin_type=True)
    write_secret(directory / SECRET_FILE, secret, passphrase)
    request = build_request(key, code, name, title, position, now)
    public = {
        "agency": code.text,
        "name": name,
        "title": title,
        "position": position,
        "public_key": key.public_key().public_bytes(*_RAW).hex(),
    }
    (directory / PUBLIC_FILE).write_text(json.dumps(public, ensure_ascii=False, indent=2) + "\n")
    (directory / REQUEST_FILE).write_bytes(request)
    return OfficialRequest.parse(request)


def load_official(directory: Path, passphrase: bytes, ca: x509.Certificate) -> OfficialKeys:
    """Decrypt the official's key and check the certificate the CA issued for it."""
    if not (directory / SECRET_FILE).exists():
        raise KeyStoreError(
            f"{directory}: no official's key here (run: cipherpost official enroll)"
        )
    cert_path = directory / CERT_FILE
    if not cert_path.exists():
        raise CipherpostError(
            f"{directory} has no certificate yet: copy the one the cipher department issued"
            f" to {cert_path}"
        )
    try:
        pem = cert_path.read_bytes()
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError as e:
        raise CipherpostError(f"{cert_path} is not a certificate") from e
    cert = AgencyCertificate.parse(der, ca)
    secret = read_secret(directory / SECRET_FILE, passphrase)
    try:
        code_s, seed = msgpack.unpackb(secret, raw=False, use_list=False)
        key = Ed25519PrivateKey.from_private_bytes(seed)
    except (ValueError, TypeError) as e:
        raise KeyStoreError(f"{directory}: damaged key file") from e
    if cert.role != ROLE_OFFICIAL or cert.public_key != key.public_key().public_bytes(*_RAW):
        raise CipherpostError(f"{cert_path} does not certify the key in {directory}")
    if cert.code.text != code_s:
        raise CipherpostError(f"{cert_path} certifies an official of another agency")
    return OfficialKeys(cert.code, cert.name, cert.title, cert.position, key, der)
