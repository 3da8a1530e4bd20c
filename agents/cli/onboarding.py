"""Onboarding: ``agency import|join|finish`` and ``keys enroll``.

The cipher department imports agencies (or officials) in bulk, one kit each; each agency
joins (its keys made where they stay) and finishes from the approved kit. ``keys enroll``
is the same first step by hand, without a kit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents import officials as officials_import
from agents import onboarding
from agents.cli.common import Subcommands, add, group, now
from agents.output import emit, say
from keys import agency, ca
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused, UsageError
from keys.keystore import read_passphrase, unlock


def cmd_agency_import(args: argparse.Namespace) -> int:
    if args.officials is not None:
        return _import_officials(args)
    if args.csv is None:
        raise UsageError("give AGENCIES.csv, or --officials OFFICIALS.csv")
    rows = onboarding.read_csv(_read_csv_text(args.csv))
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    new = onboarding.import_agencies(rows, authority, args.kits)
    emit(
        args,
        {"imported": len(rows), "new": new, "kits": str(args.kits),
         "codes": [r.code.text for r in rows]},
        f"{len(rows)} agencies imported ({new} new); one kit each in {args.kits}",
    )  # fmt: skip
    say(args, "give each agency its kit; it runs: cipherpost agency join KIT --dir AGENCY_DIR")
    return 0


def _read_csv_text(path: Path) -> str:
    """A CSV as Excel saves it (UTF-8, perhaps with a BOM); one-line errors."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise CipherpostError(f"cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None


def _import_officials(args: argparse.Namespace) -> int:
    rows = officials_import.read_officials_csv(_read_csv_text(args.officials))
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    result = officials_import.import_officials(rows, authority, args.kits, now())
    emit(
        args,
        {"officials": len(rows), "issued": len(result.issued), "already": len(result.already),
         "waiting": result.waiting, "refused": result.refused},
        *(f"REFUSED {reason}" for reason in result.refused),
        f"{len(result.issued)} officials certified, {len(result.already)} already,"
        f" {len(result.waiting)} waiting for their request, {len(result.refused)} refused;"
        f" certificates beside each request in KIT/officials/",
    )  # fmt: skip
    if result.refused:
        raise Refused(f"{len(result.refused)} request(s) refused: {result.refused[0]}")
    return 0


def cmd_agency_join(args: argparse.Namespace) -> int:
    config = onboarding.join(args.kit, args.dir, read_passphrase(confirm=True), now())
    fingerprint = _kit_ca(args.dir)
    emit(
        args,
        {"keys": str(args.dir / "keys"), "request": str(args.kit), "config": str(config),
         "ca_fingerprint": fingerprint},
        f"CA fingerprint {fingerprint} (the kit's ca.crt): it must equal the one the"
        " cipher department published; if not, stop and call them",
        f"keys made in {args.dir / 'keys'} (they never leave it); request put into {args.kit}",
        f"agent settings: {config}",
    )  # fmt: skip
    say(
        args,
        f"return the kit to the cipher department; then: cipherpost agency finish {args.kit}"
        f" --dir {args.dir}",
    )
    return 0


def _kit_ca(agency_dir: Path) -> str:
    """The fingerprint of the CA this agency now trusts, to compare with the published one."""
    return ca.fingerprint(ca.load_ca_certificate(agency_dir / "ca.crt"))


def cmd_agency_finish(args: argparse.Namespace) -> int:
    directory = onboarding.finish(args.kit, args.dir, now())
    fingerprint = _kit_ca(args.dir)
    emit(
        args,
        {"ready": True, "directory_version": directory.version, "ca_fingerprint": fingerprint,
         "config": str(args.dir / "agent.toml")},
        f"CA fingerprint {fingerprint} (the kit's ca.crt): it must equal the one the"
        " cipher department published; if not, stop and call them",
        f"ready: directory version {directory.version} checked, broker login works",
    )  # fmt: skip
    say(args, f"receive with: cipherpost receive --follow --config {args.dir / 'agent.toml'}")
    return 0


def cmd_keys_enroll(args: argparse.Namespace) -> int:
    code = AgencyCode.from_user(args.code)
    agency.enroll(args.dir, code, args.name, read_passphrase(confirm=True), now())
    emit(
        args,
        {"code": code.text, "keys": str(args.dir), "request": str(args.dir / agency.REQUEST_FILE)},
        f"keys for {code} created in {args.dir}",
    )
    say(args, f"send {args.dir / agency.REQUEST_FILE} to the cipher department")
    return 0


def register(sub: Subcommands) -> None:
    """``cipherpost agency ...`` and ``cipherpost keys enroll``."""
    ag_sub = group(sub, "agency", "onboarding: import agencies in bulk, join, finish")
    sp = add(
        ag_sub,
        "import",
        cmd_agency_import,
        "cipher department: read AGENCIES.csv (code,name,clearance[,parent]); one kit each;"
        " or --officials OFFICIALS.csv (code,name,title[,position]): certify every official's"
        " request in KIT/officials/ that matches a row",
    )
    sp.add_argument("csv", type=Path, nargs="?", metavar="AGENCIES.csv")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--kits", required=True, type=Path, metavar="KITS_DIR")
    sp.add_argument(
        "--officials", type=Path, metavar="OFFICIALS.csv", help="certify officials instead"
    )
    sp = add(
        ag_sub,
        "join",
        cmd_agency_join,
        "agency: make the keys here and put the request into the kit",
    )
    sp.add_argument("kit", type=Path, metavar="KIT_DIR")
    sp.add_argument("--dir", required=True, type=Path, metavar="AGENCY_DIR")
    sp = add(
        ag_sub,
        "finish",
        cmd_agency_finish,
        "agency: take the directory and broker login from the approved kit and check them",
    )
    sp.add_argument("kit", type=Path, metavar="KIT_DIR")
    sp.add_argument("--dir", required=True, type=Path, metavar="AGENCY_DIR")

    keys_sub = group(sub, "keys", "an agency's own keys")
    sp = add(
        keys_sub,
        "enroll",
        cmd_keys_enroll,
        "make the agency's signing and encryption keys and an enrollment request",
    )
    sp.add_argument("--code", required=True, metavar="CODE", help="e.g. 000.00.12.H41")
    sp.add_argument("--name", required=True, metavar="NAME")
    sp.add_argument("--dir", required=True, type=Path, metavar="AGENCY_DIR")
