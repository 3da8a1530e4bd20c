"""Junk: messages refused before any signature was verified, counted per publisher.

Nothing in such a message is a verified fact, so its record may name only the
broker-validated publisher, sizes, digests and the typed reasons. Recording
each one as its own durable leaf would let an enrolled agency grow the signed
log by ~2 KB per 4-byte message; instead the refusals of one publisher are
tallied and written as **one** leaf (``count`` messages, their total ``size``,
``digest`` = SHA-256 over their digests in order, a count per typed reason)
every :data:`JUNK_EVERY` messages or :data:`JUNK_SECONDS` seconds. Mixing
reasons does not multiply the leaves.

The messages stay unacknowledged until their leaf is durable: nothing is
dropped without a trace, a crash only means they are counted again, and a
flooder's own lane (its prefetch window) is what waits for the leaf, nobody
else's. See docs/audit.md ("Junk is aggregated").
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from envelopes.errors import Reason
from gateway.audit import REFUSED, Record

JUNK_EVERY = 1000
JUNK_SECONDS = 1.0
NO_PUBLISHER = "none"
LANE_PUBLISHER = "lane:"  # no user_id: the owner of the routing key (the lane it is for)
UNVERIFIED = "unverified"
UNVERIFIED_RULE = "invariant:unverified"  # a tally of several pre-verification reasons

T = TypeVar("T")


@dataclass
class Tally(Generic[T]):
    """The refusals of one publisher since its last leaf."""

    publisher: str
    first: dt.datetime
    count: int = 0
    size: int = 0
    reasons: collections.Counter[Reason] = field(default_factory=collections.Counter)
    held: list[T] = field(default_factory=list)
    _chain: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def rule_id(self) -> str:
        """The reason's rule id, or ``invariant:unverified`` for several reasons together."""
        if len(self.reasons) == 1:
            return next(iter(self.reasons)).rule_id
        return UNVERIFIED_RULE

    def record(self, now: dt.datetime, gateway_id: str, versions: tuple[int, int]) -> Record:
        """The one leaf for this tally (no sender, recipients, level or id: none is verified)."""
        what = "message" if self.count == 1 else "messages"
        if len(self.reasons) == 1:
            why = next(iter(self.reasons)).text
        else:  # typed: each reason's slug and count, most frequent first
            why = ", ".join(f"{r.value} {n}" for r, n in self.reasons.most_common())
        return Record(
            time=now,
            event=UNVERIFIED,
            envelope_id="",
            sender="",
            recipients=(),
            level="",
            urgency="",
            size=self.size,
            digest=self._chain.hexdigest(),
            decision=REFUSED,
            rule_id=self.rule_id,
            reason=f"{self.count} {what} refused before verification: {why}",
            gateway_id=gateway_id,
            publisher=self.publisher,
            count=self.count,
            policy_version=versions[0],
            directory_version=versions[1],
        )


class JunkLedger(Generic[T]):
    """Open tallies; ``held`` carries what the caller settles once a tally's leaf is durable."""

    def __init__(self, every: int = JUNK_EVERY, seconds: float = JUNK_SECONDS) -> None:
        self.every = every
        self.seconds = seconds
        self._open: dict[str, Tally[T]] = {}

    def add(self, publisher: str, reason: Reason, body: bytes, held: T, now: dt.datetime) -> int:
        """Count one refused message (its bytes are hashed here and not kept); returns how
        many this publisher's open tally holds."""
        key = publisher or NO_PUBLISHER
        tally = self._open.get(key)
        if tally is None:
            tally = self._open[key] = Tally(key, now)
        tally.reasons[reason] += 1
        tally.count += 1
        tally.size += len(body)
        tally._chain.update(hashlib.sha256(body).digest())
        tally.held.append(held)
        return tally.count

    def due(self, now: dt.datetime, *, everything: bool = False) -> list[Tally[T]]:
        """Take the tallies to write now: full, old enough, or all of them."""
        taken = [
            key
            for key, t in self._open.items()
            if everything
            or t.count >= self.every
            or (now - t.first).total_seconds() >= self.seconds
        ]
        return [self._open.pop(key) for key in taken]

    def __len__(self) -> int:
        return sum(t.count for t in self._open.values())
