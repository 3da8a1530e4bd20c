"""Bulk onboarding of officials: the cipher department certifies a commune's staff at once.

Each official makes a key on their own machine (``cipherpost official enroll``)
and the agency puts the requests into its kit, ``KIT/officials/*.req``. The
province sends the list of who holds which office as a CSV (``code,name,
title[,position]``); ``cipherpost agency import --officials OFFICIALS.csv
--kits KITS`` certifies every request that matches a row of its agency
(name, title, position) and writes the certificate beside the request
(``KIT/officials/<same name>.crt``), for the official to copy into their
folder. A request that matches no row is refused, naming it; a row without
a request yet is waiting.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass, field
from pathlib import Path

from keys import ca
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused, UsageError
from keys.officials import OfficialRequest, validate_position, validate_title

KIT_OFFICIALS = "officials"
MAX_ROWS = 100_000


@dataclass(frozen=True)
class OfficialRow:
    line: int
    code: AgencyCode
    name: str
    title: str
    position: str


@dataclass
class OfficialsImport:
    issued: list[str] = field(default_factory=list)  # "code name" per certificate
    already: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # rows without a request yet
    refused: list[str] = field(default_factory=list)


def read_officials_csv(text: str) -> list[OfficialRow]:
    """``code,name,title[,position]`` rows (``,`` or ``;``, a BOM and a header line allowed);
    :class:`UsageError` naming the bad lines."""
    from agents.onboarding import _delimiter  # one reading of Excel's CSVs
    from keys.agency import validate_name

    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(text))
    rows: list[OfficialRow] = []
    problems: list[str] = []
    for n, fields in enumerate(reader, start=1):
        if not fields or all(not f.strip() for f in fields) or fields[0].startswith("#"):
            continue
        if n == 1 and fields[0].strip().lower() == "code":
            continue
        if len(rows) >= MAX_ROWS:
            raise UsageError(f"more than {MAX_ROWS} officials in one import")
        if len(fields) not in (3, 4):
            problems.append(f"line {n}: expected code,name,title[,position]")
            continue
        try:
            rows.append(
                OfficialRow(
                    n,
                    AgencyCode.from_user(fields[0]),
                    validate_name(fields[1]),
                    validate_title(fields[2]),
                    validate_position(fields[3] if len(fields) == 4 else ""),
                )
            )
        except CipherpostError as e:
            problems.append(f"line {n}: {e}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise UsageError("; ".join(problems[:5]) + more)
    if not rows:
        raise UsageError("no officials in the file")
    return rows


def import_officials(
    rows: list[OfficialRow],
    authority: ca.CertificateAuthority,
    kits: Path,
    now: dt.datetime,
    valid_days: int = 365,
) -> OfficialsImport:
    """Certify every kit's official request that matches a row of its agency."""
    result = OfficialsImport()
    wanted: dict[tuple[str, str, str, str], OfficialRow] = {
        (r.code.text, r.name, r.title, r.position): r for r in rows
    }
    certified = authority.load_state().get("officials", {})
    matched: set[tuple[str, str, str, str]] = set()
    batch: list[tuple[OfficialRequest, Path]] = []
    sources: list[Path] = []
    for code in sorted({r.code.text for r in rows}):
        folder = kits / code / KIT_OFFICIALS
        for path in sorted(folder.glob("*.req")) if folder.is_dir() else []:
            try:
                request = OfficialRequest.parse(path.read_bytes())
                key = (request.code.text, request.name, request.title, request.position)
                if request.code.text != code:
                    raise Refused(f"a request for {request.code} in the kit of {code}")
                if key not in wanted:
                    raise Refused(
                        f"{request.name} ({request.title}) is not on the officials list of {code}"
                    )
            except Refused as e:
                result.refused.append(f"{path.name}: {e}")
                continue
            matched.add(key)
            label = f"{code} {request.name}"
            if request.key_id.hex() in certified:
                result.already.append(label)
                continue
            batch.append((request, folder))
            sources.append(path)
            result.issued.append(label)
    written = ca.issue_officials(authority, batch, now, valid_days) if batch else []
    for source, path in zip(sources, written, strict=True):
        path.replace(source.with_suffix(".crt"))  # beside its request: each finds their own
    result.waiting = [f"{r.code} {r.name}" for k, r in wanted.items() if k not in matched]
    return result
