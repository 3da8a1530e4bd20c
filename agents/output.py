"""How every command speaks: results on stdout (one JSON object with ``--json``), remarks on
stderr (silenced by ``--quiet``), errors as one line (one JSON object with ``--json``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def emit(args: argparse.Namespace, data: dict[str, Any], *lines: str) -> None:
    """A command's result on stdout: ``data`` as one JSON object with ``--json``, else
    ``lines`` for a person."""
    if getattr(args, "json", False):
        print(json.dumps(data, ensure_ascii=False, default=str), flush=True)
    else:
        for line in lines:
            print(line, flush=True)


def say(args: argparse.Namespace, text: str, *, always: bool = False) -> None:
    """A remark on stderr (stdout carries results); ``--quiet`` and ``--json`` (whose stderr
    carries only the error object) silence it unless ``always`` (a warning to be seen)."""
    if always or not (getattr(args, "quiet", False) or getattr(args, "json", False)):
        sys.stderr.write(f"{text}\n")


def error_line(args: argparse.Namespace | None, message: str, exit_code: int, kind: str) -> str:
    """The one line a failure prints on stderr: text, or a JSON object with ``--json``."""
    message = " ".join(message.split())
    if args is not None and getattr(args, "json", False):
        return json.dumps(
            {"error": message, "exit_code": exit_code, "kind": kind}, ensure_ascii=False
        )
    return f"cipherpost: {message}"
