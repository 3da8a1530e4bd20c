"""Every check ``Directory.load`` makes (keys/directory.py), each on a directory the CA
signed correctly but for the one thing under test: the CRL, each entry's roles and code,
revocation of either certificate, versions, expiry, the CA."""

from __future__ import annotations

import datetime as dt
import io
import stat
from pathlib import Path

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import envelopes
from envelopes.errors import EnvelopeRefused, Reason
from keys import ca
from keys.codes import AgencyCode
from keys.directory import (
    CONTEXT,
    MAGIC,
    MAX_DIRECTORY_BYTES,
    Directory,
    TrustState,
    entries_for,
)
from keys.errors import CipherpostError, Refused, UsageError
from keys.levels import Level
from tests.helpers import World, make_world, seal_bytes

A, B, C = "000.00.00.H41", "000.00.01.H41", "000.00.02.H41"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(
        tmp_path_factory.mktemp("dirchecks"), {A: Level.TOI_MAT, B: Level.TOI_MAT, C: Level.MAT}
    )


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


def pair(world: World, code: str) -> list[bytes]:
    return [der(world.certs / f"{code}.sign.crt"), der(world.certs / f"{code}.enc.crt")]


def crl(world: World, serials: list[int], key: Ed25519PrivateKey | None = None) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(world.authority.name)
        .last_update(world.now - dt.timedelta(days=1))
        .next_update(world.now + dt.timedelta(days=30))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(world.now)
            .build()
        )
    signed = builder.sign(key or world.authority.private_key, None)
    return signed.public_bytes(serialization.Encoding.DER)


def signed(
    world: World,
    *,
    version: int = 1,
    expires: dt.datetime | None = None,
    pairs: list[list[bytes]] | None = None,
    crl_der: bytes | None = None,
    retired: list[list[object]] | None = None,
    key: Ed25519PrivateKey | None = None,
    fields: list[object] | None = None,
) -> bytes:
    """A directory the CA (or ``key``) signed, with exactly the given contents."""
    body = fields or [
        version,
        int(world.now.timestamp()),
        int((expires or world.now + dt.timedelta(days=7)).timestamp()),
        world.authority.certificate.public_bytes(serialization.Encoding.DER),
        crl_der if crl_der is not None else crl(world, []),
        pairs if pairs is not None else [pair(world, c) for c in (A, B, C)],
        retired or [],
    ]
    raw = msgpack.packb(body, use_bin_type=True)
    sig = (key or world.authority.private_key).sign(CONTEXT + raw)
    return bytes(msgpack.packb([MAGIC, raw, sig], use_bin_type=True))


def load(world: World, data: bytes, trust: TrustState | None = None, now=None) -> Directory:
    return Directory.load(data, trust or TrustState(None), now=now or world.now)


def test_a_well_made_directory_loads(world):
    data = signed(world)
    d = load(world, data)
    assert set(d.entries) == {A, B, C} and not any(e.revoked for e in d.entries.values())
    assert d.entries[C].clearance is Level.MAT
    assert (d.entries[C].name, d.raw) == (f"Agency {C}", data)


# --- the CRL -----------------------------------------------------------------------------------


def test_crl_signed_by_another_key(world):
    forged = crl(world, [], key=Ed25519PrivateKey.generate())
    with pytest.raises(Refused, match="^directory CRL is not valid$"):
        load(world, signed(world, crl_der=forged))


def test_crl_that_is_not_a_crl(world):
    with pytest.raises(Refused, match="^directory CRL is not valid$"):
        load(world, signed(world, crl_der=b"\x30\x03\x02\x01\x01"))


@pytest.mark.parametrize("role", [0, 1])
def test_revoking_either_certificate_revokes_the_agency(world, role):
    """The CRL names only the encryption (or only the signing) certificate's serial."""
    serial = x509.load_der_x509_certificate(pair(world, C)[role]).serial_number
    before = load(world, signed(world))
    to_c = seal_bytes(world, before, A, [C], b"doc")
    from_c = seal_bytes(world, before, C, [A], b"doc")
    after = load(world, signed(world, crl_der=crl(world, [serial])))
    assert after.entries[C].revoked and not after.entries[A].revoked
    for data, reason in ((to_c, Reason.RECIPIENT_REVOKED), (from_c, Reason.SENDER_REVOKED)):
        with pytest.raises(EnvelopeRefused) as e:
            envelopes.verify(io.BytesIO(data), directory=after, now=world.now)
        assert e.value.reason is reason


# --- the entries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda w: [pair(w, A)[0], pair(w, A)[0]],  # signing certificate in both places
        lambda w: [pair(w, A)[1], pair(w, A)[1]],  # encryption certificate in both places
        lambda w: [pair(w, A)[1], pair(w, A)[0]],  # swapped
        lambda w: [pair(w, A)[0], pair(w, B)[1]],  # another agency's encryption key
    ],
)
def test_inconsistent_entry(world, make):
    with pytest.raises(Refused, match=f"^directory entry for {A} is inconsistent$"):
        load(world, signed(world, pairs=[make(world), pair(world, B)]))


def test_agency_listed_twice(world):
    with pytest.raises(Refused, match=f"^directory lists {B} twice$"):
        load(world, signed(world, pairs=[pair(world, B), pair(world, A), pair(world, B)]))


def test_certificate_of_another_ca(world, tmp_path):
    other = make_world(tmp_path / "other", {A: Level.TUYET_MAT})
    with pytest.raises(Refused, match="certificate not issued by the trusted CA"):
        load(world, signed(world, pairs=[pair(other, A)]))


def test_clearance_is_the_lower_of_the_two_certificates(world, tmp_path):
    """A pair whose certificates disagree on clearance counts at the lower one."""
    keys = world.keys[B]
    from keys import agency

    request = agency.EnrollmentRequest.parse(agency.build_request(keys, world.now))
    authority = _ca_copy(world, tmp_path)
    ca.issue(authority, request, Level.TUYET_MAT, tmp_path / "high", world.now, replace=True)
    high_sign = der(tmp_path / "high" / f"{B}.sign.crt")
    d = load(world, signed(world, pairs=[[high_sign, pair(world, B)[1]]]))
    assert d.entries[B].clearance is Level.TOI_MAT


def _ca_copy(world: World, tmp_path: Path) -> ca.CertificateAuthority:
    """The world's CA, its bookkeeping copied: issuing here leaves the shared world alone."""
    import shutil

    shutil.copytree(world.authority.directory, tmp_path / "ca")
    return ca.CertificateAuthority(
        tmp_path / "ca", world.authority.certificate, world.authority.private_key
    )


# --- signature, CA, version, lifetime ----------------------------------------------------------


def test_signed_by_another_key_than_the_included_ca(world):
    with pytest.raises(Refused, match="^directory signature is not valid$"):
        load(world, signed(world, key=Ed25519PrivateKey.generate()))


def test_body_changed_after_signing(world):
    magic, body, sig = msgpack.unpackb(signed(world), raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields[2] += 86400 * 365  # a longer life
    forged = msgpack.packb([magic, msgpack.packb(fields, use_bin_type=True), sig])
    with pytest.raises(Refused, match="^directory signature is not valid$"):
        load(world, forged)


def test_untrusted_ca_refused_once_a_ca_is_trusted(world, tmp_path):
    other = make_world(tmp_path / "other", {A: Level.TUYET_MAT})
    trust = TrustState(tmp_path / "trust.json")
    assert trust.empty
    load(world, signed(world), trust)
    assert trust.pinned_now is not None  # trusted on first use, and said so
    with pytest.raises(Refused, match="^directory is signed by an untrusted CA"):
        load(other, other.directory_bytes(), TrustState(tmp_path / "trust.json"))


def test_pinned_ca_certificate(world, tmp_path):
    other = make_world(tmp_path / "other", {A: Level.TUYET_MAT})
    mine = world.authority.certificate
    Directory.load(signed(world), TrustState(None), now=world.now, ca_certificate=mine)
    with pytest.raises(Refused, match="^directory is signed by a different CA than the one given$"):
        Directory.load(
            other.directory_bytes(), TrustState(None), now=world.now, ca_certificate=mine
        )


def test_versions_never_go_back(world, tmp_path):
    path = tmp_path / "trust.json"
    assert load(world, signed(world, version=5), TrustState(path)).version == 5
    assert load(world, signed(world, version=5), TrustState(path)).version == 5  # re-read: fine
    with pytest.raises(Refused, match="version 4 is older than version 5 already trusted"):
        load(world, signed(world, version=4), TrustState(path))
    load(world, signed(world, version=6), TrustState(path))
    assert (
        TrustState(path).highest_version(load(world, signed(world, version=6)).ca_fingerprint) == 6
    )


def test_a_refused_directory_does_not_move_the_trust_state(world, tmp_path):
    path = tmp_path / "trust.json"
    load(world, signed(world, version=2), TrustState(path))
    expired = signed(world, version=9, expires=world.now - dt.timedelta(seconds=1))
    with pytest.raises(Refused, match="expired"):
        load(world, expired, TrustState(path))
    load(world, signed(world, version=2), TrustState(path))  # still at 2


def test_expiry_is_inclusive(world):
    expires = world.now + dt.timedelta(days=1)
    data = signed(world, expires=expires)
    load(world, data, now=expires)
    with pytest.raises(Refused, match="^directory version 1 expired at "):
        load(world, data, now=expires + dt.timedelta(seconds=1))


# --- malformed ----------------------------------------------------------------------------------


def test_too_large_or_empty(world):
    with pytest.raises(Refused, match="^directory file is empty$"):
        load(world, b"")
    with pytest.raises(Refused, match="^directory file too large$"):
        load(world, b"\x00" * (MAX_DIRECTORY_BYTES + 1))


@pytest.mark.parametrize(
    "edit",
    [
        lambda f: f[:5],  # too few fields
        lambda f: [*f, [], []],  # too many
        lambda f: ["1", *f[1:]],  # version not an integer
        lambda f: [True, *f[1:]],  # version a boolean
        lambda f: [*f[:3], "ca", *f[4:]],  # CA certificate not bytes
        lambda f: [*f[:3], b"not a certificate", *f[4:]],
        lambda f: [*f[:5], "pairs", f[6]],
        lambda f: [*f[:6], [["000.00.01.H41", A]]],  # retired entry without its date
        lambda f: [*f[:6], "retired"],
    ],
)
def test_malformed_body(world, edit):
    magic, body, _ = msgpack.unpackb(signed(world), raw=False)
    fields = edit(msgpack.unpackb(body, raw=False))
    with pytest.raises(Refused, match="^directory file is malformed$"):
        load(world, signed(world, fields=fields))


def test_malformed_pair(world):
    with pytest.raises(Refused, match="^directory file is malformed$"):
        load(world, signed(world, pairs=[pair(world, A)[:1]]))


@pytest.mark.parametrize(
    ("retired", "message"),
    [
        ([["H41", A, 0]], "directory retired list: invalid agency code"),
        ([[B, "000.77.77.H41", 0]], f"retires {B} into 000.77.77.H41, not a live agency"),
        ([[B, C, 0], [C, A, 0]], f"retires {B} into {C}, not a live agency"),
    ],
)
def test_retired_list_is_checked(world, retired, message):
    with pytest.raises(Refused, match=message):
        load(world, signed(world, retired=retired))


def test_retirement_takes_effect_at_its_time(world):
    start = world.now + dt.timedelta(days=2)
    d = load(world, signed(world, retired=[[B, A, int(start.timestamp())]]))
    code = d.entries[B].code
    assert d.successor(code) == A
    assert d.successor(code, start - dt.timedelta(seconds=1)) is None
    assert d.successor(code, start) == A
    assert d.successor(d.entries[A].code, start) is None


def test_both_certificates_must_be_valid_to_seal(world, tmp_path):
    """An agency whose encryption (or signing) certificate alone expired takes no part."""
    from keys import agency

    request = agency.EnrollmentRequest.parse(agency.build_request(world.keys[C], world.now))
    old = tmp_path / "old"
    ca.issue(
        _ca_copy(world, tmp_path),
        request,
        Level.MAT,
        old,
        world.now - dt.timedelta(days=9),
        1,
        replace=True,
    )
    valid_sign, valid_enc = pair(world, C)
    expired_sign, expired_enc = der(old / f"{C}.sign.crt"), der(old / f"{C}.enc.crt")
    for sign, enc in ((valid_sign, expired_enc), (expired_sign, valid_enc)):
        d = load(world, signed(world, pairs=[pair(world, A), [sign, enc]]))
        with pytest.raises(Refused, match=f"^recipient {C} has no currently valid certificate$"):
            seal_bytes(world, d, A, [C], b"doc")
        with pytest.raises(Refused, match=f"^sender {C} has no currently valid certificate$"):
            seal_bytes(world, d, C, [A], b"doc")


def test_lookup_by_signing_key_id(world):
    d = load(world, signed(world))
    assert d.by_sign_key_id(world.keys[B].sign_key_id) is d.entries[B]
    assert d.by_sign_key_id(world.keys[B].enc_key_id) is None
    with pytest.raises(Refused, match="^agency 000.77.77.H41 is not in the directory$"):
        d.get(AgencyCode.parse("000.77.77.H41"))


def test_where_a_holder_keeps_its_trust_state(tmp_path):
    explicit = TrustState.default({"CIPHERPOST_STATE_DIR": str(tmp_path / "s")})
    assert explicit.path == tmp_path / "s" / "trust.json"
    xdg = TrustState.default({"XDG_STATE_HOME": str(tmp_path / "x")})
    assert xdg.path == tmp_path / "x" / "cipherpost" / "trust.json"
    home = TrustState.default({})
    assert home.path == Path("~/.local/state/cipherpost/trust.json").expanduser()


def test_entries_for_several_codes(world):
    d = load(world, signed(world))
    codes = [d.entries[C].code, d.entries[A].code]
    assert entries_for(d, codes) == [d.entries[C], d.entries[A]]
    with pytest.raises(Refused, match="^recipient 000.77.77.H41 is not in the directory$"):
        entries_for(d, [*codes, AgencyCode.parse("000.77.77.H41")])


def test_the_older_form_without_a_retired_list_loads(world):
    """Six fields: directories signed before retirement existed."""
    magic, body, _ = msgpack.unpackb(signed(world), raw=False)
    fields = msgpack.unpackb(body, raw=False)[:6]
    d = load(world, signed(world, fields=fields))
    assert set(d.entries) == {A, B, C} and d.retired == {}
    assert (d.issued_at, d.expires_at) == (world.now, world.now + dt.timedelta(days=7))


@pytest.mark.parametrize(
    "outer",
    [
        lambda m, b, s: ["cipherpost.directory/2", b, s],
        lambda m, b, s: [m, b.hex(), s],
        lambda m, b, s: [m, b, s.hex()],
        lambda m, b, s: [m, b],
    ],
)
def test_malformed_wire_form(world, outer):
    magic, body, sig = msgpack.unpackb(signed(world), raw=False)
    data = msgpack.packb(outer(magic, body, sig), use_bin_type=True)
    with pytest.raises(Refused, match="^directory file is malformed$"):
        load(world, data)


def test_crl_field_must_be_bytes(world):
    magic, body, _ = msgpack.unpackb(signed(world), raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields[4] = "crl"
    with pytest.raises(Refused, match="^directory file is malformed$"):
        load(world, signed(world, fields=fields))


def test_size_limit_is_inclusive(world):
    data = b"\x00" * MAX_DIRECTORY_BYTES
    with pytest.raises(Refused, match="^directory file is malformed$"):  # not "too large"
        load(world, data)


def test_a_ca_that_is_not_ed25519(world):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "EC CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(world.now - dt.timedelta(days=1))
        .not_valid_after(world.now + dt.timedelta(days=1))
        .sign(key, __import__("cryptography").hazmat.primitives.hashes.SHA256())
    )
    magic, body, sig = msgpack.unpackb(signed(world), raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields[3] = cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(Refused, match="^directory CA key is not Ed25519$"):
        load(world, signed(world, fields=fields))


def test_rollback_message(world, tmp_path):
    path = tmp_path / "trust.json"
    load(world, signed(world, version=3), TrustState(path))
    with pytest.raises(
        Refused,
        match=r"^directory version 2 is older than version 3 already trusted \(rollback refused\)$",
    ):
        load(world, signed(world, version=2), TrustState(path))


def test_trust_never_goes_back_and_is_kept_privately(tmp_path):
    path = tmp_path / "new" / "state" / "trust.json"
    trust = TrustState(path)
    trust.accept("ca", 5)
    trust.accept("ca", 3)  # a caller that did not check first: still 5
    assert TrustState(path).highest_version("ca") == 5 and trust.pinned_now == "ca"
    assert TrustState(path).highest_version("other") == 0
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_build_directory_refuses(world, tmp_path):
    from keys.directory import build_directory

    authority = _ca_copy(world, tmp_path)
    for days in (0, 3651):
        with pytest.raises(UsageError, match=r"^--valid-days must be 1\.\.3650$"):
            build_directory(authority, world.certs, world.now, days)
    with pytest.raises(
        CipherpostError, match=f"^certificates folder {tmp_path / 'none'} does not exist$"
    ):
        build_directory(authority, tmp_path / "none", world.now)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CipherpostError, match=r"^no agency certificates \(\*\.sign\.crt\) in "):
        build_directory(authority, tmp_path / "empty", world.now)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / f"{A}.sign.crt").write_bytes((world.certs / f"{A}.sign.crt").read_bytes())
    with pytest.raises(CipherpostError, match=f"has no matching {A}.enc.crt$"):
        build_directory(authority, lonely, world.now)
    other = make_world(tmp_path / "other", {A: Level.MAT})
    with pytest.raises(CipherpostError, match="certificate not issued by the trusted CA$"):
        build_directory(authority, other.certs, world.now)


def test_build_directory_validity(world, tmp_path):
    from keys.directory import build_directory

    authority = _ca_copy(world, tmp_path)
    for days, want in ((None, 7), (1, 1), (3650, 3650)):
        data = (
            build_directory(authority, world.certs, world.now)
            if days is None
            else build_directory(authority, world.certs, world.now, days)
        )
        d = load(world, data)
        assert d.expires_at - d.issued_at == dt.timedelta(days=want)


def test_trust_state_from_the_environment_and_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("CIPHERPOST_STATE_DIR", str(tmp_path / "env"))
    trust = TrustState.default()
    assert trust.path == tmp_path / "env" / "trust.json" and trust.pinned_now is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CipherpostError, match=f"^{tmp_path / 'bad.json'}: damaged trust state$"):
        TrustState(tmp_path / "bad.json")
