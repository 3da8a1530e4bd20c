"""Envelope errors.

Every verification or decryption failure is one type, :class:`EnvelopeRefused`
(exit code 3), whose message names the failed check for the local operator.
Caller mistakes (bad arguments) are :class:`keys.errors.UsageError`.
"""

from __future__ import annotations

from keys.errors import Refused


class EnvelopeRefused(Refused):
    """The envelope failed a check: malformed, forged, expired, not for us, ..."""
