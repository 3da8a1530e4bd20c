"""One enrolled agency floods the submit path; does another agency's document still go?

    .venv/bin/python bench/flood.py [--json] [--junk 50000] [--docs 200] [--rate 10] [--no-guard]

Agency A tries to publish ``--junk`` 4-byte junk messages as fast as it can (two
connections, no confirms: the fastest a client can push). Each connection is
its own process at nice 19: A's client runs on A's machine, not on the
gateway's cores; the broker's work for the flood is not niced and counts) while agency B sends
``--docs`` small documents to R at ``--rate`` per second, each timed from
B's ``send()`` until R's real agent (a separate ``cipherpost receive --follow``
process) has it verified, decrypted and durable. The same documents at the
same rate are timed first without the flood: the two latency distributions
are measured in one run, on one machine, so the ratio is what counts.

The gateway runs with its flood guard (docs/policy.md, "The flood guard"):
A's login is suspended and its connections closed once its junk fills a
tally, so A publishes far fewer than it offers. ``--no-guard`` runs the
gateway without it, for the figures the guard changes.

Printed: B's p50/p99 latency without and under flood and their ratio (target
p99 ratio <= 2), junk offered / published before A was cut off / decided by
the gateway / still queued in A's lane, how A's connections ended and whether
A is suspended, the audit bytes per 1,000 junk messages (target <= 10 KB: the
leaf bytes of the junk records, and their stored rows) and in all (the
suspension leaf included), the gateway's peak RSS, CPU seconds of the gateway
and the RabbitMQ node during the flood phase, and whether the gateway kept
running. Without the guard the gateway decides a flooding lane's junk at
about one prefetch window a second (it waits for each tally's leaf): most of
a 50,000-message flood is still queued, or refused by the broker, when B is
done.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.queues import Queue
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from agents import logs  # noqa: E402
from agents.world import World, build_world  # noqa: E402
from bench.cpu import broker_pid, cpu_seconds, vm_hwm_mib  # noqa: E402
from bench.exchange import (  # noqa: E402
    ADMIN_URL,
    Receiver,
    gateway_process,
    wait_for_consumers,
)
from broker.connection import BrokerConfig  # noqa: E402
from broker.provision import user_limits  # noqa: E402
from broker.topology import SUBMIT_EXCHANGE, submit_queue  # noqa: E402
from gateway.audit import AuditStore  # noqa: E402
from keys.codes import AgencyCode  # noqa: E402
from keys.levels import Level  # noqa: E402

A = "000.01.12.H41"  # the flooder
B = "000.02.12.H41"  # the honest sender
R = "000.00.00.H41"  # B's addressee
AGENCIES = {
    A: ("UBND xã Lũ Lụt", Level.MAT),
    B: ("UBND xã Ngay Thẳng", Level.MAT),
    R: ("UBND tỉnh H41", Level.TOI_MAT),
}


def send_timed(world: World, docs: list[Path], rate: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    with world.client(B) as b:
        start = time.monotonic()
        for i, doc in enumerate(docs):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t = time.monotonic()
            sent[
                b.send(doc, to=[AgencyCode.parse(R)], level=Level.MAT, progress=False, wait=False)
            ] = t
        b.flush()
    return sent


def latencies(receiver: Receiver, sent: dict[str, float]) -> list[float]:
    assert receiver.wait_for(set(sent), 600), "not every document of B arrived"
    return sorted((receiver.arrived[e] - t) * 1000 for e, t in sent.items())


def p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def _push(config_path: str, count: int, out: Queue) -> None:
    """One of A's connections: ``count`` junk publishes, no confirms (in its own process).

    Puts (published, ended) on ``out``: ``ended`` is "completed", or how the broker cut it
    off (the gateway's flood guard suspends A: its connections are closed, none may open).
    """
    os.nice(19)
    config = BrokerConfig.load(Path(config_path))
    sent = 0
    try:
        conn = pika.BlockingConnection(config.parameters())
    except pika.exceptions.AMQPError as e:
        out.put((0, type(e).__name__))
        return
    try:
        ch = conn.channel()
        props = pika.BasicProperties(type="part", user_id=config.login)
        for i in range(count):
            ch.basic_publish(SUBMIT_EXCHANGE, A, os.urandom(4), props)
            sent += 1
            if i % 1000 == 0:
                conn.process_data_events(0)
        conn.process_data_events(0)
        out.put((sent, "completed"))
    except pika.exceptions.AMQPError as e:
        out.put((sent, type(e).__name__))
    finally:
        if conn.is_open:
            conn.close()


def flood(world: World, n: int, connections: int = 2) -> tuple[float, int, list[str]]:
    """Publish up to ``n`` junk messages as A: (seconds, published, how each connection ended).

    Each of A's connections is its own process, as A's client runs on A's machine: in
    B's process, flooding threads would hold B's interpreter lock and the figure would
    measure the bench, not the broker and the gateway.
    """
    config = world.root / "broker-credentials" / f"{world.login(A)}.broker.json"
    spawn = multiprocessing.get_context("spawn")
    out: Queue = spawn.Queue()
    start = time.monotonic()
    pushers = [
        spawn.Process(target=_push, args=(str(config), n // connections, out), daemon=True)
        for _ in range(connections)
    ]
    for pusher in pushers:
        pusher.start()
    ends = [out.get(timeout=600) for _ in pushers]
    for pusher in pushers:
        pusher.join()
    if any(pusher.exitcode != 0 for pusher in pushers):
        raise RuntimeError("a flooding process failed")
    return time.monotonic() - start, sum(n for n, _ in ends), [e for _, e in ends]


def lane_depth(world: World) -> int:
    conn = pika.BlockingConnection(BrokerConfig("guest", "guest", vhost=world.vhost).parameters())
    try:
        lane = submit_queue(AgencyCode.parse(A))
        return int(conn.channel().queue_declare(lane, passive=True).method.message_count)
    finally:
        conn.close()


def junk_audit(world: World) -> tuple[int, int, int, int]:
    """(junk messages recorded, bytes of their leaves, bytes of their stored rows, bytes of
    A's suspension leaves) for A.

    A stored row is its leaf, its leaf hash and its columns, plus one Merkle node on
    average (32 bytes and its key): what the junk costs the store, page overhead aside.
    """
    store = AuditStore(world.root / "audit.db", readonly=True)
    try:
        rows = [
            r
            for r in store.records()
            if r["event"] == "unverified" and r["publisher"] == world.login(A)
        ]
        others = [
            r
            for r in store.records()
            if r["event"] == "suspended" and r["publisher"] == world.login(A)
        ]
        extra = sum(len(store.leaf(str(r["log_id"]), int(r["leaf_index"]))) for r in others)  # type: ignore[call-overload]
        leaves = [store.leaf(str(r["log_id"]), int(r["leaf_index"])) for r in rows]  # type: ignore[call-overload]
        row_bytes = sum(
            len(leaf) + 32 + 48 + sum(len(str(v)) for v in r.values())
            for leaf, r in zip(leaves, rows, strict=True)
        )
        counted = sum(int(r["count"]) for r in rows)  # type: ignore[call-overload]
        return counted, sum(map(len, leaves)), row_bytes, extra
    finally:
        store.close()


def latency_figures(calm: list[float], stormy: list[float]) -> dict[str, float]:
    return {
        "p50_ms_calm": round(statistics.median(calm), 1),
        "p99_ms_calm": round(p(calm, 0.99), 1),
        "p50_ms_flood": round(statistics.median(stormy), 1),
        "p99_ms_flood": round(p(stormy, 0.99), 1),
        "p99_ratio": round(p(stormy, 0.99) / p(calm, 0.99), 2),
    }


def flood_figures(flooded: list[tuple[float, int, list[str]]]) -> dict[str, object]:
    seconds, published, ended = flooded[0] if flooded else (None, None, None)
    return {
        "junk_published": published,
        "junk_publish_s": round(seconds, 1) if seconds is not None else None,
        "flooder_connections_ended": ended,
    }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--junk", type=int, default=50_000, help="junk messages from A (50000)")
    parser.add_argument("--docs", type=int, default=200, help="documents from B per phase (200)")
    parser.add_argument("--rate", type=float, default=10.0, help="B's documents per second (10)")
    parser.add_argument(
        "--no-guard",
        action="store_true",
        help="run the gateway without its flood guard (A is never suspended): the figures"
        " the guard is there to change",
    )
    return parser.parse_args()


def main() -> int:
    args = arguments()
    logs.configure(json_lines=False, level=logging.ERROR)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))

    with tempfile.TemporaryDirectory(prefix="cp-bench-flood-") as tmp:
        work = Path(tmp)
        world = build_world(
            work / "w", AGENCIES, admin_url=ADMIN_URL, flood_guard=not args.no_guard
        )
        gw = gateway_process(world)
        receiver = Receiver(world, R)
        try:
            wait_for_consumers(world, [R], None)
            docs = []
            for i in range(args.docs):
                path = work / f"b{i}.txt"
                path.write_bytes(os.urandom(1024))
                docs.append(path)
            say(f"B sends {args.docs} documents at {args.rate}/s, no flood ...")
            calm = latencies(receiver, send_timed(world, docs, args.rate))
            rabbit = broker_pid()  # the node listening on 5672, not another test's node
            cpu_before = (cpu_seconds(gw.pid), cpu_seconds(rabbit) if rabbit else 0.0)
            say(f"A floods {args.junk} junk messages while B sends again ...")
            flooded: list[tuple[float, int, list[str]]] = []
            flooder = threading.Thread(
                target=lambda: flooded.append(flood(world, args.junk)), daemon=True
            )
            flooder.start()
            stormy = latencies(receiver, send_timed(world, docs, args.rate))
            flooder.join()
            cpu_after = (cpu_seconds(gw.pid), cpu_seconds(rabbit) if rabbit else 0.0)
            junk_counted, junk_leaf_bytes, junk_row_bytes, suspension_bytes = junk_audit(world)
            queued = lane_depth(world)
            alive = gw.poll() is None
            suspended = user_limits(world.mgmt, world.login(A)).get("max-connections") == 0
            gateway_rss = vm_hwm_mib(gw.pid)
        finally:
            receiver.close()
            gw.send_signal(signal.SIGTERM)
            gw.wait(120)
            world.cleanup()

    per_k = 1000 / max(junk_counted, 1)
    result = {
        "docs": args.docs,
        "rate_docs_s": args.rate,
        **latency_figures(calm, stormy),
        "junk_offered": args.junk,
        **flood_figures(flooded),
        "flood_guard": "off" if args.no_guard else "on",
        "flooder_suspended": suspended,
        "junk_decided": junk_counted,
        "junk_queued_in_its_lane": queued,
        "audit_leaf_bytes_per_1000_junk": round(junk_leaf_bytes * per_k),
        "audit_store_bytes_per_1000_junk": round(junk_row_bytes * per_k),
        "audit_leaf_bytes_in_all": junk_leaf_bytes + suspension_bytes,
        "gateway_peak_rss_mib": round(gateway_rss, 1),
        "gateway_cpu_s_during_flood": round(cpu_after[0] - cpu_before[0], 2),
        "rabbitmq_cpu_s_during_flood": round(cpu_after[1] - cpu_before[1], 2),
        "gateway_kept_running": alive,
        "cpus": os.cpu_count(),
        "flooder": "2 processes at nice 19",
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>32}: {v}")
    return 0 if alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
