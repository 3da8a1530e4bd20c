"""The encrypted payload: private metadata first, then the document bytes.

``payload = u32be(len(meta)) ‖ meta ‖ document`` where ``meta`` is a msgpack
map of short strings (subject, file name, edXML-style fields). Everything
here travels encrypted: sensitive metadata never goes in the header.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

import msgpack

from envelopes.errors import EnvelopeRefused, Reason
from keys.errors import UsageError

MAX_METADATA_BYTES = 64 * 1024
MAX_FIELD_LENGTH = 4096
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class Metadata:
    """Private document metadata, carried inside the encryption."""

    subject: str = ""
    filename: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """``u32be(len) ‖ msgpack`` prefix of the payload."""
        for value in (self.subject, self.filename, *self.fields.keys(), *self.fields.values()):
            if not isinstance(value, str) or len(value) > MAX_FIELD_LENGTH:
                raise UsageError(
                    f"metadata values must be text of at most {MAX_FIELD_LENGTH} chars"
                )
        meta = msgpack.packb(
            {"subject": self.subject, "filename": self.filename, "fields": dict(self.fields)},
            use_bin_type=True,
        )
        if len(meta) > MAX_METADATA_BYTES:
            raise UsageError("document metadata is too large")
        return _LEN.pack(len(meta)) + bytes(meta)

    @classmethod
    def decode(cls, meta: bytes) -> Metadata:
        """Strictly decode the metadata map."""
        try:
            obj = msgpack.unpackb(
                meta, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0
            )
            if not isinstance(obj, dict) or set(obj) != {"subject", "filename", "fields"}:
                raise ValueError("unexpected keys")
            subject, filename, fields = obj["subject"], obj["filename"], obj["fields"]
            if not isinstance(subject, str) or not isinstance(filename, str):
                raise ValueError("bad types")
            if not isinstance(fields, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
            ):
                raise ValueError("bad fields")
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as e:
            raise EnvelopeRefused(Reason.PAYLOAD, "document metadata is malformed") from e
        return cls(subject=subject, filename=filename, fields=fields)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {"subject": self.subject, "filename": self.filename, "fields": dict(self.fields)}


class PayloadSplitter:
    """Feeds decrypted payload chunks in; metadata is peeled off, the document goes to ``dst``."""

    def __init__(self, dst: BinaryIO) -> None:
        self._dst = dst
        self._prefix = b""
        self._meta_len: int | None = None
        self.metadata: Metadata | None = None
        self.document_bytes = 0

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
            chunk, self._prefix = self._prefix[end:], b""
        if chunk:
            self._dst.write(chunk)
            self.document_bytes += len(chunk)

    def finish(self) -> Metadata:
        """The metadata, once the whole payload went through."""
        if self.metadata is None:
            raise EnvelopeRefused(Reason.PAYLOAD, "payload ends before its metadata")
        return self.metadata
