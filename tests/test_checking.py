"""Every check of ``envelopes/checking.py`` refuses, with its own reason, the one thing it
exists to stop (docs/envelope-v1.md "Checks, in order"); each is tried on an envelope
that is valid in every other respect, and at its boundary where it has one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import envelopes
from envelopes import _crypto
from envelopes.checking import check_segment, open_part
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.frames import SegmentFrame
from envelopes.header import Header
from envelopes.parts import iter_parts, parse_part
from envelopes.signatures import sign_document
from keys import ca
from keys.agency import AgencyKeys
from keys.codes import AgencyCode
from keys.errors import CipherpostError
from keys.levels import Level
from tests.forge import Forgery, edit_header, frames, join, resign
from tests.helpers import World, make_world, seal_bytes

S = "000.00.00.H41"  # the sender, toi-mat
R1 = "000.01.12.H41"  # toi-mat
R2 = "000.02.12.H41"  # mat only
REVOKED = "000.04.12.H41"
EXPIRED_CERT = "000.05.12.H41"  # certificates expired before NOW
FUTURE_CERT = "000.06.12.H41"  # certificates not valid yet at NOW
MAT_SENDER = "000.07.12.H41"  # cleared for mat only
NOBODY = "000.77.77.H41"  # not in the directory
NOW_MINUS_HOUR = object()  # a created time an hour before the world's now (expired by then)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(
        tmp_path_factory.mktemp("checking"),
        {S: Level.TOI_MAT, R1: Level.TOI_MAT, R2: Level.MAT, REVOKED: Level.TOI_MAT},
    )
    w.add(MAT_SENDER, Level.MAT)
    w.add(EXPIRED_CERT, at=w.now - dt.timedelta(days=10), valid_days=1)
    w.add(FUTURE_CERT, at=w.now + dt.timedelta(days=1))
    ca.revoke(w.authority, AgencyCode.parse(REVOKED), "test", w.now)
    return w


@pytest.fixture(scope="module")
def directory(world: World):
    return world.directory()


@pytest.fixture
def forge(world: World, directory) -> Callable[..., bytes]:
    """``forge(signer, to, **fields)``: an envelope signed by ``signer`` (see tests/forge.py)."""

    def make(signer: str, to: list[str], **fields: object) -> bytes:
        return Forgery(world.keys[signer], directory, to, world.now, **fields).build()  # type: ignore[arg-type]

    return make


def refusal(call: Callable[[], object]) -> EnvelopeRefused:
    with pytest.raises(EnvelopeRefused) as e:
        call()
    return e.value


def verify(data: bytes, directory, now: dt.datetime) -> envelopes.EnvelopeInfo:
    return envelopes.verify(io.BytesIO(data), directory=directory, now=now)


def open_as(world: World, directory, who: str | AgencyKeys, data: bytes, now=None) -> bytes:
    keys = world.keys[who] if isinstance(who, str) else who
    out = io.BytesIO()
    envelopes.open(io.BytesIO(data), out, keys=keys, directory=directory, now=now or world.now)
    return out.getvalue()


def stranger(code: str) -> AgencyKeys:
    return AgencyKeys(
        AgencyCode.parse(code), "x", Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    )


def test_the_forger_makes_valid_envelopes(world, directory, forge):
    """The baseline every refusal below differs from in exactly one field."""
    data = forge(S, [R1, R2], doc=b"x" * 3000)
    info = verify(data, directory, world.now)
    assert [r.code.text for r in info.checked.recipients] == [R1, R2]
    assert open_as(world, directory, R2, data) == b"x" * 3000


def test_what_verify_reports(world, directory, forge):
    """The summary ``cipherpost verify --json`` prints: verified facts, no plaintext."""
    data = forge(S, [R1, R2], doc=b"x" * 3000, level=Level.MAT)
    info = verify(data, directory, world.now)
    header = info.checked.header
    assert info.as_dict() == {
        "envelope_id": header.envelope_id.hex(),
        "sender": {"code": S, "name": f"Agency {S}"},
        "recipients": [{"code": R1, "name": f"Agency {R1}"}, {"code": R2, "name": f"Agency {R2}"}],
        "level": "mat",
        "caveats": [],
        "urgency": "khan",
        "payload_bytes": header.payload_size,
        "envelope_bytes": len(data),
        "segments": 3,
        "created": world.now.isoformat(),
        "expires": (world.now + dt.timedelta(days=30)).isoformat(),
        "header_sha256": header.hash.hex(),
    }
    assert info.envelope_id == header.envelope_id.hex()


# --- step 2: the sender ------------------------------------------------------------------------


def test_unknown_sender(world, directory):
    data = Forgery(stranger(NOBODY), directory, [R1], world.now).build()
    e = refusal(lambda: verify(data, directory, world.now))
    assert (e.reason, str(e)) == (Reason.SENDER_UNKNOWN, f"sender {NOBODY} is not in the directory")


def test_revoked_sender(world, directory, forge):
    data = forge(REVOKED, [R1])
    assert refusal(lambda: verify(data, directory, world.now)).reason is Reason.SENDER_REVOKED


@pytest.mark.parametrize("who", [EXPIRED_CERT, FUTURE_CERT])
def test_sender_certificate_not_valid_now(world, directory, forge, who):
    data = forge(who, [R1])
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.SENDER_CERTIFICATE
    assert str(e) == f"sender {who} has no currently valid certificate"


def test_sender_certificate_validity_bounds(world, directory, forge):
    """Valid from not_before to not_after inclusive; a second outside is refused."""
    sign = directory.entries[S].sign
    for now in (sign.not_before, sign.not_after):
        data = forge(S, [R1], created=now, lifetime=dt.timedelta(days=1))
        verify(data, directory, now)
    data = forge(S, [R1], created=sign.not_after - dt.timedelta(hours=1))
    late = sign.not_after + dt.timedelta(seconds=1)
    assert refusal(lambda: verify(data, directory, late)).reason is Reason.SENDER_CERTIFICATE


def test_sender_key_id_not_the_certified_key(world, directory, forge):
    data = forge(S, [R1], sender_kid=bytes(16))
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.SENDER_KEY
    assert str(e) == f"envelope is not signed with the certified key of {S}"


def test_signed_by_another_agency_in_the_senders_name(world, directory):
    """R1 claims to be S, with S's key id: only the signature can tell."""
    data = Forgery(
        world.keys[R1], directory, [R2], world.now, sender=S, sender_kid=world.keys[S].sign_key_id
    ).build()
    assert refusal(lambda: verify(data, directory, world.now)).reason is Reason.SIGNATURE


def test_bad_header_signature(world, directory, forge):
    (raw, sig), segments = frames(forge(S, [R1]))
    data = join((raw, bytes([sig[0] ^ 1]) + sig[1:]), segments)
    e = refusal(lambda: verify(data, directory, world.now))
    assert (e.reason, str(e)) == (Reason.SIGNATURE, "bad header signature")


# --- step 4: lifetime --------------------------------------------------------------------------


def test_expiry_is_inclusive(world, directory, forge):
    data = forge(S, [R1], lifetime=dt.timedelta(hours=1))
    expires = world.now + dt.timedelta(hours=1)
    verify(data, directory, expires)
    e = refusal(lambda: verify(data, directory, expires + dt.timedelta(seconds=1)))
    assert e.reason is Reason.EXPIRED
    assert str(e) == f"envelope expired at {expires:%Y-%m-%d %H:%M}Z"


def test_dated_in_the_future(world, directory, forge):
    """Five minutes of clock skew are tolerated, not one second more."""
    skew = dt.timedelta(minutes=5)
    verify(forge(S, [R1], created=world.now + skew), directory, world.now)
    data = forge(S, [R1], created=world.now + skew + dt.timedelta(seconds=1))
    e = refusal(lambda: verify(data, directory, world.now))
    assert (e.reason, str(e)) == (Reason.CLOCK, "envelope is dated in the future")


# --- step 5: level and recipients --------------------------------------------------------------


def test_level_above_the_senders_clearance(world, directory, forge):
    verify(forge(MAT_SENDER, [R1], level=Level.MAT), directory, world.now)  # at it: fine
    data = forge(MAT_SENDER, [R1], level=Level.TOI_MAT)
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.SENDER_CLEARANCE
    assert str(e) == f"level toi-mat is above the clearance of sender {MAT_SENDER}"


@pytest.mark.parametrize("to", [[R2], [R1, R2], [R2, R1]])
def test_level_above_any_recipients_clearance(world, directory, forge, to):
    """Every recipient is checked, wherever it stands in the list."""
    verify(forge(S, to, level=Level.MAT), directory, world.now)
    data = forge(S, to, level=Level.TOI_MAT)
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.RECIPIENT_CLEARANCE
    assert R2 in str(e)


def test_recipient_not_in_the_directory(world, directory, forge):
    public = stranger(NOBODY).enc_public
    data = forge(S, [R1, NOBODY], enc_public={NOBODY: public}, recipient_kids={NOBODY: b"k" * 16})
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.RECIPIENT_UNKNOWN
    assert str(e) == f"recipient {NOBODY} is not in the directory"


def test_revoked_recipient(world, directory, forge):
    data = forge(S, [R1, REVOKED])
    assert refusal(lambda: verify(data, directory, world.now)).reason is Reason.RECIPIENT_REVOKED


@pytest.mark.parametrize("who", [EXPIRED_CERT, FUTURE_CERT])
def test_recipient_certificate_not_valid_now(world, directory, forge, who):
    data = forge(S, [R1, who])
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.RECIPIENT_CERTIFICATE
    assert str(e) == f"recipient {who} has no currently valid certificate"


def test_recipient_under_a_key_not_certified(world, directory, forge):
    """The key id names the key the payload key was wrapped to: it must be the certified one."""
    rogue = stranger(R2)
    data = forge(
        S, [R1, R2], enc_public={R2: rogue.enc_public}, recipient_kids={R2: rogue.enc_key_id}
    )
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.RECIPIENT_KEY
    assert str(e) == f"recipient {R2} is addressed under a key not certified"


# --- step 6: segments --------------------------------------------------------------------------


@pytest.fixture
def three_segments(forge) -> tuple[tuple[bytes, bytes], list[SegmentFrame]]:
    return frames(forge(S, [R1], doc=b"z" * 2500))  # + metadata: 3 segments of 1 KiB


def test_segment_out_of_order(world, directory, three_segments):
    header, (s0, s1, s2) = three_segments
    data = join(header, [s1, s0, s2])
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.SEGMENT and "out of order" in str(e)


def test_segment_missing(world, directory, three_segments):
    header, segments = three_segments
    data = join(header, segments[:-1])
    e = refusal(lambda: verify(data, directory, world.now))
    assert (e.reason, str(e)) == (Reason.SEGMENT, "envelope is truncated: segments are missing")


def test_data_after_the_final_segment(world, directory, three_segments):
    header, segments = three_segments
    data = join(header, [*segments, segments[-1]])
    e = refusal(lambda: verify(data, directory, world.now))
    assert (e.reason, str(e)) == (Reason.SEGMENT, "envelope has data after its final segment")


@pytest.mark.parametrize("flags", [(True, False, True), (False, False, False), (True, True, True)])
def test_final_flag_exactly_on_the_last_segment(world, directory, three_segments, flags):
    """Signed by the sender itself: the flag is checked against the position, not trusted."""
    (raw, _), segments = three_segments
    changed = [dataclasses.replace(s, final=f) for s, f in zip(segments, flags, strict=True)]
    data = resign(world.keys[S], raw, changed)
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.SEGMENT and "final flag" in str(e)


@pytest.mark.parametrize(("index", "delta"), [(0, -1), (0, 1), (2, -1), (2, 1)])
def test_segment_of_the_wrong_size(world, directory, three_segments, index, delta):
    (raw, _), segments = three_segments
    s = segments[index]
    ciphertext = s.ciphertext[:delta] if delta < 0 else s.ciphertext + b"\0"
    segments[index] = dataclasses.replace(s, ciphertext=ciphertext)
    data = resign(world.keys[S], raw, segments)
    e = refusal(lambda: verify(data, directory, world.now))
    assert (e.reason, str(e)) == (Reason.SEGMENT, "envelope segment has the wrong size")


def test_bad_segment_signature(world, directory, three_segments):
    header, segments = three_segments
    s = segments[1]
    segments[1] = dataclasses.replace(s, signature=bytes([s.signature[0] ^ 1]) + s.signature[1:])
    e = refusal(lambda: verify(join(header, segments), directory, world.now))
    assert (e.reason, str(e)) == (Reason.SEGMENT_SIGNATURE, "bad signature on segment 1")


def test_segment_signed_by_another_agency(world, directory, three_segments):
    (raw, sig), segments = three_segments
    _, others = frames(resign(world.keys[R1], raw, segments))
    data = join((raw, sig), [segments[0], others[1], segments[2]])
    e = refusal(lambda: verify(data, directory, world.now))
    assert e.reason is Reason.SEGMENT_SIGNATURE


def test_a_part_checked_on_its_own(world, directory, three_segments):
    """The gateway checks each part alone (check_segment): index past the end, final flag."""
    (raw, sig), (s0, s1, s2) = three_segments
    checked = envelopes.check_header(raw, sig, directory, world.now)
    for s in (s0, s1, s2):
        check_segment(checked, s)
    beyond = SegmentFrame(3, True, s2.ciphertext, s2.signature)
    e = refusal(lambda: check_segment(checked, beyond))
    assert e.reason is Reason.SEGMENT
    assert str(e) == "envelope has more segments than its header announces"
    e = refusal(lambda: check_segment(checked, dataclasses.replace(s1, final=True)))
    assert e.reason is Reason.SEGMENT
    assert str(e) == "envelope segment has the wrong final flag"


# --- steps 7-9: opening ------------------------------------------------------------------------


def test_not_a_recipient(world, directory, forge):
    data = forge(S, [R1])
    e = refusal(lambda: open_as(world, directory, R2, data))
    assert (e.reason, str(e)) == (Reason.NOT_RECIPIENT, f"{R2} is not a recipient of this envelope")


def test_addressed_to_another_key_of_this_agency(world, directory, forge):
    """The agency re-keyed (or holds old keys): refused before any unwrap."""
    data = forge(S, [R1])
    old = dataclasses.replace(world.keys[R1], encryption_key=X25519PrivateKey.generate())
    e = refusal(lambda: open_as(world, directory, old, data))
    assert (e.reason, str(e)) == (Reason.STALE_KEY, f"envelope is addressed to another key of {R1}")


def test_key_commitment_invisible_salamander(world, directory, forge):
    """R1 and R2 are given different payload keys: the header commits to R1's only."""
    data = forge(S, [R1, R2], wrap_for={R2: _crypto.new_payload_key()})
    verify(data, directory, world.now)  # the gateway cannot see it
    open_as(world, directory, R1, data)
    e = refusal(lambda: open_as(world, directory, R2, data))
    assert e.reason is Reason.KEY_COMMITMENT
    assert str(e) == "payload key does not match the header's key commitment"


def test_key_commitment_replaced(world, directory, forge):
    data = forge(S, [R1], commitment=bytes(32))
    e = refusal(lambda: open_as(world, directory, R1, data))
    assert e.reason is Reason.KEY_COMMITMENT


def test_wrapped_key_that_does_not_open(world, directory, forge):
    """Wrapped under another envelope id (a copied recipient entry): HPKE info binds it."""
    data = forge(S, [R1])
    (raw, _), segments = frames(data)
    other = Header.parse(frames(forge(S, [R1]))[0][0])
    entry = [[r.code.text, r.key_id, r.wrapped_key] for r in other.recipients]
    data = resign(world.keys[S], edit_header(raw, recipients=entry), segments)
    verify(data, directory, world.now)
    assert refusal(lambda: open_as(world, directory, R1, data)).reason is Reason.DECRYPT


def test_ciphertext_changed_and_resigned(world, directory, three_segments):
    """The sender signs a ciphertext that does not decrypt: the MAC catches it."""
    (raw, _), segments = three_segments
    s = segments[1]
    segments[1] = dataclasses.replace(s, ciphertext=bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:])
    data = resign(world.keys[S], raw, segments)
    verify(data, directory, world.now)
    assert refusal(lambda: open_as(world, directory, R1, data)).reason is Reason.DECRYPT


@pytest.mark.parametrize("final_at", [0, 1, 5])
def test_stream_final_tag_in_the_wrong_place(world, directory, forge, final_at):
    data = forge(S, [R1], doc=b"z" * 2500, final_tag_at=final_at)  # 5: nowhere
    verify(data, directory, world.now)
    e = refusal(lambda: open_as(world, directory, R1, data))
    assert e.reason is Reason.DECRYPT


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty metadata: not a map
        b"\x00\x00\x00\x10abc",  # ends inside the metadata
        b"\x00\x01\x00\x01" + b"m" * 100,  # metadata length above 64 KiB
        b"\x00\x00\x00\x03\x93\x01\x02",  # metadata that is not a map
    ],
)
def test_malformed_payload(world, directory, forge, payload):
    data = forge(S, [R1], payload=payload + b"\0" * 4)
    verify(data, directory, world.now)
    assert refusal(lambda: open_as(world, directory, R1, data)).reason is Reason.PAYLOAD


# --- the quarantine file -----------------------------------------------------------------------


def test_open_to_path_leaves_nothing_on_refusal(world, directory, three_segments, tmp_path):
    """Segments 0 and 1 decrypt; segment 2 is forged: no document, no quarantine file."""
    header, segments = three_segments
    s = segments[2]
    segments[2] = dataclasses.replace(s, signature=bytes(64))
    out = tmp_path / "inbox" / "doc.bin"
    out.parent.mkdir()
    e = refusal(
        lambda: envelopes.open_to_path(
            io.BytesIO(join(header, segments)),
            out,
            keys=world.keys[R1],
            directory=directory,
            now=world.now,
        )
    )
    assert e.reason is Reason.SEGMENT_SIGNATURE
    assert list(out.parent.iterdir()) == []


def test_open_to_path_never_overwrites(world, directory, forge, tmp_path):
    out = tmp_path / "doc.bin"
    out.write_bytes(b"mine")
    with pytest.raises(CipherpostError, match="refusing to overwrite") as e:
        envelopes.open_to_path(
            io.BytesIO(forge(S, [R1])), out, keys=world.keys[R1], directory=directory, now=world.now
        )
    assert not isinstance(e.value, EnvelopeRefused)
    assert out.read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["doc.bin"]


def test_open_to_path_removes_the_quarantine_file_on_interruption(
    world, directory, forge, tmp_path: Path
):
    """A stop (KeyboardInterrupt) at the first read, after the quarantine file exists."""

    class Interrupting(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            assert any(tmp_path.iterdir()), "the quarantine file should exist by now"
            raise KeyboardInterrupt

    out = tmp_path / "doc.bin"
    with pytest.raises(KeyboardInterrupt):
        envelopes.open_to_path(
            Interrupting(forge(S, [R1])),
            out,
            keys=world.keys[R1],
            directory=directory,
            now=world.now,
        )
    assert list(tmp_path.iterdir()) == []


def test_open_to_path_writes_the_whole_document_privately(world, directory, forge, tmp_path):
    """Checked at ``now``, not the wall clock: this envelope expired long before today."""
    data = forge(S, [R1], doc=b"y" * 3000, lifetime=dt.timedelta(hours=1))
    out = tmp_path / "inbox" / "doc.bin"
    out.parent.mkdir()
    for sync in (True, False):
        opened = envelopes.open_to_path(
            io.BytesIO(data),
            out,
            keys=world.keys[R1],
            directory=directory,
            now=world.now,
            sync=sync,
        )
        assert out.read_bytes() == b"y" * 3000
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert [p.name for p in out.parent.iterdir()] == ["doc.bin"]
        assert (opened.document_bytes, opened.metadata.subject) == (3000, "forged")
        assert opened.info.envelope_bytes == len(data)
        out.unlink()


def test_open_to_path_never_clobbers_a_file_that_appears_meanwhile(
    world, directory, forge, tmp_path
):
    """Someone creates the destination while the envelope is being opened: it is kept."""
    out = tmp_path / "doc.bin"

    class Racing(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() > 0 and not out.exists():
                out.write_bytes(b"theirs")
            return super().read(n)

    with pytest.raises(CipherpostError) as e:
        envelopes.open_to_path(
            Racing(forge(S, [R1])), out, keys=world.keys[R1], directory=directory, now=world.now
        )
    assert str(e.value) == f"{out} already exists; refusing to overwrite it"
    assert out.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["doc.bin"]


def test_an_empty_stream_is_not_an_envelope(world, directory):
    e = refusal(lambda: verify(b"", directory, world.now))
    assert (e.reason, str(e)) == (Reason.FORMAT, "envelope is empty")


def test_without_a_time_the_clock_decides(world, directory, forge):
    """``now`` defaults to the wall clock (aware, UTC): today, these certificates are valid."""
    now = dt.datetime.now(dt.UTC)
    data = forge(S, [R1], created=now)
    info = envelopes.verify(io.BytesIO(data), directory=directory)
    assert info.checked.header.created <= now + dt.timedelta(seconds=1)


# --- a one-part envelope opened in memory (the agent's inbox) ------------------------------------


@pytest.mark.parametrize(
    ("who", "fields"),
    [
        (R1, {}),
        (R2, {}),  # not a recipient
        (R1, {"commitment": bytes(32)}),
        (R1, {"wrap_for": {R1: bytes(32)}}),
        (R1, {"lifetime": dt.timedelta(minutes=1), "created": NOW_MINUS_HOUR}),
        (R1, {"payload": b"\xff\xff\xff\xff"}),
        (R1, {"sender_kid": bytes(16)}),
        (R1, {"level": Level.TUYET_MAT}),
    ],
)
def test_a_part_opened_in_memory_is_the_envelope_opened(world, directory, forge, who, fields):
    """``open_part`` (one segment, already decoded) gives the document, metadata and summary
    ``open`` gives, or refuses for the same reason, and then returns no plaintext at all."""
    fields = {**fields}
    if fields.get("created") is NOW_MINUS_HOUR:
        fields["created"] = world.now - dt.timedelta(hours=1)
    data = forge(S, [R1], **fields)
    part = parse_part(data)
    assert part.header.segment_count == 1
    keys = world.keys[who]
    try:
        out = io.BytesIO()
        want = envelopes.open(io.BytesIO(data), out, keys=keys, directory=directory, now=world.now)
    except EnvelopeRefused as e:
        got = refusal(
            lambda: open_part(part, size=len(data), keys=keys, directory=directory, now=world.now)
        )
        assert (got.reason, str(got)) == (e.reason, str(e))
        return
    opened, document = open_part(
        part, size=len(data), keys=keys, directory=directory, now=world.now
    )
    assert document == out.getvalue()
    assert (opened.metadata, opened.document_bytes) == (want.metadata, want.document_bytes)
    assert opened.info.as_dict() == want.info.as_dict()


def test_a_part_of_a_longer_envelope_is_not_opened_in_memory(world, directory, forge):
    data = forge(S, [R1], doc=b"x" * 3000)
    _, count, body = next(iter_parts(io.BytesIO(data)))
    assert count == 3
    e = refusal(
        lambda: open_part(
            parse_part(body),
            size=len(body),
            keys=world.keys[R1],
            directory=directory,
            now=world.now,
        )
    )
    assert (e.reason, str(e)) == (Reason.SEGMENT, "envelope has more segments than this part")


def test_open_part_checks_officials_signatures_as_open_does(world, directory):
    """A signed document opened in memory: each official's signature verified against the
    directory at the given time, over the document and a notation that is absent here."""
    from tests.test_officials import DOC, official

    chairman = official(world, S)
    signature = sign_document(
        chairman, io.BytesIO(DOC), subject="Sáp nhập", notation="", now=world.now
    )
    metadata = envelopes.Metadata(subject="Sáp nhập", filename="qd.txt", signatures=(signature,))
    data = seal_bytes(world, directory, S, [R1], DOC, segment_size=1 << 20, metadata=metadata)
    part = parse_part(data)
    opened, document = open_part(
        part, size=len(data), keys=world.keys[R1], directory=directory, now=world.now
    )
    want = envelopes.open(
        io.BytesIO(data), io.BytesIO(), keys=world.keys[R1], directory=directory, now=world.now
    )
    assert document == DOC and "notation" not in opened.metadata.fields
    assert (
        [s.signer for s in opened.signatures]
        == [s.signer for s in want.signatures]
        == ["Nguyễn Văn A, Chủ tịch UBND xã An Bình"]
    )


def test_without_a_time_the_checks_run_now_and_a_given_time_is_the_one_used(tmp_path):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    w = make_world(tmp_path, {S: Level.TOI_MAT, R1: Level.TOI_MAT}, now=now)
    directory = w.directory()
    data = seal_bytes(w, directory, S, [R1], b"today")
    part = parse_part(data)
    _, document = open_part(part, size=len(data), keys=w.keys[R1], directory=directory)
    assert document == b"today"
    out = io.BytesIO()
    envelopes.open(io.BytesIO(data), out, keys=w.keys[R1], directory=directory)
    assert out.getvalue() == b"today"
    # Checked at a time a year on (the given one, not the clock's), the sender's
    # certificate has expired.
    later = now + dt.timedelta(days=366)
    e = refusal(
        lambda: open_part(part, size=len(data), keys=w.keys[R1], directory=directory, now=later)
    )
    assert (e.reason, str(e)) == (
        Reason.SENDER_CERTIFICATE,
        f"sender {S} has no currently valid certificate",
    )
