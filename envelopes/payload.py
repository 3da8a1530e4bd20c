"""The encrypted payload: private metadata first, then the document bytes.

``payload = u32be(len(meta)) ‖ meta ‖ document`` where ``meta`` is a msgpack
map of short strings (subject, file name, edXML-style fields) and, only when
present (so that a reader of the first v1 still opens everything else),
``signatures`` (officials' signatures, :mod:`envelopes.signatures`) and
``replaces`` (the hex id of the envelope this one corrects). Everything here
travels encrypted: sensitive metadata never goes in the header.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

import msgpack

from envelopes.errors import EnvelopeRefused, Reason
from keys.errors import UsageError

MAX_METADATA_BYTES = 64 * 1024
MAX_FIELD_LENGTH = 4096
MAX_SIGNATURES = 8
MAX_SIGNATURE_BYTES = 8 * 1024
_LEN = struct.Struct(">I")
_BASE_KEYS = {"subject", "filename", "fields"}
_ENVELOPE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Metadata:
    """Private document metadata, carried inside the encryption."""

    subject: str = ""
    filename: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    signatures: tuple[bytes, ...] = ()  # officials' signatures, verified by the recipient
    replaces: str = ""  # hex id of the envelope this document corrects

    def encode(self) -> bytes:
        """``u32be(len) ‖ msgpack`` prefix of the payload."""
        for value in (self.subject, self.filename, *self.fields.keys(), *self.fields.values()):
            if not isinstance(value, str) or len(value) > MAX_FIELD_LENGTH:
                raise UsageError(
                    f"metadata values must be text of at most {MAX_FIELD_LENGTH} chars"
                )
        if len(self.signatures) > MAX_SIGNATURES or any(
            not isinstance(s, bytes) or len(s) > MAX_SIGNATURE_BYTES for s in self.signatures
        ):
            raise UsageError(f"at most {MAX_SIGNATURES} officials' signatures per document")
        if self.replaces and not _ENVELOPE_ID.fullmatch(self.replaces):
            raise UsageError("replaces: a full envelope id (32 hex digits)")
        obj: dict[str, object] = {
            "subject": self.subject,
            "filename": self.filename,
            "fields": dict(self.fields),
        }
        if self.signatures:
            obj["signatures"] = list(self.signatures)
        if self.replaces:
            obj["replaces"] = self.replaces
        meta = msgpack.packb(obj, use_bin_type=True)
        if len(meta) > MAX_METADATA_BYTES:
            raise UsageError("document metadata is too large")
        return _LEN.pack(len(meta)) + bytes(meta)

    @classmethod
    def decode(cls, meta: bytes) -> Metadata:
        """Strictly decode the metadata map."""
        try:
            obj = msgpack.unpackb(
                meta,
                raw=False,
                strict_map_key=True,
                max_bin_len=MAX_SIGNATURE_BYTES,
                max_ext_len=0,
                use_list=False,
            )
            if not isinstance(obj, dict) or not _BASE_KEYS <= set(obj) <= {
                *_BASE_KEYS,
                "signatures",
                "replaces",
            }:
                raise ValueError("unexpected keys")
            signatures = obj.get("signatures", ())
            if (
                not isinstance(signatures, tuple)
                or len(signatures) > MAX_SIGNATURES
                or not all(isinstance(s, bytes) for s in signatures)
                or ("signatures" in obj and not signatures)
            ):
                raise ValueError("bad signatures")
            replaces = obj.get("replaces", "")
            if not isinstance(replaces, str) or (
                "replaces" in obj and not _ENVELOPE_ID.fullmatch(replaces)
            ):
                raise ValueError("bad replaces")
            subject, filename, fields = obj["subject"], obj["filename"], obj["fields"]
            if not isinstance(subject, str) or not isinstance(filename, str):
                raise ValueError("bad types")
            if not isinstance(fields, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
            ):
                raise ValueError("bad fields")
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
            raise EnvelopeRefused(Reason.PAYLOAD, "document metadata is malformed") from e
        return cls(subject, filename, fields, tuple(signatures), replaces)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (the signatures as verified are in ``Opened.signatures``)."""
        return {
            "subject": self.subject,
            "filename": self.filename,
            "fields": dict(self.fields),
            "replaces": self.replaces or None,
        }


class PayloadSplitter:
    """Feeds decrypted payload chunks in; metadata is peeled off, the document goes to ``dst``."""

    def __init__(self, dst: BinaryIO) -> None:
        self._dst = dst
        self._prefix = b""
        self._meta_len: int | None = None
        self.metadata: Metadata | None = None
        self.document_bytes = 0
        # What officials' signatures are checked against: made once the metadata says there
        # are any (it comes before the first document byte). An unsigned document is not
        # hashed: SHA-256 was a fifth of an open's CPU, and nothing would read the digest.
        self._hash: hashlib._Hash | None = None

    def feed(self, chunk: bytes) -> None:
        """Take the next plaintext chunk."""
        if self.metadata is None:
            self._prefix += chunk
            if self._meta_len is None and len(self._prefix) >= _LEN.size:
                (self._meta_len,) = _LEN.unpack_from(self._prefix)
                if self._meta_len > MAX_METADATA_BYTES:
                    raise EnvelopeRefused(Reason.PAYLOAD, "document metadata is too large")
            if self._meta_len is None or len(self._prefix) < _LEN.size + self._meta_len:
                return
            end = _LEN.size + self._meta_len
            self.metadata = Metadata.decode(self._prefix[_LEN.size : end])
            if self.metadata.signatures:
                self._hash = hashlib.sha256()
            chunk, self._prefix = self._prefix[end:], b""
        if chunk:
            self._dst.write(chunk)
            if self._hash is not None:
                self._hash.update(chunk)
            self.document_bytes += len(chunk)

    @property
    def document_digest(self) -> bytes:
        """SHA-256 of the document bytes so far; empty for a document that carries no
        official's signature (the only thing checked against it)."""
        return b"" if self._hash is None else self._hash.digest()

    def finish(self) -> Metadata:
        """The metadata, once the whole payload went through."""
        if self.metadata is None:
            raise EnvelopeRefused(Reason.PAYLOAD, "payload ends before its metadata")
        return self.metadata
