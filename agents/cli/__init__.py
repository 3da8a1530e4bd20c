"""The ``cipherpost`` command line: one entry point, one error handler.

Exit codes (also in ``--help`` and the README):

  0  ok
  1  any other error (unreadable file, wrong passphrase, broker down, ...)
  2  usage: a malformed argument, code, level or duration
  3  refused: the envelope, party, request or directory failed a check
     (bad signature, not a recipient, expired, revoked or unknown party,
     level above a clearance, directory rollback)

Each audience's commands live in their own module, registered next to their handlers:
``department`` (ca, directory, policy), ``provisioning`` (broker), ``onboarding`` (agency,
keys), ``envelope`` (seal, verify, open), ``agency`` (send, receive, reply-status, doctor),
``tracking`` (status, outbox), ``gateway``, ``officials`` (official, sign, recall),
``audit`` and ``witness`` (audit ...), ``sandbox`` (demo, tour); ``common`` holds what
they share. This module assembles them into one parser and runs a command.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from agents import progress
from agents.cli import (
    agency,
    audit,
    department,
    envelope,
    gateway,
    officials,
    onboarding,
    provisioning,
    sandbox,
    tracking,
)
from agents.cli.common import EXIT_CODES, FORMATTER, NOTES, STOPS, Parser, Subcommands, add
from agents.interrupts import Interrupted
from agents.output import error_line, say
from keys.errors import EXIT_ERROR, CipherpostError


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="cipherpost",
        description="Secure document exchange between agencies: signed, encrypted envelopes.",
        epilog=EXIT_CODES,
        formatter_class=FORMATTER,
    )
    p.add_argument("--version", action="version", version=f"cipherpost {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    # Each audience registers its own commands; in this order, the order `--help` lists them.
    department.register_ca(sub)
    onboarding.register(sub)
    department.register_directory(sub)
    envelope.register(sub)
    agency.register(sub)
    tracking.register(sub)
    gateway.register(sub)
    officials.register(sub)
    provisioning.register(sub)
    department.register_policy(sub)
    sandbox.register_demo(sub, main)
    audit.register(sub)
    agency.register_doctor(sub)
    _register_completion(sub)
    sandbox.register_tour(sub, main)
    return p


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    parser = build_parser()
    _complete_paths(parser)
    print(shtab.complete(parser, shell=args.shell, root_prefix="cipherpost"))
    return 0


def _complete_paths(parser: argparse.ArgumentParser) -> None:
    """Every argument that names a file or folder completes as one."""
    import shtab

    for action in parser._actions:
        if action.type is Path:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _complete_paths(sub)


def _register_completion(sub: Subcommands) -> None:
    """``cipherpost completion bash|zsh``."""
    sp = add(
        sub,
        "completion",
        cmd_completion,
        'print a shell completion script: eval "$(cipherpost completion bash)" in ~/.bashrc,'
        " or cipherpost completion zsh > ~/.zfunc/_cipherpost",
        json_help=None,
    )
    sp.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")


def _version() -> str:
    try:
        return importlib.metadata.version("cipherpost")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return (and, as a script, exit with) a documented code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    Parser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    NOTES.clear()
    if args.quiet or getattr(args, "json", False):
        progress.DEFAULT_ENABLED = False  # stderr stays for the one error line
    STOPS.install()

    def fail(message: str, exit_code: int, kind: str) -> int:
        notes = f" [{'; '.join(NOTES)}]" if NOTES else ""
        sys.stderr.write(error_line(args, message + notes, exit_code, kind) + "\n")
        return exit_code

    try:
        code: int = args.handler(args)
        for note in NOTES:
            say(args, f"cipherpost: {note}")
        return code
    except CipherpostError as e:
        return fail(str(e), e.exit_code, type(e).__name__)
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return fail(f"error: {where}{e.strerror or e}", EXIT_ERROR, "OSError")
    except (KeyboardInterrupt, Interrupted) as e:
        # Every finally: above ran: quarantine and partial files are already removed.
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        return fail(f"interrupted by {name}; nothing kept", 128 + signum, "Interrupted")
    except Exception as e:  # last resort: one line, never a traceback, unless asked
        if os.environ.get("CIPHERPOST_DEBUG"):
            raise
        return fail(
            f"internal error ({type(e).__name__}); set CIPHERPOST_DEBUG=1 for details",
            EXIT_ERROR,
            "InternalError",
        )
    finally:
        STOPS.restore()


def entry() -> NoReturn:
    """Console-script entry point."""
    raise SystemExit(main())
