from __future__ import annotations

import atexit
import contextlib
import shutil
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


@contextlib.contextmanager
def running_cluster(folder: Path, keep_logs: Path):
    """A native 3-node TLS-only cluster rendered from the shipped compose/rabbitmq
    configuration; always stopped and removed (also when the interpreter exits without
    running the finaliser). The nodes' logs are kept in ``keep_logs`` (pytest keeps the
    last three runs' temporary folders): a failure is often read after the cluster is gone."""
    from compose.cluster import start

    started = start(folder)
    atexit.register(started.destroy)
    try:
        yield started
    finally:
        atexit.unregister(started.destroy)
        for node in started.nodes:
            with contextlib.suppress(OSError):
                shutil.copytree(node.log_folder, keep_logs / f"{started.tag}-n{node.index}")
        started.destroy()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """One cluster for every ``cluster`` test of the session that leaves it whole."""
    logs = tmp_path_factory.getbasetemp() / "cluster-logs"
    with running_cluster(tmp_path_factory.mktemp("cluster"), logs) as started:
        yield started


@pytest.fixture
def own_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A cluster for one test alone: one that stops every node at once. After a
    whole-cluster restart, RabbitMQ 3.10 sometimes fails to start a *new* virtual host's
    queues on one node (``noproc``); tests isolate themselves in new virtual hosts, and
    one such restart must not take every later cluster test with it."""
    logs = tmp_path_factory.getbasetemp() / "cluster-logs"
    with running_cluster(tmp_path_factory.mktemp("own-cluster"), logs) as started:
        yield started


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
