"""Signed notices (envelopes/notices.py): each field is checked when parsed, and a notice
verifies only under its signer's certified key, valid and not revoked."""

from __future__ import annotations

import datetime as dt

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from envelopes import _crypto
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.notices import (
    CONTEXT,
    KIND_RECEIPT,
    KIND_REJECTION,
    MAGIC,
    MAX_NOTICE_BYTES,
    MAX_TEXT,
    parse_notice,
    sign_notice,
    verify_notice,
)
from keys import ca
from keys.codes import AgencyCode
from keys.errors import UsageError
from keys.levels import Level
from tests.helpers import World, make_world

A, B, REVOKED, EXPIRED = "000.00.00.H41", "000.01.12.H41", "000.02.12.H41", "000.03.12.H41"
EID = bytes(range(16))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(tmp_path_factory.mktemp("notices"), {A: Level.MAT, B: Level.MAT})
    w.add(REVOKED)
    w.add(EXPIRED, at=w.now - dt.timedelta(days=10), valid_days=1)
    ca.revoke(w.authority, AgencyCode.parse(REVOKED), "test", w.now)
    return w


@pytest.fixture(scope="module")
def directory(world: World):
    return world.directory()


def notice(world: World, signer: str = B, key: Ed25519PrivateKey | None = None, **fields):
    values = {
        "kind": KIND_RECEIPT,
        "envelope_id": EID,
        "header_hash": bytes(32),
        "signer": AgencyCode.parse(signer),
        "addressee": AgencyCode.parse(A),
        "status": "01",
        "now": world.now,
    }
    values.update(fields)
    return sign_notice(key or world.keys[signer].signing_key, **values)  # type: ignore[arg-type]


def reason(call) -> Reason:
    with pytest.raises(EnvelopeRefused) as e:
        call()
    return e.value.reason


def test_a_notice_verifies_as_signed(world, directory):
    n = notice(world, note="đã nhận")
    got = verify_notice(n.raw, directory, world.now)
    assert (got.kind, got.envelope_id, got.signer.text, got.addressee.text) == (
        KIND_RECEIPT,
        EID,
        B,
        A,
    )
    assert (got.status, got.note, got.time) == ("01", "đã nhận", world.now)


def test_unknown_signer(world, directory):
    n = notice(world, key=Ed25519PrivateKey.generate(), signer=B)
    forged = msgpack.unpackb(n.raw, raw=False)
    body = msgpack.unpackb(forged[1], raw=False)
    body[3] = "000.77.77.H41"
    raw = _resigned(msgpack.packb(body, use_bin_type=True), Ed25519PrivateKey.generate())
    assert reason(lambda: verify_notice(raw, directory, world.now)) is Reason.SENDER_UNKNOWN


def _resigned(body: bytes, key: Ed25519PrivateKey) -> bytes:
    sig = _crypto.sign(key, CONTEXT, body)
    return bytes(msgpack.packb([MAGIC, body, sig], use_bin_type=True))


@pytest.mark.parametrize("who", [REVOKED, EXPIRED])
def test_revoked_or_expired_signer(world, directory, who):
    n = notice(world, signer=who)
    assert reason(lambda: verify_notice(n.raw, directory, world.now)) is Reason.SENDER_REVOKED


def test_signed_by_another_agency_in_the_signers_name(world, directory):
    n = notice(world, signer=B, key=world.keys[A].signing_key)
    assert reason(lambda: verify_notice(n.raw, directory, world.now)) is Reason.SIGNATURE


def test_body_changed_after_signing(world, directory):
    magic, body, sig = msgpack.unpackb(notice(world).raw, raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields[8] += 3600  # an hour later than signed (a receipt's status can only be 01)
    raw = msgpack.packb([magic, msgpack.packb(fields, use_bin_type=True), sig])
    assert reason(lambda: verify_notice(raw, directory, world.now)) is Reason.SIGNATURE


def test_oversized_notice(world):
    raw = notice(world).raw
    assert reason(lambda: parse_notice(raw + b"\0" * (MAX_NOTICE_BYTES + 1 - len(raw)))) is (
        Reason.OVERSIZED
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda f: ["complaint", *f[1:]],  # kind
        lambda f: [f[0], bytes(15), *f[2:]],  # envelope id length
        lambda f: [f[0], "id", *f[2:]],
        lambda f: [*f[:2], bytes(16), *f[3:]],  # header hash: 0 or 32 bytes
        lambda f: [*f[:3], "H41", *f[4:]],  # signer code
        lambda f: [*f[:4], 41, *f[5:]],  # addressee not text
        lambda f: [*f[:5], 1, *f[6:]],  # status not text
        lambda f: [*f[:7], "x" * (MAX_TEXT + 1), *f[8:]],  # reason too long
        lambda f: [*f[:8], -1, f[9]],  # time
        lambda f: [*f[:8], True, f[9]],
        lambda f: [*f[:8], 1 << 40, f[9]],
        lambda f: [*f[:9], None],  # note
        lambda f: f[:9],  # a field missing
        lambda f: [*f, "extra"],
    ],
)
def test_malformed_body(world, edit):
    _, body, _ = msgpack.unpackb(notice(world).raw, raw=False)
    fields = edit(list(msgpack.unpackb(body, raw=False)))
    raw = _resigned(msgpack.packb(fields, use_bin_type=True), world.keys[B].signing_key)
    assert reason(lambda: parse_notice(raw)) is Reason.FORMAT


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x93\xa1x",
        msgpack.packb(["cipherpost.notice/2", b"", b""]),
        msgpack.packb([MAGIC, "body", b""]),
        msgpack.packb([MAGIC, b"", "sig"]),
        msgpack.packb([MAGIC, b"", b"", b""]),
        msgpack.packb([MAGIC, b"\x80", b""]),  # a map where the body array belongs
    ],
)
def test_malformed_envelope_of_the_notice(raw):
    assert reason(lambda: parse_notice(raw)) is Reason.FORMAT


def test_header_hash_may_be_empty(world, directory):
    n = notice(world, kind=KIND_REJECTION, status="refused", header_hash=b"", rule_id="r")
    assert verify_notice(n.raw, directory, world.now).header_hash == b""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "complaint"}, "unknown notice kind"),
        ({"status": "99"}, "a receipt carries status 01, not '99'"),
        ({"note": "x" * (MAX_TEXT + 1)}, f"limited to {MAX_TEXT} characters"),
        (
            {"kind": KIND_REJECTION, "status": "refused", "reason": "x" * (MAX_TEXT + 1)},
            "limited to",
        ),
    ],
)
def test_sign_notice_refuses(world, fields, message):
    with pytest.raises(UsageError, match=message):
        notice(world, **fields)
    notice(world, **{**fields, "note": "", "reason": "", "status": "01", "kind": KIND_RECEIPT})
