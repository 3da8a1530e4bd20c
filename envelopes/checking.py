"""Verify (no private key: what the gateway does) and open (a recipient).

Both walk the same checks in the same order; ``open`` additionally unwraps the
payload key and decrypts. Plaintext goes to the caller's ``dst`` only segment
by segment as each one verified; :func:`open_to_path` adds the quarantine file
so that nothing appears at the destination before the whole envelope verified.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from envelopes import _crypto
from envelopes._pipeline import prefetch
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.frames import (
    FrameReader,
    SegmentFrame,
    parse_header_frame,
    parse_segment_frame,
    segment_signed_message,
)
from envelopes.header import Header
from envelopes.parts import Part
from envelopes.payload import Metadata, PayloadSplitter
from envelopes.signatures import OfficialSignature, verify_all
from keys.agency import AgencyKeys
from keys.directory import Directory, DirectoryEntry
from keys.errors import CipherpostError

CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CheckedHeader:
    """A header whose signature, parties, clearances and lifetime all checked out."""

    header: Header
    sender: DirectoryEntry
    recipients: tuple[DirectoryEntry, ...]


@dataclass(frozen=True)
class EnvelopeInfo:
    """What a fully verified envelope says about itself (no plaintext)."""

    checked: CheckedHeader
    envelope_bytes: int

    @property
    def envelope_id(self) -> str:
        """Hex envelope id."""
        return self.checked.header.envelope_id.hex()

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        h = self.checked.header
        return {
            "envelope_id": self.envelope_id,
            "sender": {"code": h.sender.text, "name": self.checked.sender.name},
            "recipients": [{"code": r.code.text, "name": r.name} for r in self.checked.recipients],
            "level": h.level.value,
            "caveats": list(h.caveats),
            "urgency": h.urgency.value,
            "payload_bytes": h.payload_size,
            "envelope_bytes": self.envelope_bytes,
            "segments": h.segment_count,
            "created": h.created.isoformat(),
            "expires": h.expires.isoformat(),
            "header_sha256": h.hash.hex(),
        }


@dataclass(frozen=True)
class Opened:
    """An opened envelope: its verified description and private metadata."""

    info: EnvelopeInfo
    metadata: Metadata
    document_bytes: int
    signatures: tuple[OfficialSignature, ...] = ()  # each verified against the directory


def check_header(
    header_raw: bytes, signature: bytes, directory: Directory, now: dt.datetime
) -> CheckedHeader:
    """Every check on a header that needs no private key. :class:`EnvelopeRefused` on failure."""
    header = Header.parse(header_raw)
    sender = check_header_signature(header, signature, directory, now)
    return check_header_rest(header, sender, directory, now)


def check_header_signature(
    header: Header, signature: bytes, directory: Directory, now: dt.datetime
) -> DirectoryEntry:
    """The sender is a valid directory entry and signed these exact header bytes."""
    sender = directory.entries.get(header.sender.text)
    if sender is None:
        raise EnvelopeRefused(
            Reason.SENDER_UNKNOWN, f"sender {header.sender} is not in the directory"
        )
    if sender.revoked:
        raise EnvelopeRefused(Reason.SENDER_REVOKED, f"sender {header.sender} is revoked")
    if not sender.sign.valid_at(now):
        raise EnvelopeRefused(
            Reason.SENDER_CERTIFICATE, f"sender {header.sender} has no currently valid certificate"
        )
    if header.sender_key_id != sender.sign.key_id:
        raise EnvelopeRefused(
            Reason.SENDER_KEY, f"envelope is not signed with the certified key of {header.sender}"
        )
    if not _crypto.verify_signature(
        sender.sign.public_key, signature, _crypto.HEADER_CONTEXT, header.raw
    ):
        raise EnvelopeRefused(Reason.SIGNATURE, "bad header signature")
    return sender


def check_header_rest(
    header: Header, sender: DirectoryEntry, directory: Directory, now: dt.datetime
) -> CheckedHeader:
    """Lifetime, clearances and recipients of a header whose signature checked out."""
    if now > header.expires:
        raise EnvelopeRefused(
            Reason.EXPIRED, f"envelope expired at {header.expires:%Y-%m-%d %H:%M}Z"
        )
    if header.created > now + CLOCK_SKEW:
        raise EnvelopeRefused(Reason.CLOCK, "envelope is dated in the future")
    if header.level > sender.clearance:
        raise EnvelopeRefused(
            Reason.SENDER_CLEARANCE,
            f"level {header.level.value} is above the clearance of sender {sender.code}",
        )
    recipients = []
    for r in header.recipients:
        entry = directory.entries.get(r.code.text)
        if entry is None:
            raise EnvelopeRefused(
                Reason.RECIPIENT_UNKNOWN, f"recipient {r.code} is not in the directory"
            )
        if entry.revoked:
            raise EnvelopeRefused(Reason.RECIPIENT_REVOKED, f"recipient {r.code} is revoked")
        if not entry.enc.valid_at(now):
            raise EnvelopeRefused(
                Reason.RECIPIENT_CERTIFICATE,
                f"recipient {r.code} has no currently valid certificate",
            )
        if r.key_id != entry.enc.key_id:
            raise EnvelopeRefused(
                Reason.RECIPIENT_KEY, f"recipient {r.code} is addressed under a key not certified"
            )
        if header.level > entry.clearance:
            raise EnvelopeRefused(
                Reason.RECIPIENT_CLEARANCE,
                f"level {header.level.value} is above the clearance of recipient {r.code}",
            )
        recipients.append(entry)
    return CheckedHeader(header, sender, tuple(recipients))


def check_segment(checked: CheckedHeader, segment: SegmentFrame) -> None:
    """Check one segment on its own: size, signature, position and finality."""
    header = checked.header
    if segment.index >= header.segment_count:
        raise EnvelopeRefused(
            Reason.SEGMENT, "envelope has more segments than its header announces"
        )
    if segment.final != (segment.index == header.segment_count - 1):
        raise EnvelopeRefused(Reason.SEGMENT, "envelope segment has the wrong final flag")
    want = header.segment_plaintext_size(segment.index) + _crypto.STREAM_ABYTES
    if len(segment.ciphertext) != want:
        raise EnvelopeRefused(Reason.SEGMENT, "envelope segment has the wrong size")
    message = segment_signed_message(header.hash, segment.index, segment.final, segment.ciphertext)
    if not _crypto.verify_signature(
        checked.sender.sign.public_key, segment.signature, _crypto.SEGMENT_CONTEXT, message
    ):
        raise EnvelopeRefused(Reason.SEGMENT_SIGNATURE, f"bad signature on segment {segment.index}")


def _walk(
    src: BinaryIO,
    directory: Directory,
    now: dt.datetime | None,
    on_header: Callable[[CheckedHeader], None],
    on_segment: Callable[[SegmentFrame], None] | None,
) -> EnvelopeInfo:
    now = now or dt.datetime.now(dt.UTC)
    reader = FrameReader(src)
    first = reader.next()
    if first is None:
        raise EnvelopeRefused(Reason.FORMAT, "envelope is empty")
    header_raw, signature = parse_header_frame(first)
    checked = check_header(header_raw, signature, directory, now)
    on_header(checked)

    def checked_segments() -> Iterator[SegmentFrame]:
        for index in range(checked.header.segment_count):
            obj = reader.next()
            if obj is None:
                raise EnvelopeRefused(Reason.SEGMENT, "envelope is truncated: segments are missing")
            segment = parse_segment_frame(obj)
            if segment.index != index:
                raise EnvelopeRefused(
                    Reason.SEGMENT, f"envelope segment {segment.index} is out of order"
                )
            check_segment(checked, segment)
            yield segment
        if reader.next() is not None:
            raise EnvelopeRefused(Reason.SEGMENT, "envelope has data after its final segment")

    if on_segment is None:
        for _ in checked_segments():
            pass
    elif checked.header.segment_count == 1:
        for segment in checked_segments():  # nothing to overlap: no second thread
            on_segment(segment)
    else:
        # Reading, hashing and signature checks run one segment ahead of decryption.
        for segment in prefetch(checked_segments()):
            on_segment(segment)
    return EnvelopeInfo(checked, reader.bytes_read)


def verify(src: BinaryIO, *, directory: Directory, now: dt.datetime | None = None) -> EnvelopeInfo:
    """Verify a whole envelope without any private key (the gateway's view)."""
    return _walk(src, directory, now, lambda _c: None, None)


def open_envelope(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    keys: AgencyKeys,
    directory: Directory,
    now: dt.datetime | None = None,
) -> Opened:
    """Verify and decrypt to ``dst``; each segment is written only after it verified.

    ``dst`` receives plaintext before the end of the envelope is checked: give
    it a quarantine file (see :func:`open_to_path`) and discard it on error.
    """
    splitter = PayloadSplitter(dst)
    state: dict[str, _crypto.StreamDecryptor] = {}

    def on_header(checked: CheckedHeader) -> None:
        state["stream"] = _decryptor(checked.header, keys)

    def on_segment(segment: SegmentFrame) -> None:
        splitter.feed(state["stream"].pull(segment.ciphertext, segment.final))

    now = now or dt.datetime.now(dt.UTC)
    info = _walk(src, directory, now, on_header, on_segment)
    return _opened(info, splitter, directory, now)


def _opened(
    info: EnvelopeInfo, splitter: PayloadSplitter, directory: Directory, now: dt.datetime
) -> Opened:
    """The end of every open: the payload's metadata and each official's signature in it,
    verified before the caller releases anything (one that fails refuses the envelope)."""
    metadata = splitter.finish()
    header = info.checked.header
    signatures = verify_all(
        metadata.signatures,
        header.caveats,
        directory,
        sender=header.sender,
        subject=metadata.subject,
        notation=metadata.fields.get("notation", ""),
        digest=splitter.document_digest,
        size=splitter.document_bytes,
        now=now,
    )
    return Opened(info, metadata, splitter.document_bytes, signatures)


def _decryptor(header: Header, keys: AgencyKeys) -> _crypto.StreamDecryptor:
    """Unwrap this agency's payload key (checked against the key commitment)."""
    mine = header.recipient(keys.code)
    if mine is None:
        raise EnvelopeRefused(
            Reason.NOT_RECIPIENT, f"{keys.code} is not a recipient of this envelope"
        )
    if mine.key_id != keys.enc_key_id:
        raise EnvelopeRefused(
            Reason.STALE_KEY, f"envelope is addressed to another key of {keys.code}"
        )
    info = _crypto.wrap_info(header.envelope_id, header.sender_key_id, mine.key_id, mine.code.text)
    payload_key = _crypto.unwrap_key(mine.wrapped_key, keys.encryption_key, info)
    if _crypto.key_commitment(header.envelope_id, payload_key) != header.key_commitment:
        raise EnvelopeRefused(
            Reason.KEY_COMMITMENT, "payload key does not match the header's key commitment"
        )
    return _crypto.StreamDecryptor(payload_key, header.stream_header, header.hash)


def open_part(
    part: Part,
    *,
    size: int,
    keys: AgencyKeys,
    directory: Directory,
    now: dt.datetime | None = None,
) -> tuple[Opened, bytes]:
    """Verify and decrypt a one-segment envelope already decoded as one part, in memory.

    The same checks as :func:`open_envelope`, in the same order, on the part the
    caller parsed (``size``: its bytes); returns the document only once all of
    them passed, so nothing needs a quarantine file (a segment is at most 4 MiB).
    """
    now = now or dt.datetime.now(dt.UTC)
    sender = check_header_signature(part.header, part.header_signature, directory, now)
    checked = check_header_rest(part.header, sender, directory, now)
    if checked.header.segment_count != 1 or part.segment.index != 0:
        raise EnvelopeRefused(Reason.SEGMENT, "envelope has more segments than this part")
    stream = _decryptor(checked.header, keys)
    check_segment(checked, part.segment)
    out = io.BytesIO()
    splitter = PayloadSplitter(out)
    splitter.feed(stream.pull(part.segment.ciphertext, part.segment.final))
    return _opened(EnvelopeInfo(checked, size), splitter, directory, now), out.getvalue()


def open_to_path(
    src: BinaryIO,
    path: Path,
    *,
    keys: AgencyKeys,
    directory: Directory,
    now: dt.datetime | None = None,
    sync: bool = True,
) -> Opened:
    """Open into a quarantine file beside ``path``; it becomes ``path`` only when all verified.

    Never overwrites: an existing ``path`` is an error. On any failure the
    quarantine file is removed. With ``sync=False`` the caller fsyncs ``path``
    itself (the agent does so for a whole batch at once).
    """
    if path.exists():
        raise CipherpostError(f"{path} already exists; refusing to overwrite it")
    # 128 random bits: the name is ours alone, so the finally below may remove it even if
    # an interruption came between its creation and the first line of the try.
    quarantine = path.with_name(f".{path.name}.quarantine-{secrets.token_hex(16)}")
    try:
        fd = os.open(quarantine, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as dst:
            opened = open_envelope(src, dst, keys=keys, directory=directory, now=now)
            dst.flush()
            if sync:
                os.fsync(dst.fileno())
        try:
            os.link(quarantine, path)  # fails if path appeared meanwhile: never clobber
        except FileExistsError:
            raise CipherpostError(f"{path} already exists; refusing to overwrite it") from None
        return opened
    finally:
        quarantine.unlink(missing_ok=True)
