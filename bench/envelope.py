"""Envelope seal, verify and open against fair floors measured in the same run, CPU and wall.

    .venv/bin/python bench/envelope.py [--json] [--mib 256] [--rss-mib 1024] [--repeat 3]

Each operation of ours is compared with the least work it has to do, done
with the same primitives, the same segment size (1 MiB), file to file, and
the same number of threads as ours:

- seal: read, secretstream push, SHA-256 + Ed25519 signature per segment,
  write, fsync (hashing, signing and writing in a second thread, as ours);
- verify: read, SHA-256 + Ed25519 verification per segment (one thread);
- open: read, SHA-256 + Ed25519 verification per segment (in a second
  thread, as ours), secretstream pull, write, fsync.

Every figure is the best of ``--repeat`` runs, floor and ours interleaved.
Ratios are floor / ours, for CPU seconds (every thread of the process, from
``time.process_time``: the stable figure on a shared machine) and for
wall-clock. Peak RSS is measured in a child process per operation on a
``--rss-mib`` file (1 GiB by default).
"""
# Oversized: main() runs the benchmark's phases top to bottom, each printed as it ends

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
import nacl.bindings as sodium  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

import envelopes  # noqa: E402
from envelopes._pipeline import WriteBehind, prefetch  # noqa: E402
from envelopes.frames import FrameReader, parse_header_frame  # noqa: E402
from keys.agency import AgencyKeys, raw_private  # noqa: E402
from keys.codes import AgencyCode  # noqa: E402
from keys.directory import Directory, TrustState  # noqa: E402
from keys.levels import Level  # noqa: E402
from tests.helpers import commune_code, make_world  # noqa: E402

CHUNK = 1024 * 1024
SENDER = "000.00.00.H41"
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE


Timing = tuple[float, float]  # (wall seconds, CPU seconds)


def _timed(run: Callable[[], object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


class Floors:
    """The least each operation must do (see the module docstring), on the same files."""

    def __init__(self) -> None:
        self.key = sodium.crypto_secretstream_xchacha20poly1305_keygen()
        self.signer = Ed25519PrivateKey.generate()
        self.public = self.signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.signatures: list[bytes] = []
        self.stream_header = b""

    def seal(self, src: Path, dst: Path) -> Timing:
        dst.unlink(missing_ok=True)

        def run() -> None:
            state = sodium.crypto_secretstream_xchacha20poly1305_state()
            self.stream_header = sodium.crypto_secretstream_xchacha20poly1305_init_push(
                state, self.key
            )
            signatures: list[bytes] = []
            size = src.stat().st_size
            with src.open("rb") as fin, dst.open("wb") as fout:

                def emit(ct: bytes) -> None:
                    signatures.append(self.signer.sign(hashlib.sha256(ct).digest()))
                    fout.write(ct)

                with WriteBehind(emit) as writer:
                    for off in range(0, size, CHUNK):
                        last = off + CHUNK >= size
                        writer.put(
                            sodium.crypto_secretstream_xchacha20poly1305_push(
                                state, fin.read(CHUNK), None, TAG_FINAL if last else TAG_MESSAGE
                            )
                        )
                fout.flush()
                os.fsync(fout.fileno())
            self.signatures = signatures

        return _timed(run)

    def _checked(self, src: Path) -> Iterator[bytes]:
        with src.open("rb") as fin:
            for signature in self.signatures:
                ct = fin.read(CHUNK + ABYTES)
                message = signature + hashlib.sha256(ct).digest()
                sodium.crypto_sign_open(message, self.public)
                yield ct

    def verify(self, src: Path) -> Timing:
        return _timed(lambda: sum(1 for _ in self._checked(src)))

    def open(self, src: Path, out: Path) -> Timing:
        out.unlink(missing_ok=True)

        def run() -> None:
            state = sodium.crypto_secretstream_xchacha20poly1305_state()
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(
                state, self.stream_header, self.key
            )
            with out.open("wb") as fout:
                pull = sodium.crypto_secretstream_xchacha20poly1305_pull
                for ct in prefetch(self._checked(src)):
                    fout.write(pull(state, ct, None)[0])
                fout.flush()
                os.fsync(fout.fileno())

        return _timed(run)


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        agencies = {SENDER: Level.TOI_MAT, **{commune_code(i): Level.TOI_MAT for i in range(75)}}
        self.world = make_world(work / "world", agencies)
        self.directory_bytes = self.world.directory_bytes(valid_days=30)
        self.directory = Directory.load(self.directory_bytes, TrustState(None), now=self.world.now)

    def seal(self, src: Path, dst: Path, n: int) -> Timing:
        dst.unlink(missing_ok=True)
        return _timed(lambda: self._seal(src, dst, n))

    def _seal(self, src: Path, dst: Path, n: int) -> None:
        with src.open("rb") as fin, dst.open("wb") as fout:
            envelopes.seal(
                fin,
                fout,
                keys=self.world.keys[SENDER],
                directory=self.directory,
                to=[AgencyCode.parse(commune_code(i)) for i in range(n)],
                level=Level.MAT,
                size=src.stat().st_size,
                now=self.world.now,
            )
            fout.flush()
            os.fsync(fout.fileno())

    def verify(self, src: Path) -> Timing:
        def run() -> None:
            with src.open("rb") as fin:
                envelopes.verify(fin, directory=self.directory, now=self.world.now)

        return _timed(run)

    def open(self, src: Path, out: Path, who: str) -> Timing:
        out.unlink(missing_ok=True)

        def run() -> None:
            keys, now = self.world.keys[who], self.world.now
            with src.open("rb") as fin:
                envelopes.open_to_path(fin, out, keys=keys, directory=self.directory, now=now)

        return _timed(run)

    def header_bytes(self, envelope: Path) -> int:
        with envelope.open("rb") as f:
            return len(parse_header_frame(FrameReader(f).next())[0])  # type: ignore[arg-type]


def make_file(path: Path, mib: int) -> None:
    block = os.urandom(CHUNK)
    with path.open("wb") as f:
        for i in range(mib):
            f.write(hashlib.sha256(i.to_bytes(8, "big")).digest() + block[32:])


def rss_child(work: Path, op: str) -> float:
    """Run one operation in a fresh interpreter; return its peak RSS in MiB."""
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's size.
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        f"from bench.envelope import _rss_op; _rss_op({str(work)!r}, {op!r}); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def _save_world(bench: Bench, path: Path) -> None:
    keys = {
        code: [raw_private(k.signing_key), raw_private(k.encryption_key)]
        for code, k in bench.world.keys.items()
        if code in (SENDER, commune_code(0))
    }
    path.write_bytes(
        msgpack.packb(
            {"directory": bench.directory_bytes, "now": bench.world.now.timestamp(), "keys": keys}
        )
    )


def _rss_op(work: str, op: str) -> None:
    """Child side of :func:`rss_child`: the parent's world, loaded from ``world.msgpack``."""
    w = Path(work)
    saved = msgpack.unpackb((w / "world.msgpack").read_bytes())
    now = dt.datetime.fromtimestamp(saved["now"], dt.UTC)
    directory = Directory.load(saved["directory"], TrustState(None), now=now)
    keys = {
        code: AgencyKeys(
            AgencyCode.parse(code),
            code,
            Ed25519PrivateKey.from_private_bytes(s),
            X25519PrivateKey.from_private_bytes(e),
        )
        for code, (s, e) in saved["keys"].items()
    }
    src, env, out = w / "rss.bin", w / "rss.cpe", w / "rss.out"
    if op == "seal":
        with src.open("rb") as fin, env.open("wb") as fout:
            envelopes.seal(
                fin,
                fout,
                keys=keys[SENDER],
                directory=directory,
                to=[AgencyCode.parse(commune_code(0))],
                level=Level.MAT,
                size=src.stat().st_size,
                now=now,
            )
    elif op == "verify":
        with env.open("rb") as fin:
            envelopes.verify(fin, directory=directory, now=now)
    else:
        with env.open("rb") as fin:
            envelopes.open_to_path(
                fin, out, keys=keys[commune_code(0)], directory=directory, now=now
            )
        out.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--mib", type=int, default=256, help="document size (default 256)")
    parser.add_argument("--rss-mib", type=int, default=1024, help="file for peak RSS (1024)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where the files go (default /dev/shm: RAM, so the VM's disk is not measured)",
    )
    args = parser.parse_args()

    log = (lambda *a: None) if args.json else print
    with tempfile.TemporaryDirectory(prefix="cp-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        bench = Bench(work)
        src = work / "doc.bin"
        make_file(src, args.mib)
        size_mb = args.mib * CHUNK / 1e6
        best: dict[str, list[float]] = {}  # name -> [wall, cpu], each the best seen

        def record(name: str, timing: Timing) -> None:
            seen = best.setdefault(name, [float("inf"), float("inf")])
            best[name] = [min(seen[0], timing[0]), min(seen[1], timing[1])]

        floors = Floors()
        for round_ in range(args.repeat + 1):
            if round_ == 0:  # warm-up: first-touch page faults on a fresh VM are not ours
                floors.seal(src, work / "floor.ct")
                bench.seal(src, work / "warm.cpe", 1)
                bench.open(work / "warm.cpe", work / "warm.bin", commune_code(0))
                (work / "warm.bin").unlink()
                continue
            record("floor_seal", floors.seal(src, work / "floor.ct"))
            record("floor_verify", floors.verify(work / "floor.ct"))
            record("floor_open", floors.open(work / "floor.ct", work / "floor.out"))
            (work / "floor.out").unlink()
            for n in (1, 75):
                env = work / f"doc-{n}.cpe"
                record(f"seal_{n}", bench.seal(src, env, n))
                record(f"verify_{n}", bench.verify(env))
                record(f"open_{n}", bench.open(env, work / f"out-{n}.bin", commune_code(n - 1)))
            log(
                f"round {round_}/{args.repeat}: "
                + ", ".join(f"{k} {size_mb / v[0]:,.0f} MB/s" for k, v in best.items())
            )
        assert (work / "out-75.bin").read_bytes() == src.read_bytes()
        header_75 = bench.header_bytes(work / "doc-75.cpe")
        for p in work.glob("*.cpe"):
            p.unlink()
        for p in work.glob("out-*.bin"):
            p.unlink()
        src.unlink()

        # Peak RSS on a bigger file, one child process per operation.
        rss_src = work / "rss.bin"
        make_file(rss_src, args.rss_mib)
        log(f"peak RSS on a {args.rss_mib} MiB file ...")
        _save_world(bench, work / "world.msgpack")
        rss = {op: rss_child(work, op) for op in ("seal", "verify", "open")}

    result: dict[str, object] = {"file_mib": args.mib}
    for op in ("seal", "verify", "open"):
        floor_wall, floor_cpu = best[f"floor_{op}"]
        result[f"{op}_mb_s"] = round(size_mb / best[f"{op}_1"][0], 1)
        result[f"{op}_floor_mb_s"] = round(size_mb / floor_wall, 1)
        result[f"{op}_cpu_ms_per_mib"] = round(best[f"{op}_1"][1] * 1000 / args.mib, 3)
        result[f"{op}_floor_cpu_ms_per_mib"] = round(floor_cpu * 1000 / args.mib, 3)
        for n in (1, 75):
            tail = "" if n == 1 else "_75"
            result[f"{op}_cpu_ratio{tail}"] = round(floor_cpu / best[f"{op}_{n}"][1], 3)
            result[f"{op}_ratio{tail}"] = round(floor_wall / best[f"{op}_{n}"][0], 3)
    result.update(
        {
            "peak_rss_mib": round(max(rss.values()), 1),
            "peak_rss_by_op_mib": {k: round(v, 1) for k, v in rss.items()},
            "rss_file_mib": args.rss_mib,
            "header_bytes_75": header_75,
            "repeat": args.repeat,
            "files_on": str(args.dir or tempfile.gettempdir()),
            "cpus": os.cpu_count(),
        }
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
