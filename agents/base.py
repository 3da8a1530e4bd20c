"""What every part of the agent shares: the state :class:`agents.client.Client` holds
(declared here for the type checker; the client sets it) and the look-ups all parts use."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from cryptography import x509

from agents.config import AgentConfig
from agents.state import AgentState
from broker.connection import BrokerConfig
from broker.consumer import Delivery
from broker.directory_feed import DirectoryFeed
from keys.agency import AgencyKeys
from keys.directory import Directory
from keys.errors import CipherpostError, UsageError


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AgentBase:
    """The agent's state, shared by its parts (outbox, statuses, inbox, proofs)."""

    config: AgentConfig
    keys: AgencyKeys
    ca_certificate: x509.Certificate
    directory: Directory
    broker: BrokerConfig
    feed: DirectoryFeed
    state: AgentState
    _feed_drained: bool
    # Notices this agent took in (a refusal, a status, a receipt), as they come.
    events: list[dict[str, Any]]
    on_event: Callable[[dict[str, Any]], None] | None
    # Per document: (delivery, record it, then ack + receipt), run once its files are durable.
    _after_sync: list[tuple[Delivery, Callable[[], object], Callable[[], None]]]

    def refresh_directory(self) -> Directory:
        """Apply the directory versions published since this agent last looked (once)."""
        if not self._feed_drained:
            self._feed_drained = True
            self.feed.drain()
        return self.directory

    def resolve(self, envelope_id: str) -> str:
        """The full envelope id for an id or a unique prefix of one (inbox files show 12)."""
        wanted = envelope_id.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{1,32}", wanted):
            raise UsageError(f"{envelope_id!r} is not an envelope id (hex digits)")
        if len(wanted) == 32:
            return wanted
        found = self.state.resolve(wanted)
        if not found:
            raise CipherpostError(f"this agent knows no envelope starting with {wanted}")
        if len(found) > 1:
            raise UsageError(
                f"{wanted} is the start of {len(found)} envelopes ({', '.join(found[:4])}"
                f"{', …' if len(found) > 4 else ''}): give more digits"
            )
        return found[0]
