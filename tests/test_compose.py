"""The compose stack (compose/docker-compose.yml) checks out without Docker: the compose-spec
schema (vendored in compose/schema/), the cross-references a schema cannot express, and the
RabbitMQ configuration it renders from the same template as the native test cluster.
Broken copies (a missing secret, a duplicate gateway id, ...) must fail."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
STACK = COMPOSE / "docker-compose.yml"
SCHEMA = COMPOSE / "schema" / "compose-spec.json"
# Supplied by the operator at deployment (compose/README.md says what goes there).
OPERATOR_DIRS = ("./site", "./secrets")


def load() -> dict[str, Any]:
    return yaml.safe_load(STACK.read_text())


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def one_shots(doc: dict[str, Any]) -> set[str]:
    """Services something waits for to *complete*: jobs, not daemons."""
    return {
        name
        for svc in doc["services"].values()
        for name, dep in (svc.get("depends_on") or {}).items()
        if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
    }


def secret_names(svc: dict[str, Any]) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])]


def problems(doc: dict[str, Any], readme: str) -> list[str]:
    """What the schema cannot check; each line names the service and what is wrong."""
    found: list[str] = []
    services: dict[str, Any] = doc["services"]
    declared_secrets = doc.get("secrets") or {}
    declared_volumes = doc.get("volumes") or {}
    jobs = one_shots(doc)
    gateway_ids: dict[str, str] = {}
    gateway_volumes: dict[str, str] = {}
    for name, svc in services.items():
        for secret in secret_names(svc):
            if secret not in declared_secrets:
                found.append(f"{name}: secret {secret} is not declared")
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            writable = not volume.endswith(":ro")
            if source.startswith("."):
                if not source.startswith(OPERATOR_DIRS) and not (COMPOSE / source).exists():
                    found.append(f"{name}: {source} does not exist")
                if source.startswith(OPERATOR_DIRS) and source.split("/")[1] not in readme:
                    found.append(f"{name}: {source} is not explained in compose/README.md")
            elif source not in declared_volumes:
                found.append(f"{name}: volume {source} is not declared")
            elif writable and "gateway" in name:
                gateway_volumes.setdefault(source, name)
            if writable and source in gateway_volumes and gateway_volumes[source] != name:
                found.append(f"{name}: writes volume {source} of {gateway_volumes[source]}")
        command = svc.get("command") or []
        if command[:2] == ["gateway", "run"]:
            gid = (svc.get("environment") or {}).get("CIPHERPOST_GATEWAY_ID")
            if not gid:
                found.append(f"{name}: no CIPHERPOST_GATEWAY_ID (gateway run checks it)")
            elif gid in gateway_ids:
                found.append(f"{name}: gateway id {gid} already used by {gateway_ids[gid]}")
            else:
                gateway_ids[gid] = name
        if name not in jobs and "healthcheck" not in svc:
            found.append(f"{name}: a long-running service without a healthcheck")
        if name in jobs and svc.get("restart") != "no":
            found.append(f"{name}: a one-shot job must not restart")
        if not svc.get("read_only") or svc.get("cap_drop") != ["ALL"]:
            found.append(f"{name}: root filesystem writable or capabilities kept")
        if "max-size" not in (svc.get("logging") or {}).get("options", {}):
            found.append(f"{name}: logs without a size limit")
        if any("PASSWORD=" in str(v) or "PASSPHRASE=" in str(v) for v in command):
            found.append(f"{name}: a secret on the command line")
        environment = svc.get("environment") or {}
        for key, value in environment.items():
            if ("PASSWORD" in key or "PASSPHRASE" in key) and not key.endswith("_FILE"):
                found.append(f"{name}: {key} holds a secret in the environment")
            if key.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                if str(value).removeprefix("/run/secrets/") not in _targets(svc):
                    found.append(f"{name}: {key} names a secret the service does not mount")
    for secret, spec in declared_secrets.items():
        path = str(spec.get("file", ""))
        if not path.startswith("./secrets/"):
            found.append(f"secret {secret}: not a file under ./secrets/")
        elif Path(path).name not in readme:
            found.append(f"secret {secret}: {path} is not explained in compose/README.md")
    if len(gateway_ids) < 2:
        found.append(f"{len(gateway_ids)} gateway(s): the hub runs two")
    return found


def _targets(svc: dict[str, Any]) -> set[str]:
    return {
        s if isinstance(s, str) else s.get("target", s["source"]) for s in svc.get("secrets", [])
    }


@pytest.fixture(scope="module")
def readme() -> str:
    return (COMPOSE / "README.md").read_text()


def test_the_stack_validates_against_the_compose_spec_schema():
    assert schema_errors(load()) == []


def test_the_schema_is_not_a_rubber_stamp():
    doc = load()
    doc["services"]["gateway-1"]["restrat"] = "always"  # a typo the schema must catch
    doc["services"]["gateway-2"]["ports"] = [{"target": "not a port"}]
    errors = schema_errors(doc)
    assert any("restrat" in e for e in errors), errors
    assert any("gateway-2" in e for e in errors), errors


def test_the_stack_holds_together(readme):
    assert problems(load(), readme) == []


def test_a_missing_secret_fails(readme):
    doc = load()
    del doc["secrets"]["gateway_2_passphrase"]
    assert problems(doc, readme) == ["gateway-2: secret gateway_2_passphrase is not declared"]


def test_a_duplicate_gateway_id_fails(readme):
    doc = load()
    doc["services"]["gateway-2"]["environment"]["CIPHERPOST_GATEWAY_ID"] = "gw-1"
    assert problems(doc, readme) == [
        "gateway-2: gateway id gw-1 already used by gateway-1",
        "1 gateway(s): the hub runs two",
    ]


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda d: d["services"]["witness"].pop("healthcheck"), "witness: a long-running"),
        (lambda d: d["volumes"].pop("gateway-1-state"), "gateway-1: volume gateway-1-state"),
        (
            lambda d: d["services"]["gateway-2"]["volumes"].append("gateway-1-state:/x"),
            "gateway-2: writes volume gateway-1-state of gateway-1",
        ),
        (lambda d: d["services"]["provision"].update(restart="on-failure"), "provision: a one"),
        (lambda d: d["services"]["rabbit-2"].pop("read_only"), "rabbit-2: root filesystem"),
        (lambda d: d["services"]["prometheus"].pop("logging"), "prometheus: logs without"),
        (
            lambda d: d["services"]["provision"]["volumes"].append("./rabbitmq/nope.conf:/x:ro"),
            "provision: ./rabbitmq/nope.conf does not exist",
        ),
        (
            lambda d: d["services"]["gateway-1"]["environment"].update(
                CIPHERPOST_PASSPHRASE="hunter2"
            ),
            "gateway-1: CIPHERPOST_PASSPHRASE holds a secret",
        ),
        (
            lambda d: d["services"]["gateway-1"].update(secrets=["gateway_1_tls_key"]),
            "gateway-1: CIPHERPOST_PASSPHRASE_FILE names a secret the service does not mount",
        ),
    ],
)
def test_each_cross_check_bites(readme, breakage, expected):
    doc = copy.deepcopy(load())
    breakage(doc)
    assert any(line.startswith(expected) for line in problems(doc, readme)), problems(doc, readme)


def test_the_stack_keeps_the_operational_promises():
    doc = load()
    services = doc["services"]
    assert services["witness"]["restart"] == "no"  # exit 3 is an alarm, never restarted away
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert doc["networks"]["hub"]["internal"] is True
    nodes = [n for n in services if n.startswith("rabbit-")]
    assert len(nodes) == 3
    for node in nodes:
        svc = services[node]
        assert svc["image"].startswith("rabbitmq:3.10.")
        assert svc["ports"] == [f"{5670 + int(node[-1])}:5671"]  # AMQPS only, nothing else out
        assert "erlang_cookie" in secret_names(svc)
        assert svc["environment"]["RABBITMQ_CONFIG_FILE"] == f"/etc/cipherpost/rabbitmq/{node}.conf"
    render = services["render-config"]["command"]
    assert [a for a in render if not a.startswith("--")] == nodes
    for name in ("gateway-1", "gateway-2", "witness", "provision"):
        mounts = services[name]["volumes"]
        assert "./site:/site:ro" in mounts  # the CA stays offline: only public, signed files
    assert not any(
        "/ca/" in v or "ca.key" in v for s in services.values() for v in s.get("volumes", [])
    )


def render(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **{k: str(v) for k, v in load()["services"]["render-config"]["environment"].items()},
    }
    return subprocess.run(
        [sys.executable, str(COMPOSE / "rabbitmq" / "render.py"), "--out", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_nodes_get_the_shared_template_filled_in_and_only_a_password_hash(tmp_path):
    password = "correct horse battery staple"
    (tmp_path / "pw").write_text(password + "\n")
    out = tmp_path / "out"
    done = render(
        out,
        "--admin-password-file",
        str(tmp_path / "pw"),
        "--node-path=/etc/cipherpost/rabbitmq",
        "rabbit-1",
        "rabbit-2",
        "rabbit-3",
    )
    assert done.returncode == 0, done.stderr
    template = (COMPOSE / "rabbitmq" / "rabbitmq.conf").read_text()
    for node in ("rabbit-1", "rabbit-2", "rabbit-3"):
        conf = (out / f"{node}.conf").read_text()
        settings = [ln for ln in conf.splitlines() if not ln.lstrip().startswith("#")]
        assert not any("${" in ln for ln in settings)
        assert "listeners.tcp = none" in conf and "listeners.ssl.default = 5671" in conf
        assert "cluster_formation.classic_config.nodes.3 = rabbit@rabbit-3" in conf
        assert "load_definitions = /etc/cipherpost/rabbitmq/definitions.json" in conf
        # Everything else is the template, line for line.
        assert len(conf.splitlines()) == len(template.splitlines()) + 2
    assert (out / "enabled_plugins").read_text() == (
        COMPOSE / "rabbitmq" / "enabled_plugins"
    ).read_text()
    text = "".join(p.read_text() for p in out.iterdir())
    assert password not in text
    user = json.loads((out / "definitions.json").read_text())["users"][0]
    raw = base64.b64decode(user["password_hash"])
    assert raw[4:] == hashlib.sha256(raw[:4] + password.encode()).digest()  # RabbitMQ's scheme


def test_render_refuses_a_short_admin_password_and_a_missing_value(tmp_path):
    (tmp_path / "pw").write_text("short\n")
    done = render(tmp_path / "o", "--admin-password-file", str(tmp_path / "pw"), "a", "b", "c")
    assert done.returncode == 2 and "at least 16 characters" in done.stderr
    env = {k: v for k, v in os.environ.items() if k != "TLS_KEY"}
    done = subprocess.run(
        [
            sys.executable,
            str(COMPOSE / "rabbitmq" / "render.py"),
            "--out",
            str(tmp_path),
            "a",
            "b",
            "c",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and "set AMQPS_PORT" in done.stderr


def test_a_gateway_refuses_to_run_under_another_instances_id(tmp_path):
    """The stack names each gateway (CIPHERPOST_GATEWAY_ID); a GATEWAY.toml copied from the
    other instance would write a second log under the same id: refused before any key is
    opened, in one line, exit 2."""
    from gateway.config import example

    (tmp_path / "GATEWAY.toml").write_text(example(gateway_id="gw-1"))
    cipherpost = Path(sys.executable).with_name("cipherpost")
    done = subprocess.run(
        [str(cipherpost), "gateway", "run", "--config", str(tmp_path / "GATEWAY.toml")],
        capture_output=True,
        text=True,
        env={**os.environ, "CIPHERPOST_GATEWAY_ID": "gw-2"},
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "gateway_id = 'gw-1' but CIPHERPOST_GATEWAY_ID is 'gw-2'" in done.stderr
