"""Example: bridge a document-management system (DMS) to cipherpost.

The province's DMS sends an official letter (công văn) with its edXML
metadata; the commune's DMS takes every arriving document into its register,
replies "accepted" (03) and, once handled, "completed" (06); the province's
DMS then reads the signed history. Then the province recalls the letter (edXML
13, "Yêu cầu thu hồi"); the commune's DMS takes the recall in, strikes the
letter from its register and agrees (15, "Đồng ý thu hồi"): the agent moves
the document to the inbox's ``recalled`` folder. Run by tests/test_sdk_example.py against the
real RabbitMQ; run it yourself with two agent configs:

    python docs/examples/dms_bridge.py /srv/province/agent.toml \
        /srv/commune/agent.toml 000.01.12.H41

Each agency has its own passphrase: from the file named by
``PROVINCE_PASSPHRASE_FILE`` / ``COMMUNE_PASSPHRASE_FILE`` (mode 0600), else
``CIPHERPOST_PASSPHRASE``, else a prompt naming the agency's folder. An error
is one line on stderr and the cipherpost exit code; nothing already sent is
lost (the envelope id is printed first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

from agents import edxml_fields, open_agent
from keys.errors import CipherpostError
from keys.keystore import read_passphrase_file


def passphrase(role: str) -> bytes | None:
    """This agency's passphrase from ``<ROLE>_PASSPHRASE_FILE``; None: the usual sources."""
    path = os.environ.get(f"{role.upper()}_PASSPHRASE_FILE")
    return read_passphrase_file(Path(path)).encode() if path else None


def send_letter(province_config: Path, commune: str, workdir: Path) -> str:
    """The province's DMS hands a letter to cipherpost; returns the envelope id."""
    letter = workdir / "cong-van-12-UBND-VP.pdf"
    letter.write_bytes(b"%PDF-1.7\n% Cong van ve viec sap nhap xa (demo)\n" * 200)
    with open_agent(province_config, passphrase("province")) as agent:
        return agent.send(
            letter,
            to=commune,
            level="mat",
            urgency="khan",
            subject="Về việc sắp xếp đơn vị hành chính cấp xã",
            fields=edxml_fields(
                document_code="000.00.00.H41-2026-000123",
                notation="12/UBND-VP",
                document_type="Công văn",
                promulgation_date=dt.date(2026, 11, 28),
                promulgation_place="Tỉnh H41",
                signer="Nguyễn Văn A",
                steering_type="Khẩn",
                due_date=dt.date(2026, 12, 5),
            ),
            progress=False,
        )


def take_in(commune_config: Path, register: Path) -> list[dict[str, object]]:
    """The commune's DMS registers each arriving document and answers its sender."""
    entries = []
    with open_agent(commune_config, passphrase("commune")) as agent:
        for doc in agent.documents(idle=1.5):  # verified, decrypted, durable, receipted
            fields = doc.metadata["fields"]
            entry = {
                "envelope_id": doc.envelope_id,
                "file": str(doc.path),
                "from": doc.metadata["sender"]["code"],
                "notation": fields.get("notation"),
                "type": fields.get("document_type"),
                "due": fields.get("due_date"),
                "level": doc.metadata["level_display"],
            }
            entries.append(entry)
            agent.reply_status(doc.envelope_id, "03", note="vào sổ văn bản đến")  # accepted
            agent.reply_status(doc.envelope_id, "06", note="đã xử lý")  # completed
    register.write_text(json.dumps(entries, ensure_ascii=False, indent=2))
    return entries


def history(province_config: Path, envelope_id: str) -> dict[str, list[str]]:
    """What the province's DMS shows: per recipient, each signed status, verified."""
    with open_agent(province_config, passphrase("province")) as agent:
        agent.receive(idle=1.5)  # collect receipts and statuses waiting in the inbox
        report = agent.status(envelope_id)
    return {
        code: [f"{h['status']} {h['status_name']}" for h in items if h["verified"]]
        for code, items in report["recipients"].items()
    }


def recall(province_config: Path, envelope_id: str, reason: str) -> list[str]:
    """The province's DMS recalls a letter it sent; returns the recipients asked."""
    with open_agent(province_config, passphrase("province")) as agent:
        return agent.recall(envelope_id, reason)


def handle_recalls(commune_config: Path, register: Path, idle: float = 1.5) -> list[str]:
    """The commune's DMS answers each verified recall waiting for it with 15 (agreed) and
    marks the letter recalled in its register; returns the envelope ids recalled."""
    entries = json.loads(register.read_text())
    recalled = []
    with open_agent(commune_config, passphrase("commune")) as agent:
        agent.receive(idle=idle)  # takes in the notices waiting (recalls among them)
        for event in agent.events:
            if event["kind"] == "recall" and event["verified"]:
                eid = str(event["envelope_id"])
                if agent.state.marks(eid).get("recall_answer"):
                    continue  # answered already (or applied by the agent's own setting)
                agent.reply_status(eid, "15", note="đã thu hồi khỏi sổ văn bản đến")
                recalled.append(eid)
    for entry in entries:
        if entry["envelope_id"] in recalled:
            entry["recalled"] = True
    register.write_text(json.dumps(entries, ensure_ascii=False, indent=2))
    return recalled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Send a letter from the province's DMS to a commune's and read its history.",
    )
    parser.add_argument("province_config", type=Path, metavar="PROVINCE_AGENT.toml")
    parser.add_argument("commune_config", type=Path, metavar="COMMUNE_AGENT.toml")
    parser.add_argument("commune", metavar="COMMUNE_CODE")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            eid = send_letter(args.province_config, args.commune, Path(tmp))
            print(f"sent {eid}", flush=True)
            for entry in take_in(args.commune_config, Path(tmp) / "register.json"):
                print(f"registered {entry['notation']} ({entry['type']}) due {entry['due']}")
            for code, statuses in history(args.province_config, eid).items():
                print(f"{code}: {', '.join(statuses)}")
            asked = recall(args.province_config, eid, "gửi nhầm phiên bản, sẽ gửi bản thay thế")
            print(f"recall requested from {', '.join(asked)}")
            for recalled in handle_recalls(args.commune_config, Path(tmp) / "register.json"):
                print(f"recalled {recalled} (15 recall agreed)")
    except CipherpostError as e:
        print(f"dms_bridge: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
