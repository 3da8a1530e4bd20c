"""``seal``, ``verify``, ``open``: one envelope as a file, no broker.

Sealing and opening write through a temporary file and keep nothing on a stop
(``STOPS``); verifying needs no private key, as the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import envelopes
from agents.cli.common import (
    LEVELS,
    STOPS,
    TO_HELP,
    URGENCIES,
    Subcommands,
    add,
    directory_args,
    load_directory,
    parse_codes,
    parse_duration,
)
from agents.output import emit, say
from agents.progress import ProgressReader
from keys import agency
from keys.directory import TrustState
from keys.errors import CipherpostError
from keys.keystore import unlock
from keys.levels import Level, Urgency


def _agency_trust(agency_dir: Path) -> TrustState:
    return TrustState(agency_dir / agency.TRUST_FILE)


def cmd_seal(args: argparse.Namespace) -> int:
    level = Level.parse(args.level)
    urgency = Urgency.parse(args.urgency)
    to = parse_codes(args.to)
    lifetime = parse_duration(args.expires_in)
    if args.out.exists():
        raise CipherpostError(f"{args.out} already exists; refusing to overwrite it")
    keys = unlock(lambda passphrase: agency.load_agency(args.as_dir, passphrase))
    directory = load_directory(args, _agency_trust(args.as_dir))
    try:
        src = args.file.open("rb")
    except OSError as e:
        raise CipherpostError(f"cannot read {args.file}: {e.strerror}") from e
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with src, STOPS.deferred():
        size = os.fstat(src.fileno()).st_size
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{args.out.name}.", suffix=".partial", dir=args.out.parent
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as dst:
                sealed = envelopes.seal(
                    STOPS.reading(ProgressReader(src, size, "sealing")),  # type: ignore[arg-type]
                    dst,
                    keys=keys,
                    directory=directory,
                    to=to,
                    level=level,
                    urgency=urgency,
                    size=size,
                    metadata=envelopes.Metadata(subject=args.subject, filename=args.file.name),
                    lifetime=lifetime,
                )
                dst.flush()
                os.fsync(dst.fileno())
            try:
                os.link(tmp, args.out)  # never clobber: a concurrent run gets "already exists"
            except FileExistsError:
                raise CipherpostError(
                    f"{args.out} already exists; refusing to overwrite it"
                ) from None
            if STOPS.pending is not None:
                args.out.unlink()  # finished just as a stop came: a stop keeps nothing
        finally:
            tmp.unlink(missing_ok=True)
    emit(
        args,
        {"envelope_id": sealed.envelope_id, "out": str(args.out),
         "recipients": [c.text for c in to], "level": level.value,
         "envelope_bytes": sealed.envelope_bytes},
        sealed.envelope_id,
    )  # fmt: skip
    say(
        args,
        f"sealed {args.file.name} for {len(to)} recipient(s) at level {level.value}"
        f" -> {args.out} ({sealed.envelope_bytes:,} bytes)",
    )
    return 0


def _print_info(info: dict[str, object], extra: dict[str, object] | None = None) -> None:
    recipients = info["recipients"]
    assert isinstance(recipients, list)
    lines = [
        ("envelope", info["envelope_id"]),
        ("sender", f"{info['sender']['code']}  {info['sender']['name']}"),  # type: ignore[index]
        ("recipients", f"{len(recipients)}"),
    ]
    for r in recipients:
        lines.append(("", f"{r['code']}  {r['name']}"))
    level = Level(info["level"])
    urgency = Urgency(info["urgency"])
    lines += [
        ("level", f"{level.value} ({level.display})"),
        ("urgency", f"{urgency.value} ({urgency.display})"),
        (
            "size",
            f"{info['payload_bytes']:,} bytes payload, {info['envelope_bytes']:,} bytes"
            f" envelope, {info['segments']} segment(s)",
        ),
        ("created", info["created"]),
        ("expires", info["expires"]),
    ]
    for key, value in (extra or {}).items():
        lines.append((key, value))
    for key, value in lines:
        print(f"{key:<11}{value}")


def cmd_verify(args: argparse.Namespace) -> int:
    directory = load_directory(args, TrustState.default())
    try:
        src = args.envelope.open("rb")
    except OSError as e:
        raise CipherpostError(f"cannot read {args.envelope}: {e.strerror}") from e
    with src:
        size = os.fstat(src.fileno()).st_size
        info = envelopes.verify(
            ProgressReader(src, size, "verifying"),  # type: ignore[arg-type]
            directory=directory,
        )
    summary = info.as_dict()
    summary["verified"] = True
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_info(summary, {"verified": "yes: signatures, parties, clearances, lifetime"})
    return 0


def cmd_open(args: argparse.Namespace) -> int:
    keys = unlock(lambda passphrase: agency.load_agency(args.as_dir, passphrase))
    directory = load_directory(args, _agency_trust(args.as_dir))
    try:
        src = args.envelope.open("rb")
    except OSError as e:
        raise CipherpostError(f"cannot read {args.envelope}: {e.strerror}") from e
    args.out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with src, STOPS.deferred():
        size = os.fstat(src.fileno()).st_size
        opened = envelopes.open_to_path(
            STOPS.reading(ProgressReader(src, size, "opening")),  # type: ignore[arg-type]
            args.out,
            keys=keys,
            directory=directory,
        )
        if STOPS.pending is not None:
            args.out.unlink()  # finished just as a stop came: a stop keeps nothing
    summary = opened.info.as_dict()
    summary.update(
        {
            "opened_as": keys.code.text,
            "out": str(args.out),
            "document_bytes": opened.document_bytes,
            **opened.metadata.as_dict(),
        }
    )
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_info(
            summary.copy(),
            {
                "subject": opened.metadata.subject or "-",
                "filename": opened.metadata.filename or "-",
                "written": f"{args.out} ({opened.document_bytes:,} bytes)",
            },
        )
    return 0


def register(sub: Subcommands) -> None:
    """``cipherpost seal``, ``verify``, ``open``."""
    sp = add(sub, "seal", cmd_seal, "sign and encrypt FILE into an envelope for agency codes")
    sp.add_argument("file", type=Path, metavar="FILE", help="the document")
    sp.add_argument("--as", dest="as_dir", required=True, type=Path, metavar="AGENCY_DIR")
    directory_args(sp)
    sp.add_argument("--to", required=True, metavar="CODE[,CODE...]", help=TO_HELP)
    sp.add_argument("--level", required=True, metavar="LEVEL", help=f"one of {LEVELS}")
    sp.add_argument("--urgency", default="thuong", metavar="U", help=f"one of {URGENCIES}")
    sp.add_argument(
        "--subject", default="", metavar="TEXT", help="travels encrypted, never in the header"
    )
    sp.add_argument(
        "--expires-in",
        default="30d",
        metavar="DURATION",
        help="e.g. 90m, 12h, 30d, 2w (default 30d, at most 366d)",
    )
    sp.add_argument("--out", required=True, type=Path, metavar="OUT.cpe")

    sp = add(
        sub, "verify", cmd_verify, "check an envelope with no private key, as the gateway does"
    )
    sp.add_argument("envelope", type=Path, metavar="ENVELOPE.cpe")
    directory_args(sp)

    sp = add(
        sub,
        "open",
        cmd_open,
        "verify and decrypt; the document appears at PATH only after all verified",
    )
    sp.add_argument("envelope", type=Path, metavar="ENVELOPE.cpe")
    sp.add_argument("--as", dest="as_dir", required=True, type=Path, metavar="AGENCY_DIR")
    directory_args(sp)
    sp.add_argument("--out", required=True, type=Path, metavar="PATH")
