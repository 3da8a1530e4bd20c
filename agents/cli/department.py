"""The cipher department's commands: ``ca ...``, ``directory ...``, ``policy sign``.

The CA (the root, the TLS CA, agencies' and gateways' certificates, retiring and
revoking), the signed directory (build, publish on cp.directory) and the signed policy.
The broker's provisioning is in ``provisioning``, onboarding in ``onboarding``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agents import onboarding
from agents.cli.common import (
    LEVELS,
    Subcommands,
    add,
    group,
    now,
    parse_duration,
    read_file,
)
from agents.output import emit, say
from keys import agency, ca
from keys.auditkey import AuditKeyRequest
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.errors import CipherpostError, Refused
from keys.keystore import read_passphrase, unlock
from keys.levels import Level


def cmd_ca_init(args: argparse.Namespace) -> int:
    cert = ca.init_ca(args.dir, read_passphrase(confirm=True), now(), args.name)
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
    request = agency.EnrollmentRequest.parse(read_file(args.request, "enrollment request"))
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    paths = ca.issue(
        authority,
        request,
        Level.parse(args.clearance),
        args.out,
        now(),
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


def cmd_ca_issue_audit(args: argparse.Namespace) -> int:
    request = AuditKeyRequest.parse(read_file(args.request, "audit key request"))
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    path = ca.issue_audit(authority, request, args.out, now(), args.valid_days, args.role)
    emit(
        args,
        {"code": request.code.text, "role": args.role, "certificate": str(path)},
        f"{args.role} key of {request.code} certified: {path}",
    )
    return 0


def cmd_ca_tls_init(args: argparse.Namespace) -> int:
    from keys import tls

    # The root's passphrase seals the TLS CA key too: one secret for the department's CAs.
    passphrase = unlock(lambda p: (ca.open_ca(args.ca, p), p)[1])
    cert = tls.init_ca(args.ca, args.name, now(), passphrase)
    path = args.ca / tls.TLS_CA_CERT_FILE
    emit(
        args,
        {"tls_ca_cert": str(path), "fingerprint": ca.fingerprint(cert)},
        f"TLS CA created in {args.ca}: give {path} to every broker node and every client",
    )
    return 0


def cmd_ca_tls_issue(args: argparse.Namespace) -> int:
    from keys import tls

    request = read_file(args.request, "TLS certificate request")
    passphrase = unlock(lambda p: (ca.open_ca(args.ca, p), p)[1])
    ca_cert, ca_key = tls.open_ca(args.ca, passphrase)
    cert = tls.issue_client(ca_cert, ca_key, request, now(), args.valid_days)
    args.out.write_bytes(tls.cert_pem(cert))
    login = cert.subject.rfc4514_string()
    emit(
        args,
        {"certificate": str(args.out), "subject": login},
        f"TLS client certificate for {login} written to {args.out}",
    )
    return 0


def cmd_ca_approve(args: argparse.Namespace) -> int:
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    result = onboarding.approve(
        authority, args.kits, args.certs, args.directory, now(), valid_days=args.valid_days
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


def cmd_ca_retire(args: argparse.Namespace) -> int:
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    code, successor = AgencyCode.from_user(args.code), AgencyCode.from_user(args.successor)
    effective = now()
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
    revoked = ca.revoke(authority, code, args.reason, now())
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


def cmd_directory_build(args: argparse.Namespace) -> int:
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    data = build_directory(authority, args.certs, now(), args.valid_days)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, args.out)
    directory = Directory.load(data, TrustState(None), now=now())
    revoked = sum(1 for e in directory.entries.values() if e.revoked)
    emit(
        args,
        {"version": directory.version, "agencies": len(directory.entries), "revoked": revoked,
         "expires": directory.expires_at.isoformat(), "out": str(args.out)},
        f"directory version {directory.version}: {len(directory.entries)} agencies"
        f" ({revoked} revoked), expires {directory.expires_at:%Y-%m-%d %H:%M}Z -> {args.out}",
    )  # fmt: skip
    return 0


def cmd_directory_publish(args: argparse.Namespace) -> int:
    from broker.connection import BrokerConfig
    from broker.directory_feed import publish_directory

    data = read_file(args.file, "directory")
    directory = Directory.load(data, TrustState(None), now=now())  # never publish a bad one
    publish_directory(BrokerConfig.load(args.broker), data)
    emit(
        args,
        {"version": directory.version, "agencies": len(directory.entries),
         "expires": directory.expires_at.isoformat(), "published": True},
        f"directory version {directory.version} ({len(directory.entries)} agencies, expires "
        f"{directory.expires_at:%Y-%m-%d %H:%M}Z) published on cp.directory",
    )  # fmt: skip
    return 0


def cmd_policy_sign(args: argparse.Namespace) -> int:
    from gateway.policy import Policy, sign_policy

    try:
        text = args.policy.read_text()
    except OSError as e:
        raise CipherpostError(f"cannot read {args.policy}: {e.strerror}") from e
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    data = sign_policy(text, authority, now(), args.valid_days)
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


def register_ca(sub: Subcommands) -> None:
    """``cipherpost ca ...``."""
    ca_sub = group(sub, "ca", "the cipher department CA")
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
    _register_ca_tls(ca_sub)
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
    _register_ca_retire(ca_sub)


def _register_ca_tls(ca_sub: Subcommands) -> None:
    """``ca tls-init``, ``ca tls-issue``: the TLS CA beside the root."""
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


def _register_ca_retire(ca_sub: Subcommands) -> None:
    """``ca retire``, ``ca revoke``."""
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


def register_directory(sub: Subcommands) -> None:
    """``cipherpost directory build|publish``."""
    dir_sub = group(sub, "directory", "the signed agency directory")
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


def register_policy(sub: Subcommands) -> None:
    """``cipherpost policy sign``."""
    pol_sub = group(sub, "policy", "the classification policy")
    sp = add(pol_sub, "sign", cmd_policy_sign, "check and sign a TOML policy with the CA key")
    sp.add_argument("policy", type=Path, metavar="POLICY.toml")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--out", required=True, type=Path, metavar="POLICY_FILE")
    sp.add_argument("--valid-days", type=int, default=30, metavar="N")
