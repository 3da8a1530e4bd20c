"""Live directory on the real RabbitMQ: a new version reaches a running gateway and agent;
a revoked sender is refused from that moment; rollbacks, expired and badly signed
versions are refused and logged while the last good one stays in force."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pika
import pytest

from agents.world import PASSPHRASE, World
from broker.provision import PUBLISHER_LOGIN
from keys import ca
from keys.codes import AgencyCode
from keys.directory import build_directory
from keys.errors import Refused
from keys.levels import Level
from tests.exchange import (
    PROVINCE,
    A,
    B,
    make_world,
    publish_raw,
    queue_state,
    sealed_by,
    submit,
    wait_for,
)
from tests.helpers import cli

pytestmark = pytest.mark.broker


@pytest.fixture
def world(tmp_path: Path):
    w = make_world(tmp_path / "w")
    yield w
    w.cleanup()


def publish(world: World, data: bytes, tmp_path: Path, name: str) -> int:
    path = tmp_path / name
    path.write_bytes(data)
    creds = world.root / "broker-credentials" / f"{world.prefix}{PUBLISHER_LOGIN}.broker.json"
    return cli("directory", "publish", path, "--broker", creds)


def test_new_versions_reach_running_holders_and_bad_ones_are_refused(world, tmp_path, capsys):
    gateway = world.start_gateway()
    follower = world.client(B)
    stop = threading.Event()
    thread = threading.Thread(target=follower.receive, kwargs={"follow": True, "stop": stop})
    thread.start()
    try:
        early = sealed_by(world, A, B)  # A's envelope, sealed while A was in good standing
        v1 = world.directory_path.read_bytes()
        authority = ca.open_ca(world.ca_dir, PASSPHRASE)
        now = dt.datetime.now(dt.UTC)
        ca.revoke(authority, AgencyCode.parse(A), "key compromised", now)
        v2 = build_directory(authority, world.root / "certs", now, valid_days=7)
        assert publish(world, v2, tmp_path, "v2.cpd") == 0
        assert "directory version 2" in capsys.readouterr().out
        assert wait_for(lambda: gateway.directory.version == 2, 60)
        assert wait_for(lambda: follower.directory.version == 2, 60)
        assert follower.directory.entries[A].revoked
        assert world.directory_path.read_bytes() == v2  # saved: a restart keeps it

        # The revoked sender is refused from that moment, with the invariant's rule id.
        submit(world, A, early)
        assert wait_for(
            lambda: any(
                r["rule_id"] == "invariant:revoked-sender" for r in gateway.audit_records()
            ),
            60,
        ), gateway.audit_records()

        # Refused and logged; version 2 stays in force everywhere.
        bad = bytearray(v2)
        bad[-10] ^= 1
        expired = build_directory(
            authority, world.root / "certs", now - dt.timedelta(days=30), valid_days=1
        )
        for data in (v1, bytes(bad), expired):  # a rollback, a forgery, an expired one
            publish_raw(world, data)
        assert wait_for(lambda: gateway.feed.refused >= 3 and follower.feed.refused >= 3, 60)
        for feed in (gateway.feed, follower.feed):
            rollback, forgery, old = feed.refusals[-3:]  # published in this order
            assert rollback == (
                "directory version 1 is older than version 2 already trusted (rollback refused)"
            )
            assert forgery == "directory signature is not valid"  # a bit of the signature
            assert old.startswith("directory version 3 expired at "), old
        assert gateway.directory.version == 2 and follower.directory.version == 2
        assert world.directory_path.read_bytes() == v2
    finally:
        stop.set()
        thread.join(30)
        follower.close()


def test_the_cli_refuses_to_publish_a_bad_directory(world, tmp_path, capsys):
    data = bytearray(world.directory_path.read_bytes())
    data[-5] ^= 1
    assert publish(world, bytes(data), tmp_path, "bad.cpd") == 3
    assert capsys.readouterr().err == "cipherpost: directory signature is not valid\n"


def test_an_agent_command_picks_up_the_new_version(world, tmp_path):
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    now = dt.datetime.now(dt.UTC)
    ca.revoke(authority, AgencyCode.parse(B), "merged", now)
    publish_raw(world, build_directory(authority, world.root / "certs", now, 7))
    doc = tmp_path / "d.txt"
    doc.write_text("x")
    with world.client(PROVINCE) as province:
        assert province.directory.version == 1
        with pytest.raises(Refused, match=f"^recipient {B} is revoked$"):
            province.send(doc, to=[AgencyCode.parse(B)], level=Level.MAT, progress=False)
        assert province.directory.version == 2


def _delete_queue(world: World, queue: str) -> None:
    params = pika.ConnectionParameters(
        "127.0.0.1", 5672, world.vhost, pika.PlainCredentials("guest", "guest")
    )
    conn = pika.BlockingConnection(params)
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()


def _consumed(world: World, queue: str) -> bool:
    try:
        return queue_state(world, queue)[1] == 1
    except pika.exceptions.ChannelClosedByBroker:  # 404: not there (yet)
        return False


def test_a_gateway_whose_directory_queue_is_lost_declares_it_again_and_takes_new_versions(
    world, tmp_path
):
    """Seen after a hung node in a cluster: the gateway's directory queue was gone on
    reconnect, the feed thread ended on the 404, and the gateway went on with its old
    directory for good (a revocation would never have reached it)."""
    gateway = world.start_gateway()
    queue = gateway.feed.queue
    assert wait_for(lambda: _consumed(world, queue), 30)
    gateway.feed.stop()  # a holder that stopped following and follows again (an agent's
    gateway.feed.start()  # receive --follow, twice) must still recover
    assert wait_for(lambda: _consumed(world, queue), 30)
    _delete_queue(world, queue)  # the broker cancels the consumer; its queue is gone
    assert wait_for(lambda: _consumed(world, queue), 60), "the feed gave up on its queue"
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    v2 = build_directory(authority, world.root / "certs", dt.datetime.now(dt.UTC), valid_days=7)
    assert publish(world, v2, tmp_path, "v2.cpd") == 0
    assert wait_for(lambda: gateway.directory.version == 2, 60)
