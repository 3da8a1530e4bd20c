"""Red team: parts of one header, replays, republishes (THREATS.md A1, A3; invariants 2, 5, 9).

A byte-identical copy of a forwarded part is a duplicate: "acked, counted,
no leaf, no notice: that is how a sender's republish after a reconnect looks"
(docs/policy.md). These tests show where that rule does not hold yet, and
where a different part at a forwarded position is not refused as
``invariant:part-conflict``. Each FAILS on the current gateway.
"""

from __future__ import annotations

import datetime as dt

import pytest

from gateway import clock
from tests.gateway_kit import A, B, P, delivery, make_gateway, make_kit, parts
from tests.redteam_helpers import badly_signed_part, raw_notice, records, resigned_part


@pytest.fixture
def kit(tmp_path):
    return make_kit(tmp_path / "kit")


@pytest.fixture
def gw(kit, tmp_path):
    g = make_gateway(kit, tmp_path)
    yield g
    g.close()


def rejections(gw, code: str) -> list:
    return gw._transport.to(code, "notice")


def test_a_refused_part_republished_is_recorded_and_notified_once(gw, kit):
    """A1 (or A3 duplicating a message) breaks invariants 5 and 9.

    A publishes one part whose header is validly signed but whose segment
    signature is bad: one ``part-refused`` leaf and one rejection notice, as
    designed. It then republishes the *same bytes* 30 times (what its agent
    does after a reconnect; what a broker operator can do at will). Unlike a
    forwarded part's copy, which is a duplicate, every copy of a refused
    part costs a new leaf, a new signed rejection notice and an fsync, with
    no aggregation and no throttle (junk is throttled; verified refusals
    are not). The same holds for a refused notice.

    Observed: 31 leaves and 31 notices for one refused part. Expected: one
    leaf and one notice per distinct refused message (by digest), the
    copies acked as duplicates.
    """
    body = badly_signed_part(kit.seal(A, [B]))
    for _ in range(31):
        gw.handle(delivery(body, A))
        gw.commit_batch()
    refused = [r for r in records(gw) if r["event"] == "part-refused"]
    assert len(refused) == 1, f"{len(refused)} leaves for one refused part"
    assert len(rejections(gw, A)) == 1, f"{len(rejections(gw, A))} notices for one refused part"


def test_a_refused_notice_republished_is_recorded_once(gw, kit):
    """A1 breaks invariant 5: the same refused notice bytes, 31 times, make 31 leaves."""
    cpe = kit.seal(P, [B])  # never submitted: no edge exists
    raw = raw_notice(kit, B, P, cpe, status="06")
    for _ in range(31):
        gw.handle(delivery(raw, B, kind="notice"))
        gw.commit_batch()
    refused = [r for r in records(gw) if r["event"] == "notice-refused"]
    assert len(refused) == 1, f"{len(refused)} leaves for one refused notice"


def test_a_forwarded_part_republished_after_expiry_is_a_duplicate(gw, kit, monkeypatch):
    """A3 (a redelivery or replay) or A1 (a late republish) break invariant 9.

    A's envelope (lifetime 2 minutes) is accepted and its only part is
    forwarded to B. Five minutes later a byte-identical copy of that part
    arrives again (the broker redelivers it, A's agent republishes it after a
    reconnect, or the broker operator replays it). The gateway checks expiry
    *before* it checks whether this exact part was already forwarded, so it
    writes a ``part-refused`` leaf (``invariant:expired``) and signs a
    rejection notice to A about a document that was in fact delivered: A's
    ``cipherpost status`` now shows a gateway refusal for it (a false
    refusal), and every replay costs another leaf.

    Observed: a part-refused leaf and a rejection notice. Expected: a
    duplicate (acked, no leaf, no notice).
    """
    body = parts(kit.seal(A, [B], lifetime=dt.timedelta(minutes=2)))[0]
    gw.handle(delivery(body, A))
    gw.commit_batch()
    assert len(gw._transport.to(B, "part")) == 1
    real = clock.now
    monkeypatch.setattr(clock, "now", lambda: real() + dt.timedelta(minutes=5))
    again = delivery(body, A)
    gw.handle(again)
    gw.commit_batch()
    assert again.settled == "ack"
    assert [r["event"] for r in records(gw)] == ["submission"], records(gw)[-1]["rule_id"]
    assert rejections(gw, A) == []


def test_a_different_part_in_the_deciding_batch_is_a_conflict_not_a_duplicate(gw, kit):
    """A1 breaks invariant 2 (and the audit's completeness).

    A signs two different ciphertexts for position 0 of one header (its own
    key: both segment signatures verify) and publishes both so that they land
    in the same consumer batch, before the header is decided. Both become
    ``Decide`` verdicts; after the commit, the second finds the first's
    forward in flight and is acked as a *duplicate* without comparing
    digests: no ``invariant:part-conflict`` leaf, no notice, the gateway's
    record silently disagrees with what A published. The same pair in two
    batches is refused as a conflict, as designed.

    Observed: leaves == [submission]; counters say "duplicate". Expected: a
    ``part-refused`` leaf with rule ``invariant:part-conflict`` for the
    second part, which is not forwarded.
    """
    cpe = kit.seal(A, [B])
    first = parts(cpe)[0]
    other = resigned_part(kit, A, cpe, 0)
    assert len(other) == len(first) and other != first
    d1, d2 = delivery(first, A), delivery(other, A)
    gw.handle(d1)
    gw.handle(d2)
    gw.commit_batch()
    assert len(gw._transport.to(B, "part")) == 1
    assert [(r["event"], r["rule_id"]) for r in records(gw)] == [
        ("submission", "h41-internal"),
        ("part-refused", "invariant:part-conflict"),
    ]


def test_a_different_part_in_a_later_batch_is_a_conflict(gw, kit):
    """Control (resisted): the same pair across two batches is refused as a part conflict."""
    cpe = kit.seal(A, [B])
    first = parts(cpe)[0]
    other = resigned_part(kit, A, cpe, 0)
    gw.handle(delivery(first, A))
    gw.commit_batch()
    gw.handle(delivery(other, A))
    gw.commit_batch()
    assert [r["rule_id"] for r in records(gw)][-1] == "invariant:part-conflict"
    assert len(gw._transport.to(B, "part")) == 1
