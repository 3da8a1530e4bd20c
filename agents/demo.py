"""``cipherpost demo``: the whole exchange over a real RabbitMQ, in a throwaway vhost.

A CA, a province office and three communes (one cleared only for Mật), a
signed policy, provisioning, a gateway; the province sends one Mật document
to the three communes as one envelope, they receive it and their signed
receipts come back; a Tối mật document to the commune cleared only for Mật is
refused (locally by the agent, and by the gateway with its rule id when a
tampered agent skips that check); the province chairman signs a Tối mật
decision with his personal key and the clerk sends it: the commune shows it
"signed by … [verified]"; the province recalls the first document, one
commune agrees (15: moved to its recalled folder), one refuses (16), and the
province sees both answers; the audit records are printed; the cipher
department's witness checks the gateway's signed checkpoints, the whole log is
verified and one inclusion proof is checked offline. The vhost and its users
are removed at the end.
"""
# Oversized: _story() is the demo's story, one step after another, read top to bottom

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import envelopes
from agents import logs
from agents.world import PASSPHRASE, BrokerSite, World, build_world
from broker.management import Management, ManagementError
from broker.provision import WITNESS_LOGIN
from keys.codes import AgencyCode
from keys.directory import Directory
from keys.errors import CipherpostError, Refused
from keys.keystore import PASSPHRASE_ENV
from keys.levels import Level, Urgency

PROVINCE = "000.00.00.H41"
COMMUNES = {
    "000.01.12.H41": ("UBND xã An Bình", Level.TOI_MAT),
    "000.02.12.H41": ("UBND xã Phú Mỹ", Level.TOI_MAT),
    "000.03.12.H41": ("UBND xã Tân Hòa", Level.MAT),
}
MAT_ONLY = "000.03.12.H41"
CHAIRMAN, CHAIRMAN_TITLE = "Nguyễn Văn An", "Chủ tịch UBND tỉnh H41"


Commands = Callable[[list[str]], int]  # a command line, as a person types it -> exit code


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(
    admin_url: str,
    amqp_port: int,
    keep: Path | None,
    cluster_dir: Path | None = None,
    *,
    commands: Commands,
) -> int:
    """Run the story; 0 if every step ended as it should. With ``cluster_dir`` (a cluster
    started by ``python -m compose.cluster start``), on that cluster over TLS with
    certificate login. ``commands`` runs a command line as a person types it (the CLI's
    own entry point, handed in: the demo does not import the command line)."""
    logs.configure(json_lines=False, level=logging.ERROR)
    site = None
    if cluster_dir is not None:
        try:
            site = BrokerSite.load(cluster_dir)
        except CipherpostError as e:
            _say(f"cipherpost demo: {e}")
            return 1
        admin_url = site.admin.base_url
    try:
        (site.admin if site is not None else Management.from_url(admin_url)).get("/api/overview")
    except ManagementError as e:
        _say(f"cipherpost demo needs RabbitMQ with the management plugin: {e}")
        _say(
            "start it with: rabbitmq-server -detached"
            " && rabbitmq-plugins enable rabbitmq_management"
        )
        return 1
    root = keep or Path(tempfile.mkdtemp(prefix="cipherpost-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    agencies = {PROVINCE: ("UBND tỉnh H41", Level.TOI_MAT), **COMMUNES}
    world = build_world(root, agencies, admin_url=admin_url, amqp_port=amqp_port, site=site)
    host = urllib.parse.urlsplit(admin_url).hostname
    _say(
        f"1. The cipher department set up vhost {world.vhost!r} on {host}: a CA, a province "
        f"office and {len(COMMUNES)} communes (000.03.12.H41 cleared only for Mật),"
    )
    _say("   a signed policy, one broker user per agency with anchored permissions, a gateway.")
    try:
        return _story(world, commands)
    finally:
        world.cleanup()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
        _say(f"   (vhost {world.vhost!r} and its users removed)")


def _story(world: World, commands: Commands) -> int:
    failures = 0
    gateway = world.start_gateway()
    doc = world.root / "ke-hoach-sap-nhap.txt"
    doc.write_bytes("Kế hoạch sáp nhập xã — tài liệu Mật (demo)\n".encode() * 5000)
    communes = [AgencyCode.parse(c) for c in COMMUNES]
    with world.client(PROVINCE) as province:
        eid = province.send(
            doc,
            to=communes,
            level=Level.MAT,
            urgency=Urgency.KHAN,
            subject="Kế hoạch sáp nhập",
            progress=False,
        )
    _say(
        f"2. The province sent one Mật envelope {eid[:12]}… to {len(communes)} communes "
        "(one ciphertext, three wrapped keys)."
    )
    for code in COMMUNES:
        with world.client(code) as commune:
            got = commune.receive(idle=1.5)
        ok = len(got) == 1 and got[0].path.read_bytes() == doc.read_bytes()
        failures += 0 if ok else 1
        name = got[0].path.name if got else "-"
        _say(
            f"   {code} verified, decrypted into its inbox ({name}) and sent a signed receipt"
            f"{'' if ok else '  !! NOT RECEIVED'}"
        )
    with world.client(PROVINCE) as province:
        province.receive(idle=1.5)
        status = province.status(eid)
    arrived = [
        c
        for c, hist in status["recipients"].items()
        if any(h["status"] == "01" and h["verified"] for h in hist)
    ]
    failures += 0 if len(arrived) == len(COMMUNES) else 1
    _say(
        f"3. Receipts back at the province: {len(arrived)}/{len(COMMUNES)} signed 'arrived' (01), "
        "each verified against the directory."
    )

    secret = world.root / "bien-ban-toi-mat.txt"
    secret.write_bytes("Biên bản Tối mật (demo)\n".encode() * 100)
    with world.client(PROVINCE) as province:
        try:
            province.send(
                secret, to=[AgencyCode.parse(MAT_ONLY)], level=Level.TOI_MAT, progress=False
            )
            failures += 1
            _say("   !! the agent sent a Tối mật document to a commune cleared only for Mật")
        except Refused as e:
            _say(f"4. Tối mật to {MAT_ONLY}: the province's agent refuses locally: {e}.")
        # A tampered agent believes the commune is cleared for Tối mật and submits anyway.
        forged = _forged_directory(province.directory, MAT_ONLY)
        buf = io.BytesIO()
        data = secret.read_bytes()
        sealed = envelopes.seal(
            io.BytesIO(data),
            buf,
            keys=province.keys,
            directory=forged,
            to=[AgencyCode.parse(MAT_ONLY)],
            level=Level.TOI_MAT,
            size=len(data),
        )
        buf.seek(0)
        province.submit_sealed(buf)
        _say("   A tampered agent that skips that check submits it anyway …")
        province.receive(idle=1.5)
        rejection = province.status(sealed.envelope_id)["gateway"]
    if rejection and rejection[0]["verified"]:
        r = rejection[0]
        _say(
            f"   … the gateway refuses it: rule {r['rule_id']!r} ({r['reason']}); "
            "its signed rejection notice reached the province."
        )
    else:
        failures += 1
        _say("   !! no rejection notice from the gateway")
    with world.client(MAT_ONLY) as commune:
        leaked = commune.receive(idle=1.0)
    failures += 1 if leaked else 0
    failures += _signed_and_recalled(world, eid)

    world.stop_gateways()
    _say("7. The gateway's audit records (no plaintext, no keys):")
    for rec in gateway.audit_records():
        recipients = rec["recipients"]
        assert isinstance(recipients, list)
        _say(
            f"   #{rec['seq']} {rec['event']:<10} {str(rec['envelope_id'])[:12]}… "
            f"{rec['sender']} -> {','.join(recipients) or '-'} "
            f"level={rec['level'] or '-'} {rec['decision']} rule={rec['rule_id']}"
        )
    failures += _audit(world, eid, commands)
    _say(
        "demo complete: every step ended as expected"
        if not failures
        else f"demo FAILED: {failures} step(s) did not end as expected"
    )
    return 0 if not failures else 1


def _signed_and_recalled(world: World, eid: str) -> int:
    """The chairman signs, the clerk sends; then the province recalls ``eid``."""
    from envelopes.signatures import sign_document
    from keys import ca
    from keys.officials import OfficialRequest, enroll_official, load_official

    failures = 0
    now = dt.datetime.now(dt.UTC)
    folder = world.root / "chu-tich"  # the chairman's own machine
    enroll_official(
        folder, AgencyCode.parse(PROVINCE), CHAIRMAN, CHAIRMAN_TITLE, "CT", PASSPHRASE, now
    )
    request = OfficialRequest.parse((folder / "official.req").read_bytes())
    cert = ca.issue_official(ca.open_ca(world.ca_dir, PASSPHRASE), request, folder, now)
    cert.replace(folder / "official.crt")
    chairman = load_official(folder, PASSPHRASE, ca.load_ca_certificate(world.ca_dir / "ca.crt"))
    decision = world.root / "quyet-dinh-12.txt"
    decision.write_bytes("Quyết định số 12/QĐ-UBND về việc sáp nhập thôn (demo)\n".encode() * 200)
    subject, number = "Quyết định sáp nhập thôn", "12/QĐ-UBND"
    with decision.open("rb") as f:
        signature = sign_document(chairman, f, subject=subject, notation=number)
    first = next(iter(COMMUNES))
    _say(
        f"5. {CHAIRMAN}, {CHAIRMAN_TITLE}, signs a Tối mật decision with his personal key"
        " (certified by the CA under the province); the clerk seals and sends it:"
    )
    with world.client(PROVINCE) as province:
        signed_eid = province.send(
            decision, to=[AgencyCode.parse(first)], level=Level.TOI_MAT, subject=subject,
            fields={"notation": number}, signatures=[signature], progress=False,
        )  # fmt: skip
    with world.client(first) as commune:
        got = commune.receive(idle=1.5)
    shown = [s["display"] for d in got for s in d.metadata.get("signatures", [])]
    ok = [d.envelope_id for d in got] == [signed_eid] and len(shown) == 1
    failures += 0 if ok else 1
    _say(f"   {first}: {shown[0] if shown else '!! NO VERIFIED SIGNATURE'}")

    _say(f"6. The province recalls envelope {eid[:12]}… (edXML 13, to every recipient):")
    with world.client(PROVINCE) as province:
        province.recall(eid, "số liệu sai, sẽ gửi bản thay thế")
    answers = {}
    for code, answer in zip(COMMUNES, ("15", "16", "15"), strict=True):
        with world.client(code) as commune:
            commune.receive(idle=1.5)
            if "recall_requested" not in commune.state.marks(eid):
                failures += 1
                _say(f"   !! {code} saw no recall")
                continue
            commune.reply_status(eid, answer, "đã thu hồi" if answer == "15" else "đã xử lý")
            where = commune.state.received(eid)["path"]  # type: ignore[index]
            answers[code] = answer
            _say(f"   {code} answers {answer}" + (f": moved to {where}" if answer == "15" else ""))
    with world.client(PROVINCE) as province:
        province.receive(idle=1.5)
        row = next(r for r in province.outbox() if r["envelope_id"] == eid)
    for code, state in row["by_recipient"].items():
        _say(f"   the province's outbox: {code}  {state}")
        failures += 0 if state.startswith(answers.get(code, "?")) else 1
    return failures


def _audit(world: World, eid: str, commands: Commands) -> int:
    """The cipher department witnesses the checkpoints, verifies the log, checks one proof."""
    # The witness's key is the throwaway world's: its commands read the passphrase from the
    # environment, as a person's would. Set to the throwaway one only while they run,
    # whatever the user's shell holds (no terminal prompt in an unattended demo).
    saved = os.environ.get(PASSPHRASE_ENV)
    os.environ[PASSPHRASE_ENV] = PASSPHRASE.decode()
    try:
        return _audit_commands(world, eid, commands)
    finally:
        if saved is None:
            os.environ.pop(PASSPHRASE_ENV, None)
        else:
            os.environ[PASSPHRASE_ENV] = saved


def _audit_commands(world: World, eid: str, cli: Commands) -> int:
    ca_cert = str(world.ca_dir / "ca.crt")
    store = world.root / "witness"
    creds = world.root / "broker-credentials" / f"{world.prefix}{WITNESS_LOGIN}.broker.json"
    _say("8. The cipher department's witness takes the gateway's signed checkpoints off the")
    _say("   broker and checks each extends the last (cipherpost audit witness):")
    return _witness_verify_prove(cli, world, eid, ca_cert, store, creds)


def _witness_verify_prove(
    cli: Callable[[list[str]], int],
    world: World,
    eid: str,
    ca_cert: str,
    store: Path,
    creds: Path,
) -> int:
    failures = cli(
        [
            "audit",
            "witness",
            "--store",
            str(store),
            "--ca",
            ca_cert,
            "--broker",
            str(creds),
            "--key",
            str(world.witness_key),
            "--idle",
            "1.5",
            "--verbose",
        ]
    )
    _say("   It recomputes the whole log against them (cipherpost audit verify):")
    failures += cli(
        ["audit", "verify", "--db", str(world.root / "audit.db"), "--checkpoints", str(store)]
    )
    checkpoints = sorted(store.rglob("*.checkpoint.json"))
    if not checkpoints:
        _say("   !! the witness kept no checkpoint: no inclusion proof to check")
        return 1
    latest = checkpoints[-1]
    proof = world.root / "proof.json"
    _say(f"9. An inclusion proof of envelope {eid[:12]}…, checked offline with only the")
    _say("   checkpoint file and the CA certificate (cipherpost audit prove / check-proof):")
    failures += cli(
        [
            "audit",
            "prove",
            eid,
            "--db",
            str(world.root / "audit.db"),
            "--checkpoint",
            str(latest),
            "--ca",
            ca_cert,
            "--out",
            str(proof),
        ]
    )
    failures += cli(
        ["audit", "check-proof", str(proof), "--checkpoint", str(latest), "--ca", ca_cert]
    )
    return 1 if failures else 0


def _forged_directory(directory: Directory, code: str) -> Directory:
    """An in-memory copy where ``code`` looks cleared for Tối mật (what a tampered agent sees)."""
    entries = dict(directory.entries)
    entries[code] = dataclasses.replace(entries[code], clearance=Level.TOI_MAT)
    return dataclasses.replace(directory, entries=entries)


def main(
    admin_url: str,
    amqp_port: int,
    keep: Path | None,
    cluster_dir: Path | None = None,
    *,
    commands: Commands,
) -> int:
    try:
        return run_demo(admin_url, amqp_port, keep, cluster_dir, commands=commands)
    except CipherpostError as e:
        _say(f"demo stopped: {e}")
        return 1
