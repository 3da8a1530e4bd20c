"""Build envelopes that ``envelopes.seal`` refuses to build: what an enrolled but rogue
agency (THREATS A1) can put on the wire with its own keys and the format's primitives.

Used by the negative tests and by the vector generator (``tests/vectors/generate.py``).
Everything not overridden is exactly what ``seal`` would produce, so each forgery
differs from a valid envelope in the one field under test.
"""

from __future__ import annotations

import datetime as dt
import io
import secrets
from dataclasses import dataclass, field
from typing import Any

import msgpack

from envelopes import _crypto
from envelopes.frames import (
    FrameReader,
    SegmentFrame,
    encode_header_frame,
    encode_segment_frame,
    parse_header_frame,
    parse_segment_frame,
    segment_signed_message,
)
from envelopes.header import Header, Recipient
from envelopes.payload import Metadata
from keys.agency import AgencyKeys
from keys.codes import AgencyCode
from keys.directory import Directory
from keys.levels import Level, Urgency

HEADER_FIELDS = {
    "version": 1,
    "envelope_id": 2,
    "created": 3,
    "expires": 4,
    "sender": 5,
    "sender_kid": 6,
    "label": 7,
    "urgency": 8,
    "payload_size": 9,
    "segment_size": 10,
    "recipients": 11,
    "key_commitment": 12,
    "stream_header": 13,
}


@dataclass
class Forgery:
    """An envelope signed by ``signer`` with any header field chosen by the caller.

    ``to`` are codes whose encryption keys come from ``directory`` unless
    ``enc_public`` names another key for a code (a code the directory does not
    know, say). ``wrap_for`` gives a recipient a payload key other than the
    one the payload is encrypted with (invisible salamanders); ``commitment``
    replaces the key commitment; ``payload`` replaces metadata + document.
    """

    signer: AgencyKeys
    directory: Directory
    to: list[str]
    now: dt.datetime
    level: Level = Level.MAT
    urgency: Urgency = Urgency.KHAN
    doc: bytes = b"forged document\n" * 8
    created: dt.datetime | None = None
    lifetime: dt.timedelta = dt.timedelta(days=30)
    segment_size: int = 1024
    sender: str | None = None  # the claimed sender code (default: the signer's)
    sender_kid: bytes | None = None
    recipient_kids: dict[str, bytes] = field(default_factory=dict)
    enc_public: dict[str, bytes] = field(default_factory=dict)
    wrap_for: dict[str, bytes] = field(default_factory=dict)
    commitment: bytes | None = None
    payload: bytes | None = None
    final_tag_at: int | None = None  # secretstream FINAL on this segment (default: the last)
    caveats: tuple[str, ...] = ()

    def build(self) -> bytes:
        """The envelope bytes: header frame and every segment frame, all signed."""
        created = self.created or self.now
        envelope_id = secrets.token_bytes(16)
        sender_kid = self.sender_kid or self.signer.sign_key_id
        key = _crypto.new_payload_key()
        recipients = []
        for code in self.to:
            entry = self.directory.entries.get(code)
            public = self.enc_public.get(code) or (entry.enc.public_key if entry else b"")
            kid = self.recipient_kids.get(code) or (entry.enc.key_id if entry else bytes(16))
            info = _crypto.wrap_info(envelope_id, sender_kid, kid, code)
            wrapped = _crypto.wrap_key(self.wrap_for.get(code, key), public, info)
            recipients.append(Recipient(AgencyCode.parse(code), kid, wrapped))
        payload = self.payload
        if payload is None:
            payload = Metadata("forged", "f.bin").encode() + self.doc
        stream = _crypto.StreamEncryptor(key)
        header = Header.build(
            envelope_id=envelope_id,
            created=created,
            expires=created + self.lifetime,
            sender=AgencyCode.parse(self.sender or self.signer.code.text),
            sender_key_id=sender_kid,
            level=self.level,
            caveats=self.caveats,
            urgency=self.urgency,
            payload_size=len(payload),
            segment_size=self.segment_size,
            recipients=tuple(recipients),
            key_commitment=self.commitment or _crypto.key_commitment(envelope_id, key),
            stream_header=stream.header,
        )
        stream.associated_data = header.hash
        last = header.segment_count - 1
        final_at = last if self.final_tag_at is None else self.final_tag_at
        segments = []
        for index in range(header.segment_count):
            start = index * self.segment_size
            chunk = payload[start : start + header.segment_plaintext_size(index)]
            ciphertext = stream.push(chunk, index == final_at)
            segments.append(SegmentFrame(index, index == last, ciphertext, b""))
        return resign(self.signer, header.raw, segments)


def frames(data: bytes) -> tuple[tuple[bytes, bytes], list[SegmentFrame]]:
    """Split an envelope into its (header bytes, signature) and its segment frames."""
    reader = FrameReader(io.BytesIO(data))
    header = parse_header_frame(reader.next())
    segments = []
    while (obj := reader.next()) is not None:
        segments.append(parse_segment_frame(obj))
    return header, segments


def join(header: tuple[bytes, bytes], segments: list[SegmentFrame]) -> bytes:
    """Frames back into envelope bytes, as they are (no signature recomputed)."""
    out = encode_header_frame(*header)
    for s in segments:
        out += encode_segment_frame(s.index, s.final, s.ciphertext, s.signature)
    return out


def resign(keys: AgencyKeys, header_raw: bytes, segments: list[SegmentFrame]) -> bytes:
    """Sign ``header_raw`` and every segment (index, final, ciphertext as given) with ``keys``."""
    header_hash = _crypto.sha256(header_raw)
    sig = _crypto.sign(keys.signing_key, _crypto.HEADER_CONTEXT, header_raw)
    out = encode_header_frame(header_raw, sig)
    for s in segments:
        msg = segment_signed_message(header_hash, s.index, s.final, s.ciphertext)
        out += encode_segment_frame(
            s.index,
            s.final,
            s.ciphertext,
            _crypto.sign(keys.signing_key, _crypto.SEGMENT_CONTEXT, msg),
        )
    return out


def edit_header(raw: bytes, **changes: Any) -> bytes:
    """Re-encode header bytes with some positional fields changed (signature not redone)."""
    fields = list(msgpack.unpackb(raw, raw=False))
    for name, value in changes.items():
        fields[HEADER_FIELDS[name]] = value
    return bytes(msgpack.packb(fields, use_bin_type=True))
