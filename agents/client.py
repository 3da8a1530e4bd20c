"""The agency desktop agent: send, receive, reply with a status, show statuses.

Sending seals to a spool file (ciphertext only; a document under 256 KiB in
memory), then publishes it part by part (one AMQP message per segment,
confirms pipelined) with ``user_id`` set to the agency's broker login.
Receiving spools each verified part to disk (ciphertext, fsynced) before
acking it; when every part is there the envelope is opened through a
quarantine file into the inbox folder (a one-part envelope is verified and
decrypted in memory and written once, after every check passed), a JSON
sidecar is written, and a signed receipt (status 01) goes back through the
gateway. Parts and documents of one consumer batch are made durable together
(one fsync round at the batch end); only then are they recorded (with their
receipts and the notices taken in, one commit), acked and receipted.
Duplicate deliveries are recognised by envelope id and part and never
written twice.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import io
import json
import os
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import pika

import envelopes
from agents.config import AgentConfig
from agents.progress import Progress, ProgressReader
from agents.state import INTERRUPTED, SENDING, SENT, AgentState
from broker import wire
from broker.connection import BrokerConfig, BrokerError, connect_blocking
from broker.consumer import Consumer, Delivery
from broker.directory_feed import DirectoryFeed
from broker.publisher import ConfirmingPublisher
from broker.topology import SUBMIT_EXCHANGE, submit_queue
from broker.wire import MESSAGE_AUDIT_PROOF, MESSAGE_NOTICE
from envelopes.checking import check_header, check_segment, open_part
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.frames import FrameReader, decode_frame, parse_header_frame
from envelopes.header import Header
from envelopes.notices import (
    KIND_RECALL,
    KIND_RECEIPT,
    KIND_STATUS,
    MAX_TEXT,
    REPLY_STATUSES,
    STATUS_NAMES,
    Notice,
    parse_notice,
    sign_notice,
    verify_notice,
)
from envelopes.parts import iter_parts, parse_part
from envelopes.signatures import OfficialSignature, document_digest, verify_signature
from gateway import merkle
from gateway.auditlog import PROOF_MAGIC, check_proof
from gateway.checkpoint import parse_checkpoint, read_checkpoint_file
from keys.agency import TRUST_FILE, load_agency
from keys.ca import load_ca_certificate
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState
from keys.errors import CipherpostError, Refused, UsageError
from keys.levels import Level, Urgency
from keys.logsetup import get_logger

log = get_logger("cipherpost.agent")
RECALLED_FOLDER = "recalled"  # inside the inbox: recalled documents, kept and marked
RECALL_ANSWERS = ("15", "16")  # recall agreed, recall refused
# Refusals of what a verified sender put inside the payload: told to it (status 02).
_SENDER_CONTENT = frozenset(
    {
        Reason.OFFICIAL_UNKNOWN,
        Reason.OFFICIAL_REVOKED,
        Reason.OFFICIAL_AGENCY,
        Reason.OFFICIAL_SIGNATURE,
        Reason.SIGNED_FLAG,
        Reason.PAYLOAD,
    }
)
CONNECT_TIMEOUT_S = 10.0
SEAL_IN_MEMORY_MAX = 256 * 1024  # smaller documents are sealed without a spool file
_SAFE_NAME = re.compile(r"[^\w.\- ]+")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


@dataclass(frozen=True)
class ReceivedDocument:
    """A document written to the inbox, with its sidecar."""

    envelope_id: str
    path: Path
    sidecar: Path
    metadata: dict[str, Any]


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


class Client:
    """The agent for one agency. Construct with the config and the key passphrase."""

    def __init__(self, config: AgentConfig, passphrase: bytes) -> None:
        self.config = config
        self.keys = load_agency(config.agency_dir, passphrase)
        self.ca_certificate = ca_cert = load_ca_certificate(config.ca_cert)
        try:
            data = config.directory.read_bytes()
        except OSError as e:
            raise CipherpostError(f"cannot read directory {config.directory}: {e.strerror}") from e
        trust = TrustState(config.agency_dir / TRUST_FILE)
        self.directory = Directory.load(data, trust, now=_now(), ca_certificate=ca_cert)
        self.broker = BrokerConfig.load(config.broker_credentials)
        self.feed = DirectoryFeed(
            self.broker,
            self.broker.agency_queues()[1],
            current=self.directory,
            trust=trust,
            ca_certificate=ca_cert,
            path=config.directory,
            on_update=self._directory_updated,
        )
        self._feed_drained = False
        self.state = AgentState(config.state_db)
        self.spool = config.agency_dir / "spool"
        self._publisher: ConfirmingPublisher | None = None
        self._in_flight: list[Future[None]] = []
        self._unconfirmed: list[Sending] = []  # sent without waiting, until flush()
        self.interrupted: list[Sending] = []  # submissions stopped before every part went
        self._receiving: dict[str, Progress] = {}  # envelopes arriving in parts, shown
        self.sending: Sending | None = None  # the envelope being submitted, or last submitted
        self.received: list[ReceivedDocument] = []
        self.on_received: Callable[[ReceivedDocument], None] | None = None
        # Notices this agent took in (a refusal, a status, a receipt), as they come.
        self.events: list[dict[str, Any]] = []
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self._to_sync: list[Path] = []
        # Per document: (delivery, record it, then ack + receipt), run once its files are durable.
        self._after_sync: list[tuple[Delivery, Callable[[], object], Callable[[], None]]] = []
        self._opening: set[str] = set()
        self._spooling: dict[str, set[int]] = {}

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        self.state.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _directory_updated(self, directory: Directory) -> None:
        self.directory = directory

    def refresh_directory(self) -> Directory:
        """Apply the directory versions published since this agent last looked (once)."""
        if not self._feed_drained:
            self._feed_drained = True
            self.feed.drain()
        return self.directory

    @property
    def publisher(self) -> ConfirmingPublisher:
        if self._publisher is None:
            self._publisher = ConfirmingPublisher(self.broker, connect_timeout=CONNECT_TIMEOUT_S)
        return self._publisher

    # --- send --------------------------------------------------------------------------------

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
                try:
                    self._in_flight += self._submit(
                        env_file, eid, sealed.envelope_bytes, progress, self.sending
                    )
                    if wait:
                        self.flush()
                except BaseException:
                    self._stopped([self.sending, *self._unconfirmed])
                    self._unconfirmed = []
                    raise
            if wait:
                self.state.mark_sent(eid, parts, SENT)
            else:
                self._unconfirmed.append(self.sending)
            log.info("sent", envelope=eid, recipients=len(to), label=level.value)
            return eid
        finally:
            if spool is not None:
                spool.unlink(missing_ok=True)

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
                now=_now(),
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
        try:
            self._in_flight += self._submit(env_file, eid, total, False, self.sending)
            self.flush()
        except BaseException:
            self._stopped([self.sending, *self._unconfirmed])
            self._unconfirmed = []
            raise
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

    # --- receive -----------------------------------------------------------------------------

    def receive(
        self, *, follow: bool = False, idle: float = 2.0, stop: threading.Event | None = None
    ) -> list[ReceivedDocument]:
        """Consume the inbox: once (until ``idle`` seconds pass quietly) or until stopped.

        One receiver per agency at a time (a lock in the agency folder): two would race
        on the spool. Refusals, statuses and receipts processed are in :attr:`events`.
        """
        self.received = []
        self.events = []
        with _ReceiveLock(self.config.agency_dir):
            if follow:
                self.feed.start()  # what is waiting and every new version, while following
            else:
                self.refresh_directory()
            self.expire_spool()
            consumer = Consumer(
                self.broker,
                self.broker.agency_queues()[0],
                self._handle,
                prefetch=32,
                on_batch_end=self._settle_batch,
            )
            if stop is not None:

                def watch() -> None:
                    stop.wait()
                    consumer.stop()

                threading.Thread(target=watch, daemon=True).start()
            try:
                consumer.run(until_idle=None if follow else idle, drain=self._flush)
            finally:
                if follow:
                    self.feed.stop()
        return self.received

    def expire_spool(self, now: dt.datetime | None = None) -> list[str]:
        """Remove the parts of envelopes that expired before all their parts came (a sender
        interrupted for good): nothing is kept forever. Returns their ids (each logged)."""
        now = now or _now()
        gone = []
        for folder in sorted(self.spool.iterdir()) if self.spool.is_dir() else []:
            try:
                raw, _ = parse_header_frame(decode_frame((folder / "header").read_bytes()))
                expired = now > Header.parse(raw).expires
            except (OSError, EnvelopeRefused):
                expired = True  # an unreadable spool entry is of no use to anyone
            if expired:
                shutil.rmtree(folder, ignore_errors=True)
                self.state.record_received(folder.name, "", "", "", "incomplete", "expired")
                log.warning("spool_expired", envelope=folder.name)
                gone.append(folder.name)
        return gone

    def documents(
        self, *, follow: bool = False, idle: float = 2.0, stop: threading.Event | None = None
    ) -> Iterator[ReceivedDocument]:
        """Each received document as soon as it is verified, decrypted, durable and receipted.

        Without ``follow`` the iterator ends once the inbox stayed quiet for
        ``idle`` seconds; with it, when ``stop`` is set. Errors of the receive
        loop are raised from the iterator.
        """
        arrived: queue.Queue[ReceivedDocument | BaseException | None] = queue.Queue()
        previous = self.on_received
        self.on_received = arrived.put

        def run() -> None:
            try:
                self.receive(follow=follow, idle=idle, stop=stop)
                arrived.put(None)
            except BaseException as e:  # handed to the caller's thread
                arrived.put(e)

        worker = threading.Thread(target=run, name="cipherpost-documents", daemon=True)
        worker.start()
        try:
            while (item := arrived.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if stop is not None:
                stop.set()
            worker.join(60)
            self.on_received = previous

    def _flush(self) -> None:
        if self._publisher is not None:
            self._publisher.flush(timeout=60)

    def _settle_batch(self) -> None:
        """Batch end: fsync the batch's inbox files, then record, ack and receipt them."""
        paths, self._to_sync = self._to_sync, []
        pending, self._after_sync = self._after_sync, []
        self._opening.clear()
        self._spooling.clear()
        try:
            for path in paths:
                _fsync(path)
            for folder in {p.parent for p in paths}:
                _fsync(folder)  # the renames too
        except OSError as e:
            log.error("inbox_sync_failed", error=e.strerror)
            for path in paths:
                path.unlink(missing_ok=True)  # not durable: the redelivery writes it again
            for d, _, _ in pending:
                d.reject(requeue=True)
            return
        try:
            with self.state.transaction():  # one commit for the batch's records
                for _, record, _ in pending:
                    record()
        except Exception as e:
            log.error("inbox_state_failed", error=type(e).__name__, detail=str(e)[:200])
            for d, _, _ in pending:
                d.reject(requeue=True)  # the files stay; the redelivery is recognised
            return
        for d, _, announce in pending:
            try:
                announce()
            except Exception as e:
                log.error("inbox_internal_error", error=type(e).__name__, detail=str(e)[:200])
                d.reject(requeue=True)

    def _handle(self, d: Delivery) -> None:
        try:
            if d.kind == MESSAGE_NOTICE:
                self._on_notice(d)
            elif d.kind == MESSAGE_AUDIT_PROOF:
                self._on_audit_proof(d)
            else:
                self._on_part(d)
        except EnvelopeRefused as e:
            log.warning("inbox_message_refused", reason=str(e))
            d.ack()  # recorded; a forged message must not block the inbox
        except Exception as e:
            log.error("inbox_internal_error", error=type(e).__name__, detail=str(e)[:200])
            d.reject(requeue=True)

    def _on_notice(self, d: Delivery) -> None:
        now = _now()
        try:
            notice = verify_notice(d.body, self.directory, now)
            verified = True
        except EnvelopeRefused:
            notice, _ = parse_notice(d.body)
            verified = False
        if notice.addressee != self.keys.code:
            raise EnvelopeRefused(Reason.NOTICE_EDGE, "notice addressed to another agency")
        new: list[bool] = []

        def record() -> None:  # at the batch end, one commit for the batch
            new.append(self.state.record_status(notice, verified))

        def announce() -> None:
            d.ack()
            if not new[0]:
                return  # a redelivery of a notice taken in before
            log.info(
                "status_received",
                envelope=notice.envelope_id.hex(),
                kind=notice.kind,
                signer=notice.signer.text,
                status=notice.status,
                verified=verified,
            )
            event = {**notice.as_dict(), "verified": verified}
            if notice.kind == KIND_RECALL and verified:
                event.update(self._on_recall(notice))
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)

        self._after_sync.append((d, record, announce))

    def _on_audit_proof(self, d: Delivery) -> None:
        """The gateway's leaf index and inclusion proof for envelopes this agency sent."""
        try:
            doc = json.loads(d.body)
            checked = read_checkpoint_file(
                json.dumps(doc["checkpoint"]).encode(), self.ca_certificate
            )
            entries = doc["entries"]
            if not isinstance(entries, list):
                raise ValueError("entries is not a list")
        except (ValueError, KeyError, TypeError, Refused) as e:
            raise EnvelopeRefused(Reason.FORMAT, f"audit proof message refused: {e}") from None
        cp = checked.checkpoint
        kept = 0
        for entry in entries:
            proof = {**entry, "format": PROOF_MAGIC, "log_id": cp.log_id, "tree_size": cp.size}
            try:
                fields = check_proof(proof, checked)
            except Refused as e:
                log.warning("audit_proof_refused", reason=str(e))
                continue
            eid = str(fields["envelope_id"])
            if fields["sender"] != self.keys.code.text or self.state.sent(eid) is None:
                continue  # not one of ours
            self.state.record_proof(
                eid,
                cp.log_id,
                int(entry["leaf_index"]),
                cp.size,
                json.dumps(proof),
                cp.note.decode(),
            )
            kept += 1
        log.info("audit_proofs_received", checkpoint=cp.describe(), kept=kept)
        d.ack()

    def _on_part(self, d: Delivery) -> None:
        now = _now()
        part = parse_part(d.body)
        eid = part.header.envelope_id.hex()
        if eid in self._opening or self.state.received(eid) is not None:
            d.ack()  # a duplicate delivery of a document already in the inbox
            return
        if part.header.segment_count == 1:
            # One segment: the part is the whole envelope; opened in memory, every check
            # passed before one byte of plaintext is written (no quarantine file needed).
            def open_one(target: Path) -> envelopes.Opened:
                opened, document = open_part(
                    part, size=len(d.body), keys=self.keys, directory=self.directory, now=now
                )
                _write_new(target, document)
                return opened

            self._assemble(d, eid, open_one, part.header.hash, now, sealed_by=part.header.sender)
            return
        folder = self.spool / eid
        index = part.segment.index
        batch = self._spooling.setdefault(eid, set())  # spooled in this batch, not yet recorded
        if index not in batch and not self.state.has_part(eid, index):
            checked = check_header(part.header.raw, part.header_signature, self.directory, now)
            if part.header.recipient(self.keys.code) is None:
                raise EnvelopeRefused(
                    Reason.NOT_RECIPIENT, f"{self.keys.code} is not a recipient of {eid}"
                )
            check_segment(checked, part.segment)
            spooled_header = folder / "header"
            if spooled_header.exists() and spooled_header.read_bytes() != part.header_frame:
                # One id, two headers: never mix their parts (the gateway refuses it too).
                raise EnvelopeRefused(Reason.ID_REUSE, f"{eid} arrived under another header")
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_durably(folder / "header", part.header_frame, sync=False)
            _write_durably(folder / f"{index:08d}.seg", part.segment_frame, sync=False)
            self._to_sync += [folder / "header", folder / f"{index:08d}.seg"]
            batch.add(index)
            self._after_sync.append((d, lambda: self.state.add_part(eid, index), d.ack))
        else:
            self._after_sync.append((d, lambda: None, d.ack))  # a redelivery: already spooled
        count = part.header.segment_count
        have = self.state.count_parts(eid) + len(batch)
        shown = self._receiving.get(eid)
        if shown is None:
            shown = self._receiving[eid] = Progress(count, f"receiving {eid[:12]}", unit="parts")
        shown.advance(have - shown.done)
        if have < count:
            return
        self._receiving.pop(eid, None)
        stream = _ChainReader([folder / "header"] + [folder / f"{i:08d}.seg" for i in range(count)])

        def open_spooled(target: Path) -> envelopes.Opened:
            return envelopes.open_to_path(
                cast(BinaryIO, stream),
                target,
                keys=self.keys,
                directory=self.directory,
                now=now,
                sync=False,
            )

        try:
            self._assemble(
                d, eid, open_spooled, part.header.hash, now, spooled=folder,
                sealed_by=part.header.sender,
            )  # fmt: skip
        finally:
            stream.close()

    def _assemble(
        self,
        d: Delivery,
        eid: str,
        open_into: Callable[[Path], envelopes.Opened],
        header_hash: bytes,
        now: dt.datetime,
        spooled: Path | None = None,
        sealed_by: AgencyCode | None = None,
    ) -> None:
        """Open a whole envelope into the inbox (``open_into`` writes the verified document
        to a hidden file) and write the sidecar; at the batch end (once both are durable)
        record it and sign the receipt, then ack ``d``, drop the spooled parts and send it."""
        self.config.inbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.config.inbox / f".{eid}.opened"  # renamed once the file name is known
        target.unlink(missing_ok=True)  # left by an attempt that died before the rename
        try:
            opened = open_into(target)
        except EnvelopeRefused as e:
            self.state.record_received(eid, "", header_hash.hex(), "", "refused", str(e))
            shutil.rmtree(self.spool / eid, ignore_errors=True)
            self._refused_document(eid, header_hash, sealed_by, e)
            raise
        info = opened.info.as_dict()
        sender = info["sender"]["code"]
        replaces = opened.metadata.replaces
        try:
            self._check_replacement(eid, replaces, sender)
        except EnvelopeRefused as e:
            target.unlink(missing_ok=True)
            self.state.record_received(eid, "", header_hash.hex(), "", "refused", str(e))
            shutil.rmtree(self.spool / eid, ignore_errors=True)
            self._refused_document(eid, header_hash, sealed_by, e)
            raise
        sidecar_data = {
            "envelope_id": eid,
            "sender": info["sender"],
            "level": info["level"],
            "level_display": Level(info["level"]).display,
            "urgency": info["urgency"],
            "urgency_display": Urgency(info["urgency"]).display,
            "subject": opened.metadata.subject,
            "filename": opened.metadata.filename,
            "fields": dict(opened.metadata.fields),
            "received": now.isoformat(),
            "bytes": opened.document_bytes,
            "recipients": [r["code"] for r in info["recipients"]],
            # The directory version they verified against: "valid when signed" later, once an
            # official is revoked, is checked against that version.
            "signatures": [
                {**_signature_entry(sig), "directory_version": self.directory.version}
                for sig in opened.signatures
            ],
            "replaces": replaces or None,
        }
        try:
            final, sidecar = _place(
                self.config.inbox,
                f"{eid[:12]}-{_safe_filename(opened.metadata.filename) or 'document'}",
                target,
                sidecar_data,
            )
        finally:
            target.unlink(missing_ok=True)  # placed (linked) or not: no hidden plaintext stays
        sidecar_data["document"] = final.name
        self._to_sync += [final, sidecar]
        self._opening.add(eid)

        receipt: list[Notice] = []

        def record() -> None:
            self.state.record_received(eid, sender, header_hash.hex(), str(final), "ok")
            if replaces:
                self.state.set_mark(eid, "replaces", replaces)
                self.state.set_mark(replaces, "replaced_by", eid)
            receipt.append(
                self._sign_notice(
                    KIND_RECEIPT, bytes.fromhex(eid), header_hash, AgencyCode.parse(sender), "01"
                )
            )  # recorded in the same commit as the document

        def announce() -> None:
            d.ack()
            if spooled is not None:
                shutil.rmtree(spooled, ignore_errors=True)
            document = ReceivedDocument(eid, final, sidecar, sidecar_data)
            if replaces and self.state.received(replaces) is not None:
                self._update_sidecar(replaces, {"replaced_by": eid})
            self.received.append(document)
            log.info("received", envelope=eid, sender=sender, label=info["level"])
            self._publish_notice(receipt[0])
            if self.on_received is not None:
                self.on_received(document)

        self._after_sync.append((d, record, announce))

    def _refused_document(
        self, eid: str, header_hash: bytes, sender: AgencyCode | None, e: EnvelopeRefused
    ) -> None:
        """A document refused here is told, never dropped silently: an event for the clerk
        and, when what failed is what its (verified) sender put inside (an official's
        signature, the signed flag, a replacement), a signed 02 "rejected" naming the rule
        (never the details: they are payload metadata)."""
        event = {
            "kind": "refused-document",
            "envelope_id": eid,
            "signer": sender.text if sender else "",
            "rule_id": e.reason.rule_id,
            "reason": str(e),
            "verified": True,
        }
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        if sender is not None and e.reason in _SENDER_CONTENT:
            self._send_notice(
                KIND_STATUS, bytes.fromhex(eid), header_hash, sender, "02",
                # The fixed text only: a notice crosses the gateway unencrypted, and the
                # message names the official (payload metadata).
                f"refused: {e.reason.rule_id}: {e.reason.text}",
            )  # fmt: skip

    def _check_replacement(self, envelope_id: str, replaces: str, sender: str) -> None:
        """A document may replace only one its own sender sent: another agency's claim to
        correct it is refused (never marks someone else's document as replaced)."""
        if not replaces:
            return
        if replaces == envelope_id:
            raise EnvelopeRefused(Reason.PAYLOAD, f"{envelope_id} claims to replace itself")
        old = self.state.received(replaces)
        if old is not None and old["outcome"] == "ok" and old["sender"] != sender:
            raise EnvelopeRefused(
                Reason.PAYLOAD,
                f"{envelope_id} from {sender} claims to replace {replaces}, which"
                f" {old['sender']} sent: only the sender of a document may replace it",
            )

    def _update_sidecar(self, envelope_id: str, changes: dict[str, Any]) -> None:
        """Add marks (replaced by, recall) to a received document's sidecar, in place."""
        got = self.state.received(envelope_id)
        if got is None or not got["path"]:
            return
        sidecar = Path(got["path"] + ".json")
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("sidecar_unreadable", envelope=envelope_id)
            return
        data.update(changes)
        text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        _write_durably(sidecar, text.encode())  # a rename: never written through a link

    def _apply_recall(self, envelope_id: str, how: str) -> Path | None:
        """Move a recalled document and its sidecar into ``inbox/recalled`` (kept, marked)."""
        got = self.state.received(envelope_id)
        if got is None or not got["path"]:
            return None
        path = Path(got["path"])
        folder = self.config.inbox / RECALLED_FOLDER
        if path.parent == folder:
            return path  # moved already
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        sidecar = path.with_name(path.name + ".json")
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {"envelope_id": envelope_id}
        data["recalled"] = {"time": _now().isoformat(), "how": how}
        moved, _ = _place(folder, path.name, path, data)
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        self.state.move_received(envelope_id, str(moved))
        self.state.set_mark(envelope_id, "recalled", str(moved))
        log.info("document_recalled", envelope=envelope_id, how=how)
        return moved

    def recall(self, envelope_id: str, reason: str) -> list[str]:
        """Ask every recipient to recall a document this agency sent (edXML status 13): a
        signed notice to each, through the gateway (which relays a recall only from the
        envelope's sender). Returns the recipients asked."""
        reason = reason.strip()
        if not reason or len(reason) > MAX_TEXT:
            raise UsageError(f"a recall needs a reason of 1..{MAX_TEXT} characters")
        sent = self.state.sent(envelope_id)
        header_hash = self.state.marks(envelope_id).get("header_hash")
        if sent is None or not header_hash:
            raise CipherpostError(
                f"{envelope_id} was not sent by this agency: only its sender may recall it"
            )
        futures = [
            self._send_notice(
                KIND_RECALL,
                bytes.fromhex(envelope_id),
                bytes.fromhex(header_hash),
                AgencyCode.parse(code),
                "13",
                "",
                reason=reason,
            )
            for code in sent["recipients"]
        ]
        for future in futures:
            error = future.exception(timeout=60)
            if error is not None:
                raise CipherpostError(f"recall not delivered to the broker: {error}")
        self.state.set_mark(envelope_id, "recall_requested", reason)
        return list(sent["recipients"])

    def _on_recall(self, notice: Notice) -> dict[str, Any]:
        """A verified recall of a document: marked, and applied at once (15) if this agency
        wants that for documents nobody answered yet."""
        eid = notice.envelope_id.hex()
        got = self.state.received(eid)
        if (
            got is None
            or got["outcome"] != "ok"
            or got["sender"] != notice.signer.text
            or got["header_hash"] != notice.header_hash.hex()
        ):
            return {"recall": "no such document in this inbox (nothing to recall)"}
        self.state.set_mark(eid, "recall_requested", notice.reason)
        self._update_sidecar(
            eid, {"recall_requested": {"time": notice.time.isoformat(), "reason": notice.reason}}
        )
        answered = any(
            r["kind"] == KIND_STATUS and r["signer"] == self.keys.code.text
            for r in self.state.statuses(eid)
        )
        if not self.config.auto_recall_unopened or answered:
            return {"recall": "waiting for the clerk: reply-status ID --code 15 or 16"}
        self._answer_recall(eid, "15", "applied automatically: not yet answered")
        return {"recall": "applied automatically (15): moved to the recalled folder"}

    def _answer_recall(self, envelope_id: str, status: str, note: str) -> Future[None]:
        got = self.state.received(envelope_id)
        assert got is not None
        future = self._reply(envelope_id, got, status, note)
        self.state.set_mark(envelope_id, "recall_answer", status)
        if status == "15":
            self._apply_recall(envelope_id, "agreed (15)" + (f": {note}" if note else ""))
        return future

    # --- statuses ----------------------------------------------------------------------------

    def _sign_notice(
        self,
        kind: str,
        envelope_id: bytes,
        header_hash: bytes,
        addressee: AgencyCode,
        status: str,
        note: str = "",
        *,
        reason: str = "",
    ) -> Notice:
        """Sign a notice of this agency and record it (committed with the caller's batch)."""
        notice = sign_notice(
            self.keys.signing_key,
            kind=kind,
            envelope_id=envelope_id,
            header_hash=header_hash,
            signer=self.keys.code,
            addressee=addressee,
            status=status,
            now=_now(),
            note=note,
            reason=reason,
        )
        self.state.record_status(notice, True)
        return notice

    def _publish_notice(self, notice: Notice) -> Future[None]:
        props = wire.notice(self.broker.login)
        return self.publisher.publish(SUBMIT_EXCHANGE, self.keys.code.text, notice.raw, props)

    def _send_notice(
        self,
        kind: str,
        envelope_id: bytes,
        header_hash: bytes,
        addressee: AgencyCode,
        status: str,
        note: str = "",
        *,
        reason: str = "",
    ) -> Future[None]:
        """Sign, record and publish a notice now (outside a receive batch)."""
        notice = self._sign_notice(
            kind, envelope_id, header_hash, addressee, status, note, reason=reason
        )
        return self._publish_notice(notice)

    def _reply(self, envelope_id: str, got: dict[str, Any], status: str, note: str) -> Future[None]:
        """A signed status about a received envelope, to its sender."""
        return self._send_notice(
            KIND_STATUS,
            bytes.fromhex(envelope_id),
            bytes.fromhex(got["header_hash"]),
            AgencyCode.parse(got["sender"]),
            status,
            note,
        )

    def reply_status(self, envelope_id: str, status: str, note: str = "") -> None:
        """Send a signed status about a received envelope back to its sender: 02..06, or the
        answer to a recall (15 agreed: the document moves to ``inbox/recalled``; 16 refused)."""
        allowed = (*REPLY_STATUSES, *RECALL_ANSWERS)
        if status not in allowed:
            raise UsageError(
                f"--code must be one of {', '.join(allowed)} "
                f"({', '.join(STATUS_NAMES[s] for s in allowed)})"
            )
        got = self.state.received(envelope_id)
        if got is None or got["outcome"] != "ok":
            raise CipherpostError(f"no received envelope {envelope_id} in this agent's inbox")
        if status in RECALL_ANSWERS:
            marks = self.state.marks(envelope_id)
            if "recall_requested" not in marks:
                raise UsageError(
                    f"{status} answers a recall, and {got['sender']} has not recalled {envelope_id}"
                )
            if "recall_answer" in marks:
                raise CipherpostError(
                    f"the recall of {envelope_id} was answered already ({marks['recall_answer']})"
                )
            future = self._answer_recall(envelope_id, status, note)
            error = future.exception(timeout=60)
            if error is not None:
                raise CipherpostError(f"status not delivered to the broker: {error}")
            return
        future = self._reply(envelope_id, got, status, note)
        error = future.exception(timeout=60)
        if error is not None:
            raise CipherpostError(f"status not delivered to the broker: {error}")

    def resolve(self, envelope_id: str) -> str:
        """The full envelope id for an id or a unique prefix of one (inbox files show 12)."""
        wanted = envelope_id.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{1,32}", wanted):
            raise UsageError(f"{envelope_id!r} is not an envelope id (hex digits)")
        if len(wanted) == 32:
            return wanted
        found = self.state.resolve(wanted)
        if not found:
            raise CipherpostError(f"this agent knows no envelope starting with {wanted}")
        if len(found) > 1:
            raise UsageError(
                f"{wanted} is the start of {len(found)} envelopes ({', '.join(found[:4])}"
                f"{', …' if len(found) > 4 else ''}): give more digits"
            )
        return found[0]

    def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        """Sent envelopes, newest first, with each recipient's latest known state."""
        out = []
        for row in self.state.outbox(limit):
            eid = row["envelope_id"]
            marks = self.state.marks(eid)
            notices = self.state.statuses(eid)
            refusal = next((n for n in notices if n["kind"] == "rejection"), None)
            accepted = self.state.proof(eid) is not None
            recipients = {}
            for code in row["recipients"]:
                latest = [n for n in notices if n["signer"] == code and n["kind"] != "rejection"]
                if refusal is not None:
                    state = f"refused ({refusal['rule_id']})"
                elif latest:
                    status = latest[-1]["status"]
                    state = f"{status} {STATUS_NAMES.get(status, status)}"
                elif row["state"] == INTERRUPTED:
                    state = f"interrupted ({row['confirmed']} of {row['parts']} parts sent)"
                elif row["state"] == SENDING:
                    state = "sending"
                else:
                    state = "accepted by the gateway" if accepted else "queued"
                if "recall_requested" in marks and not (
                    latest and latest[-1]["status"] in RECALL_ANSWERS
                ):
                    state += "; recall requested (13), no answer yet"
                recipients[code] = state
            links: dict[str, Any] = {k: marks[k] for k in ("replaces", "replaced_by") if k in marks}
            out.append({**row, "by_recipient": recipients, **links})
        return out

    def status(self, envelope_id: str) -> dict[str, Any]:
        """Per recipient, the gateway's decisions and the signed statuses, each re-verified."""
        sent = self.state.sent(envelope_id)
        received = self.state.received(envelope_id)
        rows = self.state.statuses(envelope_id)
        if sent is None and received is None and not rows:
            raise CipherpostError(f"this agent knows nothing of envelope {envelope_id}")
        history: dict[str, list[dict[str, Any]]] = {
            c: [] for c in (sent or {}).get("recipients", [])
        }
        gateway: list[dict[str, Any]] = []
        for row in rows:
            try:
                verify_notice(row["raw"], self.directory, _now())
                verified = True
            except EnvelopeRefused:
                verified = False
            item = {
                k: row[k] for k in ("time", "kind", "signer", "status", "rule_id", "reason", "note")
            }
            item["status_name"] = STATUS_NAMES.get(row["status"], row["status"])
            item["verified"] = verified
            if row["kind"] == "rejection":
                gateway.append(item)
            else:
                history.setdefault(row["signer"], []).append(item)
        return {
            "envelope_id": envelope_id,
            "sent": sent,
            "received": received,
            "gateway": gateway,
            "recipients": history,
            "audit": self._audit_status(envelope_id),
            "marks": {k: v for k, v in self.state.marks(envelope_id).items() if k != "header_hash"},
        }

    def _audit_status(self, envelope_id: str) -> dict[str, Any] | None:
        """Where the gateway logged this envelope, with its proof checked again."""
        stored = self.state.proof(envelope_id)
        if stored is None:
            return None
        cp = parse_checkpoint(stored["checkpoint"].encode())
        proof = json.loads(stored["proof"])
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(base64.b64decode(proof["leaf"])),
                int(proof["leaf_index"]),
                cp.size,
                [base64.b64decode(h) for h in proof["proof"]],
                cp.root,
            )
            verified = True
        except (merkle.ProofError, ValueError, KeyError):
            verified = False
        return {
            "log_id": stored["log_id"],
            "leaf_index": stored["leaf_index"],
            "checkpoint": cp.describe(),
            "checkpoint_size": cp.size,
            "verified": verified,
        }


class ReceiverRunning(CipherpostError):
    """Another process receives for this agency now (``receive --follow``): it takes in the
    notices too, so a command that only wanted them can read the state instead."""


class _ReceiveLock:
    """An exclusive lock on the agency folder for one receiver at a time (released on exit,
    and by the kernel if the process dies)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "receive.lock"
        self._fd: int | None = None

    def __enter__(self) -> _ReceiveLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ReceiverRunning(
                f"another receiver is running for this agency (process {other}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class _ChainReader(io.RawIOBase):
    """The spooled header and segment files read back as one ``.cpe`` stream."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths: Iterator[Path] = iter(paths)
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._current is None:
                nxt = next(self._paths, None)
                if nxt is None:
                    break
                self._current = nxt.open("rb")
            chunk = self._current.read(-1 if n < 0 else n - len(out))
            if not chunk:
                self._current.close()
                self._current = None
                continue
            out += chunk
        return bytes(out)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (never an existing file, never through a link) holding ``data``; the
    caller fsyncs it. Removed again if the write fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _signature_entry(sig: OfficialSignature) -> dict[str, Any]:
    """One official's signature as the sidecar, ``receive --json`` and the SDK show it."""
    return {**sig.as_dict(), "verified": True, "display": f"signed by {sig.signer} [verified]"}


def _write_durably(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write via a temporary file and a rename, in the agent's own folder (the spool);
    ``sync=False``: the caller fsyncs later. Never follows a link planted in its place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _place(inbox: Path, name: str, opened: Path, sidecar: dict[str, Any]) -> tuple[Path, Path]:
    """Link the opened document into the inbox and create its sidecar beside it, under names
    free for both: nothing in the inbox is ever overwritten or written through a link (a
    co-recipient can choose a name and an id prefix; anyone with the folder can plant links)."""
    stem, dot, suffix = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    for i in range(10_000):
        candidate = inbox / (name if i == 0 else f"{stem}-{i}{dot}{suffix}")
        meta = candidate.with_name(candidate.name + ".json")
        if candidate.exists() or candidate.is_symlink() or meta.exists() or meta.is_symlink():
            continue
        try:
            os.link(opened, candidate)  # fails if it appeared meanwhile: never clobber
        except FileExistsError:
            continue
        try:
            fd = os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            candidate.unlink()
            continue
        with os.fdopen(fd, "wb") as f:
            data = {**sidecar, "document": candidate.name}
            f.write((json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode())
        return candidate, meta
    raise CipherpostError(f"too many files named like {name} in {inbox}")


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder: so the renames in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


MAX_NAME_BYTES = 200  # a file name is at most 255 bytes: room for "-9999" and ".json"


def _safe_filename(name: str) -> str:
    """A sender-chosen file name, made harmless: no folders, no control characters, and at
    most :data:`MAX_NAME_BYTES` bytes of UTF-8 (whole characters; the extension kept)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE_NAME.sub("_", base).strip(". ")
    if len(base.encode()) <= MAX_NAME_BYTES:
        return base
    stem, dot, suffix = base.rpartition(".")
    if not dot or len(suffix.encode()) > 16:
        stem, dot, suffix = base, "", ""
    budget = MAX_NAME_BYTES - len((dot + suffix).encode())
    cut = stem.encode()[:budget].decode(errors="ignore").rstrip(". ")
    return cut + dot + suffix
