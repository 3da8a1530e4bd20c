"""Helpers for tests against the real RabbitMQ: a world in its own vhost, raw connections."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pika

import envelopes
from agents.world import World, build_world
from broker.connection import BrokerConfig, connect_blocking
from broker.directory_feed import publish_directory
from broker.management import Management
from broker.provision import PUBLISHER_LOGIN
from broker.topology import SUBMIT_EXCHANGE
from compose.cluster import Cluster
from envelopes.parts import iter_parts
from keys.codes import AgencyCode
from keys.levels import Level

ADMIN_URL = "http://guest:guest@127.0.0.1:15672"  # library calls (the world builder)
OPERATOR_URL = "http://guest@127.0.0.1:15672"  # commands: the password from the environment
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


# A started cluster's folder (python -m compose.cluster start --dir D): the exchange tests then
# run on it, over TLS with certificate login, instead of on the machine's node (README).
CLUSTER_ENV = "CIPHERPOST_TEST_CLUSTER"


def env_cluster() -> Cluster | None:
    """The cluster named by ``CIPHERPOST_TEST_CLUSTER``, if any."""
    folder = os.environ.get(CLUSTER_ENV)
    return Cluster.load(Path(folder)) if folder else None


@contextlib.contextmanager
def scratch_vhost(name: str) -> Iterator[BrokerConfig]:
    """A vhost of its own for a broker-level test (``cp-<name>-<random>``), guest allowed
    everything in it; deleted afterwards with whatever the test left there."""
    admin = Management.from_url(ADMIN_URL)
    vhost = f"cp-{name}-{secrets.token_hex(4)}"
    admin.put(f"/api/vhosts/{admin.q(vhost)}", {})
    try:
        admin.put(
            f"/api/permissions/{admin.q(vhost)}/{admin.q(admin.username)}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield BrokerConfig("guest", "guest", vhost=vhost)
    finally:
        admin.delete(f"/api/vhosts/{admin.q(vhost)}")


def make_world(
    root: Path, agencies: dict[str, tuple[str, Level]] | None = None, **kwargs: object
) -> World:
    cluster = env_cluster()
    if cluster is not None and "site" not in kwargs:
        kwargs["site"] = cluster.site()
    return build_world(root, agencies or BASIC, admin_url=ADMIN_URL, **kwargs)  # type: ignore[arg-type]


def broker_config(world: World, code: str) -> BrokerConfig:
    return world.broker(code)


def raw_connection(world: World, code: str) -> pika.BlockingConnection:
    return connect_blocking(broker_config(world, code))


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def queue_depth(world: World, queue: str) -> int:
    """Ready messages, exactly (a passive declare as the admin; management stats lag)."""
    return queue_state(world, queue)[0]


def queue_state(world: World, queue: str) -> tuple[int, int]:
    """(ready messages, consumers), exactly, by a passive declare as the admin."""
    cluster = env_cluster()
    if cluster is not None:
        conn = connect_blocking(cluster.admin_broker(world.vhost))
    else:
        params = pika.ConnectionParameters(
            "127.0.0.1", 5672, world.vhost, pika.PlainCredentials("guest", "guest")
        )
        conn = pika.BlockingConnection(params)
    try:
        ok = conn.channel().queue_declare(queue, passive=True).method
        return int(ok.message_count), int(ok.consumer_count)
    finally:
        conn.close()


def close_connections(world: World, user: str) -> int:
    """Close, from the broker side, every connection of ``user`` (a user of this test only).

    rabbitmqctl sees connections at once; the management API lists them only
    after its next statistics tick.
    """
    cluster = env_cluster()
    if cluster is not None:
        return cluster.close_connections(user, world.vhost)
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "user", "vhost"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    count = sum(
        1 for line in listed.stdout.splitlines() if line.split("\t")[:2] == [user, world.vhost]
    )
    if count:
        subprocess.run(
            [
                "rabbitmqctl",
                "-q",
                "close_all_user_connections",
                user,
                "test: connection cut by the broker",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
    return count


def submit(
    world: World, code: str, body: bytes, kind: str = "part", user_id: str | None = "self"
) -> None:
    """Publish ``body`` to cp.submit as agency ``code`` (its own broker login), confirmed."""
    conn = raw_connection(world, code)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        uid = world.login(code) if user_id == "self" else user_id
        ch.basic_publish(
            SUBMIT_EXCHANGE,
            code,  # its own lane: the only routing key its topic permission allows
            body,
            pika.BasicProperties(type=kind, user_id=uid),
            mandatory=True,
        )
    finally:
        conn.close()


def sealed_by(world: World, code: str, to: str) -> bytes:
    with world.client(code) as c:
        out = io.BytesIO()
        doc = b"before the revocation\n" * 10
        envelopes.seal(
            io.BytesIO(doc),
            out,
            keys=c.keys,
            directory=c.directory,
            to=[AgencyCode.parse(to)],
            level=Level.MAT,
            size=len(doc),
        )
    return out.getvalue()


def publish_raw(world: World, data: bytes) -> None:
    """Publish without the CLI's own check (it refuses to publish a bad version)."""
    creds = world.root / "broker-credentials" / f"{world.prefix}{PUBLISHER_LOGIN}.broker.json"
    publish_directory(BrokerConfig.load(creds), data)


def parts_of(cpe: bytes) -> list[bytes]:
    """The wire parts (one AMQP message each) of a sealed ``.cpe``."""
    return [body for _, _, body in iter_parts(io.BytesIO(cpe))]


def blast(
    world: World,
    code: str,
    bodies: Iterable[bytes],
    *,
    user_ids: tuple[bool, ...] = (True,),
    kind: str = "part",
    confirm: bool = False,
) -> tuple[int, str]:
    """Agency ``code`` publishes ``bodies`` to its lane as fast as it can on one connection
    (the i-th with its user_id if ``user_ids[i % len(user_ids)]``); returns (published,
    "completed" or how the broker cut it off)."""
    conn = raw_connection(world, code)
    with_uid = pika.BasicProperties(type=kind, user_id=world.login(code))
    without = pika.BasicProperties(type=kind)
    sent = 0
    try:
        ch = conn.channel()
        if confirm:
            ch.confirm_delivery()
        for i, body in enumerate(bodies):
            ch.basic_publish(
                SUBMIT_EXCHANGE, code, body, with_uid if user_ids[i % len(user_ids)] else without
            )
            sent += 1
            if i % 200 == 0:
                conn.process_data_events(0)
        conn.process_data_events(0.5)
        return sent, "completed"
    except pika.exceptions.AMQPError as e:
        return sent, type(e).__name__
    finally:
        if conn.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                conn.close()
