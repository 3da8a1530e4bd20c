"""Sending: seal a document (in memory, or through a spool file in ``outbox/``), publish it
part by part (confirms pipelined) with ``user_id`` set to the agency's broker login, and
record how far each submission got; submit an envelope sealed before; publish a notice."""

from __future__ import annotations

import datetime as dt
import io
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pika

import envelopes
from agents.base import AgentBase, utc_now
from agents.progress import ProgressReader
from agents.state import INTERRUPTED, SENDING, SENT
from broker import wire
from broker.connection import BrokerError, connect_blocking
from broker.publisher import ConfirmingPublisher
from broker.topology import SUBMIT_EXCHANGE, submit_queue
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.frames import FrameReader, parse_header_frame
from envelopes.header import Header
from envelopes.notices import Notice
from envelopes.parts import iter_parts
from envelopes.signatures import document_digest, verify_signature
from keys.codes import AgencyCode
from keys.errors import CipherpostError, UsageError
from keys.levels import Level, Urgency
from keys.logsetup import get_logger

log = get_logger("cipherpost.agent")
CONNECT_TIMEOUT_S = 10.0
SEAL_IN_MEMORY_MAX = 256 * 1024  # smaller documents are sealed without a spool file


@dataclass
class Sending:
    """How far the submission of one envelope got (parts the broker confirmed)."""

    envelope_id: str
    parts: int
    confirmed: int = 0
    name: str = ""  # the document's file name
    expires: dt.datetime | None = None  # when recipients drop the parts of an incomplete one

    def confirm(self, future: Future[None]) -> None:
        if future.exception() is None:
            self.confirmed += 1


def recipients(to: Sequence[AgencyCode | str] | AgencyCode | str) -> list[AgencyCode]:
    """Codes as a caller gives them: ``"000.01.12.h41"``, ``"A,B"``, a list of either."""
    if isinstance(to, AgencyCode):
        return [to]
    if isinstance(to, str):
        items: list[object] = list(to.split(","))
    elif isinstance(to, (list, tuple)):
        items = list(to)
    else:
        raise UsageError(f"to: agency codes as a string or a list, not {type(to).__name__}")
    codes = []
    for item in items:
        if isinstance(item, AgencyCode):
            codes.append(item)
        elif isinstance(item, str):
            if item.strip():
                codes.append(AgencyCode.from_user(item))
        else:
            raise UsageError(f"to: {type(item).__name__} is not an agency code")
    if not codes:
        raise UsageError("no recipient: give at least one agency code")
    return codes


class Outbox(AgentBase):
    """The agent's sending part (a part of :class:`agents.client.Client`)."""

    _publisher: ConfirmingPublisher | None
    _in_flight: list[Future[None]]
    _unconfirmed: list[Sending]  # sent without waiting, until flush()
    interrupted: list[Sending]  # submissions stopped before every part went
    sending: Sending | None  # the envelope being submitted, or last submitted

    @property
    def publisher(self) -> ConfirmingPublisher:
        if self._publisher is None:
            self._publisher = ConfirmingPublisher(self.broker, connect_timeout=CONNECT_TIMEOUT_S)
        return self._publisher

    def send(
        self,
        path: Path | str,
        *,
        to: Sequence[AgencyCode | str] | AgencyCode | str,
        level: Level | str,
        urgency: Urgency | str = Urgency.THUONG,
        subject: str = "",
        fields: dict[str, str] | None = None,
        progress: bool | None = None,
        wait: bool = True,
        signatures: Sequence[bytes] = (),
        replaces: str | None = None,
    ) -> str:
        """Seal ``path`` and submit it; returns the envelope id.

        With ``wait`` (the default) it returns once the broker confirmed every
        part; without, confirms are collected and :meth:`flush` waits for them,
        so many documents go out pipelined.

        ``signatures`` are officials' signatures over this document, its subject and
        its number (``fields["notation"]``), from :func:`envelopes.signatures.sign_document`
        (``cipherpost sign``): each is checked here as every recipient will check it.
        ``replaces`` names an envelope this agency sent that the document corrects.
        """
        level, urgency = Level.parse(level), Urgency.parse(urgency)
        to, path = recipients(to), Path(path)
        fields = dict(fields or {})
        self.refresh_directory()
        old = self._replaceable(replaces) if replaces else ""
        self._check_signatures(path, signatures, subject, fields.get("notation", ""))
        src, size, env_file, spool = self._open_for_sealing(path)
        try:
            with src, env_file:
                sealed = envelopes.seal(
                    ProgressReader(src, size, f"sealing {path.name}", enabled=progress),  # type: ignore[arg-type]
                    env_file,
                    keys=self.keys,
                    directory=self.directory,
                    to=to,
                    level=level,
                    size=size,
                    urgency=urgency,
                    metadata=envelopes.Metadata(
                        subject=subject,
                        filename=path.name,
                        fields=fields,
                        signatures=tuple(signatures),
                        replaces=old,
                    ),
                )
                eid, parts = sealed.envelope_id, sealed.header.segment_count
                self._record_links(eid, sealed.header.hash, old)
                # Known before the first part leaves: an interruption never hides what went.
                self.state.record_sent(
                    eid,
                    [c.text for c in to],
                    level.value,
                    urgency.value,
                    subject,
                    path.name,
                    size,
                    parts=parts,
                    state=SENDING,
                )
                self.sending = Sending(eid, parts, 0, path.name, sealed.header.expires)
                env_file.seek(0)
                self._publish(env_file, self.sending, sealed.envelope_bytes, progress, wait=wait)
            if wait:
                self.state.mark_sent(eid, parts, SENT)
            else:
                self._unconfirmed.append(self.sending)
            log.info("sent", envelope=eid, recipients=len(to), label=level.value)
            return eid
        finally:
            if spool is not None:
                spool.unlink(missing_ok=True)

    def _open_for_sealing(self, path: Path) -> tuple[BinaryIO, int, BinaryIO, Path | None]:
        """The document, its size, and where its envelope is sealed to: memory for a small
        one, else a new spool file in ``outbox/`` (ciphertext only) that the caller removes."""
        try:
            src = path.open("rb")
        except OSError as e:
            raise CipherpostError(f"cannot read {path}: {e.strerror}") from e
        spool: Path | None = None
        try:
            size = os.fstat(src.fileno()).st_size
            if size <= SEAL_IN_MEMORY_MAX:  # ciphertext only, a few hundred KiB at most
                env_file: BinaryIO = io.BytesIO()
            else:
                outbox = self.config.agency_dir / "outbox"
                outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd, spool_name = tempfile.mkstemp(dir=outbox, suffix=".cpe")
                spool = Path(spool_name)
                env_file = os.fdopen(fd, "w+b")
        except BaseException:
            src.close()
            raise
        return src, size, env_file, spool

    def _publish(
        self, env_file: BinaryIO, sending: Sending, total: int, progress: bool | None, *, wait: bool
    ) -> None:
        """Publish every part of ``sending``; with ``wait``, until the broker confirmed them.
        On any failure how far each submission got is recorded, then the error goes on."""
        try:
            self._in_flight += self._submit(env_file, sending.envelope_id, total, progress, sending)
            if wait:
                self.flush()
        except BaseException:
            self._stopped([sending, *self._unconfirmed])
            self._unconfirmed = []
            raise

    def _replaceable(self, envelope_id: str) -> str:
        """The full id of an envelope this agency sent, which a new document may replace."""
        old = self.resolve(envelope_id)
        if self.state.sent(old) is None:
            raise CipherpostError(
                f"{old} was not sent by this agency: only its sender may replace a document"
            )
        return old

    def _check_signatures(
        self, path: Path, signatures: Sequence[bytes], subject: str, notation: str
    ) -> None:
        """Every official's signature, checked as the recipients will (refused loudly here
        rather than by every recipient): an official of this agency, over these bytes."""
        if not signatures:
            return
        try:
            with path.open("rb") as f:
                digest, size = document_digest(f)
        except OSError as e:
            raise CipherpostError(f"cannot read {path}: {e.strerror}") from e
        for raw in signatures:
            verify_signature(
                raw,
                self.directory,
                sender=self.keys.code,
                subject=subject,
                notation=notation,
                digest=digest,
                size=size,
                now=utc_now(),
            )

    def _record_links(self, envelope_id: str, header_hash: bytes, replaces: str) -> None:
        """What a recall (the header hash) and the outbox (the replacement) need later."""
        self.state.set_mark(envelope_id, "header_hash", header_hash.hex())
        if replaces:
            self.state.set_mark(envelope_id, "replaces", replaces)
            self.state.set_mark(replaces, "replaced_by", envelope_id)

    def submit_sealed(self, env_file: BinaryIO) -> str:
        """Submit an envelope sealed before (a ``.cpe``, say from offline transfer); its id.

        The gateway checks it like any other: this agent only publishes it.
        """
        start = env_file.tell()
        first = FrameReader(env_file).next()
        if first is None:
            raise EnvelopeRefused(Reason.FORMAT, "envelope is empty")
        header = Header.parse(parse_header_frame(first)[0])
        self.state.set_mark(header.envelope_id.hex(), "header_hash", header.hash.hex())
        total = env_file.seek(0, os.SEEK_END) - start
        env_file.seek(start)
        eid, parts = header.envelope_id.hex(), header.segment_count
        self.state.record_sent(
            eid,
            [r.code.text for r in header.recipients],
            header.level.value,
            header.urgency.value,
            "",
            "",
            header.payload_size,
            parts=parts,
            state=SENDING,
        )
        self.sending = Sending(eid, parts, 0, "", header.expires)
        self._publish(env_file, self.sending, total, False, wait=True)
        self.state.mark_sent(eid, parts, SENT)
        return eid

    def _submit(
        self,
        env_file: BinaryIO,
        envelope_id: str,
        total: int,
        progress: bool | None,
        sending: Sending,
    ) -> list[Future[None]]:
        """Publish every part; returns the confirms to wait for (the window bounds memory)."""
        futures: list[Future[None]] = []
        reader = ProgressReader(env_file, total, "submitting", enabled=progress)
        for index, count, body in iter_parts(reader):  # type: ignore[arg-type]
            props = wire.submitted_part(self.broker.login, envelope_id, index, count)
            future = self.publisher.publish(SUBMIT_EXCHANGE, self.keys.code.text, body, props)
            future.add_done_callback(sending.confirm)
            futures.append(future)
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                raise CipherpostError(f"submission failed: {failed.exception()}")
            futures = [f for f in futures if not f.done()]
        return futures

    def gateways_listening(self) -> int | None:
        """How many gateway instances consume this agency's submit lane now (None: could not
        ask). Zero means what was sent waits, queued and unchecked, until one starts."""
        try:
            connection = connect_blocking(self.broker)
        except BrokerError:
            return None
        try:
            lane = submit_queue(self.keys.code)
            return int(connection.channel().queue_declare(lane, passive=True).method.consumer_count)
        except pika.exceptions.AMQPError:
            return None
        finally:
            if connection.is_open:
                connection.close()

    def flush(self, timeout: float = 300.0) -> None:
        """Wait until every submission so far is confirmed by the broker."""
        pending, self._in_flight = self._in_flight, []
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        deadline = time.monotonic() + timeout
        try:
            for f in pending:
                try:
                    error = f.exception(timeout=max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise CipherpostError(
                        "the broker did not confirm the submission in time"
                    ) from None
                if error is not None:
                    raise CipherpostError(f"submission failed: {error}")
        except BaseException:
            self._stopped(unconfirmed)
            raise
        self.state.mark_sent_many([(s.envelope_id, s.parts, SENT) for s in unconfirmed])

    def _stopped(self, sendings: list[Sending]) -> None:
        """A submission stopped (signal, broker gone): record how far each envelope got. One
        every part of which the broker confirmed is sent; the others are interrupted, listed
        in :attr:`interrupted` (recipients drop their parts once the envelope expires)."""
        if self._publisher is not None:
            # Nothing more leaves after this: what is reported is what the broker took.
            self._publisher.abort()
            self._publisher = None
        done: set[str] = set()
        for s in sendings:
            if s.envelope_id in done:
                continue
            done.add(s.envelope_id)
            if s.confirmed >= s.parts:
                self.state.mark_sent(s.envelope_id, s.parts, SENT)
            else:
                self.state.mark_sent(s.envelope_id, s.confirmed, INTERRUPTED)
                self.interrupted.append(s)

    def _publish_notice(self, notice: Notice) -> Future[None]:
        props = wire.notice(self.broker.login)
        return self.publisher.publish(SUBMIT_EXCHANGE, self.keys.code.text, notice.raw, props)
