"""Metrics and health of one gateway: Prometheus counters hung on its lifecycle events.

The service calls the hooks of :class:`GatewayMetrics` (``decided``, ``junk``,
``committed``, ``checkpointed``, ``connected`` ...) at the moments they
describe; nothing else in the service counts. :class:`HealthServer` serves,
on the address of ``[metrics] listen`` in GATEWAY.toml:

- ``/metrics``: the Prometheus text format;
- ``/healthz``: 200 while the process runs;
- ``/readyz``: 200 when connected to the broker, consuming, deciding (policy
  and directory in force) and the audit store writable; otherwise 503 with
  the reasons, one per line.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from keys.logsetup import get_logger

log = get_logger("cipherpost.gateway")
PREFIX = "cipherpost_gateway_"


def _version() -> str:
    try:
        return metadata.version("cipherpost")
    except metadata.PackageNotFoundError:
        return "unknown"


class GatewayMetrics:
    """One gateway's metrics, in its own registry (several gateways may share a process)."""

    def __init__(self, gateway_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info(PREFIX + "build", "cipherpost build and this gateway's log id", registry=r).info(
            {"version": _version(), "gateway_id": gateway_id}
        )
        self.decisions = Counter(
            PREFIX + "decisions", "Decisions on headers, by outcome and rule id",
            ["decision", "rule"], registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            PREFIX + "refusals", "Verified messages refused without a decision (parts, notices)",
            ["rule"], registry=r,
        )  # fmt: skip
        self.junk = Counter(
            PREFIX + "junk_messages", "Messages refused before any signature verified",
            ["rule"], registry=r,
        )  # fmt: skip
        self.forwards = Counter(PREFIX + "forwards", "Parts forwarded (confirmed)", registry=r)
        self.duplicates = Counter(PREFIX + "duplicates", "Copies acked without action", registry=r)
        self.notices = Counter(PREFIX + "notices_relayed", "Notices relayed", registry=r)
        self.leaves = Counter(PREFIX + "leaves_appended", "Audit leaves appended", registry=r)
        self.commit_seconds = Histogram(
            PREFIX + "commit_seconds", "Durable audit commit of one batch", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        self.commit_failures = Counter(
            PREFIX + "commit_failures", "Audit commits that failed (batch requeued)", registry=r
        )
        self.internal_errors = Counter(
            PREFIX + "internal_errors", "Internal errors (message requeued)", registry=r
        )
        self.last_checkpoint = Gauge(
            PREFIX + "last_checkpoint_timestamp_seconds", "When the last checkpoint was signed",
            registry=r,
        )  # fmt: skip
        self.checkpoint_size = Gauge(
            PREFIX + "checkpoint_size", "Tree size of the last signed checkpoint", registry=r
        )
        self.connected_gauge = Gauge(
            PREFIX + "broker_connected", "1 while consuming from the broker", registry=r
        )
        self.reconnects = Counter(
            PREFIX + "broker_reconnects", "Consumer connections after the first", registry=r
        )
        self.expiry = Gauge(
            PREFIX + "expiry_timestamp_seconds",
            "When the directory, policy or audit certificate in force expires", ["what"],
            registry=r,
        )  # fmt: skip
        self.version = Gauge(
            PREFIX + "version_in_force", "Directory and policy versions in force", ["what"],
            registry=r,
        )  # fmt: skip
        self.paused = Gauge(
            PREFIX + "paused", "1 while no decision is possible (policy or directory expired)",
            registry=r,
        )  # fmt: skip
        self.held = Gauge(
            PREFIX + "held_messages",
            "Messages given back to their lane since the gateway paused",
            registry=r,
        )
        self._connections = 0

    # --- hooks -------------------------------------------------------------------------------

    def decided(self, decision: str, rule: str) -> None:
        self.decisions.labels(decision, rule).inc()

    def refused(self, rule: str) -> None:
        self.refusals.labels(rule).inc()

    def junk_tallied(self, rule: str, count: int) -> None:
        self.junk.labels(rule).inc(count)

    def committed(self, seconds: float, leaves: int) -> None:
        self.commit_seconds.observe(seconds)
        self.leaves.inc(leaves)

    def checkpointed(self, size: int, when: dt.datetime) -> None:
        self.checkpoint_size.set(size)
        self.last_checkpoint.set(when.timestamp())

    def connected(self, up: bool) -> None:
        if up:
            self._connections += 1
            if self._connections > 1:
                self.reconnects.inc()
        self.connected_gauge.set(1 if up else 0)

    def in_force(
        self, *, directory: tuple[int, dt.datetime], policy: tuple[int, dt.datetime | None],
        audit_certificate: dt.datetime,
    ) -> None:  # fmt: skip
        self.version.labels("directory").set(directory[0])
        self.version.labels("policy").set(policy[0])
        self.expiry.labels("directory").set(directory[1].timestamp())
        if policy[1] is not None:
            self.expiry.labels("policy").set(policy[1].timestamp())
        self.expiry.labels("audit_certificate").set(audit_certificate.timestamp())

    def pause(self, paused: bool, held: int) -> None:
        self.paused.set(1 if paused else 0)
        self.held.set(held)


class HealthServer:
    """``/metrics``, ``/healthz``, ``/readyz`` over HTTP, in a daemon thread."""

    def __init__(
        self, address: tuple[str, int], metrics: GatewayMetrics, not_ready: Callable[[], list[str]]
    ) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    self._send(200, b"ok\n")
                elif self.path == "/readyz":
                    reasons = not_ready()
                    body = ("\n".join(reasons) or "ready") + "\n"
                    self._send(503 if reasons else 200, body.encode())
                else:
                    self._send(404, b"not found\n")

            def _send(
                self, code: int, body: bytes, kind: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes are not events

        self._server = ThreadingHTTPServer(address, Handler)
        host, port = self._server.server_address[:2]
        self.address = (str(host), int(port))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gateway-health", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("health_listening", address=f"{self.address[0]}:{self.address[1]}")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
