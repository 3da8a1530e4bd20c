"""A publisher with pipelined confirms, reconnect, and republish after a reconnect.

pika's BlockingChannel waits for each confirm in turn (about 1k msg/s here).
This publisher runs a ``SelectConnection`` in its own thread and keeps a
window of messages in flight; :meth:`ConfirmingPublisher.publish` returns a
future that resolves when the broker confirmed the message. A message that is
nacked, or in flight when the connection drops, is published again. A message
not confirmed within the timeout on a live, unblocked connection makes the
publisher reconnect (to another node of a cluster) and republish there; never a
second copy on the same live or blocked connection: during a broker stall (a
memory alarm blocks publishers) both copies would wait and both arrive, and the
second would look like a replay (issue 10). A message nacked again and again on
one connection for ``nack_reconnect`` seconds also makes it reconnect: RabbitMQ 3.10 keeps,
per channel, whether a quorum queue takes publishes, and a channel that asked while the
queue's leader was being killed can go on refusing for minutes while a fresh channel is
taken at once (seen in the cluster tests). The gateway still takes a
byte-identical copy from its signer as a duplicate. A message
returned as unroutable (``mandatory=True``) fails its future: nothing is
silently dropped.
"""

from __future__ import annotations

import collections
import itertools
import struct
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import pika
import pika.channel
import pika.frame
import pika.spec

from broker import wire
from broker.connection import Backoff, BrokerConfig, BrokerError
from keys.logsetup import get_logger

MAX_IN_FLIGHT = 512
MAX_BYTES_IN_FLIGHT = 32 * 1024 * 1024
CONFIRM_TIMEOUT_S = 30.0
NACK_RETRY_S = 0.2  # first pause before a nacked message goes out again (doubling, 5 s at most)
# Nacked again and again for this long: the broker cannot take it (a quorum queue without a
# majority), and the caller hears so. Time, not a count: a leader election on a loaded
# machine took ~30 s, and ten quick retries had all been spent inside it.
NACK_GIVE_UP_S = 120.0
# Nacked on one connection for this long: the next attempt goes out on a new connection
# (another node first), not on the channel that keeps refusing.
NACK_RECONNECT_S = 10.0
TICK_S = 0.5

log = get_logger("cipherpost.broker")


class Unroutable(BrokerError):
    """The broker returned a mandatory message: no queue is bound for it."""


@dataclass
class _Pending:
    seq: int
    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    future: Future[None] = field(default_factory=Future)
    attempts: int = 0
    first_nack: float = 0.0  # the first nack of all (gives up NACK_GIVE_UP_S later)
    nacked_here: float = 0.0  # the first nack on the current connection
    sent_at: float = 0.0
    returned: bool = False


class ConfirmingPublisher:
    """Thread-safe publishing with confirms pipelined over one connection in a thread."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_bytes: int = MAX_BYTES_IN_FLIGHT,
        confirm_timeout: float = CONFIRM_TIMEOUT_S,
        connect_timeout: float = 30.0,
        nack_reconnect: float = NACK_RECONNECT_S,
    ) -> None:
        self._config = config
        self._confirm_timeout = confirm_timeout
        self._nack_reconnect = nack_reconnect
        self.connections_opened = 0  # channels opened so far (reconnects: this minus one)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_bytes = max_bytes
        self._bytes = 0
        self._bytes_cv = threading.Condition()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._to_send: collections.deque[int] = collections.deque()
        self._tags: dict[int, int] = {}  # delivery tag -> seq, for the current channel
        self._next_tag = 1
        self._seq = itertools.count(1)
        self._channel: pika.channel.Channel | None = None
        self._connection: pika.SelectConnection | None = None
        self._closing = False
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._backoff = Backoff()
        self._order = config.node_order()
        self._attempt = 0
        self._blocked = False
        self._fatal: BaseException | None = None
        self._ioloop_ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cipherpost-publisher", daemon=True)
        self._thread.start()
        if not self._ready.wait(connect_timeout):
            self.close(timeout=0)
            raise BrokerError(f"broker not reachable at {config.describe()} (publisher)")
        if self._fatal is not None:
            raise self._fatal

    # --- caller side -------------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties | None = None,
    ) -> Future[None]:
        """Queue a persistent, mandatory publish; the future resolves on the broker's confirm."""
        if self._closing:
            raise BrokerError("publisher is closed")
        self._slots.acquire()
        with self._bytes_cv:
            while self._bytes + len(body) > self._max_bytes and self._bytes > 0:
                self._bytes_cv.wait()
            self._bytes += len(body)
        props = properties or pika.BasicProperties()
        props.delivery_mode = wire.PERSISTENT
        seq = next(self._seq)
        props.headers = dict(props.headers or {}, **{wire.HEADER_SEQ: seq})
        pending = _Pending(seq, exchange, routing_key, body, props)
        size = len(body)
        pending.future.add_done_callback(lambda _f: self._release(size))
        with self._lock:
            self._pending[seq] = pending
            self._to_send.append(seq)
        self._wake()
        return pending.future

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message published so far is confirmed (or failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                futures = [p.future for p in self._pending.values()]
            if not futures:
                return
            for f in futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    f.exception(timeout=left)
                except TimeoutError:
                    raise BrokerError("timed out waiting for broker confirms") from None

    def abort(self, timeout: float = 5.0) -> None:
        """Stop now (a signal): messages not yet handed to the broker are dropped (their futures
        fail), those already sent get up to ``timeout`` for their confirms; then close. After
        this, the confirmed futures are exactly what the broker took."""
        with self._lock:
            dropped = [self._pending.pop(seq) for seq in self._to_send if seq in self._pending]
            self._to_send.clear()
        for p in dropped:
            if not p.future.done():
                p.future.set_exception(BrokerError("not sent: the submission was stopped"))
        try:
            self.flush(timeout)
        except BrokerError:
            pass
        self.close(timeout=0)

    def close(self, timeout: float = 30.0) -> None:
        """Flush (up to ``timeout``) and close the connection."""
        if timeout:
            try:
                self.flush(timeout)
            except BrokerError:
                pass
        self._closing = True
        conn = self._connection
        if conn is not None and self._ioloop_ready.is_set():
            try:
                conn.ioloop.add_callback_threadsafe(self._shutdown)
            except Exception:  # noqa: S110 - the loop is already gone: nothing to shut down
                pass
        self._thread.join(timeout=10)
        with self._lock:
            for p in self._pending.values():
                if not p.future.done():
                    p.future.set_exception(BrokerError("publisher closed before confirm"))
            self._pending.clear()

    def __enter__(self) -> ConfirmingPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _release(self, n: int) -> None:
        self._slots.release()
        with self._bytes_cv:
            self._bytes -= n
            self._bytes_cv.notify_all()

    def _wake(self) -> None:
        conn = self._connection
        if conn is not None and self._ioloop_ready.is_set():
            try:
                conn.ioloop.add_callback_threadsafe(self._send_queued)
            except Exception:  # noqa: S110 - reconnecting: queued messages go out on reopen
                pass

    # --- I/O loop side (one thread) ----------------------------------------------------------

    def _run(self) -> None:
        while not self._closing:
            self._ioloop_ready.clear()
            # Each attempt the next node of a shuffled order: a dead node is tried once a round.
            node = self._order[self._attempt % len(self._order)]
            self._attempt += 1
            self._blocked = False
            self._connection = pika.SelectConnection(
                self._config.parameters(node),
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            self._ioloop_ready.set()
            try:
                self._connection.ioloop.start()
            except Exception as e:  # never die silently: log, reconnect, republish
                log.error("publisher_loop_error", error=type(e).__name__, detail=str(e)[:200])
            if self._closing:
                break
            if self._attempt % len(self._order) == 0:
                time.sleep(self._backoff.next())  # every node tried: wait before the next round
        self._stopped.set()

    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_blocked(self, connection: pika.SelectConnection, frame: object) -> None:
        self._blocked = True
        log.warning("broker_blocked_publisher_waits", login=self._config.login)

    def _on_unblocked(self, connection: pika.SelectConnection, frame: object) -> None:
        self._blocked = False
        # What waited through the stall gets a full timeout again before a reconnect.
        now = time.monotonic()
        with self._lock:
            for p in self._pending.values():
                if p.sent_at:
                    p.sent_at = now
        log.info("broker_unblocked", login=self._config.login)

    def _on_open_error(self, connection: pika.SelectConnection, error: BaseException) -> None:
        if isinstance(error, pika.exceptions.ProbableAuthenticationError):
            self._fatal = BrokerError(f"broker refused the login {self._config.login!r}")
            self._closing = True
            self._ready.set()
        log.warning("broker_connect_failed", login=self._config.login, error=type(error).__name__)
        connection.ioloop.stop()

    def _on_closed(self, connection: pika.SelectConnection, reason: BaseException) -> None:
        self._channel = None
        if not self._closing:
            log.warning(
                "broker_connection_lost", login=self._config.login, reason=str(reason)[:120]
            )
        connection.ioloop.stop()

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm)
        self._channel = channel
        self.connections_opened += 1
        self._backoff.reset()
        if self._attempt > 1:
            log.info("broker_reconnected", login=self._config.login, node=self._connection_node())
        with self._lock:
            self._tags.clear()
            self._next_tag = 1
            # Everything unconfirmed goes out again on the new channel.
            unsent = [s for s in self._pending if s not in self._to_send]
            self._to_send.extendleft(sorted(unsent, reverse=True))
            for p in self._pending.values():
                p.nacked_here = 0.0
        self._ready.set()
        self._send_queued()
        self._schedule_tick()

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        self._channel = None
        if not self._closing:
            log.warning("broker_channel_closed", reason=str(reason)[:160])
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    def _send_queued(self) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:
            return
        while True:
            with self._lock:
                if not self._to_send:
                    return
                seq = self._to_send.popleft()
                pending = self._pending.get(seq)
                if pending is None or pending.future.done():
                    continue
                tag = self._next_tag
                self._next_tag += 1
                self._tags[tag] = seq
                pending.attempts += 1
                pending.sent_at = time.monotonic()
                pending.returned = False
            try:
                channel.basic_publish(
                    pending.exchange,
                    pending.routing_key,
                    pending.body,
                    pending.properties,
                    mandatory=True,
                )
            except (TypeError, ValueError, struct.error) as e:  # a bad message, not a bad link
                with self._lock:
                    self._pending.pop(seq, None)
                    self._tags.pop(tag, None)
                pending.future.set_exception(BrokerError(f"cannot publish this message: {e}"))

    def _on_return(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        seq = wire.header_of(properties, wire.HEADER_SEQ)
        with self._lock:
            pending = self._pending.get(seq) if isinstance(seq, int) else None
            if pending is not None:
                pending.returned = True

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        with self._lock:
            tags = [t for t in self._tags if t <= tag] if method.multiple else [tag]
            settled: list[tuple[_Pending, BaseException | None]] = []
            retry: list[tuple[int, float]] = []
            reconnect = False
            now = time.monotonic()
            for t in tags:
                seq = self._tags.pop(t, None)
                pending = self._pending.get(seq) if seq is not None else None
                if pending is None:
                    continue
                if acked and not pending.returned:
                    settled.append((pending, None))
                elif acked:
                    settled.append(
                        (
                            pending,
                            Unroutable(
                                f"no queue for routing key {pending.routing_key!r}"
                                f" on {pending.exchange!r}"
                            ),
                        )
                    )
                elif pending.first_nack and now - pending.first_nack > NACK_GIVE_UP_S:
                    settled.append(
                        (
                            pending,
                            BrokerError(f"broker refused the message for {NACK_GIVE_UP_S:.0f} s"),
                        )
                    )
                elif pending.nacked_here and now - pending.nacked_here > self._nack_reconnect:
                    reconnect = True  # goes out again on the new channel (_on_channel_open)
                else:
                    pending.first_nack = pending.first_nack or now
                    pending.nacked_here = pending.nacked_here or now
                    # A nack: the broker could not take it yet (a quorum queue electing a new
                    # leader after a node died nacks at once). Sent again after a growing
                    # pause, not at once: ten immediate retries would all land in the election.
                    retry.append(
                        (pending.seq, min(NACK_RETRY_S * 2 ** (pending.attempts - 1), 5.0))
                    )
            for pending, _ in settled:
                self._pending.pop(pending.seq, None)
        for pending, error in settled:
            if error is None:
                pending.future.set_result(None)
            else:
                pending.future.set_exception(error)
        conn = self._connection
        if reconnect and conn is not None and conn.is_open:
            log.warning("broker_nacks_reconnect", node=self._connection_node())
            conn.close()
            return
        for seq, delay in retry:
            if conn is not None:
                # On this connection's loop only: after a reconnect every unconfirmed message
                # goes out again on the new channel anyway.
                conn.ioloop.call_later(delay, lambda s=seq: self._retry(s))
        if self._to_send:
            self._send_queued()

    def _retry(self, seq: int) -> None:
        with self._lock:
            if seq in self._pending and seq not in self._to_send:
                self._to_send.append(seq)
        self._send_queued()

    def _schedule_tick(self) -> None:
        if self._connection is not None and not self._closing:
            self._connection.ioloop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        if self._channel is None:
            return
        now = time.monotonic()
        with self._lock:
            late = sum(
                1
                for p in self._pending.values()
                if p.sent_at
                and now - p.sent_at > self._confirm_timeout
                and p.seq not in self._to_send
            )
        if late and not self._blocked:
            # The broker holds them and says nothing: another node may. Republished only once
            # this connection is gone (on the new channel), never beside a copy still queued here.
            log.warning(
                "broker_confirm_timeout_reconnect", count=late, node=self._connection_node()
            )
            conn = self._connection
            if conn is not None and conn.is_open:
                conn.close()
            return
        self._send_queued()
        self._schedule_tick()

    def _connection_node(self) -> str:
        conn = self._connection
        params = getattr(conn, "params", None)
        return f"{params.host}:{params.port}" if params is not None else "?"

    def _shutdown(self) -> None:
        conn = self._connection
        if conn is not None and conn.is_open:
            conn.close()
        elif conn is not None:
            conn.ioloop.stop()
