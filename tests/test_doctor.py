"""``cipherpost doctor``: every broken setting is named with its fix (real RabbitMQ)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path

import pytest

from agents.config import AgentConfig
from agents.world import PASSPHRASE, World
from broker.connection import BrokerConfig
from broker.provision import provision
from keys import agency, ca
from keys.codes import AgencyCode
from keys.directory import build_directory
from keys.levels import Level
from tests.exchange import A, B, make_world
from tests.helpers import cli

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    w = make_world(tmp_path_factory.mktemp("doctor"))
    w.start_gateway()
    yield w
    w.cleanup()


@pytest.fixture(autouse=True)
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())


def variant(world: World, tmp_path: Path, **changes: Path) -> Path:
    """A copy of A's agent.toml (absolute paths) with some settings changed."""
    config = dataclasses.replace(AgentConfig.load(world.agent_config(A)), **changes)
    path = tmp_path / "agent.toml"
    path.write_text(config.to_toml())
    return path


def doctor(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str]]:
    code = cli("doctor", "--config", config)
    lines = capsys.readouterr().out.splitlines()
    return code, {line.split(":")[0].split(maxsplit=1)[1]: line for line in lines}


def test_a_healthy_agent_passes_every_check(world, capsys):
    code, checks = doctor(world.agent_config(A), capsys)
    assert code == 0, checks
    assert set(checks) == {
        "config",
        "keys",
        "directory",
        "certificates",
        "broker",
        "inbox",
        "directory feed",
        "gateway",
    }
    assert all(line.startswith("ok") for line in checks.values()), checks


def test_wrong_passphrase(world, capsys, monkeypatch):
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", "not-the-passphrase")
    code, checks = doctor(world.agent_config(A), capsys)
    assert code == 1
    assert checks["keys"].startswith("FAIL") and "CIPHERPOST_PASSPHRASE" in checks["keys"]
    assert checks["certificates"].startswith("skip")


def authority_copy(world: World, tmp_path: Path) -> ca.CertificateAuthority:
    """The world's CA, copied: what a test issues or builds leaves the shared CA as it was."""
    shutil.copytree(world.ca_dir, tmp_path / "ca")
    return ca.open_ca(tmp_path / "ca", PASSPHRASE)


def test_stale_directory(world, tmp_path, capsys):
    authority = authority_copy(world, tmp_path)
    old = tmp_path / "old.cpd"
    now = dt.datetime.now(dt.UTC)
    old.write_bytes(build_directory(authority, world.root / "certs", now - dt.timedelta(days=9), 7))
    code, checks = doctor(variant(world, tmp_path, directory=old), capsys)
    assert code == 1
    assert checks["directory"].startswith("FAIL") and "expired" in checks["directory"]
    assert "stale" in checks["directory"] and "receive" in checks["directory"]


def test_expired_certificate(world, tmp_path, capsys):
    authority = authority_copy(world, tmp_path)
    request = agency.EnrollmentRequest.parse(
        (world.root / "agents" / A / "keys" / agency.REQUEST_FILE).read_bytes()
    )
    now = dt.datetime.now(dt.UTC)
    certs = tmp_path / "certs"
    for path in (world.root / "certs").glob("*.crt"):
        (certs / path.name).parent.mkdir(exist_ok=True)
        (certs / path.name).write_bytes(path.read_bytes())
    # Re-issued in the past, valid one day: expired now (keys unchanged).
    ca.issue(authority, request, Level.TOI_MAT, certs, now - dt.timedelta(days=3), 1, replace=True)
    directory = tmp_path / "d.cpd"
    directory.write_bytes(build_directory(authority, certs, now, 7))
    code, checks = doctor(variant(world, tmp_path, directory=directory), capsys)
    assert code == 1
    line = checks["certificates"]
    assert line.startswith("FAIL") and "expired" in line and "ca issue --replace" in line


def test_wrong_broker_password(world, tmp_path, capsys):
    good = BrokerConfig.load(AgentConfig.load(world.agent_config(A)).broker_credentials)
    bad = tmp_path / "broker.json"
    dataclasses.replace(good, password="wrong-password").save(bad)
    code, checks = doctor(variant(world, tmp_path, broker_credentials=bad), capsys)
    assert code == 1
    assert checks["broker"].startswith("FAIL") and "refused the login" in checks["broker"]
    assert "new credentials" in checks["broker"]


@pytest.fixture
def inbox_deleted(world: World):
    """B's inbox queue deleted (B is no other test's agency), provisioned again after."""
    queue = world.inbox(B)
    world.mgmt.delete(f"/api/queues/{world.mgmt.q(world.vhost)}/{world.mgmt.q(queue)}")
    yield B
    assert world.directory is not None
    provision(world.mgmt, world.vhost, world.directory, login_prefix=world.prefix)


def test_missing_queue(world, inbox_deleted, capsys):
    code, checks = doctor(world.agent_config(inbox_deleted), capsys)
    assert code == 1
    assert checks["inbox"].startswith("FAIL") and "missing" in checks["inbox"]
    assert "broker provision" in checks["inbox"]
    assert checks["gateway"].startswith("ok")


@pytest.mark.parametrize(
    ("days", "status", "words"),
    [(-1, "FAIL", "retired on"), (10, "WARN", "retires on")],
)
def test_a_merged_commune_is_told_when_its_code_stops_working(
    world, tmp_path, capsys, days, status, words
):
    authority = authority_copy(world, tmp_path)
    now = dt.datetime.now(dt.UTC)
    ca.retire(authority, AgencyCode.parse(A), AgencyCode.parse(B), now + dt.timedelta(days=days))
    directory = tmp_path / "d.cpd"
    directory.write_bytes(build_directory(authority, world.root / "certs", now, 7))
    code, checks = doctor(variant(world, tmp_path, directory=directory), capsys)
    line = checks["retirement"]
    assert line.startswith(status) and words in line and f"merged into {B}" in line, line
    assert code == (1 if status == "FAIL" else 0), checks
