"""Seal: sign and encrypt a document stream to one or many agencies."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from envelopes import _crypto
from envelopes._pipeline import WriteBehind
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.frames import encode_header_frame, segment_frame_parts, segment_signed_message
from envelopes.header import (
    DEFAULT_SEGMENT_SIZE,
    ENVELOPE_ID_BYTES,
    MAX_LIFETIME,
    MAX_PAYLOAD_BYTES,
    MAX_RECIPIENTS,
    Header,
    Recipient,
)
from envelopes.payload import Metadata
from envelopes.signatures import SIGNED_CAVEAT
from keys.agency import AgencyKeys
from keys.codes import AgencyCode
from keys.directory import Directory, DirectoryEntry
from keys.errors import CipherpostError, UsageError
from keys.levels import Level, Urgency

DEFAULT_LIFETIME = dt.timedelta(days=30)


@dataclass(frozen=True)
class Sealed:
    """What was sealed: the header (id, parties, label) and the bytes written."""

    header: Header
    envelope_bytes: int

    @property
    def envelope_id(self) -> str:
        """Hex envelope id."""
        return self.header.envelope_id.hex()


def seal(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    keys: AgencyKeys,
    directory: Directory,
    to: Sequence[AgencyCode],
    level: Level,
    size: int,
    urgency: Urgency = Urgency.THUONG,
    metadata: Metadata | None = None,
    caveats: tuple[str, ...] = (),
    lifetime: dt.timedelta = DEFAULT_LIFETIME,
    now: dt.datetime | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    envelope_id: bytes | None = None,
) -> Sealed:
    """Read exactly ``size`` bytes from ``src`` and write one envelope to ``dst``.

    Refuses (:class:`EnvelopeRefused`, exit 3) what every verifier would
    refuse: a level above the sender's or a recipient's clearance, an
    unknown or revoked party, keys that are not the ones the directory holds.

    ``envelope_id`` is random unless given. Anyone holding agency keys can
    choose an id (tests do, to play that attacker); the gateway and the agents
    bind every decision to the whole signed header, never to the id alone.
    """
    now = now or dt.datetime.now(dt.UTC)
    caveats, prefix = _check_request(to, lifetime, metadata or Metadata(), caveats, size)
    payload_size = len(prefix) + size
    entries = _check_parties(keys, directory, to, level, now)
    payload_key = _crypto.new_payload_key()
    stream = _crypto.StreamEncryptor(payload_key)
    header = _header(
        keys, entries, level, urgency, caveats, payload_size, segment_size, envelope_id,
        now, lifetime, payload_key, stream,
    )  # fmt: skip
    header_hash = header.hash
    stream.associated_data = header_hash
    written = [
        dst.write(
            encode_header_frame(
                header.raw, _crypto.sign(keys.signing_key, _crypto.HEADER_CONTEXT, header.raw)
            )
        )
    ]

    def emit(item: tuple[int, bool, bytes]) -> None:
        # Runs in the write-behind thread: hash + sign + write overlap the next encryption.
        index, final, ciphertext = item
        message = segment_signed_message(header_hash, index, final, ciphertext)
        signature = _crypto.sign(keys.signing_key, _crypto.SEGMENT_CONTEXT, message)
        for part in segment_frame_parts(index, final, ciphertext, signature):
            written[0] += dst.write(part)

    pending = prefix
    last = header.segment_count - 1
    # One segment: nothing to overlap, so no second thread.
    writer = WriteBehind(emit) if header.segment_count > 1 else _Inline(emit)
    with writer:
        for index in range(header.segment_count):
            want = header.segment_plaintext_size(index)
            chunk = pending + _read_exactly(src, want - len(pending))
            pending = b""
            if len(chunk) != want:
                raise CipherpostError("the document is shorter than announced (did it change?)")
            final = index == last
            writer.put((index, final, stream.push(chunk, final)))
    if src.read(1):
        raise CipherpostError("the document is longer than announced (did it change?)")
    return Sealed(header, written[0])


def _check_request(
    to: Sequence[AgencyCode],
    lifetime: dt.timedelta,
    metadata: Metadata,
    caveats: tuple[str, ...],
    size: int,
) -> tuple[tuple[str, ...], bytes]:
    """Usage checks of a request; the caveats to sign and the payload's metadata prefix."""
    if not to:
        raise UsageError("at least one recipient is needed")
    if len(set(to)) != len(to):
        raise UsageError("a recipient is named twice")
    if len(to) > MAX_RECIPIENTS:
        raise UsageError(f"at most {MAX_RECIPIENTS} recipients per envelope")
    if not dt.timedelta(minutes=1) <= lifetime <= MAX_LIFETIME:
        raise UsageError("envelope lifetime must be between 1 minute and 366 days")
    # The gateway sees that a document is signed (a policy may need it), never by whom.
    caveats = tuple(c for c in caveats if c != SIGNED_CAVEAT)
    if metadata.signatures:
        caveats += (SIGNED_CAVEAT,)
    prefix = metadata.encode()
    if size < 0 or len(prefix) + size > MAX_PAYLOAD_BYTES:
        raise UsageError("document is larger than an envelope can carry (1 TiB)")

    return caveats, prefix


def _check_parties(
    keys: AgencyKeys,
    directory: Directory,
    to: Sequence[AgencyCode],
    level: Level,
    now: dt.datetime,
) -> list[DirectoryEntry]:
    """What every verifier would refuse of the sender and the recipients; their entries."""
    sender = directory.get(keys.code, "sender")
    sender.check_usable(now, "sender")
    if sender.sign.public_key != keys.sign_public:
        raise CipherpostError(
            f"the keys of {keys.code} are not the ones the directory certifies"
            " (was this enrollment issued and the directory rebuilt?)"
        )
    if level > sender.clearance:
        raise EnvelopeRefused(
            Reason.SENDER_CLEARANCE,
            f"level {level.value} is above the clearance of sender {keys.code}"
            f" ({sender.clearance.value})",
        )
    entries = []
    for code in to:
        successor = directory.successor(code, now)
        if successor is not None:
            raise EnvelopeRefused(
                Reason.RETIRED,
                f"recipient {code} is retired (merged into {successor}): send to {successor}",
            )
        entry = directory.get(code, "recipient")
        entry.check_usable(now, "recipient")
        if level > entry.clearance:
            raise EnvelopeRefused(
                Reason.RECIPIENT_CLEARANCE,
                f"level {level.value} is above the clearance of recipient {code}"
                f" ({entry.clearance.value})",
            )
        entries.append(entry)
    return entries


def _header(
    keys: AgencyKeys,
    entries: list[DirectoryEntry],
    level: Level,
    urgency: Urgency,
    caveats: tuple[str, ...],
    payload_size: int,
    segment_size: int,
    envelope_id: bytes | None,
    now: dt.datetime,
    lifetime: dt.timedelta,
    payload_key: bytes,
    stream: _crypto.StreamEncryptor,
) -> Header:
    """The header: each recipient's wrapped payload key, the key commitment, the stream header."""
    if envelope_id is None:
        envelope_id = secrets.token_bytes(ENVELOPE_ID_BYTES)
    elif len(envelope_id) != ENVELOPE_ID_BYTES:
        raise UsageError(f"an envelope id is {ENVELOPE_ID_BYTES} bytes")
    recipients = tuple(
        Recipient(
            e.code,
            e.enc.key_id,
            _crypto.wrap_key(
                payload_key,
                e.enc.public_key,
                _crypto.wrap_info(envelope_id, keys.sign_key_id, e.enc.key_id, e.code.text),
            ),
        )
        for e in entries
    )
    return Header.build(
        envelope_id=envelope_id,
        created=now,
        expires=now + lifetime,
        sender=keys.code,
        sender_key_id=keys.sign_key_id,
        level=level,
        caveats=caveats,
        urgency=urgency,
        payload_size=payload_size,
        segment_size=segment_size,
        recipients=recipients,
        key_commitment=_crypto.key_commitment(envelope_id, payload_key),
        stream_header=stream.header,
    )


class _Inline:
    """The same interface as WriteBehind, running the sink in the caller's thread."""

    def __init__(self, sink: Callable[[tuple[int, bool, bytes]], None]) -> None:
        self.put = sink

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _read_exactly(src: BinaryIO, n: int) -> bytes:
    if n <= 0:
        return b""
    data = src.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
