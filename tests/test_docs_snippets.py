"""Every Python snippet in the README and docs/ runs as written, against the real RabbitMQ.

The snippets name the deployment's paths (``/srv/cipherpost/agent.toml``...); the test puts
this world's files in their place and changes nothing else. A snippet that forgets an import
or calls the API wrongly fails here, not in an integrator's hands.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agents.world import PASSPHRASE
from keys import ca
from keys.codes import AgencyCode
from keys.officials import OfficialRequest, enroll_official
from tests.exchange import PROVINCE, A, make_world

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def snippets() -> list[tuple[str, str]]:
    found = []
    for path in SOURCES:
        for n, match in enumerate(BLOCK.finditer(path.read_text()), start=1):
            found.append((f"{path.relative_to(ROOT)}#{n}", match.group(1)))
    return found


def test_the_docs_have_python_snippets_to_run():
    names = [name for name, _ in snippets()]
    assert "docs/sdk.md#1" in names and "README.md#1" in names, names


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("snippets"))
    w.start_gateway()
    yield w
    w.cleanup()


@pytest.fixture(scope="module")
def chairman(world, tmp_path_factory) -> Path:
    """The province chairman's key folder, certified (``official enroll`` + ``issue``)."""
    folder = tmp_path_factory.mktemp("chu-tich") / "official"
    now = dt.datetime.now(dt.UTC)
    enroll_official(
        folder, AgencyCode.parse(PROVINCE), "Nguyễn Văn A", "Chủ tịch UBND tỉnh", "", PASSPHRASE,
        now,
    )  # fmt: skip
    request = OfficialRequest.parse((folder / "official.req").read_bytes())
    cert = ca.issue_official(ca.open_ca(world.ca_dir, PASSPHRASE), request, folder / "c", now)
    cert.replace(folder / "official.crt")
    return folder


@pytest.mark.parametrize(("name", "code"), snippets(), ids=[n for n, _ in snippets()])
def test_a_snippet_runs_as_written(world, chairman, tmp_path, name, code):
    places = {
        "/srv/cipherpost/agent.toml": world.agent_config(PROVINCE),
        "/srv/province/agent.toml": world.agent_config(PROVINCE),
        "/srv/commune/agent.toml": world.agent_config(A),
        "/srv/cipherpost/ca.crt": world.ca_dir / "ca.crt",
        "/home/chu-tich/official": chairman,
    }
    assert A == "000.01.12.H41"  # the code the snippets send to
    for placeholder, path in places.items():
        code = code.replace(placeholder, str(path))
    (tmp_path / "cong-van.pdf").write_bytes(b"%PDF-1.7\n% cong van\n" * 100)
    for name_ in ("quyet-dinh-12.pdf", "quyet-dinh-12b.pdf"):
        (tmp_path / name_).write_bytes(b"%PDF-1.7\n% quyet dinh\n" * 100)
    env = {**os.environ, "CIPHERPOST_PASSPHRASE": PASSPHRASE.decode()}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, (name, done.stderr)
    assert "Traceback" not in done.stderr


def test_the_sdk_table_names_every_parameter_as_the_code_does():
    """Seen: `progress=` was undocumented; and `reply_status(envelope_id, code, ...)` was
    documented while the parameter is `status` (a keyword call failed with TypeError)."""
    import inspect

    import agents
    from agents.client import Client

    rows = re.findall(r"^\| `(\w+)\((.*?)\)` \|", (ROOT / "docs" / "sdk.md").read_text(), re.M)
    assert {name for name, _ in rows} >= {"open_agent", "send", "documents", "receive",
                                          "reply_status", "status"}  # fmt: skip
    for name, params in rows:
        documented = [p.split("=")[0].strip() for p in params.split(",") if p.strip() != "*"]
        function = getattr(agents, name) if name in agents.__all__ else getattr(Client, name)
        actual = [p for p in inspect.signature(function).parameters if p != "self"]
        assert documented == actual, (name, documented, actual)
