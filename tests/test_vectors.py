"""The committed envelope v1 vectors: each has exactly one expected outcome."""

import datetime as dt
import io
import json
import shutil
from pathlib import Path

import pytest

import envelopes
from envelopes import EnvelopeRefused
from envelopes.errors import Reason
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


def outcome(call) -> str:
    """``ok``, or the slug of the reason ``call`` was refused with."""
    try:
        call()
    except EnvelopeRefused as e:
        return e.reason.value
    return "ok"


@pytest.mark.parametrize("name", sorted(MANIFEST["vectors"]))
def test_vector(name, vector_world):
    directory, keys = vector_world
    meta = MANIFEST["vectors"][name]
    data = (VECTORS / f"{name}.cpe").read_bytes()
    out = io.BytesIO()

    def run_verify():
        envelopes.verify(io.BytesIO(data), directory=directory, now=NOW)

    def run_open():
        out.seek(0)
        out.truncate()
        envelopes.open(
            io.BytesIO(data), out, keys=keys[meta["open_as"]], directory=directory, now=NOW
        )

    if meta["expect"] == "ok":
        assert (outcome(run_verify), outcome(run_open)) == ("ok", "ok")
        assert out.getvalue() == (VECTORS / f"{name}.plain").read_bytes()
    elif meta["stage"] == "verify":
        # open runs the same checks first: it must refuse too, for the same reason
        assert (outcome(run_verify), outcome(run_open)) == (meta["expect"], meta["expect"])
    else:
        assert meta["stage"] == "open"
        # the gateway cannot tell; the recipient must
        assert (outcome(run_verify), outcome(run_open)) == ("ok", meta["expect"])


def test_every_outcome_is_ok_or_a_reason():
    slugs = {r.value for r in Reason}
    for name, meta in MANIFEST["vectors"].items():
        assert meta["expect"] == "ok" or meta["expect"] in slugs, name


def test_issue_list_of_negative_vectors_is_covered():
    required = {
        "bad-header-signature": "signature",
        "bad-segment-signature": "segment-signature",
        "label-changed": "signature",
        "recipients-changed": "signature",
        "stripped-resigned": "decrypt",
        "truncated": "segment",
        "reordered": "segment",
        "spliced": "segment-signature",
        "expired": "expired",
        "wrong-recipient": "not-recipient",
        "revoked-sender": "revoked-sender",
        "unknown-sender": "unknown-sender",
        "version-changed": "version",
        "oversized-header": "oversized",
        "malformed-msgpack": "format",
        "empty-file": "format",
        "trailing-data": "segment",
        "cut-mid-frame": "format",
        "final-flag-cleared": "segment",
        "sender-clearance": "sender-clearance",
        "recipient-clearance": "recipient-clearance",
        "key-commitment": "key-commitment",
        "dated-in-the-future": "clock",
        "sender-key": "sender-key",
        "recipient-key": "recipient-key",
        "unknown-recipient": "unknown-recipient",
        "revoked-recipient": "revoked-recipient",
        "sender-certificate-expired": "sender-certificate",
        "segment-size": "segment",
        "stream-final-early": "decrypt",
        "malformed-payload": "payload",
    }
    assert {n: MANIFEST["vectors"][n]["expect"] for n in required} == required


def test_generator_reproduces_the_committed_set(tmp_path):
    """The committed vectors come from the generator: same names, same outcomes."""
    fresh = generate(tmp_path / "v", NOW)
    assert fresh["vectors"] == MANIFEST["vectors"]
    assert sorted(p.name for p in (tmp_path / "v").glob("*.cpe")) == sorted(
        p.name for p in VECTORS.glob("*.cpe")
    )
