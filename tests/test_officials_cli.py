"""The officials' commands as a person types them (no broker): enroll, issue, import a whole
staff from a CSV, sign, revoke; one-line errors with their exit codes."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest

import envelopes
from envelopes.signatures import SIGNED_CAVEAT
from keys import ca
from keys.ca import load_ca_certificate
from keys.codes import AgencyCode
from keys.levels import Level
from keys.officials import load_official
from tests.helpers import PASSPHRASE, World, cli, make_world

CODE = "000.01.12.H41"
OTHER = "000.02.12.H41"
TO = "000.00.00.H41"


@pytest.fixture
def w(tmp_path: Path, state_env: Path) -> World:
    return make_world(tmp_path / "w", {CODE: Level.TOI_MAT, OTHER: Level.MAT, TO: Level.TOI_MAT})


def enroll(w: World, folder: Path, name: str, title: str, code: str = CODE) -> int:
    return cli(
        "official", "enroll", "--agency", code.lower(), "--name", name, "--title", title,
        "--dir", folder, "--quiet",
    )  # fmt: skip


def test_enroll_issue_sign_and_the_signature_verifies(w, tmp_path, capsys):
    folder = tmp_path / "chu-tich"
    assert enroll(w, folder, "Nguyễn Văn A", "Chủ tịch UBND xã An Bình") == 0
    doc = tmp_path / "qd.txt"
    doc.write_bytes("Quyết định\n".encode() * 50)
    ca_cert = w.root / "ca" / "ca.crt"
    # Not certified yet: one line, exit 1, saying what to do.
    assert cli("sign", doc, "--as", folder, "--subject", "S", "--ca-cert", ca_cert) == 1
    assert "no certificate yet" in capsys.readouterr().err
    assert cli("official", "issue", folder / "official.req", "--ca", w.root / "ca",
               "--out", tmp_path / "certs", "--json") == 0  # fmt: skip
    issued = json.loads(capsys.readouterr().out)
    assert issued["title"] == "Chủ tịch UBND xã An Bình"
    (folder / "official.crt").write_bytes(Path(issued["certificate"]).read_bytes())
    assert cli("sign", doc, "--as", folder, "--subject", "S", "--number", "12/QĐ",
               "--ca-cert", ca_cert) == 0  # fmt: skip
    assert "signed by Nguyễn Văn A, Chủ tịch UBND xã An Bình" in capsys.readouterr().out
    sig = (tmp_path / "qd.txt.sig").read_bytes()
    assert cli("sign", doc, "--as", folder, "--subject", "S", "--ca-cert", ca_cert) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    out = io.BytesIO()
    data = doc.read_bytes()
    now = dt.datetime.now(dt.UTC)  # the commands certify at the real time
    envelopes.seal(
        io.BytesIO(data), out, keys=w.keys[CODE], directory=w.directory(),
        to=[AgencyCode.parse(TO)], level=Level.MAT, size=len(data), now=now,
        metadata=envelopes.Metadata("S", "qd.txt", {"notation": "12/QĐ"}, (sig,)),
    )  # fmt: skip
    opened = envelopes.open(
        io.BytesIO(out.getvalue()), io.BytesIO(), keys=w.keys[TO], directory=w.directory(),
        now=now,
    )  # fmt: skip
    assert opened.signatures[0].certificate.name == "Nguyễn Văn A"
    assert SIGNED_CAVEAT in opened.info.checked.header.caveats
    # Revoked: by the start of its key id.
    kid = issued["key_id"]
    assert cli("official", "revoke", kid[:10], "--ca", w.root / "ca", "--reason", "left") == 0
    assert ca.load_ca_state(w.root / "ca")["officials"][kid]["revoked"]
    assert cli("official", "revoke", "ffff", "--ca", w.root / "ca", "--reason", "x") == 1


def test_a_whole_staff_from_a_csv(w, tmp_path, capsys):
    kits = tmp_path / "kits"
    staff = [("Nguyễn Văn A", "Chủ tịch UBND xã"), ("Trần Thị B", "Phó Chủ tịch UBND xã")]
    for i, (name, title) in enumerate(staff):
        assert enroll(w, tmp_path / f"o{i}", name, title) == 0
        (kits / CODE / "officials").mkdir(parents=True, exist_ok=True)
        (kits / CODE / "officials" / f"o{i}.req").write_bytes(
            (tmp_path / f"o{i}" / "official.req").read_bytes()
        )
    csv = tmp_path / "officials.csv"
    csv.write_text(
        "\ufeffcode;name;title;position\n"
        f"{CODE};Nguyễn Văn A;Chủ tịch UBND xã;\n"
        f"{CODE};Trần Thị B;Phó Chủ tịch UBND xã;\n"
        f"{OTHER};Lê Văn C;Chủ tịch UBND xã;\n",
        encoding="utf-8",
    )
    args = ("agency", "import", "--officials", csv, "--ca", w.root / "ca", "--kits", kits)
    capsys.readouterr()
    assert cli(*args, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["issued"], result["refused"]) == (2, [])
    assert result["waiting"] == [f"{OTHER} Lê Văn C"]
    for i in range(2):
        (tmp_path / f"o{i}" / "official.crt").write_bytes(
            (kits / CODE / "officials" / f"o{i}.crt").read_bytes()
        )
        o = load_official(
            tmp_path / f"o{i}", PASSPHRASE, load_ca_certificate(w.root / "ca" / "ca.crt")
        )
        assert (o.name, o.title) == staff[i]
    assert cli(*args, "--json") == 0  # again: nothing new
    assert json.loads(capsys.readouterr().out)["already"] == 2
    # A request for someone not on the list: refused, naming it, exit 3.
    assert enroll(w, tmp_path / "x", "Kẻ Giả Mạo", "Chủ tịch UBND xã") == 0
    capsys.readouterr()
    (kits / CODE / "officials" / "x.req").write_bytes(
        (tmp_path / "x" / "official.req").read_bytes()
    )
    assert cli(*args) == 3
    err = capsys.readouterr().err
    assert "x.req: Kẻ Giả Mạo (Chủ tịch UBND xã) is not on the officials list" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("official", "enroll", "--agency", "x", "--name", "A", "--title", "T", "--dir", "d"), 2,
         "agency code"),
        (("official", "enroll", "--agency", CODE, "--name", "A", "--title", " ", "--dir", "d"), 2,
         "title"),
        (("agency", "import", "--ca", "ca", "--kits", "k"), 2, "give AGENCIES.csv"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line(w, tmp_path, capsys, monkeypatch, argv, code, message):
    monkeypatch.chdir(tmp_path)
    assert cli(*argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_help_explains_the_new_commands(capsys):
    for argv in (("sign", "--help"), ("recall", "--help"), ("official", "enroll", "--help")):
        with pytest.raises(SystemExit) as e:
            cli(*argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "detached signature" in out and "15 (agreed" in out and "own machine" in out
