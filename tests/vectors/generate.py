"""Generate the envelope v1 test vectors (``tests/vectors/envelope-v1/``).

Run: ``python tests/vectors/generate.py [OUT_DIR]``. Each vector is one
``.cpe`` file with exactly one expected outcome in ``manifest.json``:

- ``expect: "ok"`` - verifies, and opens for ``open_as`` with the original bytes;
- ``expect: "refused"`` - fails at ``stage`` (``verify`` or ``open``) with a
  message containing ``reason``.

Everything is checked against ``directory.cpd`` at the instant ``now`` of the
manifest. The agencies' key files (passphrase ``PASSPHRASE``) are kept so the
tests can open; they are test fixtures, never used anywhere else.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import msgpack

# Run as a script from a checkout: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import envelopes
from envelopes import _crypto
from envelopes.frames import (
    FrameReader,
    encode_header_frame,
    encode_segment_frame,
    parse_header_frame,
    parse_segment_frame,
    segment_signed_message,
)
from envelopes.header import MAGIC, Header
from keys import agency, ca
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.levels import Level, Urgency

PASSPHRASE = b"cipherpost-test-vectors"
SEGMENT = 1024  # small segments: multi-segment vectors stay a few KiB
SENDER = "000.00.00.H41"
R1 = "000.01.12.H41"
R2 = "000.02.12.H41"
OUTSIDER = "000.03.12.H41"
REVOKED = "000.04.12.H41"
UNKNOWN = "000.05.12.H41"
AGENCIES = {
    SENDER: ("UBND tỉnh H41", Level.TOI_MAT),
    R1: ("UBND xã An Bình", Level.TOI_MAT),
    R2: ("UBND xã Phú Mỹ", Level.MAT),
    OUTSIDER: ("UBND xã Ngoài Cuộc", Level.TOI_MAT),
    REVOKED: ("UBND xã Đã Thu Hồi", Level.TOI_MAT),
    UNKNOWN: ("Đơn vị Chưa Đăng Ký", Level.TOI_MAT),
}
KEPT_AGENCIES = (R1, R2, OUTSIDER)  # the ones tests open as


def _document(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def _frames(data: bytes) -> tuple[tuple[bytes, bytes], list[envelopes.frames.SegmentFrame]]:
    reader = FrameReader(io.BytesIO(data))
    header = parse_header_frame(reader.next())
    segments = []
    while (obj := reader.next()) is not None:
        segments.append(parse_segment_frame(obj))
    return header, segments


def _join(header: tuple[bytes, bytes], segments: list[Any]) -> bytes:
    out = encode_header_frame(*header)
    for s in segments:
        out += encode_segment_frame(s.index, s.final, s.ciphertext, s.signature)
    return out


def _resign(keys: agency.AgencyKeys, header_raw: bytes, segments: list[Any]) -> bytes:
    """Sign ``header_raw`` and every segment again with ``keys`` (ciphertext unchanged)."""
    header_hash = _crypto.sha256(header_raw)
    sig = _crypto.sign(keys.signing_key, _crypto.HEADER_CONTEXT, header_raw)
    out = encode_header_frame(header_raw, sig)
    for s in segments:
        msg = segment_signed_message(header_hash, s.index, s.final, s.ciphertext)
        out += encode_segment_frame(
            s.index,
            s.final,
            s.ciphertext,
            _crypto.sign(keys.signing_key, _crypto.SEGMENT_CONTEXT, msg),
        )
    return out


def _edit_header(raw: bytes, **changes: Any) -> bytes:
    """Re-encode header bytes with some positional fields changed."""
    fields = list(msgpack.unpackb(raw, raw=False))
    positions = {"version": 1, "sender": 5, "sender_kid": 6, "label": 7, "recipients": 11}
    for name, value in changes.items():
        fields[positions[name]] = value
    return bytes(msgpack.packb(fields, use_bin_type=True))


def generate(out: Path, now: dt.datetime) -> dict[str, Any]:
    """Write a complete vector set into ``out`` (replaced) and return the manifest."""
    if out.exists():
        shutil.rmtree(out)
    work = out / "_work"
    work.mkdir(parents=True)
    issued = now - dt.timedelta(days=10)  # certificates predate the "expired" vector
    ca.init_ca(work / "ca", PASSPHRASE, issued, "Test Vector CA")
    authority = ca.open_ca(work / "ca", PASSPHRASE)
    keys: dict[str, agency.AgencyKeys] = {}
    for code, (name, clearance) in AGENCIES.items():
        keys[code] = agency.enroll(work / code, AgencyCode.parse(code), name, PASSPHRASE, issued)
        request = agency.EnrollmentRequest.parse((work / code / agency.REQUEST_FILE).read_bytes())
        target = work / ("certs-unknown" if code == UNKNOWN else "certs")
        ca.issue(authority, request, clearance, target, issued, valid_days=3650)
    # Sealing happens with a directory that still knows everyone ...
    shutil.copytree(work / "certs", work / "certs-all")
    for p in (work / "certs-unknown").iterdir():
        shutil.copy(p, work / "certs-all")
    before = Directory.load(
        build_directory(authority, work / "certs-all", issued, valid_days=3650),
        TrustState(None),
        now=now,
    )
    # ... the published one has REVOKED revoked and has never heard of UNKNOWN.
    ca.revoke(authority, AgencyCode.parse(REVOKED), "vector: revoked sender", now)
    final_bytes = build_directory(authority, work / "certs", now, valid_days=3650)

    def seal(
        sender: str,
        to: list[str],
        doc: bytes,
        *,
        level: Level = Level.MAT,
        at: dt.datetime = now,
        lifetime: dt.timedelta = dt.timedelta(days=30),
    ) -> bytes:
        dst = io.BytesIO()
        envelopes.seal(
            io.BytesIO(doc),
            dst,
            keys=keys[sender],
            directory=before,
            to=[AgencyCode.parse(c) for c in to],
            level=level,
            size=len(doc),
            urgency=Urgency.KHAN,
            metadata=envelopes.Metadata(subject="Vector", filename="v.bin"),
            lifetime=lifetime,
            now=at,
            segment_size=SEGMENT,
        )
        return dst.getvalue()

    vectors: dict[str, tuple[bytes, dict[str, Any]]] = {}
    docs: dict[str, bytes] = {}

    def ok(name: str, data: bytes, doc: bytes, open_as: str, note: str) -> None:
        vectors[name] = (data, {"expect": "ok", "open_as": open_as, "note": note})
        docs[name] = doc

    def refused(
        name: str, data: bytes, stage: str, reason: str, note: str, open_as: str = R1
    ) -> None:
        vectors[name] = (
            data,
            {
                "expect": "refused",
                "stage": stage,
                "reason": reason,
                "open_as": open_as,
                "note": note,
            },
        )

    doc_small = _document(100, 1)
    doc_multi = _document(2500, 2)  # + metadata: 3 segments of 1 KiB
    good = seal(SENDER, [R1, R2], doc_multi)
    ok("ok-one-segment", seal(SENDER, [R1], doc_small), doc_small, R1, "one recipient, one segment")
    ok("ok-multi-segment", good, doc_multi, R2, "two recipients, three segments")
    ok("ok-empty-document", seal(SENDER, [R1], b""), b"", R1, "a 0-byte document")
    boundary = _document(
        SEGMENT * 2 - len(envelopes.Metadata(subject="Vector", filename="v.bin").encode()), 3
    )
    ok(
        "ok-segment-boundary",
        seal(SENDER, [R1], boundary),
        boundary,
        R1,
        "payload exactly two full segments",
    )

    (h_raw, h_sig), segs = _frames(good)
    header = Header.parse(h_raw)

    bad_sig = bytearray(h_sig)
    bad_sig[0] ^= 1
    refused(
        "bad-header-signature",
        _join((h_raw, bytes(bad_sig)), segs),
        "verify",
        "bad header signature",
        "one bit of the header signature flipped",
    )
    s1 = segs[1]
    forged = envelopes.frames.SegmentFrame(
        s1.index, s1.final, s1.ciphertext, bytes([s1.signature[0] ^ 1]) + s1.signature[1:]
    )
    refused(
        "bad-segment-signature",
        _join((h_raw, h_sig), [segs[0], forged, segs[2]]),
        "verify",
        "bad signature on segment 1",
        "one bit of segment 1's signature flipped",
    )
    refused(
        "label-changed",
        _join((_edit_header(h_raw, label=["thuong", []]), h_sig), segs),
        "verify",
        "bad header signature",
        "level mat relabelled thuong, signature kept",
    )
    recips = list(msgpack.unpackb(h_raw, raw=False)[11])[:1]
    refused(
        "recipients-changed",
        _join((_edit_header(h_raw, recipients=recips), h_sig), segs),
        "verify",
        "bad header signature",
        "a recipient removed, signature kept",
    )
    stripped = _edit_header(h_raw, sender=OUTSIDER, sender_kid=keys[OUTSIDER].sign_key_id)
    refused(
        "stripped-resigned",
        _resign(keys[OUTSIDER], stripped, segs),
        "open",
        "payload key does not open",
        "OUTSIDER replaced the sender and re-signed header and segments (surreptitious"
        " forwarding): verifies as OUTSIDER's, but no recipient can open it",
    )
    refused(
        "truncated", _join((h_raw, h_sig), segs[:-1]), "verify", "truncated", "last segment dropped"
    )
    refused(
        "reordered",
        _join((h_raw, h_sig), [segs[1], segs[0], segs[2]]),
        "verify",
        "out of order",
        "segments 0 and 1 swapped",
    )
    other = seal(SENDER, [R1, R2], _document(2500, 9))
    _, other_segs = _frames(other)
    refused(
        "spliced",
        _join((h_raw, h_sig), [segs[0], other_segs[1], segs[2]]),
        "verify",
        "bad signature on segment 1",
        "segment 1 taken from another envelope of the same sender",
    )
    refused(
        "expired",
        seal(SENDER, [R1], doc_small, at=now - dt.timedelta(days=3), lifetime=dt.timedelta(days=1)),
        "verify",
        "expired",
        "expired two days before the check",
    )
    refused(
        "wrong-recipient",
        seal(SENDER, [R1], doc_small),
        "open",
        "is not a recipient",
        "opened by an agency that is not named",
        open_as=OUTSIDER,
    )
    refused(
        "revoked-sender",
        seal(REVOKED, [R1], doc_small),
        "verify",
        "is revoked",
        "sealed before the sender was revoked",
    )
    refused(
        "unknown-sender",
        seal(UNKNOWN, [R1], doc_small),
        "verify",
        "not in the directory",
        "sender certified, but not in the published directory",
    )
    v2 = _edit_header(h_raw, version=2)
    refused(
        "version-changed",
        _resign(keys[SENDER], v2, segs),
        "verify",
        "unsupported envelope version",
        "version 2, properly signed by the sender",
    )
    big = bytes(msgpack.packb([MAGIC, 1, b"\0" * (300 * 1024)], use_bin_type=True))
    refused(
        "oversized-header",
        encode_header_frame(big, b"\0" * 64),
        "verify",
        "larger than the limit",
        "a 300 KiB header",
    )
    refused(
        "malformed-msgpack",
        b"\xc1\x93\xff garbage",
        "verify",
        "malformed",
        "bytes that are not msgpack",
    )
    refused("empty-file", b"", "verify", "empty", "a 0-byte file")
    refused(
        "trailing-data",
        good + encode_segment_frame(3, True, b"x" * 40, b"\0" * 64),
        "verify",
        "after its final segment",
        "an extra frame after the final segment",
    )
    refused(
        "cut-mid-frame",
        good[: len(good) - 10],
        "verify",
        "middle of a frame",
        "the file stops inside the last frame",
    )
    flag = envelopes.frames.SegmentFrame(
        segs[2].index, False, segs[2].ciphertext, segs[2].signature
    )
    refused(
        "final-flag-cleared",
        _join((h_raw, h_sig), [segs[0], segs[1], flag]),
        "verify",
        "wrong final flag",
        "the last segment claims not to be final",
    )
    assert header.segment_count == 3

    (out / "agencies").mkdir()
    for code in KEPT_AGENCIES:
        shutil.copytree(
            work / code, out / "agencies" / code, ignore=shutil.ignore_patterns("trust.json")
        )
    (out / "directory.cpd").write_bytes(final_bytes)
    shutil.copy(work / "ca" / "ca.crt", out / "ca.crt")
    manifest: dict[str, Any] = {
        "format": "cipherpost envelope v1 test vectors",
        "generator": "tests/vectors/generate.py",
        "now": now.isoformat(),
        "passphrase": PASSPHRASE.decode(),
        "vectors": {},
    }
    for name, (data, meta) in vectors.items():
        (out / f"{name}.cpe").write_bytes(data)
        if name in docs:
            (out / f"{name}.plain").write_bytes(docs[name])
        manifest["vectors"][name] = meta
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(work)
    return manifest


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "envelope-v1"
    result = generate(target, dt.datetime.now(dt.UTC).replace(microsecond=0))
    print(f"{len(result['vectors'])} vectors written to {target}")
