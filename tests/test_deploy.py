"""Deployment files: the systemd units (and the compose stack) check out without running them."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "compose" / "systemd"
CIPHERPOST = Path(sys.executable).with_name("cipherpost")


def units() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_systemd_unit_verifies(unit: Path, tmp_path: Path) -> None:
    # Instance units are verified as one instance; the binary path points at this install.
    name = unit.name.replace("@.", "@gw1.")
    text = unit.read_text().replace("/opt/cipherpost/bin/cipherpost", str(CIPHERPOST))
    (tmp_path / name).write_text(text)
    analyze = shutil.which("systemd-analyze")
    if analyze:
        r = subprocess.run(
            [analyze, "verify", "--man=no", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    parsed = configparser.ConfigParser(strict=True, interpolation=None)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]
    parsed.read_string(text)
    service = parsed["Service"]
    assert service["ExecStart"].startswith(str(CIPHERPOST))
    assert service.get("NoNewPrivileges") == "yes" and service.get("CapabilityBoundingSet") == ""
    assert "PASSPHRASE=" not in text  # a passphrase file through LoadCredential, never inline


def test_the_gateway_unit_is_a_notify_service_with_its_passphrase_as_a_credential() -> None:
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNITS / "cipherpost-gateway@.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["LoadCredential"].startswith("passphrase:")
    assert service["Environment"] == "CIPHERPOST_PASSPHRASE_FILE=%d/passphrase"


def test_the_witness_is_never_restarted_after_an_alarm() -> None:
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNITS / "cipherpost-witness.service")
    assert unit["Service"]["RestartPreventExitStatus"] == "3"
    assert unit["Service"]["Restart"] == "on-failure"


def test_sd_notify_tells_systemd_and_is_silent_without_it(tmp_path, monkeypatch) -> None:
    import socket

    from gateway.notify import sd_notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1") is True
        assert server.recv(64) == b"READY=1"


def test_the_image_is_pinned_and_runs_unprivileged() -> None:
    import tomllib

    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    froms = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert froms and all(":" in f and "latest" not in f for f in froms)
    assert "USER cipherpost" in dockerfile
    pins = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in (ROOT / "compose" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        name = dep.split(">")[0].split("=")[0].split("<")[0].strip().lower()
        assert name in pins, f"{name} is not pinned in compose/requirements.txt"


def test_alert_rules_use_metrics_the_gateway_exports() -> None:
    import re

    import yaml

    from gateway.metrics import GatewayMetrics

    exported = {
        sample.name
        for family in GatewayMetrics("gw-test").registry.collect()
        for sample in family.samples
    } | {
        family.name + suffix
        for family in GatewayMetrics("gw-test").registry.collect()
        for suffix in ("", "_total")
    }
    rules = yaml.safe_load((ROOT / "compose" / "prometheus" / "alerts.yml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(names) == len(set(names)) >= 8
    for group in rules["groups"]:
        for rule in group["rules"]:
            for metric in re.findall(r"cipherpost_gateway_\w+", rule["expr"]):
                assert metric in exported, f"{rule['alert']}: {metric} is not exported"
