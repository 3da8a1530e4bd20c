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
