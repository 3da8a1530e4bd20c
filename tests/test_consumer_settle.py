"""Acks and rejects are noted, then sent together: runs as one ``basic_ack(multiple=True)``.

A multiple ack covers every unacked delivery up to its tag, so it must never cover one
still being handled or one that is to be rejected: the unit tests pin the frames sent for
each arrangement, the broker test settles out of order, from other threads and with
requeues on the real broker and checks that every message is taken exactly once (an ack
that covered a held delivery would make its later ack an unknown tag: the broker closes
the channel and the consumer connects again).
"""

from __future__ import annotations

import threading
from collections import Counter

import pika
import pytest

from broker.connection import connect_blocking
from broker.consumer import Consumer, Delivery, Settler
from broker.topology import QUEUE_ARGUMENTS
from tests.exchange import scratch_vhost


class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", tag, multiple))

    def basic_reject(self, tag: int, requeue: bool = True) -> None:
        self.frames.append(("requeue" if requeue else "drop", tag, False))


class FakeConnection:
    def __init__(self) -> None:
        self.handoffs = 0

    def add_callback_threadsafe(self, callback: object) -> None:
        self.handoffs += 1


def settler(tags: range) -> tuple[Settler, FakeChannel, FakeConnection]:
    conn, channel = FakeConnection(), FakeChannel()
    s = Settler(conn, channel)  # type: ignore[arg-type]
    for tag in tags:
        s.delivered(tag)
    return s, channel, conn


def test_a_run_of_acks_goes_as_one_multiple_ack():
    s, channel, _ = settler(range(1, 6))
    for tag in range(1, 6):
        s.settle(tag, "ack")
    s.flush()
    assert channel.frames == [("ack", 5, True)]
    s.flush()
    assert channel.frames == [("ack", 5, True)], "nothing is sent twice"


def test_an_ack_behind_an_unsettled_delivery_goes_alone():
    s, channel, _ = settler(range(1, 5))
    for tag in (2, 3, 4):
        s.settle(tag, "ack")
    s.flush()
    assert channel.frames == [("ack", 2, False), ("ack", 3, False), ("ack", 4, False)]
    s.settle(1, "ack")
    s.flush()
    assert channel.frames[-1] == ("ack", 1, False)


def test_rejects_split_the_runs_and_keep_their_requeue_flag():
    s, channel, _ = settler(range(1, 8))
    outcomes = {1: "ack", 2: "ack", 3: "requeue", 4: "ack", 5: "drop", 6: "ack", 7: "ack"}
    for tag, outcome in outcomes.items():
        s.settle(tag, outcome)
    s.flush()
    assert channel.frames == [
        ("ack", 2, True),
        ("requeue", 3, False),
        ("ack", 4, False),
        ("drop", 5, False),
        ("ack", 7, True),
    ]


def test_only_the_settled_prefix_is_acked_as_a_run():
    s, channel, _ = settler(range(1, 7))
    for tag in (1, 2, 4, 5):
        s.settle(tag, "ack")
    s.flush()
    assert channel.frames == [("ack", 2, True), ("ack", 4, False), ("ack", 5, False)]
    s.settle(3, "ack")
    s.settle(6, "ack")
    s.flush()
    assert channel.frames[3:] == [("ack", 6, True)]  # 3 and 6: 4 and 5 went already


def test_settlements_from_other_threads_cost_one_handoff_per_flush():
    s, channel, conn = settler(range(1, 101))
    workers = [threading.Thread(target=lambda t=tag: s.settle(t, "ack")) for tag in range(1, 101)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert conn.handoffs == 1
    s.flush()
    assert channel.frames == [("ack", 100, True)]
    s.delivered(101)
    threading.Thread(target=lambda: s.settle(101, "ack")).start()
    for _ in range(100):
        if conn.handoffs == 2:
            break
        threading.Event().wait(0.01)
    assert conn.handoffs == 2, "after a flush, the next settlement from elsewhere hands off again"


def test_a_delivery_settles_once_and_unknown_tags_are_ignored():
    s, channel, _ = settler(range(1, 3))
    d = Delivery(b"", pika.BasicProperties(), False, 1, s)
    d.ack()
    d.reject(requeue=True)  # too late: the first settlement holds
    s.settle(99, "ack")  # never delivered on this channel
    s.flush()
    assert channel.frames == [("ack", 1, False)]


def test_a_closed_channel_sends_nothing():
    s, channel, _ = settler(range(1, 3))
    s.settle(1, "ack")
    channel.is_open = False
    s.flush()
    assert channel.frames == []


# --- on the real broker -------------------------------------------------------------------

QUEUE = "cp.test.settle"


@pytest.fixture
def config():
    with scratch_vhost("settle") as config:
        yield config


@pytest.mark.broker
def test_out_of_order_settlements_take_every_message_exactly_once(config):
    n = 200
    conn = connect_blocking(config)
    channel = conn.channel()
    channel.queue_declare(QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
    channel.confirm_delivery()
    for i in range(n):
        channel.basic_publish("", QUEUE, str(i).encode())
    conn.close()

    seen: Counter[int] = Counter()
    timers: list[threading.Timer] = []

    def handle(d: Delivery) -> None:
        i = int(d.body)
        seen[i] += 1
        if i % 10 == 3 and not d.redelivered:
            d.reject(requeue=True)  # comes back once
        elif i % 7 == 0:
            timer = threading.Timer(0.05 * (i % 5), d.ack)  # acked later, from elsewhere
            timers.append(timer)
            timer.start()
        elif i % 11 == 5:
            d.reject(requeue=False)  # dropped (no dead-letter exchange here)
        else:
            d.ack()

    connects: list[int] = []
    consumer = Consumer(config, QUEUE, handle, prefetch=64, on_connected=lambda: connects.append(1))
    consumer.run(until_idle=2.0)
    for timer in timers:
        timer.join()

    twice = {i for i in range(n) if i % 10 == 3}
    assert {i for i, k in seen.items() if k == 2} == twice
    assert all(seen[i] == 1 for i in range(n) if i not in twice)
    conn = connect_blocking(config)
    try:
        left = conn.channel().queue_declare(QUEUE, passive=True).method.message_count
    finally:
        conn.close()
    assert left == 0, "every message was settled: none is left or returned to the queue"
    # An ack of a tag a multiple ack already covered is an unknown tag to the broker: it
    # closes the channel and the consumer connects again.
    assert len(connects) == 1, "the broker closed the channel: a settlement was sent twice"


@pytest.mark.broker
def test_a_channel_the_broker_closes_is_noticed_and_consumed_again(config):
    """Before, pika's poll did not raise for a channel the broker closed (an ack it did not
    expect, a delivery held past ``consumer_timeout``): the consumer waited on a dead
    channel while its connection looked well, and the queue was never read again."""
    conn = connect_blocking(config)
    channel = conn.channel()
    channel.queue_declare(QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
    channel.confirm_delivery()
    channel.basic_publish("", QUEUE, b"only")
    conn.close()
    got: list[bool] = []
    connects: list[int] = []

    def handle(d: Delivery) -> None:
        got.append(d.redelivered)
        if len(got) == 1:
            d._settler._channel.basic_ack(10_000)  # an unknown tag: the broker closes the channel
        else:
            d.ack()

    Consumer(config, QUEUE, handle, on_connected=lambda: connects.append(1)).run(until_idle=3.0)
    assert got == [False, True], "the message came again on a new channel"
    assert len(connects) == 2
