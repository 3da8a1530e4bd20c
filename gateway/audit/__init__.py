"""The gateway's audit store: an append-only Merkle log of every decision (SQLite, WAL).

Each record keeps its canonical leaf bytes (``leaf``: msgpack of the fields in
a fixed order, :data:`LEAF_FIELDS`) and becomes the next leaf of its gateway's
RFC 6962 log (``log_id``); the perfect-subtree hashes are stored beside it
(``nodes``) so roots and proofs cost O(log n) reads. Never plaintext, never
keys. UPDATE and DELETE are refused by triggers (an operator with the file can
still edit it: that is what the signed checkpoints and the witness catch).

Beside the leaves, four tables drive the gateway and are **derived from the
leaves** (:meth:`AuditStore.state_problems` checks them against the leaves,
both ways; ``audit verify`` reports any difference):

- ``decisions``: the one decision per exact signed header, keyed on
  (envelope id, header hash). A second header under a decided id never gets a
  decision of its own: the store records what the resolver says instead (the
  gateway: an ``invariant:id-reuse`` refusal).
- ``forwarded``: the one accepted part per position of an accepted header,
  with the digest of its bytes (a byte-identical copy is a duplicate, another
  one a conflict, recorded as the resolver says).
- ``relayed``: notices relayed once per (envelope, signer, kind, status).
- ``refused``: verified messages refused once (by the digest of their bytes).

``confirmed`` (which forwards the broker confirmed) is operational only: a
lost row means one more forward, which the agents deduplicate.
"""

from __future__ import annotations

from gateway.audit.records import (
    ACCEPTED,
    LEAF_FIELDS,
    LEAF_VERSION,
    NOTICE_EVENTS,
    PART,
    RECORD_COLUMNS,
    RECORD_FIELDS,
    REFUSAL_EVENTS,
    REFUSED,
    SUBMISSION,
    Decided,
    Entry,
    Outcome,
    Record,
    Resolver,
    decode_leaf,
    notice_reason,
    relay_key,
)
from gateway.audit.schema import APPEND_ONLY, SCHEMA, TRIGGERS
from gateway.audit.store import MAX_RECENT_NODES, AuditStore

__all__ = [
    "ACCEPTED",
    "APPEND_ONLY",
    "LEAF_FIELDS",
    "LEAF_VERSION",
    "MAX_RECENT_NODES",
    "NOTICE_EVENTS",
    "PART",
    "RECORD_COLUMNS",
    "RECORD_FIELDS",
    "REFUSAL_EVENTS",
    "REFUSED",
    "SCHEMA",
    "SUBMISSION",
    "TRIGGERS",
    "AuditStore",
    "Decided",
    "Entry",
    "Outcome",
    "Record",
    "Resolver",
    "decode_leaf",
    "notice_reason",
    "relay_key",
]
