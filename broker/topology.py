"""Names and arguments of the RabbitMQ topology, in one place.

- ``cp.submit`` (direct) -> ``cp.gateway.submit``: every agency may only publish here.
- ``cp.deliver`` (direct, routing key = agency code) -> ``cp.inbox.<code>``: only the
  gateway publishes here.
- ``cp.dead`` (fanout) -> ``cp.dead``: poison and unroutable messages; nothing is dropped.
- ``cp.audit.checkpoints`` (fanout) -> ``cp.audit.witness``: the gateways' signed audit
  checkpoints, for the cipher department's witness.

Quorum queues everywhere (they replicate across a cluster), ``x-delivery-limit``
set (3.10 has no default), at-least-once dead-lettering (which needs
``overflow=reject-publish``).
"""

from __future__ import annotations

import re

from keys.codes import AgencyCode

SUBMIT_EXCHANGE = "cp.submit"
SUBMIT_QUEUE = "cp.gateway.submit"
SUBMIT_ROUTING_KEY = "submit"
DELIVER_EXCHANGE = "cp.deliver"
DEAD_EXCHANGE = "cp.dead"
DEAD_QUEUE = "cp.dead"
INBOX_PREFIX = "cp.inbox."
CHECKPOINT_EXCHANGE = "cp.audit.checkpoints"
WITNESS_QUEUE = "cp.audit.witness"
DELIVERY_LIMIT = 5

QUEUE_ARGUMENTS: dict[str, object] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_EXCHANGE,
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}
DEAD_QUEUE_ARGUMENTS: dict[str, object] = {"x-queue-type": "quorum"}


def inbox_queue(code: AgencyCode) -> str:
    """The inbox queue of an agency."""
    return f"{INBOX_PREFIX}{code.text}"


def agency_permissions(code: AgencyCode) -> dict[str, str]:
    """Anchored permissions of an agency's broker user: publish to submit, read its inbox."""
    return {
        "configure": "^$",
        "write": f"^{re.escape(SUBMIT_EXCHANGE)}$",
        "read": f"^{re.escape(inbox_queue(code))}$",
    }


def gateway_permissions() -> dict[str, str]:
    """The gateway reads the submit queue, writes deliveries and checkpoints only."""
    return {
        "configure": "^$",
        "write": f"^({re.escape(DELIVER_EXCHANGE)}|{re.escape(CHECKPOINT_EXCHANGE)})$",
        "read": f"^{re.escape(SUBMIT_QUEUE)}$",
    }


def witness_permissions() -> dict[str, str]:
    """The cipher department's witness reads the checkpoints and nothing else."""
    return {"configure": "^$", "write": "^$", "read": f"^{re.escape(WITNESS_QUEUE)}$"}
