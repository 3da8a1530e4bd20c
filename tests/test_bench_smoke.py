"""Each benchmark runs end to end on a tiny load and prints its figures (no figure is
asserted: the benches measure, the tests only keep them runnable as the code moves)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.broker, pytest.mark.slow]


def bench(*argv: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / argv[0]), *argv[1:], "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_flood_bench_runs():
    out = bench("flood.py", "--junk", "300", "--docs", "5", "--rate", "20")
    assert out["gateway_kept_running"] is True
    assert out["flood_guard"] == "on" and out["flooder_suspended"] is True
    assert {"p99_ratio", "audit_leaf_bytes_per_1000_junk", "gateway_peak_rss_mib"} <= set(out)


def test_the_exchange_bench_runs():
    out = bench(
        "exchange.py", "--small", "30", "--latency", "5", "--large-mib", "1", "--broadcast", "0"
    )
    assert {"small_ratio", "cpu_ms_per_doc", "cpu_floor_ms_per_doc"} <= set(out)
