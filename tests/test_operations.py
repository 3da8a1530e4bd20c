"""An operator sets up a gateway with the documented commands only (docs/operations.md).

Real commands as subprocesses, the real RabbitMQ: ``ca init``, ``gateway init``,
``keys enroll``, ``ca issue``, ``ca issue-audit``, ``directory build``, ``policy
sign``, ``broker provision``, ``gateway run``; then a document goes from one
agency to another, ``/metrics`` counts the decision under its rule id,
``/readyz`` says ready, and says not ready once the gateway's broker login is
rotated under it (``broker rotate``: the old password is refused). Provisioning
and rotation print no secret.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pika
import pytest

from broker.connection import BrokerConfig
from broker.management import Management
from broker.provision import GATEWAY_LOGIN, PUBLISHER_LOGIN, WITNESS_LOGIN, delete_vhost
from tests.exchange import ADMIN_URL, OPERATOR_URL, wait_for

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("cipherpost"))
GATEWAY = "000.00.99.G99"
P = "000.00.00.H41"
B = "000.02.12.H41"
POLICY = """
[policy]
name = "operations test"
version = 1

[[rule]]
id = "h41-internal"
action = "allow"
reason = "exchanges inside province H41"
sender = "*.H41"
recipients = "*.H41"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site(tmp_path):
    tag = secrets.token_hex(4)
    env = dict(
        os.environ,
        CIPHERPOST_PASSPHRASE="operator-test-passphrase",
        CIPHERPOST_STATE_DIR=str(tmp_path / "state"),
        CIPHERPOST_ADMIN_PASSWORD="guest",
    )
    env.pop("CIPHERPOST_DEBUG", None)
    site = {"root": tmp_path, "vhost": f"cp-{tag}", "prefix": f"cp{tag}-", "env": env}
    yield site
    mgmt = Management.from_url(ADMIN_URL)
    logins = [site["prefix"] + c for c in (GATEWAY, P, B)]
    logins += [site["prefix"] + x for x in (GATEWAY_LOGIN, WITNESS_LOGIN, PUBLISHER_LOGIN)]
    delete_vhost(mgmt, site["vhost"], logins)


def cp(site, *args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [EXE, *map(str, args)],
        env=site["env"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=site["root"],
    )
    if check:
        assert r.returncode == 0, f"cipherpost {' '.join(map(str, args))}: {r.stderr}"
    return r


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_a_gateway_set_up_with_the_documented_commands_exchanges_and_reports(site):
    root: Path = site["root"]
    ca_dir, gw, certs, creds = root / "ca", root / "gw", root / "certs", root / "credentials"
    # -- the cipher department's CA, the gateway's own set-up, two agencies
    cp(site, "ca", "init", "--dir", ca_dir, "--name", "Ban Cơ yếu (test)")
    out = cp(site, "gateway", "init", "--dir", gw, "--code", GATEWAY, "--id", "gwA", "--json")
    steps = json.loads(out.stdout)["next"]
    assert any("ca issue-audit" in s for s in steps)
    for code, name in ((P, "UBND tỉnh H41"), (B, "UBND xã Phú Mỹ")):
        cp(site, "keys", "enroll", "--code", code, "--name", name, "--dir", root / code / "keys")
        cp(site, "ca", "issue", root / code / "keys" / "enrollment.req", "--ca", ca_dir,
           "--clearance", "toi-mat", "--out", certs)  # fmt: skip
    cp(site, "ca", "issue", gw / "keys" / "enrollment.req", "--ca", ca_dir,
       "--clearance", "tuyet-mat", "--out", certs)  # fmt: skip
    cp(site, "ca", "issue-audit", gw / "audit" / "audit.req", "--ca", ca_dir, "--out", certs)
    shutil.copy(certs / f"{GATEWAY}.audit.crt", gw / "audit" / "audit.crt")
    cp(site, "directory", "build", "--ca", ca_dir, "--certs", certs, "--out", gw / "directory.cpd")
    shutil.copy(ca_dir / "ca.crt", gw / "ca.crt")
    (root / "policy.toml").write_text(POLICY)
    cp(site, "policy", "sign", root / "policy.toml", "--ca", ca_dir, "--out", gw / "policy.cpp")
    # -- the broker: credentials go to files, never to the terminal
    provisioned = cp(
        site, "broker", "provision", "--directory", gw / "directory.cpd", "--ca-cert",
        ca_dir / "ca.crt", "--admin-url", OPERATOR_URL, "--vhost", site["vhost"],
        "--login-prefix", site["prefix"], "--credentials-dir", creds,
    )  # fmt: skip
    passwords = [json.loads(f.read_text())["password"] for f in creds.glob("*.broker.json")]
    assert len(passwords) == 6  # the gateway, the witness, the publisher, three agencies
    for password in passwords:
        assert password not in provisioned.stdout + provisioned.stderr
    for f in creds.iterdir():
        assert f.stat().st_mode & 0o077 == 0
    # -- the generated GATEWAY.toml, with what this site chose
    gateway_login = site["prefix"] + GATEWAY_LOGIN
    shutil.copy(creds / f"{gateway_login}.broker.json", gw / "cp-gateway.broker.json")
    port = free_port()
    config = (gw / "GATEWAY.toml").read_text()
    config = config.replace('login_prefix = ""', f'login_prefix = "{site["prefix"]}"')
    config = config.replace('listen = "127.0.0.1:9464"', f'listen = "127.0.0.1:{port}"')
    config = config.replace("checkpoint_seconds = 10", "checkpoint_seconds = 2")
    (gw / "GATEWAY.toml").write_text(config)
    for code in (P, B):
        shutil.copy(creds / f"{site['prefix']}{code}.broker.json", root / code / "broker.json")
        (root / code / "AGENT.toml").write_text(
            'agency_dir = "keys"\ndirectory = "../gw/directory.cpd"\nca_cert = "../ca/ca.crt"\n'
            'inbox = "inbox"\nstate_db = "agent.db"\n\n[broker]\ncredentials = "broker.json"\n'
        )
    log = (root / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [EXE, "gateway", "run", "--config", gw / "GATEWAY.toml"], env=site["env"], stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: http(base + "/readyz")[0] == 200, 60), (
            root / "gateway.log"
        ).read_text()[-2000:]
        assert http(base + "/healthz") == (200, "ok\n")
        doc = root / "report.txt"
        doc.write_text("Báo cáo tuần: mọi việc ổn\n")
        sent = cp(
            site, "send", doc, "--to", B, "--level", "mat", "--config", root / P / "AGENT.toml"
        )
        eid = re.search(r"[0-9a-f]{32}", sent.stdout + sent.stderr).group(0)
        assert wait_for(
            lambda: (
                eid[:12]
                in cp(site, "receive", "--once", "--config", root / B / "AGENT.toml").stdout
            ),
            60,
        )
        inbox = [p for p in (root / B / "inbox").iterdir() if p.name.startswith(eid[:12])]
        assert any(p.read_text() == doc.read_text() for p in inbox)
        metrics = http(base + "/metrics")[1]
        assert (
            'cipherpost_gateway_decisions_total{decision="accepted",rule="h41-internal"} 1.0'
            in metrics
        )
        assert "cipherpost_gateway_expiry_timestamp_seconds" in metrics
        assert re.search(r"cipherpost_gateway_leaves_appended_total [1-9]", metrics)
        # -- rotate the gateway's login under it: its connection is closed, the old password
        #    no longer opens one, and the gateway says it is not ready
        old = BrokerConfig.load(gw / "cp-gateway.broker.json")
        rotated = cp(site, "broker", "rotate", gateway_login, "--admin-url", OPERATOR_URL,
                     "--vhost", site["vhost"], "--credentials-dir", creds)  # fmt: skip
        new_password = json.loads((creds / f"{gateway_login}.broker.json").read_text())["password"]
        assert new_password != old.password and new_password not in rotated.stdout
        assert wait_for(lambda: http(base + "/readyz")[0] == 503, 60)
        assert "not connected to the broker" in http(base + "/readyz")[1]
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(old.parameters())
        shutil.copy(creds / f"{gateway_login}.broker.json", gw / "cp-gateway.broker.json")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        log.close()
    lines = (root / "gateway.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    started = next(e for e in events if e["event"] == "gateway_started")
    assert started["policy_version"] == 1 and started["directory_version"] >= 1
    assert all(e.get("gateway_id") == "gwA" for e in events)
    assert any(e["event"] == "gateway_decision" and e["label"] == "mat" for e in events)
    assert not [line for line in lines if line and not line.startswith("{")], "non-JSON lines"
