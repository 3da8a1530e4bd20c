"""Time to onboard N agencies with the commands of docs/onboarding.md, against a raw baseline.

    .venv/bin/python bench/onboarding.py [--json] [--agencies 75]

Ours: ``agency import`` (cipher department), ``agency join`` for every agency
(keys made and encrypted with argon2id, as on each agency's machine, here one
after the other), ``ca approve``, ``broker provision --kits --publish``,
``agency finish`` for every agency: the whole path, in its own vhost.
Baseline, same run, same broker: the bare minimum any provisioning must do
for N agencies (management API: create the user, set its permissions,
declare its quorum inbox and bind it), no keys, no certificates, no checks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import logs  # noqa: E402
from agents.world import PASSPHRASE, build_world  # noqa: E402
from broker.management import Management  # noqa: E402
from broker.topology import private_name  # noqa: E402
from keys.levels import Level  # noqa: E402
from tests.helpers import cli  # noqa: E402

ADMIN_URL = "http://guest:guest@127.0.0.1:15672"
PROVINCE = "000.00.00.H41"


def code(i: int) -> str:
    return f"000.{i % 100:02d}.{i // 100 + 10:02d}.H41"


def baseline(mgmt: Management, n: int) -> float:
    vhost = f"cp-{secrets.token_hex(4)}"
    prefix = f"cp{vhost[3:]}-"
    v = mgmt.q(vhost)
    mgmt.put(f"/api/vhosts/{v}", {})
    mgmt.put(
        f"/api/permissions/{v}/{mgmt.q(mgmt.username)}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    mgmt.put(f"/api/exchanges/{v}/cp.deliver", {"type": "direct", "durable": True})
    users = []
    start = time.perf_counter()
    try:
        for i in range(n):
            login = prefix + code(i)
            users.append(login)
            mgmt.put(
                f"/api/users/{mgmt.q(login)}", {"password": secrets.token_urlsafe(24), "tags": ""}
            )
            mgmt.put(
                f"/api/permissions/{v}/{mgmt.q(login)}",
                {"configure": "^$", "write": "^cp\\.submit$", "read": "^q$"},
            )
            queue = private_name(f"cp.inbox.{code(i)}.")
            mgmt.put(
                f"/api/queues/{v}/{mgmt.q(queue)}",
                {"durable": True, "arguments": {"x-queue-type": "quorum"}},
            )
            mgmt.post(f"/api/bindings/{v}/e/cp.deliver/q/{mgmt.q(queue)}", {"routing_key": code(i)})
        return time.perf_counter() - start
    finally:
        mgmt.delete(f"/api/vhosts/{v}")
        for login in users:
            mgmt.delete(f"/api/users/{mgmt.q(login)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--agencies", type=int, default=75)
    parser.add_argument(
        "--admin-url", default=ADMIN_URL, help="management API (a throwaway node for 1,000+)"
    )
    parser.add_argument("--amqp-port", type=int, default=5672)
    args = parser.parse_args()
    admin_url = args.admin_url
    admin = Management.from_url(admin_url)
    # The command takes the admin's password from the environment, never from its argv.
    os.environ["CIPHERPOST_ADMIN_PASSWORD"] = admin.password
    operator_url = admin.base_url.replace("://", f"://{admin.username}@", 1)
    logs.configure(json_lines=False, level=logging.ERROR)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    os.environ["CIPHERPOST_PASSPHRASE"] = PASSPHRASE.decode()
    n = args.agencies
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cp-bench-onb-") as tmp:
        work = Path(tmp)
        os.environ["CIPHERPOST_STATE_DIR"] = str(work / "state")
        world = build_world(
            work / "w",
            {PROVINCE: ("UBND tỉnh H41", Level.TOI_MAT)},
            admin_url=admin_url,
            amqp_port=args.amqp_port,
        )
        codes = [code(i) for i in range(n)]
        world.agencies.update({c: Level.MAT for c in codes})  # cleanup removes their users
        try:
            csv = work / "agencies.csv"
            csv.write_text(
                "code,name,clearance,parent\n"
                + "".join(f"{c},UBND xã {i},mat,{PROVINCE}\n" for i, c in enumerate(codes))
            )
            kits = work / "kits"

            def phase(name: str, *commands: tuple[object, ...]) -> None:
                start = time.perf_counter()
                for command in commands:
                    if cli(*command) != 0:
                        raise SystemExit(f"{name} failed: {command}")
                phases[name] = time.perf_counter() - start
                say(f"  {name}: {phases[name]:.1f} s")

            say(f"onboarding {n} agencies ...")
            devnull = open(os.devnull, "w")
            stdout, sys.stdout = sys.stdout, devnull
            try:
                phase("import", ("agency", "import", csv, "--ca", world.ca_dir, "--kits", kits))
                phase(
                    "join", *[("agency", "join", kits / c, "--dir", work / "a" / c) for c in codes]
                )
                phase(
                    "approve",
                    (
                        "ca",
                        "approve",
                        kits,
                        "--ca",
                        world.ca_dir,
                        "--certs",
                        world.root / "certs",
                        "--directory",
                        world.directory_path,
                    ),
                )
                phase(
                    "provision",
                    (
                        "broker",
                        "provision",
                        "--directory",
                        world.directory_path,
                        "--ca-cert",
                        world.ca_dir / "ca.crt",
                        "--admin-url",
                        operator_url,
                        "--credentials-dir",
                        world.root / "operator-credentials",
                        "--amqp-port",
                        args.amqp_port,
                        "--vhost",
                        world.vhost,
                        "--login-prefix",
                        world.prefix,
                        "--kits",
                        kits,
                        "--publish",
                    ),
                )
                phase(
                    "finish",
                    *[("agency", "finish", kits / c, "--dir", work / "a" / c) for c in codes],
                )
            finally:
                sys.stdout = stdout
                devnull.close()
        finally:
            world.cleanup()
        say("baseline: bare management-API provisioning ...")
        base = baseline(Management.from_url(admin_url), n)
    total = sum(phases.values())
    result = {
        "agencies": n,
        "onboard_s": round(total, 1),
        "per_agency_ms": round(total / n * 1000, 1),
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "baseline_provision_s": round(base, 1),
        "provision_ratio": round(base / phases["provision"], 3),
        "ratio": round(base / total, 3),
    }
    print(
        json.dumps(result) if args.json else "\n".join(f"{k:>22}: {v}" for k, v in result.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
