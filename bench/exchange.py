"""Exchange throughput, latency and CPU per document against a raw pika baseline, same run.

    .venv/bin/python bench/exchange.py [--json] [--small 5000] [--large-mib 256] [--broadcast 75]
    .venv/bin/python bench/exchange.py --cluster   # the same on a native 3-node TLS cluster

Every party runs in its own process, ours and the baseline's alike, and each
phase reports the CPU milliseconds per unit that each process used (utime +
stime from ``/proc/<pid>/stat``), the RabbitMQ node included, beside the
wall-clock ratio: on a shared machine wall-clock swings, CPU time does not.

- small: 1 KiB documents, one recipient. Ours: a sender agent process seals
  and submits, a ``cipherpost gateway run`` process verifies, audits and
  forwards, a ``cipherpost receive --follow`` process verifies, decrypts,
  writes the inbox and sends the signed receipt, which the gateway verifies,
  audits and relays back to the sender process, which takes it in. A phase
  ends when the sender holds every receipt. Baseline, same message size,
  same prefetch: a sender publishing with pipelined confirms and consuming
  its receipts -> a relay that republishes with confirms and acks each
  batch with ``multiple=True`` once confirmed -> a sink that acks each batch
  with ``multiple=True`` and publishes one receipt per message back to the
  sender; persistent messages, quorum queues.
- floor: ``cpu_floor_ms_per_doc`` is what the protocol cannot do without, measured
  in the same run: its crypto (3 Ed25519 signatures, 5 verifications, HPKE wrap
  and unwrap, secretstream both ways on 1 KiB), its 7 broker operations (4
  publishes, 3 deliveries) at the baseline's measured CPU per operation, broker
  and clients included, and its durable writes (a batch-of-16 SQLite commit
  per document's share, one file write + fsync).
- latency: p50/p99 from submit to the receiver's inbox at ``--latency-rate``
  documents per second (10 by default).
- large: one document end to end vs the baseline moving 1 MiB messages over
  the same two hops; CPU ms per MiB per process; peak RSS of each process,
  measured in that process (``VmHWM``).
- broadcast: 1 MiB to 75 recipients, time until all 75 have it (``--broadcast 0``
  skips it).

The publishers of both sides are ``broker.publisher.ConfirmingPublisher``
(pika's SelectConnection with a confirm window), because pika's
BlockingChannel cannot pipeline confirms.
"""
# Oversized: a benchmark: every party (sender, gateway, receiver, raw baseline) in one file

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import os
import queue
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import logging  # noqa: E402

import pika  # noqa: E402

from agents import logs  # noqa: E402
from agents.world import PASSPHRASE, World, build_world  # noqa: E402
from bench.cpu import Meter, broker_pid, cpu_seconds, vm_hwm_mib  # noqa: E402
from broker.connection import BrokerConfig, connect_blocking  # noqa: E402
from broker.publisher import ConfirmingPublisher  # noqa: E402
from broker.topology import QUEUE_ARGUMENTS  # noqa: E402
from compose.cluster import Cluster  # noqa: E402
from compose.cluster import start as start_cluster  # noqa: E402
from keys.codes import AgencyCode  # noqa: E402
from keys.levels import Level  # noqa: E402
from tests.helpers import commune_code  # noqa: E402

ADMIN_URL = "http://guest:guest@127.0.0.1:15672"
PROVINCE = "000.00.00.H41"
PREFETCH = 32
BATCH = PREFETCH // 4  # our consumers settle in quarter windows: the baseline does too
RECEIPT_BYTES = 200
OUR_BROKER_OPS = 7  # document, forward, receipt, relay published; 3 of them consumed...
BASE_BROKER_OPS = 6  # ... the baseline: document, relay, receipt; each published and consumed
Q1, Q2, Q3 = "bench.q1", "bench.q2", "bench.receipts"


# --- child processes ------------------------------------------------------------------------


class Child:
    """A bench party in its own process: it prints ``ready``, waits for ``go``, does its work,
    prints one JSON line, and exits on ``exit``. The parent meters it between go and result."""

    def __init__(self, role: str, args: list[str], log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--role", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
        )
        self.pid = self.proc.pid
        self.log = log
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.rss_mib = 0.0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"bench child {self.proc.args[3]} silent for {timeout} s") from None
        if line is None:
            tail = self.log.read_text(errors="replace")[-1500:]
            code = self.proc.wait()
            raise RuntimeError(f"bench child {self.proc.args[3]} exited: {code}\n{tail}")
        return line

    def ready(self, timeout: float = 300) -> None:
        if self._line(timeout) != "ready":
            raise RuntimeError("bench child did not say ready")

    def _say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        self._say("go")

    def result(self, timeout: float = 1800) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self._line(timeout))
        return out

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.rss_mib = vm_hwm_mib(self.pid)
            try:
                self._say("exit")
            except (BrokenPipeError, OSError):
                pass
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _child_wait(word: str) -> None:
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r}, got {line!r}")


def _child_report(result: dict[str, Any]) -> None:
    result["rss_mib"] = round(vm_hwm_mib(), 1)
    print(json.dumps(result), flush=True)


def role_send(args: argparse.Namespace) -> None:
    """Our sender: seal and submit every document, take in every receipt (a real agent)."""
    from agents.client import Client
    from agents.config import AgentConfig

    config = AgentConfig.load(Path(args.config))
    sender = Client(config, PASSPHRASE)
    inbox = Client(config, PASSPHRASE)  # the same agency's receiving side, as a clerk runs it
    receipts: dict[str, float] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("kind") == "receipt":
            receipts[str(event["envelope_id"])] = time.monotonic()

    inbox.on_event = on_event
    stop = threading.Event()
    receiving = threading.Thread(target=inbox.receive, kwargs={"follow": True, "stop": stop})
    receiving.start()
    sender.refresh_directory()
    _ = sender.publisher
    docs = sorted(Path(args.docs).iterdir(), key=lambda p: int(p.stem[1:]))[: args.n]
    to = AgencyCode.parse(args.to)
    time.sleep(1.0)  # the receiving consumer attaches
    print("ready", flush=True)
    _child_wait("go")
    sent: dict[str, float] = {}
    start = time.monotonic()
    for i, doc in enumerate(docs):
        if args.rate:
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t = time.monotonic()
        sent[sender.send(doc, to=[to], level=Level.MAT, progress=False, wait=False)] = t
    sender.flush()
    deadline = time.monotonic() + args.timeout
    while not (ok := sent.keys() <= receipts.keys()) and time.monotonic() < deadline:
        time.sleep(0.02)  # a cheap poll: waking on every receipt would cost the sender CPU
    done = max(receipts[e] for e in sent) if ok else time.monotonic()
    result = {"sent": sent, "receipts": ok, "done": done, "start": start}
    _child_report(result)
    _child_wait("exit")
    stop.set()
    receiving.join(60)
    sender.close()
    inbox.close()


class _BatchAcker:
    """Acks a consumer's deliveries with ``multiple=True`` in order, once each batch is done."""

    def __init__(self, connection: pika.BlockingConnection, channel: Any) -> None:
        self.connection, self.channel = connection, channel
        self.batches: collections.deque[list[Any]] = collections.deque()  # [last tag, left]
        self.lock = threading.Lock()

    def add(self, last_tag: int, left: int) -> list[Any]:
        batch = [last_tag, left]
        with self.lock:
            self.batches.append(batch)
        if left == 0:
            self.done_one(batch, count=False)
        return batch

    def done_one(self, batch: list[Any], count: bool = True) -> None:
        with self.lock:
            if count:
                batch[1] -= 1
            tag = None
            while self.batches and self.batches[0][1] == 0:
                tag = self.batches.popleft()[0]
        if tag is not None:
            self.connection.add_callback_threadsafe(
                lambda t=tag: self.channel.basic_ack(t, multiple=True)
            )


def _consume_batches(
    config: BrokerConfig, q: str, on_batch: Any, stop: threading.Event, declare: bool = False
) -> None:
    """Consume ``q``; hand each batch (at most BATCH, or what one poll brought) to
    ``on_batch(connection, channel, [(tag, body), ...])``."""
    conn = pika.BlockingConnection(config.parameters())
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    batch: list[tuple[int, bytes]] = []

    def on_message(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
        batch.append((method.delivery_tag, body))
        if len(batch) >= BATCH:
            on_batch(conn, ch, batch[:])
            batch.clear()

    ch.basic_consume(q, on_message)
    while not stop.is_set():
        conn.process_data_events(time_limit=0.2)
        if batch:
            on_batch(conn, ch, batch[:])
            batch.clear()
    conn.process_data_events(time_limit=0.2)
    conn.close()


def admin(vhost: str, credentials: str | None) -> BrokerConfig:
    """The baseline's login: guest on the machine's node, or (``--cluster``) the cluster
    admin's certificate login from the credentials file the bench wrote."""
    if credentials:
        return BrokerConfig.load(Path(credentials))
    return BrokerConfig("guest", "guest", vhost=vhost)


def _serve(args: argparse.Namespace, q: str, make: Any) -> None:
    """A baseline relay or sink: consume ``q`` with ``make(publisher)`` as the batch handler
    until told to exit."""
    config = admin(args.vhost, args.admin)
    pub = ConfirmingPublisher(config)
    stop = threading.Event()
    t = threading.Thread(target=_consume_batches, args=(config, q, make(pub), stop))
    t.start()
    print("ready", flush=True)
    _child_wait("go")
    _child_report({})
    _child_wait("exit")
    stop.set()
    t.join(30)
    pub.close()


def role_base_relay(args: argparse.Namespace) -> None:
    """Republish each message with confirms; ack each batch (multiple=True) once confirmed."""
    ackers: dict[int, _BatchAcker] = {}

    def make(pub: ConfirmingPublisher) -> Any:
        def on_batch(conn: Any, ch: Any, batch: list[tuple[int, bytes]]) -> None:
            acker = ackers.setdefault(id(ch), _BatchAcker(conn, ch))
            handle = acker.add(batch[-1][0], len(batch))
            for _, body in batch:
                f = pub.publish("", Q2, body, pika.BasicProperties(delivery_mode=2))
                f.add_done_callback(lambda _f: acker.done_one(handle))

        return on_batch

    _serve(args, Q1, make)


def role_base_sink(args: argparse.Namespace) -> None:
    """Ack each batch (multiple=True); one receipt per message back to the sender."""
    receipt = os.urandom(RECEIPT_BYTES)

    def make(pub: ConfirmingPublisher) -> Any:
        def on_batch(conn: Any, ch: Any, batch: list[tuple[int, bytes]]) -> None:
            ch.basic_ack(batch[-1][0], multiple=True)  # on the consumer's thread
            for _ in batch:
                pub.publish("", Q3, receipt, pika.BasicProperties(delivery_mode=2))

        return on_batch

    _serve(args, Q2, make)


def role_base_send(args: argparse.Namespace) -> None:
    config = admin(args.vhost, args.admin)
    pub = ConfirmingPublisher(config)
    stop = threading.Event()
    receipts = [0]
    got = threading.Condition()

    def on_batch(conn: Any, ch: Any, batch: list[tuple[int, bytes]]) -> None:
        ch.basic_ack(batch[-1][0], multiple=True)
        with got:
            receipts[0] += len(batch)
            got.notify_all()

    t = threading.Thread(target=_consume_batches, args=(config, Q3, on_batch, stop))
    t.start()
    body = os.urandom(args.size)
    time.sleep(0.5)
    print("ready", flush=True)
    _child_wait("go")
    start = time.monotonic()
    for _ in range(args.n):
        pub.publish("", Q1, body, pika.BasicProperties(delivery_mode=2))
    pub.flush(600)
    with got:
        ok = got.wait_for(lambda: receipts[0] >= args.n, timeout=args.timeout)
    _child_report({"receipts": ok, "start": start, "done": time.monotonic()})
    _child_wait("exit")
    stop.set()
    t.join(30)
    pub.close()


# --- baseline -------------------------------------------------------------------------------


def baseline(
    vhost: str, n: int, size: int, logs_dir: Path, rabbit: int | str | None, creds: str | None
) -> dict[str, Any]:
    """Move ``n`` messages of ``size`` bytes over two hops and receipts back, raw pika."""
    conn = connect_blocking(admin(vhost, creds))
    ch = conn.channel()
    for q in (Q1, Q2, Q3):
        ch.queue_declare(q, durable=True, arguments=QUEUE_ARGUMENTS)
        ch.queue_purge(q)
    conn.close()
    common = ["--vhost", vhost, "--n", str(n), "--size", str(size)]
    if creds:
        common += ["--admin", creds]
    children = {
        name: Child(f"base-{name}", common, logs_dir / f"base-{name}.log")
        for name in ("relay", "sink", "send")
    }
    try:
        for c in children.values():
            c.ready()
        meter = Meter({**{k: c.pid for k, c in children.items()}, "rabbitmq": rabbit}).start()
        for c in children.values():
            c.go()
        result = children["send"].result()
        meter.stop()
        assert result["receipts"], "the baseline did not get every receipt"
        for name in ("relay", "sink"):
            children[name].result()
    finally:
        for c in children.values():
            c.finish()
    return {
        "seconds": result["done"] - result["start"],
        "cpu_s": meter.used,
        "rss_mib": {k: round(c.rss_mib, 1) for k, c in children.items()},
    }


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


def wait_for_consumers(
    world: World, codes: list[str], creds: str | None, timeout: float = 300
) -> None:
    """Until every inbox queue has its agent attached."""
    conn = connect_blocking(admin(world.vhost, creds))
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


def ours(
    world: World,
    docs: Path,
    n: int,
    to: str,
    pids: dict[str, int | None],
    rate: float | None = None,
) -> dict[str, Any]:
    """One phase of ours: a sender process submits ``n`` documents from ``docs`` and waits
    for every receipt; CPU of every process between go and the last receipt."""
    args = ["--config", str(world.agent_config(PROVINCE)), "--docs", str(docs), "--to", to]
    args += ["--n", str(n)] + (["--rate", str(rate)] if rate else [])
    sender = Child("send", args, world.root / "sender.log")
    try:
        sender.ready()
        meter = Meter({"sender": sender.pid, **pids}).start()
        sender.go()
        result = sender.result()
        meter.stop()
        assert result["receipts"], "not every receipt came back to the sender"
    finally:
        sender.finish()
    return {
        "seconds": result["done"] - result["start"],
        "sent": result["sent"],
        "cpu_s": meter.used,
        "sender_rss_mib": sender.rss_mib,
    }


# --- the floor ------------------------------------------------------------------------------


def crypto_floor_ms(rounds: int = 300) -> float:
    """CPU ms of the crypto one 1 KiB document needs: 3 signatures (header, segment,
    receipt), 5 verifications, HPKE wrap + unwrap, secretstream push + pull, SHA-256."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from envelopes import _crypto

    sk = Ed25519PrivateKey.generate()
    pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    xk = X25519PrivateKey.generate()
    xpk = xk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    doc = os.urandom(1024)
    ctx = _crypto.SEGMENT_CONTEXT
    start = cpu_seconds()
    for _ in range(rounds):
        sigs = [_crypto.sign(sk, ctx, doc[:300]) for _ in range(3)]
        for i in range(5):
            _crypto.verify_signature(pk, sigs[i % 3], ctx, doc[:300])
        key = _crypto.new_payload_key()
        wrapped = _crypto.wrap_key(key, xpk, b"info")
        _crypto.unwrap_key(wrapped, xk, b"info")
        enc = _crypto.StreamEncryptor(key, b"h" * 32)
        ct = enc.push(doc, True)
        _crypto.StreamDecryptor(key, enc.header, b"h" * 32).pull(ct, True)
        hashlib.sha256(ct).digest()
    return (cpu_seconds() - start) * 1000 / rounds


def durable_floor_ms(work: Path, docs: int = 320) -> float:
    """CPU ms per document of its durable writes: a share of one synchronous=FULL SQLite
    commit of 16 rows (the gateway's batch), and one 1 KiB file written and fsynced."""
    db = sqlite3.connect(work / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE r (k INTEGER PRIMARY KEY, v BLOB)")
    row = os.urandom(400)
    start = cpu_seconds()
    for _ in range(0, docs, 16):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO r VALUES (NULL, ?)", [(row,)] * 16)
        db.execute("COMMIT")
    for k in range(docs):
        fd = os.open(work / f"floor-{k}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, row + row)
        os.fsync(fd)
        os.close(fd)
    used = cpu_seconds() - start
    db.close()
    for k in range(docs):
        (work / f"floor-{k}").unlink()
    return used * 1000 / docs


def rabbit_idle_ms_per_s(rabbit: int | str | None, seconds: float = 3.0) -> float:
    """The node's CPU with nothing of ours running (other users of a shared broker)."""
    if rabbit is None:
        return 0.0
    before = cpu_seconds(rabbit)
    time.sleep(seconds)
    return round((cpu_seconds(rabbit) - before) * 1000 / seconds, 2)


def _per(phase: dict[str, Any], units: float, idle_ms_s: float) -> dict[str, float]:
    """CPU ms per unit per process and in total; ``*_less_idle``: the node's CPU less what
    it used, at its idle rate measured before the phase, for the broker's other users."""
    cpu_s: dict[str, float] = phase["cpu_s"]
    out = {k: round(v * 1000 / units, 3) for k, v in cpu_s.items()}
    out["total"] = round(sum(cpu_s.values()) * 1000 / units, 3)
    if "rabbitmq" in cpu_s:
        background = idle_ms_s * phase["seconds"] / units
        out["rabbitmq_less_idle"] = round(max(0.0, out["rabbitmq"] - background), 3)
        less = out["total"] - out["rabbitmq"] + out["rabbitmq_less_idle"]
        out["total_less_idle"] = round(less, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--small", type=int, default=5000, help="small envelopes (5000)")
    parser.add_argument("--latency", type=int, default=200, help="envelopes for latency (200)")
    parser.add_argument("--large-mib", type=int, default=256, help="large document MiB (256)")
    parser.add_argument("--latency-rate", type=float, default=10.0, help="docs/s (10)")
    parser.add_argument("--broadcast", type=int, default=75, help="recipients (75; 0: skip)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        action="store_true",
        help="run on a native 3-node TLS-only cluster started for this run (compose/cluster.py)"
        " instead of the machine's node; clients log in with certificates; the RabbitMQ CPU"
        " figure is the three nodes' sum",
    )
    where.add_argument(
        "--cluster-dir",
        type=Path,
        metavar="DIR",
        help="run on an already started cluster (python -m compose.cluster start --dir DIR)",
    )
    parser.add_argument("--admin", help=argparse.SUPPRESS)
    # The bench's own child processes (see Child).
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--docs", help=argparse.SUPPRESS)
    parser.add_argument("--to", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--vhost", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=1800.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logs.configure(json_lines=False, level=logging.ERROR)
    if args.role:
        roles = {
            "send": role_send,
            "base-relay": role_base_relay,
            "base-sink": role_base_sink,
            "base-send": role_base_send,
        }
        roles[args.role](args)
        return 0
    cluster = None
    if args.cluster_dir is not None:
        cluster = Cluster.load(args.cluster_dir)
    elif args.cluster:
        cluster = start_cluster(Path(tempfile.mkdtemp(prefix="cp-bench-cluster-")))
    try:
        return run(args, cluster)
    finally:
        if args.cluster and cluster is not None:
            cluster.destroy()


def run(args: argparse.Namespace, cluster: Cluster | None) -> int:
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    rabbit: int | str | None = broker_pid()
    if cluster is not None:  # the three nodes together (bench/cpu.py sums a pid list)
        rabbit = ",".join(str(cluster.pid(node)) for node in cluster.nodes)

    n_communes = max(1, args.broadcast)
    communes = {commune_code(i): (f"Xã {i}", Level.TOI_MAT) for i in range(n_communes)}
    agencies = {PROVINCE: ("Tỉnh", Level.TOI_MAT), **communes}
    with tempfile.TemporaryDirectory(prefix="cp-bench-x-") as tmp:
        work = Path(tmp)
        site = cluster.site() if cluster is not None else None
        world = build_world(work / "w", agencies, admin_url=ADMIN_URL, site=site)
        creds: str | None = None
        if cluster is not None:
            creds = str(work / "admin.broker.json")
            cluster.admin_broker(world.vhost).save(Path(creds))
        gw = gateway_process(world)
        receiver = None
        try:
            time.sleep(2)
            target = commune_code(0)
            small_dir = work / "small"
            small_dir.mkdir()
            for i in range(max(args.small, args.latency)):
                (small_dir / f"d{i}.txt").write_bytes(os.urandom(1024))
            receiver = Receiver(world, target)
            wait_for_consumers(world, [target], creds)
            pids = {"gateway": gw.pid, "receiver": receiver.proc.pid, "rabbitmq": rabbit}
            idle = {"small": rabbit_idle_ms_per_s(rabbit)}
            log(f"small: {args.small} x 1 KiB, send -> gateway -> receive -> receipt ...")
            small = ours(world, small_dir, args.small, target, pids)
            assert receiver.wait_for(set(small["sent"]), 600), "not every document arrived"
            envelope_size = 1024 + 900  # header + framing
            log("small: raw two-hop baseline ...")
            idle["base"] = rabbit_idle_ms_per_s(rabbit)
            base = baseline(world.vhost, args.small, envelope_size, work, rabbit, creds)
            ours_ms = _per(small, args.small, idle["small"])
            base_ms = _per(base, args.small, idle["base"])
            log(f"  ours {args.small / small['seconds']:,.0f} docs/s, {ours_ms} CPU ms/doc")
            log(f"  baseline {args.small / base['seconds']:,.0f} msg/s, {base_ms} CPU ms/msg")
            floor_crypto = crypto_floor_ms()
            floor_durable = durable_floor_ms(work)
            floor_broker = base_ms["total_less_idle"] * OUR_BROKER_OPS / BASE_BROKER_OPS
            floor = floor_crypto + floor_broker + floor_durable

            log(f"latency at {args.latency_rate:g} docs/s ...")
            lat_run = ours(world, small_dir, args.latency, target, pids, rate=args.latency_rate)
            assert receiver.wait_for(set(lat_run["sent"]), 600)
            lat = sorted((receiver.arrived[e] - t) * 1000 for e, t in lat_run["sent"].items())
            p50 = statistics.median(lat)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]

            log(f"large: {args.large_mib} MiB end to end ...")
            big_dir = work / "big"
            big_dir.mkdir()
            with (big_dir / "d0.bin").open("wb") as f:
                block = os.urandom(1 << 20)
                for i in range(args.large_mib):
                    f.write(i.to_bytes(4, "big") + block[4:])
            idle["large"] = rabbit_idle_ms_per_s(rabbit)
            large = ours(world, big_dir, 1, target, pids)
            assert receiver.wait_for(set(large["sent"]), 60)
            (big_dir / "d0.bin").unlink()
            idle["base_large"] = rabbit_idle_ms_per_s(rabbit)
            base_large = baseline(world.vhost, args.large_mib, 1 << 20, work, rabbit, creds)
            large_mb_s = args.large_mib * 1.048576 / large["seconds"]
            log(
                f"  ours {large_mb_s:,.0f} MB/s, baseline "
                f"{args.large_mib * 1.048576 / base_large['seconds']:,.0f} MB/s"
            )
            gateway_rss = vm_hwm_mib(gw.pid)
            receiver.close()
            receiver_rss = receiver.peak_rss_mib
            receiver = None
            sender_rss = max(small["sender_rss_mib"], large["sender_rss_mib"])

            broadcast_s = float("nan")
            if args.broadcast:
                log(f"broadcast: 1 MiB to {args.broadcast} recipients (one process each) ...")
                one = work / "one.bin"
                one.write_bytes(os.urandom(1 << 20))
                # The agents run and wait first: unlocking keys is not delivery time.
                broadcast = [Receiver(world, code) for code in communes]
                try:
                    wait_for_consumers(world, list(communes), creds)
                    with world.client(PROVINCE) as province:
                        start = time.monotonic()
                        eid = province.send(
                            one,
                            to=[AgencyCode.parse(c) for c in communes],
                            level=Level.MAT,
                            progress=False,
                        )
                    got = [r.arrived[eid] for r in broadcast if r.wait_for({eid}, 300)]
                    if len(got) == len(communes):
                        broadcast_s = max(got) - start
                finally:
                    for r in broadcast:
                        r.close()
        finally:
            if receiver is not None:
                receiver.close()
            gw.send_signal(signal.SIGTERM)
            gw.wait(60)
            world.cleanup()

    mib = args.large_mib
    result = {
        "small_docs_s": round(args.small / small["seconds"], 1),
        "small_baseline_msgs_s": round(args.small / base["seconds"], 1),
        "small_ratio": round(base["seconds"] / small["seconds"], 3),
        "cpu_ms_per_doc": ours_ms,
        "baseline_cpu_ms_per_msg": base_ms,
        "cpu_ratio": round(base_ms["total_less_idle"] / ours_ms["total_less_idle"], 3),
        "cpu_floor_ms_per_doc": round(floor, 3),
        "cpu_floor_parts_ms": {
            "crypto": round(floor_crypto, 3),
            "broker_7_ops": round(floor_broker, 3),
            "durable_writes": round(floor_durable, 3),
        },
        "cpu_vs_floor": round(ours_ms["total_less_idle"] / floor, 2),
        "rabbitmq_idle_cpu_ms_per_s": idle,
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "latency_rate_docs_s": args.latency_rate,
        "large_mib": mib,
        "large_mb_s": round(mib * 1.048576 / large["seconds"], 1),
        "large_baseline_mb_s": round(mib * 1.048576 / base_large["seconds"], 1),
        "large_ratio": round(base_large["seconds"] / large["seconds"], 3),
        "large_cpu_ms_per_mib": (large_ms := _per(large, mib, idle["large"])),
        "large_baseline_cpu_ms_per_mib": (
            base_large_ms := _per(base_large, mib, idle["base_large"])
        ),
        "large_cpu_ratio": round(base_large_ms["total_less_idle"] / large_ms["total_less_idle"], 3),
        "peak_rss_mib": round(max(gateway_rss, receiver_rss, sender_rss), 1),
        "gateway_peak_rss_mib": round(gateway_rss, 1),
        "receiver_peak_rss_mib": round(receiver_rss, 1),
        "sender_peak_rss_mib": round(sender_rss, 1),
        "baseline_peak_rss_mib": base_large["rss_mib"],
        "broadcast_recipients": args.broadcast,
        "broadcast_s": None if broadcast_s != broadcast_s else round(broadcast_s, 2),  # NaN
        "small_n": args.small,
        "cpus": os.cpu_count(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>30}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
