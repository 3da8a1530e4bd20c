"""Issue 10, acceptance 1 and 2: faults injected into the 3-node cluster during a steady flow.

Each test runs two gateways, two senders and two receivers (each client on a node of its
own shuffled choice), injects one fault, lets the flow go on through it and after it, and
then holds the full list of :mod:`tests.cluster_flow`: nothing lost, nothing written twice,
every receipt, one decision leaf per envelope, no refusal leaf or rejection notice for a
legitimate envelope, ``cp.dead`` empty, ``audit verify`` passing. THREATS.md invariants 9
(interruptions tell the truth) and 10 (availability on the engine).

The longest time without a confirmed send after a node failure is printed (acceptance 2:
no client down longer than 15 s while two nodes hold quorum); ``bench/failover.py``
measures it on its own. Faults last as long as the issue says (35 s, 60 s): those waits
are the faults' durations, not synchronisation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time

import pytest

from agents.world import PASSPHRASE
from broker.topology import submit_queue
from keys import ca
from keys.codes import AgencyCode
from keys.directory import build_directory
from tests.cluster_flow import Flow, cluster_world
from tests.exchange import MAT_ONLY, PROVINCE, A, B, publish_raw, sealed_by, submit, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.broker, pytest.mark.slow]

SENDERS = [PROVINCE, A]
RECEIVERS = [B, MAT_ONLY]


@contextlib.contextmanager
def flowing(cluster, tmp_path):
    world = cluster_world(cluster, tmp_path / "w")
    world.start_gateway("gw1")
    world.start_gateway("gw2")
    f = Flow(world, SENDERS, RECEIVERS, tmp_path)
    try:
        yield f
    finally:
        f.close()
        cluster.restore()  # the next test gets the whole cluster back
        world.cleanup()


@pytest.fixture
def flow(cluster, tmp_path):
    with flowing(cluster, tmp_path) as f:
        yield f


@pytest.fixture
def own_flow(own_cluster, tmp_path):
    with flowing(own_cluster, tmp_path) as f:
        yield f


def gateway_node(cluster, world):
    """A node a gateway is connected to now."""
    login = world.prefix + "cp-gateway"
    for node in cluster.nodes:
        if cluster.connections(node, login, world.vhost):
            return node
    raise AssertionError("no gateway connection on any node")


def test_kill_9_of_the_node_leading_the_submit_lane(cluster, flow, capsys):
    flow.start()
    flow.wait_sent(6, "before the fault")
    leader = cluster.leader(flow.world.vhost, submit_queue(AgencyCode.parse(A)))
    t = time.monotonic()
    cluster.kill(leader)
    flow.wait_sent(10, "after kill -9 of the leader")
    with capsys.disabled():
        print(f"\nkill -9 {leader.name}: longest outage {flow.longest_gap_after(t):.1f} s")
    cluster.start_node(leader)
    flow.wait_sent(4, "after the node came back")
    flow.finish()
    flow.check(cluster, capsys)


def test_stop_app_of_the_node_a_gateway_is_connected_to(cluster, flow, capsys):
    flow.start()
    flow.wait_sent(6, "before the fault")
    node = gateway_node(cluster, flow.world)
    t = time.monotonic()
    cluster.stop_app(node)
    flow.wait_sent(10, "after stop_app")
    with capsys.disabled():
        print(f"\nstop_app {node.name}: longest outage {flow.longest_gap_after(t):.1f} s")
    cluster.start_app(node)
    flow.wait_sent(4, "after start_app")
    flow.finish()
    flow.check(cluster, capsys)


def test_whole_cluster_restart_with_messages_queued(own_cluster, own_flow, capsys):
    cluster, flow = own_cluster, own_flow
    # Queued on every side: submissions no gateway has taken, deliveries no receiver has.
    flow.world.stop_gateways()
    flow.start_senders_only()
    flow.wait_sent(10, "with the gateways stopped")
    flow.pause_senders()
    cluster.stop_all()
    cluster.start_all()
    flow.world.start_gateway("gw1")
    flow.world.start_gateway("gw2")
    flow.start()
    flow.wait_sent(6, "after the restart")
    flow.finish()
    flow.check(cluster, capsys)


def test_memory_alarm_on_one_node_for_35_seconds(cluster, flow, capsys):
    flow.start()
    flow.wait_sent(6, "before the alarm")
    node = cluster.nodes[1]
    cluster.memory_alarm(node, True)
    try:
        # A 35 s stall: longer than a confirm timeout used to be before a republish.
        time.sleep(35)
    finally:
        cluster.memory_alarm(node, False)
    flow.wait_sent(10, "after the alarm")
    flow.finish()
    flow.check(cluster, capsys)


def test_a_hung_node_sigstop_60_seconds(cluster, flow, capsys):
    flow.start()
    flow.wait_sent(6, "before the node hung")
    node = gateway_node(cluster, flow.world)
    t = time.monotonic()
    cluster.pause(node)
    try:
        flow.wait_sent(10, "while a node hangs")
        with capsys.disabled():
            print(f"\nSIGSTOP {node.name}: longest outage {flow.longest_gap_after(t):.1f} s")
        left = 60 - (time.monotonic() - t)
        if left > 0:
            time.sleep(left)  # the hang lasts 60 s
    finally:
        cluster.resume(node)
    flow.wait_sent(6, "after SIGCONT")
    flow.finish()
    flow.check(cluster, capsys)


def test_a_directory_version_published_after_a_node_failure_reaches_everyone(cluster, flow, capsys):
    """A7: a revocation published while a node is down reaches every running agent and
    gateway (their feeds are replicated quorum queues), and the revoked sender is refused."""
    flow.senders = [PROVINCE]  # A is the one revoked
    early = [sealed_by(flow.world, A, B) for _ in range(4)]  # sealed in good standing
    flow.start()
    flow.wait_sent(4, "before the fault")
    victim = cluster.nodes[0]
    cluster.kill(victim)
    world = flow.world
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    now = dt.datetime.now(dt.UTC)
    ca.revoke(authority, AgencyCode.parse(A), "key compromised", now)
    publish_raw(world, build_directory(authority, world.root / "certs", now, valid_days=7))
    assert len(world.gateways) == 2
    assert wait_for(
        lambda: (
            all(gw.directory.version == 2 for gw, _ in world.gateways)
            and all(c.directory.version == 2 for c in flow.followers.values())
        ),
        120,
    ), "the new directory version did not reach every gateway and agent"
    for body in early:
        submit(world, A, body)

    def refused() -> int:  # the gateways tally refusals before verification (gateway/junk.py)
        return sum(
            int(r["count"] or 1)
            for r in world.gateways[0][0].audit_records()
            if r["rule_id"] == "invariant:revoked-sender"
        )

    assert wait_for(lambda: refused() >= len(early), 120), (
        f"{refused()} of the revoked sender's {len(early)} envelopes refused"
    )
    cluster.start_node(victim)
    flow.wait_sent(4, "after the node came back")
    flow.finish()
    flow.check(cluster, capsys)
