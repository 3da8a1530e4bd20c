"""The signed container every cipherpost object shares: ``msgpack([MAGIC, body, signature])``.

``signature = Ed25519(key, CONTEXT ‖ body)``, where ``body`` is itself msgpack
bytes, kept exactly as received: the signature is checked over those bytes,
never over a re-encoding. :func:`unpack` only splits the container and checks
its magic; the caller checks the size cap first, verifies the signature with
the key it trusts, and turns the ``ValueError`` into its own refusal.

Every signed container is read and written here, and nowhere else:

=====================================  ===========================================
magic                                  module
=====================================  ===========================================
``cipherpost.enrollment/1``            :mod:`keys.agency` (enrollment request)
``cipherpost-audit-key-request-v1``    :mod:`keys.auditkey` (audit key request)
``cipherpost.official-request/1``      :mod:`keys.officials` (official's request)
``cipherpost.directory/1``             :mod:`keys.directory` (signed directory)
``cipherpost.policy/1``                :mod:`gateway.policy` (signed policy)
``cipherpost.notice/1``                :mod:`envelopes.notices` (notices)
``cipherpost.official-signature/1``    :mod:`envelopes.signatures` (officials' signatures)
=====================================  ===========================================
"""

from __future__ import annotations

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def pack(magic: str, context: bytes, body: bytes, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """Sign ``body`` and wrap it; returns (container bytes, signature)."""
    sig = key.sign(context + body)
    return bytes(msgpack.packb([magic, body, sig], use_bin_type=True)), sig


def unpack(raw: bytes, magic: str) -> tuple[bytes, bytes]:
    """(body, signature) of a container with this magic; ``ValueError`` for anything else."""
    try:
        got, body, sig = msgpack.unpackb(
            raw, raw=False, use_list=False, max_map_len=0, max_ext_len=0
        )
    except (TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise ValueError("not a signed container") from e
    if got != magic or not isinstance(body, bytes) or not isinstance(sig, bytes):
        raise ValueError(f"not a {magic}")
    return body, sig
