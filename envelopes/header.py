"""The envelope header: what the gateway reads and everyone verifies.

``header_bytes = msgpack([MAGIC, VERSION, envelope_id, created, expires,
sender_code, sender_kid, [level, [caveat, ...]], urgency, payload_size,
segment_size, [[code, kid, wrapped_key], ...], key_commitment,
stream_header])``

The bytes are kept exactly as received (:attr:`Header.raw`); signatures and
the header hash are computed over them, never over a re-encoding.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

import msgpack

from envelopes import _crypto
from envelopes.errors import EnvelopeRefused, Reason
from keys.certs import KEY_ID_BYTES
from keys.codes import AgencyCode
from keys.errors import CipherpostError
from keys.levels import Level, Urgency

MAGIC = "cipherpost.envelope"
VERSION = 1
ENVELOPE_ID_BYTES = 16
MAX_HEADER_BYTES = 256 * 1024
MAX_RECIPIENTS = 1000
MAX_CAVEATS = 16
MAX_CAVEAT_LENGTH = 64
MIN_SEGMENT_SIZE = 1024
MAX_SEGMENT_SIZE = 4 * 1024 * 1024
DEFAULT_SEGMENT_SIZE = 1024 * 1024
MAX_PAYLOAD_BYTES = 1 << 40  # 1 TiB
MAX_LIFETIME = dt.timedelta(days=366)
_FIELDS = 14


@dataclass(frozen=True)
class Recipient:
    """One recipient entry: agency code, encryption key id, HPKE-wrapped payload key."""

    code: AgencyCode
    key_id: bytes
    wrapped_key: bytes


@dataclass(frozen=True)
class Header:
    """A parsed header. Build with :meth:`parse` or :meth:`build`."""

    raw: bytes
    envelope_id: bytes
    created: dt.datetime
    expires: dt.datetime
    sender: AgencyCode
    sender_key_id: bytes
    level: Level
    caveats: tuple[str, ...]
    urgency: Urgency
    payload_size: int
    segment_size: int
    recipients: tuple[Recipient, ...]
    key_commitment: bytes
    stream_header: bytes

    @functools.cached_property
    def hash(self) -> bytes:
        """SHA-256 of the exact header bytes: binds segments and payload to this header."""
        return _crypto.sha256(self.raw)

    @property
    def segment_count(self) -> int:
        """How many segments the payload must have."""
        return max(1, -(-self.payload_size // self.segment_size))

    def segment_plaintext_size(self, index: int) -> int:
        """Plaintext bytes segment ``index`` must carry."""
        last = self.segment_count - 1
        if index < last:
            return self.segment_size
        return self.payload_size - last * self.segment_size

    def recipient(self, code: AgencyCode) -> Recipient | None:
        """The entry for ``code``, if it is a recipient."""
        for r in self.recipients:
            if r.code == code:
                return r
        return None

    @classmethod
    def build(
        cls,
        *,
        envelope_id: bytes,
        created: dt.datetime,
        expires: dt.datetime,
        sender: AgencyCode,
        sender_key_id: bytes,
        level: Level,
        caveats: tuple[str, ...],
        urgency: Urgency,
        payload_size: int,
        segment_size: int,
        recipients: tuple[Recipient, ...],
        key_commitment: bytes,
        stream_header: bytes,
        version: int = VERSION,
    ) -> Header:
        """Encode a header; the result is parsed back so it obeys every rule a reader applies."""
        raw = msgpack.packb(
            [
                MAGIC,
                version,
                envelope_id,
                int(created.timestamp()),
                int(expires.timestamp()),
                sender.text,
                sender_key_id,
                [level.value, list(caveats)],
                urgency.value,
                payload_size,
                segment_size,
                [[r.code.text, r.key_id, r.wrapped_key] for r in recipients],
                key_commitment,
                stream_header,
            ],
            use_bin_type=True,
        )
        try:
            return cls.parse(raw)
        except EnvelopeRefused as e:
            raise CipherpostError(f"cannot build this envelope: {e}") from e

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        """Strictly decode header bytes; :class:`EnvelopeRefused` for anything off."""
        if len(raw) > MAX_HEADER_BYTES:
            raise EnvelopeRefused(Reason.OVERSIZED, "envelope header is larger than the limit")
        try:
            fields = msgpack.unpackb(
                raw,
                raw=False,
                use_list=False,
                strict_map_key=True,
                max_bin_len=MAX_HEADER_BYTES,
                max_str_len=MAX_HEADER_BYTES,
                max_array_len=MAX_RECIPIENTS,
                max_map_len=0,
                max_ext_len=0,
            )
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
            raise EnvelopeRefused(Reason.FORMAT, "envelope header is not valid msgpack") from e
        if not isinstance(fields, tuple) or len(fields) < 2 or fields[0] != MAGIC:
            raise EnvelopeRefused(Reason.FORMAT, "not a cipherpost envelope")
        if fields[1] != VERSION:
            raise EnvelopeRefused(Reason.VERSION, f"unsupported envelope version {fields[1]!r}")
        if len(fields) != _FIELDS:
            raise EnvelopeRefused(Reason.FORMAT, "envelope header has the wrong number of fields")
        try:
            return cls._from_fields(raw, fields)
        except (ValueError, TypeError, OverflowError, CipherpostError) as e:
            raise EnvelopeRefused(Reason.FORMAT, f"envelope header is malformed: {e}") from e

    @classmethod
    def _from_fields(cls, raw: bytes, f: tuple[object, ...]) -> Header:
        (
            _,
            _,
            envelope_id,
            created,
            expires,
            sender,
            sender_kid,
            label,
            urgency,
            payload_size,
            segment_size,
            recipients,
            commitment,
            stream_header,
        ) = f
        envelope_id = _bin(envelope_id, ENVELOPE_ID_BYTES, "envelope id")
        created_at = dt.datetime.fromtimestamp(_int(created, 0, 1 << 40), dt.UTC)
        expires_at = dt.datetime.fromtimestamp(_int(expires, 0, 1 << 40), dt.UTC)
        if not created_at < expires_at <= created_at + MAX_LIFETIME:
            raise ValueError("expiry must be after creation and within 366 days")
        if not isinstance(label, tuple) or len(label) != 2:
            raise ValueError("label must be [level, caveats]")
        level = Level(label[0])
        caveats = label[1]
        if not isinstance(caveats, tuple) or len(caveats) > MAX_CAVEATS:
            raise ValueError("bad caveats")
        for c in caveats:
            if not isinstance(c, str) or not 0 < len(c) <= MAX_CAVEAT_LENGTH or not c.isprintable():
                raise ValueError("bad caveat")
        size = _int(payload_size, 4, MAX_PAYLOAD_BYTES)
        seg = _int(segment_size, MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE)
        if not isinstance(recipients, tuple) or not 1 <= len(recipients) <= MAX_RECIPIENTS:
            raise ValueError(f"must have 1..{MAX_RECIPIENTS} recipients")
        parsed: list[Recipient] = []
        seen: set[AgencyCode] = set()
        for r in recipients:
            if not isinstance(r, tuple) or len(r) != 3 or not isinstance(r[0], str):
                raise ValueError("bad recipient entry")
            code = AgencyCode.parse(r[0])
            if code in seen:
                raise ValueError(f"recipient {code} listed twice")
            seen.add(code)
            parsed.append(
                Recipient(
                    code,
                    _bin(r[1], KEY_ID_BYTES, "recipient key id"),
                    _bin(r[2], _crypto.WRAPPED_KEY_BYTES, "wrapped key"),
                )
            )
        if not isinstance(sender, str):
            raise ValueError("bad sender")
        return cls(
            raw=raw,
            envelope_id=envelope_id,
            created=created_at,
            expires=expires_at,
            sender=AgencyCode.parse(sender),
            sender_key_id=_bin(sender_kid, KEY_ID_BYTES, "sender key id"),
            level=level,
            caveats=tuple(str(c) for c in caveats),
            urgency=Urgency(urgency),
            payload_size=size,
            segment_size=seg,
            recipients=tuple(parsed),
            key_commitment=_bin(commitment, 32, "key commitment"),
            stream_header=_bin(stream_header, _crypto.STREAM_HEADER_BYTES, "stream header"),
        )


def _bin(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} must be {length} bytes")
    return value


def _int(value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"integer out of range {low}..{high}")
    return value
