"""Notices: sign, record and send this agency's statuses and recalls; take in the notices
that arrive (a refusal, a status, a receipt, a recall); show each envelope's statuses and
the outbox with every recipient's latest state; apply a recall to the inbox."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from agents.base import utc_now
from agents.durable import place, write_durably
from agents.outbox import Outbox
from agents.proofs import Proofs
from agents.state import INTERRUPTED, SENDING
from broker.consumer import Delivery
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.notices import (
    KIND_RECALL,
    KIND_STATUS,
    MAX_TEXT,
    REPLY_STATUSES,
    STATUS_NAMES,
    Notice,
    parse_notice,
    sign_notice,
    verify_notice,
)
from keys.codes import AgencyCode
from keys.errors import CipherpostError, UsageError
from keys.logsetup import get_logger

log = get_logger("cipherpost.agent")
RECALLED_FOLDER = "recalled"  # inside the inbox: recalled documents, kept and marked
RECALL_ANSWERS = ("15", "16")  # recall agreed, recall refused


class Statuses(Outbox, Proofs):
    """The agent's notices (a part of :class:`agents.client.Client`): published through its
    outbox, with the audit proofs shown beside the statuses."""

    def _on_notice(self, d: Delivery) -> None:
        now = utc_now()
        try:
            notice = verify_notice(d.body, self.directory, now)
            verified = True
        except EnvelopeRefused:
            notice, _ = parse_notice(d.body)
            verified = False
        if notice.addressee != self.keys.code:
            raise EnvelopeRefused(Reason.NOTICE_EDGE, "notice addressed to another agency")
        new: list[bool] = []

        def record() -> None:  # at the batch end, one commit for the batch
            new.append(self.state.record_status(notice, verified))

        def announce() -> None:
            d.ack()
            if not new[0]:
                return  # a redelivery of a notice taken in before
            log.info(
                "status_received",
                envelope=notice.envelope_id.hex(),
                kind=notice.kind,
                signer=notice.signer.text,
                status=notice.status,
                verified=verified,
            )
            event = {**notice.as_dict(), "verified": verified}
            if notice.kind == KIND_RECALL and verified:
                event.update(self._on_recall(notice))
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)

        self._after_sync.append((d, record, announce))

    def _sign_notice(
        self,
        kind: str,
        envelope_id: bytes,
        header_hash: bytes,
        addressee: AgencyCode,
        status: str,
        note: str = "",
        *,
        reason: str = "",
    ) -> Notice:
        """Sign a notice of this agency and record it (committed with the caller's batch)."""
        notice = sign_notice(
            self.keys.signing_key,
            kind=kind,
            envelope_id=envelope_id,
            header_hash=header_hash,
            signer=self.keys.code,
            addressee=addressee,
            status=status,
            now=utc_now(),
            note=note,
            reason=reason,
        )
        self.state.record_status(notice, True)
        return notice

    def _reply(self, envelope_id: str, got: dict[str, Any], status: str, note: str) -> Future[None]:
        """A signed status about a received envelope, to its sender."""
        notice = self._sign_notice(
            KIND_STATUS,
            bytes.fromhex(envelope_id),
            bytes.fromhex(got["header_hash"]),
            AgencyCode.parse(got["sender"]),
            status,
            note,
        )
        return self._publish_notice(notice)

    def reply_status(self, envelope_id: str, status: str, note: str = "") -> None:
        """Send a signed status about a received envelope back to its sender: 02..06, or the
        answer to a recall (15 agreed: the document moves to ``inbox/recalled``; 16 refused)."""
        allowed = (*REPLY_STATUSES, *RECALL_ANSWERS)
        if status not in allowed:
            raise UsageError(
                f"--code must be one of {', '.join(allowed)} "
                f"({', '.join(STATUS_NAMES[s] for s in allowed)})"
            )
        got = self.state.received(envelope_id)
        if got is None or got["outcome"] != "ok":
            raise CipherpostError(f"no received envelope {envelope_id} in this agent's inbox")
        if status in RECALL_ANSWERS:
            marks = self.state.marks(envelope_id)
            if "recall_requested" not in marks:
                raise UsageError(
                    f"{status} answers a recall, and {got['sender']} has not recalled {envelope_id}"
                )
            if "recall_answer" in marks:
                raise CipherpostError(
                    f"the recall of {envelope_id} was answered already ({marks['recall_answer']})"
                )
            future = self._answer_recall(envelope_id, status, note)
            error = future.exception(timeout=60)
            if error is not None:
                raise CipherpostError(f"status not delivered to the broker: {error}")
            return
        future = self._reply(envelope_id, got, status, note)
        error = future.exception(timeout=60)
        if error is not None:
            raise CipherpostError(f"status not delivered to the broker: {error}")

    def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        """Sent envelopes, newest first, with each recipient's latest known state."""
        out = []
        for row in self.state.outbox(limit):
            eid = row["envelope_id"]
            marks = self.state.marks(eid)
            notices = self.state.statuses(eid)
            refusal = next((n for n in notices if n["kind"] == "rejection"), None)
            accepted = self.state.proof(eid) is not None
            recipients = {}
            for code in row["recipients"]:
                latest = [n for n in notices if n["signer"] == code and n["kind"] != "rejection"]
                if refusal is not None:
                    state = f"refused ({refusal['rule_id']})"
                elif latest:
                    status = latest[-1]["status"]
                    state = f"{status} {STATUS_NAMES.get(status, status)}"
                elif row["state"] == INTERRUPTED:
                    state = f"interrupted ({row['confirmed']} of {row['parts']} parts sent)"
                elif row["state"] == SENDING:
                    state = "sending"
                else:
                    state = "accepted by the gateway" if accepted else "queued"
                if "recall_requested" in marks and not (
                    latest and latest[-1]["status"] in RECALL_ANSWERS
                ):
                    state += "; recall requested (13), no answer yet"
                recipients[code] = state
            links: dict[str, Any] = {k: marks[k] for k in ("replaces", "replaced_by") if k in marks}
            out.append({**row, "by_recipient": recipients, **links})
        return out

    def status(self, envelope_id: str) -> dict[str, Any]:
        """Per recipient, the gateway's decisions and the signed statuses, each re-verified."""
        sent = self.state.sent(envelope_id)
        received = self.state.received(envelope_id)
        rows = self.state.statuses(envelope_id)
        if sent is None and received is None and not rows:
            raise CipherpostError(f"this agent knows nothing of envelope {envelope_id}")
        history: dict[str, list[dict[str, Any]]] = {
            c: [] for c in (sent or {}).get("recipients", [])
        }
        gateway: list[dict[str, Any]] = []
        for row in rows:
            try:
                verify_notice(row["raw"], self.directory, utc_now())
                verified = True
            except EnvelopeRefused:
                verified = False
            item = {
                k: row[k] for k in ("time", "kind", "signer", "status", "rule_id", "reason", "note")
            }
            item["status_name"] = STATUS_NAMES.get(row["status"], row["status"])
            item["verified"] = verified
            if row["kind"] == "rejection":
                gateway.append(item)
            else:
                history.setdefault(row["signer"], []).append(item)
        return {
            "envelope_id": envelope_id,
            "sent": sent,
            "received": received,
            "gateway": gateway,
            "recipients": history,
            "audit": self._audit_status(envelope_id),
            "marks": {k: v for k, v in self.state.marks(envelope_id).items() if k != "header_hash"},
        }

    def _update_sidecar(self, envelope_id: str, changes: dict[str, Any]) -> None:
        """Add marks (replaced by, recall) to a received document's sidecar, in place."""
        got = self.state.received(envelope_id)
        if got is None or not got["path"]:
            return
        sidecar = Path(got["path"] + ".json")
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("sidecar_unreadable", envelope=envelope_id)
            return
        data.update(changes)
        text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        write_durably(sidecar, text.encode())  # a rename: never written through a link

    def _apply_recall(self, envelope_id: str, how: str) -> Path | None:
        """Move a recalled document and its sidecar into ``inbox/recalled`` (kept, marked)."""
        got = self.state.received(envelope_id)
        if got is None or not got["path"]:
            return None
        path = Path(got["path"])
        folder = self.config.inbox / RECALLED_FOLDER
        if path.parent == folder:
            return path  # moved already
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        sidecar = path.with_name(path.name + ".json")
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {"envelope_id": envelope_id}
        data["recalled"] = {"time": utc_now().isoformat(), "how": how}
        moved, _ = place(folder, path.name, path, data)
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        self.state.move_received(envelope_id, str(moved))
        self.state.set_mark(envelope_id, "recalled", str(moved))
        log.info("document_recalled", envelope=envelope_id, how=how)
        return moved

    def recall(self, envelope_id: str, reason: str) -> list[str]:
        """Ask every recipient to recall a document this agency sent (edXML status 13): a
        signed notice to each, through the gateway (which relays a recall only from the
        envelope's sender). Returns the recipients asked."""
        reason = reason.strip()
        if not reason or len(reason) > MAX_TEXT:
            raise UsageError(f"a recall needs a reason of 1..{MAX_TEXT} characters")
        sent = self.state.sent(envelope_id)
        header_hash = self.state.marks(envelope_id).get("header_hash")
        if sent is None or not header_hash:
            raise CipherpostError(
                f"{envelope_id} was not sent by this agency: only its sender may recall it"
            )
        futures = [
            self._publish_notice(
                self._sign_notice(
                    KIND_RECALL,
                    bytes.fromhex(envelope_id),
                    bytes.fromhex(header_hash),
                    AgencyCode.parse(code),
                    "13",
                    "",
                    reason=reason,
                )
            )
            for code in sent["recipients"]
        ]
        for future in futures:
            error = future.exception(timeout=60)
            if error is not None:
                raise CipherpostError(f"recall not delivered to the broker: {error}")
        self.state.set_mark(envelope_id, "recall_requested", reason)
        return list(sent["recipients"])

    def _on_recall(self, notice: Notice) -> dict[str, Any]:
        """A verified recall of a document: marked, and applied at once (15) if this agency
        wants that for documents nobody answered yet."""
        eid = notice.envelope_id.hex()
        got = self.state.received(eid)
        if (
            got is None
            or got["outcome"] != "ok"
            or got["sender"] != notice.signer.text
            or got["header_hash"] != notice.header_hash.hex()
        ):
            return {"recall": "no such document in this inbox (nothing to recall)"}
        self.state.set_mark(eid, "recall_requested", notice.reason)
        self._update_sidecar(
            eid, {"recall_requested": {"time": notice.time.isoformat(), "reason": notice.reason}}
        )
        answered = any(
            r["kind"] == KIND_STATUS and r["signer"] == self.keys.code.text
            for r in self.state.statuses(eid)
        )
        if not self.config.auto_recall_unopened or answered:
            return {"recall": "waiting for the clerk: reply-status ID --code 15 or 16"}
        self._answer_recall(eid, "15", "applied automatically: not yet answered")
        return {"recall": "applied automatically (15): moved to the recalled folder"}

    def _answer_recall(self, envelope_id: str, status: str, note: str) -> Future[None]:
        got = self.state.received(envelope_id)
        assert got is not None
        future = self._reply(envelope_id, got, status, note)
        self.state.set_mark(envelope_id, "recall_answer", status)
        if status == "15":
            self._apply_recall(envelope_id, "agreed (15)" + (f": {note}" if note else ""))
        return future
