"""CPU seconds per process from ``/proc``, for benchmarks on a shared machine.

Wall-clock on a machine shared with other work swings by 3x; the CPU time a
process used (user + system, every thread) for a known amount of work does
not. Benches snapshot every process involved (theirs, ours and the RabbitMQ
node) before and after a phase and report CPU milliseconds per unit beside
the wall-clock ratio.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, all its threads, in seconds (0.0 if it is gone); for a
    comma-separated list of pids (the nodes of a cluster), their sum."""
    if isinstance(pid, str) and "," in pid:
        return sum(cpu_seconds(p) for p in pid.split(","))
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and ')'
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of proc(5)


def vm_hwm_mib(pid: int | str = "self") -> float:
    """Peak resident set size of a process, MiB (VmHWM; 0.0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def broker_pid(port: int = 5672) -> int | None:
    """The pid of the RabbitMQ node listening on ``port`` (beam.smp), if it can be found."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        ).stdout
        for part in out.split("pid=")[1:]:
            return int(part.split(",")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        out = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True).stdout
        return int(out.split()[0]) if out.split() else None
    except (OSError, ValueError):
        return None


class Meter:
    """CPU seconds of named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int | str | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> Meter:
        self._start = {k: cpu_seconds(p) for k, p in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.used = {k: cpu_seconds(p) - self._start[k] for k, p in self.pids.items()}
        return self.used
