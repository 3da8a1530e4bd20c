"""What every audience's commands share.

The parser whose usage error is one line (``Parser``), the builders of a command and of a
group of subcommands (``add``, ``group``), the options several audiences take
(``directory_args``, ``notices_arg``, ``config_arg``), the exit codes every help ends with,
the side remarks (``NOTES``) and the stop signals (``STOPS``) ``main`` handles, and the
helpers that read a file, the directory, the agent's settings and the agent itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeAlias

from agents.client import Client
from agents.interrupts import SIGNALS as STOP_SIGNALS
from agents.interrupts import Stops
from keys import ca
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState
from keys.errors import EXIT_USAGE, CipherpostError, UsageError
from keys.keystore import unlock
from keys.levels import Level, Urgency

EXIT_CODES = """exit codes:
  0  ok
  1  other error (unreadable file, wrong passphrase, broker unreachable, ...)
  2  usage error (malformed argument, agency code, level, duration; no
     passphrase available)
  3  refused: verification failed, not a recipient, expired, revoked or
     unknown party, level above a clearance, directory rollback
  4  audit verify: all checked holds, but leaves no witnessed checkpoint covers
  128+n  stopped by signal n (130 Ctrl-C, 143 SIGTERM); the one line says
     what was kept or sent

The passphrase of a key file comes from CIPHERPOST_PASSPHRASE, the file named
by CIPHERPOST_PASSPHRASE_FILE, or a prompt (three tries), never from the
command line. Agent commands read CIPHERPOST_CONFIG (or
~/.config/cipherpost/agent.toml) when --config is not given."""

# Side remarks (trust on first use) are printed after the result, or folded into
# the one error line, so a failure is always exactly one line on stderr.
NOTES: list[str] = []

# SIGINT, SIGTERM, SIGHUP: while an envelope is sealed or opened, acted on at a safe point.
STOPS = Stops()

LEVELS = ", ".join(level.value for level in Level) + " (or as written: Mật, Tối mật, ...)"
URGENCIES = ", ".join(u.value for u in Urgency) + " (or as written: Khẩn, Hỏa tốc, ...)"
TO_HELP = "the recipients' agency codes, comma-separated (any case: 000.01.12.h41)"
CONFIG_ENV = "CIPHERPOST_CONFIG"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (JSON with --json) and exit code 2."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            text = json.dumps(
                {"error": f"usage error: {message}", "exit_code": EXIT_USAGE, "kind": "usage"}
            )
        else:
            text = f"{self.prog}: usage error: {message} (see --help)"
        sys.stderr.write(text + "\n")
        raise SystemExit(EXIT_USAGE)


FORMATTER = argparse.RawDescriptionHelpFormatter
# The subcommands of ``cipherpost`` or of a group (``cipherpost ca ...``).
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"


def add(
    parent: Subcommands,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_: str,
    *,
    json_help: str | None = "print the result as one JSON object (errors too, on stderr)",
) -> Parser:
    """A command; every one takes --quiet, and --json unless ``json_help`` is None."""
    sp = parent.add_parser(
        name, help=help_, description=help_, epilog=EXIT_CODES, formatter_class=FORMATTER
    )
    sp.set_defaults(handler=handler)
    sp.add_argument(
        "-q", "--quiet", action="store_true", help="no remarks or progress on stderr"
    )
    if json_help is not None:
        sp.add_argument("--json", action="store_true", help=json_help)
    return sp


def group(sub: Subcommands, name: str, help_: str) -> Subcommands:
    """A command with subcommands (``cipherpost ca ...``); each needs one of them."""
    parent = add(sub, name, lambda a: 0, help_, json_help=None)
    return parent.add_subparsers(
        dest=f"{name}_command", required=True, metavar="COMMAND", parser_class=Parser
    )


def directory_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--directory",
        required=True,
        type=Path,
        metavar="DIRECTORY_FILE",
        help="the signed agency directory",
    )
    sp.add_argument(
        "--ca-cert",
        type=Path,
        metavar="CA_CERT",
        help="pin this CA certificate instead of the one trusted before",
    )


def notices_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--idle",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="first take in the notices waiting in the inbox until this long passes"
        " quietly (default 1; 0: only what is known already)",
    )


def config_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--config",
        type=Path,
        metavar="AGENT.toml",
        help="the agent's settings (keys, directory, broker, inbox); default:"
        f" ${CONFIG_ENV}, else ~/.config/cipherpost/agent.toml",
    )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_duration(text: str) -> dt.timedelta:
    """``90m``, ``12h``, ``30d``, ``2w`` -> timedelta."""
    m = re.fullmatch(r"(\d{1,6})([mhdw])", text.strip())
    if not m:
        raise UsageError(f"invalid duration {text!r}: use e.g. 90m, 12h, 30d, 2w")
    n, unit = int(m.group(1)), m.group(2)
    return {
        "m": dt.timedelta(minutes=n),
        "h": dt.timedelta(hours=n),
        "d": dt.timedelta(days=n),
        "w": dt.timedelta(weeks=n),
    }[unit]


def parse_codes(text: str) -> list[AgencyCode]:
    """``A,B,C`` -> codes, each validated."""
    codes = [AgencyCode.from_user(part) for part in text.split(",") if part.strip()]
    if not codes:
        raise UsageError("--to needs at least one agency code")
    return codes


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {what} {path}: {e.strerror}") from e


def load_directory(args: argparse.Namespace, trust: TrustState) -> Directory:
    pinned = ca.load_ca_certificate(args.ca_cert) if args.ca_cert else None
    directory = Directory.load(
        read_file(args.directory, "directory"), trust, now=now(), ca_certificate=pinned
    )
    if trust.pinned_now and pinned is None:
        NOTES.append(
            f"note: now trusting CA SHA256:{trust.pinned_now} on first use;"
            " compare it with the cipher department's published fingerprint"
        )
    return directory



def config_path(args: argparse.Namespace, env: dict[str, str] | None = None) -> Path:
    """``--config``, else ``$CIPHERPOST_CONFIG``, else ``$XDG_CONFIG_HOME/cipherpost/agent.toml``
    (``~/.config/...``) when it exists: a clerk need not type it every time."""
    if args.config is not None:
        return Path(args.config)
    environ = os.environ if env is None else env
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    base = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    default = base / "cipherpost" / "agent.toml"
    if default.is_file():
        return default
    raise UsageError(
        f"no agent settings: give --config AGENT.toml, set {CONFIG_ENV}, or put them in {default}"
    )


def open_client(args: argparse.Namespace) -> Client:
    from agents import logs
    from agents.config import AgentConfig

    # A command that ends on its own reports failure in its one error line; a
    # long-running one (receive --follow) shows reconnects as they happen.
    follow = getattr(args, "follow", False)
    logs.configure(json_lines=False, level=logging.WARNING if follow else logging.CRITICAL)
    config = AgentConfig.load(config_path(args))
    return unlock(lambda passphrase: Client(config, passphrase))


def noted_stops() -> tuple[threading.Event, list[int]]:
    """While the inbox is consumed, a stop signal only sets the returned event (the consumer
    ends after the message in hand; what it did not take stays queued) and is listed.

    Raised from the handler instead, a stop could land inside the HPKE unwrap, read as "does
    not open", and the document be recorded refused and acknowledged: lost."""
    stop = threading.Event()
    stopped_by: list[int] = []

    def on_stop(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        stop.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop)  # main() puts the previous handlers back
    return stop, stopped_by
