"""``cipherpost audit witness``: the witness loop.

It takes every checkpoint the gateways publish on the witness queue, checks that each
extends the last one held for its log (no fork, rollback or truncation), cosigns it with
the witness's key when given, and stops on the first alarm (exit 3), leaving the
offending checkpoint in the dead-letter queue as evidence. With ``--follow`` it also
alarms on a log that falls silent.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.cli.common import Subcommands, add
from agents.output import emit, say
from broker.connection import BrokerConfig
from broker.consumer import Consumer, Delivery
from broker.topology import WITNESS_QUEUE
from gateway.witness import CA_FILE, Witness, WitnessAlarm
from keys.auditkey import AUDIT_CERT_FILE, load_audit_certificate, load_audit_key
from keys.ca import load_ca_certificate
from keys.certs import ROLE_WITNESS
from keys.errors import Refused
from keys.keystore import unlock
from keys.logsetup import get_logger

log = get_logger("cipherpost.audit")


def _signer(args: argparse.Namespace) -> tuple[Ed25519PrivateKey, bytes] | None:
    """The witness's key and its certificate of role witness (``--key``), or None: then the
    checkpoints are kept but not cosigned."""
    signer = None
    if args.key is not None:
        ca_cert = load_ca_certificate(args.ca or args.store / CA_FILE)
        cert_path = args.key / AUDIT_CERT_FILE
        load_audit_certificate(cert_path, ca_cert, ROLE_WITNESS)  # refuses another role
        signer = (
            unlock(lambda passphrase: load_audit_key(args.key, passphrase)),
            cert_path.read_bytes(),
        )
    else:
        log.warning(
            "witness_without_key",
            detail="checkpoints are kept but not cosigned: audit verify will not count them as"
            " witnessed (give --key WITNESS_KEY_DIR)",
        )
    return signer


def cmd_witness(args: argparse.Namespace) -> int:
    witness = Witness(args.store, args.ca, _signer(args))
    broker = BrokerConfig.load(args.broker)
    alarm: list[str] = []
    seen = [0, 0]
    last_new = [time.monotonic()]
    stop = threading.Event()

    def handle(d: Delivery) -> None:
        if alarm:
            return  # stopping: leave the rest queued
        try:
            cp, new = witness.observe(d.body)
        except WitnessAlarm as e:
            alarm.append(str(e))
            log.error("witness_alarm", alarm=str(e))
            d.reject(requeue=False)  # kept in the dead-letter queue as evidence
            consumer.stop()
            return
        seen[0] += 1
        seen[1] += int(new)
        if new:
            last_new[0] = time.monotonic()
        log.info("checkpoint_witnessed", checkpoint=cp.describe(), new=new)
        if args.verbose:
            print(f"witnessed {cp.describe()}", flush=True)
        d.ack()

    consumer = Consumer(broker, WITNESS_QUEUE, handle, prefetch=16)
    if args.follow:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: stop.set())

        def watch() -> None:
            stop.wait()
            consumer.stop()

        def staleness() -> None:
            # A gateway republishes its checkpoint every interval even when idle; silence
            # longer than --stale-after means it stopped signing, or we stopped hearing it.
            told: set[str] = set()
            while not stop.wait(min(5.0, args.stale_after / 3)):
                stale = set(witness.stale(args.stale_after))
                for origin in sorted(stale - told):
                    log.error("witness_stale", log=origin, silent_for_s=args.stale_after)
                for origin in sorted(told - stale):
                    log.info("witness_heard_again", log=origin)
                told = stale

        threading.Thread(target=watch, daemon=True).start()
        threading.Thread(target=staleness, daemon=True).start()
        say(
            args,
            f"witnessing: waiting for the gateways' checkpoints on {WITNESS_QUEUE} at"
            f" {broker.where()} ({len(witness.last_seen)} log(s) held in"
            f" {args.store}); a log silent {args.stale_after:g} s is an alarm; Ctrl-C stops",
        )
    else:
        # Idle gateways republish their last checkpoint: "idle" is no NEW checkpoint.
        def idle() -> None:
            while not stop.wait(0.2):
                if time.monotonic() - last_new[0] > args.idle:
                    consumer.stop()
                    return

        threading.Thread(target=idle, daemon=True).start()
    consumer.run()
    stop.set()
    emit(args, {"checked": seen[0], "new": seen[1], "alarm": alarm[0] if alarm else None})
    if alarm:
        raise Refused(f"ALARM: {alarm[0]}")
    say(args, f"{seen[0]} checkpoint(s) checked, {seen[1]} new, all consistent")
    return 0


def register(audit: Subcommands) -> None:
    """``cipherpost audit witness``."""
    sp = add(
        audit,
        "witness",
        cmd_witness,
        "check every published checkpoint against the last one held; exit 3 on any alarm",
    )
    sp.add_argument("--store", required=True, type=Path, metavar="DIR")
    sp.add_argument(
        "--ca", type=Path, metavar="CA_CERT", help="pin this CA (needed the first time)"
    )
    sp.add_argument(
        "--broker",
        required=True,
        type=Path,
        metavar="CREDENTIALS.json",
        help="the witness's broker credentials (from broker provision)",
    )
    sp.add_argument(
        "--key",
        type=Path,
        metavar="WITNESS_KEY_DIR",
        help="the witness's key (audit keygen) and its CA certificate of role witness"
        " (ca issue-audit --role witness): each accepted checkpoint is stored cosigned",
    )
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--follow", action="store_true", help="until interrupted (SIGTERM/Ctrl-C)")
    sp.add_argument(
        "--idle",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="without --follow: stop after this long without a new checkpoint (default 3)",
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="print each checkpoint")
    sp.add_argument(
        "--stale-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --follow: alarm (witness_stale) when a log is silent this long;"
        " 3 x the gateways' checkpoint_seconds (default 30)",
    )
