"""A consumer loop with reconnect and backoff, and thread-safe acks.

The handler runs on the consumer's thread and receives a :class:`Delivery`.
``on_batch_end`` (optional) runs on that thread after each poll has handed
out every delivery it brought, after every quarter of the prefetch window,
and at least every 0.2 s: a handler can defer
durability to it and commit a batch at once (group commit).
It may ack or reject at once, or later from any thread (for instance when the
publisher confirms a forward). Settlements are noted, not sent one by one: the
connection's thread sends them at every batch end, and a group of them made
on other threads costs one ``add_callback_threadsafe`` hand-off; a run of
acks goes as one ``basic_ack(multiple=True)`` (:class:`Settler`). An ack for
a delivery of a connection that has since died is dropped: the broker
redelivers that message, and the consumer deduplicates it.

In a cluster nothing stops it silently: a broker-initiated cancel (the queue's
node went down, the queue was deleted) is logged and consumed again; a 404
because a queue's home node is down, a connection closed by a stopping node, a
lost link: logged, then a reconnect to another node (shuffled, jittered
backoff). A recovery is logged when it succeeds, too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pika
import pika.adapters.blocking_connection
import pika.frame
import pika.spec

from broker import wire
from broker.connection import Backoff, BrokerConfig, BrokerError, connect_blocking
from broker.topology import shown
from keys.logsetup import get_logger

log = get_logger("cipherpost.broker")
POLL_S = 0.2
REFRESH_S = 5.0  # a many-queue consumer looks for new (or re-created) queues this often
Queues = str | Sequence[str] | Callable[[], Sequence[str]]


class Settler:
    """The acks and rejects of one channel, sent together (no per-ack hand-off, no per-ack flush).

    :meth:`Delivery.ack` and :meth:`Delivery.reject` only note the outcome;
    :meth:`flush` (on the connection's thread: at every batch end, and once per
    group of settlements made on other threads) sends them. Acks of a run of
    deliveries with nothing unsettled before them go as one
    ``basic_ack(multiple=True)``; an ack behind a delivery still being handled
    goes alone (a multiple ack would cover the unsettled one too).
    """

    def __init__(
        self,
        connection: pika.BlockingConnection,
        channel: pika.adapters.blocking_connection.BlockingChannel,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        # Handed out and not yet settled on the wire, in delivery order: None while it is
        # being handled, then "ack", "requeue" or "drop".
        self._open: dict[int, str | None] = {}
        self._scheduled = False

    def delivered(self, tag: int) -> None:
        with self._lock:
            self._open[tag] = None

    def settle(self, tag: int, outcome: str) -> None:
        """Note ``outcome`` for ``tag``; from another thread, make sure a flush follows."""
        with self._lock:
            if self._open.get(tag, "gone") is not None:
                return  # settled already (the first settlement holds), or never delivered here
            self._open[tag] = outcome
            if threading.get_ident() == self._thread or self._scheduled:
                return  # the connection's thread flushes at its batch end
            self._scheduled = True
        try:
            self._connection.add_callback_threadsafe(self.flush)
        except (pika.exceptions.ConnectionWrongStateError, AttributeError):
            pass  # the connection is gone: the broker will redeliver

    def flush(self) -> None:
        """Send every noted outcome (on the connection's thread)."""
        with self._lock:
            self._scheduled = False
            frames = self._frames()
        if not frames or not self._channel.is_open:
            return
        try:
            for outcome, tag, multiple in frames:
                if outcome == "ack":
                    self._channel.basic_ack(tag, multiple=multiple)
                else:
                    self._channel.basic_reject(tag, requeue=outcome == "requeue")
        except (pika.exceptions.AMQPError, OSError) as e:
            # The link died under us: the broker redelivers, and the consumer deduplicates.
            log.info("settle_lost", deliveries=len(frames), error=type(e).__name__)

    def _frames(self) -> list[tuple[str, int, bool]]:
        frames: list[tuple[str, int, bool]] = []
        run: list[int] = []  # acks with nothing unsettled before them
        first = True  # nothing unsettled seen yet
        for tag, outcome in list(self._open.items()):
            if outcome is None:
                first = False
                continue
            del self._open[tag]
            if outcome == "ack" and first:
                run.append(tag)
                continue
            if run:
                frames.append(("ack", run[-1], len(run) > 1))
                run = []
            frames.append((outcome, tag, False))
        if run:
            frames.append(("ack", run[-1], len(run) > 1))
        return frames


@dataclass
class Delivery(wire.Received):
    """One message as received, with ack/reject usable from any thread."""

    body: bytes
    properties: pika.BasicProperties
    redelivered: bool
    delivery_tag: int
    _settler: Settler
    queue: str = ""
    routing_key: str | None = ""  # as published: a topic permission lets only its owner use it

    def ack(self) -> None:
        """Acknowledge (from any thread; a delivery settles once)."""
        self._settler.settle(self.delivery_tag, "ack")

    def reject(self, requeue: bool = False) -> None:
        """Reject; without requeue the message is dead-lettered (from any thread)."""
        self._settler.settle(self.delivery_tag, "requeue" if requeue else "drop")


class Consumer:
    """Consume one queue, or many on one channel, until :meth:`stop`, reconnecting with backoff.

    ``queue`` is one name, a list, or a function giving the current list (asked
    again on every connect and every :data:`REFRESH_S` seconds). With many
    queues, one that does not exist (yet) is skipped and looked for again later:
    a missing queue must not close the channel every other queue is consumed on.
    """

    def __init__(
        self,
        config: BrokerConfig,
        queue: Queues,
        handler: Callable[[Delivery], None],
        *,
        prefetch: int = 64,
        on_connected: Callable[[], None] | None = None,
        on_batch_end: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.queue = queue if isinstance(queue, str) else "+".join(self._names(queue)[:3])
        self._queues = queue
        self.handler = handler
        self.prefetch = prefetch
        self.on_connected = on_connected
        self.on_batch_end = on_batch_end
        # Settle in quarter-windows: the broker refills the window while the rest is handled.
        self.batch_max = max(1, prefetch // 4)
        self._in_batch = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._drain: Callable[[], None] | None = None
        self._last = time.monotonic()
        self._settler: Settler | None = None
        self.connected = threading.Event()

    @staticmethod
    def _names(queues: Queues) -> list[str]:
        if isinstance(queues, str):
            return [queues]
        return list(queues() if callable(queues) else queues)

    def stop(self) -> None:
        """Ask the loop to finish after the current message."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def pause(self) -> None:
        """Stop taking deliveries (the consumers are cancelled at the next poll; what pika
        had not yet handed out goes back to the queue) until :meth:`resume`. The connection
        and the batch callbacks go on. Nothing sits unacked meanwhile: a delivery held
        longer than the broker's ``consumer_timeout`` (30 min) closes the channel and counts
        towards the queue's delivery limit, after which it would be dead-lettered."""
        self._paused.set()

    def resume(self) -> None:
        """Take deliveries again (at the next poll)."""
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def run(
        self, *, until_idle: float | None = None, drain: Callable[[], None] | None = None
    ) -> None:
        """Consume until stopped (or, with ``until_idle``, until that many seconds pass quietly).

        ``drain`` runs after the last message was handed out and before the
        connection closes: work in flight (e.g. forwards awaiting confirms)
        finishes and its acks still reach the broker.
        """
        self._drain = drain
        self._last = time.monotonic()  # idle time counts across reconnects
        backoff = Backoff()
        unreachable: BrokerError | None = None
        lost = False
        while not self._stop.is_set():
            if until_idle is not None and time.monotonic() - self._last > until_idle:
                if unreachable is not None:
                    # A round that ends on its own must not pass off "could not look" as
                    # "nothing there": what was not taken stays queued for the next round.
                    raise unreachable
                return
            try:
                connection = connect_blocking(self.config)
            except BrokerError as e:
                log.warning("consumer_connect_failed", queue=shown(self.queue), error=str(e))
                unreachable = e
                lost = True
                if self._stop.wait(backoff.next()):
                    return
                continue
            unreachable = None
            if lost:
                log.info("consumer_reconnected", queue=shown(self.queue), node=_node(connection))
            try:
                if self._consume(connection, until_idle, backoff):
                    return
            except (
                pika.exceptions.AMQPConnectionError,
                pika.exceptions.AMQPChannelError,
                pika.exceptions.StreamLostError,
                ValueError,  # pika: "Timeout closed before call" when the link dies mid-poll
                pika.exceptions.ConnectionClosed,
            ) as e:
                self.connected.clear()
                lost = True
                if isinstance(e, pika.exceptions.ChannelClosedByBroker) and e.reply_code == 403:
                    raise BrokerError(f"broker denied access to queue {self.queue}") from e
                if (
                    isinstance(e, pika.exceptions.ChannelClosedByBroker)
                    and e.reply_code == 404
                    and "home node" not in str(e.reply_text)
                ):
                    raise BrokerError(
                        f"queue {shown(self.queue)} does not exist (not provisioned?)"
                    ) from e
                # A queue whose home node is down (404 "home node ... is down"), a node that
                # is stopping (320), a lost link: another node may serve it now.
                log.warning(
                    "consumer_connection_lost",
                    queue=shown(self.queue),
                    node=_node(connection),
                    error=type(e).__name__,
                    detail=str(e)[:160],
                )
                if self._stop.wait(backoff.next()):
                    return
            finally:
                self.connected.clear()
                if connection.is_open:
                    try:
                        connection.close()
                    except Exception:  # noqa: S110 - closing a broken connection
                        pass

    def _consume(
        self, connection: pika.BlockingConnection, until_idle: float | None, backoff: Backoff
    ) -> bool:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        settler = self._settler = Settler(connection, channel)
        by_tag: dict[str, str] = {}
        cancelled: list[str] = []

        def on_cancel(frame: pika.frame.Method) -> None:
            # The broker ended a consumer (its queue's node went down, or the queue was
            # deleted): consumed again below, never a silent stop.
            name = by_tag.pop(frame.method.consumer_tag, "?")
            cancelled.append(name)
            log.warning("consumer_cancelled_by_broker", queue=shown(name), node=_node(connection))

        channel.add_on_cancel_callback(on_cancel)

        def on_message(
            ch: pika.adapters.blocking_connection.BlockingChannel,
            method: pika.spec.Basic.Deliver,
            properties: pika.BasicProperties,
            body: bytes,
        ) -> None:
            self._last = time.monotonic()
            settler.delivered(method.delivery_tag)
            self.handler(
                Delivery(
                    body,
                    properties,
                    bool(method.redelivered),
                    method.delivery_tag,
                    settler,
                    queue=shown(by_tag.get(method.consumer_tag or "", "")),
                    routing_key=method.routing_key or "",
                )
            )
            self._in_batch += 1
            if self._in_batch >= self.batch_max:
                self._batch_end()

        def consume_new() -> None:
            if self._paused.is_set():
                return
            for name in self._names(self._queues):
                if name in by_tag.values():
                    continue
                if not isinstance(self._queues, str) and not _exists(connection, name):
                    continue  # not provisioned yet: looked for again at the next refresh
                by_tag[channel.basic_consume(name, on_message)] = name

        consume_new()
        paused_here = self._paused.is_set()  # consumers not started, or cancelled, by a pause
        self.connected.set()
        backoff.reset()
        if self.on_connected is not None:
            self.on_connected()
        refreshed = time.monotonic()
        while not self._stop.is_set():
            connection.process_data_events(time_limit=POLL_S)
            _raise_if_closed(channel)
            self._batch_end()
            if self._paused.is_set() != paused_here:
                paused_here = self._pause_or_resume(channel, by_tag, cancelled, consume_new)
            if cancelled and not paused_here:
                _resume_cancelled(connection, cancelled, consume_new)
            if until_idle is not None and time.monotonic() - self._last > until_idle:
                self._stop.set()
            if not isinstance(self._queues, str) and time.monotonic() - refreshed > REFRESH_S:
                refreshed = time.monotonic()
                consume_new()  # nothing while paused
        # No new deliveries from here; unacked ones are requeued when the connection closes.
        _cancel_all(channel, by_tag)
        self._batch_end()
        if self._drain is not None:
            _serve_while(connection, self._drain)
        connection.process_data_events(time_limit=0)
        settler.flush()
        return True

    def _pause_or_resume(
        self,
        channel: pika.adapters.blocking_connection.BlockingChannel,
        by_tag: dict[str, str],
        cancelled: list[str],
        consume_new: Callable[[], None],
    ) -> bool:
        """Apply a pause (cancel every consumer) or its end (consume again); True if paused."""
        node = _node(channel.connection)
        if self._paused.is_set():
            _cancel_all(channel, by_tag)  # what pika holds undispatched goes back
            log.info("consumer_paused", queues=len(by_tag), node=node)
            by_tag.clear()
            cancelled.clear()
            return True
        consume_new()
        log.info("consumer_unpaused", queues=len(by_tag), node=node)
        return False

    def _batch_end(self) -> None:
        self._in_batch = 0
        # Every delivery the last poll brought has been handed out: the handler may now
        # make a whole batch durable at once (one commit, one fsync round) and settle it.
        if self.on_batch_end is not None:
            self.on_batch_end()
        if self._settler is not None:
            self._settler.flush()  # what was settled goes out together


def _resume_cancelled(
    connection: pika.BlockingConnection, cancelled: list[str], consume_new: Callable[[], None]
) -> None:
    """Consume again the queues whose consumers the broker cancelled."""
    # A 404 here (home node down) closes the channel: the caller reconnects.
    consume_new()
    log.info(
        "consumer_resumed",
        queues=",".join(shown(c) for c in cancelled),
        node=_node(connection),
    )
    cancelled.clear()


def _raise_if_closed(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    """A channel the broker closed (an ack it did not expect, a delivery held past its
    ``consumer_timeout``) raises here: pika's poll does not, and the consumer would wait on
    a dead channel while its connection looks well."""
    if channel.is_open:
        return
    reason = getattr(channel, "_closing_reason", None)
    if isinstance(reason, pika.exceptions.ChannelClosed):
        raise reason
    raise pika.exceptions.ChannelClosed(0, "channel closed")


def _serve_while(connection: pika.BlockingConnection, work: Callable[[], None]) -> None:
    """Run ``work`` in a thread while serving the connection (its queued acks go out)."""
    done = threading.Event()

    def run() -> None:
        try:
            work()
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    while not done.is_set():
        connection.process_data_events(time_limit=POLL_S)


def _cancel_all(
    channel: pika.adapters.blocking_connection.BlockingChannel, by_tag: dict[str, str]
) -> None:
    """Cancel every consumer of ``channel``. A channel the broker closed meanwhile (a cut
    connection) has no consumer left to cancel: pika then asserts on its own bookkeeping,
    and the link's loss is what the caller sees next."""
    for consumer_tag in list(by_tag):
        if not channel.is_open:
            return
        try:
            channel.basic_cancel(consumer_tag)
        except AssertionError:  # pika: the channel closed between the check and the cancel
            return


def _node(connection: pika.BlockingConnection) -> str:
    """host:port of the node a connection went to (for logs)."""
    params = getattr(getattr(connection, "_impl", None), "params", None)
    return f"{params.host}:{params.port}" if params is not None else "?"


def _exists(connection: pika.BlockingConnection, queue: str) -> bool:
    """Whether ``queue`` exists, asked on a scratch channel (a 404 closes the channel)."""
    scratch = connection.channel()
    try:
        scratch.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code != 404:
            raise
        log.warning("consumer_queue_missing", queue=shown(queue))
        return False
    scratch.close()
    return True
