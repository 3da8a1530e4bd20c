"""The AMQP side of the wire: message kinds, ``x-cp-*`` headers, and each kind's properties.

Every message cipherpost publishes is built here and its kind read here (``docs/wire.md``
describes each one; the body bytes are ``docs/envelope-v1.md``'s and
:mod:`keys.container`'s). The AMQP ``type`` property names the kind; it only chooses
which parser a consumer tries, never what is trusted: the body proves itself by its
signatures. ``user_id`` is the one property RabbitMQ vouches for (it refuses a message
whose ``user_id`` is not the connection's login); the ``x-cp-*`` headers of a part are
the publisher's claims, for people and tools looking at a queue, and no decision reads
them (``x-cp-seq`` is the confirming publisher's own bookkeeping).
"""

from __future__ import annotations

import pika

# Message kinds: the AMQP ``type`` property.
MESSAGE_PART = "part"
MESSAGE_NOTICE = "notice"
MESSAGE_AUDIT_PROOF = "audit-proof"
MESSAGE_CHECKPOINT = "checkpoint"
MESSAGE_DIRECTORY = "directory"
KINDS = (MESSAGE_PART, MESSAGE_NOTICE, MESSAGE_AUDIT_PROOF, MESSAGE_CHECKPOINT, MESSAGE_DIRECTORY)

# The AMQP ``content_type`` of each body format.
CONTENT_PART = "application/x-cipherpost-part"
CONTENT_NOTICE = "application/x-cipherpost-notice"
CONTENT_DIRECTORY = "application/x-cipherpost-directory"
CONTENT_JSON = "application/json"

# Application headers. ``CC`` is RabbitMQ's sender-selected distribution: the broker also
# routes the message to each routing key listed (one publish for every recipient).
HEADER_ENVELOPE_ID = "x-cp-envelope-id"
HEADER_PART = "x-cp-part"
HEADER_PARTS = "x-cp-parts"
HEADER_SENDER = "x-cp-sender"
HEADER_SEQ = "x-cp-seq"
HEADER_CC = "CC"
HEADERS = (HEADER_ENVELOPE_ID, HEADER_PART, HEADER_PARTS, HEADER_SENDER, HEADER_SEQ, HEADER_CC)

PERSISTENT = pika.DeliveryMode.Persistent.value


def _properties(
    kind: str,
    content_type: str,
    user_id: str | None = None,
    headers: dict[str, object] | None = None,
) -> pika.BasicProperties:
    return pika.BasicProperties(
        type=kind,
        content_type=content_type,
        user_id=user_id,
        headers=headers,
        delivery_mode=PERSISTENT,
    )


def submitted_part(login: str, envelope_id: str, index: int, count: int) -> pika.BasicProperties:
    """A part an agent submits to its lane (``user_id`` = its broker login)."""
    headers: dict[str, object] = {
        HEADER_ENVELOPE_ID: envelope_id,
        HEADER_PART: index,
        HEADER_PARTS: count,
    }
    return _properties(MESSAGE_PART, CONTENT_PART, login, headers)


def forwarded_part(
    cc: list[str], envelope_id: str, index: int, count: int, sender: str
) -> pika.BasicProperties:
    """A part the gateway forwards to its recipients (the first by routing key, others by CC)."""
    headers: dict[str, object] = {
        HEADER_CC: cc,
        HEADER_ENVELOPE_ID: envelope_id,
        HEADER_PART: index,
        HEADER_PARTS: count,
        HEADER_SENDER: sender,
    }
    return _properties(MESSAGE_PART, CONTENT_PART, None, headers)


def notice(login: str | None = None) -> pika.BasicProperties:
    """A notice: submitted by an agent (with its ``login``) or relayed/sent by the gateway."""
    return _properties(MESSAGE_NOTICE, CONTENT_NOTICE, login)


def audit_proof() -> pika.BasicProperties:
    """The gateway's inclusion proofs for one sender's accepted envelopes."""
    return _properties(MESSAGE_AUDIT_PROOF, CONTENT_JSON)


def checkpoint() -> pika.BasicProperties:
    """A gateway's signed audit checkpoint (new, or the last one again as a heartbeat)."""
    return _properties(MESSAGE_CHECKPOINT, CONTENT_JSON)


def directory() -> pika.BasicProperties:
    """A signed directory version, published by the cipher department."""
    return _properties(MESSAGE_DIRECTORY, CONTENT_DIRECTORY)


class Received:
    """What a received message's properties say; mixed into every delivery class."""

    properties: pika.BasicProperties

    @property
    def user_id(self) -> str | None:
        """The broker-validated publisher login, if the publisher set it."""
        return user_id_of(self.properties)

    @property
    def kind(self) -> str | None:
        """The AMQP ``type`` property."""
        return kind_of(self.properties)

    def header(self, name: str) -> object:
        """One application header."""
        return header_of(self.properties, name)


def kind_of(properties: pika.BasicProperties) -> str | None:
    """The message kind (AMQP ``type``) as the publisher claimed it."""
    kind: str | None = properties.type
    return kind


def user_id_of(properties: pika.BasicProperties) -> str | None:
    """The publisher's login as RabbitMQ validated it, if the publisher set one."""
    user_id: str | None = properties.user_id
    return user_id


def header_of(properties: pika.BasicProperties, name: str) -> object:
    """One application header (``None`` if absent)."""
    return (properties.headers or {}).get(name)
