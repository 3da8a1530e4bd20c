"""A steady flow of documents through two gateways on the cluster, and the checks after it.

Senders send small documents to every receiver in a loop (paced, so a fault lands in the
middle of the flow); receivers follow their inboxes; both gateways compete for the submit
lanes. After the fault, :meth:`Flow.finish` waits for the events that prove every
document arrived and was receipted (files in the inboxes, statuses in the senders'
states), then :meth:`Flow.check` holds the acceptance list of issue 10:

- every (envelope, recipient) has exactly one inbox file, with the sent digest;
- every receipt arrived at its sender;
- one decision leaf per envelope, no refusal leaf and no rejection notice for it;
- ``cp.dead`` is empty;
- ``audit verify`` passes once the witness has cosigned the gateways' checkpoints.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.cli import main as audit_main
from agents.client import Client
from agents.world import PASSPHRASE, World
from broker.connection import connect_blocking
from broker.provision import WITNESS_LOGIN
from broker.topology import DEAD_QUEUE
from compose.cluster import Cluster
from gateway.audit import ACCEPTED, SUBMISSION, AuditStore
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import BASIC, make_world, wait_for
from tests.sync import receive_until

PACE_S = 0.25  # between two documents of one sender: a rate, not a synchronisation
DEADLINE_S = 240.0


def cluster_world(cluster: Cluster, root: Path) -> World:
    """BASIC's agencies on the cluster, two gateway instances sharing one audit store."""
    return make_world(
        root, BASIC, site=cluster.site(), gateways=("gw1", "gw2"), checkpoint_seconds=1.0
    )


def longest_gap(t: float, stamps: list[float]) -> float:
    """The longest stretch from ``t`` on without one of ``stamps`` (monotonic times)."""
    points = [t, *sorted(x for x in stamps if x >= t)]
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


@dataclass
class Flow:
    world: World
    senders: list[str]
    receivers: list[str]
    tmp: Path
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)  # eid -> (sender, sha256)
    done_at: dict[str, list[float]] = field(default_factory=dict)  # sender -> confirm times
    errors: list[str] = field(default_factory=list)
    followers: dict[str, Client] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop_sending = threading.Event()
        self._stop_receiving = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._receivers: list[threading.Thread] = []

    # --- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Receivers following their inboxes, senders sending (each started once)."""
        if not self._receivers:
            for code in self.receivers:
                client = self.world.client(code)
                self.followers[code] = client
                t = threading.Thread(
                    target=self._receive, args=(client,), name=f"receiver-{code}", daemon=True
                )
                t.start()
                self._receivers.append(t)
        self.start_senders_only()

    def start_senders_only(self) -> None:
        if any(t.is_alive() for t in self._threads):
            return
        self._stop_sending.clear()
        self._threads = []
        for code in self.senders:
            t = threading.Thread(
                target=self._send, args=(code,), name=f"sender-{code}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _receive(self, client: Client) -> None:
        try:
            client.receive(follow=True, stop=self._stop_receiving)
        except Exception as e:  # a receiver that dies is a failure of the test, not a hang
            self.errors.append(f"receiver {client.keys.code}: {type(e).__name__}: {e}")

    def _send(self, code: str) -> None:
        folder = self.tmp / f"out-{code}"
        folder.mkdir(parents=True, exist_ok=True)
        with self.world.client(code) as client:
            i = 0
            while not self._stop_sending.is_set():
                i += 1
                doc = folder / f"doc-{i}.txt"
                doc.write_bytes(f"{code} document {i}\n".encode() * (50 + i))
                try:
                    eid = client.send(
                        doc, to=[AgencyCode.parse(r) for r in self.receivers], level=Level.MAT,
                        progress=False,
                    )  # fmt: skip
                except Exception as e:
                    self.errors.append(f"sender {code} #{i}: {type(e).__name__}: {e}")
                    if self._stop_sending.wait(PACE_S):
                        return
                    continue
                with self._lock:
                    self.sent[eid] = (code, hashlib.sha256(doc.read_bytes()).hexdigest())
                    self.done_at.setdefault(code, []).append(time.monotonic())
                self._stop_sending.wait(PACE_S)

    def close(self) -> None:
        """Stop every sender and receiver (what a test leaves behind when it fails)."""
        self._stop_receiving.set()
        self.pause_senders()
        for t in self._receivers:
            t.join(60)

    def pause_senders(self) -> None:
        """Stop sending for now (what was sent stays queued); :meth:`start` goes on."""
        self._stop_sending.set()
        for t in self._threads:
            t.join(120)

    def sent_count(self) -> int:
        with self._lock:
            return len(self.sent)

    def wait_sent(self, more: int, what: str) -> None:
        """Wait until ``more`` further documents were confirmed by the broker."""
        target = self.sent_count() + more
        if not wait_for(lambda: self.sent_count() >= target, DEADLINE_S, every=0.1):
            pytest.fail(f"the flow stalled {what}: {self.errors[-3:]}", pytrace=False)

    def longest_gap_after(self, t: float) -> float:
        """The longest time one sender went without a confirmed send from ``t`` on (its
        outage), the worst sender's."""
        with self._lock:
            return max((longest_gap(t, stamps) for stamps in self.done_at.values()), default=0.0)

    # --- finishing -------------------------------------------------------------------------

    def finish(self) -> None:
        """Stop sending; wait until every document is in every receiver's inbox and every
        receipt is back with its sender; stop the receivers and the gateways."""
        self.pause_senders()
        expected = set(self.sent)
        for code in self.receivers:
            if not wait_for(lambda c=code: expected <= self.inbox_ids(c), DEADLINE_S, every=0.2):
                missing = sorted(expected - self.inbox_ids(code))[:3]
                pytest.fail(f"{code}: not delivered: {missing}; {self.errors[-3:]}", pytrace=False)
        self._stop_receiving.set()
        for t in self._receivers:
            t.join(60)
        for code in self.senders:
            mine = [eid for eid, (s, _) in self.sent.items() if s == code]
            with self.world.client(code) as client:
                receive_until(
                    client,
                    until=lambda c=client, m=mine: all(self._receipted(c, eid) for eid in m),
                    what="every receipt",
                    deadline=DEADLINE_S,
                )
        self.world.stop_gateways()  # each signs its final checkpoint

    def inbox_ids(self, code: str) -> set[str]:
        inbox = self.world.root / "agents" / code / "inbox"
        if not inbox.is_dir():
            return set()
        prefixes = {p.name[:12] for p in inbox.iterdir() if not p.name.endswith(".json")}
        return {eid for eid in self.sent if eid[:12] in prefixes}

    def _receipted(self, client: Client, eid: str) -> bool:
        history = client.status(eid)["recipients"]
        return all(any(h["status"] == "01" for h in history.get(r, [])) for r in self.receivers)

    # --- the checks ------------------------------------------------------------------------

    def check(self, cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
        assert not self.errors, self.errors[:5]
        assert self.sent, "nothing was sent"
        for code in self.receivers:
            inbox = self.world.root / "agents" / code / "inbox"
            files = [p for p in inbox.iterdir() if not p.name.endswith((".json", ".tmp"))]
            for eid, (_, digest) in self.sent.items():
                mine = [p for p in files if p.name.startswith(eid[:12])]
                assert len(mine) == 1, f"{code}: {len(mine)} inbox files for {eid}"
                assert hashlib.sha256(mine[0].read_bytes()).hexdigest() == digest
        store = AuditStore(self.world.root / "audit.db", readonly=True)
        try:
            records = store.records()
        finally:
            store.close()
        for eid in self.sent:
            mine = [r for r in records if r["envelope_id"] == eid]
            decisions = [r for r in mine if r["event"] == SUBMISSION]
            assert len(decisions) == 1, f"{eid}: {len(decisions)} decision leaves"
            assert decisions[0]["decision"] == ACCEPTED, decisions[0]
            refused = [r for r in mine if r["decision"] != ACCEPTED]
            assert not refused, f"{eid}: refusal leaves {refused[:2]}"
        for code in self.senders:
            with self.world.client(code) as client:
                for eid, (sender, _) in self.sent.items():
                    if sender == code:
                        assert client.status(eid)["gateway"] == [], f"{eid}: a rejection notice"
        conn = connect_blocking(cluster.admin_broker(self.world.vhost))
        try:
            dead = conn.channel().queue_declare(DEAD_QUEUE, passive=True).method.message_count
        finally:
            conn.close()
        assert dead == 0, f"{dead} messages in cp.dead"
        self.audit_verifies(capsys)

    def audit_verifies(self, capsys: pytest.CaptureFixture[str]) -> None:
        world = self.world
        store = self.tmp / "witness"
        creds = world.root / "broker-credentials" / f"{world.prefix}{WITNESS_LOGIN}.broker.json"
        ca = str(world.ca_dir / "ca.crt")
        mp = pytest.MonkeyPatch()
        mp.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())
        try:
            code = audit_main(
                ["audit", "witness", "--store", str(store), "--ca", ca, "--broker", str(creds),
                 "--key", str(world.witness_key), "--idle", "2"]
            )  # fmt: skip
            out = capsys.readouterr()
            assert code == 0, out.out + out.err
            db = str(world.root / "audit.db")
            code = audit_main(["audit", "verify", "--db", db, "--checkpoints", str(store)])
            out = capsys.readouterr()
            assert code == 0, out.out + out.err
        finally:
            mp.undo()
