"""Red team of the flood guard (gateway/flood.py): attacker A1 holds an enrolled agency's own
keys and broker login. Each test is one attack and passes only while the defence holds.

They run on the real RabbitMQ in their own vhost (the world builder, flood guard on) and put
the world back as they found it (A reinstated, its lane purged, the guard's knobs restored).
Found by a red-team review of the guard; what it found and is not yet defended is listed in
docs/policy.md ("The flood guard").
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

import envelopes
from broker.connection import connect_blocking
from broker.provision import (
    PUBLISHER_LOGIN,
    reinstate,
    rotate,
    suspend,
    user_limits,
)
from broker.topology import SUBMIT_EXCHANGE, USER_LIMITS, submit_queue
from gateway.flood import SUSPENDED
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import (
    ADMIN_URL,
    BASIC,
    PROVINCE,
    A,
    B,
    blast,
    broker_config,
    parts_of,
    submit,
    wait_for,
)

# --- on the real broker ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from agents.world import build_world

    w = build_world(
        tmp_path_factory.mktemp("floodrt"), BASIC, admin_url=ADMIN_URL, flood_guard=True
    )
    w.start_gateway()
    yield w
    w.cleanup()


def gw(world):
    return world.gateways[0][0]


def suspended(world, code: str) -> bool:
    return user_limits(world.mgmt, world.login(code)).get("max-connections") == 0


def leaves(world, event: str, publisher: str | None = None):
    return [
        r
        for r in gw(world).audit_records()
        if r["event"] == event and (publisher is None or r["publisher"] == publisher)
    ]


def lane_depth(world, code: str) -> int:
    q = world.mgmt.q
    info = world.mgmt.get(f"/api/queues/{q(world.vhost)}/{q(submit_queue(AgencyCode.parse(code)))}")
    return int((info or {}).get("messages", 0))


def purge_lane(world, code: str) -> None:
    q = world.mgmt.q
    lane = submit_queue(AgencyCode.parse(code))
    world.mgmt.delete(f"/api/queues/{q(world.vhost)}/{q(lane)}/contents")


@pytest.fixture
def restore(world):
    """Put the world back: A's lane empty, A reinstated, the guard as configured."""
    g = gw(world)
    threshold, recheck = g.flood.threshold, g.flood.recheck_s
    yield
    g.flood.threshold, g.flood.recheck_s = threshold, recheck
    for code in (A, B, PROVINCE):
        purge_lane(world, code)
    time.sleep(2.5)  # held junk settles (its tally is written within ~1 s)
    for code in (A, B, PROVINCE):
        purge_lane(world, code)
        reinstate(world.mgmt, world.login(code))
    with g.flood._lock:
        g.flood._seen.clear()


def sealed(world, sender: str, to: str, text: bytes) -> bytes:
    with world.client(sender) as c:
        out = io.BytesIO()
        envelopes.seal(
            io.BytesIO(text), out, keys=c.keys, directory=c.directory,
            to=[AgencyCode.parse(to)], level=Level.MAT, size=len(text),
        )  # fmt: skip
    return out.getvalue()


# 1. Getting someone else suspended ------------------------------------------------------------


def test_a_cannot_publish_junk_in_bs_name_nor_into_bs_lane(world, restore):
    """user_id = B's login is refused by RabbitMQ (406), routing key B by the topic permission
    (403); only A's own flood lands, and only A is suspended."""
    conn = connect_blocking(broker_config(world, A))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.AMQPError):
            ch.basic_publish(SUBMIT_EXCHANGE, A, b"junk",
                             pika.BasicProperties(type="part", user_id=world.login(B)))  # fmt: skip
    finally:
        if conn.is_open:
            conn.close()
    conn = connect_blocking(broker_config(world, A))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.AMQPError):
            ch.basic_publish(SUBMIT_EXCHANGE, B, b"junk", pika.BasicProperties(type="part"))
    finally:
        if conn.is_open:
            conn.close()
    blast(world, A, (os.urandom(4) for _ in range(50_000)), user_ids=(False,), kind="notice")
    assert wait_for(lambda: suspended(world, A), 20)
    for code in (B, PROVINCE):
        assert user_limits(world.mgmt, world.login(code)) == USER_LIMITS
    assert user_limits(world.mgmt, gw(world).broker.login).get("max-connections") != 0


@pytest.mark.parametrize("header", ["CC", "BCC"])
def test_a_cannot_get_b_suspended_through_sender_selected_distribution(world, restore, header):
    """RabbitMQ 3.10 checks the topic permission on the routing key only, not on the CC/BCC
    headers (rabbitmq-server#12553, fixed in 4.0): A publishes junk with its own routing key
    and CC: [B, province], no user_id, so copies land in their lanes. Were the lane taken for
    the publisher, the guard would suspend B and the province; it must suspend A alone."""
    conn = connect_blocking(broker_config(world, A))
    props = pika.BasicProperties(type="part", headers={header: [B, PROVINCE]})
    try:
        ch = conn.channel()
        for i in range(400):
            ch.basic_publish(SUBMIT_EXCHANGE, A, os.urandom(4), props)
            if i % 50 == 0:
                conn.process_data_events(0)
        conn.process_data_events(0.5)
    except pika.exceptions.AMQPError:
        pass
    finally:
        if conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()
    time.sleep(3)
    hit = [c for c in (B, PROVINCE) if suspended(world, c)]
    lane_leaves = [r for r in gw(world).audit_records()
                   if r["event"] == "unverified" and r["publisher"] == f"lane:{B}"]  # fmt: skip
    for c in hit:
        reinstate(world.mgmt, world.login(c))
    assert not hit, (
        f"suspended by A's {header} copies: {hit}; 'lane:{B}' junk leaves: {len(lane_leaves)}"
    )
    assert not lane_leaves, f"A's junk recorded as B's lane's: {len(lane_leaves)} leaves"
    assert suspended(world, A)  # the copies count against their routing key's owner


def test_probe_a_cc_copy_is_delivered_with_the_publishers_routing_key(world):
    """Not an attack: what a fix can rely on. A copy routed by CC into another binding keeps
    the routing key the publisher used (the one its topic permission checked)."""
    admin = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", 5672, world.vhost, pika.PlainCredentials("guest", "guest")))  # fmt: skip
    try:
        ch = admin.channel()
        probe = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(probe, SUBMIT_EXCHANGE, routing_key="999.99.99.Z99")
        conn = connect_blocking(broker_config(world, A))
        try:
            pub = conn.channel()
            pub.confirm_delivery()
            pub.basic_publish(SUBMIT_EXCHANGE, A, b"probe",
                              pika.BasicProperties(headers={"CC": ["999.99.99.Z99"]}))  # fmt: skip
        finally:
            conn.close()
        method, props, body = None, None, None
        for _ in range(50):
            method, props, body = ch.basic_get(probe, auto_ack=True)
            if method is not None:
                break
            time.sleep(0.1)
        assert method is not None, "the CC copy never arrived: CC is checked (RabbitMQ >= 4.0?)"
        assert body == b"probe" and method.routing_key == A
    finally:
        admin.close()
    purge_lane(world, A)


# 2. Flooding without being suspended ----------------------------------------------------------


def test_replaying_ones_own_valid_part_is_a_flood_the_guard_must_stop(world, restore):
    """One validly signed, accepted part replayed byte for byte: each copy is verified
    (an Ed25519 check on the gateway) and acked as a Duplicate: no junk, no leaf, no
    signing by the attacker, the same broker cost per publish as junk."""
    doc = sealed(world, A, B, b"once, then replayed")
    (part,) = parts_of(doc)
    submit(world, A, part)
    g = gw(world)
    assert wait_for(lambda: g.counters["forwarded"] >= 1, 30)
    before = g.counters["duplicate"]
    sent, ended = blast(world, A, (part for _ in range(20_000)))
    wait_for(lambda: suspended(world, A), 10)
    dups = g.counters["duplicate"] - before
    assert suspended(world, A), (
        f"A replayed its part {sent} times ({ended}); the gateway verified and dropped {dups}"
        " copies as duplicates, and A was never suspended"
    )


def test_control_one_tally_at_threshold_prefetch_is_suspended(world, restore):
    """Control for the test above: the same threshold, junk all with user_id, is stopped."""
    g = gw(world)
    g.flood.threshold = g.config.prefetch
    sent, ended = blast(world, A, (os.urandom(4) for _ in range(60_000)), user_ids=(True,))
    assert wait_for(lambda: suspended(world, A), 10), (sent, ended)


# 3./4. Lifting, re-suspending, and the operator's commands ------------------------------------


def test_the_guard_writes_no_suspension_leaf_for_a_login_that_does_not_exist(world, restore):
    """A revoked agency's user is deleted by provisioning while its lane still holds its junk
    (user_id its old login, its code still in the directory): the guard then acts on a login
    the broker does not know."""
    g = gw(world)
    ghost = world.prefix + "099.99.99.H41"
    g.flood.recheck_s = 0.0
    assert g.flood.junk(ghost, 64)
    time.sleep(3)
    assert g.flood.junk(ghost, 64)
    time.sleep(3)
    found = leaves(world, SUSPENDED, ghost)
    assert not found, f"{len(found)} 'suspended' leaf/leaves for a login that does not exist"
    assert world.mgmt.get(f"/api/users/{world.mgmt.q(ghost)}") is None


def cipherpost(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("cipherpost")
    env = dict(os.environ, CIPHERPOST_ADMIN_PASSWORD="guest")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=env, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


URL = "http://guest@127.0.0.1:15672"


def test_suspending_a_login_that_does_not_exist_is_refused(world):
    """A typo (or a login without its prefix) must not report "X is suspended"."""
    ghost = world.prefix + "no-such-login"
    done = cipherpost("broker", "suspend", ghost, "--admin-url", URL, "--json")
    try:
        assert done.returncode != 0, f"reported success: {done.stdout.strip()}"
    finally:
        world.mgmt.delete(f"/api/users/{world.mgmt.q(ghost)}")


def test_rotating_a_suspended_logins_password_keeps_it_suspended(world, tmp_path):
    login = world.login(B)
    suspend(world.mgmt, login)
    try:
        rotate(world.mgmt, login, vhost=world.vhost, credentials_dir=tmp_path)
        assert user_limits(world.mgmt, login).get("max-connections") == 0
    finally:
        reinstate(world.mgmt, login)
        # B's credentials file in the world is stale now; give it back its password.
        new = tmp_path / f"{login}.broker.json"
        assert new.exists()
        (world.root / "broker-credentials" / f"{login}.broker.json").write_bytes(new.read_bytes())


def test_the_directory_publisher_is_never_suspended_by_the_guard(world):
    """Not in the directory as an agency: the guard is never even asked (notify is None);
    and it may not publish on cp.submit at all."""
    g = gw(world)
    assert world.prefix + PUBLISHER_LOGIN not in {world.login(c) for c in BASIC}
    assert user_limits(world.mgmt, world.prefix + PUBLISHER_LOGIN).get("max-connections") != 0
    assert g.counters["internal_error"] == 0 and world.gateways[0][1].is_alive()
