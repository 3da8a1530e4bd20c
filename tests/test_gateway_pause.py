"""A gateway whose policy expires stops taking messages instead of holding them unacked.

RabbitMQ closes a channel that holds a delivery longer than ``consumer_timeout`` (30 min
by default) and every return counts towards a quorum queue's delivery limit: a gateway
that held what it could not decide through a long pause would see documents
dead-lettered. On the real broker: the message that finds the policy expired goes back to
its lane (ready, not unacked), the gateway cancels its consumers, and once a newer policy
is installed it consumes again and the document is delivered, decided once.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from agents.world import DEFAULT_POLICY, PASSPHRASE
from broker.topology import submit_queue
from gateway.policy import sign_policy
from keys import ca
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import A, B, make_world, queue_state, wait_for
from tests.sync import receive_until

pytestmark = pytest.mark.broker

LIFETIME_S = 25  # the policy in force when the gateway starts expires this soon after


def test_an_expired_policy_pauses_consuming_and_the_document_waits_in_its_lane(tmp_path):
    now = dt.datetime.now(dt.UTC)
    world = make_world(tmp_path / "w")
    try:
        authority = ca.open_ca(world.ca_dir, PASSPHRASE)
        # Signed a day ago for one day: valid now, expired LIFETIME_S from now.
        signed_at = now - dt.timedelta(days=1) + dt.timedelta(seconds=LIFETIME_S)
        (world.root / "policy.cpp").write_bytes(
            sign_policy(DEFAULT_POLICY, authority, signed_at, 1)
        )
        gateway = world.start_gateway()
        lane = submit_queue(AgencyCode.parse(A))
        assert wait_for(lambda: queue_state(world, lane)[1] == 1, 60), "gateway never consumed"
        expiry = signed_at + dt.timedelta(days=1, seconds=1)
        while dt.datetime.now(dt.UTC) < expiry:
            time.sleep(0.5)  # the event here is an instant: the policy's expiry
        doc = tmp_path / "doc.txt"
        doc.write_text("một tài liệu chờ chính sách mới\n")
        with world.client(A) as a:
            eid = a.send(doc, to=B, level=Level.MAT, progress=False)
        # Given back, not held: ready in A's lane, and nobody consumes it.
        assert wait_for(lambda: queue_state(world, lane) == (1, 0), 60), queue_state(world, lane)
        assert any("paused" in r for r in gateway.not_ready())
        assert [r for r in gateway.audit_records() if r["envelope_id"] == eid] == []
        newer = DEFAULT_POLICY.replace("version = 1", "version = 2")
        (world.root / "policy.cpp").write_bytes(sign_policy(newer, authority, now, 7))
        with world.client(B) as b:
            [got] = receive_until(b, [eid], what="the document that waited out the pause")
        assert got.path.read_text() == doc.read_text()
        assert queue_state(world, lane) == (0, 1)  # consuming again
        decisions = [
            r["decision"]
            for r in gateway.audit_records()
            if r["envelope_id"] == eid and r["event"] == "submission"
        ]
        assert decisions == ["accepted"]  # decided once, after the pause
    finally:
        world.cleanup()
