"""Frames: how a header and its segments are laid out in a file or on the wire.

``header_frame  = msgpack([header_bytes: bin, signature: bin64])``
``segment_frame = msgpack([index: uint, final: bool, ciphertext: bin, signature: bin64])``

A ``.cpe`` file is one header frame followed by the segment frames in order;
on the broker each frame is one AMQP message. Frames carry no signature of
their own encoding: what is signed is the header bytes and, per segment,
``SEGMENT_CONTEXT ‖ header_hash ‖ u64 index ‖ u8 final ‖ SHA-256(ciphertext)``
(see :func:`segment_signed_message`).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO

import msgpack

from envelopes import _crypto
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.header import MAX_HEADER_BYTES, MAX_SEGMENT_SIZE

MAX_SEGMENT_CIPHERTEXT = MAX_SEGMENT_SIZE + _crypto.STREAM_ABYTES
MAX_FRAME_BIN = max(MAX_HEADER_BYTES, MAX_SEGMENT_CIPHERTEXT)
_U64_U8 = struct.Struct(">QB")


@dataclass(frozen=True)
class SegmentFrame:
    """One segment as read from a frame (not yet verified)."""

    index: int
    final: bool
    ciphertext: bytes
    signature: bytes


def segment_signed_message(header_hash: bytes, index: int, final: bool, ciphertext: bytes) -> bytes:
    """What the sender signs for a segment: position, finality, content, bound to the header."""
    return header_hash + _U64_U8.pack(index, 1 if final else 0) + _crypto.sha256(ciphertext)


def encode_header_frame(header_raw: bytes, signature: bytes) -> bytes:
    """The header frame bytes."""
    return bytes(msgpack.packb([header_raw, signature], use_bin_type=True))


def segment_frame_parts(
    index: int, final: bool, ciphertext: bytes, signature: bytes
) -> tuple[bytes, bytes, bytes]:
    """A segment frame as (prefix, ciphertext, suffix), to write without copying the ciphertext.

    ``b"".join(parts)`` is exactly ``msgpack.packb([index, final, ciphertext, signature])``.
    """
    prefix = b"\x94" + msgpack.packb(index) + (b"\xc3" if final else b"\xc2")
    prefix += _bin_header(len(ciphertext))
    return prefix, ciphertext, _bin_header(len(signature)) + signature


def encode_segment_frame(index: int, final: bool, ciphertext: bytes, signature: bytes) -> bytes:
    """The segment frame bytes."""
    return b"".join(segment_frame_parts(index, final, ciphertext, signature))


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def parse_header_frame(obj: object) -> tuple[bytes, bytes]:
    """Check the shape of a decoded header frame."""
    if (
        not isinstance(obj, tuple)
        or len(obj) != 2
        or not isinstance(obj[0], bytes)
        or not isinstance(obj[1], bytes)
        or len(obj[1]) != _crypto.SIGNATURE_BYTES
    ):
        raise EnvelopeRefused(Reason.FORMAT, "envelope header frame is malformed")
    if len(obj[0]) > MAX_HEADER_BYTES:
        raise EnvelopeRefused(Reason.OVERSIZED, "envelope header is larger than the limit")
    return obj[0], obj[1]


def parse_segment_frame(obj: object) -> SegmentFrame:
    """Check the shape of a decoded segment frame."""
    if (
        not isinstance(obj, tuple)
        or len(obj) != 4
        or not isinstance(obj[0], int)
        or isinstance(obj[0], bool)
        or not 0 <= obj[0] < 1 << 63
        or not isinstance(obj[1], bool)
        or not isinstance(obj[2], bytes)
        or not isinstance(obj[3], bytes)
        or len(obj[3]) != _crypto.SIGNATURE_BYTES
    ):
        raise EnvelopeRefused(Reason.FORMAT, "envelope segment frame is malformed")
    return SegmentFrame(obj[0], obj[1], obj[2], obj[3])


def decode_frame(data: bytes) -> object:
    """Decode exactly one frame from ``data`` (one AMQP message body)."""
    src = io.BytesIO(data)
    frame = FrameReader(src).next()
    if frame is None:
        raise EnvelopeRefused(Reason.FORMAT, "envelope frame is empty")
    if src.read(1):
        raise EnvelopeRefused(Reason.FORMAT, "envelope frame has trailing bytes")
    return frame


# The msgpack subset frames are made of: a fixarray of unsigned ints, booleans
# and bins. Reading it by hand lets a ciphertext go from the file into one
# bytes object with a single copy, and refuses any other type outright.
_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}


class FrameReader:
    """Reads frames one at a time from a binary stream; memory is bounded by one frame."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self.bytes_read = 0

    def _read(self, n: int) -> bytes:
        data = self._src.read(n)
        if len(data) != n:
            parts = [data]
            got = len(data)
            while got < n and (more := self._src.read(n - got)):
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
            if len(data) != n:
                raise EnvelopeRefused(Reason.FORMAT, "envelope ends in the middle of a frame")
        self.bytes_read += n
        return data

    def next(self) -> tuple[object, ...] | None:
        """The next frame as a tuple of ints, bools and bytes; None at a clean end of stream."""
        first = self._src.read(1)
        if not first:
            return None
        self.bytes_read += 1
        marker = first[0]
        if not 0x91 <= marker <= 0x9F:
            raise EnvelopeRefused(
                Reason.FORMAT, "envelope frame is malformed (not a msgpack array)"
            )
        items: list[object] = []
        for _ in range(marker & 0x0F):
            t = self._read(1)[0]
            if t <= 0x7F:
                items.append(t)
            elif t in _UINT:
                items.append(int.from_bytes(self._read(_UINT[t]), "big"))
            elif t in (0xC2, 0xC3):
                items.append(t == 0xC3)
            elif t in _BIN:
                n = int.from_bytes(self._read(_BIN[t]), "big")
                if n > MAX_FRAME_BIN:
                    raise EnvelopeRefused(
                        Reason.OVERSIZED, "envelope frame is larger than the limit"
                    )
                items.append(self._read(n))
            else:
                raise EnvelopeRefused(
                    Reason.FORMAT, "envelope frame is malformed (unexpected msgpack type)"
                )
        return tuple(items)
