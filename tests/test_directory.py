import datetime as dt
import json

import msgpack
import pytest

from envelopes import EnvelopeRefused
from keys import ca
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState
from keys.errors import Refused
from keys.levels import Level
from tests.helpers import make_world, seal_bytes

A, B, C = "000.00.00.H41", "000.00.01.H41", "000.00.02.H41"


@pytest.fixture
def small(tmp_path):
    return make_world(tmp_path, {A: Level.TOI_MAT, B: Level.TOI_MAT, C: Level.MAT})


def test_load_and_lookup(small):
    d = small.directory()
    assert set(d.entries) == {A, B, C}
    assert d.get(AgencyCode.parse(C)).clearance is Level.MAT
    with pytest.raises(Refused) as e:
        d.get(AgencyCode.parse("000.00.09.H41"))
    # The two closest codes, closest first, each with its name: a mistyped code is named.
    assert str(e.value) == (
        "agency 000.00.09.H41 is not in the directory (did you mean"
        f" {C} (Agency {C}) or {B} (Agency {B})?)"
    )
    with pytest.raises(Refused) as e:
        d.get(AgencyCode.parse("111.22.33.K99"), "recipient")
    assert str(e.value) == "recipient 111.22.33.K99 is not in the directory"  # nothing close


def test_rollback_refused_and_state_persisted(small, tmp_path):
    old = small.directory_bytes()
    new = small.directory_bytes()
    state = tmp_path / "trust.json"
    assert Directory.load(new, TrustState(state), now=small.now).version == 2
    assert json.loads(state.read_text())["anchors"]
    with pytest.raises(Refused, match="rollback refused"):
        Directory.load(old, TrustState(state), now=small.now)
    # the same version again is fine (re-reading the file we have)
    assert Directory.load(new, TrustState(state), now=small.now).version == 2


def test_expired_refused(small):
    data = small.directory_bytes(valid_days=1)
    with pytest.raises(Refused, match="expired"):
        Directory.load(data, TrustState(None), now=small.now + dt.timedelta(days=2))


def test_wrong_ca_refused(small, tmp_path):
    other = make_world(tmp_path / "other", {A: Level.MAT})
    trust = TrustState(tmp_path / "trust.json")
    Directory.load(small.directory_bytes(), trust, now=small.now)
    with pytest.raises(Refused, match="untrusted CA"):
        Directory.load(other.directory_bytes(), TrustState(tmp_path / "trust.json"), now=small.now)
    with pytest.raises(Refused, match="different CA"):
        Directory.load(
            other.directory_bytes(),
            TrustState(None),
            now=small.now,
            ca_certificate=small.authority.certificate,
        )


def test_forged_signature_refused(small):
    magic, body, sig = msgpack.unpackb(small.directory_bytes())
    fields = msgpack.unpackb(body)
    fields[0] = 999  # jump the version without the CA
    forged = msgpack.packb(
        [magic, msgpack.packb(fields, use_bin_type=True), sig], use_bin_type=True
    )
    with pytest.raises(Refused, match="signature is not valid"):
        Directory.load(forged, TrustState(None), now=small.now)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x93\xa1x\xc4\x00\xc4\x00"])
def test_garbage_refused(data):
    with pytest.raises(Refused):
        Directory.load(data, TrustState(None), now=dt.datetime.now(dt.UTC))


def test_revoked_agency_refused_as_sender_and_recipient(small):
    before = small.directory()
    envelope_from_c = seal_bytes(small, before, C, [A], b"doc")
    envelope_to_c = seal_bytes(small, before, A, [C], b"doc")
    ca.revoke(small.authority, AgencyCode.parse(C), "test", small.now)
    after = small.directory()
    assert after.entries[C].revoked
    with pytest.raises(Refused, match="sender 000.00.02.H41 is revoked"):
        seal_bytes(small, after, C, [A], b"doc")
    with pytest.raises(Refused, match="recipient 000.00.02.H41 is revoked"):
        seal_bytes(small, after, A, [C], b"doc")
    import io

    import envelopes

    with pytest.raises(EnvelopeRefused, match="sender 000.00.02.H41 is revoked"):
        envelopes.verify(io.BytesIO(envelope_from_c), directory=after, now=small.now)
    with pytest.raises(EnvelopeRefused, match="recipient 000.00.02.H41 is revoked"):
        envelopes.verify(io.BytesIO(envelope_to_c), directory=after, now=small.now)
