"""Fuzzing the parsers and the gateway's decision (hypothesis).

Every parser an attacker's bytes reach (part, header, segment frame, notice)
and :func:`gateway.decide.decide` itself must, for ANY input, either return or
raise the project's one refusal type: never another exception (which at the
gateway would be an internal error and a retry loop), and never accept a
mutated envelope.

Short and bounded in CI (the ``ci`` profile, a few seconds). The long run:

    HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest tests/test_fuzz.py -q

(100,000 examples per property; about half an hour on this machine). Found
failures are kept by hypothesis in ``.hypothesis/`` and replayed first.
"""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelopes.errors import EnvelopeRefused
from envelopes.frames import decode_frame, parse_header_frame, parse_segment_frame
from envelopes.header import MAGIC, Header
from envelopes.notices import parse_notice
from envelopes.parts import parse_part
from gateway.audit import ACCEPTED
from gateway.decide import Decide, Forward, Incoming, Junk, Refuse, Relay, decide
from tests.gateway_kit import PREFIX, A, B, FakeState, make_kit, parts

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# msgpack values of every kind, nested: what a hostile encoder can produce.
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=80),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def refuses_or_returns(parse, data) -> None:
    try:
        parse(data)
    except EnvelopeRefused:
        pass


@given(st.binary(max_size=4096))
def test_parse_part_takes_any_bytes(data: bytes) -> None:
    refuses_or_returns(parse_part, data)


@given(st.binary(max_size=4096))
def test_header_parse_takes_any_bytes(data: bytes) -> None:
    refuses_or_returns(Header.parse, data)


@given(st.lists(VALUES, max_size=16))
def test_header_parse_takes_any_msgpack_fields(fields: list[object]) -> None:
    raw = msgpack.packb([MAGIC, 1, *fields], use_bin_type=True)
    refuses_or_returns(Header.parse, raw)


@given(st.binary(max_size=2048))
def test_frames_take_any_bytes(data: bytes) -> None:
    refuses_or_returns(lambda d: parse_header_frame(decode_frame(d)), data)
    refuses_or_returns(lambda d: parse_segment_frame(decode_frame(d)), data)


@given(st.lists(VALUES, max_size=12))
def test_notice_parse_takes_any_msgpack_body(fields: list[object]) -> None:
    body = msgpack.packb(fields, use_bin_type=True)
    refuses_or_returns(parse_notice, msgpack.packb(["cipherpost.notice/1", body, b"\0" * 64]))


@given(st.binary(max_size=4096))
def test_notice_parse_takes_any_bytes(data: bytes) -> None:
    refuses_or_returns(parse_notice, data)


# --- the decision -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def valid(kit):
    return parts(kit.seal(A, [B], b"z" * 1500))  # two parts, both acceptable


KINDS = st.sampled_from(["part", "notice", None, "audit-proof", "x" * 300])
USERS = st.sampled_from([PREFIX + A, PREFIX + B, None, "", "guest", PREFIX + "garbage"])


@given(body=st.binary(max_size=2048), kind=KINDS, user=USERS)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_decide_never_raises_on_random_messages(kit, body, kind, user) -> None:
    verdict = decide(Incoming(body, kind, user, "cp.submit." + A), FakeState(), kit.context())
    assert isinstance(verdict, Junk)  # nothing random is ever verified


@given(
    which=st.integers(0, 1),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_mutated_part_is_never_accepted(kit, valid, which, flips, cut) -> None:
    body = bytearray(valid[which])
    for at, xor in flips:
        body[at % len(body)] ^= xor
    if cut is not None:
        body = body[: cut % (len(body) + 1)]
    if bytes(body) == valid[which]:
        return
    verdict = decide(Incoming(bytes(body), "part", PREFIX + A, "cp.submit." + A), FakeState(),
                     kit.context())  # fmt: skip
    assert isinstance(verdict, (Junk, Refuse, Decide))
    assert not isinstance(verdict, (Forward, Relay))
    if isinstance(verdict, Decide):
        # Only bytes outside what is signed can change and still decide: there are none
        # in the header, so a decision means the mutation hit the segment's ciphertext
        # or signature and... it must then have been refused as a part instead.
        assert verdict.record.decision != ACCEPTED or _same_header(verdict, valid[which])


def _same_header(verdict: Decide, original: bytes) -> bool:
    """A decision on an intact header and an intact segment: the mutation was a no-op."""
    return parse_part(original).header.raw == verdict.part.header.raw and (
        parse_part(original).segment == verdict.part.segment
    )
