"""A native 3-node TLS-only RabbitMQ cluster on this host, for tests, benchmarks and trials.

    python -m compose.cluster start --dir /tmp/cp-cluster      # prints the nodes, as JSON
    python -m compose.cluster status --dir /tmp/cp-cluster
    python -m compose.cluster stop --dir /tmp/cp-cluster       # stops the nodes, removes D

Each node gets free loopback ports, its own data and log folders, the cluster's own Erlang
cookie (a private HOME) and a certificate from a throwaway TLS CA made in ``D/tls``. The
configuration is ``compose/rabbitmq/rabbitmq.conf`` rendered for the node: the same file
the compose stack ships, so the tests check what is deployed. The machine's own node
(5672) is never touched: these nodes have their own names, ports and cookie.

Exit codes: 0 done, 1 a node did not start or stop (the message says which), 2 usage.
"""
# Oversized: the test cluster's whole lifecycle (config, processes, faults, CLI) in one tool

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agents.world import BrokerSite
from broker.connection import BrokerConfig, TlsFiles
from broker.management import Management
from compose.rabbitmq.render import render
from keys import tls
from keys.keystore import write_private_file

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "rabbitmq"
RABBITMQ_SBIN = Path("/usr/lib/rabbitmq/bin")
ADMIN_USER = "cp-admin"
STATE_FILE = "cluster.json"
# A node whose applications are stopped and not booting: how long before we start them
# (pause_minority restarts a healed node's applications by itself within seconds).
SELF_RESTART_S = 20
# After a hung node: how long every node must run, with no partition reported, to count as
# healed (the paused node restarted itself 7-8 s after its resume in the logs).
STEADY_S = 20
# Every node runs but a partition is still reported: how long before the hung node's
# applications are restarted (RabbitMQ forgets a partition only when a node of it goes down,
# and a resumed node that reconnected before it noticed the others left never pauses).
HEAL_AFTER_S = 30
# A node whose boot failed is started again this many times (see Cluster.await_node).
BOOT_RETRIES = 2
START_TIMEOUT_S = 300  # a restarted node waits for its peers' tables (up to 5 min)
NOFILE = 65536
HOST = "127.0.0.1"
PORT_FLOOR = 20000


class ClusterError(Exception):
    """A node did not do what it was asked (exit code 1)."""


def render_config(template: str, values: dict[str, str]) -> str:
    """Fill every ``${NAME}`` the way the compose stack does (compose/rabbitmq/render.py);
    a placeholder without a value is an error, not a blank."""
    try:
        return render(template, values)
    except KeyError as e:
        raise ClusterError(f"rabbitmq.conf: no value for ${{{e.args[0]}}}") from None


def free_port() -> int:
    """A TCP port nobody listens on now, below the ephemeral range: a port from that range,
    once its node stops, can be taken as the source port of anyone's outgoing connection,
    and the node restarted on it fails with ``dist_port_already_used``."""
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(PORT_FLOOR, max(PORT_FLOOR + 1, low))  # noqa: S311 - not a secret
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise ClusterError(f"no free port between {PORT_FLOOR} and {low}")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


@dataclass
class Node:
    """One node: its Erlang name, its ports and its folder."""

    index: int
    name: str
    amqp_port: int
    dist_port: int
    management_port: int
    prometheus_port: int
    base: str

    @property
    def folder(self) -> Path:
        return Path(self.base)

    @property
    def log_folder(self) -> Path:
        return self.folder / "log"

    @property
    def log_file(self) -> Path:
        return self.log_folder / f"{self.name}.log"


@dataclass
class Cluster:
    """A running (or stopped) native cluster described by ``D/cluster.json``."""

    dir: str
    nodes: list[Node]
    admin_password: str
    tag: str
    stopped: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)  # SIGSTOPped since the last restore()

    # --- paths and names --------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return Path(self.dir)

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / tls.TLS_CA_CERT_FILE

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) of every node's AMQPS listener."""
        return [(HOST, n.amqp_port) for n in self.nodes]

    def management(self, node: Node | None = None) -> Management:
        """The admin's management API on ``node`` (the first by default), over TLS."""
        n = node or self.nodes[0]
        return Management(
            f"https://{HOST}:{n.management_port}", ADMIN_USER, self.admin_password, self.ca_file
        )

    def site(self) -> BrokerSite:
        """The cluster as a world builder's broker: every node, certificate login."""
        return BrokerSite.load(self.root)

    def admin_broker(self, vhost: str) -> BrokerConfig:
        """The admin over AMQP (tests: exact queue depths), by its own client certificate."""
        key, cert = self.tls_dir / f"{ADMIN_USER}.tls.key", self.tls_dir / f"{ADMIN_USER}.tls.crt"
        if not cert.exists():
            issue_client(self, ADMIN_USER, key, cert)
        host, port = self.endpoints[0]
        return BrokerConfig(
            ADMIN_USER, "", host, port, vhost, nodes=tuple(self.endpoints),
            tls=TlsFiles(self.ca_file, cert, key),
        )  # fmt: skip

    def _running_node(self) -> Node:
        for n in self.nodes:
            if n.name not in self.stopped:
                return n
        raise ClusterError("no node of the cluster runs")

    def connections(self, node: Node, user: str, vhost: str) -> int:
        """How many connections ``user`` has to ``node`` in ``vhost`` now (the listing is
        cluster-wide; a connection's process id names its node)."""
        out = self.ctl(
            self._running_node(), "list_connections", "user", "vhost", "pid", "--no-table-headers"
        )
        return sum(
            1
            for line in out.splitlines()
            if line.split("\t")[:2] == [user, vhost] and f"<{node.name}." in line
        )

    def close_connections(self, user: str, vhost: str) -> int:
        """Close every connection of ``user`` in ``vhost`` on every node; how many there were."""
        count = sum(
            self.connections(n, user, vhost) for n in self.nodes if n.name not in self.stopped
        )
        if count:
            self.ctl(
                self._running_node(), "close_all_user_connections", user,
                "test: connection cut by the broker",
            )  # fmt: skip
        return count

    def node(self, name_or_index: str | int) -> Node:
        for n in self.nodes:
            if name_or_index in (n.name, n.index):
                return n
        raise ClusterError(f"no node {name_or_index!r} in this cluster")

    def save(self) -> None:
        path = self.root / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        path.chmod(0o600)

    @classmethod
    def load(cls, directory: Path) -> Cluster:
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ClusterError(f"{directory} holds no cluster (start one there)") from None
        raw["nodes"] = [Node(**n) for n in raw["nodes"]]
        return cls(**raw)

    # --- running RabbitMQ's own tools -------------------------------------------------------

    def env(self, node: Node) -> dict[str, str]:
        """The node's environment: RabbitMQ's per-node variables, a private HOME (cookie)."""
        folder = node.folder
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.root / "home"),
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=str(folder / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.log_folder),
            RABBITMQ_PID_FILE=str(folder / "node.pid"),
            RABBITMQ_CONFIG_FILE=str(folder / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(folder / "enabled_plugins"),
            # An empty env file: /etc/rabbitmq/rabbitmq-env.conf would force the node name.
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(folder / "advanced.config"),
            # Loopback only: epmd and the distribution port.
            ERL_EPMD_ADDRESS=HOST,
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def ctl(self, node: Node, *args: str, timeout: float = 60, check: bool = True) -> str:
        """``rabbitmqctl -n NODE ARGS`` as the cluster's user; its output."""
        try:
            done = subprocess.run(
                [str(RABBITMQ_SBIN / "rabbitmqctl"), "-q", "-n", node.name, *args],
                env=self.env(node),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"rabbitmqctl {args[0]} on {node.name}: no answer") from None
        if check and done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise ClusterError(f"rabbitmqctl {args[0]} on {node.name}: {detail[0][:200]}")
        return done.stdout

    def pid(self, node: Node) -> int:
        """The node's operating-system process id, checked: the process must be this node's
        VM (a stale pid file must never make us signal another process, such as the
        machine's own RabbitMQ)."""
        try:
            pid = int((node.folder / "node.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            raise ClusterError(f"{node.name}: not running (no process for its pid file)") from None
        if str(self.root / "home").encode() not in cmdline:  # the VM runs with our HOME
            raise ClusterError(f"{node.name}: its pid file names another process now")
        return pid

    # --- life cycle -------------------------------------------------------------------------

    def _render(self, node: Node) -> None:
        folder = node.folder
        for sub in ("mnesia", "log"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        # The template names three peers; a smaller cluster names its first node again.
        names = {
            f"CLUSTER_NODE_{i}": self.nodes[i - 1 if i <= len(self.nodes) else 0].name
            for i in (1, 2, 3)
        }
        values = {
            "LISTEN_IP": HOST,
            "AMQPS_PORT": f"{HOST}:{node.amqp_port}",  # loopback only
            "MANAGEMENT_PORT": str(node.management_port),
            "PROMETHEUS_PORT": str(node.prometheus_port),
            "TLS_CA": str(self.ca_file),
            "TLS_CERT": str(folder / "node.crt"),
            "TLS_KEY": str(folder / "node.key"),
            **names,
        }
        conf = render_config((TEMPLATES / "rabbitmq.conf").read_text(), values)
        (folder / "rabbitmq.conf").write_text(conf)
        shutil.copyfile(TEMPLATES / "enabled_plugins", folder / "enabled_plugins")
        (folder / "advanced.config").write_text("[].\n")

    def _spawn(self, node: Node) -> int:
        """Start the node's VM (detached); returns where its log stood, for :meth:`await_node`."""
        try:
            log_from = node.log_file.stat().st_size
        except OSError:
            log_from = 0
        # The node inherits the raised open-file limit: quorum queues keep many files open.
        with contextlib.suppress(ValueError, OSError):
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft < NOFILE:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(NOFILE, hard), hard))
        done = subprocess.run(
            [str(RABBITMQ_SBIN / "rabbitmq-server"), "-detached"],
            env=self.env(node),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"{node.name} did not start: {done.stderr.strip()[:200]}")
        return log_from

    def await_node(
        self, node: Node, log_from: int | None = None, timeout: float = START_TIMEOUT_S
    ) -> None:
        """Wait until the node runs its applications (``rabbitmqctl await_startup``).

        A node whose boot failed (its log says so after ``log_from``) and whose VM has
        exited is started again, at most :data:`BOOT_RETRIES` times: what the deployment's
        supervisor does (``restart: unless-stopped``). RabbitMQ 3.10 fails a boot when the
        nodes of a whole cluster start together and one asks a peer for its feature flags
        before that peer has loaded them (``incompatible_feature_flags``, ``badmap``)."""
        deadline = time.monotonic() + timeout
        retries = BOOT_RETRIES
        while True:
            # await_startup needs the node's Erlang VM up to ask it; -detached returns first.
            left = deadline - time.monotonic()
            if left <= 0:
                log = node.log_file
                raise ClusterError(
                    f"{node.name} did not start within {timeout:.0f} s (see {log});"
                    f" its log ends: {_log_tail(log)}"
                )
            out = subprocess.run(
                [
                    str(RABBITMQ_SBIN / "rabbitmqctl"), "-q", "-n", node.name, "await_startup",
                    "--timeout", str(int(max(1, left))),
                ],
                env=self.env(node), capture_output=True, text=True, timeout=left + 10,
                check=False,
            )  # fmt: skip
            if out.returncode == 0:
                return
            failure = None if log_from is None else self._boot_failure(node, log_from)
            if failure and retries:
                retries -= 1
                print(
                    f"compose.cluster: {node.name} failed to boot ({failure}); starting it again",
                    file=sys.stderr,
                )
                log_from = self._spawn(node)
                continue
            time.sleep(0.5)  # the VM is not up yet: ask again (a poll, not a synchronisation)

    def _boot_failure(self, node: Node, log_from: int) -> str | None:
        """Why the node's boot failed since ``log_from``, once its VM has exited."""
        failure = boot_failure(node.log_file, log_from)
        if failure is None:
            return None
        try:
            self.pid(node)
        except ClusterError:
            return failure  # no process for its pid file: the VM is gone
        return None  # still exiting: asked again on the next poll

    def start_node(self, node: Node) -> None:
        """Start one stopped (or killed) node and wait until it runs."""
        self.await_node(node, self._spawn(node))
        if node.name in self.stopped:
            self.stopped.remove(node.name)
        self.save()

    def start_all(self) -> None:
        """Start every node and wait for all: the first alone (it forms the cluster), then the
        others together (they join it through classic-config peer discovery). After a
        whole-cluster stop, all start together: each waits for the others' tables."""
        fresh = not (self.nodes[0].folder / "mnesia" / self.nodes[0].name).exists()
        if fresh:
            self.await_node(self.nodes[0], self._spawn(self.nodes[0]))
            rest = self.nodes[1:]
        else:
            # The last node to stop knows the latest tables: it goes first (the others wait
            # for it anyway), then the rest, all before any is awaited.
            order = {name: i for i, name in enumerate(self.stopped)}
            rest = sorted(self.nodes, key=lambda n: -order.get(n.name, -1))
        log_from = {n.name: self._spawn(n) for n in rest}
        for n in rest:
            self.await_node(n, log_from[n.name])
        self.stopped.clear()
        self.save()

    def stop_all(self, timeout: float = 120) -> None:
        """Stop every node (a clean shutdown) and wait for each process to end."""
        for n in self.nodes:
            if n.name in self.stopped:
                continue
            with contextlib.suppress(ClusterError):
                self.resume(n)
            self.ctl(n, "stop", timeout=timeout, check=False)
        for n in self.nodes:
            with contextlib.suppress(ClusterError):
                _wait_gone(self.pid(n), timeout)
        self.stopped = [n.name for n in self.nodes]
        self.save()

    def destroy(self) -> None:
        """Stop everything (kill what does not stop) and remove the folder."""
        try:
            self.stop_all(timeout=60)
        finally:
            for n in self.nodes:
                with contextlib.suppress(ClusterError, ProcessLookupError):
                    os.kill(self.pid(n), signal.SIGKILL)
            shutil.rmtree(self.root, ignore_errors=True)

    # --- faults (the cluster tests) ---------------------------------------------------------

    def kill(self, node: Node) -> None:
        """``kill -9`` the node's VM: no goodbye to its clients or peers."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 30)
        self.stopped.append(node.name)
        self.save()

    def stop_app(self, node: Node) -> None:
        """Stop RabbitMQ on the node (the VM stays): its clients are closed."""
        self.ctl(node, "stop_app", timeout=120)

    def start_app(self, node: Node) -> None:
        self.ctl(node, "start_app", timeout=180)
        self.ctl(node, "await_startup", timeout=180)

    def pause(self, node: Node) -> None:
        """SIGSTOP: a hung node (its sockets stay open, nothing answers)."""
        os.kill(self.pid(node), signal.SIGSTOP)
        if node.name not in self.hung:
            self.hung.append(node.name)
            self.save()

    def resume(self, node: Node) -> None:
        os.kill(self.pid(node), signal.SIGCONT)

    def memory_alarm(self, node: Node, on: bool) -> None:
        """Raise (a watermark of almost nothing) or clear the node's memory alarm."""
        self.ctl(node, "set_vm_memory_high_watermark", "0.000001" if on else "0.4")

    def running(self, node: Node) -> bool:
        """Whether the node answers ``status`` now."""
        return bool(node.name not in self.stopped) and subprocess.run(
            [str(RABBITMQ_SBIN / "rabbitmqctl"), "-q", "-n", node.name, "ping"],
            env=self.env(node), capture_output=True, timeout=30, check=False,
        ).returncode == 0  # fmt: skip

    def restore(self) -> None:
        """Every node running its applications again, whatever a test did to it (killed,
        stopped, paused), and, after a hung node, the partition it caused healed."""
        for n in self.nodes:
            if n.name in self.stopped:
                self.start_node(n)
            else:
                self.resume(n)
        for n in self.nodes:
            self.until_running(n)
        if self.hung:
            self.until_steady(STEADY_S)
            self.hung.clear()
            self.save()

    def until_steady(self, window: float, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every node runs its applications and none reports a partition, for
        ``window`` seconds in a row, healing a partition that does not heal by itself.

        A node resumed after a hang longer than the tick time meets peers that wrote it off.
        Either it pauses (``pause_minority`` stops and restarts its applications some seconds
        *after* it answered again: 8 s here, so one look right after the resume says
        "running" too early), or, when its peers reconnected before it noticed they had left,
        it never pauses and every node goes on reporting the partition: RabbitMQ's
        documented recovery is to restart the applications on the side one trusts less,
        here the hung nodes, after ``HEAL_AFTER_S``."""
        deadline = time.monotonic() + timeout
        steady_since = time.monotonic()
        partitioned_since: float | None = None
        while time.monotonic() - steady_since < window:
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the cluster did not settle within {timeout:.0f} s: {self._health()}"
                )
            states = {n.name: self._state(n) for n in self.nodes}
            kinds = set(states.values())
            if kinds != {"steady"}:
                steady_since = time.monotonic()
            else:
                partitioned_since = None
            for n in self.nodes:
                if states[n.name] == "down":
                    self.until_running(n, max(1.0, deadline - time.monotonic()))
            if "partitioned" in kinds and "down" not in kinds:
                partitioned_since = partitioned_since or time.monotonic()
                if time.monotonic() - partitioned_since > HEAL_AFTER_S:
                    print(
                        f"compose.cluster: a partition outlived {HEAL_AFTER_S} s"
                        f" ({self._health()});"
                        f" restarting the applications of {', '.join(self.hung)}",
                        file=sys.stderr,
                    )  # fmt: skip
                    for name in self.hung:
                        self.stop_app(self.node(name))
                        self.start_app(self.node(name))
                    partitioned_since = None
            time.sleep(1)  # a poll of the nodes' state, not a synchronisation

    def _state(self, node: Node) -> str:
        """``steady`` (running, no partition reported), ``partitioned`` (running, one
        reported) or ``down`` (applications stopped, or no answer): one ``rabbitmqctl``."""
        out = self.ctl(node, "eval", _STATE, check=False).strip()
        return out if out in ("steady", "partitioned") else "down"

    def _health(self) -> str:
        """Each node's applications and reported partitions, on one line (for errors)."""
        return "; ".join(
            f"{n.name}: "
            + self.ctl(
                n, "eval", "{rabbit:is_running(), rabbit_node_monitor:partitions()}.",
                check=False,
            ).strip()
            for n in self.nodes
        )  # fmt: skip

    def until_running(self, node: Node, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until ``node`` runs its applications, starting them if nothing else will.

        A node that was hung (SIGSTOP) finds itself in a minority when it resumes;
        ``pause_minority`` stops its applications and starts them again once it sees the
        others. ``start_app`` in the middle of that restart fails (Mnesia already runs) and
        can leave the node half up, so the node gets time to come back by itself first."""
        deadline = time.monotonic() + timeout
        idle_since = time.monotonic()
        while not self._answers(node, "rabbit:is_running()."):
            if time.monotonic() > deadline:
                log = node.log_file
                raise ClusterError(
                    f"{node.name} does not run its applications after {timeout:.0f} s;"
                    f" its log ends: {_log_tail(log)}"
                )
            if self._answers(node, "lists:keymember(mnesia, 1, application:which_applications())."):
                idle_since = time.monotonic()  # booting (or healing): not ours to start
            elif time.monotonic() - idle_since > SELF_RESTART_S:
                self.ctl(node, "start_app", timeout=180, check=False)
                idle_since = time.monotonic()
            time.sleep(1)  # a poll of the node's state, not a synchronisation

    def _answers(self, node: Node, expression: str) -> bool:
        return self.ctl(node, "eval", expression, check=False).strip() == "true"

    def leader(self, vhost: str, queue: str) -> Node:
        """The node that leads a quorum queue now."""
        for n in self.nodes:
            if n.name in self.stopped:
                continue
            out = self.ctl(
                n, "list_queues", "-p", vhost, "name", "leader", "--no-table-headers",
                timeout=60, check=False,
            )  # fmt: skip
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return self.node(parts[1])
        raise ClusterError(f"no leader found for {queue} in {vhost}")


_STATE = (
    "case rabbit:is_running() of false -> down; true ->"
    " case rabbit_node_monitor:partitions() of [] -> steady; _ -> partitioned end end."
)


def boot_failure(log: Path, log_from: int) -> str | None:
    """Why a node's boot failed, if its log reports a failed boot after byte ``log_from``:
    the reason RabbitMQ gave for stopping, on one line (or ``None``: no failed boot)."""
    try:
        with log.open("rb") as f:
            f.seek(log_from)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    if "BOOT FAILED" not in text:
        return None
    marker = "Application rabbit exited"
    reasons = [line[line.index(marker) :] for line in text.splitlines() if marker in line]
    return (reasons[0] if reasons else "BOOT FAILED")[:300]


def _log_tail(log: Path, lines: int = 6, chars: int = 1200) -> str:
    """The last lines of a node's log, on one line: why it did not start, kept in the error
    (a test's temporary folder, and the log in it, may be gone when someone reads it)."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return f"(unreadable: {e.strerror})"
    return " | ".join(line.strip() for line in tail)[-chars:] or "(empty)"


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A killed VM is reaped by init; a poll of its pid is the only way to see it go.
        time.sleep(0.1)
    raise ClusterError(f"process {pid} still runs after {timeout:.0f} s")


def create(directory: Path, nodes: int = 3) -> Cluster:
    """Lay out a new cluster in ``directory`` (ports, names, TLS CA, node certificates)."""
    if nodes < 1 or nodes > 3:
        raise ClusterError("--nodes must be 1, 2 or 3 (the shipped configuration names three)")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    tag = secrets.token_hex(3)
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = tls.make_ca(f"cipherpost test TLS CA {tag}", now)
    tls_dir = directory / "tls"
    tls_dir.mkdir(exist_ok=True)
    (tls_dir / tls.TLS_CA_CERT_FILE).write_bytes(tls.cert_pem(ca_cert))
    write_private_file(tls_dir / tls.TLS_CA_KEY_FILE, tls.key_pem(ca_key))
    home = directory / "home"
    home.mkdir(exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16).upper())
    cookie.chmod(0o400)
    (directory / "rabbitmq-env.conf").write_text("")
    members = []
    for i in range(1, nodes + 1):
        folder = directory / f"node{i}"
        folder.mkdir(exist_ok=True)
        members.append(
            Node(
                i,
                f"cp{tag}n{i}@localhost",
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                str(folder),
            )
        )
        key = tls.new_key()
        cert = tls.issue_server(ca_cert, ca_key, key, [HOST, "localhost"], now)
        tls.write_key_and_cert(key, cert, folder / "node.key", folder / "node.crt")
    # Hex: a password starting with "-" would read as an option to rabbitmqctl add_user.
    cluster = Cluster(str(directory), members, secrets.token_hex(18), tag)
    for n in cluster.nodes:
        cluster._render(n)
    cluster.save()
    return cluster


def start(directory: Path, nodes: int = 3) -> Cluster:
    """Create and start a cluster; the admin user exists and guest is gone when it returns."""
    cluster = create(directory, nodes)
    try:
        cluster.start_all()
        first = cluster.nodes[0]
        cluster.ctl(first, "add_user", ADMIN_USER, cluster.admin_password)
        cluster.ctl(first, "set_user_tags", ADMIN_USER, "administrator")
        cluster.ctl(first, "delete_user", "guest", check=False)
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def issue_client(cluster: Cluster, login: str, key_path: Path, cert_path: Path) -> None:
    """A client key and certificate for ``login`` from the cluster's TLS CA (tests, demo)."""
    ca_cert, ca_key = tls.open_ca(cluster.tls_dir)
    key = tls.new_key()
    cert = tls.issue_client(ca_cert, ca_key, tls.make_request(login, key), dt.datetime.now(dt.UTC))
    tls.write_key_and_cert(key, cert, key_path, cert_path)


def _describe(cluster: Cluster) -> dict[str, object]:
    return {
        "dir": cluster.dir,
        "ca": str(cluster.ca_file),
        "admin_user": ADMIN_USER,
        "nodes": [
            {
                "name": n.name,
                "amqps": f"{HOST}:{n.amqp_port}",
                "management": f"https://{HOST}:{n.management_port}",
                "prometheus": f"http://{HOST}:{n.prometheus_port}/metrics",
                "running": cluster.running(n),
            }
            for n in cluster.nodes
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compose.cluster",
        description="Start, inspect or stop a native TLS-only RabbitMQ cluster on loopback "
        "(free ports, own data folders, own cookie, own TLS CA; never the machine's node).",
        epilog="Exit codes: 0 done, 1 a node failed (the message says which), 2 usage. The "
        "admin password is in D/cluster.json (mode 0600).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="create D and start the nodes; prints them as JSON")
    p_start.add_argument("--nodes", type=int, default=3, help="how many nodes (1-3, default 3)")
    p_start.add_argument("--dir", type=Path, required=True, help="a new or empty folder")
    p_status = sub.add_parser("status", help="which nodes of D answer, as JSON")
    p_status.add_argument("--dir", type=Path, required=True)
    p_stop = sub.add_parser("stop", help="stop every node of D and remove D")
    p_stop.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            if (args.dir / STATE_FILE).exists():
                raise ClusterError(f"{args.dir} already holds a cluster (stop it first)")
            cluster = start(args.dir, args.nodes)
        elif args.command == "status":
            cluster = Cluster.load(args.dir)
        else:
            Cluster.load(args.dir).destroy()
            print(f"stopped and removed {args.dir}")
            return 0
        print(json.dumps(_describe(cluster), indent=2))
        return 0
    except ClusterError as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
