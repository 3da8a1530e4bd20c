"""Stop signals in the CLI (agents/interrupts.py): noted inside the envelope work, acted on
at a safe point, and never turned into a refusal."""

from __future__ import annotations

import io
import signal

import pytest

from agents.interrupts import Interrupted, Stops
from envelopes.errors import EnvelopeRefused, Reason


@pytest.fixture
def stops():
    s = Stops()
    s.install()
    yield s
    s.restore()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_inside_the_envelope_work_a_signal_is_only_noted(stops, signum):
    done = []
    with pytest.raises(Interrupted) as e, stops.deferred():
        signal.raise_signal(signum)  # the handler runs now, in this thread
        done.append("the work went on to a safe point")
    assert done and e.value.signum == signum


def test_a_refusal_caused_by_the_interruption_is_reported_as_the_interruption(stops):
    """What failed after a stop arrived is not a verdict on the envelope."""
    with pytest.raises(Interrupted) as e, stops.deferred():
        signal.raise_signal(signal.SIGTERM)
        raise EnvelopeRefused(Reason.DECRYPT, "payload key does not open with this agency's key")
    assert e.value.signum == signal.SIGTERM
    assert isinstance(e.value.__context__, EnvelopeRefused)


def test_the_stream_raises_at_its_next_read(stops):
    src = stops.reading(io.BytesIO(b"abcdef"))
    reads = []
    with pytest.raises(Interrupted), stops.deferred():
        reads.append(src.read(2))
        signal.raise_signal(signal.SIGHUP)
        reads.append(src.read(2))
    assert reads == [b"ab"]


def test_outside_the_envelope_work_a_signal_interrupts_at_once(stops):
    with pytest.raises(Interrupted) as e:
        signal.raise_signal(signal.SIGTERM)
    assert e.value.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_no_signal_no_interruption(stops):
    with stops.deferred():
        assert stops.reading(io.BytesIO(b"x")).read() == b"x"
    assert stops.pending is None


def test_restore_puts_back_the_previous_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    stops = Stops()
    stops.install()
    assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
    stops.restore()
    assert {s: signal.getsignal(s) for s in before} == before
