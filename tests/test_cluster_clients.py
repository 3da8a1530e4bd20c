"""Broker clients on the cluster: the publisher through a stall, a consumer through a cancel.

The publisher: no second copy on a live or blocked connection.

Issue 10: during a 31 s memory alarm the publisher republished on the same channel
every message not confirmed within 30 s; both copies waited and both arrived, and the
gateway took the sender for a replay attacker (THREATS.md invariant 9: no false
refusal). Now a blocked publisher waits, and republishes only after a reconnect.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time

import pika
import pytest

from broker.connection import connect_blocking
from broker.consumer import Consumer, Delivery
from broker.publisher import ConfirmingPublisher
from broker.topology import QUEUE_ARGUMENTS
from compose.cluster import HOST
from tests.exchange import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.broker]

QUEUE = "cp.test.stall"


@pytest.fixture
def vhost(cluster):
    admin = cluster.management()
    name = f"cp-stall-{secrets.token_hex(4)}"
    admin.put(f"/api/vhosts/{admin.q(name)}", {})
    admin.put(
        f"/api/permissions/{admin.q(name)}/{admin.q(admin.username)}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    conn = connect_blocking(cluster.admin_broker(name))
    conn.channel().queue_declare(QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
    conn.close()
    yield name
    admin.delete(f"/api/vhosts/{admin.q(name)}")


def depth(cluster, vhost: str) -> int:
    conn = connect_blocking(cluster.admin_broker(vhost))
    try:
        return int(conn.channel().queue_declare(QUEUE, passive=True).method.message_count)
    finally:
        conn.close()


def blocked(cluster, vhost: str) -> bool:
    """Whether the broker holds a connection of this vhost blocked (a resource alarm)."""
    out = cluster.ctl(cluster.nodes[0], "list_connections", "vhost", "state", "--no-table-headers")
    return any(line.split("\t") == [vhost, "blocked"] for line in out.splitlines())


def test_a_blocked_publisher_sends_one_copy_however_long_the_stall(cluster, vhost):
    config = cluster.admin_broker(vhost)
    node = cluster.nodes[0]
    with ConfirmingPublisher(config, confirm_timeout=1.0) as pub:
        cluster.memory_alarm(node, True)
        try:
            future = pub.publish("", QUEUE, b"one document", pika.BasicProperties())
            assert wait_for(lambda: blocked(cluster, vhost), 30), "the publisher was not blocked"
            time.sleep(6)  # the stall lasts six confirm timeouts
        finally:
            cluster.memory_alarm(node, False)
        assert future.exception(timeout=60) is None
    assert depth(cluster, vhost) == 1


def test_a_consumer_cancelled_by_a_dying_node_consumes_again_when_it_returns(cluster, vhost):
    """Issue 10, point 2: a classic queue's home node dies; RabbitMQ cancels its consumers
    on the other nodes, and a re-consume gets 404 "home node down". The consumer logs it,
    reconnects with backoff and consumes again once the node is back: nothing stops
    silently. (cipherpost's own queues are all quorum now; a classic queue is how an older
    deployment's feeds were, and how a cancel still reaches a consumer.)"""
    home, other = cluster.nodes[1], cluster.nodes[2]
    config = cluster.admin_broker(vhost)
    queue = "cp.test.classic"
    conn = pika.BlockingConnection(config.parameters(cluster.nodes.index(home)))
    conn.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
    conn.close()
    pinned = dataclasses.replace(config, nodes=((HOST, other.amqp_port),))
    got: list[bytes] = []

    def handle(d: Delivery) -> None:
        got.append(d.body)
        d.ack()

    consumer = Consumer(pinned, queue, handle, prefetch=4)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert consumer.connected.wait(30)
        cluster.kill(home)
        cluster.start_node(home)
        with ConfirmingPublisher(config) as pub:
            assert pub.publish("", queue, b"after the node came back").exception(60) is None
        assert wait_for(lambda: got == [b"after the node came back"], 90), got
        assert thread.is_alive()
    finally:
        consumer.stop()
        thread.join(30)
        if home.name in cluster.stopped:
            cluster.start_node(home)
