"""Exchange throughput and latency against a raw two-hop pika baseline, same RabbitMQ, same run.

    .venv/bin/python bench/exchange.py [--json] [--small 5000] [--large-mib 256]
    .venv/bin/python bench/exchange.py --cluster          # on a native 3-node TLS cluster

- small: 1 KiB documents, one recipient: agent send -> gateway (a separate
  ``cipherpost gateway run`` process) -> agent receive (verified, decrypted,
  written to the inbox), against the baseline: publish with pipelined confirms
  -> relay consumer that republishes with confirms and acks -> second queue ->
  consumer; persistent messages, quorum queues, the same prefetch, the same
  message size. Then p50/p99 latency at half the measured maximum rate.
- large: one document end to end vs the baseline moving 1 MiB messages over
  the same two hops; peak RSS of the gateway process and of the agent process
  (sender and receiver share this one process, so its figure is an upper bound).
- broadcast: 1 MiB to 75 recipients, time until all 75 have it.

The baseline publishes through ``broker.publisher.ConfirmingPublisher`` (pika's
SelectConnection with a confirm window; no envelope, no gateway logic), because
pika's BlockingChannel cannot pipeline confirms.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import logging  # noqa: E402

import pika  # noqa: E402

from agents import logs  # noqa: E402
from agents.world import PASSPHRASE, World, build_world  # noqa: E402
from broker.connection import BrokerConfig, connect_blocking  # noqa: E402
from broker.consumer import Consumer, Delivery  # noqa: E402
from broker.publisher import ConfirmingPublisher  # noqa: E402
from broker.topology import QUEUE_ARGUMENTS  # noqa: E402
from compose.cluster import Cluster  # noqa: E402
from compose.cluster import start as start_cluster  # noqa: E402
from keys.codes import AgencyCode  # noqa: E402
from keys.levels import Level  # noqa: E402
from tests.helpers import commune_code  # noqa: E402

ADMIN_URL = "http://guest:guest@127.0.0.1:15672"
# The admin's AMQP login for the baseline and the consumer checks: guest on the machine's
# node; on a cluster (--cluster), the cluster admin's client certificate.
admin_config: Callable[[str], BrokerConfig] = lambda vhost: BrokerConfig(  # noqa: E731
    "guest", "guest", vhost=vhost
)
PROVINCE = "000.00.00.H41"
PREFETCH = 32


def vm_hwm_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- baseline -------------------------------------------------------------------------------


def baseline(vhost: str, n: int, size: int) -> float:
    """Seconds to move ``n`` messages of ``size`` bytes over two hops with raw pika."""
    admin = admin_config(vhost)
    conn = connect_blocking(admin)
    ch = conn.channel()
    for q in ("bench.q1", "bench.q2"):
        ch.queue_declare(q, durable=True, arguments=QUEUE_ARGUMENTS)
        ch.queue_purge(q)
    conn.close()
    body = os.urandom(size)
    done = threading.Event()
    received = [0]
    relay_pub = ConfirmingPublisher(admin)

    def relay(d: Delivery) -> None:
        f = relay_pub.publish("", "bench.q2", d.body, pika.BasicProperties())
        f.add_done_callback(lambda _f: d.ack())

    def sink(d: Delivery) -> None:
        d.ack()
        received[0] += 1
        if received[0] >= n:
            done.set()

    relay_c = Consumer(admin, "bench.q1", relay, prefetch=PREFETCH)
    sink_c = Consumer(admin, "bench.q2", sink, prefetch=PREFETCH)
    threads = [threading.Thread(target=c.run, daemon=True) for c in (relay_c, sink_c)]
    for t in threads:
        t.start()
    relay_c.connected.wait(10)
    sink_c.connected.wait(10)
    start = time.perf_counter()
    with ConfirmingPublisher(admin) as pub:
        for _ in range(n):
            pub.publish("", "bench.q1", body, pika.BasicProperties())
        done.wait(600)
    elapsed = time.perf_counter() - start
    for c in (relay_c, sink_c):
        c.stop()
    for t in threads:
        t.join(10)
    relay_pub.close()
    return elapsed


# --- ours -----------------------------------------------------------------------------------


def gateway_process(world: World) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("cipherpost")
    env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    log = (world.root / "gateway.log").open("ab")
    return subprocess.Popen(
        [str(exe), "gateway", "run", "--config", str(world.gateway_config())],
        env=env,
        stdout=log,
        stderr=log,
    )


class Receiver:
    """One agency's real agent (``cipherpost receive --follow --json``) in its own process.

    Each document is timed when the agent prints it, that is once it is verified,
    decrypted, durable in the inbox folder and acked.
    """

    def __init__(self, world: World, code: str) -> None:
        exe = Path(sys.executable).with_name("cipherpost")
        env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
        self.arrived: dict[str, float] = {}
        self.proc = subprocess.Popen(
            [str(exe), "receive", "--follow", "--json", "--config", str(world.agent_config(code))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=(world.root / f"receiver-{code}.log").open("ab"),
        )
        self.peak_rss_mib = 0.0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.arrived[json.loads(line)["envelope_id"]] = time.monotonic()

    def wait_for(self, ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not ids <= self.arrived.keys() and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.proc.returncode}")
            time.sleep(0.01)
        return ids <= self.arrived.keys()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.peak_rss_mib = vm_hwm_mib(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.thread.join(10)


def wait_for_consumers(world: World, codes: list[str], timeout: float = 300) -> None:
    """Until every inbox queue has its agent attached."""
    conn = connect_blocking(admin_config(world.vhost))
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        for code in codes:
            while ch.queue_declare(world.inbox(code), passive=True).method.consumer_count < 1:
                if time.monotonic() > deadline:
                    log = world.root / f"receiver-{code}.log"
                    tail = log.read_text(errors="replace")[-600:] if log.exists() else "(no log)"
                    raise RuntimeError(f"no agent attached to the inbox of {code}: {tail}")
                time.sleep(0.1)
    finally:
        conn.close()


def send_many(
    world: World, docs: list[Path], to: str, rate: float | None = None
) -> dict[str, float]:
    sent: dict[str, float] = {}
    with world.client(PROVINCE) as province:
        start = time.monotonic()
        for i, doc in enumerate(docs):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            t = time.monotonic()
            eid = province.send(
                doc, to=[AgencyCode.parse(to)], level=Level.MAT, progress=False, wait=False
            )
            sent[eid] = t
        province.flush()
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--small", type=int, default=5000, help="small envelopes (5000)")
    parser.add_argument("--latency", type=int, default=1000, help="envelopes for latency (1000)")
    parser.add_argument("--large-mib", type=int, default=256, help="large document MiB (256)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        action="store_true",
        help="run on a native 3-node TLS-only cluster started for this run (compose/cluster.py)"
        " instead of the machine's node; clients log in with certificates",
    )
    where.add_argument(
        "--cluster-dir",
        type=Path,
        metavar="DIR",
        help="run on an already started cluster (python -m compose.cluster start --dir DIR)",
    )
    args = parser.parse_args()
    global admin_config
    cluster = None
    if args.cluster_dir is not None:
        cluster = Cluster.load(args.cluster_dir)
    elif args.cluster:
        cluster = start_cluster(Path(tempfile.mkdtemp(prefix="cp-bench-cluster-")))
    if cluster is not None:
        admin_config = cluster.admin_broker
    try:
        return run(args, cluster)
    finally:
        if args.cluster and cluster is not None:
            cluster.destroy()


def run(args: argparse.Namespace, cluster: Cluster | None) -> int:
    logs.configure(json_lines=False, level=logging.ERROR)
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))

    communes = {commune_code(i): (f"Xã {i}", Level.TOI_MAT) for i in range(75)}
    agencies = {PROVINCE: ("Tỉnh", Level.TOI_MAT), **communes}
    with tempfile.TemporaryDirectory(prefix="cp-bench-x-") as tmp:
        work = Path(tmp)
        site = cluster.site() if cluster is not None else None
        world = build_world(work / "w", agencies, admin_url=ADMIN_URL, site=site)
        gw = gateway_process(world)
        receiver = None
        try:
            time.sleep(2)
            target = commune_code(0)
            small_dir = work / "small"
            small_dir.mkdir()
            docs = []
            for i in range(args.small):
                p = small_dir / f"d{i}.txt"
                p.write_bytes(os.urandom(1024))
                docs.append(p)
            receiver = Receiver(world, target)
            wait_for_consumers(world, [target])
            log(f"small: {args.small} x 1 KiB, send -> gateway -> receive ...")
            start = time.monotonic()
            sent = send_many(world, docs, target)
            assert receiver.wait_for(set(sent), 900), "not every small envelope arrived"
            ours_small = time.monotonic() - start
            envelope_size = len((small_dir / "d0.txt").read_bytes()) + 900  # header + framing
            log("small: raw two-hop baseline ...")
            base_small = baseline(world.vhost, args.small, envelope_size)
            small_msgs_s = args.small / ours_small
            log(f"  ours {small_msgs_s:,.0f} msg/s, baseline {args.small / base_small:,.0f} msg/s")

            rate = small_msgs_s / 2
            log(f"latency at {rate:,.0f} msg/s ...")
            lat_docs = docs[: args.latency]
            lat_sent = send_many(world, lat_docs, target, rate=rate)
            assert receiver.wait_for(set(lat_sent), 600)
            lat = sorted((receiver.arrived[e] - t) * 1000 for e, t in lat_sent.items())
            p50 = statistics.median(lat)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]

            log(f"large: {args.large_mib} MiB end to end ...")
            big = work / "big.bin"
            with big.open("wb") as f:
                block = os.urandom(1 << 20)
                for i in range(args.large_mib):
                    f.write(i.to_bytes(4, "big") + block[4:])
            start = time.monotonic()
            large_sent = send_many(world, [big], target)
            assert receiver.wait_for(set(large_sent), 1800)
            ours_large = time.monotonic() - start
            base_large = baseline(world.vhost, args.large_mib, 1 << 20)
            large_mb_s = args.large_mib * 1.048576 / ours_large
            log(
                f"  ours {large_mb_s:,.0f} MB/s, baseline "
                f"{args.large_mib * 1.048576 / base_large:,.0f} MB/s"
            )
            gateway_rss = vm_hwm_mib(gw.pid)
            receiver.close()
            receiver_rss = receiver.peak_rss_mib
            receiver = None
            sender_rss = vm_hwm_mib()  # the sending agent (this process, also the baseline)

            log("broadcast: 1 MiB to 75 recipients (75 agent processes) ...")
            one = work / "one.bin"
            one.write_bytes(os.urandom(1 << 20))
            # The 75 agents run and wait first: unlocking keys is not delivery time.
            broadcast = [Receiver(world, code) for code in communes]
            try:
                wait_for_consumers(world, list(communes))
                with world.client(PROVINCE) as province:
                    start = time.monotonic()
                    eid = province.send(
                        one,
                        to=[AgencyCode.parse(c) for c in communes],
                        level=Level.MAT,
                        progress=False,
                    )
                got = [r.arrived[eid] for r in broadcast if r.wait_for({eid}, 300)]
                broadcast_s = max(got) - start if len(got) == 75 else float("nan")
            finally:
                for r in broadcast:
                    r.close()
        finally:
            if receiver is not None:
                receiver.close()
            gw.send_signal(signal.SIGTERM)
            gw.wait(60)
            world.cleanup()

    result = {
        "small_msgs_s": round(small_msgs_s, 1),
        "small_baseline_msgs_s": round(args.small / base_small, 1),
        "small_ratio": round(base_small / ours_small, 3),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "latency_rate_msgs_s": round(rate, 1),
        "large_mib": args.large_mib,
        "large_mb_s": round(large_mb_s, 1),
        "large_baseline_mb_s": round(args.large_mib * 1.048576 / base_large, 1),
        "large_ratio": round(base_large / ours_large, 3),
        "peak_rss_mib": round(max(gateway_rss, receiver_rss, sender_rss), 1),
        "gateway_peak_rss_mib": round(gateway_rss, 1),
        "receiver_peak_rss_mib": round(receiver_rss, 1),
        "sender_peak_rss_mib": round(sender_rss, 1),
        "broadcast75_s": round(broadcast_s, 2),
        "small_n": args.small,
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
