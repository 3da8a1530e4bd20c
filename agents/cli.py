"""The ``cipherpost`` command line: one entry point, one error handler.

Exit codes (also in ``--help`` and the README):

  0  ok
  1  any other error (unreadable file, wrong passphrase, broker down, ...)
  2  usage: a malformed argument, code, level or duration
  3  refused: the envelope, party, request or directory failed a check
     (bad signature, not a recipient, expired, revoked or unknown party,
     level above a clearance, directory rollback)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import envelopes
from agents import audit_cli, gateway_cli, officials_cli, onboarding, progress
from agents import officials as officials_import
from agents.client import Client, ReceivedDocument, ReceiverRunning
from agents.interrupts import SIGNALS as STOP_SIGNALS
from agents.interrupts import Interrupted, Stops
from agents.output import emit, error_line, say
from agents.progress import ProgressReader
from keys import agency, ca
from keys.auditkey import AuditKeyRequest
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.errors import EXIT_ERROR, EXIT_USAGE, CipherpostError, Refused, UsageError
from keys.keystore import read_passphrase, unlock
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
_NOTES: list[str] = []

# SIGINT, SIGTERM, SIGHUP: while an envelope is sealed or opened, acted on at a safe point.
STOPS = Stops()

LEVELS = ", ".join(level.value for level in Level) + " (or as written: Mật, Tối mật, ...)"
URGENCIES = ", ".join(u.value for u in Urgency) + " (or as written: Khẩn, Hỏa tốc, ...)"
TO_HELP = "the recipients' agency codes, comma-separated (any case: 000.01.12.h41)"


class _Parser(argparse.ArgumentParser):
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


def _now() -> dt.datetime:
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


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {what} {path}: {e.strerror}") from e


def _load_directory(args: argparse.Namespace, trust: TrustState) -> Directory:
    pinned = ca.load_ca_certificate(args.ca_cert) if args.ca_cert else None
    directory = Directory.load(
        _read_file(args.directory, "directory"), trust, now=_now(), ca_certificate=pinned
    )
    if trust.pinned_now and pinned is None:
        _NOTES.append(
            f"note: now trusting CA SHA256:{trust.pinned_now} on first use;"
            " compare it with the cipher department's published fingerprint"
        )
    return directory


CONFIG_ENV = "CIPHERPOST_CONFIG"


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


# --- ca -------------------------------------------------------------------------------------


def cmd_ca_init(args: argparse.Namespace) -> int:
    cert = ca.init_ca(args.dir, read_passphrase(confirm=True), _now(), args.name)
    fingerprint = ca.fingerprint(cert)
    emit(
        args,
        {"ca_dir": str(args.dir), "fingerprint": fingerprint},
        f"CA created in {args.dir}",
        f"CA fingerprint {fingerprint}",
    )
    say(args, "publish it by a channel other than the kits: every agency compares it at join")
    return 0


def cmd_ca_issue(args: argparse.Namespace) -> int:
    request = agency.EnrollmentRequest.parse(_read_file(args.request, "enrollment request"))
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    paths = ca.issue(
        authority,
        request,
        Level.parse(args.clearance),
        args.out,
        _now(),
        args.valid_days,
        replace=args.replace,
    )
    clearance = Level.parse(args.clearance).value
    emit(
        args,
        {"code": request.code.text, "name": request.name, "clearance": clearance,
         "certificates": [str(p) for p in paths]},
        f"issued {request.code} ({request.name}) cleared for {clearance}:",
        *(f"  {p}" for p in paths),
    )  # fmt: skip
    return 0


def cmd_directory_publish(args: argparse.Namespace) -> int:
    from broker.connection import BrokerConfig
    from broker.directory_feed import publish_directory

    data = _read_file(args.file, "directory")
    directory = Directory.load(data, TrustState(None), now=_now())  # never publish a bad one
    publish_directory(BrokerConfig.load(args.broker), data)
    emit(
        args,
        {"version": directory.version, "agencies": len(directory.entries),
         "expires": directory.expires_at.isoformat(), "published": True},
        f"directory version {directory.version} ({len(directory.entries)} agencies, expires "
        f"{directory.expires_at:%Y-%m-%d %H:%M}Z) published on cp.directory",
    )  # fmt: skip
    return 0


def cmd_ca_tls_init(args: argparse.Namespace) -> int:
    from keys import tls

    # The root's passphrase seals the TLS CA key too: one secret for the department's CAs.
    passphrase = unlock(lambda p: (ca.open_ca(args.ca, p), p)[1])
    cert = tls.init_ca(args.ca, args.name, _now(), passphrase)
    path = args.ca / tls.TLS_CA_CERT_FILE
    emit(
        args,
        {"tls_ca_cert": str(path), "fingerprint": ca.fingerprint(cert)},
        f"TLS CA created in {args.ca}: give {path} to every broker node and every client",
    )
    return 0


def cmd_ca_tls_issue(args: argparse.Namespace) -> int:
    from keys import tls

    request = _read_file(args.request, "TLS certificate request")
    passphrase = unlock(lambda p: (ca.open_ca(args.ca, p), p)[1])
    ca_cert, ca_key = tls.open_ca(args.ca, passphrase)
    cert = tls.issue_client(ca_cert, ca_key, request, _now(), args.valid_days)
    args.out.write_bytes(tls.cert_pem(cert))
    login = cert.subject.rfc4514_string()
    emit(
        args,
        {"certificate": str(args.out), "subject": login},
        f"TLS client certificate for {login} written to {args.out}",
    )
    return 0


def cmd_broker_tls_request(args: argparse.Namespace) -> int:
    from keys import tls
    from keys.keystore import write_private_file

    key_path = args.dir / f"{args.login}.tls.key"
    if key_path.exists():
        raise UsageError(f"{key_path} exists: a new key replaces it only after you move it away")
    args.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = tls.new_key()
    write_private_file(key_path, tls.key_pem(key))
    request = args.dir / f"{args.login}.tls.csr"
    request.write_bytes(tls.make_request(args.login, key))
    emit(
        args,
        {"key": str(key_path), "request": str(request)},
        f"TLS key {key_path} (mode 0600, it never leaves this machine) and request {request}:",
        "send the request to the cipher department (cipherpost ca tls-issue); put the"
        f" certificate beside the key as {args.login}.tls.crt",
    )
    return 0


def cmd_ca_issue_audit(args: argparse.Namespace) -> int:
    request = AuditKeyRequest.parse(_read_file(args.request, "audit key request"))
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    path = ca.issue_audit(authority, request, args.out, _now(), args.valid_days, args.role)
    emit(
        args,
        {"code": request.code.text, "role": args.role, "certificate": str(path)},
        f"{args.role} key of {request.code} certified: {path}",
    )
    return 0


def cmd_ca_approve(args: argparse.Namespace) -> int:
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    result = onboarding.approve(
        authority, args.kits, args.certs, args.directory, _now(), valid_days=args.valid_days
    )
    emit(
        args,
        {"approved": [str(c) for c in result.approved], "already": [str(c) for c in result.already],
         "waiting": [str(c) for c in result.waiting], "refused": list(result.refused),
         "directory": str(args.directory) if result.approved else None},
        *(f"approved {code}" for code in result.approved),
        *(f"REFUSED {reason}" for reason in result.refused),
        f"{len(result.approved)} approved, {len(result.already)} already approved, "
        f"{len(result.waiting)} waiting for their agency (no request yet), "
        f"{len(result.refused)} refused",
    )  # fmt: skip
    if result.approved:
        say(args, f"new directory {args.directory}, copied into every kit; next: broker provision")
    if result.refused:
        raise Refused(f"{len(result.refused)} request(s) refused: {result.refused[0]}")
    return 0


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
    result = officials_import.import_officials(rows, authority, args.kits, _now())
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
    config = onboarding.join(args.kit, args.dir, read_passphrase(confirm=True), _now())
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
    directory = onboarding.finish(args.kit, args.dir, _now())
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


def cmd_ca_retire(args: argparse.Namespace) -> int:
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    code, successor = AgencyCode.from_user(args.code), AgencyCode.from_user(args.successor)
    effective = _now()
    if args.after:
        effective += parse_duration(args.after)
    ca.retire(authority, code, successor, effective)
    when = (
        "now"
        if not args.after
        else f"from {effective:%Y-%m-%d %H:%M}Z (both codes work until then)"
    )
    emit(
        args,
        {"code": code.text, "successor": successor.text, "from": effective.isoformat()},
        f"{code} retired {when}; its successor is {successor}",
    )
    say(args, "rebuild and distribute the directory: directory build, broker provision --publish")
    return 0


def cmd_ca_revoke(args: argparse.Namespace) -> int:
    code = AgencyCode.from_user(args.code)
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    revoked = ca.revoke(authority, code, args.reason, _now())
    emit(
        args,
        {"code": code.text, "revoked": True, "already": not revoked,
         "crl": str(args.ca / ca.CRL_FILE)},
        f"revoked {code}; CRL updated: {args.ca / ca.CRL_FILE}" if revoked
        else f"{code} was already revoked",
    )  # fmt: skip
    if revoked:
        say(args, "rebuild and distribute the directory: cipherpost directory build ...")
    return 0


# --- keys, directory ------------------------------------------------------------------------


def cmd_keys_enroll(args: argparse.Namespace) -> int:
    code = AgencyCode.from_user(args.code)
    agency.enroll(args.dir, code, args.name, read_passphrase(confirm=True), _now())
    emit(
        args,
        {"code": code.text, "keys": str(args.dir), "request": str(args.dir / agency.REQUEST_FILE)},
        f"keys for {code} created in {args.dir}",
    )
    say(args, f"send {args.dir / agency.REQUEST_FILE} to the cipher department")
    return 0


def cmd_directory_build(args: argparse.Namespace) -> int:
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    data = build_directory(authority, args.certs, _now(), args.valid_days)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, args.out)
    directory = Directory.load(data, TrustState(None), now=_now())
    revoked = sum(1 for e in directory.entries.values() if e.revoked)
    emit(
        args,
        {"version": directory.version, "agencies": len(directory.entries), "revoked": revoked,
         "expires": directory.expires_at.isoformat(), "out": str(args.out)},
        f"directory version {directory.version}: {len(directory.entries)} agencies"
        f" ({revoked} revoked), expires {directory.expires_at:%Y-%m-%d %H:%M}Z -> {args.out}",
    )  # fmt: skip
    return 0


# --- envelopes ------------------------------------------------------------------------------


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
    directory = _load_directory(args, _agency_trust(args.as_dir))
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
    directory = _load_directory(args, TrustState.default())
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
    directory = _load_directory(args, _agency_trust(args.as_dir))
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


# --- exchange: agent, gateway, broker, policy, demo -------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    from agents import logs
    from agents.config import AgentConfig

    # A command that ends on its own reports failure in its one error line; a
    # long-running one (receive --follow) shows reconnects as they happen.
    follow = getattr(args, "follow", False)
    logs.configure(json_lines=False, level=logging.WARNING if follow else logging.CRITICAL)
    config = AgentConfig.load(config_path(args))
    return unlock(lambda passphrase: Client(config, passphrase))


def cmd_send(args: argparse.Namespace) -> int:
    level = Level.parse(args.level)
    urgency = Urgency.parse(args.urgency)
    to = parse_codes(args.to)
    for path in args.files:
        if not path.is_file():
            raise CipherpostError(f"cannot read {path}: not a file")
    if (args.signature or args.replaces) and len(args.files) != 1:
        raise UsageError("--signature and --replaces belong to one document: send one FILE")
    signatures = [_read_file(p, "signature") for p in args.signature]
    fields = {"notation": args.number} if args.number else {}
    with _client(args) as client:
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


def _noted_stops() -> tuple[threading.Event, list[int]]:
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


class _StoppedTakingIn(CipherpostError):
    """A stop signal while ``status`` or ``outbox`` took in the inbox: exit 128 + n."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} while taking in the inbox: what was received is kept,"
            " the rest stays queued"
        )
        self.exit_code = 128 + signum


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

    with _client(args) as client:  # a stop at the passphrase prompt still stops at once
        stop, stopped_by = _noted_stops()
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
    with _client(args) as client:
        envelope_id = client.resolve(args.envelope_id)
        client.reply_status(envelope_id, args.code, args.note)
    if args.json:
        print(json.dumps({"envelope_id": envelope_id, "status": args.code, "sent": True}))
    say(args, f"status {args.code} sent for {envelope_id}")
    return 0


def _take_in_notices(client: Client, idle: float) -> str:
    """Collect the notices waiting in the inbox ('' or why it did not need to)."""
    if idle <= 0:
        return "not checked for new notices (--idle 0)"
    from broker.connection import BrokerError

    stop, stopped_by = _noted_stops()
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
    with _client(args) as client:
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
    with _client(args) as client:
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


def cmd_broker_provision(args: argparse.Namespace) -> int:
    from broker.management import Management
    from broker.provision import provision

    trust = TrustState.default()
    directory = _load_directory(args, trust)
    mgmt = Management.for_operator(args.admin_url, args.admin_password_file)
    endpoints = _endpoints(args)
    if args.tls_ca is not None:
        mgmt = mgmt.with_ca(args.tls_ca)
    if args.publish and endpoints.certificate_login:
        raise UsageError(
            "--publish logs in as the admin with a password, which a certificate-login broker"
            " does not take: publish with `cipherpost directory publish --broker"
            " CREDS/cp-cipher.broker.json`"
        )
    result = provision(
        mgmt,
        args.vhost,
        directory,
        login_prefix=args.login_prefix,
        credentials_dir=args.credentials_dir,
        endpoints=endpoints,
    )
    lines = list(result.changes) or ["nothing to change: the broker matches the directory"]
    in_kits = []
    if args.kits is not None:
        # Each new agency's login goes into its onboarding kit (0600), with the directory.
        for login, config in list(result.new_credentials.items()):
            kit = args.kits / login.removeprefix(args.login_prefix)
            if (kit / onboarding.KIT_FILE).exists():
                config.save(kit / onboarding.KIT_BROKER)
                del result.new_credentials[login]
                in_kits.append(login)
                lines.append(f"credentials of {login} written to its kit {kit}")
    if args.publish:
        from broker.connection import BrokerConfig
        from broker.directory_feed import publish_directory

        admin = BrokerConfig(
            mgmt.username, mgmt.password, args.amqp_host, args.amqp_port, args.vhost
        )
        publish_directory(admin, directory.raw)
        lines.append(
            f"directory version {directory.version} published to running gateways and agents"
        )
    if result.new_credentials:
        # Written to files only (0600), never to the terminal: a screen is not a safe.
        lines.append(
            f"{len(result.new_credentials)} credentials file(s) written to {args.credentials_dir}"
            " (mode 0600): deliver each to its agency"
        )
    emit(
        args,
        {"changes": list(result.changes), "credentials_in_kits": in_kits,
         "credentials_files": sorted(result.new_credentials),
         "credentials_dir": str(args.credentials_dir),
         "published_version": directory.version if args.publish else None},
        *lines,
    )  # fmt: skip
    return 0


def _endpoints(args: argparse.Namespace) -> Any:
    """Where provisioned clients connect: ``--node`` (repeatable) or --amqp-host/--amqp-port,
    TLS with ``--tls-ca``, certificate-only users with ``--certificate-login``."""
    from broker.provision import Endpoints

    nodes = []
    for item in args.node or []:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UsageError(f"--node {item!r}: give HOST:PORT, e.g. rabbit-1:5671")
        nodes.append((host, int(port)))
    if args.certificate_login and args.tls_ca is None:
        raise UsageError("--certificate-login needs --tls-ca (the CA of the nodes' certificates)")
    return Endpoints(
        tuple(nodes) or ((args.amqp_host, args.amqp_port),),
        args.tls_ca.resolve() if args.tls_ca is not None else None,
        args.certificate_login,
    )


def cmd_broker_rotate(args: argparse.Namespace) -> int:
    from broker.management import Management
    from broker.provision import rotate

    mgmt = Management.for_operator(args.admin_url, args.admin_password_file)
    config = rotate(
        mgmt,
        args.login,
        vhost=args.vhost,
        credentials_dir=args.credentials_dir,
        amqp_host=args.amqp_host,
        amqp_port=args.amqp_port,
    )
    path = args.credentials_dir / (config.login + ".broker.json")
    emit(
        args,
        {"login": config.login, "credentials_file": str(path), "connections_closed": True},
        f"new password for {config.login} written to {path} (mode 0600); its open"
        " connections were closed: deliver the file and restart what used the old one",
    )
    return 0


def cmd_policy_sign(args: argparse.Namespace) -> int:
    from gateway.policy import Policy, sign_policy

    try:
        text = args.policy.read_text()
    except OSError as e:
        raise CipherpostError(f"cannot read {args.policy}: {e.strerror}") from e
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    data = sign_policy(text, authority, _now(), args.valid_days)
    args.out.write_bytes(data)
    policy = Policy.parse(text)
    emit(
        args,
        {"name": policy.name, "version": policy.version, "rules": len(policy.rules),
         "valid_days": args.valid_days, "out": str(args.out)},
        f"policy {policy.name!r} version {policy.version}: {len(policy.rules)} rule(s),"
        f" signed for {args.valid_days} days -> {args.out}",
    )  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agents.demo import main as demo_main

    return demo_main(args.admin_url, args.amqp_port, args.dir, args.cluster_dir, commands=main)


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


def cmd_tour(args: argparse.Namespace) -> int:
    from agents.tour import run_tour

    return run_tour(main, args.dir)


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="cipherpost",
        description="Secure document exchange between agencies: signed, encrypted envelopes.",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    p.add_argument("--version", action="version", version=f"cipherpost {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(
        parent: argparse._SubParsersAction,  # type: ignore[type-arg]
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_: str,
        *,
        json_help: str | None = "print the result as one JSON object (errors too, on stderr)",
    ) -> _Parser:
        """A command; every one takes --quiet, and --json unless ``json_help`` is None."""
        sp = parent.add_parser(
            name, help=help_, description=help_, epilog=EXIT_CODES, formatter_class=formatter
        )
        sp.set_defaults(handler=handler)
        sp.add_argument(
            "-q", "--quiet", action="store_true", help="no remarks or progress on stderr"
        )
        if json_help is not None:
            sp.add_argument("--json", action="store_true", help=json_help)
        return sp  # type: ignore[no-any-return]

    def group(name: str, help_: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
        """A command with subcommands (``cipherpost ca ...``); each needs one of them."""
        parent = add(sub, name, lambda a: 0, help_, json_help=None)
        return parent.add_subparsers(
            dest=f"{name}_command", required=True, metavar="COMMAND", parser_class=_Parser
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

    ca_sub = group("ca", "the cipher department CA")
    sp = add(ca_sub, "init", cmd_ca_init, "create the CA: Ed25519 root key and certificate")
    sp.add_argument("--dir", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--name", default="Cipher Department CA", help="CA common name")
    sp = add(
        ca_sub,
        "issue",
        cmd_ca_issue,
        "check an enrollment request and issue the agency's two certificates",
    )
    sp.add_argument("request", type=Path, metavar="REQUEST")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--clearance", required=True, metavar="LEVEL", help=f"one of {LEVELS}")
    sp.add_argument("--valid-days", type=int, default=365, metavar="N")
    sp.add_argument("--out", required=True, type=Path, metavar="CERTS_DIR")
    sp.add_argument(
        "--replace",
        action="store_true",
        help="re-issue for an agency that already holds certificates",
    )
    sp = add(
        ca_sub,
        "issue-audit",
        cmd_ca_issue_audit,
        "certify a gateway's audit key (it signs checkpoints) or the witness's key (it cosigns)",
    )
    sp.add_argument("request", type=Path, metavar="AUDIT_REQUEST")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--out", required=True, type=Path, metavar="CERTS_DIR")
    sp.add_argument("--valid-days", type=int, default=365, metavar="N")
    sp.add_argument(
        "--role",
        choices=("audit", "witness"),
        default="audit",
        help="audit: a gateway's checkpoint key (default); witness: the witness's cosigning key",
    )
    sp = add(
        ca_sub,
        "tls-init",
        cmd_ca_tls_init,
        "create the TLS CA (P-256) beside the root: it issues broker node and client"
        " certificates (docs/cluster.md)",
    )
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--name", default="Cipher Department TLS CA", help="TLS CA common name")
    sp = add(
        ca_sub,
        "tls-issue",
        cmd_ca_tls_issue,
        "issue a TLS client certificate for a request from `broker tls-request` (its common"
        " name is the broker login)",
    )
    sp.add_argument("request", type=Path, metavar="REQUEST.csr")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--out", required=True, type=Path, metavar="CERT_FILE")
    sp.add_argument("--valid-days", type=int, default=365, metavar="N")
    sp = add(
        ca_sub,
        "approve",
        cmd_ca_approve,
        "certify every onboarding kit's request that matches an imported agency;"
        " sign a new directory and put it in every kit",
    )
    sp.add_argument("kits", type=Path, metavar="KITS_DIR")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--certs", required=True, type=Path, metavar="CERTS_DIR")
    sp.add_argument("--directory", required=True, type=Path, metavar="DIRECTORY_FILE")
    sp.add_argument("--valid-days", type=int, default=365, metavar="N")
    sp = add(
        ca_sub,
        "retire",
        cmd_ca_retire,
        "mark a code retired (merged commune): envelopes to it are refused naming the successor",
    )
    sp.add_argument("code", metavar="CODE")
    sp.add_argument("--successor", required=True, metavar="CODE")
    sp.add_argument(
        "--after",
        metavar="DURATION",
        help="a transition: the old code keeps working this long (e.g. 30d), then retires",
    )
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp = add(ca_sub, "revoke", cmd_ca_revoke, "revoke every certificate of an agency (CRL)")
    sp.add_argument("code", metavar="CODE")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--reason", required=True, metavar="TEXT")

    ag_sub = group("agency", "onboarding: import agencies in bulk, join, finish")
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

    keys_sub = group("keys", "an agency's own keys")
    sp = add(
        keys_sub,
        "enroll",
        cmd_keys_enroll,
        "make the agency's signing and encryption keys and an enrollment request",
    )
    sp.add_argument("--code", required=True, metavar="CODE", help="e.g. 000.00.12.H41")
    sp.add_argument("--name", required=True, metavar="NAME")
    sp.add_argument("--dir", required=True, type=Path, metavar="AGENCY_DIR")

    dir_sub = group("directory", "the signed agency directory")
    sp = add(
        dir_sub,
        "build",
        cmd_directory_build,
        "sign a new directory version of every issued certificate and the CRL",
    )
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--certs", required=True, type=Path, metavar="CERTS_DIR")
    sp.add_argument("--out", required=True, type=Path, metavar="DIRECTORY_FILE")
    sp.add_argument(
        "--valid-days",
        type=int,
        default=7,
        metavar="N",
        help="days until holders refuse this version (default 7)",
    )

    sp = add(
        dir_sub,
        "publish",
        cmd_directory_publish,
        "send a directory version to every running gateway and agent (cp.directory)",
    )
    sp.add_argument("file", type=Path, metavar="DIRECTORY_FILE")
    sp.add_argument(
        "--broker",
        required=True,
        type=Path,
        metavar="CREDENTIALS.json",
        help="the cipher department's broker login (cp-cipher, from broker provision)",
    )

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

    gateway_cli.register(group, add)
    officials_cli.register(group, add, sub, config_arg, _client)

    def admin_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--admin-url",
            required=True,
            metavar="URL",
            help="management API and user, e.g. https://admin@broker:15671; the password from"
            " CIPHERPOST_ADMIN_PASSWORD or --admin-password-file, never the command line",
        )
        sp.add_argument("--admin-password-file", type=Path, metavar="FILE", help="mode 0600")
        sp.add_argument("--vhost", default="cipherpost", metavar="VHOST")
        sp.add_argument("--amqp-host", default="127.0.0.1", metavar="HOST")
        sp.add_argument("--amqp-port", type=int, default=5672, metavar="PORT")
        sp.add_argument(
            "--node",
            action="append",
            metavar="HOST:PORT",
            help="a node of a cluster (repeat for each; replaces --amqp-host/--amqp-port):"
            " clients try them in shuffled order (docs/cluster.md)",
        )
        sp.add_argument(
            "--tls-ca",
            type=Path,
            metavar="FILE",
            help="TLS: the CA certificate the nodes' certificates chain to; clients pin it and"
            " the management API (https) is checked against it",
        )
        sp.add_argument(
            "--certificate-login",
            action="store_true",
            help="users without any password: each logs in with its TLS client certificate"
            " (<login>.tls.crt/.key beside its credentials file, issued by the TLS CA)",
        )
        sp.add_argument(
            "--credentials-dir",
            type=Path,
            default=Path("broker-credentials"),
            metavar="DIR",
            help="where credentials files are written (0600; default ./broker-credentials);"
            " a password is never printed",
        )

    br_sub = group("broker", "RabbitMQ provisioning and credentials")
    sp = add(
        br_sub,
        "tls-request",
        cmd_broker_tls_request,
        "make this holder's TLS key (never an agency signing or encryption key) and a"
        " certificate request whose common name is its broker login",
    )
    sp.add_argument("login", metavar="LOGIN", help="the broker login (its credentials file's)")
    sp.add_argument(
        "--dir", type=Path, default=Path("."), metavar="DIR",
        help="where LOGIN.tls.key (0600) and LOGIN.tls.csr go: beside the credentials file",
    )  # fmt: skip
    sp = add(
        br_sub,
        "provision",
        cmd_broker_provision,
        "create or update every agency's broker user, permissions, inbox and binding;"
        " remove revoked agencies' access (idempotent)",
    )
    directory_args(sp)
    admin_args(sp)
    sp.add_argument("--login-prefix", default="", metavar="PREFIX")
    sp.add_argument(
        "--kits",
        type=Path,
        metavar="KITS_DIR",
        help="onboarding kits: each new agency's credentials go into its own kit",
    )
    sp.add_argument(
        "--publish",
        action="store_true",
        help="also publish this directory version on cp.directory (running holders pick it up)",
    )
    sp = add(
        br_sub,
        "rotate",
        cmd_broker_rotate,
        "issue a new password for one broker login, write its credentials file, close its"
        " connections",
    )
    sp.add_argument("login", metavar="LOGIN")
    admin_args(sp)

    pol_sub = group("policy", "the classification policy")
    sp = add(pol_sub, "sign", cmd_policy_sign, "check and sign a TOML policy with the CA key")
    sp.add_argument("policy", type=Path, metavar="POLICY.toml")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--out", required=True, type=Path, metavar="POLICY_FILE")
    sp.add_argument("--valid-days", type=int, default=30, metavar="N")

    sp = add(
        sub,
        "demo",
        cmd_demo,
        "the exchange end to end over RabbitMQ, in a throwaway vhost (removed at the end)",
        json_help=None,
    )
    sp.add_argument("--admin-url", default="http://guest:guest@127.0.0.1:15672", metavar="URL")
    sp.add_argument("--amqp-port", type=int, default=5672, metavar="PORT")
    sp.add_argument("--dir", type=Path, metavar="DIR", help="keep the demo's files here")
    sp.add_argument(
        "--cluster-dir",
        type=Path,
        metavar="DIR",
        help="run on a cluster started by `python -m compose.cluster start --dir DIR` (a source"
        " checkout): every node, TLS only, certificate login; --admin-url is then ignored",
    )

    audit_cli.register(group, add)

    sp = add(
        sub,
        "doctor",
        cmd_doctor,
        "check this agent end to end: keys, certificates, directory, broker, queues, gateway;"
        " one line per check with the fix (exit 1 if any failed)",
    )
    config_arg(sp)

    sp = add(
        sub,
        "completion",
        cmd_completion,
        'print a shell completion script: eval "$(cipherpost completion bash)" in ~/.bashrc,'
        " or cipherpost completion zsh > ~/.zfunc/_cipherpost",
        json_help=None,
    )
    sp.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")

    sp = add(
        sub,
        "tour",
        cmd_tour,
        "offline tour: make a CA, enroll agencies, seal, verify, open, refuse forgeries",
        json_help=None,
    )
    sp.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="keep the tour's files here (default: a temporary folder, removed)",
    )
    return p


def _version() -> str:
    try:
        return importlib.metadata.version("cipherpost")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return (and, as a script, exit with) a documented code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    _NOTES.clear()
    if args.quiet or getattr(args, "json", False):
        progress.DEFAULT_ENABLED = False  # stderr stays for the one error line
    STOPS.install()

    def fail(message: str, exit_code: int, kind: str) -> int:
        notes = f" [{'; '.join(_NOTES)}]" if _NOTES else ""
        sys.stderr.write(error_line(args, message + notes, exit_code, kind) + "\n")
        return exit_code

    try:
        code: int = args.handler(args)
        for note in _NOTES:
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


if __name__ == "__main__":
    entry()
