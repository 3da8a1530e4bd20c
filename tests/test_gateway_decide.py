"""The gateway's decision as a table: message + recorded state + context -> verdict.

Pure and fast (no broker): each row is one check the gateway promises, and the
expected outcome names the verdict and its rule id. The same attacks are also
played end to end against RabbitMQ in ``test_gateway_attacks.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os

import msgpack
import pytest

from envelopes import _crypto
from envelopes.errors import Reason
from envelopes.header import Header
from envelopes.notices import CONTEXT as NOTICE_CONTEXT
from envelopes.notices import MAGIC as NOTICE_MAGIC
from gateway.audit import ACCEPTED, REFUSED
from gateway.decide import (
    Decide,
    Duplicate,
    Forward,
    Incoming,
    Junk,
    Refuse,
    Relay,
    decide,
    id_reuse,
)
from gateway.policy import Policy
from keys import ca
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.levels import Level
from tests.gateway_kit import GATEWAY, OTHER, PREFIX, A, B, FakeState, Kit, P, X, make_kit, parts
from tests.vectors.generate import _edit_header, _frames, _resign


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    return make_kit(tmp_path_factory.mktemp("decide"))


def header(cpe: bytes) -> Header:
    return Header.parse(_frames(cpe)[0][0])


def message(body: bytes, publisher: str | None = A, kind: str = "part", lane: str | None = None):
    login = PREFIX + publisher if publisher else None
    return Incoming(body, kind, login, f"cp.submit.{lane or publisher or A}")


def verdict_of(kit: Kit, body: bytes, publisher: str | None = A, *, state=None, **kw):
    kind = kw.pop("kind", "part")
    lane = kw.pop("lane", None)
    return decide(message(body, publisher, kind, lane), state or FakeState(), kit.context(**kw))


def junk_reason(v) -> Reason:
    assert isinstance(v, Junk), v
    return v.reason


# --- before any signature: junk, attributed to nobody -------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00", os.urandom(64), msgpack.packb([1, 2, 3]), b"\x92\xc4\x01a"],
    ids=["empty", "zero", "random", "not-frames", "short-frame"],
)
def test_malformed_bytes_are_junk(kit, body):
    assert junk_reason(verdict_of(kit, body)) is Reason.FORMAT


def test_no_user_id_is_junk_of_the_lanes_owner(kit):
    # Only the lane's owner may publish into it (a topic permission): it is named and told.
    v = verdict_of(kit, parts(kit.seal(A, [B]))[0], publisher=None, lane=A)
    assert junk_reason(v) is Reason.PUBLISHER_MISSING
    assert v.publisher == f"lane:{A}" and v.notify == AgencyCode.parse(A)


def test_no_user_id_and_no_lane_names_nobody(kit):
    body = parts(kit.seal(A, [B]))[0]
    v = decide(Incoming(body, "part", None, ""), FakeState(), kit.context())
    assert junk_reason(v) is Reason.PUBLISHER_MISSING
    assert v.publisher == "" and v.notify is None


def test_a_login_outside_the_prefix_is_no_publisher(kit):
    body = parts(kit.seal(A, [B]))[0]
    v = decide(Incoming(body, "part", "guest", "cp.submit." + A), FakeState(), kit.context())
    assert junk_reason(v) is Reason.PUBLISHER_MISSING


def test_published_by_another_agency_is_junk_told_to_the_publisher(kit):
    v = verdict_of(kit, parts(kit.seal(A, [B]))[0], publisher=X)
    assert junk_reason(v) is Reason.PUBLISHER
    assert v.notify == AgencyCode.parse(X) and v.publisher == PREFIX + X


def test_through_another_lane_is_junk(kit):
    v = verdict_of(kit, parts(kit.seal(A, [B]))[0], publisher=A, lane=B)
    assert junk_reason(v) is Reason.PUBLISHER


def test_a_forged_header_signature_is_junk(kit):
    (h_raw, sig), segs = _frames(kit.seal(A, [B]))
    from tests.gateway_kit import forged_header_part

    assert junk_reason(verdict_of(kit, forged_header_part(kit.seal(A, [B])))) is Reason.SIGNATURE
    relabelled = forged_header_part(kit.seal(A, [B]), label=["thuong", []])
    assert junk_reason(verdict_of(kit, relabelled)) is Reason.SIGNATURE
    del h_raw, sig, segs


def test_an_unknown_sender_is_junk(kit):
    (h_raw, _), segs = _frames(kit.seal(A, [B]))
    unknown = "000.88.88.H41"
    body = _resign(kit.keys[A], _edit_header(h_raw, sender=unknown), segs)
    assert junk_reason(verdict_of(kit, body, publisher=unknown)) is Reason.SENDER_UNKNOWN


def test_a_key_other_than_the_certified_one_is_junk(kit):
    (h_raw, _), segs = _frames(kit.seal(A, [B]))
    body = _resign(kit.keys[A], _edit_header(h_raw, sender_kid=os.urandom(16)), segs)
    assert junk_reason(verdict_of(kit, body)) is Reason.SENDER_KEY


def test_a_revoked_sender_is_junk(kit, tmp_path):
    cpe = kit.seal(A, [B])
    authority = kit.world.authority
    ca.revoke(authority, AgencyCode.parse(A), "test", kit.now)
    try:
        revoked = Directory.load(
            build_directory(authority, kit.world.certs, kit.now, 30), TrustState(None), now=kit.now
        )
    finally:
        state = authority.load_state()
        state["issued"][A].pop("revoked", None)
        authority.save_state(state)
    v = verdict_of(kit, parts(cpe)[0], directory=revoked)
    assert junk_reason(v) is Reason.SENDER_REVOKED


def test_an_expired_sender_certificate_is_junk(kit):
    cpe = kit.seal(A, [B])
    v = verdict_of(kit, parts(cpe)[0], now=kit.now + dt.timedelta(days=400))
    assert junk_reason(v) is Reason.SENDER_CERTIFICATE


def test_junk_never_raises_even_on_a_200_kb_version_field(kit):
    from envelopes.frames import encode_header_frame
    from envelopes.header import MAGIC

    huge = encode_header_frame(msgpack.packb([MAGIC, "V" * 200_000]), b"\0" * 64) + b"\x94\x00"
    assert junk_reason(verdict_of(kit, huge)) is Reason.FORMAT
    v = verdict_of(kit, encode_header_frame(msgpack.packb([MAGIC, "V" * 200_000]), b"\0" * 64))
    assert junk_reason(v) is Reason.FORMAT  # no segment frame


# --- a new header: invariants, then the policy -------------------------------------------


def test_an_allowed_envelope_is_decided_with_verified_facts_and_versions(kit):
    cpe = kit.seal(A, [B, X], level=Level.MAT)
    v = verdict_of(kit, parts(cpe)[0])
    assert isinstance(v, Decide)
    h = header(cpe)
    r = v.record
    assert v.key == (h.envelope_id.hex(), h.hash.hex())
    assert (r.event, r.decision, r.rule_id) == ("submission", ACCEPTED, "h41-internal")
    assert (r.sender, r.recipients, r.level, r.digest) == (A, (B, X), "mat", h.hash.hex())
    assert (r.publisher, r.policy_version, r.directory_version) == (
        PREFIX + A,
        kit.policy.version,
        kit.directory.version,
    )
    assert v.notify == AgencyCode.parse(A)


@pytest.mark.parametrize(
    ("sender", "to", "level", "rule"),
    [
        (A, [OTHER], Level.MAT, "default-deny"),  # no rule allows H41 -> H42
        (A, [B, OTHER], Level.MAT, "default-deny"),  # every recipient must match, not any
        (A, [B], Level.TOI_MAT, "h41-internal"),
    ],
)
def test_the_policy_decides_by_its_first_matching_rule(kit, sender, to, level, rule):
    v = verdict_of(kit, parts(kit.seal(sender, to, level=level))[0], publisher=sender)
    assert isinstance(v, Decide) and v.record.rule_id == rule
    assert v.record.decision == (ACCEPTED if rule != "default-deny" else REFUSED)


def _resealed(kit: Kit, sender: str, **changes: object) -> bytes:
    (h_raw, _), segs = _frames(kit.seal(sender, [B]))
    return _resign(kit.keys[sender], _edit_header(h_raw, **changes), segs)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: _resealed(k, A, label=["tuyet-mat", []]), Reason.SENDER_CLEARANCE),
        (lambda k: k_seal_to_x_at(k, Level.TOI_MAT), Reason.RECIPIENT_CLEARANCE),
        (lambda k: _recipient(k, code="000.77.77.H41"), Reason.RECIPIENT_UNKNOWN),
        (lambda k: _recipient(k, kid=os.urandom(16)), Reason.RECIPIENT_KEY),
    ],
    ids=["sender-clearance", "recipient-clearance", "unknown-recipient", "recipient-key"],
)
def test_invariants_refuse_a_header_whatever_the_policy(kit, make, reason):
    v = verdict_of(kit, parts(make(kit))[0])
    assert isinstance(v, Decide), v
    assert (v.record.decision, v.record.rule_id) == (REFUSED, reason.rule_id)
    assert v.record.sender == A  # a verified fact: A signed and published it


def k_seal_to_x_at(kit: Kit, level: Level) -> bytes:
    (h_raw, _), segs = _frames(kit.seal(A, [X]))
    return _resign(kit.keys[A], _edit_header(h_raw, label=[level.value, []]), segs)


def _recipient(kit: Kit, *, code: str | None = None, kid: bytes | None = None) -> bytes:
    (h_raw, _), segs = _frames(kit.seal(A, [B]))
    entry = list(msgpack.unpackb(h_raw)[11][0])
    entry[0] = code or entry[0]
    entry[1] = kid or entry[1]
    return _resign(kit.keys[A], _edit_header(h_raw, recipients=[entry]), segs)


def test_an_expired_envelope_is_refused(kit):
    old = kit.now - dt.timedelta(hours=2)
    cpe = kit.seal(A, [B], now=old, lifetime=dt.timedelta(hours=1))
    v = verdict_of(kit, parts(cpe)[0])
    assert isinstance(v, Decide) and v.record.rule_id == Reason.EXPIRED.rule_id


def test_an_envelope_dated_in_the_future_is_refused(kit):
    cpe = kit.seal(A, [B], now=kit.now + dt.timedelta(hours=1))
    v = verdict_of(kit, parts(cpe)[0])
    assert isinstance(v, Decide) and v.record.rule_id == Reason.CLOCK.rule_id


def test_a_retired_recipient_is_refused_naming_its_successor(kit):
    retired = dataclasses.replace(
        kit.directory,
        retired={B: X},
        retired_from={B: kit.now - dt.timedelta(days=1)},
    )
    cpe = kit.seal(A, [B])
    v = verdict_of(kit, parts(cpe)[0], directory=retired)
    assert isinstance(v, Decide) and v.record.rule_id == Reason.RETIRED.rule_id
    assert v.record.reason == f"recipient {B} is retired (merged into {X}): send to {X}"
    # It decides its exact header, with its part, and is told to the verified publisher.
    assert v.key == (header(cpe).envelope_id.hex(), header(cpe).hash.hex())
    assert v.part.segment.index == 0 and v.digest == hashlib.sha256(parts(cpe)[0]).hexdigest()
    assert v.notify == AgencyCode.parse(A)


def test_a_bad_segment_refuses_the_part_and_decides_nothing(kit):
    (h_raw, h_sig), segs = _frames(kit.seal(A, [B]))
    from envelopes.frames import encode_header_frame, encode_segment_frame

    s = segs[0]
    forged = dataclasses.replace(s, signature=bytes([s.signature[0] ^ 1]) + s.signature[1:])
    body = encode_header_frame(h_raw, h_sig) + encode_segment_frame(
        forged.index, forged.final, forged.ciphertext, forged.signature
    )
    v = verdict_of(kit, body)
    assert isinstance(v, Refuse)
    assert (v.record.event, v.record.rule_id) == ("part-refused", "invariant:segment-signature")
    assert v.record.reason == "bad signature on segment 0"
    assert v.notify == AgencyCode.parse(A) and v.header == Header.parse(h_raw)
    short = encode_header_frame(h_raw, h_sig) + encode_segment_frame(
        s.index, s.final, s.ciphertext[:-1], s.signature
    )
    v = verdict_of(kit, short)
    assert isinstance(v, Refuse) and v.record.rule_id == "invariant:segment"


# --- a header already decided: bound to its exact bytes -----------------------------------


def test_another_header_under_a_decided_id_is_id_reuse(kit):
    eid = os.urandom(16)
    state = FakeState()
    state.accept(kit.seal(A, [B], envelope_id=eid))
    second = kit.seal(A, [OTHER], level=Level.TOI_MAT, envelope_id=eid)
    v = verdict_of(kit, parts(second)[0], state=state)
    assert isinstance(v, Decide)
    assert (v.record.decision, v.record.rule_id) == (REFUSED, "invariant:id-reuse")
    assert v.record.digest == header(second).hash.hex()
    assert v.record.sender == A and v.record.recipients == (OTHER,)  # A signed it: verified
    # It decides its own exact header (so a copy of it is that refusal again, not a new one).
    assert v.key == (eid.hex(), header(second).hash.hex()) and v.part.segment.index == 0
    assert v.digest == hashlib.sha256(parts(second)[0]).hexdigest()
    assert v.notify == AgencyCode.parse(A)  # told to the agency that published it


def test_id_reuse_keeps_the_verified_facts_and_changes_only_the_decision(kit):
    v = verdict_of(kit, parts(kit.seal(A, [B]))[0])
    assert isinstance(v, Decide)
    r = id_reuse(v.record)
    assert (r.decision, r.rule_id, r.reason) == (
        REFUSED,
        "invariant:id-reuse",
        Reason.ID_REUSE.text,
    )
    assert (r.sender, r.recipients, r.digest) == (
        v.record.sender,
        v.record.recipients,
        v.record.digest,
    )


def test_parts_of_a_refused_header_are_acked_without_a_second_record(kit):
    cpe = kit.seal(A, [B], b"y" * 1500)
    state = FakeState()
    state.accept(cpe, REFUSED)
    assert verdict_of(kit, parts(cpe)[1], state=state) == Duplicate(
        "part of a refused envelope", AgencyCode.parse(A)
    )


def test_later_parts_of_an_accepted_header_are_forwarded_once(kit):
    cpe = kit.seal(A, [B], b"y" * 1500)
    first, second = parts(cpe)
    state = FakeState()
    h = state.accept(cpe)
    v = verdict_of(kit, second, state=state)
    assert isinstance(v, Forward) and v.digest == hashlib.sha256(second).hexdigest()
    assert v.record is not None and v.record.event == "part" and v.to == (B,)
    key = (h.envelope_id.hex(), h.hash.hex(), 1)
    state.forwards[key] = v.digest  # recorded, forward not confirmed: forwarded again
    again = verdict_of(kit, second, state=state)
    assert isinstance(again, Forward) and again.record is None
    state.confirmed_parts.add(key)  # confirmed: a copy now is a duplicate
    assert isinstance(verdict_of(kit, second, state=state), Duplicate)
    # The same header, another (validly signed) part 1: the sender contradicts itself.
    (h_raw, h_sig), segs = _frames(cpe)
    from envelopes.frames import encode_header_frame, encode_segment_frame

    other_ct = segs[1].ciphertext[:-1] + bytes([segs[1].ciphertext[-1] ^ 1])
    message = envelopes_segment_message(h.hash, 1, True, other_ct)
    sig = _crypto.sign(kit.keys[A].signing_key, _crypto.SEGMENT_CONTEXT, message)
    other = encode_header_frame(h_raw, h_sig) + encode_segment_frame(1, True, other_ct, sig)
    v = verdict_of(kit, other, state=state)
    assert isinstance(v, Refuse) and v.record.rule_id == "invariant:part-conflict"
    assert isinstance(verdict_of(kit, first, state=state), Forward)


def envelopes_segment_message(header_hash: bytes, index: int, final: bool, ct: bytes) -> bytes:
    from envelopes.frames import segment_signed_message

    return segment_signed_message(header_hash, index, final, ct)


def test_a_later_part_is_refused_once_the_envelope_expired(kit):
    cpe = kit.seal(A, [B], b"y" * 1500, lifetime=dt.timedelta(hours=1))
    state = FakeState()
    state.accept(cpe)
    v = verdict_of(kit, parts(cpe)[1], state=state, now=kit.now + dt.timedelta(hours=2))
    assert isinstance(v, Refuse) and v.record.rule_id == Reason.EXPIRED.rule_id


def test_a_later_part_from_another_publisher_is_junk(kit):
    cpe = kit.seal(A, [B, X], b"y" * 1500)
    state = FakeState()
    state.accept(cpe)
    assert junk_reason(verdict_of(kit, parts(cpe)[1], publisher=X, state=state)) is Reason.PUBLISHER


# --- notices: only along an accepted edge ---------------------------------------------------


def raw_notice(kit: Kit, signer: str, **fields: object) -> bytes:
    base = {
        "kind": "status",
        "envelope_id": os.urandom(16),
        "header_hash": os.urandom(32),
        "signer": signer,
        "addressee": P,
        "status": "03",
        "rule_id": "",
        "reason": "",
        "time": int(kit.now.timestamp()),
        "note": "",
    }
    base.update(fields)
    body = msgpack.packb(list(base.values()), use_bin_type=True)
    sig = _crypto.sign(kit.keys[signer].signing_key, NOTICE_CONTEXT, body)
    return msgpack.packb([NOTICE_MAGIC, body, sig], use_bin_type=True)


def test_a_status_from_a_recipient_to_the_sender_is_relayed_once(kit):
    cpe = kit.seal(P, [B])
    state = FakeState()
    state.accept(cpe)
    raw = kit.notice(B, P, cpe)
    v = verdict_of(kit, raw, publisher=B, kind="notice", state=state)
    assert isinstance(v, Relay)
    assert (v.record.event, v.record.sender, v.record.recipients) == ("status", B, (P,))
    state.relays.add(v.key)
    assert isinstance(verdict_of(kit, raw, publisher=B, kind="notice", state=state), Duplicate)
    # Another note, same status along the same edge: relayed once all the same.
    other = kit.notice(B, P, cpe, note="again, with feeling")
    assert isinstance(verdict_of(kit, other, publisher=B, kind="notice", state=state), Duplicate)


@pytest.mark.parametrize(
    ("signer", "addressee", "accepted", "kind"),
    [
        (A, P, True, "status"),  # A is no recipient
        (B, A, True, "status"),  # to someone other than the sender
        (B, P, False, "status"),  # the envelope was refused
        (B, P, None, "status"),  # no such envelope
        (B, P, True, "recall"),  # only the sender recalls
        (P, A, True, "recall"),  # the sender, but to someone who never received it
        (B, B, True, "recall"),  # a recipient "recalling" to a recipient (itself)
        (B, P, True, "receipt"),  # (control: this one is fine)
    ],
)
def test_notices_off_the_accepted_edge_are_refused(kit, signer, addressee, accepted, kind):
    cpe = kit.seal(P, [B])
    state = FakeState()
    if accepted is not None:
        state.accept(cpe, ACCEPTED if accepted else REFUSED)
    status = "13" if kind == "recall" else "01" if kind == "receipt" else "06"
    raw = kit.notice(signer, addressee, cpe, kind=kind, status=status)
    v = verdict_of(kit, raw, publisher=signer, kind="notice", state=state)
    if (signer, addressee, accepted, kind) == (B, P, True, "receipt"):
        assert isinstance(v, Relay)
        return
    assert isinstance(v, Refuse), v
    assert (v.record.event, v.record.rule_id) == ("notice-refused", "invariant:notice-edge")
    assert v.notify == AgencyCode.parse(signer)


def test_a_recall_from_the_sender_to_a_recipient_is_relayed(kit):
    cpe = kit.seal(P, [B, X])
    state = FakeState()
    state.accept(cpe)
    raw = kit.notice(P, X, cpe, kind="recall", status="13")
    v = verdict_of(kit, raw, publisher=P, kind="notice", state=state)
    assert isinstance(v, Relay)
    state.relays.add(v.key)
    # The same recall to the other recipient is not a duplicate of the first (regression:
    # relayed once per (envelope, signer, kind, status), the second recipient never got it).
    to_b = kit.notice(P, B, cpe, kind="recall", status="13")
    v2 = verdict_of(kit, to_b, publisher=P, kind="notice", state=state)
    assert isinstance(v2, Relay) and v2.key != v.key
    state.relays.add(v2.key)
    assert isinstance(verdict_of(kit, to_b, publisher=P, kind="notice", state=state), Duplicate)


def test_an_agency_cannot_sign_a_rejection(kit):
    raw = raw_notice(kit, A, kind="rejection", status="refused", addressee=B)
    v = verdict_of(kit, raw, publisher=A, kind="notice")
    assert isinstance(v, Refuse) and v.record.rule_id == "invariant:notice-kind"
    assert v.record.reason == Reason.NOTICE_KIND.text and v.notify == AgencyCode.parse(A)
    assert (v.record.event, v.record.decision) == ("notice-refused", REFUSED)


def test_bad_notices_are_junk(kit):
    good = raw_notice(kit, A)
    assert junk_reason(verdict_of(kit, good, publisher=B, kind="notice")) is Reason.PUBLISHER
    assert (
        junk_reason(verdict_of(kit, raw_notice(kit, A, note="x" * 281), kind="notice"))
        is Reason.FORMAT
    )
    assert junk_reason(verdict_of(kit, b"\x93junk", kind="notice")) is Reason.FORMAT
    magic, body, sig = msgpack.unpackb(good)
    bad_sig = msgpack.packb([magic, body, bytes([sig[0] ^ 1]) + sig[1:]], use_bin_type=True)
    assert junk_reason(verdict_of(kit, bad_sig, kind="notice")) is Reason.SIGNATURE
    big = raw_notice(kit, A, note="x" * 280, reason="y" * 280, rule_id="z" * 280) + b"\0" * 4096
    assert junk_reason(verdict_of(kit, big, kind="notice")) is Reason.OVERSIZED


def test_the_policy_in_force_is_the_one_recorded(kit):
    newer = Policy(kit.policy.name, kit.policy.version + 1, kit.policy.rules, kit.policy.expires)
    v = verdict_of(kit, parts(kit.seal(A, [B]))[0], policy=newer)
    assert isinstance(v, Decide) and v.record.policy_version == kit.policy.version + 1


def test_a_rejection_through_a_submit_lane_is_refused_even_from_the_gateway_key(kit):
    raw = raw_notice(kit, GATEWAY, kind="rejection", status="refused", addressee=B)
    v = verdict_of(kit, raw, publisher=GATEWAY, kind="notice")
    assert isinstance(v, Refuse) and v.record.rule_id == "invariant:notice-kind"


# --- later parts under the directory in force: who still takes part, and what is recorded ---


def directory_where(kit: Kit, *, unknown=(), revoked=(), expired=(), retired=()) -> Directory:
    """The kit's directory as a later version would have it (the decision reads only this)."""
    d = kit.directory
    entries = {c: e for c, e in d.entries.items() if c not in unknown}
    past = kit.now - dt.timedelta(seconds=1)
    for c in revoked:
        entries[c] = dataclasses.replace(entries[c], revoked=True)
    for c in expired:
        enc = dataclasses.replace(entries[c].enc, not_after=past)
        entries[c] = dataclasses.replace(entries[c], enc=enc)
    gone = {c: P for c in retired}
    since = {c: kit.now - dt.timedelta(hours=1) for c in retired}
    return dataclasses.replace(d, entries=entries, retired={**d.retired, **gone},
                               retired_from={**d.retired_from, **since})  # fmt: skip


def accepted_two_parts(kit: Kit, to: list[str]):
    cpe = kit.seal(A, to, b"y" * 1500)
    state = FakeState()
    return cpe, state, state.accept(cpe)


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        ("unknown", Reason.RECIPIENT_UNKNOWN, f"{B} unknown"),
        ("revoked", Reason.RECIPIENT_REVOKED, f"{B} revoked"),
        ("expired", Reason.RECIPIENT_CERTIFICATE, f"{B} has no valid certificate"),
        ("retired", Reason.RETIRED, f"{B} retired"),
    ],
)
def test_a_later_part_no_recipient_may_take_is_refused_and_told_to_its_sender(
    kit, change, reason, text
):
    cpe, state, h = accepted_two_parts(kit, [B])
    v = verdict_of(kit, parts(cpe)[1], state=state, directory=directory_where(kit, **{change: [B]}))
    assert isinstance(v, Refuse), v
    assert (v.record.event, v.record.decision, v.record.rule_id) == (
        "part-refused",
        REFUSED,
        reason.rule_id,
    )
    assert v.record.reason == f"no recipient may take part now: {text}"
    assert (v.record.part, v.record.sender, v.record.digest) == (1, A, h.hash.hex())
    assert v.notify == AgencyCode.parse(A) and v.header == h


def test_a_later_part_goes_only_to_those_still_taking_part_and_says_who_not(kit):
    to = [B, X, P, OTHER, GATEWAY]
    cpe, state, h = accepted_two_parts(kit, to)
    directory = directory_where(kit, unknown=[B], revoked=[X], expired=[P], retired=[OTHER])
    v = verdict_of(kit, parts(cpe)[1], state=state, directory=directory)
    assert isinstance(v, Forward), v
    assert v.to == (GATEWAY,) and v.header == h and v.part.segment.index == 1
    assert v.record is not None
    assert (v.record.event, v.record.decision, v.record.rule_id, v.record.recipients) == (
        "part", ACCEPTED, "part", (GATEWAY,)
    )  # fmt: skip
    assert v.record.reason == (
        f"withheld from {B} (unknown-recipient), {X} (revoked-recipient), "
        f"{P} (recipient-certificate), {OTHER} (retired)"
    )
    everyone = verdict_of(kit, parts(cpe)[1], state=state)
    assert isinstance(everyone, Forward) and everyone.to == tuple(to)
    assert everyone.record is not None and everyone.record.reason == ""


def test_a_later_part_is_refused_after_its_expiry_not_at_it(kit):
    cpe = kit.seal(A, [B], b"y" * 1500, lifetime=dt.timedelta(hours=1))
    state = FakeState()
    h = state.accept(cpe)
    at = verdict_of(kit, parts(cpe)[1], state=state, now=h.expires)
    assert isinstance(at, Forward)
    after = verdict_of(kit, parts(cpe)[1], state=state, now=h.expires + dt.timedelta(seconds=1))
    assert isinstance(after, Refuse) and after.record.event == "part-refused"
    assert after.record.reason == f"envelope expired at {h.expires:%Y-%m-%d %H:%M}Z"
    assert after.notify == AgencyCode.parse(A) and after.header == h and after.record.part == 1


def test_a_later_part_with_a_bad_segment_is_refused_with_the_checks_words(kit):
    cpe, state, h = accepted_two_parts(kit, [B])
    (h_raw, h_sig), segs = _frames(cpe)
    from envelopes.frames import encode_header_frame, encode_segment_frame

    s = segs[1]
    bad = encode_header_frame(h_raw, h_sig) + encode_segment_frame(
        s.index, s.final, s.ciphertext, bytes([s.signature[0] ^ 1]) + s.signature[1:]
    )
    v = verdict_of(kit, bad, state=state)
    assert isinstance(v, Refuse) and v.record.rule_id == "invariant:segment-signature"
    assert v.record.reason == "bad signature on segment 1"
    assert (v.record.event, v.record.part) == ("part-refused", 1)
    assert v.notify == AgencyCode.parse(A) and v.header == h


def test_a_contradicting_later_part_is_refused_to_its_publisher(kit):
    cpe, state, h = accepted_two_parts(kit, [B])
    state.forwards[(h.envelope_id.hex(), h.hash.hex(), 1)] = "0" * 64  # another part 1 stands
    v = verdict_of(kit, parts(cpe)[1], state=state)
    assert isinstance(v, Refuse)
    assert (v.record.event, v.record.rule_id, v.record.part) == (
        "part-refused", "invariant:part-conflict", 1
    )  # fmt: skip
    assert v.notify == AgencyCode.parse(A) and v.header == h


def test_a_copy_of_a_forwarded_part_is_named_a_duplicate(kit):
    cpe, state, h = accepted_two_parts(kit, [B])
    key = (h.envelope_id.hex(), h.hash.hex(), 1)
    state.forwards[key] = hashlib.sha256(parts(cpe)[1]).hexdigest()
    state.confirmed_parts.add(key)
    v = verdict_of(kit, parts(cpe)[1], state=state)
    assert v == Duplicate("a byte-identical copy of a forwarded part", AgencyCode.parse(A))


def test_a_part_decided_in_the_deciding_batch_is_recorded_as_a_part_of_that_decision(kit):
    from gateway.audit import Outcome
    from gateway.decide import RESOLVE

    v = verdict_of(kit, parts(kit.seal(A, [B], b"y" * 1500))[1])
    assert isinstance(v, Decide)
    r = RESOLVE.later_part(
        dataclasses.replace(v.record, reason="x"), Outcome(0, ACCEPTED, "h41-internal", False)
    )
    assert (r.event, r.rule_id, r.reason, r.decision) == ("part", "h41-internal", "", ACCEPTED)
    assert (r.sender, r.part, r.digest) == (A, 1, v.record.digest)


def test_junk_without_a_login_names_only_a_lane_that_is_an_agencys(kit):
    body = b"\x93junk"
    v = decide(Incoming(body, "part", None, "cp.submit.not-a-code"), FakeState(), kit.context())
    assert v == Junk("", None, Reason.FORMAT)
    stranger = "000.09.09.H49"  # a well-formed code the directory does not hold
    v = decide(Incoming(body, "part", None, "cp.submit." + stranger), FakeState(), kit.context())
    assert v == Junk(f"lane:{stranger}", None, Reason.FORMAT)
    v = decide(Incoming(body, "part", PREFIX + stranger, ""), FakeState(), kit.context())
    assert v == Junk(PREFIX + stranger, None, Reason.FORMAT)


def test_a_copy_in_another_agencys_lane_is_junk_counted_against_its_routing_keys_owner(kit):
    """RabbitMQ 3.10 routes CC/BCC copies into any lane unchecked: the lane names nobody."""
    good = parts(kit.seal(A, [B]))[0]
    for body, user_id in ((b"\x93junk", None), (good, PREFIX + A)):
        v = decide(Incoming(body, "part", user_id, "cp.submit." + B, A), FakeState(), kit.context())
        assert isinstance(v, Junk) and v.reason is Reason.MISROUTED
        assert v.publisher == (user_id or f"lane:{A}") and v.notify == AgencyCode.parse(A)
    # Published with its own key into its own lane: decided as usual.
    v = decide(Incoming(good, "part", PREFIX + A, "cp.submit." + A, A), FakeState(), kit.context())
    assert not isinstance(v, Junk)
    # Junk without user_id is named after its routing key, not after the lane it came through.
    v = decide(Incoming(b"\x93junk", "part", None, "cp.submit." + A, A), FakeState(), kit.context())
    assert v == Junk(f"lane:{A}", AgencyCode.parse(A), Reason.FORMAT)
    v = decide(
        Incoming(b"\x93junk", "part", None, "cp.submit." + A, ""), FakeState(), kit.context()
    )
    assert v == Junk("", None, Reason.MISROUTED)  # an empty key names nobody


# --- notices: what is recorded, and what is refused before any edge is looked at -----------


def test_a_relayed_notice_records_verified_facts_and_the_versions_that_decided(kit):
    cpe = kit.seal(P, [B])
    state = FakeState()
    h = state.accept(cpe)
    raw = kit.notice(B, P, cpe)
    v = verdict_of(kit, raw, publisher=B, kind="notice", state=state)
    assert isinstance(v, Relay)
    digest = hashlib.sha256(raw).hexdigest()
    r = v.record
    assert (r.event, r.envelope_id, r.sender, r.recipients) == (
        "status",
        h.envelope_id.hex(),
        B,
        (P,),
    )
    assert (r.level, r.urgency, r.size, r.digest, r.message_digest) == (
        "",
        "",
        len(raw),
        digest,
        digest,
    )
    assert (r.decision, r.rule_id, r.reason) == (ACCEPTED, "notice", "status 03")
    assert (r.gateway_id, r.publisher) == ("gw1", PREFIX + B)
    assert (r.policy_version, r.directory_version) == (kit.policy.version, kit.directory.version)
    assert (v.notice.signer, v.notice.addressee, v.notice.raw) == (
        AgencyCode.parse(B), AgencyCode.parse(P), raw
    )  # fmt: skip


def test_a_notice_without_a_header_hash_is_off_every_edge(kit):
    # A header hash may be empty in the format; it then binds to no decided header at all.
    cpe = kit.seal(P, [B])
    state = FakeState()
    h = state.accept(cpe)
    raw = raw_notice(kit, B, envelope_id=h.envelope_id, header_hash=b"", addressee=P)
    v = verdict_of(kit, raw, publisher=B, kind="notice", state=state)
    assert isinstance(v, Refuse) and v.record.rule_id == "invariant:notice-edge"
    assert v.record.reason == Reason.NOTICE_EDGE.text and v.notify == AgencyCode.parse(B)


def test_a_refused_message_again_is_a_duplicate_not_a_second_record(kit):
    state = FakeState()
    raw = raw_notice(kit, A)  # off every edge: refused once
    state.refusals.add(hashlib.sha256(raw).hexdigest())
    v = verdict_of(kit, raw, publisher=A, kind="notice", state=state)
    assert v == Duplicate("a refused notice again", AgencyCode.parse(A))
    cpe = kit.seal(A, [B], b"y" * 1500)
    state.accept(cpe)
    second = parts(cpe)[1]
    state.refusals.add(hashlib.sha256(second).hexdigest())
    assert verdict_of(kit, second, state=state) == Duplicate(
        "a refused part again", AgencyCode.parse(A)
    )


def test_a_notice_relayed_already_along_its_edge_is_named_a_duplicate(kit):
    cpe = kit.seal(P, [B])
    state = FakeState()
    state.accept(cpe)
    v = verdict_of(kit, kit.notice(B, P, cpe), publisher=B, kind="notice", state=state)
    assert isinstance(v, Relay)
    state.relays.add(v.key)
    again = verdict_of(kit, kit.notice(B, P, cpe), publisher=B, kind="notice", state=state)
    assert again == Duplicate(
        "this status along this edge was relayed already", AgencyCode.parse(B)
    )


def test_a_retired_signer_is_told_who_it_is_now_and_a_retirement_to_come_is_not_yet(kit):
    cpe = kit.seal(P, [B])
    state = FakeState()
    state.accept(cpe)
    raw = kit.notice(B, P, cpe)
    retired = directory_where(kit, retired=[B])  # B merged into P an hour ago
    v = verdict_of(kit, raw, publisher=B, kind="notice", state=state, directory=retired)
    assert isinstance(v, Refuse) and v.record.rule_id == Reason.RETIRED.rule_id
    assert v.record.reason == f"signer {B} is retired (merged into {P}): it is {P} now"
    assert v.record.event == "notice-refused" and v.notify == AgencyCode.parse(B)
    later = dataclasses.replace(retired, retired_from={B: kit.now + dt.timedelta(days=1)})
    v = verdict_of(kit, raw, publisher=B, kind="notice", state=state, directory=later)
    assert isinstance(v, Relay)


def test_a_message_whose_queue_is_not_known_is_judged_by_its_login_alone(kit):
    v = decide(
        Incoming(parts(kit.seal(A, [B]))[0], "part", PREFIX + A, ""), FakeState(), kit.context()
    )
    assert isinstance(v, Decide) and v.record.decision == ACCEPTED


def test_an_accepted_decision_records_the_rules_own_reason(kit):
    v = verdict_of(kit, parts(kit.seal(A, [B]))[0])
    assert isinstance(v, Decide) and v.record.decision == ACCEPTED
    assert (v.record.rule_id, v.record.reason) == ("h41-internal", "exchanges inside province H41")


def test_a_retired_sender_is_told_who_it_is_now_by_a_decided_refusal(kit):
    cpe = kit.seal(B, [P])
    retired = directory_where(kit, retired=[B])
    v = verdict_of(kit, parts(cpe)[0], publisher=B, directory=retired)
    assert isinstance(v, Decide) and v.record.rule_id == Reason.RETIRED.rule_id
    assert v.record.reason == f"sender {B} is retired (merged into {P}): it is {P} now"
    assert v.key == (header(cpe).envelope_id.hex(), header(cpe).hash.hex())
    assert v.digest == hashlib.sha256(parts(cpe)[0]).hexdigest()
    assert v.notify == AgencyCode.parse(B) and v.part.segment.index == 0


def test_a_later_part_still_goes_to_a_recipient_whose_retirement_is_still_to_come(kit):
    cpe, state, _ = accepted_two_parts(kit, [B, X])
    soon = directory_where(kit, retired=[B])
    soon = dataclasses.replace(soon, retired_from={B: kit.now + dt.timedelta(days=1)})
    v = verdict_of(kit, parts(cpe)[1], state=state, directory=soon)
    assert isinstance(v, Forward) and v.to == (B, X)


def test_a_part_decided_in_the_same_batch_takes_the_standing_rule(kit):
    from gateway.audit import Outcome
    from gateway.decide import RESOLVE

    v = verdict_of(kit, parts(kit.seal(A, [B], b"y" * 1500))[1])
    assert isinstance(v, Decide)
    mine = dataclasses.replace(v.record, rule_id="another-rule")
    r = RESOLVE.later_part(mine, Outcome(0, ACCEPTED, "h41-internal", False))
    assert r.rule_id == "h41-internal"
