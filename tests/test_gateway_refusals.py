"""The gateway refuses, audits and notifies; bad input never stops it (real RabbitMQ)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import os

import msgpack
import pytest

import envelopes
from envelopes.frames import encode_header_frame, encode_segment_frame
from envelopes.header import MAGIC
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import (
    PROVINCE,
    A,
    B,
    make_world,
    submit,
    wait_for,
)
from tests.sync import consume_until, receive_until
from tests.vectors.generate import _edit_header, _frames, _resign

SEG = 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("refusals"))
    w.start_gateway()
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def keys(world):
    with world.client(PROVINCE) as p, world.client(A) as a:
        return {PROVINCE: p.keys, A: a.keys, "directory": p.directory}


def seal(keys, sender=PROVINCE, to=(B,), doc=None, **kw) -> bytes:
    doc = doc if doc is not None else bytes(range(256)) * 10
    out = io.BytesIO()
    envelopes.seal(
        io.BytesIO(doc),
        out,
        keys=keys[sender],
        directory=kw.pop("directory", keys["directory"]),
        to=[AgencyCode.parse(c) for c in to],
        level=kw.pop("level", Level.MAT),
        size=len(doc),
        segment_size=SEG,
        **kw,
    )
    return out.getvalue()


def part(header: tuple[bytes, bytes], segment) -> bytes:
    return encode_header_frame(*header) + encode_segment_frame(
        segment.index, segment.final, segment.ciphertext, segment.signature
    )


def records(world):
    return world.gateways[0][0].audit_records()


def refused_for(world, body: bytes, eid: str | None):
    digest = hashlib.sha256(body).hexdigest()

    def find():
        return [
            r
            for r in records(world)
            if r["decision"] == "refused"
            and (r["digest"] == digest or (eid and r["envelope_id"] == eid))
        ]

    assert wait_for(lambda: bool(find()), 20), "the gateway made no refusal record"
    return find()


def _cases(keys):
    good = seal(keys, to=(A, B))
    (h_raw, h_sig), segs = _frames(good)
    other = seal(keys)
    _, other_segs = _frames(other)
    bad_sig = bytes([h_sig[0] ^ 1]) + h_sig[1:]
    forged_seg = dataclasses.replace(
        segs[1], signature=bytes([segs[1].signature[0] ^ 1]) + segs[1].signature[1:]
    )
    relabel = _edit_header(h_raw, label=["thuong", []])
    fewer = _edit_header(
        h_raw,
        recipients=list(msgpack.unpackb(h_raw)[11])[:1],
    )
    v2 = _edit_header(h_raw, version=2)
    v2_resigned = _frames(_resign(keys[PROVINCE], v2, segs))
    expired = _frames(
        seal(
            keys,
            now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3),
            lifetime=dt.timedelta(minutes=1),
        )
    )
    unknown = _frames(_resign(keys[PROVINCE], _edit_header(h_raw, sender="000.88.88.H41"), segs))
    big = msgpack.packb([MAGIC, 1, b"\0" * (300 * 1024)], use_bin_type=True)
    return {
        "bad-header-signature": (part((h_raw, bad_sig), segs[0]), "invariant:signature"),
        "bad-segment-signature": (part((h_raw, h_sig), forged_seg), "invariant:segment-signature"),
        "label-changed": (part((relabel, h_sig), segs[0]), "invariant:signature"),
        "recipients-changed": (part((fewer, h_sig), segs[0]), "invariant:signature"),
        "spliced": (part((h_raw, h_sig), other_segs[1]), "invariant:segment-signature"),
        "expired": (part(expired[0], expired[1][0]), "invariant:expired"),
        "unknown-sender": (part(unknown[0], unknown[1][0]), "invariant:unknown-sender"),
        "version-changed": (part(v2_resigned[0], v2_resigned[1][0]), "invariant:version"),
        "oversized-header": (encode_header_frame(big, b"\0" * 64), "invariant:oversized"),
        "malformed-msgpack": (b"\xc1\x93\xff garbage", "invariant:format"),
        "empty": (b"", "invariant:format"),
        "truncated-segment": (part((h_raw, h_sig), segs[0])[:-200], "invariant:format"),
        "random-bytes": (os.urandom(5000), "invariant:format"),
    }


UNVERIFIED = {
    "bad-header-signature": "invariant:signature",
    "label-changed": "invariant:signature",
    "recipients-changed": "invariant:signature",
    "unknown-sender": "invariant:publisher",  # the province published a header naming another
    "version-changed": "invariant:version",
    "oversized-header": "invariant:oversized",
    "malformed-msgpack": "invariant:format",
    "empty": "invariant:format",
    "truncated-segment": "invariant:format",
    "random-bytes": "invariant:format",
}
VERIFIED = ("bad-segment-signature", "spliced", "expired")


def junk_leaves(world, publisher: str, rule: str, after: int):
    return [
        r
        for r in records(world)
        if r["event"] == "unverified"
        and r["publisher"] == publisher
        and r["rule_id"] == rule
        and r["leaf_index"] >= after
    ]


def rejections(client, rule: str, envelope_id: str | None = None):
    rows = client.state._exec(
        "SELECT envelope_id, rule_id, reason FROM statuses WHERE kind='rejection' AND rule_id=?",
        (rule,),
    )
    return [r for r in rows if envelope_id is None or r[0] == envelope_id]


def nothing_reaches_b(world, keys):
    """A document the policy allows, from the same lane, arrives and nothing before it."""
    marker = seal(keys, doc=b"marker after the refusal")
    eid = envelopes.header.Header.parse(_frames(marker)[0][0]).envelope_id.hex()
    submit(world, PROVINCE, marker)
    with world.client(B) as b:
        assert [d.envelope_id for d in receive_until(b, {eid})] == [eid]


@pytest.mark.parametrize("name", sorted(UNVERIFIED))
def test_unverified_submission_is_refused_as_junk_of_its_publisher(world, keys, name):
    """Before any signature holds, the record names only the publisher, size and digest."""
    body, _ = _cases(keys)[name]
    rule = UNVERIFIED[name]
    after = len(records(world))
    login = world.login(PROVINCE)
    submit(world, PROVINCE, body)
    assert wait_for(lambda: bool(junk_leaves(world, login, rule, after)), 30), name
    for r in junk_leaves(world, login, rule, after):
        assert (r["sender"], r["recipients"], r["level"], r["envelope_id"]) == ("", [], "", "")
        assert r["count"] >= 1 and r["decision"] == "refused"
    with world.client(PROVINCE) as province:
        consume_until(
            province,
            lambda: bool(rejections(province, rule, "00" * 16)),
            what=f"the province's rejection notice for {name}",
        )
    nothing_reaches_b(world, keys)
    assert world.gateways[0][1].is_alive()


@pytest.mark.parametrize("name", VERIFIED)
def test_verified_refusal_names_its_rule_and_is_notified_once(world, keys, name):
    body, rule = _cases(keys)[name]
    submit(world, PROVINCE, body)
    h = envelopes.parts.parse_part(body).header
    found = refused_for(world, body, h.envelope_id.hex())
    assert [(r["rule_id"], r["sender"], r["digest"]) for r in found] == [
        (rule, PROVINCE, h.hash.hex())
    ]
    with world.client(PROVINCE) as province:
        consume_until(
            province,
            lambda: bool(rejections(province, rule, h.envelope_id.hex())),
            what=f"the rejection notice for {name}",
        )
        nothing_reaches_b(world, keys)
        province.receive(follow=False, idle=0.1)  # anything else already queued for it
        assert len(rejections(province, rule, h.envelope_id.hex())) == 1  # one per refusal


def test_a_copy_from_the_signer_is_a_duplicate_and_from_anyone_else_junk(world, keys):
    env = seal(keys, doc=b"replay me")
    eid_hex = envelopes.header.Header.parse(_frames(env)[0][0]).envelope_id.hex()
    submit(world, PROVINCE, env)
    with world.client(B) as b:
        assert [g.envelope_id for g in receive_until(b, {eid_hex})] == [eid_hex]
    gw = world.gateways[0][0]
    duplicates = gw.counters["duplicate"]
    submit(world, PROVINCE, env)  # the signer's own republish: harmless
    assert wait_for(lambda: gw.counters["duplicate"] > duplicates, 20)
    after = len(records(world))
    submit(world, A, env)  # A captured it (say as a co-recipient) and publishes it again
    assert wait_for(
        lambda: bool(junk_leaves(world, world.login(A), "invariant:publisher", after)), 20
    )
    nothing_reaches_b(world, keys)
    events = [(r["event"], r["decision"]) for r in records(world) if r["envelope_id"] == eid_hex]
    assert events.count(("submission", "accepted")) == 1
    assert all(d == "accepted" for _, d in events), events


def test_missing_user_id_is_junk_of_the_lanes_owner(world, keys):
    env = seal(keys, doc=b"no user id")
    after = len(records(world))
    submit(world, PROVINCE, env, user_id=None)
    lane = f"lane:{PROVINCE}"  # no user_id: the lane still names its owner
    assert wait_for(lambda: bool(junk_leaves(world, lane, "invariant:publisher-missing", after)))


def test_stripped_envelope_passes_the_gateway_but_not_the_recipient(world, keys):
    env = seal(keys, doc=b"original from the province")
    (h_raw, _), segs = _frames(env)
    stripped = _edit_header(h_raw, sender=A, sender_kid=keys[A].sign_key_id)
    body = _resign(keys[A], stripped, segs)
    # one segment: the part is the whole .cpe
    submit(world, A, body)
    eid = envelopes.header.Header.parse(stripped).envelope_id.hex()
    assert wait_for(lambda: any(r["envelope_id"] == eid for r in records(world)), 20)
    with world.client(B) as b:
        consume_until(
            b,
            lambda: (b.state.received(eid) or {}).get("outcome") == "refused",
            what="B refuses the stripped envelope at open",
        )
        assert b.received == []  # payload key does not open: nothing in the inbox
        assert not [p for p in b.config.inbox.iterdir() if p.name.startswith(eid[:12])]


def test_garbage_notice_does_not_stop_the_gateway(world):
    after = len(records(world))
    submit(world, A, b"\x00\x01 not a notice", kind="notice")
    assert wait_for(lambda: bool(junk_leaves(world, world.login(A), "invariant:format", after)))
    assert world.gateways[0][1].is_alive()


def test_junk_with_a_real_envelope_id_cannot_block_it(world, keys):
    """A forged header carrying a genuine envelope's id is refused; the genuine one still goes."""
    env = seal(keys, doc=b"the real one")
    (h_raw, h_sig), segs = _frames(env)
    eid = envelopes.header.Header.parse(h_raw).envelope_id.hex()
    forged = part((h_raw, bytes([h_sig[0] ^ 1]) + h_sig[1:]), segs[0])
    after = len(records(world))
    submit(world, A, forged)  # A front-runs with a bad signature and the same id
    assert wait_for(
        lambda: bool(junk_leaves(world, world.login(A), "invariant:publisher", after)), 20
    )
    submit(world, PROVINCE, forged)  # and the province's own login with a broken signature
    assert wait_for(
        lambda: bool(junk_leaves(world, world.login(PROVINCE), "invariant:signature", after)), 20
    )
    submit(world, PROVINCE, env)
    with world.client(B) as b:
        assert [g.envelope_id for g in receive_until(b, {eid})] == [eid]
