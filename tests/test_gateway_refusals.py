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
from tests.exchange import PROVINCE, A, B, make_world, submit, wait_for
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


@pytest.mark.parametrize(
    "name",
    [
        "bad-header-signature",
        "bad-segment-signature",
        "label-changed",
        "recipients-changed",
        "spliced",
        "expired",
        "unknown-sender",
        "version-changed",
        "oversized-header",
        "malformed-msgpack",
        "empty",
        "truncated-segment",
        "random-bytes",
    ],
)
def test_negative_submission_is_refused_audited_and_notified(world, keys, name):
    body, rule = _cases(keys)[name]
    submit(world, PROVINCE, body)
    try:
        eid = envelopes.parts.parse_part(body).header.envelope_id.hex()
    except envelopes.EnvelopeRefused:
        eid = None
    found = refused_for(world, body, eid)
    assert found[-1]["rule_id"] == rule, found[-1]
    assert found[-1]["sender"] in (PROVINCE, "000.88.88.H41")  # signed sender, or publisher
    with world.client(PROVINCE) as province:
        province.receive(idle=0.8)
        notices = province.state._exec(
            "SELECT rule_id FROM statuses WHERE kind='rejection' AND reason=?",
            (found[-1]["reason"],),
        )
    assert notices, "the sender got no rejection notice"
    with world.client(B) as b:
        assert b.receive(idle=0.3) == []  # nothing reached the recipient
    assert world.gateways[0][1].is_alive()


def test_replay_of_an_accepted_envelope_is_refused(world, keys):
    env = seal(keys, doc=b"replay me")
    submit(world, PROVINCE, env)
    eid = _frames(env)[0][0]
    eid_hex = envelopes.header.Header.parse(eid).envelope_id.hex()
    with world.client(B) as b:
        assert [g.envelope_id for g in b.receive(idle=1.0)] == [eid_hex]
    submit(world, PROVINCE, env)  # an attacker who captured it publishes it again
    assert wait_for(
        lambda: any(r["event"] == "replay" for r in records(world) if r["envelope_id"] == eid_hex),
        20,
    )
    with world.client(B) as b:
        assert b.receive(idle=0.5) == []
    events = [(r["event"], r["decision"]) for r in records(world) if r["envelope_id"] == eid_hex]
    assert events.count(("submission", "accepted")) == 1
    assert ("replay", "refused") in events


def test_signed_by_one_published_by_another_is_refused(world, keys):
    env = seal(keys, doc=b"signed by the province")
    submit(world, A, env)  # A publishes (user_id A), the envelope says PROVINCE
    eid = envelopes.header.Header.parse(_frames(env)[0][0]).envelope_id.hex()
    found = refused_for(world, env, eid)
    assert found[0]["rule_id"] == "invariant:publisher"
    with world.client(B) as b:
        assert b.receive(idle=0.5) == []


def test_missing_user_id_is_refused(world, keys):
    env = seal(keys, doc=b"no user id")
    submit(world, PROVINCE, env, user_id=None)
    eid = envelopes.header.Header.parse(_frames(env)[0][0]).envelope_id.hex()
    assert refused_for(world, env, eid)[0]["rule_id"] == "invariant:publisher"


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
        assert b.receive(idle=1.0) == []  # refused at open: payload key does not open
        assert b.state.received(eid)["outcome"] == "refused"
        assert not [p for p in b.config.inbox.iterdir() if p.name.startswith(eid[:12])]


def test_garbage_notice_does_not_stop_the_gateway(world):
    submit(world, A, b"\x00\x01 not a notice", kind="notice")
    assert refused_for(world, b"\x00\x01 not a notice", None)[0]["event"] == "notice-refused"
    assert world.gateways[0][1].is_alive()


def test_junk_with_a_real_envelope_id_cannot_block_it(world, keys):
    """A forged header carrying a genuine envelope's id is refused; the genuine one still goes."""
    env = seal(keys, doc=b"the real one")
    (h_raw, h_sig), segs = _frames(env)
    eid = envelopes.header.Header.parse(h_raw).envelope_id.hex()
    forged = part((h_raw, bytes([h_sig[0] ^ 1]) + h_sig[1:]), segs[0])
    submit(world, A, forged)  # A front-runs with a bad signature and the same id
    refused_for(world, forged, eid)
    submit(world, PROVINCE, env)
    with world.client(B) as b:
        assert [g.envelope_id for g in b.receive(idle=1.5)] == [eid]
