"""docs/examples/dms_bridge.py runs as written against the real RabbitMQ."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from agents.world import PASSPHRASE
from tests.exchange import PROVINCE, A, make_world

pytestmark = pytest.mark.broker

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "dms_bridge.py"


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())
    w = make_world(tmp_path / "w")
    w.start_gateway()
    yield w
    w.cleanup()


def load_example():
    spec = importlib.util.spec_from_file_location("dms_bridge", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dms_bridge_example_runs(world, tmp_path):
    bridge = load_example()
    province, commune = world.agent_config(PROVINCE), world.agent_config(A)
    eid = bridge.send_letter(province, A, tmp_path)
    entries = bridge.take_in(commune, tmp_path / "register.json")
    assert [e["envelope_id"] for e in entries] == [eid]
    assert entries[0]["notation"] == "12/UBND-VP" and entries[0]["due"] == "2026-12-05"
    assert json.loads((tmp_path / "register.json").read_text())[0]["type"] == "Công văn"
    assert bridge.history(province, eid) == {A: ["01 arrived", "03 accepted", "06 completed"]}
