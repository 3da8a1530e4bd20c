"""Property tests: round trips across sizes and recipient counts; any byte change fails."""

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envelopes
from envelopes import EnvelopeRefused
from keys.codes import AgencyCode
from keys.errors import Refused
from keys.levels import Level
from tests.conftest import PROVINCE
from tests.helpers import commune_code, open_bytes, seal_bytes

SEG = 1024
# Sizes around segment boundaries for the 1 KiB segments used here; the
# metadata prefix shifts the payload by a few dozen bytes, so both sides of
# each boundary get hit.
sizes = st.one_of(
    st.integers(0, 3 * SEG),
    st.sampled_from([k * SEG + d for k in (1, 2, 8) for d in (-60, -50, -1, 0, 1)]),
    st.integers(3 * SEG, 64 * SEG),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=sizes, n=st.integers(1, 100), data=st.data())
def test_roundtrip_small_segments(world, directory, size, n, data):
    doc = (
        data.draw(st.binary(min_size=size, max_size=size))
        if size < 4096
        else bytes((i * 7) & 0xFF for i in range(size))
    )
    to = [commune_code(i) for i in range(n)]
    env = seal_bytes(world, directory, PROVINCE, to, doc, segment_size=SEG)
    info = envelopes.verify(io.BytesIO(env), directory=directory, now=world.now)
    assert [r.code.text for r in info.checked.recipients] == to
    for who in {to[0], to[-1], data.draw(st.sampled_from(to))}:
        plain, opened = open_bytes(world, directory, who, env)
        assert plain == doc
        assert opened.metadata.subject == "s"


@pytest.mark.parametrize(
    "size", [0, 1, 1024 * 1024 - 40, 1024 * 1024, 3 * 1024 * 1024 + 17, 5 * 1024 * 1024]
)
def test_roundtrip_default_segments_multi_mib(world, directory, size):
    doc = (
        bytes((i * 13 + 5) & 0xFF for i in range(size))
        if size < 2**20
        else (b"0123456789abcdef" * (size // 16 + 1))[:size]
    )
    env = seal_bytes(
        world,
        directory,
        PROVINCE,
        [commune_code(0), commune_code(99)],
        doc,
        segment_size=1024 * 1024,
    )
    plain, _ = open_bytes(world, directory, commune_code(99), env)
    assert plain == doc


@pytest.fixture(scope="module")
def small_envelope(world, directory):
    doc = bytes(range(256)) * 10  # 2560 B + metadata: 3 segments of 1 KiB
    return seal_bytes(
        world, directory, PROVINCE, [commune_code(0), commune_code(1)], doc, segment_size=SEG
    ), doc


def _fails(world, directory, data):
    """True if verify or open refuses ``data``; any other exception propagates."""
    try:
        envelopes.verify(io.BytesIO(data), directory=directory, now=world.now)
        open_bytes(world, directory, commune_code(1), data)
    except EnvelopeRefused:
        return True
    return False


def test_every_single_byte_flip_fails(world, directory, small_envelope):
    env, _ = small_envelope
    assert not _fails(world, directory, env)
    for pos in range(len(env)):
        mutated = bytearray(env)
        mutated[pos] ^= 0x01
        assert _fails(world, directory, bytes(mutated)), f"flip at byte {pos} went unnoticed"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_fails(world, directory, small_envelope, data):
    env, _ = small_envelope
    pos = data.draw(st.integers(0, len(env) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != env[pos]))
    mutated = bytearray(env)
    mutated[pos] = value
    assert _fails(world, directory, bytes(mutated))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, 10_000))
def test_any_truncation_fails(world, directory, small_envelope, cut):
    env, _ = small_envelope
    assert _fails(world, directory, env[: cut % len(env)])


def test_level_above_clearance_refused_at_seal(world, directory):
    with pytest.raises(Refused, match="above the clearance of recipient 000.99.99.H41"):
        seal_bytes(world, directory, PROVINCE, ["000.99.99.H41"], b"x", level=Level.TOI_MAT)
    with pytest.raises(Refused, match="above the clearance of sender"):
        seal_bytes(world, directory, PROVINCE, [commune_code(0)], b"x", level=Level.TUYET_MAT)


def test_unknown_recipient_refused_at_seal(world, directory):
    with pytest.raises(Refused, match="not in the directory"):
        seal_bytes(world, directory, PROVINCE, ["000.55.55.H55"], b"x")


def test_header_size_75_recipients(world, directory):
    env = seal_bytes(world, directory, PROVINCE, [commune_code(i) for i in range(75)], b"x")
    header_raw = envelopes.frames.parse_header_frame(
        envelopes.frames.FrameReader(io.BytesIO(env)).next()
    )[0]
    assert len(header_raw) <= 12 * 1024
    assert AgencyCode.parse(PROVINCE)
