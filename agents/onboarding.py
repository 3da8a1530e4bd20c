"""Bulk onboarding: from a CSV of agencies to agents exchanging documents.

The path (docs/onboarding.md), with a **kit** folder per agency carried between
the cipher department and the agency (it never holds a private key):

1. cipher department: ``agency import AGENCIES.csv`` -> one kit per agency
   (``agency.json``: code, name, clearance, parent; ``ca.crt``);
2. agency: ``agency join KIT --dir AGENCY_DIR`` -> keys made on its own machine,
   ``request.cpr`` written into the kit, ``agent.toml`` written;
3. cipher department: ``ca approve KITS`` -> certificates for every request that
   matches an imported agency, a new signed directory, copied into each kit;
4. cipher department: ``broker provision ... --kits KITS --publish`` -> broker
   users, queues and permissions; each new login's credentials into its kit;
   the new directory published to every running gateway and agent;
5. agency: ``agency finish KIT --dir AGENCY_DIR`` -> directory and broker login
   taken from the kit, checked (the directory certifies these very keys, the
   broker accepts the login): ready.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from broker.connection import BrokerConfig, connect_blocking
from keys import agency, ca
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.errors import CipherpostError, Refused, UsageError
from keys.keystore import write_private_file
from keys.levels import Level

KIT_FILE = "agency.json"
KIT_CA = "ca.crt"
KIT_REQUEST = "request.cpr"
KIT_DIRECTORY = "directory.cpd"
KIT_BROKER = "broker.json"
MAX_ROWS = 100_000


@dataclass(frozen=True)
class Row:
    line: int
    code: AgencyCode
    name: str
    clearance: Level
    parent: AgencyCode | None


def _delimiter(text: str) -> str:
    """``,`` or ``;`` (what Excel saves in a Vietnamese locale): the one that splits the first
    line into code,name,clearance[,parent]. A name with a comma in a ``,`` file is quoted."""
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            for delimiter in (",", ";"):
                if len(next(csv.reader([line], delimiter=delimiter))) in (3, 4):
                    return delimiter
            break
    return ","


def read_csv(text: str) -> list[Row]:
    """Parse and check every row; :class:`UsageError` naming every bad line, or all rows."""
    text = text.removeprefix("\ufeff")  # the byte-order mark Excel writes
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(text))
    rows: list[Row] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, fields in enumerate(reader, start=1):
        if not fields or all(not f.strip() for f in fields) or fields[0].startswith("#"):
            continue
        if n == 1 and fields[0].strip().lower() == "code":
            continue  # the header line
        if len(rows) >= MAX_ROWS:
            raise UsageError(f"more than {MAX_ROWS} agencies in one import")
        if len(fields) not in (3, 4):
            problems.append(f"line {n}: expected code,name,clearance[,parent]")
            continue
        try:
            code = AgencyCode.from_user(fields[0])
            name = agency.validate_name(fields[1].strip())
            clearance = Level.parse(fields[2].strip())
            parent_text = fields[3].strip() if len(fields) == 4 else ""
            parent = AgencyCode.from_user(parent_text) if parent_text else None
        except (UsageError, CipherpostError) as e:
            problems.append(f"line {n}: {e}")
            continue
        if code.text in seen:
            problems.append(f"line {n}: {code} already on line {seen[code.text]}")
            continue
        seen[code.text] = n
        rows.append(Row(n, code, name, clearance, parent))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise UsageError("; ".join(problems[:5]) + more)
    if not rows:
        raise UsageError("no agencies in the file")
    return rows


def import_agencies(rows: list[Row], authority: ca.CertificateAuthority, kits: Path) -> int:
    """Record the agencies the CA expects and write one kit per agency; returns how many new."""
    state = authority.load_state()
    expected = state.setdefault("expected", {})
    issued = state["issued"]
    known = {r.code.text for r in rows} | set(expected) | set(issued)
    orphans = [
        f"line {r.line}: parent {r.parent} is unknown"
        for r in rows
        if r.parent is not None and r.parent.text not in known
    ]
    if orphans:
        raise UsageError("; ".join(orphans[:5]) + (" …" if len(orphans) > 5 else ""))
    new = 0
    for row in rows:
        info = {
            "code": row.code.text,
            "name": row.name,
            "clearance": row.clearance.value,
            "parent": row.parent.text if row.parent else None,
        }
        old = expected.get(row.code.text)
        if row.code.text in issued and (old is None or old["name"] != row.name):
            raise CipherpostError(f"{row.code} already holds certificates under another name")
        new += old is None
        expected[row.code.text] = info
        kit = kits / row.code.text
        kit.mkdir(parents=True, exist_ok=True)
        (kit / KIT_FILE).write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n")
        (kit / KIT_CA).write_bytes(authority.certificate.public_bytes(serialization.Encoding.PEM))
    authority.save_state(state)
    return new


def _kit_info(kit: Path) -> dict[str, str]:
    try:
        info = json.loads((kit / KIT_FILE).read_text())
    except OSError:
        raise CipherpostError(f"{kit} is not an onboarding kit (no {KIT_FILE})") from None
    except ValueError:
        raise CipherpostError(f"{kit / KIT_FILE} is damaged") from None
    return dict(info)


AGENT_TOML = """\
# Written by `cipherpost agency join`; every agent command takes --config {config}
agency_dir = "keys"
directory = "directory.cpd"
ca_cert = "ca.crt"
inbox = "inbox"

[broker]
credentials = "broker.json"
"""


def join(kit: Path, agency_dir: Path, passphrase: bytes, now: dt.datetime) -> Path:
    """Agency side: make the keys here, put the request into the kit, write agent.toml."""
    info = _kit_info(kit)
    code = AgencyCode.parse(info["code"])
    agency_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    agency.enroll(agency_dir / "keys", code, info["name"], passphrase, now)
    shutil.copy(agency_dir / "keys" / agency.REQUEST_FILE, kit / KIT_REQUEST)
    shutil.copy(kit / KIT_CA, agency_dir / "ca.crt")
    config = agency_dir / "agent.toml"
    config.write_text(AGENT_TOML.format(config=config))
    return config


@dataclass
class Approval:
    approved: list[str]
    already: list[str]
    waiting: list[str]
    refused: list[str]


def approve(
    authority: ca.CertificateAuthority,
    kits: Path,
    certs: Path,
    directory_out: Path,
    now: dt.datetime,
    *,
    valid_days: int = 365,
    directory_days: int = 7,
) -> Approval:
    """Cipher department: certify every kit's request that matches an imported agency, then
    sign a new directory and put it into every kit."""
    state = authority.load_state()
    expected = state.get("expected", {})
    result = Approval([], [], [], [])
    for kit in sorted(p for p in kits.iterdir() if (p / KIT_FILE).exists()):
        info = _kit_info(kit)
        code = info["code"]
        if not (kit / KIT_REQUEST).exists():
            result.waiting.append(code)
            continue
        if code in state["issued"]:
            result.already.append(code)
            continue
        want = expected.get(code)
        try:
            request = agency.EnrollmentRequest.parse((kit / KIT_REQUEST).read_bytes())
            if want is None:
                raise Refused("not imported (agency import) by the cipher department")
            if request.code.text != code or request.name != want["name"]:
                raise Refused(
                    f"request is for {request.code} {request.name!r}, expected {want['name']!r}"
                )
        except Refused as e:
            result.refused.append(f"{code}: {e}")
            continue
        ca.issue(authority, request, Level(want["clearance"]), certs, now, valid_days)
        state = authority.load_state()
        result.approved.append(code)
    if result.approved:
        data = build_directory(authority, certs, now, directory_days)
        write_private_file(directory_out, data)
        directory_out.chmod(0o644)  # public: certificates and the CRL only
        for kit in kits.iterdir():
            if (kit / KIT_FILE).exists():
                shutil.copy(directory_out, kit / KIT_DIRECTORY)
    return result


def finish(kit: Path, agency_dir: Path, now: dt.datetime) -> Directory:
    """Agency side: take the directory and broker login from the kit and check both."""
    info = _kit_info(kit)
    code = AgencyCode.parse(info["code"])
    for name in (KIT_DIRECTORY, KIT_BROKER):
        if not (kit / name).exists():
            raise CipherpostError(
                f"{kit / name} is missing: the cipher department has not approved and "
                "provisioned this agency yet"
            )
    keys_public = json.loads((agency_dir / "keys" / agency.PUBLIC_FILE).read_text())
    ca_cert = ca.load_ca_certificate(agency_dir / "ca.crt")
    trust = TrustState(agency_dir / "keys" / agency.TRUST_FILE)
    data = (kit / KIT_DIRECTORY).read_bytes()
    directory = Directory.load(data, trust, now=now, ca_certificate=ca_cert)
    entry = directory.get(code)
    if entry.sign.public_key.hex() != keys_public["sign_public"]:
        raise Refused(
            f"the directory certifies other keys for {code} than the ones in {agency_dir}"
        )
    write_private_file(agency_dir / "directory.cpd", data)
    broker = BrokerConfig.load(kit / KIT_BROKER)
    connect_blocking(broker).close()  # the login works
    broker.save(agency_dir / "broker.json")
    return directory
