"""The command line as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vectors.generate import generate

A, B, C, OUT = "000.00.00.H41", "000.01.12.H41", "000.02.12.H41", "000.03.12.H41"


def cli(
    *args: str | Path, env: dict[str, str] | None = None, ok: bool = True, code: int | None = None
) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("cipherpost")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agents.cli"]
    result = subprocess.run(
        [*cmd, *map(str, args)],
        capture_output=True,
        text=True,
        env=env or os.environ.copy(),
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    want = 0 if ok and code is None else code
    if want is not None:
        assert result.returncode == want, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A CA, four agencies and a directory made only through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    env = os.environ.copy()
    env.update(CIPHERPOST_PASSPHRASE="cli-test-pass", CIPHERPOST_STATE_DIR=str(root / "state"))
    cli("ca", "init", "--dir", root / "ca", env=env)
    for code, clearance in ((A, "toi-mat"), (B, "toi-mat"), (C, "mat"), (OUT, "toi-mat")):
        cli(
            "keys",
            "enroll",
            "--code",
            code,
            "--name",
            f"Agency {code}",
            "--dir",
            root / code,
            env=env,
        )
        cli(
            "ca",
            "issue",
            root / code / "enrollment.req",
            "--ca",
            root / "ca",
            "--clearance",
            clearance,
            "--out",
            root / "certs",
            env=env,
        )
    cli(
        "directory",
        "build",
        "--ca",
        root / "ca",
        "--certs",
        root / "certs",
        "--out",
        root / "dir.cpd",
        env=env,
    )
    doc = root / "doc.bin"
    doc.write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    env_file = root / "doc.cpe"
    r = cli(
        "seal",
        doc,
        "--as",
        root / A,
        "--directory",
        root / "dir.cpd",
        "--to",
        f"{B},{C}",
        "--level",
        "mat",
        "--urgency",
        "hoa-toc",
        "--subject",
        "Bí mật",
        "--out",
        env_file,
        env=env,
    )
    return root, env, doc, env_file, r.stdout.strip()


def test_key_files_are_private(setup):
    root, *_ = setup
    for path in (root / "ca" / "ca.key.sec", root / A / "keys.sec"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"cli-test-pass" not in (root / A / "keys.sec").read_bytes()


def test_seal_prints_id_and_verify_json(setup):
    root, env, doc, env_file, envelope_id = setup
    assert len(envelope_id) == 32 and int(envelope_id, 16) >= 0
    r = cli("verify", env_file, "--directory", root / "dir.cpd", "--json", env=env)
    info = json.loads(r.stdout)
    assert info["envelope_id"] == envelope_id
    assert info["sender"]["code"] == A
    assert [x["code"] for x in info["recipients"]] == [B, C]
    assert (info["level"], info["urgency"]) == ("mat", "hoa-toc")
    assert info["segments"] == 4 and info["verified"] is True
    assert "Bí mật" not in r.stdout  # the subject is private: it is not in the header
    human = cli("verify", env_file, "--directory", root / "dir.cpd", env=env).stdout
    for word in (envelope_id, A, B, C, "Mật", "created", "expires"):
        assert word in human


def test_open_gives_exact_bytes_and_metadata(setup):
    root, env, doc, env_file, envelope_id = setup
    out = root / "inbox-b" / "doc.bin"
    out.parent.mkdir()
    r = cli(
        "open",
        env_file,
        "--as",
        root / B,
        "--directory",
        root / "dir.cpd",
        "--out",
        out,
        "--json",
        env=env,
    )
    assert out.read_bytes() == doc.read_bytes()
    info = json.loads(r.stdout)
    assert info["subject"] == "Bí mật" and info["filename"] == "doc.bin"
    # never overwrites
    r = cli(
        "open",
        env_file,
        "--as",
        root / B,
        "--directory",
        root / "dir.cpd",
        "--out",
        out,
        env=env,
        code=1,
    )
    assert "refusing to overwrite" in one_line(r)


def test_non_recipient_cannot_open(setup):
    root, env, doc, env_file, _ = setup
    out = root / "stolen.bin"
    r = cli(
        "open",
        env_file,
        "--as",
        root / OUT,
        "--directory",
        root / "dir.cpd",
        "--out",
        out,
        env=env,
        code=3,
    )
    assert "not a recipient" in one_line(r)
    assert not out.exists()


def test_no_plaintext_on_disk_when_the_end_is_forged(setup):
    """The last segment is corrupted: earlier segments decrypted, yet nothing stays on disk."""
    root, env, doc, env_file, _ = setup
    bad = root / "bad-end.cpe"
    data = bytearray(env_file.read_bytes())
    data[-100] ^= 0x40
    bad.write_bytes(bytes(data))
    out_dir = root / "inbox-forged"
    out_dir.mkdir()
    r = cli(
        "open",
        bad,
        "--as",
        root / B,
        "--directory",
        root / "dir.cpd",
        "--out",
        out_dir / "doc.bin",
        env=env,
        code=3,
    )
    assert "segment 3" in one_line(r)
    assert list(out_dir.iterdir()) == []  # neither the document nor a quarantine file


def test_level_above_clearance_refused(setup):
    root, env, doc, _, _ = setup
    r = cli(
        "seal",
        doc,
        "--as",
        root / A,
        "--directory",
        root / "dir.cpd",
        "--to",
        C,
        "--level",
        "toi-mat",
        "--out",
        root / "x.cpe",
        env=env,
        code=3,
    )
    assert "above the clearance of recipient" in one_line(r)
    assert not (root / "x.cpe").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "H41", "--level", "mat"], "invalid agency code"),
        (["--to", B, "--level", "secret"], "unknown level"),
        (["--to", B, "--level", "mat", "--urgency", "now"], "unknown urgency"),
        (["--to", B, "--level", "mat", "--expires-in", "forever"], "invalid duration"),
        (["--to", f"{B},{B}", "--level", "mat"], "named twice"),
        (["--level", "mat"], "required"),
        (["--to", B, "--level", "mat", "--passphrase", "x"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(setup, args, message):
    root, env, doc, _, _ = setup
    r = cli(
        "seal",
        doc,
        "--as",
        root / A,
        "--directory",
        root / "dir.cpd",
        "--out",
        root / "u.cpe",
        *args,
        env=env,
        code=2,
    )
    assert message in one_line(r)


def test_other_errors_exit_1(setup):
    root, env, doc, env_file, _ = setup
    r = cli("verify", root / "missing.cpe", "--directory", root / "dir.cpd", env=env, code=1)
    assert "missing.cpe" in one_line(r)
    wrong = dict(env, CIPHERPOST_PASSPHRASE="wrong")
    r = cli(
        "seal",
        doc,
        "--as",
        root / A,
        "--directory",
        root / "dir.cpd",
        "--to",
        B,
        "--level",
        "mat",
        "--out",
        root / "w.cpe",
        env=wrong,
        code=1,
    )
    assert "wrong passphrase" in one_line(r)
    no_pass = {k: v for k, v in env.items() if k != "CIPHERPOST_PASSPHRASE"}
    r = cli(
        "seal",
        doc,
        "--as",
        root / A,
        "--directory",
        root / "dir.cpd",
        "--to",
        B,
        "--level",
        "mat",
        "--out",
        root / "w.cpe",
        env=no_pass,
        code=2,
    )
    assert "CIPHERPOST_PASSPHRASE" in one_line(r)


def test_rollback_and_foreign_directory_refused(setup, tmp_path):
    root, env, *_ = setup
    old = tmp_path / "old.cpd"
    shutil.copy(root / "dir.cpd", old)
    cli(
        "directory",
        "build",
        "--ca",
        root / "ca",
        "--certs",
        root / "certs",
        "--out",
        tmp_path / "new.cpd",
        env=env,
    )
    env_file = root / "doc.cpe"
    cli("verify", env_file, "--directory", tmp_path / "new.cpd", env=env)
    r = cli("verify", env_file, "--directory", old, env=env, code=3)
    assert "rollback refused" in one_line(r)
    # a directory from another CA, with a pinned CA certificate
    env2 = dict(env, CIPHERPOST_STATE_DIR=str(tmp_path / "state2"))
    cli("ca", "init", "--dir", tmp_path / "ca2", env=env2)
    cli(
        "directory",
        "build",
        "--ca",
        tmp_path / "ca2",
        "--certs",
        root / "certs",
        "--out",
        tmp_path / "x.cpd",
        env=env2,
        code=1,
    )  # certs of another CA are not bundled
    r = cli(
        "verify",
        env_file,
        "--directory",
        tmp_path / "new.cpd",
        "--ca-cert",
        tmp_path / "ca2" / "ca.crt",
        env=env2,
        code=3,
    )
    assert "different CA" in one_line(r)


def test_revoke_then_verify_refused(setup, tmp_path):
    root, env, doc, _, _ = setup
    ca_copy = tmp_path / "ca"
    shutil.copytree(root / "ca", ca_copy)
    env = dict(env, CIPHERPOST_STATE_DIR=str(tmp_path / "state"))
    cli("ca", "revoke", C, "--ca", ca_copy, "--reason", "test", env=env)
    cli(
        "directory",
        "build",
        "--ca",
        ca_copy,
        "--certs",
        root / "certs",
        "--out",
        tmp_path / "d.cpd",
        env=env,
    )
    r = cli("verify", root / "doc.cpe", "--directory", tmp_path / "d.cpd", env=env, code=3)
    assert "recipient 000.02.12.H41 is revoked" in one_line(r)


def test_enroll_never_overwrites_keys(setup):
    root, env, *_ = setup
    before = (root / A / "keys.sec").read_bytes()
    r = cli("keys", "enroll", "--code", A, "--name", "x", "--dir", root / A, env=env, code=1)
    assert "refusing to overwrite" in one_line(r)
    assert (root / A / "keys.sec").read_bytes() == before


def test_help_documents_exit_codes():
    for args in ([], ["seal"], ["verify"], ["open"], ["send"], ["receive"]):
        out = cli(*args, "--help").stdout
        assert "exit codes" in out and "3  refused" in out
        assert "broker unreachable" in out and "128+n  stopped by signal n" in out


def test_send_help_explains_each_argument():
    """Seen by a new user: --to and FILE had no help, and the levels listed only the ASCII
    names although Mật and Tối mật are accepted."""
    out = " ".join(cli("send", "--help").stdout.split())
    assert "--to CODE[,CODE...] the recipients' agency codes, comma-separated" in out
    assert "FILE one envelope each" in out
    assert "(or as written: Mật, Tối mật, ...)" in out and "Hỏa tốc" in out


@pytest.fixture(scope="module")
def fresh_vectors(tmp_path_factory):
    """Vectors generated now, so that the CLI (which uses the real clock) can check them."""
    import datetime as dt

    root = tmp_path_factory.mktemp("vectors")
    manifest = generate(root / "v", dt.datetime.now(dt.UTC).replace(microsecond=0))
    for agency_dir in (root / "v" / "agencies").iterdir():
        (agency_dir / "keys.sec").chmod(0o600)
    env = os.environ.copy()
    env.update(
        CIPHERPOST_PASSPHRASE=manifest["passphrase"], CIPHERPOST_STATE_DIR=str(root / "state")
    )
    return root / "v", manifest, env


def test_every_negative_vector_exits_3_with_one_line(fresh_vectors, tmp_path):
    """Exit 3 and exactly the refusal the library gives for that vector, on one line."""
    import datetime as dt
    import io

    import envelopes
    from envelopes import EnvelopeRefused
    from keys.agency import load_agency
    from keys.directory import Directory, TrustState

    vdir, manifest, env = fresh_vectors
    directory = Directory.load(
        (vdir / "directory.cpd").read_bytes(), TrustState(None), now=dt.datetime.now(dt.UTC)
    )
    for name, meta in sorted(manifest["vectors"].items()):
        envelope = vdir / f"{name}.cpe"
        if meta["expect"] == "ok":
            cli("verify", envelope, "--directory", vdir / "directory.cpd", env=env)
            continue
        with pytest.raises(EnvelopeRefused) as refused:
            if meta["stage"] == "verify":
                envelopes.verify(io.BytesIO(envelope.read_bytes()), directory=directory)
            else:
                keys = load_agency(
                    vdir / "agencies" / meta["open_as"], env["CIPHERPOST_PASSPHRASE"].encode()
                )
                envelopes.open(
                    io.BytesIO(envelope.read_bytes()), io.BytesIO(), keys=keys, directory=directory
                )
        assert refused.value.reason.value == meta["expect"], name
        if meta["stage"] == "verify":
            r = cli("verify", envelope, "--directory", vdir / "directory.cpd", env=env, code=3)
        else:
            out = tmp_path / f"{name}.out"
            r = cli(
                "open",
                envelope,
                "--as",
                vdir / "agencies" / meta["open_as"],
                "--directory",
                vdir / "directory.cpd",
                "--out",
                out,
                env=env,
                code=3,
            )
            assert not out.exists()
            assert list(out.parent.glob(f".{out.name}.quarantine-*")) == []
        line = one_line(r)
        assert line.startswith(f"cipherpost: {refused.value}"), (name, line)


def test_open_and_seal_create_missing_output_folders(setup, tmp_path):
    root, env, doc, env_file, _ = setup
    env = dict(env, CIPHERPOST_STATE_DIR=str(tmp_path / "state"))
    out = root / "new-inbox" / "sub" / "doc.bin"
    cli("open", env_file, "--as", root / C, "--directory", root / "dir.cpd", "--out", out, env=env)
    assert out.read_bytes() == doc.read_bytes()
    sealed = root / "new-outbox" / "x.cpe"
    cli(
        "seal",
        doc,
        "--as",
        root / A,
        "--directory",
        root / "dir.cpd",
        "--to",
        B,
        "--level",
        "mat",
        "--out",
        sealed,
        env=env,
    )
    cli("verify", sealed, "--directory", root / "dir.cpd", env=env)


def test_concurrent_seals_to_one_path_never_corrupt(setup, tmp_path):
    root, env, doc, _, _ = setup
    env = dict(env, CIPHERPOST_STATE_DIR=str(tmp_path / "state"))
    out = tmp_path / "same.cpe"
    exe = Path(sys.executable).with_name("cipherpost")
    procs = [
        subprocess.Popen(
            [
                str(exe),
                "seal",
                str(doc),
                "--as",
                str(root / A),
                "--directory",
                str(root / "dir.cpd"),
                "--to",
                B,
                "--level",
                "mat",
                "--out",
                str(out),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    assert any("already exists" in err for code, err in results if code == 1)
    cli("verify", out, "--directory", root / "dir.cpd", env=env)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.cpe", "state"]  # no partial


@pytest.fixture(scope="module")
def four_segments(setup) -> bytes:
    """A sealed 3 MiB document: four segments of 1 MiB (default size)."""
    root, env, doc, env_file, _ = setup
    return env_file.read_bytes()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_during_open_leaves_nothing(setup, four_segments, tmp_path, signum):
    """The envelope arrives through a pipe: the signal is sent while ``open`` holds decrypted
    plaintext in its quarantine file and waits for the rest, which comes only afterwards.
    Whatever the timing inside, the outcome is exit 128 + n, one line, nothing on disk."""
    root, env, *_ = setup
    fifo = tmp_path / "envelope.pipe"
    os.mkfifo(fifo)
    out_dir = tmp_path / "inbox"
    out_dir.mkdir()
    exe = Path(sys.executable).with_name("cipherpost")
    proc = subprocess.Popen(
        [
            str(exe),
            "open",
            str(fifo),
            "--as",
            str(root / B),
            "--directory",
            str(root / "dir.cpd"),
            "--out",
            str(out_dir / "doc.bin"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_two = _prefix_of_segments(four_segments, 2)
        with fifo.open("wb") as pipe:  # blocks until open has read its keys and opened the pipe
            pipe.write(first_two)
            pipe.flush()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _quarantined(out_dir):
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.01)
            assert _quarantined(out_dir), "open never wrote plaintext to its quarantine file"
            proc.send_signal(signum)
            try:
                pipe.write(four_segments[len(first_two) :])
            except BrokenPipeError:
                pass  # open stopped at its next read and exited: the rest found no reader
        code = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 128 + signum, (code, err)
    assert err == f"cipherpost: interrupted by {signal.Signals(signum).name}; nothing kept\n"
    assert list(out_dir.iterdir()) == []


def _quarantined(folder: Path) -> bool:
    """True once a quarantine file holds decrypted bytes."""
    return any(
        p.name.startswith(".doc.bin.quarantine-") and p.stat().st_size for p in folder.iterdir()
    )


def _prefix_of_segments(envelope: bytes, n: int) -> bytes:
    """The header frame and the first ``n`` segment frames of ``envelope``."""
    import io

    from envelopes.frames import FrameReader

    reader = FrameReader(io.BytesIO(envelope))
    for _ in range(n + 1):
        reader.next()
    return envelope[: reader.bytes_read]


def test_directory_build_refuses_missing_or_empty_certs(setup, tmp_path):
    root, env, *_ = setup
    ca_copy = tmp_path / "ca"
    shutil.copytree(root / "ca", ca_copy)
    r = cli(
        "directory",
        "build",
        "--ca",
        ca_copy,
        "--certs",
        tmp_path / "nosuch",
        "--out",
        tmp_path / "d.cpd",
        env=env,
        code=1,
    )
    assert "does not exist" in one_line(r)
    (tmp_path / "empty").mkdir()
    r = cli(
        "directory",
        "build",
        "--ca",
        ca_copy,
        "--certs",
        tmp_path / "empty",
        "--out",
        tmp_path / "d.cpd",
        env=env,
        code=1,
    )
    assert "no agency certificates" in one_line(r)
    assert not (tmp_path / "d.cpd").exists()


def test_issue_twice_needs_replace(setup, tmp_path):
    root, env, *_ = setup
    ca_copy = tmp_path / "ca"
    shutil.copytree(root / "ca", ca_copy)
    certs = tmp_path / "certs"
    shutil.copytree(root / "certs", certs)
    before = (certs / f"{B}.sign.crt").read_bytes()
    r = cli(
        "ca",
        "issue",
        root / B / "enrollment.req",
        "--ca",
        ca_copy,
        "--clearance",
        "mat",
        "--out",
        certs,
        env=env,
        code=1,
    )
    assert "--replace" in one_line(r)
    assert (certs / f"{B}.sign.crt").read_bytes() == before
    cli(
        "ca",
        "issue",
        root / B / "enrollment.req",
        "--ca",
        ca_copy,
        "--clearance",
        "mat",
        "--out",
        certs,
        "--replace",
        env=env,
    )
    assert (certs / f"{B}.sign.crt").read_bytes() != before


def test_new_passphrase_too_short(tmp_path):
    env = dict(os.environ, CIPHERPOST_PASSPHRASE="ab", CIPHERPOST_STATE_DIR=str(tmp_path))
    r = cli("keys", "enroll", "--code", A, "--name", "x", "--dir", tmp_path / "a", env=env, code=2)
    assert "at least 8" in one_line(r)
    assert not (tmp_path / "a" / "keys.sec").exists()


def test_trust_state_is_private_whatever_the_umask(setup, tmp_path):
    root, env, _, env_file, _ = setup
    env = dict(env, CIPHERPOST_STATE_DIR=str(tmp_path / "st"))
    exe = Path(sys.executable).with_name("cipherpost")
    subprocess.run(
        [str(exe), "verify", str(env_file), "--directory", str(root / "dir.cpd")],
        env=env,
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.umask(0),
    )
    assert stat.S_IMODE((tmp_path / "st" / "trust.json").stat().st_mode) == 0o600


def on_terminal(
    args: list[str | Path], env: dict[str, str], answers: list[bytes]
) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, typing one answer at each passphrase prompt."""
    import pty

    exe = str(Path(sys.executable).with_name("cipherpost"))
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling terminal, as a clerk's is
        os.execve(exe, [exe, *map(str, args)], env)  # noqa: S606 - the CLI itself, no shell
    seen, typed = b"", 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if typed < len(answers) and seen.count(b"Passphrase: ") > typed:
            os.write(fd, answers[typed])
            typed += 1
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_a_mistyped_passphrase_is_asked_again_three_times_in_all(setup, tmp_path):
    root, env, *_ = setup
    clerk = {k: v for k, v in env.items() if k != "CIPHERPOST_PASSPHRASE"}
    doc = tmp_path / "note.txt"
    doc.write_text("ba lần\n")
    args: list[str | Path] = ["seal", doc, "--as", root / A, "--directory", root / "dir.cpd",
                              "--to", B, "--level", "mat", "--out", tmp_path / "a.cpe"]  # fmt: skip
    code, screen = on_terminal(args, clerk, [b"wrong one\n", b"cli-test-pass\n"])
    assert code == 0, screen
    assert "wrong passphrase, try again (2 left)" in screen
    assert (tmp_path / "a.cpe").exists()
    args[-1] = tmp_path / "b.cpe"
    code, screen = on_terminal(args, clerk, [b"no\n", b"nope\n", b"still no\n", b"unused\n"])
    assert code == 1, screen
    assert screen.count("Passphrase: ") == 3
    assert "(1 left)" in screen and "wrong passphrase or damaged key file" in screen
    assert "Traceback" not in screen and not (tmp_path / "b.cpe").exists()


def test_ctrl_d_at_the_passphrase_prompt_is_a_usage_error(setup, tmp_path):
    root, env, *_ = setup
    clerk = {k: v for k, v in env.items() if k != "CIPHERPOST_PASSPHRASE"}
    doc = tmp_path / "note.txt"
    doc.write_text("x\n")
    args: list[str | Path] = ["seal", doc, "--as", root / A, "--directory", root / "dir.cpd",
                              "--to", B, "--level", "mat", "--out", tmp_path / "a.cpe"]  # fmt: skip
    code, screen = on_terminal(args, clerk, [b"\x04"])
    assert code == 2, screen
    assert "no passphrase given" in screen
    assert "internal error" not in screen and "EOFError" not in screen


def test_a_passphrase_from_the_environment_gets_one_try(setup, tmp_path):
    root, env, *_ = setup
    doc = tmp_path / "note.txt"
    doc.write_text("x\n")
    wrong = {**env, "CIPHERPOST_PASSPHRASE": "not it"}
    args: list[str | Path] = ["seal", doc, "--as", root / A, "--directory", root / "dir.cpd",
                              "--to", B, "--level", "mat", "--out", tmp_path / "a.cpe"]  # fmt: skip
    code, screen = on_terminal(args, wrong, [])
    assert code == 1 and "try again" not in screen and "wrong passphrase" in screen


def test_seal_takes_a_lower_case_code_and_suggests_a_close_one(setup, tmp_path):
    root, env, doc, *_ = setup
    base = ["seal", doc, "--as", root / A, "--directory", root / "dir.cpd", "--level", "Mật"]
    cli(*base, "--to", B.lower(), "--out", tmp_path / "ok.cpe", env=env)
    assert (tmp_path / "ok.cpe").exists()
    typo = B.replace(".12.", ".13.")
    r = cli(*base, "--to", typo, "--out", tmp_path / "no.cpe", env=env, code=3)
    assert f"recipient {typo} is not in the directory (did you mean {B} (" in one_line(r)
    assert not (tmp_path / "no.cpe").exists()


def test_join_shows_the_kits_ca_fingerprint_as_openssl_computes_it(setup, tmp_path):
    root, env, *_ = setup
    csv = tmp_path / "one.csv"
    csv.write_text("000.07.31.H41,Xã Bảy,mat\n", encoding="utf-8")
    kits = tmp_path / "kits"
    cli("agency", "import", csv, "--ca", root / "ca", "--kits", kits, env=env)
    joined = cli("agency", "join", kits / "000.07.31.H41", "--dir", tmp_path / "a", env=env)
    der = subprocess.run(
        ["openssl", "x509", "-in", root / "ca" / "ca.crt", "-outform", "DER"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    expected = "SHA256:" + hashlib.sha256(der).hexdigest()
    assert f"CA fingerprint {expected} (the kit's ca.crt)" in joined.stdout
    fresh = cli("ca", "init", "--dir", tmp_path / "ca2", env=env)
    der2 = subprocess.run(
        ["openssl", "x509", "-in", tmp_path / "ca2" / "ca.crt", "-outform", "DER"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert f"CA fingerprint SHA256:{hashlib.sha256(der2).hexdigest()}" in fresh.stdout


def test_version():
    r = cli("--version")
    assert r.stdout.startswith("cipherpost ") and r.stdout.split()[1][0].isdigit()


def test_the_bash_completion_completes_commands_and_options(tmp_path):
    script = tmp_path / "cipherpost.bash"
    script.write_text(cli("completion", "bash").stdout)
    assert cli("completion", "zsh").stdout.startswith("#compdef cipherpost")

    def complete(*words: str) -> list[str]:
        line = " ".join(["cipherpost", *words])
        probe = (
            f"source {script}\n"
            f"COMP_WORDS=({line}); COMP_CWORD={len(words)}; COMP_LINE='{line}';"
            f" COMP_POINT={len(line)}\n"
            "_shtab_cipherpost cipherpost; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
        return done.stdout.split()

    assert {"send", "seal", "status"} <= set(complete("s"))
    assert "outbox" in complete("o")
    assert {"--to", "--level", "--config", "--json", "--quiet"} <= set(complete("send", "--"))


def test_the_agent_settings_default_from_the_environment_then_xdg(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CIPHERPOST_CONFIG"}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    r = cli("outbox", env=env, code=2)
    assert "no agent settings: give --config AGENT.toml, set CIPHERPOST_CONFIG" in one_line(r)
    xdg = tmp_path / "xdg" / "cipherpost" / "agent.toml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("not toml [\n")
    assert str(xdg) in one_line(cli("outbox", env=env, code=1))
    env["CIPHERPOST_CONFIG"] = str(tmp_path / "elsewhere.toml")
    assert "elsewhere.toml" in one_line(cli("outbox", env=env, code=1))


def test_errors_are_one_json_object_with_json(setup, tmp_path):
    root, env, doc, *_ = setup
    base = ["seal", doc, "--as", root / A, "--directory", root / "dir.cpd", "--json"]
    r = cli(*base, "--to", B, "--level", "secret", "--out", tmp_path / "x.cpe", env=env, code=2)
    error = json.loads(one_line(r))
    assert error["exit_code"] == 2 and "secret" in error["error"] and r.stdout == ""
    r = cli(*base, "--level", "mat", "--out", tmp_path / "x.cpe", env=env, code=2)  # no --to
    error = json.loads(one_line(r))
    assert error == {"error": error["error"], "exit_code": 2, "kind": "usage"}
    assert "--to" in error["error"]
    ok = cli(*base, "--to", B, "--level", "mat", "--out", tmp_path / "y.cpe", env=env)
    result = json.loads(ok.stdout)
    assert result["out"] == str(tmp_path / "y.cpe") and len(result["envelope_id"]) == 32
    assert ok.stderr == ""  # --json: stdout is the one object, nothing chatty on stderr


@pytest.mark.parametrize(
    "command",
    [["ca", "init"], ["ca", "issue"], ["ca", "issue-audit"], ["ca", "approve"], ["ca", "retire"],
     ["ca", "revoke"], ["agency", "import"], ["agency", "join"], ["agency", "finish"],
     ["keys", "enroll"], ["directory", "build"], ["directory", "publish"], ["seal"], ["verify"],
     ["open"], ["send"], ["receive"], ["reply-status"], ["status"], ["outbox"], ["doctor"],
     ["broker", "provision"], ["broker", "rotate"], ["broker", "suspend"],
     ["broker", "reinstate"], ["policy", "sign"], ["gateway", "init"],
     ["gateway", "backup"], ["audit", "keygen"], ["audit", "witness"], ["audit", "verify"],
     ["audit", "end-log"], ["audit", "check-proof"], ["audit", "query"], ["audit", "export"]],
)  # fmt: skip
def test_every_command_that_prints_results_takes_json_and_quiet(command):
    text = cli(*command, "--help").stdout
    assert "--json" in text and "--quiet" in text, command


def test_quiet_keeps_the_result_and_drops_the_remarks(setup, tmp_path):
    root, env, doc, *_ = setup
    base = ["seal", doc, "--as", root / A, "--directory", root / "dir.cpd", "--to", B]
    loud = cli(*base, "--level", "mat", "--out", tmp_path / "a.cpe", env=env)
    quiet = cli(*base, "--level", "mat", "--out", tmp_path / "b.cpe", "--quiet", env=env)
    assert "sealed" in loud.stderr and quiet.stderr == ""
    assert len(quiet.stdout.strip()) == 32


def test_commands_that_print_results_print_one_json_object_with_json(setup, tmp_path):
    """Not only in --help: each of these prints exactly one JSON object on stdout and nothing
    on stderr (remarks such as "next: ..." are for people)."""
    root, env, *_ = setup
    env = {**env, "CIPHERPOST_STATE_DIR": str(tmp_path / "state")}
    ca_dir, certs, agency_dir = tmp_path / "ca", tmp_path / "certs", tmp_path / "ag"
    csv = tmp_path / "one.csv"
    csv.write_text("000.07.31.H41,Xã Bảy,mat\n", encoding="utf-8")
    runs = {
        "ca init": ["ca", "init", "--dir", ca_dir],
        "keys enroll": ["keys", "enroll", "--code", "000.05.12.h41", "--name", "Xã Năm",
                        "--dir", agency_dir],
        "ca issue": ["ca", "issue", agency_dir / "enrollment.req", "--ca", ca_dir,
                     "--clearance", "Mật", "--out", certs],
        "directory build": ["directory", "build", "--ca", ca_dir, "--certs", certs,
                            "--out", tmp_path / "dir.cpd"],
        "agency import": ["agency", "import", csv, "--ca", ca_dir, "--kits", tmp_path / "kits"],
        "agency join": ["agency", "join", tmp_path / "kits" / "000.07.31.H41",
                        "--dir", tmp_path / "joined"],
        "ca revoke": ["ca", "revoke", "000.05.12.H41", "--ca", ca_dir, "--reason", "test"],
        "verify": ["verify", root / "doc.cpe", "--directory", root / "dir.cpd"],
    }  # fmt: skip
    results = {}
    for name, args in runs.items():
        r = cli(*args, "--json", env=env)
        assert r.stderr == "", (name, r.stderr)
        results[name] = json.loads(r.stdout)  # one object, nothing else on stdout
        assert isinstance(results[name], dict), name
    assert results["ca init"]["fingerprint"].startswith("SHA256:")
    assert results["keys enroll"]["code"] == "000.05.12.H41"
    assert results["ca issue"]["clearance"] == "mat"
    assert results["directory build"]["agencies"] == 1
    assert results["agency import"]["codes"] == ["000.07.31.H41"]
    assert results["agency join"]["ca_fingerprint"] == results["ca init"]["fingerprint"]
    assert results["ca revoke"]["revoked"] is True
    assert results["verify"]["verified"] is True


def test_seal_verify_and_open_show_progress_on_a_terminal_finished_once(setup, tmp_path):
    """Large documents on a terminal: one progress line per command, redrawn in place and
    finished exactly once (the "100.0%" line was printed twice); none with --quiet or off a
    terminal (the other tests' captured stderr)."""
    root, env, *_ = setup
    env = {**env, "CIPHERPOST_STATE_DIR": str(tmp_path / "state")}  # verify's own trust
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(17 << 20))  # above progress.MIN_BYTES
    cpe = tmp_path / "big.cpe"
    seal = ["seal", big, "--as", root / A, "--directory", root / "dir.cpd", "--to", B,
            "--level", "mat", "--out", cpe]  # fmt: skip
    code, screen = on_terminal(seal, env, [])
    assert code == 0, screen
    assert screen.count("sealing: 100.0% of ") == 1 and "\r" in screen
    code, screen = on_terminal(["verify", cpe, "--directory", root / "dir.cpd"], env, [])
    assert code == 0, screen
    assert screen.count("verifying: 100.0% of 17.") == 1
    opened = ["open", cpe, "--as", root / B, "--directory", root / "dir.cpd"]
    code, screen = on_terminal([*opened, "--out", tmp_path / "a.bin"], env, [])
    assert code == 0, screen
    assert screen.count("opening: 100.0% of ") == 1
    code, screen = on_terminal([*opened, "--out", tmp_path / "b.bin", "--quiet"], env, [])
    assert code == 0 and "opening:" not in screen, screen
    quiet = cli(*opened, "--out", tmp_path / "c.bin", env=env)  # not a terminal
    assert "opening:" not in quiet.stderr
