"""Attacks by an enrolled agency on the gateway (THREATS.md A1/A2), on the real RabbitMQ.

Each test plays an agency that holds its own keys and broker login and uses
the project's own ``envelopes`` code with ids and fields of its choosing. Each
was a working attack before the gateway bound its decisions to the exact
signed header and recorded only verified facts (issue 9); each must now fail,
leave a refusal leaf with the right rule id, and attribute nothing to a party
that did not sign it.

Negative checks ("nothing reached X") synchronise on a marker: a document the
policy allows, sent after the attack through the same submit lane. The
gateway decides one lane in order, so once the marker is in X's inbox,
anything the attack could have delivered would be there before it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import sqlite3
import subprocess
import sys

import msgpack
import pika
import pytest

import envelopes
from broker.connection import BrokerError, connect_blocking
from broker.topology import DEAD_QUEUE
from envelopes import _crypto
from envelopes.frames import encode_header_frame, encode_segment_frame
from envelopes.header import MAGIC, Header
from envelopes.notices import CONTEXT as NOTICE_CONTEXT
from envelopes.notices import KIND_REJECTION, KIND_STATUS, sign_notice
from envelopes.notices import MAGIC as NOTICE_MAGIC
from gateway.audit import AuditStore, Entry, Record
from keys.codes import AgencyCode
from keys.errors import Refused
from keys.levels import Level, Urgency
from tests.exchange import (
    BASIC,
    MAT_ONLY,
    OTHER_PROVINCE,
    PROVINCE,
    A,
    B,
    broker_config,
    make_world,
    parts_of,
    queue_depth,
    submit,
    wait_for,
)
from tests.sync import consume_until, receive_until
from tests.vectors.generate import _edit_header, _frames, _resign

X = MAT_ONLY  # a co-recipient (cleared for Mật)
SEG = 1024
POLICY = """
[policy]
name = "attacks"
version = 3

[[rule]]
id = "no-tuyet-mat-online"
action = "deny"
reason = "Tuyệt mật never travels over this network"
level_min = "tuyet-mat"

[[rule]]
id = "h41-internal"
action = "allow"
reason = "exchanges inside province H41"
sender = "*.H41"
recipients = "*.H41"

[[rule]]
id = "h41-to-h42-unclassified"
action = "allow"
reason = "unclassified documents to province H42 (the markers of these tests)"
sender = "*.H41"
recipients = "*.H42"
level_max = "thuong"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("attacks"), BASIC, policy_text=POLICY)
    w.start_gateway()
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def keys(world):
    out = {}
    for code in (PROVINCE, A, B, X):
        with world.client(code) as c:
            out[code] = c.keys
            out["directory"] = c.directory
    return out


def seal(keys, sender, to, doc=b"x" * 300, *, level=Level.MAT, envelope_id=None) -> bytes:
    out = io.BytesIO()
    envelopes.seal(
        io.BytesIO(doc),
        out,
        keys=keys[sender],
        directory=keys["directory"],
        to=[AgencyCode.parse(c) for c in to],
        level=level,
        size=len(doc),
        segment_size=SEG,
        envelope_id=envelope_id,
    )
    return out.getvalue()


def header_of(cpe: bytes) -> Header:
    return Header.parse(_frames(cpe)[0][0])


def records(world):
    return world.gateways[0][0].audit_records()


def leaves_for(world, predicate, timeout=30.0, what="a matching audit record"):
    assert wait_for(lambda: any(predicate(r) for r in records(world)), timeout), what
    return [r for r in records(world) if predicate(r)]


def marker(world, sender: str, to: str) -> str:
    """An allowed, unclassified document from ``sender`` (its own lane) to ``to``."""
    path = world.root / f"marker-{os.urandom(4).hex()}.txt"
    path.write_bytes(b"marker\n")
    with world.client(sender) as c:
        return c.send(path, to=[AgencyCode.parse(to)], level=Level.THUONG)


def only_marker_arrives(world, sender: str, to: str) -> None:
    eid = marker(world, sender, to)
    with world.client(to) as r:
        got = receive_until(r, {eid})
    assert [d.envelope_id for d in got] == [eid], "something besides the marker arrived"


def sign_raw_notice(keys, *, kind, envelope_id, header_hash, signer, addressee, status, note=""):
    """A notice signed by an agency's own key, built by hand (no client-side limits)."""
    body = msgpack.packb(
        [
            kind,
            envelope_id,
            header_hash,
            signer,
            addressee,
            status,
            "",
            "",
            int(dt.datetime.now(dt.UTC).timestamp()),
            note,
        ],
        use_bin_type=True,
    )
    sig = _crypto.sign(keys.signing_key, NOTICE_CONTEXT, body)
    return msgpack.packb([NOTICE_MAGIC, body, sig], use_bin_type=True)


# --- 1. one decision per exact header -------------------------------------------------------


@pytest.mark.parametrize("sent", [0, 1], ids=["first-part-only", "second-part-only"])
def test_a_reused_envelope_id_cannot_carry_a_forbidden_envelope(world, keys, sent):
    """Attack 1 as the issue tells it: only one part of E1 goes out (on the old gateway,
    with only the second part sent, E2 reached H42 with no audit record at all)."""
    eid = os.urandom(16)
    e1 = seal(keys, A, [B], b"allowed inside H41" * 100, envelope_id=eid)  # 2 segments
    submit(world, A, parts_of(e1)[sent])  # accepted for B; the other part is never sent
    leaves_for(
        world,
        lambda r: r["envelope_id"] == eid.hex() and r["decision"] == "accepted",
        what="E1 accepted",
    )
    # Same id, another header: Tối mật to another province, which no rule allows.
    e2 = seal(keys, A, [OTHER_PROVINCE], b"forbidden", level=Level.TOI_MAT, envelope_id=eid)
    submit(world, A, e2)
    h2 = header_of(e2)
    refused = leaves_for(
        world,
        lambda r: r["digest"] == h2.hash.hex() and r["decision"] == "refused",
        what="a refusal leaf for the second header under the same id",
    )
    assert [r["rule_id"] for r in refused] == ["invariant:id-reuse"]
    assert refused[0]["sender"] == A  # verified: A signed it and A published it
    only_marker_arrives(world, A, OTHER_PROVINCE)
    decisions = [r for r in records(world) if r["envelope_id"] == eid.hex()]
    assert [(r["decision"], r["rule_id"]) for r in decisions] == [
        ("accepted", "h41-internal"),
        ("refused", "invariant:id-reuse"),
    ]


def test_a_co_recipient_cannot_hijack_a_multi_part_envelope(world, keys):
    doc = bytes(range(256)) * 7  # 2 segments of 1 KiB
    genuine = seal(keys, A, [B, X], doc)
    first, second = parts_of(genuine)
    eid = header_of(genuine).envelope_id
    submit(world, A, first)
    leaves_for(world, lambda r: r["envelope_id"] == eid.hex() and r["decision"] == "accepted")
    # X read the id from part 0 in its inbox and seals its own "part 1" under it.
    forged = seal(keys, X, [B], b"X's words in A's envelope" * 60, envelope_id=eid)
    _, forged_second = parts_of(forged)
    submit(world, X, forged_second)
    refused = leaves_for(
        world,
        lambda r: r["digest"] == header_of(forged).hash.hex(),
        what="X's part refused",
    )
    assert [(r["rule_id"], r["sender"]) for r in refused] == [("invariant:id-reuse", X)]
    submit(world, A, second)  # the genuine part 1 still goes through
    for code in (B, X):
        with world.client(code) as r:
            got = receive_until(r, {eid.hex()})
            assert got[0].path.read_bytes() == doc
    by_a = [r for r in records(world) if r["sender"] == A and r["envelope_id"] == eid.hex()]
    assert [(r["event"], r["decision"], r["rule_id"]) for r in by_a] == [
        ("submission", "accepted", "h41-internal"),  # the decision, with part 0
        ("part", "accepted", "part"),  # part 1, recorded before it was forwarded
    ]


# --- 2. recorded facts are verified facts ---------------------------------------------------


def test_unverified_bytes_are_never_attributed_to_the_party_they_name(world, keys):
    genuine = seal(keys, B, [PROVINCE], b"B's real document")
    eid = header_of(genuine).envelope_id.hex()
    submit(world, B, genuine)
    with world.client(PROVINCE) as p:
        receive_until(p, {eid})
    (h_raw, _), segs = _frames(genuine)
    entry = list(msgpack.unpackb(h_raw)[11][0])
    entry[0] = OTHER_PROVINCE
    forged_header = _edit_header(h_raw, label=["toi-mat", []], recipients=[entry])
    forged = encode_header_frame(forged_header, b"\0" * 64) + encode_segment_frame(
        segs[0].index, segs[0].final, segs[0].ciphertext, segs[0].signature
    )
    for _ in range(3):
        submit(world, A, forged)  # A's own login, B's name and B's envelope id in the bytes
    submit(world, A, forged + b"\0", user_id=None)  # and once with no user_id at all
    digests = {hashlib.sha256(forged).hexdigest(), hashlib.sha256(forged + b"\0").hexdigest()}

    def junk(r):
        return r["event"] == "unverified" and r["publisher"] in (world.login(A), f"lane:{A}")

    leaves_for(world, lambda r: junk(r) and r["count"] >= 1, what="the forged parts recorded")
    assert wait_for(lambda: sum(r["count"] for r in records(world) if junk(r)) >= 4, 30)
    for r in records(world):
        if junk(r):
            assert (r["sender"], r["recipients"], r["level"], r["envelope_id"]) == ("", [], "", "")
            assert B not in r["reason"] and OTHER_PROVINCE not in r["reason"]
    refused_b = [r for r in records(world) if r["sender"] == B and r["decision"] != "accepted"]
    assert refused_b == []
    about_eid = [(r["event"], r["decision"]) for r in records(world) if r["envelope_id"] == eid]
    assert ("submission", "accepted") in about_eid
    assert {d for _, d in about_eid} == {"accepted"}, about_eid
    assert not [r for r in records(world) if r["digest"] in digests and r["sender"]]
    # B is told nothing about an envelope of its own that someone else forged.
    only_marker_arrives(world, PROVINCE, B)
    with world.client(B) as b:
        assert b.status(eid)["gateway"] == []


# --- 3. rule ids come from typed reasons ----------------------------------------------------


def test_recipient_key_not_certified_has_its_own_rule_id(world, keys):
    env = seal(keys, A, [B], b"to B under another key")
    (h_raw, _), segs = _frames(env)
    entry = list(msgpack.unpackb(h_raw)[11][0])
    entry[1] = os.urandom(len(entry[1]))
    body = _resign(keys[A], _edit_header(h_raw, recipients=[entry]), segs)
    submit(world, A, body)
    got = leaves_for(world, lambda r: r["digest"] == header_of(body).hash.hex())
    assert [r["rule_id"] for r in got] == ["invariant:recipient-key"]


def test_an_agency_cannot_issue_a_rejection_notice(world, keys):
    notice = sign_notice(
        keys[A].signing_key,
        kind=KIND_REJECTION,
        envelope_id=os.urandom(16),
        header_hash=os.urandom(32),
        signer=AgencyCode.parse(A),
        addressee=AgencyCode.parse(B),
        status="refused",
        now=dt.datetime.now(dt.UTC),
        rule_id="h41-internal",
        reason="your envelope was refused (it was not)",
    )
    submit(world, A, notice.raw, kind="notice")
    got = leaves_for(world, lambda r: r["digest"] == hashlib.sha256(notice.raw).hexdigest())
    assert [(r["event"], r["rule_id"]) for r in got] == [
        ("notice-refused", "invariant:notice-kind")
    ]
    only_marker_arrives(world, A, B)


# --- 4. notices travel only along accepted edges --------------------------------------------


def test_notices_are_relayed_only_along_an_accepted_edge(world, keys):
    doc = seal(keys, PROVINCE, [B], b"for B only")
    h = header_of(doc)
    eid = h.envelope_id.hex()
    submit(world, PROVINCE, doc)
    with world.client(B) as b:
        receive_until(b, {eid})
    forged = {
        # A never received it, yet says "06 completed" to its sender.
        "outsider": sign_raw_notice(
            keys[A],
            kind=KIND_STATUS,
            envelope_id=h.envelope_id,
            header_hash=h.hash,
            signer=A,
            addressee=PROVINCE,
            status="06",
        ),
        # A, about an envelope that never existed, to a province no rule lets it reach.
        "no-envelope": sign_raw_notice(
            keys[A],
            kind=KIND_STATUS,
            envelope_id=os.urandom(16),
            header_hash=os.urandom(32),
            signer=A,
            addressee=OTHER_PROVINCE,
            status="06",
        ),
        # B did receive it, but tells someone other than its sender.
        "wrong-addressee": sign_raw_notice(
            keys[B],
            kind=KIND_STATUS,
            envelope_id=h.envelope_id,
            header_hash=h.hash,
            signer=B,
            addressee=A,
            status="03",
        ),
        # B, to the right sender, about another header under the same id.
        "other-header": sign_raw_notice(
            keys[B],
            kind=KIND_STATUS,
            envelope_id=h.envelope_id,
            header_hash=os.urandom(32),
            signer=B,
            addressee=PROVINCE,
            status="03",
        ),
    }
    for name, raw in forged.items():
        submit(world, B if name in ("wrong-addressee", "other-header") else A, raw, kind="notice")
    for name, raw in forged.items():
        got = leaves_for(
            world, lambda r, raw=raw: r["digest"] == hashlib.sha256(raw).hexdigest(), what=name
        )
        assert [(r["decision"], r["rule_id"]) for r in got] == [
            ("refused", "invariant:notice-edge")
        ], name
    # Bounded free text: a 1,000-character note is refused before anything is relayed.
    long_note = sign_raw_notice(
        keys[B],
        kind=KIND_STATUS,
        envelope_id=h.envelope_id,
        header_hash=h.hash,
        signer=B,
        addressee=PROVINCE,
        status="05",
        note="x" * 1000,
    )
    submit(world, B, long_note, kind="notice")
    # The legitimate status along the edge goes through.
    with world.client(B) as b:
        b.reply_status(eid, "03", "accepted")
    with world.client(PROVINCE) as p:
        consume_until(
            p,
            lambda: any(s["status"] == "03" for s in p.state.statuses(eid)),
            what="B's 03 status at the province",
        )
        statuses = p.state.statuses(eid)
    assert {s["signer"] for s in statuses} == {B}  # its receipt and its status, nothing else
    assert [s["status"] for s in statuses if s["kind"] == "status"] == ["03"]
    with world.client(A) as a:
        receive_until(a, {marker(world, PROVINCE, A)})
        assert a.state.statuses(eid) == []


# --- 5. bounded, escaped reasons ------------------------------------------------------------


def test_a_200_kb_header_gives_one_bounded_leaf_and_no_internal_error(world, keys):
    before = len(records(world))
    huge = msgpack.packb([MAGIC, "V" * 200_000], use_bin_type=True)
    seg = _frames(seal(keys, A, [B]))[1][0]
    body = encode_header_frame(huge, b"\0" * 64) + encode_segment_frame(
        seg.index, seg.final, seg.ciphertext, seg.signature
    )
    assert len(body) > 200_000
    submit(world, A, body)
    got = leaves_for(
        world,
        lambda r: r["publisher"] == world.login(A) and r["rule_id"] == "invariant:version",
        what="the 200 KB header refused",
    )
    new = records(world)[before:]
    assert len([r for r in new if r["publisher"] == world.login(A)]) == 1
    assert len(got[0]["reason"]) <= 200
    assert "VVVVVVVVVV" not in got[0]["reason"]
    gw = world.gateways[0][0]
    assert gw.counters["internal_error"] == 0
    assert queue_depth(world, DEAD_QUEUE) == 0
    store = AuditStore(gw.config.audit_db, readonly=True)
    try:
        assert all(len(store.leaf("gw1", i)) < 2048 for i in range(store.size("gw1")))
    finally:
        store.close()
    # The publisher (and only it) is told, with the reason's fixed text.
    with world.client(A) as a:
        consume_until(
            a,
            lambda: any(
                s["rule_id"] == "invariant:version"
                for s in a.state._exec("SELECT rule_id FROM statuses WHERE kind='rejection'")
                for s in [{"rule_id": s[0]}]
            ),
            what="A's rejection notice",
        )


# --- 6. fair under flood, bounded audit growth ----------------------------------------------


def test_a_flooding_agency_is_limited_by_the_broker(world):
    config = broker_config(world, A)
    limits = world.mgmt.get(f"/api/user-limits/{world.mgmt.q(world.login(A))}")
    values = {k: v for item in limits for k, v in item["value"].items()}
    assert 0 < values["max-connections"] <= 16 and 0 < values["max-channels"] <= 64
    connections = []
    try:
        with pytest.raises(BrokerError):
            for _ in range(values["max-connections"] + 1):
                connections.append(connect_blocking(config))
    finally:
        for c in connections:
            c.close()
    queue = world.mgmt.get(
        f"/api/queues/{world.mgmt.q(world.vhost)}/{world.mgmt.q('cp.submit.' + A)}"
    )
    assert queue["arguments"]["x-overflow"] == "reject-publish"
    assert queue["arguments"]["x-max-length"] > 0 and queue["arguments"]["x-max-length-bytes"] > 0


def test_junk_flood_costs_bounded_audit_bytes_and_does_not_stop_others(world, keys):
    gw = world.gateways[0][0]

    def junk_leaves():
        return [
            r
            for r in records(world)
            if r["event"] == "unverified" and r["publisher"] == world.login(A)
        ]

    before = {r["leaf_index"] for r in junk_leaves()}
    conn = pika.BlockingConnection(broker_config(world, A).parameters())
    try:
        ch = conn.channel()
        for i in range(1000):
            ch.basic_publish(
                "cp.submit",
                A,
                i.to_bytes(4, "big"),
                pika.BasicProperties(type="part", user_id=world.login(A)),
            )
    finally:
        conn.close()
    doc = seal(keys, PROVINCE, [B], b"an urgent document during the flood")
    submit(world, PROVINCE, doc)
    with world.client(B) as b:  # another lane: not behind A's junk
        receive_until(b, {header_of(doc).envelope_id.hex()})
    assert wait_for(
        lambda: sum(r["count"] for r in junk_leaves() if r["leaf_index"] not in before) >= 1000,
        120,
    )
    new = [r for r in junk_leaves() if r["leaf_index"] not in before]
    assert len(new) <= 1000 // gw.config.prefetch + 4  # one leaf per tally, not per message
    store = AuditStore(gw.config.audit_db, readonly=True)
    try:
        leaf_bytes = sum(len(store.leaf("gw1", r["leaf_index"])) for r in new)
    finally:
        store.close()
    assert leaf_bytes <= 10 * 1024  # per 1,000 junk messages
    assert gw.counters["internal_error"] == 0
    assert world.gateways[0][1].is_alive()


# --- 7. versions never go back --------------------------------------------------------------


def test_the_gateway_refuses_an_older_policy_and_records_the_version(world, tmp_path):
    from gateway.config import GatewayConfig
    from gateway.policy import sign_policy
    from gateway.service import load
    from keys import ca as ca_mod

    authority = ca_mod.open_ca(world.ca_dir, b"throwaway-world-passphrase")
    accepted = [r for r in records(world) if r["event"] == "submission"]
    assert accepted and all(r["policy_version"] == 3 for r in accepted)
    assert all(r["directory_version"] >= 1 for r in accepted)
    older = POLICY.replace("version = 3", "version = 2")
    config = GatewayConfig.load(world.gateway_config("gw1"))
    saved = config.policy.read_bytes()
    try:
        config.policy.write_bytes(
            sign_policy(older, authority, dt.datetime.now(dt.UTC), valid_days=7)
        )
        with pytest.raises(Refused, match=r"policy version 2 is older than version 3"):
            load(config, b"throwaway-world-passphrase")
    finally:
        config.policy.write_bytes(saved)


# --- 8. audit verify reports what it cannot vouch for ---------------------------------------


def test_audit_verify_does_not_vouch_for_an_unwitnessed_forged_record(world, tmp_path):
    witness = tmp_path / "witness"
    creds = world.root / "broker-credentials" / f"{world.prefix}cp-witness.broker.json"
    gw = world.gateways[0][0]

    def cipherpost(*args):
        env = dict(os.environ, CIPHERPOST_PASSPHRASE="throwaway-world-passphrase")
        return subprocess.run(
            [sys.executable, "-m", "agents.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    # Whatever the gateway signed so far is witnessed and verifies.
    gw._checkpoint(force=True)
    out = cipherpost(
        "audit", "witness", "--store", witness, "--ca", world.ca_dir / "ca.crt",
        "--broker", creds, "--key", world.witness_key, "--idle", "3",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    copy = tmp_path / "audit-copy.db"
    store = AuditStore(gw.config.audit_db, readonly=True)
    try:
        store.copy_to(copy)
    finally:
        store.close()
    ok = cipherpost("audit", "verify", "--db", copy, "--checkpoints", witness)
    assert ok.returncode in (0, 4), ok.stdout + ok.stderr
    # The gateway operator appends an "accepted Tối mật" record no checkpoint covers,
    # with its decision row, as the gateway itself would have.
    forged_eid = os.urandom(16).hex()
    forged = AuditStore(copy, log_id="gw1")
    try:
        forged.commit(
            [
                Entry(
                    Record(
                        time=dt.datetime.now(dt.UTC),
                        event="submission",
                        envelope_id=forged_eid,
                        sender=A,
                        recipients=(OTHER_PROVINCE,),
                        level=Level.TOI_MAT.value,
                        urgency=Urgency.HOA_TOC.value,
                        size=1,
                        digest="00" * 32,
                        decision="accepted",
                        rule_id="h41-internal",
                        reason="forged",
                        gateway_id="gw1",
                        part=0,
                        message_digest="11" * 32,
                    ),
                    decides=(forged_eid, "00" * 32),
                    part=(forged_eid, "00" * 32, 0, "11" * 32),
                )
            ]
        )
    finally:
        forged.close()
    bad = cipherpost("audit", "verify", "--db", copy, "--checkpoints", witness)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "UNWITNESSED" in bad.stdout and "not covered by any witnessed checkpoint" in bad.stderr
    assert "OK" not in bad.stdout
    # Edits to the state the gateway forwards and refuses replays by: reported as tampering.
    db = sqlite3.connect(copy)
    try:
        db.execute("DELETE FROM decisions WHERE envelope_id=?", (forged_eid,))
        db.execute("INSERT INTO confirmed VALUES (?, ?, 0)", ("ab" * 16, "cd" * 32))
        db.commit()
    finally:
        db.close()
    edited = cipherpost("audit", "verify", "--db", copy, "--checkpoints", witness)
    assert edited.returncode == 3, edited.stdout + edited.stderr
    assert f"leaf of decision {forged_eid}/{'00' * 32}"[:90] in edited.stdout
    assert f"part 0 of envelope {'ab' * 16} confirmed, never accepted" in edited.stdout
