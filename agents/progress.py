"""Progress on long work: a byte counter shown on stderr when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import BinaryIO

MIN_BYTES = 16 * 1024 * 1024  # smaller jobs finish before a bar is worth drawing
INTERVAL_S = 0.5


class ProgressReader:
    """Wraps a binary stream; reports how much of ``total`` bytes was read."""

    def __init__(
        self, src: BinaryIO, total: int, label: str, *, enabled: bool | None = None
    ) -> None:
        self._src = src
        self._total = max(total, 1)
        self._label = label
        self._done = 0
        self._last = 0.0
        if enabled is None:
            enabled = sys.stderr.isatty() and total >= MIN_BYTES
        self._enabled = enabled

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._done += len(data)
        now = time.monotonic()
        if self._enabled and (now - self._last >= INTERVAL_S or self._done >= self._total):
            self._last = now
            pct = min(100.0, 100.0 * self._done / self._total)
            sys.stderr.write(f"\r{self._label}: {pct:5.1f}% of {self._total / 2**20:,.1f} MiB")
            if self._done >= self._total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        return data

    def readinto(self, buf: memoryview) -> int:  # pragma: no cover - msgpack uses read()
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)
