"""X.509 certificates that carry an agency code and a clearance.

Each agency has two certificates issued by the cipher department CA: one for
its Ed25519 signing key, one for its X25519 encryption key (separate keys: a
signature key is never used for key agreement). Both carry the cipherpost
agency extension, critical, DER ``SEQUENCE { UTF8String code, UTF8String
clearance, UTF8String role }`` under a self-assigned UUID OID arc (X.667).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from keys.codes import AgencyCode
from keys.errors import Refused
from keys.levels import Level

# 2.25.<UUID> is an arc anyone may assign without registration (ITU-T X.667).
_ARC = "2.25.189416703204266605776061777586430316067"
AGENCY_EXTENSION_OID = x509.ObjectIdentifier(f"{_ARC}.1")
ROLE_SIGN = "sign"
ROLE_ENCRYPT = "encrypt"
ROLE_AUDIT = "audit"  # a gateway's audit log key: signs checkpoints, nothing else
ROLE_WITNESS = "witness"  # the cipher department's witness key: cosigns checkpoints it checked
ROLE_OFFICIAL = "official"  # a person's signing key (chairman, head), certified under an agency
ROLES = (ROLE_SIGN, ROLE_ENCRYPT, ROLE_AUDIT, ROLE_WITNESS, ROLE_OFFICIAL)
# An official's position code (optional), a subject attribute beside the title (2.5.4.12).
POSITION_OID = x509.ObjectIdentifier(f"{_ARC}.2")
KEY_ID_BYTES = 16
MAX_CERT_BYTES = 16 * 1024


def key_id(raw_public_key: bytes) -> bytes:
    """The 16-byte identifier of a raw public key, as carried in envelopes."""
    return hashlib.sha256(b"cipherpost key id\x00" + raw_public_key).digest()[:KEY_ID_BYTES]


def encode_agency_extension(code: AgencyCode, clearance: Level, role: str) -> bytes:
    """DER for the agency extension value."""
    body = b"".join(_der_utf8(s) for s in (code.text, clearance.value, role))
    return b"\x30" + _der_len(len(body)) + body


def decode_agency_extension(value: bytes) -> tuple[AgencyCode, Level, str]:
    """Strictly decode the agency extension; raise ``ValueError`` on anything unexpected."""
    tag, body, rest = _der_take(value)
    if tag != 0x30 or rest:
        raise ValueError("agency extension is not one SEQUENCE")
    fields: list[str] = []
    while body:
        tag, item, body = _der_take(body)
        if tag != 0x0C:
            raise ValueError("agency extension field is not a UTF8String")
        fields.append(item.decode("utf-8"))
    if len(fields) != 3 or fields[2] not in ROLES:
        raise ValueError("agency extension has the wrong fields")
    return AgencyCode.parse(fields[0]), Level(fields[1]), fields[2]


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_utf8(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"\x0c" + _der_len(len(raw)) + raw


def _der_take(data: bytes) -> tuple[int, bytes, bytes]:
    if len(data) < 2:
        raise ValueError("short DER")
    tag, first = data[0], data[1]
    if first < 0x80:
        length, start = first, 2
    else:
        nbytes = first & 0x7F
        if nbytes == 0 or nbytes > 2 or len(data) < 2 + nbytes:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[2 : 2 + nbytes], "big")
        if length < 0x80 or (nbytes == 2 and length < 0x100):
            raise ValueError("non-minimal DER length")
        start = 2 + nbytes
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, data[start:end], data[end:]


@dataclass(frozen=True)
class AgencyCertificate:
    """A certificate issued by the CA to one key of one agency. Build with :meth:`parse`."""

    der: bytes
    code: AgencyCode
    name: str
    clearance: Level
    role: str
    public_key: bytes  # raw 32 bytes (Ed25519 or X25519 by role)
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    title: str = ""  # officials only: "Chủ tịch UBND xã", ...
    position: str = ""  # officials only: an optional position code

    @functools.cached_property  # asked for on every envelope checked
    def key_id(self) -> bytes:
        """Identifier of the certified key."""
        return key_id(self.public_key)

    @classmethod
    def parse(cls, der: bytes, ca: x509.Certificate) -> AgencyCertificate:
        """Parse ``der`` and check it was issued by ``ca``; raise :class:`Refused` otherwise."""
        if len(der) > MAX_CERT_BYTES:
            raise Refused("certificate too large")
        try:
            cert = x509.load_der_x509_certificate(der)
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise Refused("certificate not issued by the trusted CA") from e
        try:
            ext = cert.extensions.get_extension_for_oid(AGENCY_EXTENSION_OID)
            if not ext.critical or not isinstance(ext.value, x509.UnrecognizedExtension):
                raise ValueError("agency extension must be critical")
            code, clearance, role = decode_agency_extension(ext.value.value)
            name = _attribute(cert, x509.NameOID.COMMON_NAME)
            title = _attribute(cert, x509.NameOID.TITLE)
            position = _attribute(cert, POSITION_OID)
            pub = cert.public_key()
            want = X25519PublicKey if role == ROLE_ENCRYPT else Ed25519PublicKey
            if not isinstance(pub, want):
                raise ValueError("key type does not match the certificate role")
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        except (ValueError, x509.ExtensionNotFound) as e:
            raise Refused(f"not a cipherpost agency certificate: {e}") from e
        return cls(
            der=der,
            code=code,
            name=name,
            clearance=clearance,
            role=role,
            public_key=raw,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            title=title,
            position=position,
        )

    def valid_at(self, now: dt.datetime) -> bool:
        """True if ``now`` is inside the validity period."""
        return self.not_before <= now <= self.not_after


def _attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""
