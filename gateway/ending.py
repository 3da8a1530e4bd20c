"""The documented end of an audit log, signed by the cipher department.

When a gateway's audit store is lost (a dead disk, a store restored from a
backup older than its last checkpoint), the log cannot go on: the gateway
restarts under a **new log id** and audit key, and the cipher department
records, with its CA key, that the old log **ended** at the last checkpoint
its witness holds. From then on:

- the witness refuses any checkpoint of the ended log beyond that size (an
  ended log still being written is a restored copy run under its old id) and
  keeps alarming on one smaller than it (a rollback), as before;
- ``audit verify`` of the new store reports the ended log as ended, not as
  deleted, and verifies the new log as usual.

File: ``{"ending": "<JSON text>", "signature": "<base64>"}``; the signature is
Ed25519 by the CA key over ``CONTEXT ‖`` the exact bytes of the ``ending``
text (never a re-encoding). The text holds the log's origin, the size and
root where it ends, its successor log id, a reason and the time.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.checkpoint import Checkpoint
from keys.ca import CertificateAuthority
from keys.errors import Refused, UsageError, clip

FORMAT = "cipherpost-audit-log-ending-v1"
CONTEXT = b"cipherpost audit log ending v1\x00"
MAX_BYTES = 16 * 1024
FILE_NAME = "ending.json"


@dataclass(frozen=True)
class Ending:
    """A verified ending of one log."""

    origin: str
    size: int
    root: bytes
    successor: str
    reason: str
    time: dt.datetime
    raw: bytes

    def describe(self) -> str:
        return (
            f"{self.origin} ended at size {self.size} on {self.time:%Y-%m-%d %H:%M}Z"
            f" (successor log {self.successor!r}: {self.reason})"
        )


def sign_ending(
    ca: CertificateAuthority, last: Checkpoint, successor: str, reason: str, now: dt.datetime
) -> bytes:
    """End ``last.origin`` at the witnessed checkpoint ``last`` (the CA signs)."""
    if not successor or any(c.isspace() or c == "/" for c in successor):
        raise UsageError("the successor log id must be non-empty, without spaces or '/'")
    if successor == last.log_id:
        raise UsageError("the successor must be a new log id: an ended log is never reused")
    text = json.dumps(
        {
            "format": FORMAT,
            "origin": last.origin,
            "size": last.size,
            "root": base64.b64encode(last.root).decode(),
            "successor": successor,
            "reason": clip(reason, 280),
            "time": now.isoformat(),
        },
        ensure_ascii=False,
    )
    signature = ca.private_key.sign(CONTEXT + text.encode())
    return (
        json.dumps({"ending": text, "signature": base64.b64encode(signature).decode()}, indent=2)
        + "\n"
    ).encode()


def read_ending(data: bytes, ca: x509.Certificate) -> Ending:
    """Verify an ending file against the CA certificate; :class:`Refused` if it does not hold."""
    if len(data) > MAX_BYTES:
        raise Refused("log ending file too large")
    try:
        outer = json.loads(data)
        text = outer["ending"]
        signature = base64.b64decode(outer["signature"], validate=True)
        if not isinstance(text, str):
            raise ValueError("ending is not a string")
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise Refused(f"not a log ending file: {e}") from None
    key = ca.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise Refused("the CA key is not Ed25519")
    try:
        key.verify(signature, CONTEXT + text.encode())
    except InvalidSignature:
        raise Refused("log ending: bad signature (not signed by this CA)") from None
    try:
        body = json.loads(text)
        if body["format"] != FORMAT:
            raise ValueError("unknown format")
        return Ending(
            origin=str(body["origin"]),
            size=int(body["size"]),
            root=base64.b64decode(body["root"], validate=True),
            successor=str(body["successor"]),
            reason=str(body["reason"]),
            time=dt.datetime.fromisoformat(body["time"]),
            raw=data,
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise Refused(f"log ending is malformed: {e}") from None
