"""The signed container every cipherpost object shares: ``msgpack([MAGIC, body, signature])``.

``signature = Ed25519(key, CONTEXT ‖ body)``, where ``body`` is itself msgpack
bytes, kept exactly as received: the signature is checked over those bytes,
never over a re-encoding. Notices, officials' requests and officials'
signatures are read and written through here.
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
