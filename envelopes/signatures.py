"""Officials' signatures: a detached signature over a document and its edXML metadata.

``signature = msgpack([MAGIC, body, sig])``, ``sig = Ed25519(official, CONTEXT ‖
body)``, ``body = msgpack([certificate_der, subject, notation, document_sha256,
document_size, signed_at])``. The body carries the official's certificate
(issued by the CA, role ``official``: agency, name, title, position), as a CMS
signature carries its signer's certificate: a recipient needs nothing but the
directory (the CA, and its CRL for revocations) to check it. The body bytes
are verified as received, never re-encoded.

Signatures travel inside the encrypted payload (``Metadata.signatures``); the
header says only that the document is signed (the caveat
:data:`SIGNED_CAVEAT`, inside the sender's signed header), which is all the
gateway sees. A recipient refuses an envelope whose flag and payload disagree,
and every signature that does not verify: never dropped silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack

from envelopes import _crypto
from envelopes.errors import EnvelopeRefused, Reason
from keys import container
from keys.certs import ROLE_OFFICIAL, AgencyCertificate
from keys.codes import AgencyCode
from keys.directory import Directory
from keys.errors import Refused, UsageError
from keys.officials import OfficialKeys

MAGIC = "cipherpost.official-signature/1"
CONTEXT = b"cipherpost official signature v1\x00"
MAX_SIGNATURE_BYTES = 8 * 1024
MAX_SIGNATURES = 8
MAX_TEXT = 4096
# In the label's caveats of the sender's signed header: "this payload carries official
# signatures". The gateway's policy reads it; every recipient checks it against the payload.
SIGNED_CAVEAT = "official-signature"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialSignature:
    """A parsed (and, from :func:`verify_signature`, verified) official's signature."""

    raw: bytes
    certificate: AgencyCertificate
    subject: str
    notation: str
    digest: bytes
    size: int
    signed_at: dt.datetime

    @property
    def signer(self) -> str:
        """``Nguyễn Văn A, Chủ tịch UBND xã An Bình``: as a person reads it."""
        c = self.certificate
        return f"{c.name}, {c.title}" if c.title else c.name

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the edXML signer fields: name, title, position)."""
        c = self.certificate
        return {
            "name": c.name,
            "title": c.title,
            "position": c.position,
            "agency": c.code.text,
            "official_key_id": c.key_id.hex(),
            "certificate_serial": str(c.serial),
            "subject": self.subject,
            "notation": self.notation,
            "signed_at": self.signed_at.isoformat(),
            "document_sha256": self.digest.hex(),
        }


def document_digest(src: BinaryIO) -> tuple[bytes, int]:
    """SHA-256 and size of a document stream, read in bounded chunks."""
    h, size = hashlib.sha256(), 0
    while chunk := src.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.digest(), size


def sign_document(
    official: OfficialKeys,
    src: BinaryIO,
    *,
    subject: str,
    notation: str = "",
    now: dt.datetime | None = None,
) -> bytes:
    """A detached signature by ``official`` over the document read from ``src`` and its
    subject and document number (edXML "Số, ký hiệu")."""
    for value in (subject, notation):
        if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
            raise UsageError(f"subject and number: printable text of at most {MAX_TEXT} chars")
    digest, size = document_digest(src)
    when = int((now or dt.datetime.now(dt.UTC)).timestamp())
    body = bytes(
        msgpack.packb(
            [official.certificate, subject, notation, digest, size, when], use_bin_type=True
        )
    )
    raw, _ = container.pack(MAGIC, CONTEXT, body, official.signing_key)
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise UsageError("the signature is too large (subject or number too long)")
    return raw


def _parse(raw: bytes) -> tuple[bytes, bytes, tuple[Any, ...]]:
    if not isinstance(raw, bytes) or len(raw) > MAX_SIGNATURE_BYTES:
        raise EnvelopeRefused(Reason.OFFICIAL_SIGNATURE, "official's signature is too large")
    try:
        body, sig = container.unpack(raw, MAGIC)
        fields = msgpack.unpackb(body, raw=False, use_list=False, max_map_len=0, max_ext_len=0)
        if not isinstance(fields, tuple) or len(fields) != 6:
            raise ValueError("field count")
        cert, subject, notation, digest, size, when = fields
        if not isinstance(cert, bytes) or not isinstance(digest, bytes) or len(digest) != 32:
            raise ValueError("bytes fields")
        if not isinstance(subject, str) or not isinstance(notation, str):
            raise ValueError("text fields")
        for n in (size, when):
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 1 << 48:
                raise ValueError("integer fields")
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise EnvelopeRefused(Reason.OFFICIAL_SIGNATURE, "official's signature is malformed") from e
    return body, sig, fields


def verify_signature(
    raw: bytes,
    directory: Directory,
    *,
    sender: AgencyCode,
    subject: str,
    notation: str,
    digest: bytes,
    size: int,
    now: dt.datetime,
) -> OfficialSignature:
    """Check one signature for a document sent by ``sender``: certified by the directory's
    CA as an official of ``sender``, not revoked in the directory's CRL, valid now, and
    signed over exactly this document, subject and number. :class:`EnvelopeRefused` with
    the reason otherwise."""
    body, sig, (cert_der, s_subject, s_notation, s_digest, s_size, when) = _parse(raw)
    if directory.ca_certificate is None:
        raise EnvelopeRefused(Reason.OFFICIAL_UNKNOWN, "no CA to check officials against")
    try:
        cert = AgencyCertificate.parse(cert_der, directory.ca_certificate)
    except Refused:
        raise EnvelopeRefused(
            Reason.OFFICIAL_UNKNOWN,
            "signed by an official the cipher department did not certify",
        ) from None
    who = f"{cert.name}, {cert.title}" if cert.title else cert.name
    if cert.role != ROLE_OFFICIAL:
        raise EnvelopeRefused(
            Reason.OFFICIAL_UNKNOWN, f"signed with a key certified as {cert.role}, not an official"
        )
    if cert.code != sender:
        # An official of another agency posing as one of the sender's: the seal and the
        # signature must name the same agency.
        raise EnvelopeRefused(
            Reason.OFFICIAL_AGENCY,
            f"signed by {who}, an official of {cert.code}, not of the sending agency {sender}",
        )
    revoked = directory.revoked_since.get(cert.serial)
    if revoked is not None:
        raise EnvelopeRefused(
            Reason.OFFICIAL_REVOKED,
            f"signed by {who}, whose certificate was revoked on {revoked:%Y-%m-%d %H:%M}Z"
            f" (directory version {directory.version})",
        )
    if not cert.valid_at(now):
        raise EnvelopeRefused(
            Reason.OFFICIAL_REVOKED, f"signed by {who}, whose certificate is not valid now"
        )
    if not _crypto.verify_signature(cert.public_key, sig, CONTEXT, body):
        raise EnvelopeRefused(Reason.OFFICIAL_SIGNATURE, f"the signature of {who} does not verify")
    if (s_digest, s_size) != (digest, size):
        raise EnvelopeRefused(
            Reason.OFFICIAL_SIGNATURE,
            f"the signature of {who} is over other bytes than this document",
        )
    if (s_subject, s_notation) != (subject, notation):
        raise EnvelopeRefused(
            Reason.OFFICIAL_SIGNATURE,
            f"the signature of {who} is over another subject or document number",
        )
    return OfficialSignature(
        raw, cert, s_subject, s_notation, s_digest, s_size, dt.datetime.fromtimestamp(when, dt.UTC)
    )


def verify_all(
    signatures: Sequence[bytes],
    caveats: Sequence[str],
    directory: Directory,
    *,
    sender: AgencyCode,
    subject: str,
    notation: str,
    digest: bytes,
    size: int,
    now: dt.datetime,
) -> tuple[OfficialSignature, ...]:
    """Every signature of a document, and the header's flag against them: a header saying
    "signed" over a payload without signatures (to pass a policy rule) is refused, and so
    is the reverse (signatures the gateway was not told of)."""
    flagged = SIGNED_CAVEAT in caveats
    if flagged != bool(signatures):
        raise EnvelopeRefused(
            Reason.SIGNED_FLAG,
            "the header says the document is signed by an official but the payload carries"
            " no signature"
            if flagged
            else "the payload carries officials' signatures the header does not declare",
        )
    return tuple(
        verify_signature(
            raw,
            directory,
            sender=sender,
            subject=subject,
            notation=notation,
            digest=digest,
            size=size,
            now=now,
        )
        for raw in signatures
    )
