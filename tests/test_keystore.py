import os
import stat

import pytest

from keys.errors import KeyStoreError, UsageError
from keys.keystore import read_passphrase, read_secret, write_secret


def test_roundtrip_and_mode(tmp_path):
    path = tmp_path / "k.sec"
    write_secret(path, b"secret bytes", b"pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"secret bytes" not in path.read_bytes()
    assert read_secret(path, b"pw") == b"secret bytes"


def test_wrong_passphrase(tmp_path):
    path = tmp_path / "k.sec"
    write_secret(path, b"secret", b"pw")
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        read_secret(path, b"other")


def test_too_open_permissions_refused(tmp_path):
    path = tmp_path / "k.sec"
    write_secret(path, b"secret", b"pw")
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError, match="too open"):
        read_secret(path, b"pw")


def test_damaged_file(tmp_path):
    path = tmp_path / "k.sec"
    write_secret(path, b"secret", b"pw")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(KeyStoreError):
        read_secret(path, b"pw")
    path.write_bytes(b"\x00not msgpack")
    with pytest.raises(KeyStoreError, match="not a cipherpost secret file"):
        read_secret(path, b"pw")


def test_passphrase_from_env_only():
    assert read_passphrase(env={"CIPHERPOST_PASSPHRASE": "abc"}) == b"abc"
    with pytest.raises(UsageError, match="empty passphrase"):
        read_passphrase(env={"CIPHERPOST_PASSPHRASE": ""})
