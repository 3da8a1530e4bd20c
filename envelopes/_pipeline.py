"""Two-stage pipelines over a bounded queue, so hashing and encryption overlap.

hashlib and libsodium (through cffi) release the GIL on large buffers, so a
second thread doing SHA-256 + Ed25519 while the first encrypts or decrypts
uses the second core. The queue holds at most ``depth`` segments: memory
stays O(segment). Any exception in either stage stops both and is re-raised
in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
DEPTH = 2
_POLL_S = 0.1
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterator[T], depth: int = DEPTH) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` ahead of the consumer."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, never lost
            put(_Failure(e))

    worker = threading.Thread(target=run, name="cipherpost-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


class WriteBehind(Generic[T]):
    """Hands items to ``sink`` in a background thread, in order; ``close`` waits and re-raises."""

    def __init__(self, sink: Callable[[T], None], depth: int = DEPTH) -> None:
        self._sink = sink
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._run, name="cipherpost-write", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self._sink(item)  # type: ignore[arg-type]
                except BaseException as e:  # re-raised by put/close in the caller's thread
                    self._error = e

    def put(self, item: T) -> None:
        """Queue one item; raises at once if the sink already failed."""
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def close(self) -> None:
        """Wait for every queued item to be handled; re-raise the sink's error, if any."""
        self._q.put(_DONE)
        self._worker.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:  # the caller's error wins; still stop the thread
            self._error = self._error or RuntimeError("aborted")
            self._q.put(_DONE)
            self._worker.join()
