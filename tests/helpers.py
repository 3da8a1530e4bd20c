"""A throwaway world for tests: a CA, agencies with in-memory keys, a directory.

Agency keys are made in memory (no argon2 key files) so that a world of 100
agencies costs well under a second; the CA goes through the real code path.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import envelopes
from keys import agency, ca
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.levels import Level, Urgency

PASSPHRASE = b"test-passphrase"
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def commune_code(i: int) -> str:
    """Distinct valid codes under H41: 000.NN.MM.H41."""
    return f"000.{i // 99:02d}.{i % 99 + 1:02d}.H41"


@dataclass
class World:
    root: Path
    authority: ca.CertificateAuthority
    keys: dict[str, agency.AgencyKeys]
    certs: Path
    now: dt.datetime

    def directory(self, *, valid_days: int = 30, at: dt.datetime | None = None) -> Directory:
        data = build_directory(self.authority, self.certs, at or self.now, valid_days)
        return Directory.load(data, TrustState(None), now=self.now)

    def directory_bytes(self, *, valid_days: int = 30, at: dt.datetime | None = None) -> bytes:
        return build_directory(self.authority, self.certs, at or self.now, valid_days)

    def add(
        self,
        code: str,
        clearance: Level = Level.TOI_MAT,
        name: str | None = None,
        *,
        at: dt.datetime | None = None,
        valid_days: int = 365,
    ) -> agency.AgencyKeys:
        """Enroll ``code`` with certificates issued ``at`` (default: the world's now)."""
        keys = agency.AgencyKeys(
            code=AgencyCode.parse(code),
            name=name or f"Agency {code}",
            signing_key=Ed25519PrivateKey.generate(),
            encryption_key=X25519PrivateKey.generate(),
        )
        at = at or self.now
        request = agency.EnrollmentRequest.parse(agency.build_request(keys, at))
        ca.issue(self.authority, request, clearance, self.certs, at, valid_days=valid_days)
        self.keys[code] = keys
        return keys


def make_world(root: Path, agencies: dict[str, Level], now: dt.datetime = NOW) -> World:
    ca.init_ca(root / "ca", PASSPHRASE, now - dt.timedelta(days=1), "Test CA")
    world = World(root, ca.open_ca(root / "ca", PASSPHRASE), {}, root / "certs", now)
    world.certs.mkdir(parents=True, exist_ok=True)
    for code, clearance in agencies.items():
        world.add(code, clearance)
    return world


def seal_bytes(
    world: World,
    directory: Directory,
    sender: str,
    to: list[str],
    doc: bytes,
    *,
    level: Level = Level.MAT,
    segment_size: int = 1024,
    subject: str = "s",
    now: dt.datetime | None = None,
    metadata: envelopes.Metadata | None = None,
) -> bytes:
    out = io.BytesIO()
    envelopes.seal(
        io.BytesIO(doc),
        out,
        keys=world.keys[sender],
        directory=directory,
        to=[AgencyCode.parse(c) for c in to],
        level=level,
        size=len(doc),
        urgency=Urgency.KHAN,
        metadata=metadata or envelopes.Metadata(subject=subject, filename="doc.bin"),
        now=now or world.now,
        segment_size=segment_size,
    )
    return out.getvalue()


def open_bytes(
    world: World, directory: Directory, who: str, data: bytes
) -> tuple[bytes, envelopes.Opened]:
    out = io.BytesIO()
    opened = envelopes.open(
        io.BytesIO(data), out, keys=world.keys[who], directory=directory, now=world.now
    )
    return out.getvalue(), opened


def cli(*args: object) -> int:
    """``cipherpost ARGS...`` in-process; paths and numbers may be passed as they are."""
    from agents.cli import main

    return main([str(a) for a in args])
