"""Generate the envelope v1 test vectors (``tests/vectors/envelope-v1/``).

Run: ``python tests/vectors/generate.py [OUT_DIR]``. Each vector is one
``.cpe`` file with exactly one expected outcome in ``manifest.json``:

- ``expect: "ok"`` - verifies, and opens for ``open_as`` with the original bytes;
- otherwise ``expect`` is the slug of the one :class:`envelopes.errors.Reason`
  it is refused with, at ``stage``: ``verify`` (and then ``open`` too, for the
  same reason) or ``open`` only (it verifies: the gateway cannot tell).

Forged vectors (a level above a clearance, invisible salamanders, ...) are made
with ``tests/forge.py``: what an enrolled agency can sign with its own keys.

Everything is checked against ``directory.cpd`` at the instant ``now`` of the
manifest. The agencies' key files (passphrase ``PASSPHRASE``) are kept so the
tests can open; they are test fixtures, never used anywhere else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

# Run as a script from a checkout: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import envelopes
from envelopes import _crypto
from envelopes.errors import Reason
from envelopes.frames import encode_header_frame, encode_segment_frame
from envelopes.header import MAGIC, Header
from keys import agency, ca
from keys.certs import key_id
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.levels import Level, Urgency
from tests.forge import Forgery, edit_header, frames, join, resign

PASSPHRASE = b"cipherpost-test-vectors"
SEGMENT = 1024  # small segments: multi-segment vectors stay a few KiB
SENDER = "000.00.00.H41"
R1 = "000.01.12.H41"
R2 = "000.02.12.H41"
OUTSIDER = "000.03.12.H41"
REVOKED = "000.04.12.H41"
UNKNOWN = "000.05.12.H41"
MAT_SENDER = "000.06.12.H41"
EXPIRED_CERT = "000.07.12.H41"
AGENCIES = {
    SENDER: ("UBND tỉnh H41", Level.TOI_MAT),
    R1: ("UBND xã An Bình", Level.TOI_MAT),
    R2: ("UBND xã Phú Mỹ", Level.MAT),
    OUTSIDER: ("UBND xã Ngoài Cuộc", Level.TOI_MAT),
    REVOKED: ("UBND xã Đã Thu Hồi", Level.TOI_MAT),
    UNKNOWN: ("Đơn vị Chưa Đăng Ký", Level.TOI_MAT),
    MAT_SENDER: ("UBND xã Chỉ Mật", Level.MAT),
    EXPIRED_CERT: ("UBND xã Hết Hạn", Level.TOI_MAT),
}
KEPT_AGENCIES = (R1, R2, OUTSIDER)  # the ones tests open as


# The names tests/test_gateway_refusals.py imports from here (the helpers moved to tests/forge.py).
_frames, _join, _resign, _edit_header = frames, join, resign, edit_header


def _document(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


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
        days = 1 if code == EXPIRED_CERT else 3650
        ca.issue(authority, request, clearance, target, issued, valid_days=days)
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
        name: str, data: bytes, stage: str, reason: Reason, note: str, open_as: str = R1
    ) -> None:
        """``reason``: the one expected outcome (its slug); ``stage``: verify, or open only."""
        vectors[name] = (
            data,
            {"expect": reason.value, "stage": stage, "open_as": open_as, "note": note},
        )

    def forge(signer: str, to: list[str], **fields: Any) -> bytes:
        return Forgery(keys[signer], before, to, now, segment_size=SEGMENT, **fields).build()

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

    (h_raw, h_sig), segs = frames(good)
    header = Header.parse(h_raw)

    bad_sig = bytearray(h_sig)
    bad_sig[0] ^= 1
    refused(
        "bad-header-signature",
        join((h_raw, bytes(bad_sig)), segs),
        "verify",
        Reason.SIGNATURE,
        "one bit of the header signature flipped",
    )
    s1 = segs[1]
    flipped = dataclasses.replace(s1, signature=bytes([s1.signature[0] ^ 1]) + s1.signature[1:])
    refused(
        "bad-segment-signature",
        join((h_raw, h_sig), [segs[0], flipped, segs[2]]),
        "verify",
        Reason.SEGMENT_SIGNATURE,
        "one bit of segment 1's signature flipped",
    )
    refused(
        "label-changed",
        join((edit_header(h_raw, label=["thuong", []]), h_sig), segs),
        "verify",
        Reason.SIGNATURE,
        "level mat relabelled thuong, signature kept",
    )
    recips = list(msgpack.unpackb(h_raw, raw=False)[11])[:1]
    refused(
        "recipients-changed",
        join((edit_header(h_raw, recipients=recips), h_sig), segs),
        "verify",
        Reason.SIGNATURE,
        "a recipient removed, signature kept",
    )
    stripped = edit_header(h_raw, sender=OUTSIDER, sender_kid=keys[OUTSIDER].sign_key_id)
    refused(
        "stripped-resigned",
        resign(keys[OUTSIDER], stripped, segs),
        "open",
        Reason.DECRYPT,
        "OUTSIDER replaced the sender and re-signed header and segments (surreptitious"
        " forwarding): verifies as OUTSIDER's, but no recipient can open it",
    )
    refused(
        "truncated",
        join((h_raw, h_sig), segs[:-1]),
        "verify",
        Reason.SEGMENT,
        "last segment dropped",
    )
    refused(
        "reordered",
        join((h_raw, h_sig), [segs[1], segs[0], segs[2]]),
        "verify",
        Reason.SEGMENT,
        "segments 0 and 1 swapped",
    )
    other = seal(SENDER, [R1, R2], _document(2500, 9))
    _, other_segs = frames(other)
    refused(
        "spliced",
        join((h_raw, h_sig), [segs[0], other_segs[1], segs[2]]),
        "verify",
        Reason.SEGMENT_SIGNATURE,
        "segment 1 taken from another envelope of the same sender",
    )
    refused(
        "expired",
        seal(SENDER, [R1], doc_small, at=now - dt.timedelta(days=3), lifetime=dt.timedelta(days=1)),
        "verify",
        Reason.EXPIRED,
        "expired two days before the check",
    )
    refused(
        "wrong-recipient",
        seal(SENDER, [R1], doc_small),
        "open",
        Reason.NOT_RECIPIENT,
        "opened by an agency that is not named",
        open_as=OUTSIDER,
    )
    refused(
        "revoked-sender",
        seal(REVOKED, [R1], doc_small),
        "verify",
        Reason.SENDER_REVOKED,
        "sealed before the sender was revoked",
    )
    refused(
        "unknown-sender",
        seal(UNKNOWN, [R1], doc_small),
        "verify",
        Reason.SENDER_UNKNOWN,
        "sender certified, but not in the published directory",
    )
    v2 = edit_header(h_raw, version=2)
    refused(
        "version-changed",
        resign(keys[SENDER], v2, segs),
        "verify",
        Reason.VERSION,
        "version 2, properly signed by the sender",
    )
    big = bytes(msgpack.packb([MAGIC, 1, b"\0" * (300 * 1024)], use_bin_type=True))
    refused(
        "oversized-header",
        encode_header_frame(big, b"\0" * 64),
        "verify",
        Reason.OVERSIZED,
        "a 300 KiB header",
    )
    refused(
        "malformed-msgpack",
        b"\xc1\x93\xff garbage",
        "verify",
        Reason.FORMAT,
        "bytes that are not msgpack",
    )
    refused("empty-file", b"", "verify", Reason.FORMAT, "a 0-byte file")
    refused(
        "trailing-data",
        good + encode_segment_frame(3, True, b"x" * 40, b"\0" * 64),
        "verify",
        Reason.SEGMENT,
        "an extra frame after the final segment",
    )
    refused(
        "cut-mid-frame",
        good[: len(good) - 10],
        "verify",
        Reason.FORMAT,
        "the file stops inside the last frame",
    )
    flag = dataclasses.replace(segs[2], final=False)
    refused(
        "final-flag-cleared",
        join((h_raw, h_sig), [segs[0], segs[1], flag]),
        "verify",
        Reason.SEGMENT,
        "the last segment claims not to be final",
    )
    assert header.segment_count == 3

    # Forged by enrolled agencies with their own keys: what seal() refuses to make.
    refused(
        "sender-clearance",
        forge(MAT_SENDER, [R1], level=Level.TOI_MAT),
        "verify",
        Reason.SENDER_CLEARANCE,
        "a sender cleared for mat signs a toi-mat envelope",
    )
    refused(
        "recipient-clearance",
        forge(SENDER, [R1, R2], level=Level.TOI_MAT),
        "verify",
        Reason.RECIPIENT_CLEARANCE,
        "toi-mat to two recipients, the second cleared for mat only",
    )
    refused(
        "key-commitment",
        forge(SENDER, [R1, R2], wrap_for={R2: _crypto.new_payload_key()}),
        "open",
        Reason.KEY_COMMITMENT,
        "invisible salamanders: R2 is given another payload key than the one the header"
        " commits to (R1 opens it); the gateway cannot tell",
        open_as=R2,
    )
    refused(
        "dated-in-the-future",
        forge(SENDER, [R1], created=now + dt.timedelta(minutes=6)),
        "verify",
        Reason.CLOCK,
        "created six minutes after the check (five are tolerated)",
    )
    refused(
        "sender-key",
        forge(SENDER, [R1], sender_kid=bytes(16)),
        "verify",
        Reason.SENDER_KEY,
        "signed by the sender, naming a key id that is not its certified key",
    )
    rogue = X25519PrivateKey.generate().public_key().public_bytes_raw()
    refused(
        "recipient-key",
        forge(SENDER, [R1, R2], enc_public={R2: rogue}, recipient_kids={R2: key_id(rogue)}),
        "verify",
        Reason.RECIPIENT_KEY,
        "R2 addressed under an encryption key the CA never certified",
    )
    refused(
        "unknown-recipient",
        forge(SENDER, [R1, UNKNOWN]),
        "verify",
        Reason.RECIPIENT_UNKNOWN,
        "a recipient that is not in the published directory",
    )
    refused(
        "revoked-recipient",
        forge(SENDER, [R1, REVOKED]),
        "verify",
        Reason.RECIPIENT_REVOKED,
        "a recipient revoked in the published directory",
    )
    refused(
        "sender-certificate-expired",
        forge(EXPIRED_CERT, [R1], created=issued + dt.timedelta(hours=1)),
        "verify",
        Reason.SENDER_CERTIFICATE,
        "sealed while the sender's one-day certificate was valid; checked nine days later",
    )
    short = dataclasses.replace(segs[1], ciphertext=segs[1].ciphertext[:-1])
    refused(
        "segment-size",
        resign(keys[SENDER], h_raw, [segs[0], short, segs[2]]),
        "verify",
        Reason.SEGMENT,
        "segment 1 one byte short, signed by the sender",
    )
    refused(
        "stream-final-early",
        forge(SENDER, [R1], doc=doc_multi, final_tag_at=0),
        "open",
        Reason.DECRYPT,
        "the secretstream FINAL tag on segment 0 of 3 (frames and signatures in order)",
    )
    refused(
        "malformed-payload",
        forge(SENDER, [R1], payload=b"\x00\x00\x00\x03\x93\x01\x02" + doc_small),
        "open",
        Reason.PAYLOAD,
        "the private metadata is a msgpack array, not a map",
    )

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
