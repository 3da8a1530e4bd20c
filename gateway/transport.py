"""What the gateway service needs from the broker, as two small interfaces.

The real implementations are :class:`broker.publisher.ConfirmingPublisher`
(publish with confirms) and :class:`broker.consumer.Delivery` (ack/reject from
any thread). The in-memory ones here let the decision-and-settlement tests run
in milliseconds without RabbitMQ; everything that crosses the broker is also
tested against the real one.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import pika

from broker import wire
from broker.publisher import Unroutable


class Transport(Protocol):
    """Publishes; the future resolves when the broker confirmed (or fails)."""

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties | None = None,
    ) -> Future[None]: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float = 30.0) -> None: ...


class Settleable(Protocol):
    """One delivery as the service sees it."""

    body: bytes
    queue: str
    routing_key: str | None  # None where unknown (the in-memory transport)

    @property
    def user_id(self) -> str | None: ...

    @property
    def kind(self) -> str | None: ...

    def ack(self) -> None: ...

    def reject(self, requeue: bool = False) -> None: ...


@dataclass
class Published:
    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties


@dataclass
class MemoryTransport:
    """Confirms at once; a routing key in ``unroutable`` fails like a mandatory return."""

    unroutable: set[str] = field(default_factory=set)
    published: list[Published] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties | None = None,
    ) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            self.published.append(
                Published(exchange, routing_key, body, properties or pika.BasicProperties())
            )
        if routing_key in self.unroutable:
            future.set_exception(Unroutable(f"no queue for routing key {routing_key!r}"))
        else:
            future.set_result(None)
        return future

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float = 30.0) -> None:
        return None

    def to(self, routing_key: str, kind: str | None = None) -> list[Published]:
        """What was published to one agency (of one message type)."""
        with self._lock:
            return [
                p
                for p in self.published
                if p.routing_key == routing_key
                and (kind is None or wire.kind_of(p.properties) == kind)
            ]


@dataclass
class MemoryDelivery(wire.Received):
    """A delivery that remembers how it was settled."""

    body: bytes
    properties: pika.BasicProperties
    queue: str = ""
    settled: str | None = None  # "ack", "requeue" or "reject"
    routing_key: str | None = None

    def ack(self) -> None:
        self.settled = self.settled or "ack"

    def reject(self, requeue: bool = False) -> None:
        self.settled = self.settled or ("requeue" if requeue else "reject")
