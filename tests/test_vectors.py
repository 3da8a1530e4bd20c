"""The committed envelope v1 vectors: each has exactly one expected outcome."""

import datetime as dt
import io
import json
import shutil
from pathlib import Path

import pytest

import envelopes
from envelopes import EnvelopeRefused
from keys.agency import load_agency
from keys.directory import Directory, TrustState
from tests.vectors.generate import generate

VECTORS = Path(__file__).parent / "vectors" / "envelope-v1"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
NOW = dt.datetime.fromisoformat(MANIFEST["now"])


@pytest.fixture(scope="module")
def vector_world(tmp_path_factory):
    """The vector directory and the agencies' keys (copied: git does not keep mode 0600)."""
    root = tmp_path_factory.mktemp("vector-keys")
    keys = {}
    for agency_dir in (VECTORS / "agencies").iterdir():
        dst = root / agency_dir.name
        shutil.copytree(agency_dir, dst)
        (dst / "keys.sec").chmod(0o600)
        keys[agency_dir.name] = load_agency(dst, MANIFEST["passphrase"].encode())
    directory = Directory.load((VECTORS / "directory.cpd").read_bytes(), TrustState(None), now=NOW)
    return directory, keys


@pytest.mark.parametrize("name", sorted(MANIFEST["vectors"]))
def test_vector(name, vector_world):
    directory, keys = vector_world
    meta = MANIFEST["vectors"][name]
    data = (VECTORS / f"{name}.cpe").read_bytes()

    def run_verify():
        return envelopes.verify(io.BytesIO(data), directory=directory, now=NOW)

    def run_open():
        out = io.BytesIO()
        envelopes.open(
            io.BytesIO(data), out, keys=keys[meta["open_as"]], directory=directory, now=NOW
        )
        return out.getvalue()

    if meta["expect"] == "ok":
        run_verify()
        assert run_open() == (VECTORS / f"{name}.plain").read_bytes()
        return
    if meta["stage"] == "verify":
        with pytest.raises(EnvelopeRefused, match=meta["reason"]):
            run_verify()
        # open runs the same checks first: it must refuse too, for the same reason
        with pytest.raises(EnvelopeRefused, match=meta["reason"]):
            run_open()
    else:
        run_verify()  # the gateway cannot tell; the recipient must
        with pytest.raises(EnvelopeRefused, match=meta["reason"]):
            run_open()


def test_issue_list_of_negative_vectors_is_covered():
    required = {
        "bad-header-signature",
        "bad-segment-signature",
        "label-changed",
        "recipients-changed",
        "stripped-resigned",
        "truncated",
        "reordered",
        "spliced",
        "expired",
        "wrong-recipient",
        "revoked-sender",
        "unknown-sender",
        "version-changed",
        "oversized-header",
        "malformed-msgpack",
        "empty-file",
    }
    names = set(MANIFEST["vectors"])
    assert required <= names
    assert all(MANIFEST["vectors"][n]["expect"] == "refused" for n in required)


def test_generator_reproduces_the_committed_set(tmp_path):
    """The committed vectors come from the generator: same names, same outcomes."""
    fresh = generate(tmp_path / "v", NOW)
    assert fresh["vectors"] == MANIFEST["vectors"]
    assert sorted(p.name for p in (tmp_path / "v").glob("*.cpe")) == sorted(
        p.name for p in VECTORS.glob("*.cpe")
    )
