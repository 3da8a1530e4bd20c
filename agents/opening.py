"""Opening a whole envelope into the inbox: the verified document placed with its sidecar
under a free name, recorded and receipted (status 01) once durable; a document refused here
recorded and told to its verified sender."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envelopes
from agents.durable import place, safe_filename
from agents.statuses import Statuses
from broker.consumer import Delivery
from envelopes.errors import EnvelopeRefused, Reason
from envelopes.notices import KIND_RECEIPT, KIND_STATUS, Notice
from envelopes.signatures import OfficialSignature
from keys.codes import AgencyCode
from keys.levels import Level, Urgency
from keys.logsetup import get_logger

log = get_logger("cipherpost.agent")
# Refusals of what a verified sender put inside the payload: told to it (status 02).
_SENDER_CONTENT = frozenset(
    {
        Reason.OFFICIAL_UNKNOWN,
        Reason.OFFICIAL_REVOKED,
        Reason.OFFICIAL_AGENCY,
        Reason.OFFICIAL_SIGNATURE,
        Reason.SIGNED_FLAG,
        Reason.PAYLOAD,
    }
)


@dataclass(frozen=True)
class ReceivedDocument:
    """A document written to the inbox, with its sidecar."""

    envelope_id: str
    path: Path
    sidecar: Path
    metadata: dict[str, Any]


class Opening(Statuses):
    """The agent's opening of received envelopes (a part of :class:`agents.client.Client`):
    it receipts through the statuses it builds on."""

    spool: Path
    received: list[ReceivedDocument]
    on_received: Callable[[ReceivedDocument], None] | None
    _to_sync: list[Path]
    _opening: set[str]

    def _assemble(
        self,
        d: Delivery,
        eid: str,
        open_into: Callable[[Path], envelopes.Opened],
        header_hash: bytes,
        now: dt.datetime,
        spooled: Path | None = None,
        sealed_by: AgencyCode | None = None,
    ) -> None:
        """Open a whole envelope into the inbox (``open_into`` writes the verified document
        to a hidden file) and write the sidecar; at the batch end (once both are durable)
        record it and sign the receipt, then ack ``d``, drop the spooled parts and send it."""
        self.config.inbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.config.inbox / f".{eid}.opened"  # renamed once the file name is known
        target.unlink(missing_ok=True)  # left by an attempt that died before the rename
        try:
            opened = open_into(target)
        except EnvelopeRefused as e:
            self._refused_document(eid, header_hash, sealed_by, e)
            raise
        info = opened.info.as_dict()
        sender = info["sender"]["code"]
        replaces = opened.metadata.replaces
        try:
            self._check_replacement(eid, replaces, sender)
        except EnvelopeRefused as e:
            target.unlink(missing_ok=True)
            self._refused_document(eid, header_hash, sealed_by, e)
            raise
        sidecar_data = _sidecar(eid, opened, info, now, self.directory.version)
        try:
            final, sidecar = place(
                self.config.inbox,
                f"{eid[:12]}-{safe_filename(opened.metadata.filename) or 'document'}",
                target,
                sidecar_data,
            )
        finally:
            target.unlink(missing_ok=True)  # placed (linked) or not: no hidden plaintext stays
        sidecar_data["document"] = final.name
        self._to_sync += [final, sidecar]
        self._opening.add(eid)

        receipt: list[Notice] = []

        def record() -> None:
            self.state.record_received(eid, sender, header_hash.hex(), str(final), "ok")
            if replaces:
                self.state.set_mark(eid, "replaces", replaces)
                self.state.set_mark(replaces, "replaced_by", eid)
            receipt.append(
                self._sign_notice(
                    KIND_RECEIPT, bytes.fromhex(eid), header_hash, AgencyCode.parse(sender), "01"
                )
            )  # recorded in the same commit as the document

        def announce() -> None:
            d.ack()
            if spooled is not None:
                shutil.rmtree(spooled, ignore_errors=True)
            document = ReceivedDocument(eid, final, sidecar, sidecar_data)
            if replaces and self.state.received(replaces) is not None:
                self._update_sidecar(replaces, {"replaced_by": eid})
            self.received.append(document)
            log.info("received", envelope=eid, sender=sender, label=info["level"])
            self._publish_notice(receipt[0])
            if self.on_received is not None:
                self.on_received(document)

        self._after_sync.append((d, record, announce))

    def _refused_document(
        self, eid: str, header_hash: bytes, sender: AgencyCode | None, e: EnvelopeRefused
    ) -> None:
        """A document refused here is recorded (its spooled parts dropped) and told, never
        dropped silently: an event for the clerk and, when what failed is what its (verified)
        sender put inside (an official's signature, the signed flag, a replacement), a signed
        02 "rejected" naming the rule (never the details: they are payload metadata)."""
        self.state.record_received(eid, "", header_hash.hex(), "", "refused", str(e))
        shutil.rmtree(self.spool / eid, ignore_errors=True)
        event = {
            "kind": "refused-document",
            "envelope_id": eid,
            "signer": sender.text if sender else "",
            "rule_id": e.reason.rule_id,
            "reason": str(e),
            "verified": True,
        }
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        if sender is not None and e.reason in _SENDER_CONTENT:
            notice = self._sign_notice(
                KIND_STATUS, bytes.fromhex(eid), header_hash, sender, "02",
                # The fixed text only: a notice crosses the gateway unencrypted, and the
                # message names the official (payload metadata).
                f"refused: {e.reason.rule_id}: {e.reason.text}",
            )  # fmt: skip
            self._publish_notice(notice)

    def _check_replacement(self, envelope_id: str, replaces: str, sender: str) -> None:
        """A document may replace only one its own sender sent: another agency's claim to
        correct it is refused (never marks someone else's document as replaced)."""
        if not replaces:
            return
        if replaces == envelope_id:
            raise EnvelopeRefused(Reason.PAYLOAD, f"{envelope_id} claims to replace itself")
        old = self.state.received(replaces)
        if old is not None and old["outcome"] == "ok" and old["sender"] != sender:
            raise EnvelopeRefused(
                Reason.PAYLOAD,
                f"{envelope_id} from {sender} claims to replace {replaces}, which"
                f" {old['sender']} sent: only the sender of a document may replace it",
            )


def _sidecar(
    eid: str, opened: envelopes.Opened, info: dict[str, Any], now: dt.datetime, version: int
) -> dict[str, Any]:
    """What the inbox shows beside a received document (its ``.json`` sidecar)."""
    return {
        "envelope_id": eid,
        "sender": info["sender"],
        "level": info["level"],
        "level_display": Level(info["level"]).display,
        "urgency": info["urgency"],
        "urgency_display": Urgency(info["urgency"]).display,
        "subject": opened.metadata.subject,
        "filename": opened.metadata.filename,
        "fields": dict(opened.metadata.fields),
        "received": now.isoformat(),
        "bytes": opened.document_bytes,
        "recipients": [r["code"] for r in info["recipients"]],
        # The directory version they verified against: "valid when signed" later, once an
        # official is revoked, is checked against that version.
        "signatures": [
            {**_signature_entry(sig), "directory_version": version} for sig in opened.signatures
        ],
        "replaces": opened.metadata.replaces or None,
    }


def _signature_entry(sig: OfficialSignature) -> dict[str, Any]:
    """One official's signature as the sidecar, ``receive --json`` and the SDK show it."""
    return {**sig.as_dict(), "verified": True, "display": f"signed by {sig.signer} [verified]"}
