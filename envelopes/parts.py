"""Envelope parts: the wire form of an envelope, one AMQP message per segment.

A part is ``header_frame ‖ segment_frame``: it carries the signed header so that
any gateway instance can check any segment on its own, with no per-transfer
state. A one-segment envelope is a single part, byte for byte its ``.cpe``.
Joining the header frame once and the segment frames in order gives the
``.cpe`` file back.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from envelopes.errors import EnvelopeRefused, Reason
from envelopes.frames import (
    FrameReader,
    SegmentFrame,
    encode_header_frame,
    parse_header_frame,
    parse_segment_frame,
    segment_frame_parts,
)
from envelopes.header import Header


@dataclass(frozen=True)
class Part:
    """One decoded part (not yet verified)."""

    header: Header
    header_signature: bytes
    segment: SegmentFrame

    @property
    def header_frame(self) -> bytes:
        return encode_header_frame(self.header.raw, self.header_signature)

    @property
    def segment_frame(self) -> bytes:
        s = self.segment
        return b"".join(segment_frame_parts(s.index, s.final, s.ciphertext, s.signature))


def parse_part(body: bytes) -> Part:
    """Decode one part; exactly a header frame and a segment frame, nothing else."""
    src = io.BytesIO(body)
    reader = FrameReader(src)
    first = reader.next()
    if first is None:
        raise EnvelopeRefused(Reason.FORMAT, "envelope part is empty")
    header_raw, signature = parse_header_frame(first)
    second = reader.next()
    if second is None:
        raise EnvelopeRefused(Reason.FORMAT, "envelope part has no segment")
    segment = parse_segment_frame(second)
    if reader.next() is not None:
        raise EnvelopeRefused(Reason.FORMAT, "envelope part has trailing frames")
    return Part(Header.parse(header_raw), signature, segment)


def iter_parts(src: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """Cut a ``.cpe`` stream into parts: ``(index, count, body)`` with bounded memory."""
    reader = FrameReader(src)
    first = reader.next()
    if first is None:
        raise EnvelopeRefused(Reason.FORMAT, "envelope is empty")
    header_raw, signature = parse_header_frame(first)
    header = Header.parse(header_raw)
    header_frame = encode_header_frame(header_raw, signature)
    count = header.segment_count
    for index in range(count):
        obj = reader.next()
        if obj is None:
            raise EnvelopeRefused(Reason.SEGMENT, "envelope is truncated: segments are missing")
        s = parse_segment_frame(obj)
        yield (
            index,
            count,
            header_frame
            + b"".join(segment_frame_parts(s.index, s.final, s.ciphertext, s.signature)),
        )
