"""Helpers shared by the red-team tests (``tests/test_redteam_*.py``).

The attacker builds what the project's own code would refuse to build (a
notice with any status text, two validly signed segments at one position, a
directory that revokes or retires someone mid-envelope): these helpers do it
with the agency's own keys, as THREATS.md A1 can.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import msgpack

from envelopes import _crypto
from envelopes.frames import encode_header_frame, encode_segment_frame, segment_signed_message
from envelopes.header import Header
from envelopes.notices import CONTEXT as NOTICE_CONTEXT
from envelopes.notices import MAGIC as NOTICE_MAGIC
from gateway.audit import AuditStore
from keys.directory import Directory, TrustState, build_directory
from tests.gateway_kit import Kit, _header_raw
from tests.vectors.generate import _frames


def header(cpe: bytes) -> Header:
    return Header.parse(_header_raw(cpe))


def records(gw) -> list[dict]:
    store = AuditStore(gw.config.audit_db, readonly=True)
    try:
        return store.records()
    finally:
        store.close()


def leaf_bytes(gw, rows: list[dict]) -> int:
    store = AuditStore(gw.config.audit_db, readonly=True)
    try:
        return sum(len(store.leaf(str(r["log_id"]), int(r["leaf_index"]))) for r in rows)
    finally:
        store.close()


def raw_notice(kit: Kit, signer: str, addressee: str, cpe: bytes, *, kind: str = "status",
               status: str = "03", note: str = "", when: int | None = None) -> bytes:  # fmt: skip
    """A notice signed by ``signer``'s own key, built by hand (no client-side checks)."""
    h = header(cpe)
    body = msgpack.packb(
        [
            kind,
            h.envelope_id,
            h.hash,
            signer,
            addressee,
            status,
            "",
            "",
            int(kit.now.timestamp()) if when is None else when,
            note,
        ],
        use_bin_type=True,
    )
    sig = _crypto.sign(kit.keys[signer].signing_key, NOTICE_CONTEXT, body)
    return bytes(msgpack.packb([NOTICE_MAGIC, body, sig], use_bin_type=True))


def resigned_part(kit: Kit, signer: str, cpe: bytes, index: int) -> bytes:
    """Part ``index`` of ``cpe`` with another ciphertext of the same length (its first byte
    flipped), validly segment-signed by ``signer``: a second, different part at one position."""
    (h_raw, h_sig), segs = _frames(cpe)
    s = segs[index]
    ciphertext = bytes([s.ciphertext[0] ^ 0xFF]) + s.ciphertext[1:]
    message = segment_signed_message(hashlib.sha256(h_raw).digest(), index, s.final, ciphertext)
    sig = _crypto.sign(kit.keys[signer].signing_key, _crypto.SEGMENT_CONTEXT, message)
    return encode_header_frame(h_raw, h_sig) + encode_segment_frame(index, s.final, ciphertext, sig)


def badly_signed_part(cpe: bytes, index: int = 0) -> bytes:
    """Part ``index`` of ``cpe`` (header intact and validly signed) with a bad segment signature."""
    (h_raw, h_sig), segs = _frames(cpe)
    s = segs[index]
    return encode_header_frame(h_raw, h_sig) + encode_segment_frame(
        s.index, s.final, s.ciphertext, b"\1" * 64
    )


def new_directory(kit: Kit) -> Directory:
    """The next directory version from the kit's CA state (after a revoke or a retire)."""
    data = build_directory(
        kit.world.authority, kit.world.certs, kit.now - dt.timedelta(minutes=1), 30
    )
    return Directory.load(data, TrustState(None), now=kit.now)
