"""The audit log made public: checkpoints signed and published every N leaves or T seconds
(the last one published again while idle, as a heartbeat for the witness), and each
sender's inclusion proofs for its envelopes in the new checkpoint."""

from __future__ import annotations

import base64
import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker import wire
from broker.topology import CHECKPOINT_EXCHANGE, DELIVER_EXCHANGE
from gateway import clock
from gateway.auditlog import Checkpointer
from gateway.base import GatewayBase
from keys.errors import clip
from keys.logsetup import get_logger

log = get_logger("cipherpost.gateway")


class Proofs(GatewayBase):
    """The gateway's checkpoints and proofs (a part of :class:`gateway.service.Gateway`)."""

    checkpointer: Checkpointer
    _last_published: dt.datetime
    _proofs: ThreadPoolExecutor

    def _checkpoint(self, *, force: bool = False) -> None:
        """Sign, store and publish a checkpoint when N leaves or T seconds have passed."""
        now = clock.now()
        previous = self.checkpointer.last.size if self.checkpointer.last else 0
        try:
            if not force and not self.checkpointer.due(now):
                self._heartbeat(now)
                return
            message = self.checkpointer.sign(now)
        except Exception as e:  # the log goes on; the next checkpoint covers this one
            log.error("checkpoint_failed", error=type(e).__name__, detail=clip(str(e)))
            return
        if message is None or self._transport is None:
            return
        self.counters["checkpoints"] += 1
        self._last_published = now
        if self.checkpointer.last is not None:
            self.metrics.checkpointed(self.checkpointer.last.size, now)
        future = self._transport.publish(
            CHECKPOINT_EXCHANGE,
            self.config.gateway_id,
            message,
            wire.checkpoint(),
        )
        size = self.checkpointer.last.size if self.checkpointer.last else 0
        future.add_done_callback(
            lambda f: (
                log.info("checkpoint_published", size=size)
                if f.exception() is None
                else log.error("checkpoint_not_published", size=size, error=str(f.exception()))
            )
        )
        self._proofs.submit(self._send_proofs, previous, size, message)

    def _heartbeat(self, now: dt.datetime) -> None:
        """Idle: publish the last checkpoint again every interval, so that the witness can tell
        a quiet gateway from one that stopped signing (it alarms after 3 intervals)."""
        last = self.checkpointer.last
        since = (now - self._last_published).total_seconds()
        if last is None or self._transport is None or since < self.config.checkpoint_seconds:
            return
        self._last_published = now
        self._transport.publish(
            CHECKPOINT_EXCHANGE,
            self.config.gateway_id,
            self.checkpointer.message(last.note, None),
            wire.checkpoint(),
        )

    def _send_proofs(self, start: int, end: int, message: bytes) -> None:
        """Each sender gets, for its envelopes accepted in leaves [start, end), the leaf index
        and an inclusion proof in the new checkpoint: one message per sender."""
        try:
            checkpoint = json.loads(message)
            checkpoint.pop("consistency", None)
            by_sender: dict[str, list[dict[str, Any]]] = {}
            for index, eid, sender, leaf, proof in self.audit.proofs(start, end):
                by_sender.setdefault(sender, []).append(
                    {
                        "envelope_id": eid,
                        "leaf_index": index,
                        "leaf": base64.b64encode(leaf).decode(),
                        "proof": [base64.b64encode(h).decode() for h in proof],
                    }
                )
            assert self._transport is not None
            for sender, entries in by_sender.items():
                body = json.dumps({"checkpoint": checkpoint, "entries": entries}).encode()
                self._transport.publish(
                    DELIVER_EXCHANGE,
                    sender,
                    body,
                    wire.audit_proof(),
                )
        except Exception as e:  # proofs can be made again any time: `cipherpost audit prove`
            log.error("audit_proofs_failed", error=type(e).__name__, detail=clip(str(e)))
