"""Live directory: each signed version the cipher department publishes on ``cp.directory``.

A holder (gateway or agent) consumes its own queue, verifies each version
against its trust state (CA signature, not expired, no rollback) and, when
good and newer, saves it over its directory file and hands it on. A bad
version is logged and dropped: the last good one stays in force.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pika
from cryptography import x509

from broker import wire
from broker.connection import Backoff, BrokerConfig, BrokerError, connect_blocking
from broker.consumer import Consumer, Delivery
from broker.publisher import ConfirmingPublisher
from broker.topology import DIRECTORY_EXCHANGE, FEED_QUEUE_ARGUMENTS, shown
from keys.directory import Directory, TrustState
from keys.errors import CipherpostError, Refused
from keys.keystore import write_private_file
from keys.logsetup import get_logger

log = get_logger("cipherpost.directory")


class DirectoryFeed:
    """Applies published directory versions for one holder."""

    def __init__(
        self,
        broker: BrokerConfig,
        queue: str,
        *,
        current: Directory,
        trust: TrustState,
        ca_certificate: x509.Certificate,
        path: Path,
        on_update: Callable[[Directory], None],
        declare: bool = False,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.current = current
        self.trust = trust
        self.ca_certificate = ca_certificate
        self.path = path
        self.on_update = on_update
        self.declare = declare
        self.refused = 0
        self.refusals: list[str] = []  # the latest reasons, newest last (also logged)
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def apply(self, data: bytes) -> Directory | None:
        """Verify one published version; the new directory if it replaced the current one."""
        with self._lock:
            try:
                new = Directory.load(
                    data,
                    self.trust,
                    now=dt.datetime.now(dt.UTC),
                    ca_certificate=self.ca_certificate,
                )
            except Refused as e:
                self.refused += 1
                self.refusals = [*self.refusals[-19:], str(e)]
                log.warning("directory_refused", reason=str(e), kept_version=self.current.version)
                return None
            if new.version <= self.current.version:
                return None  # the one in force already (or an older one this holder skipped)
            write_private_file(self.path, data)
            self.current = new
        log.info("directory_updated", version=new.version, agencies=len(new.entries))
        self.on_update(new)
        return new

    def _handle(self, d: Delivery) -> None:
        try:
            self.apply(d.body)
        except OSError as e:  # cannot save it: try again later rather than lose it
            log.error("directory_not_saved", error=e.strerror)
            d.reject(requeue=True)
            return
        d.ack()

    def _declare(self) -> None:
        connection = connect_blocking(self.broker)
        try:
            ch = connection.channel()
            ch.queue_declare(self.queue, durable=True, arguments=FEED_QUEUE_ARGUMENTS)
            ch.queue_bind(self.queue, DIRECTORY_EXCHANGE)
        except pika.exceptions.AMQPError as e:
            raise BrokerError(
                f"cannot declare the directory queue {self.queue}: {e} (re-run broker provision?)"
            ) from None
        finally:
            if connection.is_open:
                connection.close()

    def drain(self) -> int:
        """Apply what is waiting now (short-lived commands); how many messages were read."""
        try:
            connection = connect_blocking(self.broker)
        except BrokerError:
            return 0  # offline: the command itself reports the broker
        read = 0
        try:
            ch = connection.channel()
            while True:
                method, _, body = ch.basic_get(self.queue)
                if method is None:
                    break
                read += 1
                self.apply(body)
                ch.basic_ack(method.delivery_tag)
        except (pika.exceptions.AMQPError, CipherpostError) as e:
            log.warning(
                "directory_feed_unavailable", queue=shown(self.queue), error=type(e).__name__
            )
        finally:
            if connection.is_open:
                connection.close()
        return read

    def start(self) -> None:
        """Follow the feed in a background thread (long-running gateway and agents)."""
        if self.declare:
            self._declare()
        self._stopped.clear()  # a holder may follow, stop, and follow again
        self._consumer = Consumer(self.broker, self.queue, self._handle, prefetch=4)
        self._thread = threading.Thread(target=self._follow, name="directory-feed", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        """Consume until stopped. A queue that is gone (deleted, or lost with a node's state
        in a partition's recovery) must not end the feed in silence: the holder would keep
        an old directory and never hear of a revocation. A holder that declares its queue
        declares it again; one that does not (an agent) waits for provision to restore it."""
        assert self._consumer is not None
        consumer = self._consumer
        backoff = Backoff()
        while not consumer.stopping:
            try:
                consumer.run()
                return
            except BrokerError as e:
                log.error("directory_feed_lost", queue=shown(self.queue), error=str(e))
            if consumer.stopping or self._stopped.wait(backoff.next()):
                return
            if self.declare:
                try:
                    self._declare()
                    log.info("directory_queue_declared_again", queue=shown(self.queue))
                except BrokerError as e:
                    log.error("directory_feed_lost", queue=shown(self.queue), error=str(e))

    def stop(self) -> None:
        self._stopped.set()
        if self._consumer is not None:
            self._consumer.stop()
        if self._thread is not None:
            self._thread.join(10)


def publish_directory(broker: BrokerConfig, data: bytes, attempts: int = 3) -> None:
    """Publish one directory version to every holder (confirmed by the broker)."""
    for attempt in range(1, attempts + 1):
        try:
            _publish_once(broker, data)
            return
        except BrokerError as e:
            if attempt == attempts:
                raise
            log.warning("directory_publish_retry", attempt=attempt, error=str(e))
            time.sleep(2.0 * attempt)


def _publish_once(broker: BrokerConfig, data: bytes) -> None:
    with ConfirmingPublisher(broker) as publisher:
        future = publisher.publish(
            DIRECTORY_EXCHANGE,
            "",
            data,
            wire.directory(),
        )
        error = future.exception(timeout=60)
    if error is not None:
        raise BrokerError(f"directory not published: {error}")
