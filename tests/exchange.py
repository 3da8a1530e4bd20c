"""Helpers for tests against the real RabbitMQ: a world in its own vhost, raw connections."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pika

from agents.world import World, build_world
from broker.connection import BrokerConfig
from broker.management import Management
from keys.levels import Level

ADMIN_URL = "http://guest:guest@127.0.0.1:15672"
PROVINCE = "000.00.00.H41"
A = "000.01.12.H41"
B = "000.02.12.H41"
MAT_ONLY = "000.03.12.H41"
OTHER_PROVINCE = "000.00.00.H42"
BASIC = {
    OTHER_PROVINCE: ("UBND tỉnh H42", Level.TOI_MAT),
    PROVINCE: ("UBND tỉnh H41", Level.TOI_MAT),
    A: ("UBND xã An Bình", Level.TOI_MAT),
    B: ("UBND xã Phú Mỹ", Level.TOI_MAT),
    MAT_ONLY: ("UBND xã Tân Hòa", Level.MAT),
}


def make_world(
    root: Path, agencies: dict[str, tuple[str, Level]] | None = None, **kwargs: object
) -> World:
    return build_world(root, agencies or BASIC, admin_url=ADMIN_URL, **kwargs)  # type: ignore[arg-type]


def broker_config(world: World, code: str) -> BrokerConfig:
    return BrokerConfig.load(world.root / "broker-credentials" / f"{world.login(code)}.broker.json")


def raw_connection(world: World, code: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(broker_config(world, code).parameters())


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def queue_depth(world: World, queue: str) -> int:
    mgmt = Management.from_url(ADMIN_URL)
    info = mgmt.get(f"/api/queues/{mgmt.q(world.vhost)}/{mgmt.q(queue)}")
    return int(info.get("messages", 0)) if info else 0


def close_connections(world: World, user: str) -> int:
    """Close, from the broker side, every connection of ``user`` in the world's vhost."""
    mgmt = Management.from_url(ADMIN_URL)
    closed = 0
    for conn in mgmt.get(f"/api/vhosts/{mgmt.q(world.vhost)}/connections") or []:
        if conn.get("user") == user:
            mgmt.delete(f"/api/connections/{mgmt.q(conn['name'])}")
            closed += 1
    return closed
