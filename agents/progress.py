"""Progress on long work: done / total, rate and time left, on stderr when it is a terminal.

One line, redrawn at most twice a second and finished exactly once. Commands given
``--quiet`` (or a library caller passing ``enabled=False``) show nothing.
"""

from __future__ import annotations

import sys
import time
from typing import BinaryIO

MIN_BYTES = 16 * 1024 * 1024  # smaller jobs finish before a bar is worth drawing
MIN_PARTS = 4  # parts of about 4 MiB each
INTERVAL_S = 0.5
# None: shown when stderr is a terminal; the CLI sets False for --quiet and --json.
DEFAULT_ENABLED: bool | None = None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A counter of ``total`` units (bytes or parts) drawn as one line on stderr."""

    def __init__(
        self, total: int, label: str, *, unit: str = "MiB", enabled: bool | None = None
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.unit = unit
        self.done = 0
        self._start = self._last = time.monotonic()
        self._finished = False
        if enabled is None:
            enabled = DEFAULT_ENABLED
        if enabled is None:
            big = total >= (MIN_BYTES if unit == "MiB" else MIN_PARTS)
            enabled = sys.stderr.isatty() and big
        self.enabled = enabled

    def _amount(self, n: float) -> str:
        return f"{n / 2**20:,.1f}" if self.unit == "MiB" else f"{int(n):,}"

    def line(self, now: float) -> str:
        """What is drawn: ``label: 35.0% of 200.0 MiB, 12.3 MiB/s, 0:00:11 left``."""
        pct = min(100.0, 100.0 * self.done / self.total)
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        text = f"{self.label}: {pct:5.1f}% of {self._amount(self.total)} {self.unit}"
        if self.done and elapsed >= 1.0:
            text += f", {self._amount(rate)} {self.unit}/s"
            if self.done < self.total:
                text += f", {_clock((self.total - self.done) / rate)} left"
            else:
                text += f", took {_clock(elapsed)}"
        return text

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled or self._finished:
            return
        now = time.monotonic()
        finished = self.done >= self.total
        if finished or now - self._last >= INTERVAL_S:
            self._last = now
            sys.stderr.write("\r" + self.line(now) + ("\n" if finished else ""))
            sys.stderr.flush()
            self._finished = finished


class ProgressReader:
    """Wraps a binary stream; reports how much of ``total`` bytes was read."""

    def __init__(
        self, src: BinaryIO, total: int, label: str, *, enabled: bool | None = None
    ) -> None:
        self._src = src
        self.progress = Progress(total, label, enabled=enabled)

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self.progress.advance(len(data))
        return data

    def readinto(self, buf: memoryview) -> int:  # pragma: no cover - msgpack uses read()
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)
