"""The one error tree of cipherpost.

Every failure the project raises on purpose is a :class:`CipherpostError`.
Library exceptions (msgpack, nacl, cryptography, pika) are translated into
these with ``raise ... from e`` and never leak past a public function. The
CLI catches the base class once and maps it to a documented exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class CipherpostError(Exception):
    """Base of every error cipherpost raises on purpose (exit code 1)."""

    exit_code = EXIT_ERROR


class UsageError(CipherpostError):
    """The caller asked for something malformed: bad code, level, duration (exit 2)."""

    exit_code = EXIT_USAGE


class Refused(CipherpostError):
    """Something was checked and refused: envelope, party, directory, request (exit 3).

    On the verify/open path the message names the failed check for the local
    operator; nothing finer-grained (offsets, expected values) is exposed.
    """

    exit_code = EXIT_REFUSED


class KeyStoreError(CipherpostError):
    """A private key file could not be read: wrong passphrase, damaged, wrong mode."""


class WrongPassphrase(KeyStoreError):
    """The key file is well formed but does not open with this passphrase (or was altered)."""


MAX_MESSAGE = 200


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` made safe to log, record or sign: at most ``limit`` characters, one line.

    Error messages may quote bytes an attacker chose (a version field, a code);
    unbounded they would grow logs and audit leaves without limit. Control and
    other non-printable characters are escaped (``\\x07``), so one message is
    always one line and cannot forge another.
    """
    out: list[str] = []
    size = 0
    for ch in text:
        piece = ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        if size + len(piece) > limit:
            while out and size > limit - 1:  # room for the ellipsis
                size -= len(out.pop())
            out.append("…")
            break
        size += len(piece)
        out.append(piece)
    return "".join(out)
