"""The exchange commands as a clerk and an operator type them (real RabbitMQ)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents.world import PASSPHRASE
from broker.topology import submit_queue
from gateway.policy import sign_policy
from keys import ca
from keys.codes import AgencyCode
from keys.levels import Level
from tests.exchange import (
    MAT_ONLY,
    OPERATOR_URL,
    OTHER_PROVINCE,
    PROVINCE,
    A,
    B,
    make_world,
    wait_for,
)
from tests.helpers import commune_code
from tests.sync import DEADLINE_S, receive_until

pytestmark = pytest.mark.broker

EXE = str(Path(sys.executable).with_name("cipherpost"))


def run(*args, env=None, code=0, timeout=120):
    env = env or dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    r = subprocess.run(
        [EXE, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def until_printed(text: str, *args) -> str:
    """Run ``cipherpost ARGS`` (a short receive round) until ``text`` was printed."""
    out = ""
    deadline = time.monotonic() + DEADLINE_S
    while text not in out:
        assert time.monotonic() < deadline, f"{text} never printed by {args}: {out}"
        out += run(*args).stdout
    return out


def consumers(world, queue: str) -> int:
    """How many consumers ``queue`` has, as the management API reports it (a few s late)."""
    found = world.mgmt.get(f"/api/queues/{world.mgmt.q(world.vhost)}/{world.mgmt.q(queue)}")
    return int((found or {}).get("consumers") or 0)


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("cli-exchange"))
    env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    log = (w.root / "gateway.log").open("ab")
    gw = subprocess.Popen(
        [EXE, "gateway", "run", "--config", str(w.gateway_config())],
        env=env,
        stdout=log,
        stderr=log,
    )
    # Started when it consumes the submit lanes, not after some seconds.
    lane = submit_queue(AgencyCode.parse(PROVINCE))
    started = wait_for(lambda: gw.poll() is not None or consumers(w, lane) > 0, 90)
    assert started and gw.poll() is None, (w.root / "gateway.log").read_text()[-2000:]
    yield w
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(timeout=60) == 0
    w.cleanup()


def test_send_receive_reply_status_via_cli(world, tmp_path):
    doc = tmp_path / "qd-123.pdf"
    doc.write_bytes(b"%PDF quyet dinh\n" * 300)
    r = run(
        "send",
        doc,
        "--to",
        A,
        "--level",
        "mat",
        "--urgency",
        "khan",
        "--subject",
        "Quyết định 123",
        "--config",
        world.agent_config(PROVINCE),
    )
    eid = r.stdout.strip()
    assert len(eid) == 32
    out = until_printed(
        eid, "receive", "--once", "--idle", "0.3", "--config", world.agent_config(A)
    )
    assert "Quyết định 123" in out
    inbox = world.agent_config(A).parent / "inbox"
    files = sorted(p.name for p in inbox.iterdir())
    assert f"{eid[:12]}-qd-123.pdf" in files and f"{eid[:12]}-qd-123.pdf.json" in files
    meta = json.loads((inbox / f"{eid[:12]}-qd-123.pdf.json").read_text())
    assert (meta["sender"]["code"], meta["level_display"], meta["urgency"]) == (
        PROVINCE,
        "Mật",
        "khan",
    )
    run(
        "reply-status",
        eid,
        "--code",
        "04",
        "--note",
        "giao phòng Nội vụ",
        "--config",
        world.agent_config(A),
    )
    deadline = time.monotonic() + DEADLINE_S
    while True:  # until the receipt and the status came back through the gateway
        r = run("status", eid, "--json", "--idle", "0.3", "--config", world.agent_config(PROVINCE))
        report = json.loads(r.stdout)
        if len(report["recipients"][A]) >= 2 or time.monotonic() > deadline:
            break
    assert [h["status"] for h in report["recipients"][A]] == ["01", "04"]
    assert all(h["verified"] for h in report["recipients"][A])
    human = run("status", eid, "--config", world.agent_config(PROVINCE)).stdout
    assert "01 arrived" in human and "04 assigned" in human and "[verified]" in human


def test_receive_reports_receipts_and_statuses_and_outbox_lists_each_recipients_state(
    world, tmp_path
):
    """The sender sees, one line each, the receipt and the status it takes in, and the outbox
    shows each recipient's latest state: a status for one, accepted by the gateway for the
    other (which has not received yet)."""
    doc = tmp_path / "cv.txt"
    doc.write_text("công văn\n")
    province = world.agent_config(PROVINCE)
    eid = run("send", doc, "--to", f"{A},{MAT_ONLY}", "--level", "mat", "--subject",
              "Công văn 7", "--config", province).stdout.strip()  # fmt: skip
    until_printed(eid, "receive", "--once", "--idle", "0.3", "--config", world.agent_config(A))
    run("reply-status", eid[:12], "--code", "05", "--note", "đang xử lý",
        "--config", world.agent_config(A))  # fmt: skip
    out = until_printed(f"{eid}  05 processing from {A}  đang xử lý", "receive", "--once",
                        "--idle", "0.3", "--config", province)  # fmt: skip
    assert f"{eid}  01 arrived from {A}" in out
    deadline, rows = time.monotonic() + DEADLINE_S, []
    while not rows or rows[0]["by_recipient"][MAT_ONLY] == "queued":
        assert time.monotonic() < deadline, rows
        listed = run("outbox", "--json", "--idle", "0.3", "--config", province).stdout
        rows = [r for r in json.loads(listed)["outbox"] if r["envelope_id"] == eid]
    assert rows[0]["by_recipient"] == {
        A: "05 processing",
        MAT_ONLY: "accepted by the gateway",
    }
    human = run("outbox", "--idle", "0", "--config", province).stdout
    block = human[human.index(eid) :].split("\n")
    assert "Công văn 7" in block[0]
    assert f"{A}  05 processing" in block[1] and f"{MAT_ONLY}  accepted by" in block[2]


def test_cli_bad_input_one_line(world, tmp_path):
    doc = tmp_path / "x.txt"
    doc.write_bytes(b"x")
    cfg = world.agent_config(PROVINCE)
    assert "invalid agency code" in one_line(
        run("send", doc, "--to", "H41", "--level", "mat", "--config", cfg, code=2)
    )
    assert "above the clearance" in one_line(
        run("send", doc, "--to", "000.03.12.H41", "--level", "toi-mat", "--config", cfg, code=3)
    )
    assert "not in the directory" in one_line(
        run("send", doc, "--to", "000.66.66.H41", "--level", "mat", "--config", cfg, code=3)
    )
    assert "not a file" in one_line(
        run("send", tmp_path / "missing", "--to", A, "--level", "mat", "--config", cfg, code=1)
    )
    assert "--code must be one of" in one_line(
        run("reply-status", "00" * 16, "--code", "01", "--config", cfg, code=2)
    )
    assert "knows nothing" in one_line(run("status", "00" * 16, "--config", cfg, code=1))
    assert "cannot read agent config" in one_line(
        run("receive", "--config", tmp_path / "none.toml", code=1)
    )


def test_broker_down_is_one_clear_line(world, tmp_path):
    cfg = broken_config(world, tmp_path, A)
    password = json.loads((tmp_path / "bad.broker.json").read_text())["password"]
    doc = tmp_path / "x.txt"
    doc.write_bytes(b"x")
    r = run("send", doc, "--to", PROVINCE, "--level", "mat", "--config", cfg, code=1)
    assert "broker not reachable" in one_line(r)
    assert password not in r.stderr
    # what was recorded is named, and how much of it went (nothing): the outbox lists it
    eid = re.search(r"envelope ([0-9a-f]{32}) \(x\.txt\) stopped after 0 of 1 part", r.stderr)
    assert eid is not None and "send it again" in r.stderr, r.stderr


def test_provision_cli_is_idempotent_and_revokes(world, tmp_path):
    env = dict(
        os.environ,
        CIPHERPOST_PASSPHRASE=PASSPHRASE.decode(),
        CIPHERPOST_STATE_DIR=str(tmp_path / "state"),
        CIPHERPOST_ADMIN_PASSWORD="guest",
    )
    args = [
        "broker",
        "provision",
        "--directory",
        world.directory_path,
        "--ca-cert",
        world.ca_dir / "ca.crt",
        "--admin-url",
        OPERATOR_URL,
        "--credentials-dir",
        tmp_path / "credentials",
        "--vhost",
        world.vhost,
        "--login-prefix",
        world.prefix,
    ]
    r = run(*args, env=env)
    assert "nothing to change" in r.stdout
    # revoke A, rebuild the directory, provision again: A's broker user goes away
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    import datetime as dt

    from keys.codes import AgencyCode
    from keys.directory import build_directory

    ca.revoke(authority, AgencyCode.parse(A), "test", dt.datetime.now(dt.UTC))
    newdir = tmp_path / "d.cpd"
    newdir.write_bytes(build_directory(authority, world.root / "certs", dt.datetime.now(dt.UTC)))
    args[3] = newdir
    r = run(*args, env=env)
    assert f"user {world.login(A)} removed (revoked)" in r.stdout
    assert world.mgmt.get(f"/api/users/{world.mgmt.q(world.login(A))}") is None
    # No broker password is ever printed, and nothing new was created to print.
    passwords = [
        json.loads(p.read_text())["password"]
        for p in (world.root / "broker-credentials").glob("*.broker.json")
    ]
    assert len(passwords) >= 6
    assert not any(pw in r.stdout or pw in r.stderr for pw in passwords)
    assert "credentials" not in r.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unsigned", "policy file is not a signed cipherpost policy"),
        ("tampered", "policy signature is not valid (tampered, or not signed by this CA)"),
        ("expired", "policy expired at "),
    ],
)
def test_gateway_refuses_to_start_on_a_bad_policy(world, tmp_path, case, message):
    """Exit 3 naming the policy's fault. The broker credentials point where nothing
    listens: a gateway that wrongly accepted the policy fails at once on the broker
    (exit 1, another message) instead of running until a timeout."""
    import shutil

    cfg_dir = tmp_path / "gw"
    shutil.copytree(world.root, cfg_dir, ignore=shutil.ignore_patterns("agents", "*.db*", "*.log"))
    for creds in (cfg_dir / "broker-credentials").glob("*.broker.json"):
        creds.write_text(json.dumps(dict(json.loads(creds.read_text()), port=1)))
    policy = cfg_dir / "policy.cpp"
    good = policy.read_bytes()
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    import datetime as dt

    policy.write_bytes(
        {
            "unsigned": lambda: b"[policy]\nname='x'\n",
            "tampered": lambda: good[:-70] + bytes([good[-70] ^ 1]) + good[-69:],
            "expired": lambda: sign_policy(
                "[policy]\nname = 'old'\n",
                authority,
                dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
                30,
            ),
        }[case]()
    )
    r = run("gateway", "run", "--config", cfg_dir / "gw1.toml", code=3, timeout=120)
    assert r.stderr.splitlines()[-1].startswith(f"cipherpost: {message}"), r.stderr


COMMUNES_75 = [commune_code(i) for i in range(75)]


@pytest.mark.slow
def test_seventy_five_recipients_in_one_envelope(tmp_path):
    agencies = {PROVINCE: ("Tỉnh", Level.TOI_MAT)}
    agencies.update({commune_code(i): (f"Xã {i}", Level.TOI_MAT) for i in range(75)})
    w = make_world(tmp_path / "w75", agencies)
    try:
        w.start_gateway()
        doc = tmp_path / "thong-bao.txt"
        doc.write_bytes("Thông báo chung\n".encode() * 1000)
        from keys.codes import AgencyCode

        with w.client(PROVINCE) as p:
            eid = p.send(doc, to=[AgencyCode.parse(c) for c in COMMUNES_75], level=Level.MAT)

        def received(code: str) -> bool:
            with w.client(code) as c:
                docs = receive_until(c, [eid])
            mine = [d for d in docs if d.envelope_id == eid]
            return len(mine) == 1 and mine[0].path.read_bytes() == doc.read_bytes()

        with ThreadPoolExecutor(15) as pool:  # errors (a missing envelope) come back here
            got = dict(zip(COMMUNES_75, pool.map(received, COMMUNES_75), strict=True))
        assert all(got.values()), [c for c, ok in got.items() if not ok]
        with w.client(PROVINCE) as p:
            receive_until(
                p,
                until=lambda: all(p.status(eid)["recipients"].values()),
                what="a receipt from each of the 75",
            )
            report = p.status(eid)
        arrived = [
            c
            for c, h in report["recipients"].items()
            if any(x["status"] == "01" and x["verified"] for x in h)
        ]
        assert len(arrived) == 75
        records = [r for r in w.gateways[0][0].audit_records() if r["envelope_id"] == eid]
        submission = [r for r in records if r["event"] == "submission"]
        assert len(submission) == 1 and len(submission[0]["recipients"]) == 75
    finally:
        w.cleanup()


# --- the sender's view and truthful signals (issue 12) --------------------------------------


def test_a_policy_refusal_is_reported_by_receive_and_listed_by_outbox(world, tmp_path):
    doc = tmp_path / "to-h42.txt"
    doc.write_text("gửi tỉnh bạn\n")
    cfg = world.agent_config(PROVINCE)
    sent = run("send", doc, "--to", OTHER_PROVINCE, "--level", "mat", "--subject", "Sang H42",
               "--json", "--config", cfg)  # fmt: skip
    [item] = json.loads(sent.stdout)["sent"]
    eid = item["envelope_id"]
    assert json.loads(sent.stdout)["gateways_listening"] >= 1
    out = until_printed(f"{eid}  REFUSED by the gateway: rule default-deny", "receive", "--once",
                        "--idle", "0.3", "--config", cfg)  # fmt: skip
    assert "no policy rule allows this exchange" in out
    outbox = run("outbox", "--idle", "0", "--config", cfg).stdout
    block = outbox[outbox.index(eid) :].split("\n")
    assert "Sang H42" in block[0] and f"{OTHER_PROVINCE}  refused (default-deny)" in block[1]
    rows = json.loads(run("outbox", "--json", "--idle", "0", "--config", cfg).stdout)["outbox"]
    assert rows[0]["envelope_id"] == eid  # newest first
    assert rows[0]["by_recipient"] == {OTHER_PROVINCE: "refused (default-deny)"}
    human = run("status", eid[:10], "--idle", "0", "--config", cfg).stdout  # a short prefix
    assert f"envelope {eid}" in human and "subject  Sang H42" in human
    assert "refused: rule default-deny" in human


def test_receive_json_reports_notices_as_events(world, tmp_path):
    doc = tmp_path / "x.txt"
    doc.write_text("x\n")
    cfg = world.agent_config(PROVINCE)
    eid = run("send", doc, "--to", OTHER_PROVINCE, "--level", "mat", "--config", cfg).stdout.strip()
    deadline, events = time.monotonic() + DEADLINE_S, []
    while not any(e.get("envelope_id") == eid for e in events):
        assert time.monotonic() < deadline, events
        out = run("receive", "--once", "--json", "--idle", "0.3", "--config", cfg).stdout
        events += [json.loads(line) for line in out.splitlines()]
    [event] = [e for e in events if e.get("envelope_id") == eid]
    assert (event["event"], event["rule_id"], event["verified"]) == (
        "rejection",
        "default-deny",
        True,
    )


def test_send_says_when_no_gateway_consumes_its_lane(tmp_path):
    quiet = make_world(tmp_path / "w")  # no gateway runs in this world
    try:
        doc = tmp_path / "x.txt"
        doc.write_text("x\n")
        r = run("send", doc, "--to", A, "--level", "mat", "--config", quiet.agent_config(PROVINCE))
        assert len(r.stdout.strip()) == 32
        assert "no gateway is consuming submissions now: queued, not yet checked" in r.stderr
        rows = json.loads(
            run("outbox", "--json", "--idle", "0", "--config", quiet.agent_config(PROVINCE)).stdout
        )["outbox"]
        assert rows[0]["by_recipient"] == {A: "queued"}
        q = run("send", doc, "--to", A, "--level", "mat", "--quiet",
                "--config", quiet.agent_config(PROVINCE))  # fmt: skip
        assert "no gateway is consuming" in q.stderr  # a warning --quiet does not hide
        assert "sent x.txt" not in q.stderr
    finally:
        quiet.cleanup()


def broken_config(world, tmp_path, code: str) -> Path:
    """An agency's settings with the broker pointing where nothing listens."""
    creds = json.loads(
        (world.root / "broker-credentials" / f"{world.login(code)}.broker.json").read_text()
    )
    creds["port"] = 1
    bad = tmp_path / "bad.broker.json"
    bad.write_text(json.dumps(creds))
    bad.chmod(0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        world.agent_config(code)
        .read_text()
        .replace(f"../../broker-credentials/{world.login(code)}.broker.json", str(bad))
        .replace(
            'agency_dir = "keys"', f'agency_dir = "{world.agent_config(code).parent / "keys"}"'
        )
        .replace('"../../', f'"{world.root}/')
        .replace('inbox = "inbox"', f'inbox = "{tmp_path / "inbox"}"')
    )
    return cfg


def test_doctor_with_the_broker_down_says_so_in_one_line_or_one_json_object(world, tmp_path):
    cfg = broken_config(world, tmp_path, B)
    r = run("doctor", "--config", cfg, code=1)
    assert "FAIL broker: broker not reachable" in r.stdout
    assert re.fullmatch(r"cipherpost: \d+ check\(s\) failed; first: broker", one_line(r))
    r = run("doctor", "--json", "--config", cfg, code=1)
    report = json.loads(r.stdout)
    assert report["ok"] is False
    assert [c["status"] for c in report["checks"] if c["name"] == "broker"] == ["FAIL"]
    error = json.loads(one_line(r))
    assert error["exit_code"] == 1 and "first: broker" in error["error"]


def test_receive_and_status_with_the_broker_down_fail_instead_of_saying_nothing(world, tmp_path):
    cfg = broken_config(world, tmp_path, B)
    r = run("receive", "--once", "--idle", "0.5", "--config", cfg, code=1)
    assert "broker not reachable" in one_line(r)
    assert "document(s) received" not in r.stderr
    r = run("receive", "--once", "--idle", "0.5", "--json", "--config", cfg, code=1)
    error = json.loads(one_line(r))
    assert error["exit_code"] == 1 and "broker not reachable" in error["error"]
    assert r.stdout == ""
    doc = tmp_path / "y.txt"
    doc.write_text("y\n")
    sent = run("send", doc, "--to", PROVINCE, "--level", "mat", "--config", world.agent_config(B))
    eid = sent.stdout.strip()
    r = run("status", eid, "--idle", "0.5", "--config", cfg, code=1)
    assert "broker not reachable" in one_line(r) and r.stdout == ""
    assert "--idle 0 shows what this agent knows without asking" in r.stderr
    r = run("outbox", "--idle", "0.5", "--config", cfg, code=1)
    assert "broker not reachable" in one_line(r) and r.stdout == ""
    # asked not to look (--idle 0), status shows what it knows and says so
    r = run("status", eid, "--idle", "0", "--config", cfg)
    assert f"envelope {eid}" in r.stdout and "not checked for new notices" in r.stderr


def test_a_short_id_that_starts_two_envelopes_asks_for_more_digits(world, tmp_path):
    """status takes any unique prefix; one that is not unique is a usage error naming the
    candidates (here on a copy of an agency's state, offline: --idle 0)."""
    import shutil

    from agents.state import AgentState

    cfg = broken_config(world, tmp_path, B)
    keys = tmp_path / "keys"
    shutil.copytree(world.agent_config(B).parent / "keys", keys, ignore=shutil.ignore_patterns(
        "receive.lock", "spool"))  # fmt: skip
    cfg.write_text(cfg.read_text().replace(str(world.agent_config(B).parent / "keys"), str(keys)))
    first, second = "ab" + "0" * 30, "ab" + "1" * 30
    state = AgentState(keys / "agent.db")
    for eid in (first, second):
        state.record_sent(eid, [PROVINCE], "mat", "thuong", "Tờ trình", "t.pdf", 1, parts=1)
    r = run("status", "AB", "--idle", "0", "--config", cfg, code=2)
    assert f"ab is the start of 2 envelopes ({first}, {second}): give more digits" in one_line(r)
    r = run("status", "ab1", "--idle", "0", "--config", cfg)
    assert f"envelope {second}" in r.stdout and "subject  Tờ trình" in r.stdout


def test_ctrl_c_during_a_large_send_tells_the_truth_about_what_left(world, tmp_path):
    """Seen: 'nothing kept' while 70 of 200 parts had gone. Now the id and the parts that went
    are printed, the outbox lists it as interrupted, and status says how far it got."""
    import sqlite3

    doc = tmp_path / "big.bin"
    with doc.open("wb") as f:
        for _ in range(160):
            f.write(os.urandom(1 << 20))
    cfg = world.agent_config(PROVINCE)
    db = cfg.parent / "keys" / "agent.db"
    env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    before = run("outbox", "--json", "--idle", "0", "--config", cfg).stdout
    known = {r["envelope_id"] for r in json.loads(before)["outbox"]}
    proc = subprocess.Popen(
        [EXE, "send", doc, "--to", B, "--level", "mat", "--config", cfg],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def submitting() -> bool:  # recorded before its first part leaves
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            rows = c.execute("SELECT envelope_id FROM sent WHERE state='sending'").fetchall()
        return any(r[0] not in known for r in rows)

    assert wait_for(lambda: proc.poll() is not None or submitting(), 120, every=0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "Traceback" not in err and "nothing kept" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err  # one error line
    m = re.search(r"envelope ([0-9a-f]{32}) \(big\.bin\) stopped after (\d+) of (\d+) part", err)
    assert m, err
    eid, went, parts = m.group(1), int(m.group(2)), int(m.group(3))
    assert went < parts and parts > 100 and "recipients discard its parts when it expires" in err
    rows = json.loads(run("outbox", "--json", "--idle", "0", "--config", cfg).stdout)["outbox"]
    row = next(r for r in rows if r["envelope_id"] == eid)
    assert row["state"] == "interrupted" and row["confirmed"] == went
    assert row["by_recipient"] == {B: f"interrupted ({went} of {parts} parts sent)"}
    human = run("status", eid[:8], "--idle", "0", "--config", cfg).stdout
    assert f"interrupted after {went} of {parts} part(s)" in human


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_receive_keeps_what_came_and_loses_nothing(world, tmp_path, signum):
    """A stop while a document's parts are taken in is only noted (raised inside the HPKE
    unwrap it could read as "does not open" and the document be acknowledged as refused): the
    round ends after the message in hand, says what it kept and exits 128 + n; the document is
    in the inbox or still queued, never lost."""
    doc = tmp_path / "dai.bin"
    doc.write_bytes(os.urandom(24 << 20))  # six parts
    eid = run("send", doc, "--to", B, "--level", "mat",
              "--config", world.agent_config(PROVINCE)).stdout.strip()  # fmt: skip
    cfg = world.agent_config(B)  # A's login is revoked by the provisioning test
    spool, inbox = cfg.parent / "keys" / "spool" / eid, cfg.parent / "inbox"
    env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    proc = subprocess.Popen(
        [EXE, "receive", "--once", "--idle", "60", "--config", cfg],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def taking_in() -> bool:
        return spool.is_dir() or any(p.name.startswith(eid[:12]) for p in inbox.glob("*"))

    assert wait_for(lambda: proc.poll() is not None or taking_in(), DEADLINE_S, every=0.01)
    proc.send_signal(signum)  # --idle 60: the round is still running, whatever it is doing
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (proc.returncode, out, err)
    [line] = err.strip().splitlines()
    name = signal.Signals(signum).name
    assert re.fullmatch(
        rf"cipherpost: interrupted by {name}: \d+ document\(s\) received, \d+ notice\(s\),"
        r" kept; what was not taken stays queued",
        line,
    ), line
    if eid not in out:
        out += until_printed(eid, "receive", "--once", "--idle", "0.3", "--config", cfg)
    [placed] = [p for p in inbox.glob(f"{eid[:12]}-dai*.bin")]
    assert placed.read_bytes() == doc.read_bytes()


def test_a_second_receiver_for_one_agency_is_refused_and_status_still_answers(world, tmp_path):
    cfg = world.agent_config(B)
    env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    follower = subprocess.Popen(
        [EXE, "receive", "--follow", "--config", cfg],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = cfg.parent / "keys" / "receive.lock"
    try:
        assert wait_for(lambda: lock.exists() and lock.read_text().strip() == str(follower.pid))
        r = run("receive", "--once", "--idle", "0.3", "--config", cfg, code=1)
        assert f"another receiver is running for this agency (process {follower.pid})" in one_line(
            r
        )
        r = run("outbox", "--idle", "1", "--config", cfg)  # reads what the follower took in
        assert "taken in by the receiver already running" in r.stderr
    finally:
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert err.startswith(f"receiving for {B} from ")  # says what it waits for, on start
    assert "waiting for documents and notices" in err
    run("receive", "--once", "--idle", "0.3", "--config", cfg)  # the lock went with it


def test_an_interrupted_envelopes_parts_are_dropped_by_the_recipient_once_it_expires(
    world, tmp_path, caplog
):
    """A sender stopped for good after its first part: the recipient keeps that part only
    until the envelope expires, then drops it (logged) and records it as incomplete."""
    import io

    import envelopes
    from agents.client import Client
    from agents.config import AgentConfig
    from broker import wire
    from broker.topology import SUBMIT_EXCHANGE
    from envelopes.parts import iter_parts

    data = os.urandom(3 << 20)
    with Client(AgentConfig.load(world.agent_config(PROVINCE)), PASSPHRASE) as sender:
        sealed = io.BytesIO()
        header = envelopes.seal(
            io.BytesIO(data), sealed, keys=sender.keys, directory=sender.directory,
            to=[AgencyCode.parse(B)], level=Level.MAT, size=len(data),
            lifetime=dt.timedelta(hours=1),
        ).header  # fmt: skip
        sealed.seek(0)
        index, count, body = next(iter(iter_parts(sealed)))
        eid = header.envelope_id.hex()
        props = wire.submitted_part(sender.broker.login, eid, index, count)
        sender.publisher.publish(SUBMIT_EXCHANGE, PROVINCE, body, props).result(60)
    assert count > 1
    cfg = world.agent_config(B)
    spool = cfg.parent / "keys" / "spool" / eid
    deadline = time.monotonic() + DEADLINE_S
    while not spool.is_dir():
        assert time.monotonic() < deadline, "the first part never reached the recipient's spool"
        run("receive", "--once", "--idle", "0.3", "--config", cfg)
    with Client(AgentConfig.load(cfg), PASSPHRASE) as agent:
        assert eid not in agent.expire_spool()  # not expired yet: kept
        assert spool.is_dir()
        caplog.set_level("WARNING", logger="cipherpost.agent")
        gone = agent.expire_spool(now=header.expires + dt.timedelta(seconds=1))
        assert eid in gone and not spool.exists()
        logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
        expected = {"event": "spool_expired", "envelope": eid}.items()
        assert any(expected <= m.items() for m in logged), logged
        assert agent.state.received(eid)["outcome"] == "incomplete"


def test_audit_witness_follow_says_what_it_waits_for_and_stops_on_sigterm(world, tmp_path):
    creds = world.root / "broker-credentials" / f"{world.prefix}cp-witness.broker.json"
    env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    witness = subprocess.Popen(
        [EXE, "audit", "witness", "--store", tmp_path / "w", "--ca", world.ca_dir / "ca.crt",
         "--broker", creds, "--key", world.witness_key, "--follow"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = witness.stderr.readline()
    finally:
        witness.send_signal(signal.SIGTERM)
        out, rest = witness.communicate(timeout=60)
    assert first.startswith("witnessing: waiting for the gateways' checkpoints on "), first + rest
    assert "a log silent 30 s is an alarm" in first
    assert witness.returncode == 0, rest
    assert "checkpoint(s) checked" in rest and "Traceback" not in rest


def test_send_and_receive_show_progress_on_a_terminal_finished_once(world, tmp_path):
    """A large document on a terminal: send draws its sealing and submitting lines, receive
    the parts of the envelope arriving; each line is finished exactly once."""
    from tests.test_cli import on_terminal

    env = dict(os.environ, CIPHERPOST_PASSPHRASE=PASSPHRASE.decode())
    doc = tmp_path / "lon.bin"
    doc.write_bytes(os.urandom(17 << 20))  # above both progress thresholds
    code, screen = on_terminal(
        ["send", doc, "--to", B, "--level", "mat", "--config", world.agent_config(PROVINCE)],
        env, [],
    )  # fmt: skip
    assert code == 0, screen
    assert screen.count("sealing lon.bin: 100.0% of 17.0 MiB") == 1, screen
    assert screen.count("submitting: 100.0% of ") == 1, screen
    eid = re.search(r"^([0-9a-f]{32})\r?$", screen, re.M).group(1)
    seen = ""
    deadline = time.monotonic() + DEADLINE_S
    while eid not in seen:
        assert time.monotonic() < deadline, seen
        code, screen = on_terminal(
            ["receive", "--once", "--idle", "0.5", "--config", world.agent_config(B)], env, []
        )
        assert code == 0, screen
        seen += screen
    assert len(re.findall(rf"receiving {eid[:12]}: 100\.0% of \d+ parts", seen)) == 1, seen


def test_ctrl_c_at_receives_passphrase_prompt_stops_at_once(world, tmp_path):
    """Stops during receive are only noted once the agent is open; at the prompt before it,
    Ctrl-C still ends the command at once (130), not after a passphrase is typed."""
    import pty

    env = {k: v for k, v in os.environ.items() if k != "CIPHERPOST_PASSPHRASE"}
    pid, fd = pty.fork()
    if pid == 0:
        args = [EXE, "receive", "--once", "--config", str(world.agent_config(B))]
        os.execve(EXE, args, env)  # noqa: S606 - the CLI itself, no shell
    seen = b""
    while b"Passphrase: " not in seen:
        seen += os.read(fd, 4096)
    os.kill(pid, signal.SIGINT)
    ended: list[int] = []

    def exited() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            ended.append(os.waitstatus_to_exitcode(status))
        return bool(ended)

    assert wait_for(exited, 30, every=0.05), seen
    try:
        seen += os.read(fd, 4096)
    except OSError:
        pass  # the terminal closed with the process
    os.close(fd)
    assert ended == [130], seen
