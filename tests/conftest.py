from __future__ import annotations

import atexit
import sys
from pathlib import Path

import pytest

from keys.levels import Level
from tests.helpers import World, commune_code, make_world

PROVINCE = "000.00.00.H41"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A province (toi-mat), 100 communes (toi-mat) and one commune cleared only for mat."""
    agencies = {PROVINCE: Level.TOI_MAT}
    for i in range(100):
        agencies[commune_code(i)] = Level.TOI_MAT
    agencies["000.99.99.H41"] = Level.MAT
    return make_world(tmp_path_factory.mktemp("world"), agencies)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One native 3-node TLS-only cluster for every ``cluster`` test of the session, rendered
    from the shipped compose/rabbitmq configuration; always stopped and removed (also when
    the interpreter exits without running the finaliser)."""
    from compose.cluster import start

    started = start(tmp_path_factory.mktemp("cluster"))
    atexit.register(started.destroy)
    try:
        yield started
    finally:
        atexit.unregister(started.destroy)
        started.destroy()


@pytest.fixture(scope="session")
def directory(world: World):
    return world.directory()


@pytest.fixture
def state_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate the CLI's trust state and give it a passphrase."""
    monkeypatch.setenv("CIPHERPOST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", "test-passphrase")
    return tmp_path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test module that uses the real-broker helpers (tests/exchange.py) is a ``broker``
    test even if it forgot to say so: ``pytest -m "not broker"`` must never need RabbitMQ."""
    exchange = sys.modules.get("tests.exchange")
    if exchange is None:
        return
    for item in items:
        module = getattr(item, "module", None)
        if module is None or item.get_closest_marker("broker"):
            continue
        names = vars(module).values()
        if any(getattr(v, "__module__", None) == exchange.__name__ for v in names):
            item.add_marker(pytest.mark.broker)
