"""Commands for officials' signatures and recalls: ``official ...``, ``sign``, ``recall``.

``official enroll`` runs on the official's own machine (the key never leaves
it); ``official issue`` / ``official revoke`` at the cipher department;
``sign`` by the official; ``recall`` by the sending agency's clerk. The answer
to a recall is ``reply-status ID --code 15|16``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.cli.common import Subcommands, add, config_arg, group, now, open_client
from agents.output import emit, say
from envelopes.signatures import sign_document
from keys import ca, officials
from keys.codes import AgencyCode
from keys.errors import CipherpostError
from keys.keystore import read_passphrase, unlock


def cmd_enroll(args: argparse.Namespace) -> int:
    code = AgencyCode.from_user(args.agency)
    request = officials.enroll_official(
        args.dir, code, args.name, args.title, args.position, read_passphrase(confirm=True), now()
    )
    emit(
        args,
        {"agency": code.text, "name": request.name, "title": request.title,
         "position": request.position, "key_id": request.key_id.hex(),
         "request": str(args.dir / officials.REQUEST_FILE)},
        f"key for {request.name}, {request.title} ({code}) created in {args.dir}",
    )  # fmt: skip
    say(
        args,
        f"give {args.dir / officials.REQUEST_FILE} to the agency's clerk (kit: officials/);"
        f" once certified, copy the certificate to {args.dir / officials.CERT_FILE}",
    )
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    try:
        data = args.request.read_bytes()
    except OSError as e:
        raise CipherpostError(f"cannot read {args.request}: {e.strerror}") from e
    request = officials.OfficialRequest.parse(data)
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    path = ca.issue_official(authority, request, args.out, now(), args.valid_days)
    emit(
        args,
        {"certificate": str(path), "key_id": request.key_id.hex(), "agency": request.code.text,
         "name": request.name, "title": request.title, "position": request.position},
        f"certified {request.name}, {request.title} ({request.code}): {path}",
    )  # fmt: skip
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    authority = unlock(lambda passphrase: ca.open_ca(args.ca, passphrase))
    kid = ca.find_official(authority, args.key_id)
    revoked = ca.revoke_official(authority, kid, args.reason, now())
    emit(
        args,
        {"key_id": kid, "revoked": True, "already": not revoked},
        f"revoked official {kid[:16]}; CRL updated" if revoked else f"{kid[:16]} was already",
    )
    if revoked:
        say(
            args,
            "rebuild and distribute the directory (directory build / publish): recipients"
            " refuse this official's signatures from that version on",
        )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    ca_cert = ca.load_ca_certificate(args.ca_cert or args.as_dir / "ca.crt")
    official = unlock(lambda p: officials.load_official(args.as_dir, p, ca_cert))
    try:
        with args.document.open("rb") as f:
            raw = sign_document(official, f, subject=args.subject, notation=args.number)
    except OSError as e:
        raise CipherpostError(f"cannot read {args.document}: {e.strerror}") from e
    out = args.out or args.document.with_name(args.document.name + ".sig")
    if out.exists():
        raise CipherpostError(f"{out} already exists; refusing to overwrite it")
    out.write_bytes(raw)
    emit(
        args,
        {"signature": str(out), "signer": official.name, "title": official.title,
         "agency": official.code.text},
        f"signed by {official.name}, {official.title} ({official.code}) -> {out}",
    )  # fmt: skip
    say(args, f"the clerk sends it with: cipherpost send {args.document.name} --signature {out}")
    return 0


def cmd_recall(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        envelope_id = client.resolve(args.envelope_id)
        asked = client.recall(envelope_id, args.reason)
    emit(
        args,
        {"envelope_id": envelope_id, "recall_requested": asked},
        f"recall (13) of {envelope_id} sent to {len(asked)} recipient(s): {', '.join(asked)}",
    )
    say(args, f"their answers (15 agreed, 16 refused) show in: cipherpost status {envelope_id}")
    return 0


def register(sub: Subcommands) -> None:
    """The official group, ``sign`` and ``recall``."""
    o_sub = group(sub, "official", "officials' personal signing keys (chairman, head, ...)")
    sp = add(
        o_sub,
        "enroll",
        cmd_enroll,
        "on the official's own machine: make a personal signing key and a request",
    )
    sp.add_argument("--agency", required=True, metavar="CODE", help="the official's agency")
    sp.add_argument("--name", required=True, metavar="NAME", help="e.g. Nguyễn Văn A")
    sp.add_argument("--title", required=True, metavar="TITLE", help="e.g. Chủ tịch UBND xã")
    sp.add_argument("--position", default="", metavar="CODE", help="optional position code")
    sp.add_argument("--dir", required=True, type=Path, metavar="OFFICIAL_DIR")
    sp = add(
        o_sub,
        "issue",
        cmd_issue,
        "cipher department: certify an official's request under its agency",
    )
    sp.add_argument("request", type=Path, metavar="OFFICIAL_DIR/official.req")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--out", required=True, type=Path, metavar="CERTS_DIR")
    sp.add_argument("--valid-days", type=int, default=365, metavar="N")
    sp = add(
        o_sub,
        "revoke",
        cmd_revoke,
        "cipher department: revoke an official's certificate (left office, merger); signatures"
        " made before stay verifiable against the directory versions of that time",
    )
    sp.add_argument("key_id", metavar="KEY_ID", help="the official's key id (or its start)")
    sp.add_argument("--ca", required=True, type=Path, metavar="CA_DIR")
    sp.add_argument("--reason", required=True, metavar="TEXT")

    sp = add(
        sub,
        "sign",
        cmd_sign,
        "an official signs a document: a detached signature over its bytes, subject and"
        " number, to send with it (send --signature)",
    )
    sp.add_argument("document", type=Path, metavar="DOCUMENT")
    sp.add_argument("--as", dest="as_dir", required=True, type=Path, metavar="OFFICIAL_DIR")
    sp.add_argument("--subject", required=True, metavar="TEXT", help="as send --subject")
    sp.add_argument(
        "--number", default="", metavar="TEXT", help='edXML "Số, ký hiệu", as send --number'
    )
    sp.add_argument("--ca-cert", type=Path, metavar="CA_CERT", help="default: OFFICIAL_DIR/ca.crt")
    sp.add_argument("--out", type=Path, metavar="FILE.sig", help="default: DOCUMENT.sig")

    sp = add(
        sub,
        "recall",
        cmd_recall,
        "ask every recipient of a document this agency sent to recall it (status 13); each"
        " answers 15 (agreed: moved to its recalled folder) or 16 (refused)",
    )
    sp.add_argument("envelope_id", metavar="ENVELOPE_ID", help="the id or its first digits")
    sp.add_argument(
        "--reason",
        required=True,
        metavar="TEXT",
        help="up to 280 characters; like every notice it is signed, not encrypted: the gateway"
        " reads it, so no secrets",
    )
    config_arg(sp)
