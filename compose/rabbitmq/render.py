#!/usr/bin/env python3
"""Fill compose/rabbitmq/rabbitmq.conf in for each node of a cluster (standard library only).

    render.py --out DIR [--admin-password-file FILE --vhost VHOST] HOST [HOST ...]

writes ``DIR/<host>.conf`` for every host (Erlang node ``rabbit@<host>``) and a copy
of ``enabled_plugins``. The per-deployment values come from the environment:
``LISTEN_IP``, ``AMQPS_PORT``, ``MANAGEMENT_PORT``, ``PROMETHEUS_PORT``, ``TLS_CA``,
``TLS_CERT``, ``TLS_KEY`` (a placeholder left unfilled is an error, never an empty line).

With ``--admin-password-file`` it also writes ``DIR/definitions.json``: the vhost and
an ``admin`` user (tag administrator) holding only the *hash* of that password
(RabbitMQ's salted SHA-256), imported by every node at boot (``load_definitions``), so
the password itself never lands in a configuration file. Used by the compose stack's
``render-config`` service; compose/cluster.py fills the same template in for the native
test cluster.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "rabbitmq.conf"
PLUGINS = HERE / "enabled_plugins"
NODE_COUNT = 3


def render(template: str, values: dict[str, str]) -> str:
    """The template with every placeholder outside comments filled in (KeyError names a
    missing one); comments are kept as they are."""
    return "".join(
        line if line.lstrip().startswith("#") else Template(line).substitute(values)
        for line in template.splitlines(keepends=True)
    )


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + pw))."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(vhost: str, password: str) -> dict[str, object]:
    return {
        "users": [
            {
                "name": "admin",
                "password_hash": password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
            }
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [
            {"user": "admin", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the files are written")
    parser.add_argument("--admin-password-file", type=Path, help="also write definitions.json")
    parser.add_argument("--vhost", default="cipherpost")
    parser.add_argument("--node-path", help="where the nodes mount --out (default: --out itself)")
    parser.add_argument("hosts", nargs="+", help=f"the {NODE_COUNT} node host names")
    args = parser.parse_args(argv)
    if len(args.hosts) != NODE_COUNT:
        parser.error(f"the template names {NODE_COUNT} cluster nodes; got {len(args.hosts)}")
    values = {
        k: os.environ.get(k, "")
        for k in (
            "LISTEN_IP",
            "AMQPS_PORT",
            "MANAGEMENT_PORT",
            "PROMETHEUS_PORT",
            "TLS_CA",
            "TLS_CERT",
            "TLS_KEY",
        )
    }
    missing = sorted(k for k, v in values.items() if not v)
    if missing:
        print(f"render: set {', '.join(missing)} in the environment", file=sys.stderr)
        return 2
    for i, host in enumerate(args.hosts, 1):
        values[f"CLUSTER_NODE_{i}"] = f"rabbit@{host}"
    try:
        text = render(TEMPLATE.read_text(), values)
    except KeyError as e:
        print(f"render: {TEMPLATE.name} names {e}, which nothing fills in", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.admin_password_file is not None:
        password = args.admin_password_file.read_text().strip()
        if len(password) < 16:
            print("render: the admin password must have at least 16 characters", file=sys.stderr)
            return 2
        (args.out / "definitions.json").write_text(
            json.dumps(definitions(args.vhost, password), indent=2) + "\n"
        )
        mounted = args.node_path or args.out.as_posix()
        text += f"\nload_definitions = {mounted}/definitions.json\n"
    for host in args.hosts:
        (args.out / f"{host}.conf").write_text(text)
    (args.out / "enabled_plugins").write_text(PLUGINS.read_text())
    print(f"render: {', '.join(args.hosts)} written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
