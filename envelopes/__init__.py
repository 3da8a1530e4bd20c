"""Envelope format v1: sign and encrypt a document to N agencies; verify; open.

The safe recipe is these three calls; the primitives live in
:mod:`envelopes._crypto`. See ``docs/envelope-v1.md`` for the byte layout.
"""

from envelopes.checking import (
    CheckedHeader,
    EnvelopeInfo,
    Opened,
    check_header,
    check_segment,
    open_envelope,
    open_to_path,
    verify,
)
from envelopes.errors import EnvelopeRefused
from envelopes.payload import Metadata
from envelopes.sealing import Sealed, seal

open = open_envelope

__all__ = [
    "CheckedHeader",
    "EnvelopeInfo",
    "EnvelopeRefused",
    "Metadata",
    "Opened",
    "Sealed",
    "check_header",
    "check_segment",
    "open",
    "open_envelope",
    "open_to_path",
    "seal",
    "verify",
]
