"""Red team: revoked and retired agencies (THREATS.md A7, with A1; invariants 2 and 6).

A revocation or a retirement applies "from the moment the new directory
version arrives" (docs/onboarding.md, README). The gateway re-checks the
*sender* of every part against the directory in force, but the recipients
and retired codes only once, when the header is first decided. Each test
FAILS on the current gateway.
"""

from __future__ import annotations

import datetime as dt

import pytest

from keys import ca
from keys.codes import AgencyCode
from tests.gateway_kit import A, B, P, X, delivery, make_gateway, make_kit, parts
from tests.redteam_helpers import new_directory, records


@pytest.fixture
def kit(tmp_path):
    return make_kit(tmp_path / "kit")


@pytest.fixture
def gw(kit, tmp_path):
    g = make_gateway(kit, tmp_path)
    yield g
    g.close()


def destinations(published) -> set[str]:
    out: set[str] = set()
    for p in published:
        out.add(p.routing_key)
        out.update((p.properties.headers or {}).get("CC", []))
    return out


def test_a_recipient_revoked_mid_envelope_receives_no_further_part(gw, kit):
    """A7 (X's key is compromised and revoked) breaks invariant 6.

    A sends a three-part envelope to B and X. Part 0 is accepted and
    forwarded to both. The cipher department then revokes X (key
    compromise) and the gateway installs the new directory version. A's
    parts 1 and 2 arrive after that: the gateway re-checks A (the sender)
    but not the recipients, and forwards both parts to X's inbox anyway,
    completing the document for whoever holds X's compromised key.

    Observed: parts 1 and 2 published with X in CC. Expected: no part
    reaches a recipient revoked by the directory in force (the parts are
    refused, or at least not sent to X).
    """
    cpe = kit.seal(A, [B, X], b"y" * 3000)  # 3 segments of 1 KiB
    first, *rest = parts(cpe)
    gw.handle(delivery(first, A))
    gw.commit_batch()
    assert X in destinations(gw._transport.to(B, "part"))
    ca.revoke(kit.world.authority, AgencyCode.parse(X), "key compromise", kit.now)
    revoked = new_directory(kit)
    assert revoked.entries[X].revoked
    gw._directory_updated(revoked)  # what the directory feed does on a new version
    before = len(gw._transport.published)
    for body in rest:
        gw.handle(delivery(body, A))
        gw.commit_batch()
    later = [p for p in gw._transport.published[before:] if p.properties.type == "part"]
    assert X not in destinations(later), "parts forwarded to a revoked recipient"


def test_a_retired_code_cannot_send_after_its_retirement(gw, kit):
    """A7 (a retired agency: its commune merged into another) breaks invariant 6.

    THREATS.md A7: a revoked *or retired* agency cannot "be accepted after
    the directory version that revokes it reaches the holder";
    docs/onboarding.md: "With --after 30d the old code keeps working for 30
    days ... then retires". The gateway checks retirement only for
    recipients (``_check_not_retired``): the retired code B, whose keys the
    officials of the dissolved commune still hold, keeps sending documents
    that are accepted and forwarded in its own name.

    Observed: B's envelope to P accepted (rule h41-internal) and forwarded.
    Expected: refused (e.g. ``invariant:retired``, naming the successor),
    nothing forwarded.
    """
    ca.retire(
        kit.world.authority,
        AgencyCode.parse(B),
        AgencyCode.parse(A),
        kit.now - dt.timedelta(hours=1),
    )
    kit.directory = new_directory(kit)
    assert kit.directory.successor(AgencyCode.parse(B), kit.now) == A
    gw._directory_updated(kit.directory)
    gw.handle(delivery(parts(kit.seal(B, [P]))[0], B))
    gw.commit_batch()
    [leaf] = records(gw)
    assert (leaf["sender"], leaf["decision"]) == (B, "refused"), leaf["rule_id"]
    assert gw._transport.to(P, "part") == []


def test_a_sender_revoked_mid_envelope_gets_no_further_part_through(gw, kit):
    """Control (resisted): after A's revocation its remaining parts are junk, not forwarded."""
    cpe = kit.seal(A, [B], b"y" * 3000)
    first, *rest = parts(cpe)
    gw.handle(delivery(first, A))
    gw.commit_batch()
    ca.revoke(kit.world.authority, AgencyCode.parse(A), "gone rogue", kit.now)
    gw._directory_updated(new_directory(kit))
    for body in rest:
        gw.handle(delivery(body, A))
    gw.commit_batch(everything=True)
    assert len(gw._transport.to(B, "part")) == 1
    assert records(gw)[-1]["rule_id"] == "invariant:revoked-sender"
