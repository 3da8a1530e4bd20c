"""docs/onboarding.md, command for command: 75 communes imported, joined, approved,
provisioned, finished and exchanging with the province on the real RabbitMQ."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agents.client import Client
from agents.config import AgentConfig
from agents.world import PASSPHRASE
from keys import ca
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import OPERATOR_URL, PROVINCE, make_world, wait_for
from tests.helpers import cli
from tests.sync import receive_until

pytestmark = pytest.mark.broker

COMMUNES = [f"000.{i:02d}.31.H41" for i in range(1, 76)]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CIPHERPOST_PASSPHRASE", PASSPHRASE.decode())
    monkeypatch.setenv("CIPHERPOST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CIPHERPOST_ADMIN_PASSWORD", "guest")
    world = make_world(tmp_path / "w", {PROVINCE: ("UBND tỉnh H41", Level.TOI_MAT)})
    yield world
    world.cleanup()


def test_75_communes_onboard_and_exchange_with_the_province(env, tmp_path, capsys):
    world = env
    world.agencies.update({c: Level.MAT for c in COMMUNES})  # so cleanup removes their users
    gateway = world.start_gateway()
    csv = tmp_path / "communes.csv"
    csv.write_text(
        "code,name,clearance,parent\n"
        + "".join(f"{c},UBND xã số {i},mat,{PROVINCE}\n" for i, c in enumerate(COMMUNES, 1)),
        encoding="utf-8",
    )
    kits = tmp_path / "kits"
    ca_dir = world.ca_dir

    # 1. cipher department
    assert cli("agency", "import", csv, "--ca", ca_dir, "--kits", kits) == 0
    # 2. each agency, on its own machine
    for code in COMMUNES:
        assert cli("agency", "join", kits / code, "--dir", tmp_path / "agencies" / code) == 0
    # 3. cipher department
    directory = world.directory_path
    assert (
        cli(
            "ca",
            "approve",
            kits,
            "--ca",
            ca_dir,
            "--certs",
            world.root / "certs",
            "--directory",
            directory,
        )
        == 0
    )
    assert "75 approved" in capsys.readouterr().out
    # 4. cipher department
    assert (
        cli(
            "broker",
            "provision",
            "--directory",
            directory,
            "--ca-cert",
            ca_dir / "ca.crt",
            "--admin-url",
            OPERATOR_URL,
            "--credentials-dir",
            tmp_path / "credentials",
            "--vhost",
            world.vhost,
            "--login-prefix",
            world.prefix,
            "--kits",
            kits,
            "--publish",
        )
        == 0
    )
    captured = capsys.readouterr()
    out = captured.out
    assert out.count("written to its kit") == 75 and "published" in out, captured.err
    # 5. each agency
    for code in COMMUNES:
        assert cli("agency", "finish", kits / code, "--dir", tmp_path / "agencies" / code) == 0
    # finish shows the CA fingerprint again, as `openssl x509 -outform DER | sha256sum` does
    der = ca.load_ca_certificate(ca_dir / "ca.crt").public_bytes(Encoding.DER)
    finished = capsys.readouterr().out
    assert finished.count(f"CA fingerprint SHA256:{hashlib.sha256(der).hexdigest()}") == 75

    # The running gateway learnt the new version from the broker, without a restart.
    assert wait_for(lambda: len(gateway.directory.entries) == 77, 60)
    doc = tmp_path / "thong-bao.txt"
    doc.write_text("Thông báo sáp nhập (Mật)\n" * 100, encoding="utf-8")
    with world.client(PROVINCE) as province:
        eid = province.send(
            doc, to=[AgencyCode.parse(c) for c in COMMUNES], level=Level.MAT, progress=False
        )

    def commune(code: str) -> tuple[bool, str]:
        config = AgentConfig.load(tmp_path / "agencies" / code / "agent.toml")
        with Client(config, PASSPHRASE) as client:
            got = receive_until(client, [eid])
            reply = tmp_path / f"reply-{code}.txt"
            reply.write_text(f"{code} đã nhận\n", encoding="utf-8")
            reply_id = client.send(
                reply, to=[AgencyCode.parse(PROVINCE)], level=Level.MAT, progress=False
            )
        ok = any(d.envelope_id == eid and d.path.read_bytes() == doc.read_bytes() for d in got)
        return ok, reply_id

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(COMMUNES, pool.map(commune, COMMUNES), strict=True))
    assert all(ok for ok, _ in results.values()), [c for c, (ok, _) in results.items() if not ok]

    def every_receipt() -> bool:
        receipts = province.status(eid)["recipients"]
        return all(any(h["status"] == "01" for h in receipts[c]) for c in COMMUNES)

    with world.client(PROVINCE) as province:
        replies = receive_until(
            province, [r for _, r in results.values()], until=every_receipt, what="75 receipts"
        )
        receipts = province.status(eid)["recipients"]
    assert {d.metadata["sender"]["code"] for d in replies} == set(COMMUNES)
    assert all(any(h["status"] == "01" and h["verified"] for h in receipts[c]) for c in COMMUNES)
    # How long this takes is measured by bench/onboarding.py, not asserted here.


def test_import_refuses_a_bad_file_and_writes_nothing(env, tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "code,name,clearance\n000.01.31.H41,Xã A,mat\n000.01.31.H41,Xã B,mat\n"
        "000.02.31.H41,Xã C,secret\nbad-code,Xã D,mat\n000.03.31.H41,Xã E,mat,000.99.99.H99\n",
        encoding="utf-8",
    )
    assert cli("agency", "import", csv, "--ca", env.ca_dir, "--kits", tmp_path / "kits") == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "line 4" in err and "line 5" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "kits").exists()


def test_approve_refuses_a_request_for_a_code_not_imported(env, tmp_path, capsys):
    kits = tmp_path / "kits"
    csv = tmp_path / "one.csv"
    csv.write_text("000.01.31.H41,Xã A,mat\n", encoding="utf-8")
    assert cli("agency", "import", csv, "--ca", env.ca_dir, "--kits", kits) == 0
    assert cli("agency", "join", kits / "000.01.31.H41", "--dir", tmp_path / "a") == 0
    # Someone slips in a kit of their own making.
    rogue = kits / "000.66.31.H41"
    rogue.mkdir()
    info = {"code": "000.66.31.H41", "name": "Rogue", "clearance": "tuyet-mat", "parent": None}
    (rogue / "agency.json").write_text(json.dumps(info))
    (rogue / "ca.crt").write_bytes((kits / "000.01.31.H41" / "ca.crt").read_bytes())
    assert cli("agency", "join", rogue, "--dir", tmp_path / "rogue") == 0
    capsys.readouterr()
    code = cli(
        "ca",
        "approve",
        kits,
        "--ca",
        env.ca_dir,
        "--certs",
        env.root / "certs",
        "--directory",
        tmp_path / "d.cpd",
    )
    out = capsys.readouterr()
    assert code == 3
    assert "approved 000.01.31.H41" in out.out and "REFUSED 000.66.31.H41" in out.out
    assert "not imported" in out.err
