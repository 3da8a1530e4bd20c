"""The flood guard: an enrolled agency flooding its lane with junk is suspended on the broker.

Attacker A1 (its own keys and broker login) publishes junk as fast as it can:
the gateway's guard must suspend that login (no connection may open, its open
ones are closed), record it as one leaf naming only the broker-validated login,
touch nobody else, and keep deciding. Provisioning never lifts a suspension;
``cipherpost broker reinstate`` does. The guard's rules are unit-tested with a
stub management API; everything else runs on the real RabbitMQ.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import envelopes
from broker.connection import BrokerError, connect_blocking
from broker.provision import WITNESS_LOGIN, provision, user_limits
from broker.topology import USER_LIMITS
from envelopes.header import Header
from gateway.config import GatewayConfig
from gateway.flood import COPIES, DUPLICATE_WINDOW_S, JUNK, SUSPEND_RULE, SUSPENDED, FloodGuard
from keys.codes import AgencyCode
from keys.errors import CipherpostError
from keys.levels import Level
from tests.exchange import (
    ADMIN_URL,
    BASIC,
    PROVINCE,
    A,
    B,
    blast,
    broker_config,
    submit,
    wait_for,
)
from tests.sync import receive_until
from tests.vectors.generate import _frames

# --- the guard's rules (a stub management API: no broker) --------------------------------------


class StubManagement:
    """Records what the guard asks of the management API; ``fail`` makes each call fail."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.limits: dict[str, dict[str, int]] = {}
        self.closed: set[str] = set()  # logins whose connections were closed (2 each before)
        self.fail = fail

    @staticmethod
    def q(name: str) -> str:
        return name

    def get(self, path: str):
        self.calls.append(("GET", path))
        if self.fail:
            raise CipherpostError("management API not reachable")
        if path.startswith("/api/user-limits/"):
            login = path.rsplit("/", 1)[1]
            return [{"value": self.limits.get(login, {})}]
        login = path.rsplit("/", 1)[1]
        return [] if login in self.closed else [{"name": "c1"}, {"name": "c2"}]

    def put(self, path: str, body) -> None:
        self.calls.append(("PUT", path))
        _, _, _, login, name = path.split("/")
        self.limits.setdefault(login, {})[name] = body["value"]

    def delete(self, path: str) -> None:
        self.calls.append(("DELETE", path))
        self.closed.add(path.rsplit("/", 1)[1])


def guard(mgmt, threshold=4, **kw):
    told: list[tuple[str, int, int, str]] = []
    g = FloodGuard(mgmt, threshold, on_suspended=lambda *a: told.append(a), **kw)
    return g, told


def test_the_guard_suspends_at_its_threshold_once_and_never_a_protected_login():
    mgmt = StubManagement()
    g, told = guard(mgmt, protected=frozenset({"gateway"}))
    assert [g.junk("a", n) for n in (1, 2, 3)] == [False, False, False]
    assert g.junk("a", 4) is True
    assert g.junk("a", 5) is False  # acted on already
    assert g.junk("gateway", 64) is False and g.junk("", 64) is False
    g.close(wait=True)
    assert mgmt.limits["a"] == {"max-connections": 0, "max-channels": 0}
    assert ("DELETE", "/api/connections/username/a") in mgmt.calls
    assert told == [("a", 2, 4, JUNK)]  # two connections were open and closed
    assert "gateway" not in mgmt.limits


def test_copies_of_handled_messages_suspend_at_their_own_threshold_within_a_window(monkeypatch):
    mgmt = StubManagement()
    g, told = guard(mgmt, protected=frozenset({"gateway"}))
    g.duplicates_after = 5
    clock = [100.0]
    monkeypatch.setattr("gateway.flood.time.monotonic", lambda: clock[0])
    assert [g.duplicate("a") for _ in range(4)] == [False] * 4
    clock[0] += DUPLICATE_WINDOW_S + 1  # a new window: the count starts again
    assert [g.duplicate("a") for _ in range(4)] == [False] * 4
    assert g.duplicate("a") is True  # the fifth within one window
    assert [g.duplicate("gateway") for _ in range(10)] == [False] * 10
    assert [g.duplicate("b") for _ in range(4)] == [False] * 4  # counted per login
    g.close(wait=True)
    assert told == [("a", 2, 5, COPIES)]
    assert set(mgmt.limits) == {"a"}


def test_a_closed_guard_acts_no_more():
    mgmt = StubManagement()
    g, told = guard(mgmt)
    g.close(wait=True)
    assert g.junk("a", 64) is False and mgmt.calls == [] and told == []


def test_the_guard_does_nothing_without_a_management_user():
    g, told = guard(None)
    assert g.on is False and g.junk("a", 1000) is False
    assert not any(g.duplicate("a") for _ in range(5000))
    g.close(wait=True)
    assert told == []


def test_a_still_suspended_login_is_not_suspended_again_and_a_reinstated_one_is():
    mgmt = StubManagement()
    g, told = guard(mgmt)
    g.recheck_s = 0.0
    assert g.junk("a", 4)
    g.close(wait=True)
    g2, told2 = guard(mgmt)
    g2.recheck_s = 0.0
    assert g2.junk("a", 4)  # looked at again: still suspended, so nothing more is done
    mgmt.limits["a"] = dict(USER_LIMITS)  # an operator reinstated it; it floods again
    mgmt.closed.discard("a")
    assert g2.junk("a", 4)
    g2.close(wait=True)
    assert len(told) == 1 and len(told2) == 1
    assert sum(1 for c in mgmt.calls if c[0] == "DELETE") == 2


def test_a_failed_suspension_is_logged_and_tried_again_at_the_next_junk(caplog):
    mgmt = StubManagement(fail=True)
    g, told = guard(mgmt)
    assert g.junk("a", 4)
    assert g._pool is not None
    g._pool.submit(lambda: None).result()  # one worker: the failed attempt is over
    assert g.junk("a", 5)  # not "acted on": it failed
    g.close(wait=True)
    assert told == []
    assert caplog.text.count("gateway_suspend_failed") == 2


def test_a_suspension_cut_short_after_its_limits_is_finished_the_next_time():
    mgmt = StubManagement()
    mgmt.limits["a"] = {"max-connections": 0, "max-channels": 0}  # the close had failed
    g, told = guard(mgmt)
    assert g.junk("a", 4)
    g.close(wait=True)
    assert ("DELETE", "/api/connections/username/a") in mgmt.calls
    assert told == [("a", 2, 4, JUNK)]


def test_the_management_password_never_shows_in_a_repr():
    from broker.management import Management

    assert "s3cret" not in repr(Management("http://127.0.0.1:15672", "warden", "s3cret"))


def test_suspend_after_must_fit_in_half_the_prefetch_window(tmp_path):
    config = tmp_path / "GATEWAY.toml"
    base = (
        'gateway_id = "gw1"\nagency_dir = "k"\ndirectory = "d"\nca_cert = "c"\npolicy = "p"\n'
        'audit_db = "a"\n[broker]\ncredentials = "b"\nprefetch = 16\n[flood]\n'
    )
    config.write_text(base + "suspend_after = 9\n")
    with pytest.raises(CipherpostError, match="suspend_after must be 1..half the"):
        GatewayConfig.load(config)
    config.write_text(base + 'suspend_after = 8\nadmin_url = "http://w@127.0.0.1:15672"\n')
    loaded = GatewayConfig.load(config)
    assert loaded.suspend_after == 8 and loaded.flood_admin_url == "http://w@127.0.0.1:15672"


# --- on the real broker ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from agents.world import build_world

    w = build_world(tmp_path_factory.mktemp("flood"), BASIC, admin_url=ADMIN_URL, flood_guard=True)
    w.start_gateway()
    yield w
    w.cleanup()


def flood(world, count: int, *, user_id: bool) -> tuple[int, str]:
    """A publishes ``count`` 4-byte junk messages, no confirms; (published, how it ended)."""
    return blast(world, A, (os.urandom(4) for _ in range(count)), user_ids=(user_id,))


def suspended(world, code: str) -> bool:
    return user_limits(world.mgmt, world.login(code)).get("max-connections") == 0


def leaves(world, event: str):
    return [r for r in world.gateways[0][0].audit_records() if r["event"] == event]


def sealed(world, sender: str, to: str, text: bytes) -> bytes:
    with world.client(sender) as c:
        out = io.BytesIO()
        envelopes.seal(
            io.BytesIO(text), out, keys=c.keys, directory=c.directory,
            to=[AgencyCode.parse(to)], level=Level.MAT, size=len(text),
        )  # fmt: skip
    return out.getvalue()


def test_a_junk_flood_suspends_the_flooder_alone_and_others_go_on(world):
    gw = world.gateways[0][0]
    result: list[tuple[int, str]] = []
    flooder = threading.Thread(target=lambda: result.append(flood(world, 200_000, user_id=True)))
    flooder.start()
    doc = sealed(world, PROVINCE, B, b"sent while A floods")
    submit(world, PROVINCE, doc)
    flooder.join(120)
    sent, ended = result[0]
    # A's connection was closed by the broker long before its 200,000 publishes were done.
    assert ended != "completed" and sent < 200_000, (sent, ended)
    assert suspended(world, A)
    with pytest.raises(BrokerError):
        connect_blocking(broker_config(world, A))  # and it cannot come back
    # Nobody else was touched: B, the province and the gateway keep their limits.
    for code in (B, PROVINCE):
        assert user_limits(world.mgmt, world.login(code)) == USER_LIMITS
    assert not user_limits(world.mgmt, gw.broker.login).get("max-connections") == 0
    with world.client(B) as b:  # the province's document, sent during the flood, arrives
        receive_until(b, {Header.parse(_frames(doc)[0][0]).envelope_id.hex()})
    # One leaf records it, naming only the broker-validated login.
    assert wait_for(lambda: len(leaves(world, SUSPENDED)) == 1, 30)
    (leaf,) = leaves(world, SUSPENDED)
    assert leaf["publisher"] == world.login(A) and leaf["rule_id"] == SUSPEND_RULE
    assert leaf["sender"] == "" and leaf["recipients"] == [] and leaf["level"] == ""
    assert leaf["count"] >= gw.config.suspend_after
    assert gw.counters["internal_error"] == 0 and world.gateways[0][1].is_alive()


def cipherpost(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("cipherpost")
    env = dict(os.environ, CIPHERPOST_ADMIN_PASSWORD="guest")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=env, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_provisioning_keeps_a_suspension_and_reinstate_lifts_it(world):
    assert suspended(world, A)  # by the flood of the test above
    with world.client(PROVINCE) as c:
        directory = c.directory
    result = provision(
        world.mgmt, world.vhost, directory, login_prefix=world.prefix,
        credentials_dir=world.root / "reprovisioned",
    )  # fmt: skip
    assert suspended(world, A)
    assert any("suspended and stays so" in change for change in result.changes)
    url = "http://guest@127.0.0.1:15672"
    lifted = cipherpost("broker", "reinstate", world.login(A), "--admin-url", url, "--json")
    assert lifted.returncode == 0, lifted.stderr
    assert user_limits(world.mgmt, world.login(A)) == USER_LIMITS
    connect_blocking(broker_config(world, A)).close()  # A may connect again
    again = cipherpost("broker", "reinstate", world.login(A), "--admin-url", url)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "is not suspended" in again.stderr


def test_a_reinstated_login_that_floods_again_without_user_id_is_suspended_again(world):
    gw = world.gateways[0][0]
    gw.flood.recheck_s = 0.0  # the first suspension was moments ago
    assert not suspended(world, A)
    sent, ended = flood(world, 200_000, user_id=False)  # named by its lane alone
    assert ended != "completed" and sent < 200_000, (sent, ended)
    assert suspended(world, A)
    assert wait_for(lambda: len(leaves(world, SUSPENDED)) == 2, 30)
    assert {r["publisher"] for r in leaves(world, SUSPENDED)} == {world.login(A)}
    # Manual suspension and its lifting by the operator's commands.
    url = "http://guest@127.0.0.1:15672"
    assert cipherpost("broker", "reinstate", world.login(B), "--admin-url", url).returncode == 2
    done = cipherpost("broker", "suspend", world.login(B), "--admin-url", url, "--json")
    assert done.returncode == 0, done.stderr
    assert suspended(world, B)
    assert cipherpost("broker", "reinstate", world.login(B), "--admin-url", url).returncode == 0
    assert user_limits(world.mgmt, world.login(B)) == USER_LIMITS


def test_reinstating_a_login_that_is_no_agency_gives_it_back_no_limits(world):
    """Provisioning leaves the witness (and gateway, cipher department) logins unlimited:
    a reinstate must not hand them an agency's limits of 8 connections."""
    url = "http://guest@127.0.0.1:15672"
    witness = world.prefix + WITNESS_LOGIN
    assert user_limits(world.mgmt, witness) == {}
    assert cipherpost("broker", "suspend", witness, "--admin-url", url).returncode == 0
    assert user_limits(world.mgmt, witness)["max-connections"] == 0
    assert cipherpost("broker", "reinstate", witness, "--admin-url", url).returncode == 0
    assert user_limits(world.mgmt, witness) == {}


def test_an_agency_replaying_its_own_accepted_part_is_suspended_too(world):
    """A1 needs no junk: copies of its own accepted part are duplicates (no leaf, acked),
    yet each costs the broker as much as junk. They are counted too."""
    gw = world.gateways[0][0]
    gw.flood.duplicates_after = 300  # the default (4,096) takes longer on the same path
    gw.flood.recheck_s = 0.0
    connect_blocking(broker_config(world, B)).close()
    assert not suspended(world, B)
    doc = sealed(world, B, PROVINCE, b"an honest document, then replayed")
    submit(world, B, doc)
    eid = Header.parse(_frames(doc)[0][0]).envelope_id.hex()
    with world.client(PROVINCE) as p:
        receive_until(p, {eid})
    sent, _ = blast(world, B, (doc for _ in range(100_000)))
    assert sent < 100_000 and suspended(world, B)
    assert wait_for(lambda: any(COPIES in r["reason"] for r in leaves(world, SUSPENDED)), 30)
    (leaf,) = [r for r in leaves(world, SUSPENDED) if r["publisher"] == world.login(B)]
    assert leaf["count"] >= 300 and leaf["sender"] == ""
    # The province got the document once: copies are never forwarded again.
    with world.client(PROVINCE) as p:
        again = receive_until(p, until=lambda: True)
    assert eid not in {d.envelope_id for d in again}
    assert gw.counters["internal_error"] == 0
