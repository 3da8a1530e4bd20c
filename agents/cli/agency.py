"""An agency clerk's commands over the broker: ``send``, ``receive``, ``reply-status``,
``doctor``.

What became of what was sent (``status``, ``outbox``) is in ``tracking``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

from agents.cli.common import (
    LEVELS,
    TO_HELP,
    URGENCIES,
    Subcommands,
    add,
    config_arg,
    config_path,
    noted_stops,
    open_client,
    parse_codes,
    read_file,
)
from agents.client import Client, ReceivedDocument
from agents.interrupts import Interrupted
from agents.output import emit, error_line, say
from keys.errors import EXIT_ERROR, CipherpostError, UsageError
from keys.keystore import read_passphrase
from keys.levels import Level, Urgency


def cmd_send(args: argparse.Namespace) -> int:
    level = Level.parse(args.level)
    urgency = Urgency.parse(args.urgency)
    to = parse_codes(args.to)
    for path in args.files:
        if not path.is_file():
            raise CipherpostError(f"cannot read {path}: not a file")
    if (args.signature or args.replaces) and len(args.files) != 1:
        raise UsageError("--signature and --replaces belong to one document: send one FILE")
    signatures = [read_file(p, "signature") for p in args.signature]
    fields = {"notation": args.number} if args.number else {}
    with open_client(args) as client:
        sent = []
        try:
            for path in args.files:
                envelope_id = client.send(
                    path, to=to, level=level, urgency=urgency, subject=args.subject,
                    fields=fields, signatures=signatures, replaces=args.replaces, wait=False,
                )  # fmt: skip
                sent.append((path, envelope_id))
            client.flush()  # every part of every document confirmed by the broker
        except (KeyboardInterrupt, Interrupted) as e:
            return _send_interrupted(args, client, sent, e)
        except CipherpostError as e:  # e.g. the broker went away: still say what left
            _send_failed(client, sent, e)
            raise
        listening = client.gateways_listening()
    if args.json:
        print(json.dumps({
            "sent": [{"envelope_id": eid, "file": str(path), "recipients": [c.text for c in to],
                      "level": level.value, "urgency": urgency.value} for path, eid in sent],
            "gateways_listening": listening,
        }, ensure_ascii=False))  # fmt: skip
    for path, envelope_id in sent:
        if not args.json:
            print(envelope_id)
        say(args, f"sent {path.name} to {len(to)} agency(ies) at level {level.value}")
    if listening == 0:
        say(
            args,
            "warning: no gateway is consuming submissions now: queued, not yet checked; they"
            " are decided when one starts (`cipherpost outbox` shows each one's state)",
            always=True,
        )
    return 0


def _send_interrupted(
    args: argparse.Namespace, client: Client, sent: list[tuple[Path, str]], e: BaseException
) -> int:
    """A stop during send: say exactly what left (ids, parts) and what becomes of it, as the
    result (ids; one JSON object with --json) and one error line."""
    signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
    stopped = {s.envelope_id for s in client.interrupted}
    whole = [(path, eid) for path, eid in sent if eid not in stopped]  # every part went
    if args.json:
        print(json.dumps({
            "sent": [{"envelope_id": eid, "file": str(path)} for path, eid in whole],
            "interrupted": [{"envelope_id": s.envelope_id, "file": s.name, "parts": s.parts,
                             "confirmed": s.confirmed} for s in client.interrupted],
        }, ensure_ascii=False))  # fmt: skip
    for path, envelope_id in whole:
        if not args.json:
            print(envelope_id)
        say(args, f"sent {path.name}")
    name = signal.Signals(signum).name
    if not client.interrupted:
        line = f"interrupted by {name} before anything was sent"
    else:
        told = "; ".join(
            f"envelope {s.envelope_id} ({s.name or 'sealed'}) stopped after {s.confirmed} of"
            f" {s.parts} part(s)" + (f", expires {s.expires:%Y-%m-%d %H:%M}Z" if s.expires else "")
            for s in client.interrupted
        )
        line = (
            f"interrupted by {name}: {told}; it will not be delivered, and recipients discard"
            " its parts when it expires. Send the document again; `cipherpost outbox` lists it"
            " as interrupted"
        )
    sys.stderr.write(error_line(args, line, 128 + signum, "Interrupted") + "\n")
    return 128 + signum


def _send_failed(client: Client, sent: list[tuple[Path, str]], e: CipherpostError) -> None:
    """A send that failed part-way: the ids that went in full on stdout, and each stopped
    envelope with how many of its parts went folded into the one error line."""
    stopped = {s.envelope_id for s in client.interrupted}
    for _, envelope_id in sent:
        if envelope_id not in stopped:
            print(envelope_id)
    told = [
        f"envelope {s.envelope_id} ({s.name or 'sealed'}) stopped after {s.confirmed} of"
        f" {s.parts} part(s)"
        for s in client.interrupted
    ]
    if told and len(e.args) == 1:
        e.args = (f"{e}; {', '.join(told)}: send it again (`cipherpost outbox` lists it)",)


def _event_line(event: dict[str, Any]) -> str:
    """One line for a notice taken in: a refusal, a receipt or a status."""
    eid, mark = event["envelope_id"], "" if event["verified"] else "  [NOT VERIFIED]"
    if event["kind"] == "rejection":
        return f"{eid}  REFUSED by the gateway: rule {event['rule_id']} ({event['reason']}){mark}"
    if event["kind"] == "refused-document":
        return f"{eid}  REFUSED here: {event['reason']} (rule {event['rule_id']})"
    note = f"  {event['note']}" if event.get("note") else ""
    if event["kind"] == "recall":
        note = f"  reason: {event['reason']}  -> {event.get('recall', '')}"
    return f"{eid}  {event['status']} {event['status_name']} from {event['signer']}{note}{mark}"


def cmd_receive(args: argparse.Namespace) -> int:

    def show(doc: ReceivedDocument) -> None:  # each document as soon as it is durable
        meta = doc.metadata
        if args.json:
            line = json.dumps(
                {"event": "document", **meta, "path": str(doc.path)}, ensure_ascii=False
            )
        else:
            line = (
                f"{doc.envelope_id}  from {meta['sender']['code']}  {meta['level']}"
                f"  {meta['subject'] or '-'}  -> {doc.path}"
            )
            for sig in meta.get("signatures", []):
                line += f"\n    {sig['display']}"
            if meta.get("replaces"):
                line += f"\n    replaces {meta['replaces']} (marked replaced in the inbox)"
        print(line, flush=True)

    def told(event: dict[str, Any]) -> None:  # refusals, receipts, statuses about what we sent
        if args.json:
            print(json.dumps({"event": event["kind"], **event}, ensure_ascii=False), flush=True)
        else:
            print(_event_line(event), flush=True)

    with open_client(args) as client:  # a stop at the passphrase prompt still stops at once
        stop, stopped_by = noted_stops()
        client.on_received = show
        client.on_event = told
        if args.follow:
            say(
                args,
                f"receiving for {client.keys.code} from {client.broker.where()}"
                f" into {client.config.inbox}; waiting for documents and notices (Ctrl-C stops)",
            )
        got = client.receive(follow=args.follow, idle=args.idle, stop=stop)
        events = len(client.events)
    done = f"{len(got)} document(s) received, {events} notice(s)"
    if stopped_by and not args.follow:  # --follow ends on a signal: that is how it stops
        signum = stopped_by[0]
        name = signal.Signals(signum).name
        line = f"interrupted by {name}: {done}, kept; what was not taken stays queued"
        sys.stderr.write(error_line(args, line, 128 + signum, "Interrupted") + "\n")
        return 128 + signum
    say(args, done)
    return 0


def cmd_reply_status(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        envelope_id = client.resolve(args.envelope_id)
        client.reply_status(envelope_id, args.code, args.note)
    if args.json:
        print(json.dumps({"envelope_id": envelope_id, "status": args.code, "sent": True}))
    say(args, f"status {args.code} sent for {envelope_id}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agents.doctor import Doctor

    checks = Doctor(config_path(args), read_passphrase).run()
    failed = [c for c in checks if c.status == "FAIL"]
    emit(
        args,
        {"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]},
        *(check.line() for check in checks),
    )
    if failed:
        line = f"{len(failed)} check(s) failed; first: {failed[0].name}"
        sys.stderr.write(error_line(args, line, EXIT_ERROR, "DoctorFailed") + "\n")
        return EXIT_ERROR
    say(args, "every check passed")
    return 0


def register(sub: Subcommands) -> None:
    """``cipherpost send``, ``receive``, ``reply-status``."""
    _register_send(sub)

    sp = add(
        sub,
        "receive",
        cmd_receive,
        "verify and decrypt what is waiting into the inbox folder; send signed receipts",
        json_help='one JSON object per line: each document (event "document": the sidecar and'
        ' path) and each notice taken in (event "rejection", "receipt" or "status")',
    )
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="until the inbox is quiet (default)")
    mode.add_argument("--follow", action="store_true", help="until interrupted (SIGTERM/Ctrl-C)")
    sp.add_argument(
        "--idle",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with --once: stop after this long without a message (default 2)",
    )
    config_arg(sp)

    sp = add(
        sub,
        "reply-status",
        cmd_reply_status,
        "send a signed status about a received document back to its sender",
    )
    sp.add_argument("envelope_id", metavar="ENVELOPE_ID", help="the id or its first digits")
    sp.add_argument(
        "--code",
        required=True,
        metavar="CODE",
        help="02 rejected, 03 accepted, 04 assigned, 05 processing, 06 completed; to a"
        " recall: 15 agreed (the document moves to INBOX/recalled), 16 refused",
    )
    sp.add_argument("--note", default="", metavar="TEXT")
    config_arg(sp)


def _register_send(sub: Subcommands) -> None:
    """``cipherpost send``."""
    sp = add(
        sub,
        "send",
        cmd_send,
        "seal FILE(s) and submit them through the gateway; prints each envelope id",
    )
    sp.add_argument("files", nargs="+", type=Path, metavar="FILE", help="one envelope each")
    sp.add_argument("--to", required=True, metavar="CODE[,CODE...]", help=TO_HELP)
    sp.add_argument("--level", required=True, metavar="LEVEL", help=f"one of {LEVELS}")
    sp.add_argument("--urgency", default="thuong", metavar="U", help=f"one of {URGENCIES}")
    sp.add_argument("--subject", default="", metavar="TEXT", help="travels encrypted")
    sp.add_argument(
        "--number", default="", metavar="TEXT", help='edXML "Số, ký hiệu" (travels encrypted)'
    )
    sp.add_argument(
        "--signature",
        action="append",
        default=[],
        type=Path,
        metavar="FILE.sig",
        help="an official's signature from `cipherpost sign` (repeat for several); checked"
        " here and by every recipient, the gateway learns only that the document is signed",
    )
    sp.add_argument(
        "--replaces",
        metavar="ENVELOPE_ID",
        help="this document corrects one this agency sent: recipients mark the old one replaced",
    )
    config_arg(sp)


def register_doctor(sub: Subcommands) -> None:
    """``cipherpost doctor``."""
    sp = add(
        sub,
        "doctor",
        cmd_doctor,
        "check this agent end to end: keys, certificates, directory, broker, queues, gateway;"
        " one line per check with the fix (exit 1 if any failed)",
    )
    config_arg(sp)
