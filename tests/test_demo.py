"""``cipherpost demo``, the README's first command, as a new user runs it (real RabbitMQ)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EXE = str(Path(sys.executable).with_name("cipherpost"))


def test_the_demo_ends_well_without_a_passphrase_in_the_environment():
    """Seen: a new user (no CIPHERPOST_PASSPHRASE, no terminal) got "no passphrase" from the
    witness step, then an internal error (IndexError); the demo's throwaway keys need none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERPOST_")}
    done = subprocess.run(
        [EXE, "demo"], capture_output=True, text=True, env=env, timeout=600,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "demo complete: every step ended as expected" in out
    assert "passphrase" not in out and "internal error" not in out and "Traceback" not in out
