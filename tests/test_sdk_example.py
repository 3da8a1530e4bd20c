"""docs/examples/dms_bridge.py runs as written against the real RabbitMQ."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agents.world import PASSPHRASE
from tests.exchange import PROVINCE, A, make_world, wait_for

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
    assert bridge.recall(province, eid, "gửi nhầm") == [A]
    recalled: list[str] = []

    def recall_taken_in() -> bool:  # each round takes in what waits, answers each recall
        recalled.extend(bridge.handle_recalls(commune, tmp_path / "register.json", 0.3))
        return bool(recalled)

    assert wait_for(recall_taken_in, timeout=90), "the commune's DMS never saw the recall"
    assert recalled == [eid]
    assert json.loads((tmp_path / "register.json").read_text())[0]["recalled"] is True
    assert bridge.history(province, eid)[A][-1] == "15 recall agreed"


def run_example(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, EXAMPLE, *map(str, args)], capture_output=True, text=True, env=env,
        timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_the_example_as_a_script_takes_one_passphrase_per_agency_and_fails_in_one_line(
    world, tmp_path
):
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    for path, text in ((right, PASSPHRASE.decode()), (wrong, "not the commune's")):
        path.write_text(text + "\n")
        path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "CIPHERPOST_PASSPHRASE"}
    province, commune = world.agent_config(PROVINCE), world.agent_config(A)
    failed = run_example(
        province, commune, A.lower(),
        env={**env, "PROVINCE_PASSPHRASE_FILE": str(right), "COMMUNE_PASSPHRASE_FILE": str(wrong)},
    )  # fmt: skip
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith("dms_bridge: ") and "wrong passphrase" in line
    first = re.fullmatch(r"sent ([0-9a-f]{32})\n", failed.stdout).group(1)  # told before failing
    done = run_example(
        province, commune, A,
        env={**env, "PROVINCE_PASSPHRASE_FILE": str(right), "COMMUNE_PASSPHRASE_FILE": str(right)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("registered 12/UBND-VP (Công văn) due 2026-12-05") == 2  # nothing lost
    assert f"{A}: 01 arrived, 03 accepted, 06 completed" in done.stdout
    assert first not in done.stdout  # the second run sent its own letter; both arrived


def test_the_library_configures_no_logging(world, tmp_path):
    """An integrator's application decides where records go: opening an agent and sending adds
    no handler anywhere and prints nothing."""
    handlers = "(logging.getLogger().handlers[:], logging.getLogger('cipherpost').handlers[:])"
    code = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from agents import open_agent\n"
        f"before = {handlers}\n"
        f"Path('d.txt').write_text('x')\n"
        f"with open_agent({str(world.agent_config(PROVINCE))!r}) as agent:\n"
        f"    agent.send(Path('d.txt'), to={A!r}, level='mat', progress=False)\n"
        f"after = {handlers}\n"
        "assert before == after == ([], []), after\n"
    )
    env = {**os.environ, "CIPHERPOST_PASSPHRASE": PASSPHRASE.decode()}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
