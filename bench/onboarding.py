"""Time to onboard N agencies with the commands of docs/onboarding.md, against a raw baseline.

    .venv/bin/python bench/onboarding.py [--json] [--agencies 75] [--officials 1513]

Ours: ``agency import`` (cipher department), ``agency join`` for every agency
(keys made and encrypted with argon2id, as on each agency's machine, here one
after the other), ``ca approve``, ``broker provision --kits --publish``,
``agency finish`` for every agency: the whole path, in its own vhost.
Then the officials (issue 14): each official's key and request made as on their own
machine (not timed: one person, one machine each), put into the kits, and the
cipher department's one command ``agency import --officials OFFICIALS.csv``
(timed) certifies all of them. The directory's size is reported as it is (the
officials' certificates travel with their signatures; only revocations are in
its CRL), after revoking one official per commune, and as it would be if it
carried every official's certificate (the alternative not taken).
Baseline, same run, same broker: the bare minimum any provisioning must do
for N agencies (management API: create the user, set its permissions,
declare its quorum inbox and bind it), no keys, no certificates, no checks.
"""
# Oversized: main() runs the benchmark's phases top to bottom, each printed as it ends

from __future__ import annotations

import argparse
import datetime as dt
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

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from agents import logs  # noqa: E402
from agents.world import PASSPHRASE, build_world  # noqa: E402
from broker.management import Management  # noqa: E402
from broker.topology import private_name  # noqa: E402
from keys import ca  # noqa: E402
from keys.codes import AgencyCode  # noqa: E402
from keys.directory import build_directory  # noqa: E402
from keys.levels import Level  # noqa: E402
from keys.officials import build_request  # noqa: E402
from tests.helpers import cli  # noqa: E402

ADMIN_URL = "http://guest:guest@127.0.0.1:15672"
PROVINCE = "000.00.00.H41"


def code(i: int) -> str:
    return f"000.{i % 100:02d}.{i // 100 + 10:02d}.H41"


TITLES = ("Chủ tịch UBND xã", "Phó Chủ tịch UBND xã", "Trưởng phòng", "Công chức Văn phòng")


def official_requests(kits: Path, codes: list[str], total: int) -> Path:
    """Each official's request in its commune's kit (as made on their own machine), and the
    province's CSV of who holds which office. Returns the CSV."""
    now = dt.datetime.now(dt.UTC)
    rows = ["code,name,title,position"]
    for i in range(total):
        code = codes[i % len(codes)]
        name, title = f"Nguyễn Văn {i:04d}", TITLES[(i // len(codes)) % len(TITLES)]
        position = f"P{i // len(codes):02d}"
        folder = kits / code / "officials"
        folder.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        (folder / f"{i:04d}.req").write_bytes(
            build_request(key, AgencyCode.parse(code), name, title, position, now)
        )
        rows.append(f"{code},{name},{title},{position}")
    csv = kits.parent / "officials.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv


def directory_sizes(ca_dir: Path, certs_dir: Path, kits: Path, codes: list[str]) -> dict[str, int]:
    """The directory as built, after one official per commune is revoked, and as it would be
    with every official's certificate inside."""
    authority = ca.open_ca(ca_dir, PASSPHRASE)
    now = dt.datetime.now(dt.UTC)
    before = len(build_directory(authority, certs_dir, now, 7))
    certs = sorted(kits.glob("*/officials/*.crt"))
    ders = [
        len(x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(serialization.Encoding.DER))
        for p in certs
    ]
    state = authority.load_state()["officials"]
    by_code: dict[str, str] = {}
    for kid, o in state.items():
        by_code.setdefault(o["code"], kid)
    for code in codes:
        ca.revoke_official(authority, by_code[code], "left office (merger)", now)
    after = len(build_directory(authority, certs_dir, now, 7))
    per_agency = max(1, len(certs) // max(1, len(codes)))
    return {
        "directory_bytes": before,
        "directory_bytes_after_revoking_per_commune": after,
        "crl_bytes_per_revoked_official": round((after - before) / len(codes)),
        "official_certificate_bytes": round(sum(ders) / max(1, len(ders))),
        "directory_bytes_if_it_carried_officials": before + sum(d + 3 for d in ders),
        "per_agency_officials_list_bytes": per_agency * (round(sum(ders) / max(1, len(ders))) + 3)
        + 64
        + 100,
    }


def officials_only(n: int, officials: int, say: object) -> dict[str, object]:
    """Without a broker: a CA and ``n`` certified communes (keys in memory), then the timed
    ``agency import --officials`` of ``officials`` requests, and the directory sizes."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from keys import agency

    assert callable(say)
    with tempfile.TemporaryDirectory(prefix="cp-bench-off-") as tmp:
        work = Path(tmp)
        os.environ["CIPHERPOST_STATE_DIR"] = str(work / "state")
        now = dt.datetime.now(dt.UTC)
        ca.init_ca(work / "ca", PASSPHRASE, now, "Bench CA")
        authority = ca.open_ca(work / "ca", PASSPHRASE)
        codes = [code(i) for i in range(n)]
        for c in codes:
            keys = agency.AgencyKeys(
                AgencyCode.parse(c), f"UBND xã {c}", Ed25519PrivateKey.generate(),
                X25519PrivateKey.generate(),
            )  # fmt: skip
            request = agency.EnrollmentRequest.parse(agency.build_request(keys, now))
            ca.issue(authority, request, Level.MAT, work / "certs", now)
        kits = work / "kits"
        say(f"  {officials} officials enroll on their own machines (not timed)")
        csv = official_requests(kits, codes, officials)
        start_cpu, start = time.process_time(), time.perf_counter()
        if cli("agency", "import", "--officials", csv, "--ca", work / "ca", "--kits", kits) != 0:
            raise SystemExit("agency import --officials failed")
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        say(f"  officials: {wall:.1f} s")
        return {
            "agencies": n,
            "officials": officials,
            "officials_import_s": round(wall, 2),
            "officials_import_cpu_s": round(cpu, 2),
            "per_official_ms": round(wall / officials * 1000, 2),
            **directory_sizes(work / "ca", work / "certs", kits, codes),
        }


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
        "--officials", type=int, default=1513, help="officials across the agencies (0: none)"
    )
    parser.add_argument(
        "--admin-url", default=ADMIN_URL, help="management API (a throwaway node for 1,000+)"
    )
    parser.add_argument("--amqp-port", type=int, default=5672)
    parser.add_argument(
        "--officials-only",
        action="store_true",
        help="only the officials' import and the directory sizes (no broker needed)",
    )
    args = parser.parse_args()
    if args.officials_only:
        logs.configure(json_lines=False, level=logging.ERROR)
        os.environ["CIPHERPOST_PASSPHRASE"] = PASSPHRASE.decode()
        quiet = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
        devnull = open(os.devnull, "w")
        stdout, sys.stdout = sys.stdout, devnull
        try:
            only = officials_only(args.agencies, args.officials, quiet)
        finally:
            sys.stdout = stdout
            devnull.close()
        print(
            json.dumps(only) if args.json else "\n".join(f"{k:>42}: {v}" for k, v in only.items())
        )
        return 0
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
    sizes: dict[str, int] = {}
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
                if args.officials:
                    say(f"  {args.officials} officials enroll on their own machines (not timed)")
                    officials_csv = official_requests(kits, codes, args.officials)
                    phase(
                        "officials",
                        ("agency", "import", "--officials", officials_csv, "--ca", world.ca_dir,
                         "--kits", kits),
                    )  # fmt: skip
                    sizes = directory_sizes(world.ca_dir, world.root / "certs", kits, codes)
            finally:
                sys.stdout = stdout
                devnull.close()
        finally:
            world.cleanup()
        say("baseline: bare management-API provisioning ...")
        base = baseline(Management.from_url(admin_url), n)
    officials_s = phases.pop("officials", None)
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
    if officials_s is not None:
        result.update(
            {
                "officials": args.officials,
                "officials_import_s": round(officials_s, 2),
                "per_official_ms": round(officials_s / args.officials * 1000, 2),
                **sizes,
            }
        )
    print(
        json.dumps(result) if args.json else "\n".join(f"{k:>22}: {v}" for k, v in result.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
