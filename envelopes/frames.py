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

import struct
from dataclasses import dataclass
from typing import BinaryIO

import msgpack

from envelopes import _crypto
from envelopes.errors import EnvelopeRefused
from envelopes.header import MAX_HEADER_BYTES, MAX_SEGMENT_SIZE

MAX_SEGMENT_CIPHERTEXT = MAX_SEGMENT_SIZE + _crypto.STREAM_ABYTES
MAX_FRAME_BIN = max(MAX_HEADER_BYTES, MAX_SEGMENT_CIPHERTEXT)
READ_SIZE = 1024 * 1024
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


def encode_segment_frame(index: int, final: bool, ciphertext: bytes, signature: bytes) -> bytes:
    """The segment frame bytes."""
    return bytes(msgpack.packb([index, final, ciphertext, signature], use_bin_type=True))


def parse_header_frame(obj: object) -> tuple[bytes, bytes]:
    """Check the shape of a decoded header frame."""
    if (
        not isinstance(obj, tuple)
        or len(obj) != 2
        or not isinstance(obj[0], bytes)
        or not isinstance(obj[1], bytes)
        or len(obj[1]) != _crypto.SIGNATURE_BYTES
    ):
        raise EnvelopeRefused("envelope header frame is malformed")
    if len(obj[0]) > MAX_HEADER_BYTES:
        raise EnvelopeRefused("envelope header is larger than the limit")
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
        raise EnvelopeRefused("envelope segment frame is malformed")
    return SegmentFrame(obj[0], obj[1], obj[2], obj[3])


def decode_frame(data: bytes) -> object:
    """Decode exactly one frame from ``data`` (one AMQP message body)."""
    try:
        return msgpack.unpackb(data, **_LIMITS)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise EnvelopeRefused("envelope frame is not valid msgpack") from e


_LIMITS: dict[str, object] = {
    "raw": False,
    "use_list": False,
    "max_bin_len": MAX_FRAME_BIN,
    "max_str_len": 0,
    "max_array_len": 4,
    "max_map_len": 0,
    "max_ext_len": 0,
}


class FrameReader:
    """Reads frames one at a time from a binary stream, with bounded memory."""

    def __init__(self, src: BinaryIO) -> None:
        self._unpacker = msgpack.Unpacker(
            src, read_size=READ_SIZE, max_buffer_size=MAX_FRAME_BIN + READ_SIZE, **_LIMITS
        )
        self.bytes_read = 0

    def next(self) -> object | None:
        """The next decoded frame, or None at a clean end of stream."""
        try:
            obj = self._unpacker.unpack()
        except msgpack.OutOfData:
            try:
                leftover = self._unpacker.read_bytes(1)
            except ValueError:  # msgpack: "an object is incomplete"
                raise EnvelopeRefused("envelope ends in the middle of a frame") from None
            if leftover:
                raise EnvelopeRefused("envelope ends in the middle of a frame") from None
            return None
        except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as e:
            raise EnvelopeRefused("envelope frame is not valid msgpack") from e
        self.bytes_read = self._unpacker.tell()
        frame: object = obj
        return frame
