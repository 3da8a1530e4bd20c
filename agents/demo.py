"""``cipherpost demo``: the whole exchange over a real RabbitMQ, in a throwaway vhost.

A CA, a province office and three communes (one cleared only for Mật), a
signed policy, provisioning, a gateway; the province sends one Mật document
to the three communes as one envelope, they receive it and their signed
receipts come back; a Tối mật document to the commune cleared only for Mật is
refused (locally by the agent, and by the gateway with its rule id when a
tampered agent skips that check); the audit records are printed; the cipher
department's witness checks the gateway's signed checkpoints, the whole log is
verified and one inclusion proof is checked offline. The vhost and its users
are removed at the end.
"""

from __future__ import annotations

import dataclasses
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
from agents.world import PASSPHRASE, World, build_world
from broker.management import Management, ManagementError
from broker.provision import WITNESS_LOGIN
from keys.codes import AgencyCode
from keys.directory import Directory
from keys.errors import CipherpostError, Refused
from keys.levels import Level, Urgency

PROVINCE = "000.00.00.H41"
COMMUNES = {
    "000.01.12.H41": ("UBND xã An Bình", Level.TOI_MAT),
    "000.02.12.H41": ("UBND xã Phú Mỹ", Level.TOI_MAT),
    "000.03.12.H41": ("UBND xã Tân Hòa", Level.MAT),
}
MAT_ONLY = "000.03.12.H41"


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(admin_url: str, amqp_port: int, keep: Path | None) -> int:
    """Run the story; 0 if every step ended as it should."""
    logs.configure(json_lines=False, level=logging.ERROR)
    try:
        Management.from_url(admin_url).get("/api/overview")
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
    world = build_world(root, agencies, admin_url=admin_url, amqp_port=amqp_port)
    host = urllib.parse.urlsplit(admin_url).hostname
    _say(
        f"1. The cipher department set up vhost {world.vhost!r} on {host}: a CA, a province "
        f"office and {len(COMMUNES)} communes (000.03.12.H41 cleared only for Mật),"
    )
    _say("   a signed policy, one broker user per agency with anchored permissions, a gateway.")
    try:
        return _story(world)
    finally:
        world.cleanup()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
        _say(f"   (vhost {world.vhost!r} and its users removed)")


def _story(world: World) -> int:
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

    world.stop_gateways()
    _say("5. The gateway's audit records (no plaintext, no keys):")
    for rec in gateway.audit_records():
        recipients = rec["recipients"]
        assert isinstance(recipients, list)
        _say(
            f"   #{rec['seq']} {rec['event']:<10} {str(rec['envelope_id'])[:12]}… "
            f"{rec['sender']} -> {','.join(recipients) or '-'} "
            f"level={rec['level'] or '-'} {rec['decision']} rule={rec['rule_id']}"
        )
    failures += _audit(world, eid)
    _say(
        "demo complete: every step ended as expected"
        if not failures
        else f"demo FAILED: {failures} step(s) did not end as expected"
    )
    return 0 if not failures else 1


def _audit(world: World, eid: str) -> int:
    """The cipher department witnesses the checkpoints, verifies the log, checks one proof."""
    from agents.cli import main as cli  # the same commands a person types

    ca_cert = str(world.ca_dir / "ca.crt")
    store = world.root / "witness"
    creds = world.root / "broker-credentials" / f"{world.prefix}{WITNESS_LOGIN}.broker.json"
    _say("6. The cipher department's witness takes the gateway's signed checkpoints off the")
    _say("   broker and checks each extends the last (cipherpost audit witness):")
    # The throwaway world's keys have the throwaway passphrase, whatever the user's shell holds.
    saved = os.environ.get("CIPHERPOST_PASSPHRASE")
    os.environ["CIPHERPOST_PASSPHRASE"] = PASSPHRASE.decode()
    try:
        return _witness_verify_prove(cli, world, eid, ca_cert, store, creds)
    finally:
        if saved is None:
            del os.environ["CIPHERPOST_PASSPHRASE"]
        else:
            os.environ["CIPHERPOST_PASSPHRASE"] = saved


def _witness_verify_prove(
    cli: Callable[[list[str]], int], world: World, eid: str, ca_cert: str, store: Path,
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
    _say(f"7. An inclusion proof of envelope {eid[:12]}…, checked offline with only the")
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


def main(admin_url: str, amqp_port: int, keep: Path | None) -> int:
    try:
        return run_demo(admin_url, amqp_port, keep)
    except CipherpostError as e:
        _say(f"demo stopped: {e}")
        return 1
