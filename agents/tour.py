"""The offline tour: every step is a real ``cipherpost`` command, shown as it runs.

It builds a throwaway world (a CA, a province office, two communes), seals a
document to both communes, verifies it as the gateway would, opens it as a
recipient, and shows the refusals that matter: a level above a clearance, a
non-recipient, a flipped byte, a revoked agency. It exits 0 only if every step
ended the way it should.
"""
# Oversized: _steps() is the tour's script, one command after another, read top to bottom

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from keys.errors import EXIT_OK, EXIT_REFUSED

PROVINCE = ("000.00.00.H41", "UBND tỉnh H41", "toi-mat")
COMMUNE_A = ("000.01.12.H41", "UBND xã An Bình", "toi-mat")
COMMUNE_B = ("000.02.12.H41", "UBND xã Phú Mỹ", "mat")


@contextlib.contextmanager
def _environment(work: Path) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("CIPHERPOST_PASSPHRASE", "CIPHERPOST_STATE_DIR")}
    os.environ.setdefault("CIPHERPOST_PASSPHRASE", "tour-only-passphrase")
    os.environ["CIPHERPOST_STATE_DIR"] = str(work / "state")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


Commands = Callable[[list[str]], int]  # a command line, as a person types it -> exit code


class _Tour:
    def __init__(self, work: Path, commands: Commands) -> None:
        self.work = work
        self.commands = commands  # the CLI's entry point, handed in (no import cycle)
        self.failures = 0

    def say(self, text: str) -> None:
        print(f"\n== {text}")

    def run(self, *argv: str, expect: int = EXIT_OK, quiet: bool = False) -> str:
        if "--directory" in argv and "--ca-cert" not in argv:
            # Holders pin the cipher department's CA certificate, received out of band.
            argv = (*argv, "--ca-cert", str(self.work / "ca" / "ca.crt"))
        shown = " ".join(shlex.quote(a.replace(str(self.work) + "/", "")) for a in argv)
        print(f"$ cipherpost {shown}")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = self.commands(list(argv))
        if not quiet:
            for line in out.getvalue().splitlines():
                print(f"  {line.replace(str(self.work) + '/', '')}")
        for line in err.getvalue().splitlines():
            print(f"  [stderr] {line.replace(str(self.work) + '/', '')}")
        if code != expect:
            self.failures += 1
            print(f"  !! exit {code}, expected {expect}")
        elif expect != EXIT_OK:
            print(f"  -> refused as expected (exit {code})")
        return out.getvalue()


def run_tour(commands: Commands, keep: Path | None = None) -> int:
    """Run the tour in ``keep`` (kept) or a temporary folder (removed); ``commands`` runs
    one command line (the CLI's entry point)."""
    work = keep or Path(tempfile.mkdtemp(prefix="cipherpost-tour-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"cipherpost offline tour in {work} (paths below are relative to it)")
    try:
        with _environment(work):
            failures = _steps(_Tour(work, commands))
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"\ntour FAILED: {failures} step(s) did not end as expected")
        return 1
    print("\ntour complete: every step ended as expected")
    return 0


def _steps(t: _Tour) -> int:
    w = t.work
    ca_dir, certs, directory = w / "ca", w / "certs", w / "directory.cpd"

    t.say("The cipher department creates its CA")
    t.run("ca", "init", "--dir", str(ca_dir), "--name", "Ban Cơ yếu (tour)")

    t.say("Each agency enrolls on its own machine: keys never leave it")
    for code, name, _ in (PROVINCE, COMMUNE_A, COMMUNE_B):
        t.run("keys", "enroll", "--code", code, "--name", name, "--dir", str(w / code))

    t.say("The cipher department issues certificates with each clearance, then the directory")
    for code, _, clearance in (PROVINCE, COMMUNE_A, COMMUNE_B):
        t.run(
            "ca",
            "issue",
            str(w / code / "enrollment.req"),
            "--ca",
            str(ca_dir),
            "--clearance",
            clearance,
            "--out",
            str(certs),
        )
    t.run("directory", "build", "--ca", str(ca_dir), "--certs", str(certs), "--out", str(directory))

    t.say("The province seals one Mật document to both communes (one ciphertext, two keys)")
    doc = w / "cong-van-123.txt"
    doc.write_bytes("Công văn số 123: kế hoạch sáp nhập xã (tour document)\n".encode() * 2000)
    envelope = w / "cong-van-123.cpe"
    t.run(
        "seal",
        str(doc),
        "--as",
        str(w / PROVINCE[0]),
        "--directory",
        str(directory),
        "--to",
        f"{COMMUNE_A[0]},{COMMUNE_B[0]}",
        "--level",
        "mat",
        "--urgency",
        "khan",
        "--subject",
        "Kế hoạch sáp nhập",
        "--out",
        str(envelope),
    )

    t.say("Anyone with the directory can verify it, with no private key (the gateway's view)")
    t.run("verify", str(envelope), "--directory", str(directory))

    t.say("Commune A opens it: the document appears only after the whole envelope verified")
    opened = w / "inbox-a" / "cong-van-123.txt"
    opened.parent.mkdir()
    t.run(
        "open",
        str(envelope),
        "--as",
        str(w / COMMUNE_A[0]),
        "--directory",
        str(directory),
        "--out",
        str(opened),
    )
    same = opened.read_bytes() == doc.read_bytes()
    print(f"  byte-for-byte identical to the original: {'yes' if same else 'NO'}")
    t.failures += 0 if same else 1

    t.say("Refusals")
    t.run(
        "seal",
        str(doc),
        "--as",
        str(w / PROVINCE[0]),
        "--directory",
        str(directory),
        "--to",
        COMMUNE_B[0],
        "--level",
        "toi-mat",
        "--out",
        str(w / "too-secret.cpe"),
        expect=EXIT_REFUSED,
    )
    t.run(
        "open",
        str(envelope),
        "--as",
        str(w / PROVINCE[0]),
        "--directory",
        str(directory),
        "--out",
        str(w / "not-mine.txt"),
        expect=EXIT_REFUSED,
    )
    tampered = w / "tampered.cpe"
    data = bytearray(envelope.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    print("  (one bit flipped in the middle of a copy of the envelope)")
    t.run("verify", str(tampered), "--directory", str(directory), expect=EXIT_REFUSED)

    t.say("Commune B's keys are compromised: revoke, rebuild the directory, verify again")
    t.run("ca", "revoke", COMMUNE_B[0], "--ca", str(ca_dir), "--reason", "key compromise")
    t.run("directory", "build", "--ca", str(ca_dir), "--certs", str(certs), "--out", str(directory))
    t.run("verify", str(envelope), "--directory", str(directory), expect=EXIT_REFUSED)
    leftovers = [p.name for p in w.rglob("*quarantine*")]
    if leftovers:
        t.failures += 1
        print(f"  !! quarantine files left behind: {leftovers}")
    return t.failures
