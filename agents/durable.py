"""Writing the agent's files safely: created new (never an existing file, never through a
link), written through a temporary file and a rename, fsynced; placed into the inbox under
a free, harmless name (a sender chooses the name)."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from keys.errors import CipherpostError

_SAFE_NAME = re.compile(r"[^\w.\- ]+")

MAX_NAME_BYTES = 200  # a file name is at most 255 bytes: room for "-9999" and ".json"


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (never an existing file, never through a link) holding ``data``; the
    caller fsyncs it. Removed again if the write fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_durably(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write via a temporary file and a rename, in the agent's own folder (the spool);
    ``sync=False``: the caller fsyncs later. Never follows a link planted in its place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so the renames in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place(inbox: Path, name: str, opened: Path, sidecar: dict[str, Any]) -> tuple[Path, Path]:
    """Link the opened document into the inbox and create its sidecar beside it, under names
    free for both: nothing in the inbox is ever overwritten or written through a link (a
    co-recipient can choose a name and an id prefix; anyone with the folder can plant links)."""
    stem, dot, suffix = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    for i in range(10_000):
        candidate = inbox / (name if i == 0 else f"{stem}-{i}{dot}{suffix}")
        meta = candidate.with_name(candidate.name + ".json")
        if candidate.exists() or candidate.is_symlink() or meta.exists() or meta.is_symlink():
            continue
        try:
            os.link(opened, candidate)  # fails if it appeared meanwhile: never clobber
        except FileExistsError:
            continue
        try:
            fd = os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            candidate.unlink()
            continue
        with os.fdopen(fd, "wb") as f:
            data = {**sidecar, "document": candidate.name}
            f.write((json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode())
        return candidate, meta
    raise CipherpostError(f"too many files named like {name} in {inbox}")


def safe_filename(name: str) -> str:
    """A sender-chosen file name, made harmless: no folders, no control characters, and at
    most :data:`MAX_NAME_BYTES` bytes of UTF-8 (whole characters; the extension kept)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE_NAME.sub("_", base).strip(". ")
    if len(base.encode()) <= MAX_NAME_BYTES:
        return base
    stem, dot, suffix = base.rpartition(".")
    if not dot or len(suffix.encode()) > 16:
        stem, dot, suffix = base, "", ""
    budget = MAX_NAME_BYTES - len((dot + suffix).encode())
    cut = stem.encode()[:budget].decode(errors="ignore").rstrip(". ")
    return cut + dot + suffix
