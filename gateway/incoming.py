"""What the broker vouches for about one message: who published it.

RabbitMQ validates ``user_id`` against the connection's login, and its topic
permission lets a login publish to ``cp.submit`` only with its own code as
routing key. The lane a message arrives in proves nothing on RabbitMQ 3.10:
a ``CC``/``BCC`` header routes a copy into any lane without a topic-permission
check (rabbitmq-server#12553, fixed in 4.0).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from broker.topology import lane_code
from envelopes.errors import EnvelopeRefused, Reason
from keys.codes import AgencyCode
from keys.errors import UsageError

__all__ = ["Incoming", "key_owner", "misrouted", "publisher_code", "verified_publisher"]


@dataclass(frozen=True)
class Incoming:
    """One message as the broker vouches for it."""

    body: bytes
    kind: str | None
    user_id: str | None  # validated by RabbitMQ against the login, when set
    queue: str = ""  # the submit lane it came through
    # The routing key it was published with: RabbitMQ's topic permission lets only the
    # lane's owner use its code. The lane alone proves nothing on RabbitMQ 3.10: CC and BCC
    # headers route a copy into any lane and are not checked against topic permissions.
    routing_key: str | None = None  # None where unknown (fast tests): the lane stands for it

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def misrouted(message: Incoming) -> bool:
    """Published with one agency's routing key, delivered in another's lane (CC/BCC)."""
    lane = lane_code(message.queue) if message.queue else None
    return message.routing_key is not None and lane is not None and message.routing_key != lane.text


def verified_publisher(message: Incoming, signer: AgencyCode, login_prefix: str) -> AgencyCode:
    """The agency RabbitMQ vouches published this, which must be the one that signed it."""
    publisher = publisher_code(message, login_prefix)
    if publisher is None:
        raise EnvelopeRefused(Reason.PUBLISHER_MISSING)
    lane = lane_code(message.queue) if message.queue else publisher
    if publisher != signer or lane != publisher:
        raise EnvelopeRefused(Reason.PUBLISHER)
    return publisher


def publisher_code(message: Incoming, login_prefix: str) -> AgencyCode | None:
    """The agency of the login RabbitMQ validated as ``user_id`` (None: none, not an agency)."""
    login = message.user_id
    if not login or not login.startswith(login_prefix):
        return None
    try:
        return AgencyCode.parse(login[len(login_prefix) :])
    except UsageError:
        return None


def key_owner(message: Incoming) -> AgencyCode | None:
    """The agency whose routing key this was published with: its topic permission lets only
    its own login use it (the lane when the key is unknown: the in-memory transport)."""
    if message.routing_key is None:  # not from the broker (the in-memory transport)
        return lane_code(message.queue) if message.queue else None
    try:
        return AgencyCode.parse(message.routing_key)
    except UsageError:
        return None
