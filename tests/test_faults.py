"""Fault injection against the real RabbitMQ: kill -9, SIGTERM, connections cut by the broker."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pika
import pytest

import envelopes
from agents.world import PASSPHRASE
from broker.provision import GATEWAY_LOGIN
from broker.publisher import ConfirmingPublisher
from broker.topology import (
    DEAD_QUEUE,
    SUBMIT_EXCHANGE,
    submit_queue,
)
from gateway.audit import AuditStore
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import (
    PROVINCE,
    A,
    broker_config,
    close_connections,
    make_world,
    queue_depth,
    wait_for,
)
from tests.sync import receive_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]

LANE = submit_queue(AgencyCode.parse(PROVINCE))  # every test here submits as the province


@pytest.fixture
def world(tmp_path):
    w = make_world(tmp_path / "w")
    yield w
    w.cleanup()


def seal_many(world, n: int, to: str = A) -> list[tuple[str, bytes]]:
    with world.client(PROVINCE) as province:
        out = []
        for i in range(n):
            buf = io.BytesIO()
            doc = f"document {i}\n".encode() * 50
            sealed = envelopes.seal(
                io.BytesIO(doc),
                buf,
                keys=province.keys,
                directory=province.directory,
                to=[AgencyCode.parse(to)],
                level=Level.MAT,
                size=len(doc),
            )
            out.append((sealed.envelope_id, buf.getvalue()))
        return out


def publish_all(world, bodies: list[bytes]) -> None:
    config = broker_config(world, PROVINCE)
    with ConfirmingPublisher(config) as pub:
        futures = [
            pub.publish(
                SUBMIT_EXCHANGE,
                PROVINCE,
                body,
                pika.BasicProperties(type="part", user_id=config.login),
            )
            for body in bodies
        ]
        for f in futures:
            assert f.exception(timeout=120) is None


def gateway_process(world) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("cipherpost")
    env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    log = (world.root / "gateway.log").open("ab")
    return subprocess.Popen(
        [str(exe), "gateway", "run", "--config", str(world.gateway_config())],
        env=env,
        stdout=log,
        stderr=log,
    )


def receive_all(world, code: str, expected: list[str], timeout: float = 240) -> list[str]:
    """Every envelope id delivered to ``code`` until all of ``expected`` arrived (repeats too)."""
    with world.client(code) as client:
        try:
            return [d.envelope_id for d in receive_until(client, expected, deadline=timeout)]
        except pytest.fail.Exception:
            print(where_they_are(world, client))
            raise


def where_they_are(world, client) -> str:
    """Where undelivered envelopes may be: to make a failure readable."""
    refused = client.state._exec("SELECT envelope_id, reason FROM received WHERE outcome!='ok'")
    spooled = client.state._exec("SELECT COUNT(DISTINCT envelope_id) FROM parts")
    return (
        f"inbox queue {queue_depth(world, world.inbox(client.keys.code.text))}, dead-letter "
        f"{queue_depth(world, DEAD_QUEUE)}, refused {refused[:5]}, spooled {spooled}"
    )


def accepted_decisions(world) -> dict[str, int]:
    store = AuditStore(world.root / "audit.db")
    try:
        counts: dict[str, int] = {}
        for r in store.records():
            if r["event"] == "submission" and r["decision"] == "accepted":
                counts[str(r["envelope_id"])] = counts.get(str(r["envelope_id"]), 0) + 1
        return counts
    finally:
        store.close()


def test_kill_9_with_2000_in_flight_delivers_each_exactly_once(world):
    sealed = seal_many(world, 2000)
    publish_all(world, [body for _, body in sealed])
    inbox = world.inbox(A)
    gw = gateway_process(world)
    try:
        assert wait_for(lambda: queue_depth(world, inbox) >= 400, 120), "gateway made no progress"
        gw.send_signal(signal.SIGKILL)
        gw.wait(timeout=30)
        left = queue_depth(world, LANE)
        assert 0 < left < 2000, f"kill came too late or too early ({left} left)"
        gw = gateway_process(world)
        # Ready == 0 is not enough: the gateway may still hold prefetched messages.
        assert wait_for(lambda: len(accepted_decisions(world)) == 2000, 240)
        assert wait_for(lambda: queue_depth(world, inbox) >= 2000, 60)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=60)
    ids = receive_all(world, A, [eid for eid, _ in sealed])
    assert len(ids) == 2000 and len(set(ids)) == 2000
    assert set(ids) == {eid for eid, _ in sealed}
    decisions = accepted_decisions(world)
    assert set(decisions) == set(ids)
    assert set(decisions.values()) == {1}, "an envelope has more than one decision record"


def test_sigterm_finishes_in_flight_work(world):
    sealed = seal_many(world, 600)
    publish_all(world, [body for _, body in sealed])
    inbox = world.inbox(A)
    gw = gateway_process(world)
    assert wait_for(lambda: queue_depth(world, inbox) >= 100, 120)
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(timeout=60) == 0
    gw = gateway_process(world)
    try:
        assert wait_for(lambda: len(accepted_decisions(world)) == 600, 180)
        assert wait_for(lambda: queue_depth(world, inbox) >= 600, 60)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=60)
    ids = receive_all(world, A, [eid for eid, _ in sealed])
    assert sorted(ids) == sorted(eid for eid, _ in sealed)
    assert set(accepted_decisions(world).values()) == {1}


def test_connections_cut_by_the_broker_lose_nothing(world):
    """Agent and gateway reconnect after the broker closes their connections."""
    sealed = seal_many(world, 300)
    world.start_gateway()
    inbox = world.inbox(A)
    config = broker_config(world, PROVINCE)
    cuts: list[int] = []
    with ConfirmingPublisher(config) as pub:
        futures = []
        for i, (_, body) in enumerate(sealed):
            futures.append(
                pub.publish(
                    SUBMIT_EXCHANGE,
                    PROVINCE,
                    body,
                    pika.BasicProperties(type="part", user_id=config.login),
                )
            )
            if i in (60, 150, 240):
                cut = close_connections(world, config.login)
                cut += close_connections(world, world.prefix + GATEWAY_LOGIN)
                cuts.append(cut)
        for f in futures:
            assert f.exception(timeout=120) is None
    assert sum(cuts) >= 3, f"the broker closed too few connections: {cuts}"
    assert wait_for(lambda: queue_depth(world, LANE) == 0, 120)
    assert wait_for(lambda: queue_depth(world, inbox) >= 300, 60)
    with world.client(A) as a:
        agent_cuts: list[int] = []
        handled = [0]

        def cut_at_some_documents(_document: object) -> None:
            """The broker cuts the agent's connection while it holds unacknowledged deliveries."""
            handled[0] += 1
            if handled[0] in (1, 100, 200):
                agent_cuts.append(close_connections(world, world.login(A)))

        a.on_received = cut_at_some_documents
        expected = [e for e, _ in sealed]

        def all_in_the_inbox() -> bool:  # durably recorded (receive() may miss one at a cut)
            return all((a.state.received(e) or {}).get("outcome") == "ok" for e in expected)

        try:
            receive_until(a, until=all_in_the_inbox, what="all 300 recorded", deadline=180)
        except pytest.fail.Exception:
            print(where_they_are(world, a))
            raise
        documents = [p.name for p in a.config.inbox.iterdir() if not p.name.endswith(".json")]
    assert len(agent_cuts) == 3 and min(agent_cuts) >= 1, agent_cuts  # consumer + publisher
    assert sorted(name[:12] for name in documents) == sorted(e[:12] for e in expected)
    assert set(accepted_decisions(world).values()) == {1}


def test_two_gateway_instances_share_the_work(world):
    sealed = seal_many(world, 400)
    world.start_gateway("gw1")
    world.start_gateway("gw1")  # a second instance of the same gateway, same queue
    publish_all(world, [body for _, body in sealed])
    assert wait_for(lambda: queue_depth(world, LANE) == 0, 120)
    counts = [gw.counters["forwarded"] for gw, _ in world.gateways]
    ids = receive_all(world, A, [eid for eid, _ in sealed])
    assert sorted(ids) == sorted(eid for eid, _ in sealed)
    assert all(c > 0 for c in counts), counts
    assert set(accepted_decisions(world).values()) == {1}
