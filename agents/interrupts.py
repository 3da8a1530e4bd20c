"""Stop signals in the command line: noted when they arrive, acted on at a safe point.

A Python signal handler runs in the main thread between two bytecodes, wherever
that thread is. Raising from it while an envelope is opened can land inside the
HPKE unwrap (Rust code calling back into Python) or between two libsodium calls,
and turn a plain interruption into "payload key does not open": a false security
failure (THREATS.md invariant 9). So while an envelope is sealed, verified or
opened (:meth:`Stops.deferred`) the handler only records the signal; the stream
the envelope is read from (:meth:`Stops.reading`) raises :class:`Interrupted`
at its next read, and leaving the deferred block raises it in any case, even if
the work failed meanwhile, so that every clean-up (quarantine, partial file)
runs and the command exits 128 + the signal number. Outside such a block a
signal interrupts at once, as Python does by default.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):  # like KeyboardInterrupt: not an error
    """A stop signal arrived: unwind so that every clean-up runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Stops:
    """The stop signals of one command run: install, defer, check, restore."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._deferring = 0
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Trap SIGINT, SIGTERM and SIGHUP (only possible from the main thread)."""
        self.pending = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        if self.pending is None:
            self.pending = signum
        if not self._deferring:
            raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(signum)

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop signal arrived: call only at a safe point."""
        if self.pending is not None:
            raise Interrupted(self.pending)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within: a signal is only noted. On leaving, a noted signal raises
        :class:`Interrupted`, replacing whatever the interrupted work raised."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            self.check()

    def reading(self, src: BinaryIO) -> BinaryIO:
        """``src``, checked for a stop before and after each read (any thread may read it)."""
        return _CheckedReader(src, self)  # type: ignore[return-value]


class _CheckedReader:
    def __init__(self, src: BinaryIO, stops: Stops) -> None:
        self._src = src
        self._stops = stops

    def read(self, n: int = -1) -> bytes:
        self._stops.check()
        data = self._src.read(n)
        self._stops.check()
        return data
