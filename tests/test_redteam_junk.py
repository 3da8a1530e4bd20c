"""Red team: junk aggregation under a mix of reasons (THREATS.md A1; invariant 5).

Junk is tallied per (publisher, reason) and written as one leaf per tally per
second (docs/audit.md: target <= 10 KB of leaves per 1,000 junk messages;
``bench/flood.py`` measures it with one reason only). A flooding lane decides
about one prefetch window (64) of junk per second. An agency that rotates its
junk over the reasons it can produce with its own login (format, oversized,
version, publisher, sender-key, signature) gets one leaf per reason per
window instead of one per window. This test FAILS on the current gateway.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest

from broker.topology import submit_queue
from gateway import clock
from gateway.decide import Incoming, Junk, decide
from keys.codes import AgencyCode
from tests.gateway_kit import (
    PREFIX,
    A,
    B,
    FakeState,
    delivery,
    forged_header_part,
    make_gateway,
    make_kit,
)
from tests.redteam_helpers import leaf_bytes, records

WINDOW = 64  # the gateway's default per-lane prefetch
TARGET = 10 * 1024  # bytes of junk leaves per 1,000 junk messages (docs/audit.md)


@pytest.fixture
def kit(tmp_path):
    return make_kit(tmp_path / "kit")


@pytest.fixture
def gw(kit, tmp_path):
    g = make_gateway(kit, tmp_path)
    yield g
    g.close()


def junk_of_every_reason(kit) -> list[tuple[bytes, str]]:
    mine, theirs = kit.seal(A, [B]), kit.seal(B, [A])
    return [
        (b"\x00" + os.urandom(19), "part"),  # invariant:format
        (b"\x00" * 5000, "notice"),  # invariant:oversized (a notice above 4 KiB)
        (forged_header_part(mine, version=2), "part"),  # invariant:version
        (forged_header_part(theirs), "part"),  # invariant:publisher (B's header, A's login)
        (forged_header_part(mine, sender_kid=os.urandom(16)), "part"),  # invariant:sender-key
        (forged_header_part(mine), "part"),  # invariant:signature
    ]


def flood(gw, monkeypatch, bodies: list[tuple[bytes, str]], total: int = 1024) -> float:
    """``total`` junk messages from A's lane, one prefetch window per second; bytes per 1,000."""
    now = [dt.datetime.now(dt.UTC)]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    for n in range(total):
        body, kind = bodies[n % len(bodies)]
        gw.handle(delivery(body, A, kind=kind))
        if n % WINDOW == WINDOW - 1:  # the window is full: its tallies come due a second later
            now[0] += dt.timedelta(seconds=1.01)
            gw.commit_batch()
    now[0] += dt.timedelta(seconds=1.01)
    gw.commit_batch()
    junk = [r for r in records(gw) if r["event"] == "unverified" and r["publisher"] == PREFIX + A]
    assert sum(int(r["count"]) for r in junk) == total
    assert gw.counters["internal_error"] == 0
    return leaf_bytes(gw, junk) * 1000 / total


def test_one_reason_stays_within_the_target(gw, kit, monkeypatch):
    """Control (resisted): 1,024 junk messages of one reason cost ~3.3 KB of leaves per 1,000."""
    assert flood(gw, monkeypatch, junk_of_every_reason(kit)[:1]) <= TARGET


def test_mixing_reasons_keeps_junk_within_the_audit_byte_target(gw, kit, monkeypatch):
    """A1 breaks invariant 5 (bounded audit bytes per input).

    The same 1,024 junk messages, rotated over the six pre-verification
    reasons A's own login can produce, become six tallies per window: six
    leaves a second instead of one, ~21 KB of leaves per 1,000 junk messages
    (twice the documented target; with ``user_id`` omitted on some messages a
    seventh tally, "none", joins in). The flood rate is the same (the lane
    still waits for its tallies): only the signed log grows faster, at no
    cost to the flooder.

    Observed: ~20,700 bytes per 1,000. Expected: <= 10 KB per 1,000 whatever
    the mix (e.g. one tally per publisher carrying a count per reason).
    """
    bodies = junk_of_every_reason(kit)
    lane = submit_queue(AgencyCode.parse(A))
    reasons = {
        decide(Incoming(b, k, PREFIX + A, lane), FakeState(), kit.context()) for b, k in bodies
    }
    assert all(isinstance(v, Junk) for v in reasons) and len({v.reason for v in reasons}) == 6
    per_1000 = flood(gw, monkeypatch, bodies)
    assert per_1000 <= TARGET, f"{per_1000:.0f} bytes of junk leaves per 1,000 junk messages"
