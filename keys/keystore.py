"""Private keys at rest: argon2id-derived key + XSalsa20-Poly1305 (libsodium secretbox).

A secret file is ``msgpack([MAGIC, opslimit, memlimit, salt, box])`` where
``box`` is ``secretbox(key=argon2id(passphrase, salt), plaintext)``. Files are
written atomically with mode 0600 and refused on load if group or others can
read them (a key readable by others is a key already lost).
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import msgpack
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from keys.errors import CipherpostError, KeyStoreError, UsageError, WrongPassphrase

MAGIC = "cipherpost.secret/1"
PASSPHRASE_ENV = "CIPHERPOST_PASSPHRASE"  # noqa: S105 - a variable name
PASSPHRASE_FILE_ENV = "CIPHERPOST_PASSPHRASE_FILE"  # noqa: S105 - a variable name
# INTERACTIVE (64 MiB, 2 passes) keeps the desktop agent responsive; the
# limits below stop a crafted file from making us allocate without bound.
DEFAULT_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
DEFAULT_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
MAX_OPSLIMIT = 16
MAX_MEMLIMIT = 1 << 30
MAX_SECRET_FILE = 64 * 1024
MIN_NEW_PASSPHRASE = 8


def read_passphrase(
    *, confirm: bool = False, env: Mapping[str, str] | None = None, prompt: str = "Passphrase: "
) -> bytes:
    """The passphrase from ``CIPHERPOST_PASSPHRASE``, the file ``CIPHERPOST_PASSPHRASE_FILE``
    names (services: systemd's ``LoadCredential=``, a compose secret) or a terminal prompt.

    Never from a command-line argument: argv is visible to every local user.
    """
    environ = os.environ if env is None else env
    value = environ.get(PASSPHRASE_ENV)
    if value is None and environ.get(PASSPHRASE_FILE_ENV):
        value = read_passphrase_file(Path(environ[PASSPHRASE_FILE_ENV]))
    if value is None:
        if not sys.stdin.isatty():
            raise UsageError(
                f"no passphrase: set {PASSPHRASE_ENV} or run in a terminal to be prompted"
            )
        value = _prompt(prompt)
        if confirm and _prompt("Passphrase (again): ") != value:
            raise UsageError("the two passphrases differ")
    if not value:
        raise UsageError("empty passphrase refused")
    if confirm and len(value) < MIN_NEW_PASSPHRASE:
        raise UsageError(f"a new passphrase needs at least {MIN_NEW_PASSPHRASE} characters")
    return value.encode("utf-8")


def _prompt(text: str) -> str:
    try:
        return getpass.getpass(text)
    except EOFError:  # Ctrl-D at the prompt
        sys.stderr.write("\n")
        raise UsageError("no passphrase given (end of input at the prompt)") from None


T = TypeVar("T")
PROMPT_TRIES = 3


def unlock(
    open_with: Callable[[bytes], T],
    *,
    env: Mapping[str, str] | None = None,
    tries: int = PROMPT_TRIES,
    prompt: str = "Passphrase: ",
) -> T:
    """``open_with(passphrase)``, asking again on a terminal when the passphrase is wrong.

    A passphrase from the environment or a file gets one try: asking again could not change it.
    """
    environ = os.environ if env is None else env
    prompted = environ.get(PASSPHRASE_ENV) is None and not environ.get(PASSPHRASE_FILE_ENV)
    attempts = tries if prompted else 1
    for attempt in range(1, attempts + 1):
        try:
            return open_with(read_passphrase(env=environ, prompt=prompt))
        except WrongPassphrase:
            if attempt == attempts:
                raise
            sys.stderr.write(f"wrong passphrase, try again ({attempts - attempt} left)\n")
    raise AssertionError("unreachable")  # pragma: no cover


def read_passphrase_file(path: Path) -> str:
    """The first line of a passphrase file that no other user may read."""
    try:
        if path.stat().st_mode & 0o077:
            raise CipherpostError(
                f"{path}: a passphrase file must not be readable by others (chmod 600)"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CipherpostError(f"cannot read the passphrase file {path}: {e.strerror}") from e
    return lines[0] if lines else ""


def write_secret(
    path: Path,
    plaintext: bytes,
    passphrase: bytes,
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> None:
    """Encrypt ``plaintext`` under ``passphrase`` and write it to ``path`` (0600, atomic)."""
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    key = nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )
    box = bytes(nacl.secret.SecretBox(key).encrypt(plaintext))
    data = msgpack.packb([MAGIC, opslimit, memlimit, salt, box], use_bin_type=True)
    write_private_file(path, data)


def read_secret(path: Path, passphrase: bytes) -> bytes:
    """Decrypt a file written by :func:`write_secret`."""
    data = read_private_file(path, MAX_SECRET_FILE)
    try:
        magic, opslimit, memlimit, salt, box = msgpack.unpackb(data, raw=False, use_list=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise KeyStoreError(f"{path}: not a cipherpost secret file") from e
    if (
        magic != MAGIC
        or not isinstance(opslimit, int)
        or not isinstance(memlimit, int)
        or not 1 <= opslimit <= MAX_OPSLIMIT
        or not 8192 <= memlimit <= MAX_MEMLIMIT
        or not isinstance(salt, bytes)
        or len(salt) != nacl.pwhash.argon2id.SALTBYTES
        or not isinstance(box, bytes)
    ):
        raise KeyStoreError(f"{path}: not a cipherpost secret file")
    key = nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )
    try:
        return bytes(nacl.secret.SecretBox(key).decrypt(box))
    except nacl.exceptions.CryptoError:
        raise WrongPassphrase(f"{path}: wrong passphrase or damaged key file") from None


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_private_file(path: Path, limit: int) -> bytes:
    """Read a 0600 file, refusing one that group or others may read, or one over ``limit``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyStoreError(f"{path}: no such key file") from None
    if st.st_mode & 0o077:
        raise KeyStoreError(
            f"{path}: permissions {st.st_mode & 0o777:04o} are too open; run chmod 600 {path}"
        )
    if st.st_size > limit:
        raise KeyStoreError(f"{path}: larger than any cipherpost key file")
    return path.read_bytes()
