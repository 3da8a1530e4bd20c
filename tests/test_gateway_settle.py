"""Settling verdicts: audit first, then forward / notify / ack (in-memory transport).

The real audit store, keys and policy; only the broker is the in-memory
transport, so each test runs in milliseconds. The same paths run against
RabbitMQ in ``test_gateway_attacks.py`` and ``test_gateway_refusals.py``.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3

import pytest

from broker.topology import DELIVER_EXCHANGE
from envelopes.notices import parse_notice
from gateway.audit import AuditStore
from gateway.policy import Policy, sign_policy
from gateway.transport import MemoryTransport
from keys.levels import Level
from tests.gateway_kit import OTHER, POLICY, A, B, P, X, delivery, make_gateway, make_kit, parts


@pytest.fixture
def kit(tmp_path):
    return make_kit(tmp_path / "kit")


@pytest.fixture
def gw(kit, tmp_path):
    g = make_gateway(kit, tmp_path)
    yield g
    g.close()


def transport(gw) -> MemoryTransport:
    return gw._transport


def rejections(gw, code: str) -> list:
    return [parse_notice(p.body)[0] for p in transport(gw).to(code, "notice")]


def leaves(gw) -> list[dict]:
    store = AuditStore(gw.config.audit_db, readonly=True)
    try:
        return store.records()
    finally:
        store.close()


def test_an_accepted_part_is_recorded_then_forwarded_once_to_all_recipients(gw, kit):
    d = delivery(parts(kit.seal(A, [B, X]))[0], A)
    gw.handle(d)
    assert transport(gw).published == []  # nothing leaves before the record is durable
    assert d.settled is None
    gw.commit_batch()
    [fwd] = transport(gw).to(B)
    assert fwd.exchange == DELIVER_EXCHANGE and fwd.properties.headers["CC"] == [X]
    assert d.settled == "ack"
    assert [(r["event"], r["decision"]) for r in leaves(gw)] == [("submission", "accepted")]


def test_a_byte_identical_copy_is_a_duplicate_not_a_replay(gw, kit):
    body = parts(kit.seal(A, [B]))[0]
    gw.handle(delivery(body, A))
    gw.commit_batch()
    again = delivery(body, A)  # the sender's republish after a reconnect
    gw.handle(again)
    gw.commit_batch()
    assert again.settled == "ack"
    assert len(transport(gw).to(B)) == 1
    assert rejections(gw, A) == []
    assert len(leaves(gw)) == 1
    assert gw.counters["duplicate"] == 1


def test_two_copies_in_one_batch_are_forwarded_once(gw, kit):
    body = parts(kit.seal(A, [B]))[0]
    first, second = delivery(body, A), delivery(body, A)
    gw.handle(first)
    gw.handle(second)
    gw.commit_batch()
    assert (first.settled, second.settled) == ("ack", "ack")
    assert len(transport(gw).to(B)) == 1
    assert len(leaves(gw)) == 1


def test_two_headers_under_one_id_in_one_batch_keep_the_first(gw, kit):
    eid = os.urandom(16)
    good = delivery(parts(kit.seal(A, [B], envelope_id=eid))[0], A)
    evil = delivery(parts(kit.seal(A, [OTHER], level=Level.TOI_MAT, envelope_id=eid))[0], A)
    gw.handle(good)
    gw.handle(evil)
    gw.commit_batch()
    assert [(r["decision"], r["rule_id"]) for r in leaves(gw)] == [
        ("accepted", "h41-internal"),
        ("refused", "invariant:id-reuse"),
    ]
    assert transport(gw).to(OTHER) == []
    [notice] = rejections(gw, A)
    assert notice.rule_id == "invariant:id-reuse"
    assert (good.settled, evil.settled) == ("ack", "ack")


def test_each_refusal_gets_exactly_one_notice_naming_its_rule(gw, kit):
    for _ in range(3):
        gw.handle(delivery(parts(kit.seal(A, [OTHER]))[0], A))  # default deny, 3 envelopes
    gw.commit_batch()
    notices = rejections(gw, A)
    assert [n.rule_id for n in notices] == ["default-deny"] * 3
    assert len({n.envelope_id for n in notices}) == 3
    assert all(n.signer.text == "000.00.99.G99" for n in notices)


def test_junk_waits_for_its_one_leaf_then_is_acked_and_told_once(gw, kit):
    held = [delivery(os.urandom(20), A) for _ in range(5)]
    for d in held:
        gw.handle(d)
    gw.commit_batch()  # younger than the tally interval: no leaf yet, nothing acked
    assert leaves(gw) == [] and all(d.settled is None for d in held)
    gw.commit_batch(everything=True)
    [leaf] = leaves(gw)
    assert (leaf["event"], leaf["count"], leaf["publisher"], leaf["sender"]) == (
        "unverified",
        5,
        "t-" + A,
        "",
    )
    assert leaf["size"] == 100 and leaf["rule_id"] == "invariant:format"
    assert all(d.settled == "ack" for d in held)
    assert [n.rule_id for n in rejections(gw, A)] == ["invariant:format"]


def test_junk_with_no_user_id_is_the_lanes_owners(gw, kit):
    d = delivery(parts(kit.seal(A, [B]))[0], None, lane=A)
    gw.handle(d)
    gw.commit_batch(everything=True)
    assert [r["publisher"] for r in leaves(gw)] == [f"lane:{A}"]
    assert [n.rule_id for n in rejections(gw, A)] == ["invariant:publisher-missing"]
    assert d.settled == "ack"


def test_junk_of_several_reasons_is_one_leaf_per_publisher(gw, kit):
    mixed = [
        delivery(os.urandom(20), A),  # format
        delivery(b"", A),  # format
        delivery(parts(kit.seal(B, [P]))[0], A),  # B's part, published by A: publisher
        delivery(os.urandom(20), X),  # another publisher: its own tally
    ]
    for d in mixed:
        gw.handle(d)
    gw.commit_batch(everything=True)
    by_publisher = {r["publisher"]: r for r in leaves(gw)}
    assert set(by_publisher) == {"t-" + A, "t-" + X}
    a = by_publisher["t-" + A]
    assert (a["count"], a["rule_id"]) == (3, "invariant:unverified")
    assert a["reason"] == "3 messages refused before verification: format 2, publisher 1"
    assert by_publisher["t-" + X]["rule_id"] == "invariant:format"  # one reason: its own rule
    assert all(d.settled == "ack" for d in mixed)


def test_an_unroutable_forward_is_recorded_and_dead_lettered(kit, tmp_path):
    gw = make_gateway(kit, tmp_path, MemoryTransport(unroutable={B}))
    try:
        d = delivery(parts(kit.seal(A, [B]))[0], A)
        gw.handle(d)
        gw.commit_batch()
        gw.commit_batch()  # the undeliverable record is staged by the failed confirm
        assert [(r["event"], r["rule_id"]) for r in leaves(gw)] == [
            ("submission", "h41-internal"),
            ("undeliverable", "undeliverable"),
        ]
        assert d.settled == "reject"
    finally:
        gw.close()


def test_a_relayed_notice_goes_once_along_its_edge(gw, kit):
    cpe = kit.seal(P, [B])
    gw.handle(delivery(parts(cpe)[0], P))
    gw.commit_batch()
    raw = kit.notice(B, P, cpe)
    first, again = delivery(raw, B, kind="notice"), delivery(raw, B, kind="notice")
    gw.handle(first)
    gw.commit_batch()
    gw.handle(again)
    gw.commit_batch()
    relayed = [p for p in transport(gw).to(P, "notice") if p.body == raw]
    assert len(relayed) == 1 and (first.settled, again.settled) == ("ack", "ack")


def test_no_decision_on_an_expired_policy_until_a_newer_one_is_installed(kit, tmp_path):
    old = kit.now - dt.timedelta(days=3)
    authority = kit.world.authority
    ca_key = authority.certificate.public_key()
    kit.policy_bytes = sign_policy(POLICY, authority, old, 1)
    kit.policy = Policy.load_signed(kit.policy_bytes, ca_key, old)
    gw = make_gateway(kit, tmp_path)
    try:
        body = parts(kit.seal(A, [B]))[0]
        d = delivery(body, A)
        gw.handle(d)
        gw.commit_batch()
        # Given back to its lane at once (never held unacked), not decided, not refused.
        assert d.settled == "requeue" and leaves(gw) == []
        assert "paused" in " ".join(gw.not_ready())
        newer = POLICY.replace("version = 5", "version = 6")
        gw.config.policy.write_bytes(sign_policy(newer, authority, kit.now, 7))
        gw.commit_batch()
        assert gw.policy.version == 6
        assert not any("paused" in r for r in gw.not_ready())
        again = delivery(body, A)  # the broker delivers it again
        gw.handle(again)
        gw.commit_batch()
        assert again.settled == "ack"
        assert [(r["event"], r["decision"]) for r in leaves(gw)] == [("submission", "accepted")]
        assert [(r["decision"], r["policy_version"]) for r in leaves(gw)] == [("accepted", 6)]
    finally:
        gw.close()


def test_the_gateway_warns_days_before_its_policy_expires_once_a_day(kit, tmp_path, caplog):
    authority = kit.world.authority
    kit.policy_bytes = sign_policy(POLICY, authority, kit.now - dt.timedelta(days=5), 7)
    kit.policy = Policy.load_signed(kit.policy_bytes, authority.certificate.public_key(), kit.now)
    gw = make_gateway(kit, tmp_path)
    caplog.set_level("WARNING", logger="cipherpost")
    try:
        for _ in range(3):
            d = delivery(parts(kit.seal(A, [B]))[0], A)
            gw.handle(d)
            gw.commit_batch()
            assert d.settled == "ack"  # still deciding: two days are left
        warned = [r.msg for r in caplog.records if isinstance(r.msg, dict)
                  and r.msg.get("event") == "gateway_expires_soon"]  # fmt: skip
        assert len(warned) == 1, warned
        assert warned[0]["what"] == "policy" and 40 < warned[0]["hours_left"] <= 48
    finally:
        gw.close()


def test_the_gateways_store_and_state_files_are_private(gw, kit):
    gw.handle(delivery(parts(kit.seal(A, [B]))[0], A))
    gw.commit_batch()
    gw._checkpoint(force=True)
    files = [gw.config.audit_db, *gw.config.state_dir.iterdir()]
    assert any(f.name.startswith("checkpoint-") for f in files)
    for f in files:
        assert f.stat().st_mode & 0o077 == 0, f


def test_the_gateway_says_ready_to_systemd_once_connected(gw, tmp_path, monkeypatch):
    import socket

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert gw.not_ready() == ["not connected to the broker"]
        gw._connected()  # what the consumer calls once it consumes
        assert server.recv(64) == b"READY=1"
        assert gw.ready.is_set()


def test_a_suspension_leaf_outlives_a_failed_audit_commit(gw, monkeypatch):
    """A suspension has no delivery behind it: a requeue cannot bring its record back, so a
    failed commit must keep it for the next one (before, it was dropped)."""
    gw._suspended("cp-x-000.00.00.A01", 2, 40, "junk messages within a second")
    real = gw.audit.commit

    def failing(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(gw.audit, "commit", failing)
    gw.commit_batch()
    assert not any(r["event"] == "suspended" for r in leaves(gw))
    monkeypatch.setattr(gw.audit, "commit", real)
    gw.commit_batch()
    suspended = [r for r in leaves(gw) if r["event"] == "suspended"]
    assert len(suspended) == 1 and suspended[0]["publisher"] == "cp-x-000.00.00.A01"
    gw.commit_batch()
    assert len([r for r in leaves(gw) if r["event"] == "suspended"]) == 1  # written once


def test_a_suspension_leaf_that_may_itself_break_commits_is_not_kept(gw, monkeypatch, caplog):
    """Only a failing store (OSError, SQLite's operational errors) keeps it: after any other
    error the record might be the cause, and kept it would fail every commit after."""
    gw._suspended("cp-x-000.00.00.A02", 0, 40, "junk messages within a second")
    real = gw.audit.commit

    def failing(*args, **kwargs):
        raise ValueError("a record the store cannot take")

    monkeypatch.setattr(gw.audit, "commit", failing)
    gw.commit_batch()
    monkeypatch.setattr(gw.audit, "commit", real)
    gw.commit_batch()
    assert not any(r["event"] == "suspended" for r in leaves(gw))
    assert "gateway_record_lost" in caplog.text
