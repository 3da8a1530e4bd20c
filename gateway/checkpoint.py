"""Signed checkpoints of an audit log: C2SP ``tlog-checkpoint`` in a C2SP ``signed-note``.

A checkpoint note reads::

    cipherpost.audit/000.00.99.G99/gw1      <- origin: log of gateway gw1 (code 000.00.99.G99)
    1234                                    <- tree size
    q5Fz...=                                <- root hash, base64
    time 1795859362123                      <- extension line: signing time, Unix ms
                                            <- blank line
    — cipherpost.audit/000.00.99.G99/gw1 AAAA...   <- key hash (4 bytes) + Ed25519 signature

The signature covers the text above the blank line, byte for byte. The key is
the gateway's audit key, certified by the cipher department CA (role
``audit``); a checkpoint file (``*.checkpoint.json``) carries the note and that
certificate, so it can be checked offline with the CA certificate alone.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keys.auditkey import parse_audit_certificate
from keys.certs import ROLE_WITNESS, AgencyCertificate
from keys.codes import AgencyCode
from keys.errors import Refused, UsageError

ORIGIN_PREFIX = "cipherpost.audit/"
COSIGN_CONTEXT = b"cipherpost checkpoint cosignature v1\x00"
SIGNATURE_PREFIX = "\u2014 "  # em dash + space, as signed-note specifies
MAX_NOTE_BYTES = 4096
MAX_FILE_BYTES = 64 * 1024


def origin_for(code: AgencyCode, log_id: str) -> str:
    """The origin line of a gateway's log."""
    if not log_id or any(c.isspace() or c == "/" for c in log_id):
        raise UsageError(f"log id {log_id!r} must be non-empty, without spaces or '/'")
    return f"{ORIGIN_PREFIX}{code.text}/{log_id}"


def key_hash(name: str, public_key: bytes) -> bytes:
    """signed-note key hash: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ Ed25519 key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n\x01" + public_key).digest()[:4]


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint note (signature checked only by :func:`verify_checkpoint`)."""

    origin: str
    code: AgencyCode
    log_id: str
    size: int
    root: bytes
    time: dt.datetime
    body: bytes
    key_hash: bytes
    signature: bytes
    note: bytes

    def describe(self) -> str:
        """One line naming this checkpoint, for alarms and errors."""
        return (
            f"{self.origin} size {self.size} root {self.root.hex()[:16]}… "
            f"at {self.time.isoformat(timespec='seconds')}"
        )


def sign_checkpoint(
    key: Ed25519PrivateKey,
    code: AgencyCode,
    log_id: str,
    size: int,
    root: bytes,
    now: dt.datetime,
) -> bytes:
    """The signed note of a checkpoint."""
    origin = origin_for(code, log_id)
    body = (
        f"{origin}\n{size}\n{base64.b64encode(root).decode()}\ntime {int(now.timestamp() * 1000)}\n"
    ).encode()
    sig = key_hash(origin, _raw(key.public_key())) + key.sign(body)
    return body + f"\n{SIGNATURE_PREFIX}{origin} {base64.b64encode(sig).decode()}\n".encode()


def parse_checkpoint(note: bytes) -> Checkpoint:
    """Strictly parse a checkpoint note; :class:`Refused` if it is not one of ours."""
    if len(note) > MAX_NOTE_BYTES:
        raise Refused("checkpoint note too large")
    try:
        text = note.decode("utf-8")
        body, sep, sigs = text.partition("\n\n")
        if not sep:
            raise ValueError("no signature block")
        lines = body.split("\n")
        origin, size_s, root_s, time_line = lines
        if not origin.startswith(ORIGIN_PREFIX):
            raise ValueError("not a cipherpost audit origin")
        code_s, slash, log_id = origin[len(ORIGIN_PREFIX) :].partition("/")
        if not slash or origin_for(AgencyCode.parse(code_s), log_id) != origin:
            raise ValueError("malformed origin")
        if not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
            raise ValueError("malformed tree size")
        root = base64.b64decode(root_s, validate=True)
        if len(root) != 32:
            raise ValueError("root hash is not 32 bytes")
        word, _, ms = time_line.partition(" ")
        if word != "time" or not ms.isdigit():
            raise ValueError("missing time extension line")
        sig_lines = sigs.split("\n")
        if len(sig_lines) != 2 or sig_lines[1] != "":
            raise ValueError("expected exactly one signature line")
        if not sig_lines[0].startswith(SIGNATURE_PREFIX):
            raise ValueError("malformed signature line")
        name, _, sig_b64 = sig_lines[0][len(SIGNATURE_PREFIX) :].rpartition(" ")
        if name != origin:
            raise ValueError("signature key name is not the log origin")
        sig = base64.b64decode(sig_b64, validate=True)
        if len(sig) != 4 + 64:
            raise ValueError("signature is not key hash + Ed25519")
        return Checkpoint(
            origin=origin,
            code=AgencyCode.parse(code_s),
            log_id=log_id,
            size=int(size_s),
            root=root,
            time=dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC),
            body=(body + "\n").encode(),
            key_hash=sig[:4],
            signature=sig[4:],
            note=note,
        )
    except (ValueError, UnicodeDecodeError, binascii.Error, UsageError) as e:
        raise Refused(f"not a cipherpost checkpoint: {e}") from None


def verify_checkpoint(note: bytes, certificate: AgencyCertificate) -> Checkpoint:
    """Parse and verify a checkpoint against the gateway's audit certificate."""
    cp = parse_checkpoint(note)
    if certificate.code != cp.code:
        raise Refused(f"checkpoint of {cp.code} but audit certificate of {certificate.code}")
    if key_hash(cp.origin, certificate.public_key) != cp.key_hash:
        raise Refused(f"checkpoint {cp.describe()} is not signed with this audit key")
    try:
        Ed25519PublicKey.from_public_bytes(certificate.public_key).verify(cp.signature, cp.body)
    except InvalidSignature:
        raise Refused(f"bad signature on checkpoint {cp.describe()}") from None
    if not certificate.not_before <= cp.time <= certificate.not_after:
        raise Refused(f"checkpoint {cp.describe()} signed outside the audit certificate's validity")
    return cp


def checkpoint_file(note: bytes, certificate_pem: bytes) -> bytes:
    """A self-contained checkpoint file: the note and the audit certificate (JSON)."""
    return (
        json.dumps(
            {"checkpoint": note.decode(), "audit_certificate": certificate_pem.decode()},
            indent=2,
        )
        + "\n"
    ).encode()


@dataclass(frozen=True)
class VerifiedFile:
    checkpoint: Checkpoint
    certificate: AgencyCertificate
    certificate_pem: bytes
    cosigned: bool = False  # a CA-certified witness checked it against the log's history


def cosign(
    doc: dict[str, object], key: Ed25519PrivateKey, certificate_pem: bytes, when: dt.datetime
) -> dict[str, object]:
    """The checkpoint file ``doc`` with the witness's cosignature added.

    The witness signs, after checking the checkpoint's consistency with all it
    held before, ``COSIGN_CONTEXT ‖ time ‖ note`` (the gateway's signed note
    byte for byte): "this checkpoint extends everything I saw of this log".
    """
    note = str(doc["checkpoint"]).encode()
    t = int(when.timestamp())
    signature = key.sign(COSIGN_CONTEXT + t.to_bytes(8, "big") + note)
    entry = {
        "time": t,
        "signature": base64.b64encode(signature).decode(),
        "witness_certificate": certificate_pem.decode(),
    }
    previous = doc.get("cosignatures")
    return {**doc, "cosignatures": [*(previous if isinstance(previous, list) else []), entry]}


def _cosigned(doc: dict[str, object], note: bytes, ca: x509.Certificate) -> bool:
    """Whether a witness the CA certified cosigned this note (a bad cosignature refuses)."""
    items = doc.get("cosignatures", [])
    if not isinstance(items, list):
        raise Refused("checkpoint file: cosignatures must be a list")
    for item in items:
        try:
            cert = parse_audit_certificate(
                str(item["witness_certificate"]).encode(), ca, ROLE_WITNESS
            )
            t = int(item["time"])
            signature = base64.b64decode(item["signature"], validate=True)
            Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
                signature, COSIGN_CONTEXT + t.to_bytes(8, "big") + note
            )
        except (KeyError, TypeError, ValueError, binascii.Error, OverflowError):
            raise Refused("checkpoint file: malformed cosignature") from None
        except InvalidSignature:
            raise Refused("checkpoint file: bad witness cosignature") from None
        if cert.not_before.timestamp() <= t <= cert.not_after.timestamp():
            return True
    return False


def read_checkpoint_file(data: bytes, ca: x509.Certificate) -> VerifiedFile:
    """Parse a checkpoint file and verify it against the CA; :class:`Refused` otherwise."""
    if len(data) > MAX_FILE_BYTES:
        raise Refused("checkpoint file too large")
    try:
        doc = json.loads(data)
        note = doc["checkpoint"].encode()
        pem = doc["audit_certificate"].encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Refused(
            "not a checkpoint file (expected JSON with checkpoint and certificate)"
        ) from None
    cert = parse_audit_certificate(pem, ca)
    checkpoint = verify_checkpoint(note, cert)
    return VerifiedFile(checkpoint, cert, pem, _cosigned(doc, note, ca))
