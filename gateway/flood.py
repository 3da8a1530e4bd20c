"""The flood guard: a login that floods its lane with junk is suspended on the broker.

RabbitMQ 3.10 has no per-user publish rate. Lanes, length limits and junk
tallies keep a flood from growing the log or starving the gateway, but every
publish still costs the broker's CPU, which it shares with everyone's
documents (``bench/flood.py``: a 50,000-message flood more than doubled
another agency's p99 latency on two cores). An enrolled agency's own software
never publishes junk (bytes that fail before any signature is verified), so
a login whose junk fills :attr:`FloodGuard.threshold` within one tally
(at most a second) is suspended: its connection and channel limits set to 0
and its open connections closed through the management API
(:func:`broker.provision.suspend`). What it queued before stays and is decided
as usual. Copies of what was already handled (a byte-identical part, a refused
part or notice again: :class:`gateway.decide.Duplicate`) cost the gateway
nothing but cost the broker as much as junk, and a signer can replay its own
1 MiB part for free: :data:`DUPLICATES_AFTER` of them from one login within
:data:`DUPLICATE_WINDOW_S` suspend it too (an honest agent republishes at
most its in-flight window, 512, after a reconnect). The suspension is a leaf
of the audit log (event ``suspended``,
rule ``flood``, naming only the broker-validated login) and a warning line;
the operator lifts it with ``cipherpost broker reinstate LOGIN``.

The guard needs a management user with the ``administrator`` tag (user limits
and other users' connections need it); without one it is off and says so at
start. See docs/policy.md ("The flood guard") for the trade-offs and what it does
not yet defend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from broker.management import Management
from broker.provision import close_connections, suspend, user_limits
from keys.errors import clip
from keys.logsetup import get_logger

__all__ = [
    "COPIES",
    "DUPLICATES_AFTER",
    "JUNK",
    "RECHECK_S",
    "SUSPENDED",
    "SUSPEND_RULE",
    "FloodGuard",
]

log = get_logger("cipherpost.gateway")

SUSPENDED = "suspended"  # the audit event
SUSPEND_RULE = "flood"  # its rule id: an operational act, not a check on one message
RECHECK_S = 30.0  # a suspended login still sending junk (its queued backlog) is looked at again
DUPLICATES_AFTER = 4096  # copies from one login within DUPLICATE_WINDOW_S: 8 in-flight windows
DUPLICATE_WINDOW_S = 10.0
JUNK = "messages refused before verification within a second"
COPIES = f"copies of messages already handled within {DUPLICATE_WINDOW_S:.0f} s"


class FloodGuard:
    """Suspends flooding logins; ``on_suspended(login, connections_closed, count, what)``
    records it (``what``: :data:`JUNK` or :data:`COPIES`)."""

    def __init__(
        self,
        mgmt: Management | None,
        threshold: int,
        *,
        protected: frozenset[str] = frozenset(),
        on_suspended: Callable[[str, int, int, str], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self._mgmt = mgmt
        self._protected = protected
        self._on_suspended = on_suspended
        self.recheck_s = RECHECK_S
        self.duplicates_after = DUPLICATES_AFTER
        self._seen: dict[str, float] = {}  # login -> when last acted on (monotonic)
        self._copies: dict[str, tuple[float, int]] = {}  # login -> (window start, copies)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="flood-guard") if mgmt else None

    @property
    def on(self) -> bool:
        return self._mgmt is not None

    def junk(self, login: str, count: int) -> bool:
        """``login`` has ``count`` junk messages in its open tally; True if that sets off a
        suspension (done on the guard's own thread: the consumer never waits for HTTP)."""
        if count < self.threshold:
            return False
        return self._act(login, count, JUNK)

    def duplicate(self, login: str) -> bool:
        """One more copy of something already handled from ``login`` (verified publisher);
        True if that sets off a suspension."""
        if self._pool is None or not login:
            return False
        now = time.monotonic()
        with self._lock:
            start, n = self._copies.get(login, (now, 0))
            if now - start > DUPLICATE_WINDOW_S:
                start, n = now, 0
            self._copies[login] = (start, n + 1)
            if n + 1 < self.duplicates_after:
                return False
            del self._copies[login]
        return self._act(login, n + 1, COPIES)

    def _act(self, login: str, count: int, what: str) -> bool:
        if self._pool is None or not login or login in self._protected:
            return False
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(login)
            if last is not None and now - last < self.recheck_s:
                return False
            self._seen[login] = now
        try:
            self._pool.submit(self._suspend, login, count, what)
        except RuntimeError:  # closed: the gateway is stopping
            return False
        return True

    def _suspend(self, login: str, count: int, what: str) -> None:
        assert self._mgmt is not None
        try:
            if user_limits(self._mgmt, login).get("max-connections") == 0:
                # Still suspended: what arrives is what it queued before, unless an earlier
                # suspension was cut short after its limits (a failed close): finish it.
                held = close_connections(self._mgmt, login)
                if not held:
                    return
            else:
                held = suspend(self._mgmt, login)
        except Exception as e:  # the gateway decides on; the operator is told
            with self._lock:
                self._seen.pop(login, None)  # the next junk tries again
            log.error(
                "gateway_suspend_failed", login=login, error=type(e).__name__, detail=clip(str(e))
            )
            return
        log.warning(
            "gateway_login_suspended",
            login=login,
            count=count,
            what=what,
            connections_closed=held,
            lift=f"cipherpost broker reinstate {login}",
        )
        if self._on_suspended is not None:
            self._on_suspended(login, held, count, what)

    def close(self, *, wait: bool = False) -> None:
        """Let go; by default without waiting on the management API (a stuck one would
        hold the gateway's last commit and checkpoint past its stop timeout): a suspension
        still queued is dropped, one in progress finishes on its own."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=not wait)
