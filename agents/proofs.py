"""Audit proofs: the gateway's leaf index and inclusion proof for each envelope this agency
sent, taken in (checked against the signed checkpoint) and shown again with ``status``."""

from __future__ import annotations

import base64
import json
from typing import Any

from agents.base import AgentBase
from broker.consumer import Delivery
from envelopes.errors import EnvelopeRefused, Reason
from gateway import merkle
from gateway.auditlog import PROOF_MAGIC, check_proof
from gateway.checkpoint import parse_checkpoint, read_checkpoint_file
from keys.errors import Refused
from keys.logsetup import get_logger

log = get_logger("cipherpost.agent")


class Proofs(AgentBase):
    """The agent's audit proofs (a part of :class:`agents.client.Client`)."""

    def _on_audit_proof(self, d: Delivery) -> None:
        """The gateway's leaf index and inclusion proof for envelopes this agency sent."""
        try:
            doc = json.loads(d.body)
            checked = read_checkpoint_file(
                json.dumps(doc["checkpoint"]).encode(), self.ca_certificate
            )
            entries = doc["entries"]
            if not isinstance(entries, list):
                raise ValueError("entries is not a list")
        except (ValueError, KeyError, TypeError, Refused) as e:
            raise EnvelopeRefused(Reason.FORMAT, f"audit proof message refused: {e}") from None
        cp = checked.checkpoint
        kept = 0
        for entry in entries:
            proof = {**entry, "format": PROOF_MAGIC, "log_id": cp.log_id, "tree_size": cp.size}
            try:
                fields = check_proof(proof, checked)
            except Refused as e:
                log.warning("audit_proof_refused", reason=str(e))
                continue
            eid = str(fields["envelope_id"])
            if fields["sender"] != self.keys.code.text or self.state.sent(eid) is None:
                continue  # not one of ours
            self.state.record_proof(
                eid,
                cp.log_id,
                int(entry["leaf_index"]),
                cp.size,
                json.dumps(proof),
                cp.note.decode(),
            )
            kept += 1
        log.info("audit_proofs_received", checkpoint=cp.describe(), kept=kept)
        d.ack()

    def _audit_status(self, envelope_id: str) -> dict[str, Any] | None:
        """Where the gateway logged this envelope, with its proof checked again."""
        stored = self.state.proof(envelope_id)
        if stored is None:
            return None
        cp = parse_checkpoint(stored["checkpoint"].encode())
        proof = json.loads(stored["proof"])
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(base64.b64decode(proof["leaf"])),
                int(proof["leaf_index"]),
                cp.size,
                [base64.b64decode(h) for h in proof["proof"]],
                cp.root,
            )
            verified = True
        except (merkle.ProofError, ValueError, KeyError):
            verified = False
        return {
            "log_id": stored["log_id"],
            "leaf_index": stored["leaf_index"],
            "checkpoint": cp.describe(),
            "checkpoint_size": cp.size,
            "verified": verified,
        }
