"""Signed notices: receipts and statuses from recipients, rejections from the gateway.

``notice = msgpack([MAGIC, body, signature])``, ``signature = Ed25519(signer,
CONTEXT ‖ body)``, ``body = msgpack([kind, envelope_id, header_hash, signer,
addressee, status, rule_id, reason, time, note])``. Like envelope headers, the
body bytes are kept exactly as received and verified against the signer's
certificate in the directory.

Status codes follow edXML practice (QCVN 102:2016): 01 arrived, 02 rejected,
03 accepted, 04 assigned, 05 processing, 06 completed, 13 recall requested,
15 recall agreed, 16 recall refused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from envelopes import _crypto
from envelopes.errors import EnvelopeRefused, Reason
from keys import container
from keys.codes import AgencyCode
from keys.directory import Directory
from keys.errors import UsageError

MAGIC = "cipherpost.notice/1"
CONTEXT = b"cipherpost notice v1\x00"
MAX_NOTICE_BYTES = 4 * 1024
MAX_TEXT = 280  # characters of free text (note, reason): a notice is not a letter

KIND_RECEIPT = "receipt"
KIND_STATUS = "status"
KIND_RECALL = "recall"  # from the sender to a recipient (status 13)
KIND_REJECTION = "rejection"  # from the gateway only
KINDS = (KIND_RECEIPT, KIND_STATUS, KIND_RECALL, KIND_REJECTION)

STATUS_NAMES = {
    "01": "arrived",
    "02": "rejected",
    "03": "accepted",
    "04": "assigned",
    "05": "processing",
    "06": "completed",
    "13": "recall requested",
    "15": "recall agreed",
    "16": "recall refused",
}
REPLY_STATUSES = ("02", "03", "04", "05", "06")
GATEWAY_REFUSED = "refused"
# Which status each kind may carry: a receipt is 01, a recall 13 (from the sender); a status
# from a recipient is 02-06 or its answer to a recall (15, 16); a rejection the gateway's own.
KIND_STATUSES = {
    KIND_RECEIPT: ("01",),
    KIND_STATUS: ("02", "03", "04", "05", "06", "15", "16"),
    KIND_RECALL: ("13",),
    KIND_REJECTION: (GATEWAY_REFUSED,),
}


@dataclass(frozen=True)
class Notice:
    """A verified (or freshly signed) notice."""

    raw: bytes
    kind: str
    envelope_id: bytes
    header_hash: bytes
    signer: AgencyCode
    addressee: AgencyCode
    status: str
    rule_id: str
    reason: str
    time: dt.datetime
    note: str

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "kind": self.kind,
            "envelope_id": self.envelope_id.hex(),
            "signer": self.signer.text,
            "addressee": self.addressee.text,
            "status": self.status,
            "status_name": STATUS_NAMES.get(self.status, self.status),
            "rule_id": self.rule_id,
            "reason": self.reason,
            "time": self.time.isoformat(),
            "note": self.note,
        }


def sign_notice(
    key: Ed25519PrivateKey,
    *,
    kind: str,
    envelope_id: bytes,
    header_hash: bytes,
    signer: AgencyCode,
    addressee: AgencyCode,
    status: str,
    now: dt.datetime,
    rule_id: str = "",
    reason: str = "",
    note: str = "",
) -> Notice:
    """Build and sign a notice."""
    if kind not in KINDS:
        raise UsageError(f"unknown notice kind {kind!r}")
    if status not in KIND_STATUSES[kind]:
        raise UsageError(
            f"a {kind} carries status {' or '.join(KIND_STATUSES[kind])}, not {status!r}"
        )
    if len(note) > MAX_TEXT or len(reason) > MAX_TEXT:
        raise UsageError(f"note and reason are limited to {MAX_TEXT} characters")
    body = bytes(
        msgpack.packb(
            [
                kind,
                envelope_id,
                header_hash,
                signer.text,
                addressee.text,
                status,
                rule_id,
                reason,
                int(now.timestamp()),
                note,
            ],
            use_bin_type=True,
        )
    )
    raw, _ = container.pack(MAGIC, CONTEXT, body, key)
    return _parse_body(raw, body)


def parse_notice(raw: bytes) -> tuple[Notice, bytes]:
    """Decode a notice without checking its signature; returns it and the signature."""
    if len(raw) > MAX_NOTICE_BYTES:
        raise EnvelopeRefused(Reason.OVERSIZED, "notice is larger than the limit")
    try:
        body, sig = container.unpack(raw, MAGIC)
    except ValueError as e:
        raise EnvelopeRefused(Reason.FORMAT, "notice is malformed") from e
    return _parse_body(raw, body), sig


def verify_notice(raw: bytes, directory: Directory, now: dt.datetime) -> Notice:
    """Parse and check the signer's signature against its certificate in the directory."""
    notice, sig = parse_notice(raw)
    entry = directory.entries.get(notice.signer.text)
    if entry is None:
        raise EnvelopeRefused(
            Reason.SENDER_UNKNOWN, f"notice signer {notice.signer} is not in the directory"
        )
    if entry.revoked or not entry.sign.valid_at(now):
        raise EnvelopeRefused(
            Reason.SENDER_REVOKED, f"notice signer {notice.signer} is revoked or not valid"
        )
    body = msgpack.unpackb(raw, raw=False, use_list=False)[1]
    if not _crypto.verify_signature(entry.sign.public_key, sig, CONTEXT, body):
        raise EnvelopeRefused(Reason.SIGNATURE, "bad notice signature")
    return notice


def _parse_body(raw: bytes, body: bytes) -> Notice:
    try:
        (kind, envelope_id, header_hash, signer, addressee, status, rule_id, reason, when, note) = (
            msgpack.unpackb(body, raw=False, use_list=False, max_map_len=0, max_ext_len=0)
        )
        if kind not in KINDS or status not in KIND_STATUSES[kind]:
            raise ValueError("kind or status")
        for value in (rule_id, reason, note, status):
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise ValueError("text field")
        if not (isinstance(envelope_id, bytes) and len(envelope_id) == 16):
            raise ValueError("envelope id")
        if not (isinstance(header_hash, bytes) and len(header_hash) in (0, 32)):
            raise ValueError("header hash")
        if not isinstance(when, int) or isinstance(when, bool) or not 0 <= when < 1 << 40:
            raise ValueError("time")
        if not isinstance(signer, str) or not isinstance(addressee, str):
            raise ValueError("codes")
        return Notice(
            raw,
            kind,
            envelope_id,
            header_hash,
            AgencyCode.parse(signer),
            AgencyCode.parse(addressee),
            status,
            rule_id,
            reason,
            dt.datetime.fromtimestamp(when, dt.UTC),
            note,
        )
    except (ValueError, TypeError, UsageError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise EnvelopeRefused(Reason.FORMAT, "notice is malformed") from e
