"""An agency's own keys: enrollment, the enrollment request, loading at use.

``AGENCY_DIR`` holds:

- ``agency.json``  public facts (code, name, public keys), readable;
- ``keys.sec``     the Ed25519 signing seed and X25519 private key, encrypted
  (see :mod:`keys.keystore`), mode 0600;
- ``enrollment.req`` the request the cipher department turns into certificates;
- ``trust.json``   the directory trust state of this agency (pinned CA, highest
  directory version seen).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from keys import container
from keys.certs import key_id
from keys.codes import AgencyCode
from keys.errors import CipherpostError, KeyStoreError, Refused, UsageError
from keys.keystore import read_secret, write_secret

REQUEST_MAGIC = "cipherpost.enrollment/1"
REQUEST_CONTEXT = b"cipherpost enrollment v1\x00"
MAX_REQUEST_BYTES = 8 * 1024
MAX_NAME_LENGTH = 200
PUBLIC_FILE = "agency.json"
SECRET_FILE = "keys.sec"  # noqa: S105 - a file name, not a secret
REQUEST_FILE = "enrollment.req"
TRUST_FILE = "trust.json"

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_private(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """The 32 raw private bytes of a key."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class AgencyKeys:
    """An agency's decrypted private keys. Keep in memory only as long as needed."""

    code: AgencyCode
    name: str
    signing_key: Ed25519PrivateKey
    encryption_key: X25519PrivateKey

    @functools.cached_property  # derived once: asked for on every envelope
    def sign_public(self) -> bytes:
        """Raw Ed25519 public key."""
        return self.signing_key.public_key().public_bytes(*_RAW)

    @functools.cached_property
    def enc_public(self) -> bytes:
        """Raw X25519 public key."""
        return self.encryption_key.public_key().public_bytes(*_RAW)

    @functools.cached_property
    def sign_key_id(self) -> bytes:
        """Key id of the signing key."""
        return key_id(self.sign_public)

    @functools.cached_property
    def enc_key_id(self) -> bytes:
        """Key id of the encryption key."""
        return key_id(self.enc_public)


def validate_name(name: str) -> str:
    """An agency display name: non-empty, printable, bounded."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise UsageError(f"agency name must be 1..{MAX_NAME_LENGTH} printable characters")
    return name


@dataclass(frozen=True)
class EnrollmentRequest:
    """A signed request for certificates. Build with :meth:`parse` (checks the proof)."""

    code: AgencyCode
    name: str
    sign_public: bytes
    enc_public: bytes
    created: dt.datetime

    @classmethod
    def parse(cls, data: bytes) -> EnrollmentRequest:
        """Parse and check proof of possession of the signing key; :class:`Refused` otherwise."""
        if len(data) > MAX_REQUEST_BYTES:
            raise Refused("enrollment request too large")
        try:
            body, sig = container.unpack(data, REQUEST_MAGIC)
            code_s, name, sign_pk, enc_pk, created = msgpack.unpackb(
                body, raw=False, use_list=False
            )
            if not (isinstance(sign_pk, bytes) and len(sign_pk) == 32):
                raise ValueError("bad signing key")
            if not (isinstance(enc_pk, bytes) and len(enc_pk) == 32):
                raise ValueError("bad encryption key")
            if not isinstance(name, str) or not isinstance(created, int):
                raise ValueError("bad field types")
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
            raise Refused("not an enrollment request (malformed)") from e
        try:
            code = AgencyCode.parse(code_s)
        except UsageError as e:
            raise Refused(f"enrollment request: {e}") from e
        try:
            Ed25519PublicKey.from_public_bytes(sign_pk).verify(sig, REQUEST_CONTEXT + body)
        except InvalidSignature:
            raise Refused("enrollment request: proof of possession failed") from None
        return cls(
            code=code,
            name=validate_name(name),
            sign_public=sign_pk,
            enc_public=enc_pk,
            created=dt.datetime.fromtimestamp(created, dt.UTC),
        )


def build_request(keys: AgencyKeys, now: dt.datetime) -> bytes:
    """A request signed with the agency's own signing key (proof of possession)."""
    body = msgpack.packb(
        [keys.code.text, keys.name, keys.sign_public, keys.enc_public, int(now.timestamp())],
        use_bin_type=True,
    )
    return container.pack(REQUEST_MAGIC, REQUEST_CONTEXT, bytes(body), keys.signing_key)[0]


def enroll(
    directory: Path, code: AgencyCode, name: str, passphrase: bytes, now: dt.datetime
) -> AgencyKeys:
    """Make fresh keys in ``directory`` and write the enrollment request. Never overwrites."""
    name = validate_name(name)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (directory / SECRET_FILE).exists():
        raise CipherpostError(f"{directory} already holds agency keys; refusing to overwrite them")
    keys = AgencyKeys(
        code=code,
        name=name,
        signing_key=Ed25519PrivateKey.generate(),
        encryption_key=X25519PrivateKey.generate(),
    )
    secret = msgpack.packb(
        [code.text, name, raw_private(keys.signing_key), raw_private(keys.encryption_key)],
        use_bin_type=True,
    )
    write_secret(directory / SECRET_FILE, secret, passphrase)
    public = {
        "code": code.text,
        "name": name,
        "sign_public": keys.sign_public.hex(),
        "enc_public": keys.enc_public.hex(),
    }
    (directory / PUBLIC_FILE).write_text(json.dumps(public, ensure_ascii=False, indent=2) + "\n")
    (directory / REQUEST_FILE).write_bytes(build_request(keys, now))
    return keys


def load_agency(directory: Path, passphrase: bytes) -> AgencyKeys:
    """Decrypt the keys of the agency enrolled in ``directory``."""
    if not (directory / SECRET_FILE).exists():
        raise KeyStoreError(f"{directory}: no agency keys here (run: cipherpost keys enroll)")
    secret = read_secret(directory / SECRET_FILE, passphrase)
    try:
        code_s, name, sign_seed, enc_sk = msgpack.unpackb(secret, raw=False, use_list=False)
        return AgencyKeys(
            code=AgencyCode.parse(code_s),
            name=name,
            signing_key=Ed25519PrivateKey.from_private_bytes(sign_seed),
            encryption_key=X25519PrivateKey.from_private_bytes(enc_sk),
        )
    except (ValueError, TypeError) as e:
        raise KeyStoreError(f"{directory}: damaged key file") from e
