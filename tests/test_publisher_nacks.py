"""The publisher and a broker that keeps nacking: a new connection, then the message, once.

RabbitMQ 3.10 remembers per channel whether a quorum queue takes publishes. In the cluster
tests a channel that asked while the queue's leader was being killed went on nacking for
two minutes while a fresh channel was taken at once; the senders gave up. Here a full lane
(``x-max-length`` with ``reject-publish``, as a flooded submit lane is) nacks on the real
broker: the publisher must move to a new connection after ``nack_reconnect`` seconds of
refusals, keep the message, and deliver it exactly once when the queue has room again.
"""

from __future__ import annotations

import pika
import pytest

from broker.connection import BrokerConfig, BrokerError, connect_blocking
from broker.publisher import ConfirmingPublisher
from broker.topology import QUEUE_ARGUMENTS
from tests.exchange import scratch_vhost, wait_for

pytestmark = pytest.mark.broker

QUEUE = "cp.test.full"


@pytest.fixture
def config():
    with scratch_vhost("nacks") as config:
        conn = connect_blocking(config)
        conn.channel().queue_declare(
            QUEUE, durable=True, arguments={**QUEUE_ARGUMENTS, "x-max-length": 1}
        )
        conn.close()
        yield config


def fill(config: BrokerConfig) -> None:
    """The queue at its limit before the publisher first asks (a quorum queue's limit is
    inexact: a channel already publishing hears "full" a little late)."""
    conn = connect_blocking(config)
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        for body in (b"first", b"over"):  # one over the limit: now the queue refuses
            channel.basic_publish("", QUEUE, body)
    finally:
        conn.close()


def messages(config: BrokerConfig) -> list[bytes]:
    conn = connect_blocking(config)
    try:
        channel = conn.channel()
        got = []
        while True:
            method, _props, body = channel.basic_get(QUEUE, auto_ack=True)
            if method is None:
                return got
            got.append(body)
    finally:
        conn.close()


def test_nacked_for_longer_than_nack_reconnect_goes_out_on_a_new_connection(config):
    fill(config)
    with ConfirmingPublisher(config, nack_reconnect=1.0) as pub:
        second = pub.publish("", QUEUE, b"second", pika.BasicProperties())
        assert pub.connections_opened == 1
        # Refused (the queue is full) long enough: the publisher has moved to a new connection.
        assert wait_for(lambda: pub.connections_opened >= 2, 30), "no reconnect after nacks"
        assert not second.done(), "a nacked message was given up or settled too early"
        assert messages(config) == [b"first", b"over"]  # room again
        assert second.exception(60) is None
    assert messages(config) == [b"second"]  # once, not once per connection


def test_nacked_without_a_pause_stays_on_its_connection_until_nack_reconnect(config):
    fill(config)
    with ConfirmingPublisher(config, nack_reconnect=600.0) as pub:
        second = pub.publish("", QUEUE, b"second", pika.BasicProperties())
        # Nacked repeatedly (retries after 0.2, 0.4, 0.8, 1.6 s): still the first connection.
        assert not wait_for(lambda: second.done() or pub.connections_opened > 1, 4)
        messages(config)
        assert second.exception(60) is None
        assert pub.connections_opened == 1


def test_a_closed_publisher_fails_what_it_could_not_place(config):
    fill(config)
    pub = ConfirmingPublisher(config, nack_reconnect=1.0)
    second = pub.publish("", QUEUE, b"second", pika.BasicProperties())
    pub.close(timeout=2)
    assert isinstance(second.exception(10), BrokerError)
    assert messages(config) == [b"first", b"over"]
