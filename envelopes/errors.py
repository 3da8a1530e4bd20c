"""Envelope errors, and the typed reasons every refusal carries.

Every verification or decryption failure is one type, :class:`EnvelopeRefused`
(exit code 3). It carries a :class:`Reason`: the kind of check that failed,
which maps to exactly one audit rule id (:attr:`Reason.rule_id`). The rule id
is a permanent, signed fact in the gateway's audit log, so it comes from this
type and never from matching message text. The message names the failed check
for the local operator; it is clipped and escaped (:func:`keys.errors.clip`)
because parts of it may come from the bytes being refused.

Caller mistakes (bad arguments) are :class:`keys.errors.UsageError`.
"""

from __future__ import annotations

import enum

from keys.errors import Refused, clip


class Reason(enum.Enum):
    """Why something was refused. The value is the slug of its audit rule id."""

    # The bytes themselves (nothing in them is verified yet).
    FORMAT = "format"
    OVERSIZED = "oversized"
    VERSION = "version"
    # The sender and its signature over the header.
    SENDER_UNKNOWN = "unknown-sender"
    SENDER_REVOKED = "revoked-sender"
    SENDER_CERTIFICATE = "sender-certificate"
    SENDER_KEY = "sender-key"
    SIGNATURE = "signature"
    # The signed header.
    EXPIRED = "expired"
    CLOCK = "clock"
    SENDER_CLEARANCE = "sender-clearance"
    RECIPIENT_UNKNOWN = "unknown-recipient"
    RECIPIENT_REVOKED = "revoked-recipient"
    RECIPIENT_CERTIFICATE = "recipient-certificate"
    RECIPIENT_KEY = "recipient-key"
    RECIPIENT_CLEARANCE = "recipient-clearance"
    RETIRED = "retired"
    # Segments.
    SEGMENT = "segment"
    SEGMENT_SIGNATURE = "segment-signature"
    # Opening (a recipient only).
    NOT_RECIPIENT = "not-recipient"
    STALE_KEY = "stale-key"
    KEY_COMMITMENT = "key-commitment"
    DECRYPT = "decrypt"
    PAYLOAD = "payload"
    # Officials' signatures inside the payload (a recipient only).
    OFFICIAL_UNKNOWN = "unknown-official"
    OFFICIAL_REVOKED = "revoked-official"
    OFFICIAL_AGENCY = "official-agency"
    OFFICIAL_SIGNATURE = "official-signature"
    SIGNED_FLAG = "signed-flag"
    # The gateway: who published, and what was decided before under this id.
    PUBLISHER_MISSING = "publisher-missing"
    PUBLISHER = "publisher"
    ID_REUSE = "id-reuse"
    PART_CONFLICT = "part-conflict"
    MISROUTED = "misrouted"
    # Notices (receipts, statuses, recalls, rejections).
    NOTICE_KIND = "notice-kind"
    NOTICE_EDGE = "notice-edge"
    # Delivery.
    UNDELIVERABLE = "undeliverable"

    @property
    def rule_id(self) -> str:
        """The audit rule id: ``invariant:<slug>`` (no policy rule can switch these off)."""
        if self is Reason.UNDELIVERABLE:
            return "undeliverable"  # not a check: the broker had no queue for a recipient
        return f"invariant:{self.value}"

    @property
    def text(self) -> str:
        """A fixed description: what a record says when the details are not verified facts."""
        return _TEXT[self]

    @property
    def before_signature(self) -> bool:
        """True if this check fails before any signature was verified: nothing the refused
        bytes say (sender, recipients, level, id) may be recorded as a fact."""
        return self in _UNVERIFIED


_TEXT = {
    Reason.FORMAT: "malformed message",
    Reason.OVERSIZED: "message larger than the limit",
    Reason.VERSION: "unsupported format version",
    Reason.SENDER_UNKNOWN: "signer is not in the directory",
    Reason.SENDER_REVOKED: "signer is revoked",
    Reason.SENDER_CERTIFICATE: "signer has no currently valid certificate",
    Reason.SENDER_KEY: "not signed with the signer's certified key",
    Reason.SIGNATURE: "bad signature",
    Reason.EXPIRED: "envelope expired",
    Reason.CLOCK: "envelope dated in the future",
    Reason.SENDER_CLEARANCE: "level above the sender's clearance",
    Reason.RECIPIENT_UNKNOWN: "recipient not in the directory",
    Reason.RECIPIENT_REVOKED: "recipient revoked",
    Reason.RECIPIENT_CERTIFICATE: "recipient has no currently valid certificate",
    Reason.RECIPIENT_KEY: "recipient addressed under a key not certified",
    Reason.RECIPIENT_CLEARANCE: "level above a recipient's clearance",
    Reason.RETIRED: "recipient code retired",
    Reason.SEGMENT: "segment out of place, of the wrong size or missing",
    Reason.SEGMENT_SIGNATURE: "bad segment signature",
    Reason.NOT_RECIPIENT: "not a recipient",
    Reason.STALE_KEY: "addressed to another key of this agency",
    Reason.KEY_COMMITMENT: "payload key does not match the key commitment",
    Reason.DECRYPT: "payload does not decrypt",
    Reason.PAYLOAD: "payload is malformed",
    Reason.OFFICIAL_UNKNOWN: "official's signature not certified by the cipher department",
    Reason.OFFICIAL_REVOKED: "official's certificate revoked or not valid",
    Reason.OFFICIAL_AGENCY: "official of another agency than the sender",
    Reason.OFFICIAL_SIGNATURE: "official's signature does not verify over this document",
    Reason.SIGNED_FLAG: "header's signed flag and the payload's signatures disagree",
    Reason.PUBLISHER_MISSING: "no broker-validated publisher (user_id)",
    Reason.PUBLISHER: "published by another login than the signer's",
    Reason.ID_REUSE: "envelope id already decided under another header",
    Reason.PART_CONFLICT: "another part already forwarded at this position",
    Reason.MISROUTED: "delivered in another agency's lane than its routing key's (CC/BCC)",
    Reason.NOTICE_KIND: "only the gateway issues rejection notices",
    Reason.NOTICE_EDGE: "notice not along an accepted exchange",
    Reason.UNDELIVERABLE: "no queue for a recipient",
}
_UNVERIFIED = frozenset(
    {
        Reason.FORMAT,
        Reason.OVERSIZED,
        Reason.VERSION,
        Reason.SENDER_UNKNOWN,
        Reason.SENDER_REVOKED,
        Reason.SENDER_CERTIFICATE,
        Reason.SENDER_KEY,
        Reason.SIGNATURE,
        Reason.PUBLISHER_MISSING,
        Reason.PUBLISHER,
        Reason.MISROUTED,
    }
)


class EnvelopeRefused(Refused):
    """The envelope (or notice) failed a check: malformed, forged, expired, not for us, ...

    ``reason`` says which kind of check; the message (clipped, escaped) says
    what exactly, for the local operator.
    """

    def __init__(self, reason: Reason, message: str | None = None) -> None:
        super().__init__(clip(message if message is not None else reason.text))
        self.reason = reason
