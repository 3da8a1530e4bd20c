"""Names and arguments of the RabbitMQ topology, in one place.

- ``cp.submit`` (topic) -> ``cp.submit.<code>``: one submit lane per agency; an agency may
  publish only there, with its own code as routing key (a topic permission), so one
  agency's flood fills its own lane and nobody else's. The gateway consumes every lane.
- ``cp.deliver`` (direct, routing key = agency code) -> ``cp.inbox.<code>.<secret>``: only
  the gateway publishes here.
- ``cp.dead`` (fanout) -> ``cp.dead``: poison and unroutable messages; nothing is dropped.
- ``cp.directory`` (fanout) -> ``cp.directory.<code>.<secret>`` per agency, and one
  ``cp.directory.gateway.<id>`` per gateway (declared by the gateway): each new signed
  directory version, published by the cipher department.
- ``cp.audit.checkpoints`` (fanout) -> ``cp.audit.witness``: the gateways' signed audit
  checkpoints, for the cipher department's witness.

An agency's inbox and directory feed carry a random suffix that only provisioning, the
agency's own credentials file and the broker know. RabbitMQ checks no permission on a
*passive* ``queue.declare``: with names derived from the (public) agency code alone, any
enrolled agency could poll another's inbox depth and consumer count (who receives how much,
when, and who is online). Submit lanes keep code names (the gateway must find them from the
directory); a lane is drained as it fills, so its depth tells little (docs/operations.md).

Quorum queues everywhere (they replicate across a cluster), ``x-delivery-limit``
set (3.10 has no default), at-least-once dead-lettering (which needs
``overflow=reject-publish``).
"""

from __future__ import annotations

import re
import secrets

from keys.codes import AgencyCode
from keys.errors import UsageError

SUBMIT_EXCHANGE = "cp.submit"
SUBMIT_PREFIX = "cp.submit."
DELIVER_EXCHANGE = "cp.deliver"
DEAD_EXCHANGE = "cp.dead"
DEAD_QUEUE = "cp.dead"
INBOX_PREFIX = "cp.inbox."
DIRECTORY_EXCHANGE = "cp.directory"
DIRECTORY_PREFIX = "cp.directory."
GATEWAY_DIRECTORY_PREFIX = "cp.directory.gateway."
CHECKPOINT_EXCHANGE = "cp.audit.checkpoints"
WITNESS_QUEUE = "cp.audit.witness"
DELIVERY_LIMIT = 5

QUEUE_ARGUMENTS: dict[str, object] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_EXCHANGE,
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
    # Leaders spread over the nodes (3.10): one node's failure moves a third of them, not all.
    "x-queue-leader-locator": "balanced",
}
# A submit lane holds at most this much: beyond it the broker nacks the flooder's own
# publishes (reject-publish), and nobody else's lane is touched.
SUBMIT_MAX_LENGTH = 20_000
SUBMIT_MAX_BYTES = 2 * 1024 * 1024 * 1024
SUBMIT_QUEUE_ARGUMENTS: dict[str, object] = {
    **QUEUE_ARGUMENTS,
    "x-max-length": SUBMIT_MAX_LENGTH,
    "x-max-length-bytes": SUBMIT_MAX_BYTES,
}
# Per broker user (an agency's login): its agent needs a publisher, a consumer and a
# directory-feed connection, twice over for a `receive --follow` beside a `send`.
USER_LIMITS: dict[str, int] = {"max-connections": 8, "max-channels": 32}
DEAD_QUEUE_ARGUMENTS: dict[str, object] = {
    "x-queue-type": "quorum",
    "x-queue-leader-locator": "balanced",
}
# Directory feeds: quorum queues too. A classic queue lives on the one node whose management
# API made it: when that node died, every agent's consumer was cancelled and a revocation
# published meanwhile reached nobody (issue 10). Nothing there can be poison (every version
# is verified, then acked), so no delivery limit or dead-lettering.
FEED_QUEUE_ARGUMENTS: dict[str, object] = {
    "x-queue-type": "quorum",
    "x-queue-leader-locator": "balanced",
}


def submit_queue(code: AgencyCode) -> str:
    """The submit lane of an agency (routing key: its code)."""
    return f"{SUBMIT_PREFIX}{code.text}"


def lane_code(queue: str) -> AgencyCode | None:
    """The agency whose submit lane ``queue`` is (None for any other queue)."""
    if not queue.startswith(SUBMIT_PREFIX):
        return None
    try:
        return AgencyCode.parse(queue[len(SUBMIT_PREFIX) :])
    except UsageError:
        return None


# Bits of the random part of a private queue name: not guessable, not enumerable.
PRIVATE_SUFFIX_BYTES = 16


def inbox_prefix(code: AgencyCode) -> str:
    """What every inbox name of ``code`` starts with (the rest is its secret suffix)."""
    return f"{INBOX_PREFIX}{code.text}."


def directory_prefix(code: AgencyCode) -> str:
    """What every directory-feed name of ``code`` starts with."""
    return f"{DIRECTORY_PREFIX}{code.text}."


def private_name(prefix: str) -> str:
    """A fresh queue name: ``prefix`` and a random suffix (made once, at provisioning)."""
    return prefix + secrets.token_hex(PRIVATE_SUFFIX_BYTES)


def is_private_name(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` followed by a suffix :func:`private_name` could have made."""
    suffix = name[len(prefix) :]
    return (
        name.startswith(prefix)
        and len(suffix) == 2 * PRIVATE_SUFFIX_BYTES
        and all(c in "0123456789abcdef" for c in suffix)
    )


def gateway_directory_queue(gateway_id: str) -> str:
    """The queue where one gateway instance finds new directory versions."""
    return f"{GATEWAY_DIRECTORY_PREFIX}{gateway_id}"


_SUFFIX = re.compile(r"\.[0-9a-f]{" + str(2 * PRIVATE_SUFFIX_BYTES) + r"}(?![0-9a-f])")


def shown(queues: str) -> str:
    """Queue names as logs and messages show them: private suffixes masked."""
    return _SUFFIX.sub(".<private>", queues)


def agency_permissions(inbox: str, feed: str) -> dict[str, str]:
    """Anchored permissions of an agency's broker user: publish to submit, read its own
    inbox and directory feed (their exact private names)."""
    return {
        "configure": "^$",
        "write": f"^{re.escape(SUBMIT_EXCHANGE)}$",
        "read": f"^({re.escape(inbox)}|{re.escape(feed)})$",
    }


def agency_topic_permissions(code: AgencyCode) -> dict[str, str]:
    """On ``cp.submit`` an agency may publish with its own code as routing key only."""
    return {"exchange": SUBMIT_EXCHANGE, "write": f"^{re.escape(code.text)}$", "read": "^$"}


def gateway_permissions() -> dict[str, str]:
    """The gateway reads the submit queue, writes deliveries and checkpoints, and keeps one
    directory queue per instance (declared and bound by the instance itself)."""
    own = re.escape(GATEWAY_DIRECTORY_PREFIX) + r"[\w.-]+"
    return {
        "configure": f"^{own}$",
        "write": f"^({re.escape(DELIVER_EXCHANGE)}|{re.escape(CHECKPOINT_EXCHANGE)}|{own})$",
        "read": f"^({re.escape(SUBMIT_PREFIX)}.+|{re.escape(DIRECTORY_EXCHANGE)}|{own})$",
    }


def publisher_permissions() -> dict[str, str]:
    """The cipher department publishes directory versions, nothing else."""
    return {"configure": "^$", "write": f"^{re.escape(DIRECTORY_EXCHANGE)}$", "read": "^$"}


def witness_permissions() -> dict[str, str]:
    """The cipher department's witness reads the checkpoints and nothing else."""
    return {"configure": "^$", "write": "^$", "read": f"^{re.escape(WITNESS_QUEUE)}$"}
