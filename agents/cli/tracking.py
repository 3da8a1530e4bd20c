"""What became of what this agency sent: ``status`` and ``outbox``.

Both first take in the notices waiting in the inbox (receipts, statuses, refusals), unless
a receiver already running for the agency does, then report from the agent's state.
"""

from __future__ import annotations

import argparse
import json
import signal

from agents.cli.common import Subcommands, add, config_arg, noted_stops, notices_arg, open_client
from agents.client import Client, ReceiverRunning
from agents.output import say
from keys.errors import CipherpostError


class _StoppedTakingIn(CipherpostError):
    """A stop signal while ``status`` or ``outbox`` took in the inbox: exit 128 + n."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} while taking in the inbox: what was received is kept,"
            " the rest stays queued"
        )
        self.exit_code = 128 + signum


def _take_in_notices(client: Client, idle: float) -> str:
    """Collect the notices waiting in the inbox ('' or why it did not need to)."""
    if idle <= 0:
        return "not checked for new notices (--idle 0)"
    from broker.connection import BrokerError

    stop, stopped_by = noted_stops()
    try:
        client.receive(idle=idle, stop=stop)
    except ReceiverRunning:
        return "notices are taken in by the receiver already running for this agency"
    except BrokerError as e:  # "could not check" is never passed off as "nothing new"
        raise BrokerError(f"{e}; --idle 0 shows what this agent knows without asking") from e
    if stopped_by:
        raise _StoppedTakingIn(stopped_by[0])
    return ""


def cmd_status(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        envelope_id = client.resolve(args.envelope_id)
        remark = _take_in_notices(client, args.idle)
        report = client.status(envelope_id)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    sent, received = report["sent"], report["received"]
    print(f"envelope {report['envelope_id']}")
    if sent is not None:
        state = sent.get("state", "sent")
        if state == "interrupted":
            state = f"interrupted after {sent['confirmed']} of {sent['parts']} part(s)"
        print(f"  sent     {sent['time']}  {sent['filename'] or '-'}  {sent['level']}  {state}")
        print(f"  subject  {sent['subject'] or '-'}")
    if received is not None:
        where = received["path"] or received["outcome"]
        print(f"  received {received['time']}  from {received['sender'] or '?'}  {where}")
    for item in report["gateway"]:
        mark = "verified" if item["verified"] else "NOT VERIFIED"
        print(
            f"  gateway  {item['time']}  refused: rule {item['rule_id']} ({item['reason']})"
            f"  [{mark}]"
        )
    for code, history in report["recipients"].items():
        print(f"  {code}")
        if not history:
            print("    (nothing yet)")
        for item in history:
            mark = "verified" if item["verified"] else "NOT VERIFIED"
            note = f"  {item['note']}" if item["note"] else ""
            print(f"    {item['time']}  {item['status']} {item['status_name']}{note}  [{mark}]")
    marks = report.get("marks", {})
    for key, label in (
        ("replaces", "replaces"),
        ("replaced_by", "replaced by"),
        ("recall_requested", "recall requested"),
        ("recall_answer", "recall answered"),
        ("recalled", "recalled to"),
    ):
        if key in marks:
            print(f"  {label:<9}{marks[key]}")  # fmt: skip
    audit = report["audit"]
    if audit is not None:
        mark = "verified" if audit["verified"] else "NOT VERIFIED"
        print(
            f"  audit: logged at leaf {audit['leaf_index']} of log {audit['log_id']}, "
            f"proven in checkpoint {audit['checkpoint']}  [{mark}]"
        )
    elif sent is not None:
        print("  audit: no inclusion proof yet (it comes with the gateway's next checkpoint)")
    if remark:
        say(args, f"note: {remark}")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        remark = _take_in_notices(client, args.idle)
        rows = client.outbox(args.limit)
    if args.json:
        print(json.dumps({"outbox": rows}, ensure_ascii=False))
        return 0
    if not rows:
        print("nothing sent yet")
    for row in rows:
        subject = row["subject"] or row["filename"] or "-"
        print(f"{row['envelope_id']}  {row['time']}  {row['level']}  {subject}")
        for key, label in (("replaces", "replaces"), ("replaced_by", "replaced by")):
            if key in row:
                print(f"    {label} {row[key]}")
        for code, state in row["by_recipient"].items():
            print(f"    {code}  {state}")
    if remark:
        say(args, f"note: {remark}")
    return 0


def register(sub: Subcommands) -> None:
    """``cipherpost status``, ``outbox``."""
    sp = add(
        sub,
        "status",
        cmd_status,
        "one envelope: subject, the gateway's decisions, each recipient's signed statuses",
    )
    sp.add_argument(
        "envelope_id",
        metavar="ENVELOPE_ID",
        help="the id or its first digits (inbox files start with 12)",
    )
    notices_arg(sp)
    config_arg(sp)

    sp = add(
        sub,
        "outbox",
        cmd_outbox,
        "what this agency sent, newest first, with each recipient's latest state (queued,"
        " accepted, refused with the rule, arrived, statuses, interrupted)",
    )
    sp.add_argument("--limit", type=int, default=50, metavar="N", help="how many (default 50)")
    notices_arg(sp)
    config_arg(sp)
