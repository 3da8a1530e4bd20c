"""Receiving: consume this agency's inbox queue, one receiver at a time; spool each
verified part to disk before acking it, open an envelope once every part is there (see
:mod:`agents.opening`), take in notices and audit proofs. Files of one consumer batch are
made durable together (one fsync round), then recorded in one commit, acked, receipted;
spooled parts of an envelope that expired incomplete are dropped."""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import os
import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import envelopes
from agents.base import utc_now
from agents.durable import fsync_path, write_durably, write_new
from agents.opening import Opening, ReceivedDocument
from agents.progress import Progress
from broker.consumer import Consumer, Delivery
from broker.wire import MESSAGE_AUDIT_PROOF, MESSAGE_NOTICE
from envelopes.checking import check_header, check_segment, open_part
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.frames import decode_frame, parse_header_frame
from envelopes.header import Header
from envelopes.parts import parse_part
from keys.errors import CipherpostError
from keys.logsetup import get_logger

log = get_logger("cipherpost.agent")


class Inbox(Opening):
    """The agent's receiving part (a part of :class:`agents.client.Client`): the receive
    loop, spooling parts, and the batch end that makes them durable."""

    _receiving: dict[str, Progress]  # envelopes arriving in parts, shown
    _spooling: dict[str, set[int]]

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
        now = now or utc_now()
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
                fsync_path(path)
            for folder in {p.parent for p in paths}:
                fsync_path(folder)  # the renames too
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

    def _on_part(self, d: Delivery) -> None:
        now = utc_now()
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
                write_new(target, document)
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
            write_durably(folder / "header", part.header_frame, sync=False)
            write_durably(folder / f"{index:08d}.seg", part.segment_frame, sync=False)
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
