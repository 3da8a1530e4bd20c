"""Progress lines: rate and time left, finished exactly once, silent when asked."""

from __future__ import annotations

import io

from agents import progress
from agents.progress import Progress, ProgressReader


def test_a_line_has_the_rate_and_the_time_left():
    p = Progress(200 << 20, "sending", enabled=False)
    p.done = 50 << 20
    line = p.line(p._start + 10)
    assert line == "sending:  25.0% of 200.0 MiB, 5.0 MiB/s, 0:00:30 left"
    p.done = 200 << 20
    assert p.line(p._start + 40) == "sending: 100.0% of 200.0 MiB, 5.0 MiB/s, took 0:00:40"


def test_parts_are_counted_as_parts():
    p = Progress(200, "receiving 0123456789ab", unit="parts", enabled=False)
    p.done = 70
    assert p.line(p._start + 7).startswith(
        "receiving 0123456789ab:  35.0% of 200 parts, 10 parts/s"
    )


def test_the_last_line_is_drawn_once_even_when_reading_past_the_end(capsys):
    reader = ProgressReader(io.BytesIO(b"x" * 1000), 1000, "sealing", enabled=True)
    while reader.read(300):
        pass
    reader.read(300)  # more reads at the end, as a parser does
    err = capsys.readouterr().err
    assert err.count("100.0%") == 1 and err.endswith("\n")


def test_quiet_turns_every_progress_line_off(capsys, monkeypatch):
    monkeypatch.setattr(progress, "DEFAULT_ENABLED", False)
    p = Progress(1 << 30, "sending")
    p.advance(1 << 30)
    assert not p.enabled and capsys.readouterr().err == ""
