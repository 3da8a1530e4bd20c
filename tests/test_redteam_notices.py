"""Red team: the notice channel (THREATS.md A1/A2; invariants 4, 5, 8).

A recipient of one accepted envelope holds an accepted edge to its sender.
The gateway relays any notice along that edge whose exact bytes it has not
relayed before, and checks nothing of its ``status`` but that it is a string
of at most 280 characters. Each test here FAILS on the current gateway.
"""

from __future__ import annotations

import pytest

from tests.gateway_kit import A, B, P, X, delivery, make_gateway, make_kit, parts
from tests.redteam_helpers import raw_notice, records


@pytest.fixture
def kit(tmp_path):
    return make_kit(tmp_path / "kit")


@pytest.fixture
def gw(kit, tmp_path):
    g = make_gateway(kit, tmp_path)
    yield g
    g.close()


def accepted(gw, kit, sender: str, to: list[str]) -> bytes:
    cpe = kit.seal(sender, to)
    gw.handle(delivery(parts(cpe)[0], sender))
    gw.commit_batch()
    assert [r["decision"] for r in records(gw)][-1] == "accepted"
    return cpe


def test_one_accepted_edge_does_not_let_a_recipient_flood_the_senders_inbox(gw, kit):
    """A2 (a recipient, also an A1 with its own keys) breaks invariants 4 and 5.

    B received one envelope from A. It then signs 200 copies of the same
    status "03 accepted", each with another note (so other bytes), and
    publishes them through its own lane. The gateway relays every one of them
    into A's inbox and writes one leaf for each: 200 notices and 200 leaves
    for one receipt's worth of information. Nothing bounds it, so B can
    bury every other agency's documents to A behind its notices (A's inbox
    is one FIFO queue with no length limit) and grow the signed log at will.

    Observed: 200 notices relayed to A, 200 notice leaves. Expected: at most
    one relay per (envelope, header, signer, kind, status), i.e. at most the
    nine statuses a recipient can legitimately send.
    """
    cpe = accepted(gw, kit, A, [B])
    for i in range(200):
        gw.handle(delivery(raw_notice(kit, B, A, cpe, note=f"again {i}"), B, kind="notice"))
        if i % 16 == 15:
            gw.commit_batch()
    gw.commit_batch()
    relayed = gw._transport.to(A, "notice")
    notice_leaves = [r for r in records(gw) if r["event"] == "status"]
    assert len(relayed) <= 9, f"{len(relayed)} notices relayed to A along one edge"
    assert len(notice_leaves) <= 9, f"{len(notice_leaves)} leaves for one status"


@pytest.mark.parametrize(
    ("signer", "addressee", "kind", "status"),
    [
        # free text (with a line break) where a status code belongs
        (B, A, "status", "03\nrefused by the gateway, rule default-deny"),
        # 280 characters of whatever the recipient wants in the signed, append-only log
        (B, A, "status", "Q" * 280),
        # a receipt is status 01 only
        (B, A, "receipt", "06"),
        # a recipient cannot request a recall (13 is the sender's)
        (B, A, "status", "13"),
        # a recall is status 13 only
        (A, B, "recall", "06"),
    ],
    ids=["newline-text", "280-chars", "receipt-06", "status-13", "recall-06"],
)
def test_a_notice_status_must_be_a_code_that_fits_its_kind(gw, kit, signer, addressee, kind,
                                                          status):  # fmt: skip
    """A2 (a recipient) / A1 (a sender) break invariant 4 (and 8: free text in the log).

    docs/envelope-v1.md: "Kinds: receipt (status 01), status (02-06, 15, 16),
    recall (13, from the sender)"; docs/audit.md: a leaf holds a typed reason,
    never text read from a message. ``parse_notice`` only checks that
    ``status`` is a string of <= 280 characters, so along an accepted edge
    the gateway relays a "status" that is any text (control characters and
    line breaks included, unescaped) or any code under any kind, and writes
    ``"status " + that text`` verbatim into the reason of a signed,
    append-only leaf: a channel into the audit log that no one can ever
    redact, and a forged line in ``audit query`` output.

    Observed: relayed, and the text is in the leaf. Expected: refused
    (``invariant:format`` or ``invariant:notice-edge``), nothing relayed,
    none of the text in any leaf.
    """
    cpe = accepted(gw, kit, A, [B])
    before = len(gw._transport.to(addressee, "notice"))
    raw = raw_notice(kit, signer, addressee, cpe, kind=kind, status=status)
    d = delivery(raw, signer, kind="notice")
    gw.handle(d)
    gw.commit_batch(everything=True)
    relayed = [p for p in gw._transport.to(addressee, "notice")[before:] if p.body == raw]
    assert relayed == [], f"{kind} with status {status[:20]!r} relayed to {addressee}"
    if len(status) > 2:
        assert not [r for r in records(gw) if status in str(r["reason"])], "status text in a leaf"


def test_a_co_recipient_cannot_tell_another_co_recipient_anything(gw, kit):
    """Control (resisted): X and B both received A's envelope; X's status to B is refused."""
    cpe = accepted(gw, kit, A, [B, X])
    raw = raw_notice(kit, X, B, cpe, status="06")
    gw.handle(delivery(raw, X, kind="notice"))
    gw.commit_batch()
    assert [p for p in gw._transport.to(B, "notice") if p.body == raw] == []
    assert records(gw)[-1]["rule_id"] == "invariant:notice-edge"


def test_a_recipient_cannot_recall(gw, kit):
    """Control (resisted): a recall from a recipient to the sender is refused."""
    cpe = accepted(gw, kit, P, [B])
    raw = raw_notice(kit, B, P, cpe, kind="recall", status="13")
    gw.handle(delivery(raw, B, kind="notice"))
    gw.commit_batch()
    assert [p for p in gw._transport.to(P, "notice") if p.body == raw] == []
    assert records(gw)[-1]["rule_id"] == "invariant:notice-edge"
