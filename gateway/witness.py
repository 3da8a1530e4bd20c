"""The cipher department's witness: keep every gateway's checkpoints and prove they agree.

Each checkpoint (a checkpoint file with consistency proofs from the gateway's
earlier checkpoints, as published on ``cp.audit.checkpoints``) is checked
against the CA, then against the largest checkpoint the witness already holds
for that log with a consistency proof. A fork, a rollback, a truncation or a
bad signature raises :class:`WitnessAlarm` naming both checkpoints. The store
is a folder: ``ca.crt`` and, per log, ``<size>.checkpoint.json`` files (the
format ``cipherpost audit verify --checkpoints`` reads).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import merkle
from gateway.checkpoint import Checkpoint, cosign, read_checkpoint_file
from gateway.ending import FILE_NAME as ENDING_FILE
from gateway.ending import Ending, read_ending
from keys.ca import load_ca_certificate
from keys.errors import CipherpostError, Refused
from keys.keystore import write_private_file

CA_FILE = "ca.crt"


class WitnessAlarm(Refused):
    """The log is not append-only as seen by the witness (exit code 3)."""


@dataclass(frozen=True)
class Held:
    checkpoint: Checkpoint
    proofs: dict[int, list[bytes]]  # old size -> consistency proof to this checkpoint


def _proofs(doc: dict[str, object]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    items = doc.get("consistency", [])
    if not isinstance(items, list):
        raise Refused("checkpoint message: consistency must be a list")
    for item in items:
        try:
            out[int(item["old_size"])] = [base64.b64decode(h, validate=True) for h in item["proof"]]
        except (KeyError, TypeError, ValueError):
            raise Refused("checkpoint message: malformed consistency proof") from None
    return out


class Witness:
    """A witness store in ``folder``; pins the CA certificate on first use."""

    def __init__(
        self,
        folder: Path,
        ca_cert: Path | None = None,
        signer: tuple[Ed25519PrivateKey, bytes] | None = None,
    ) -> None:
        """``signer``: the witness's key and its CA certificate (PEM, role ``witness``): each
        checkpoint it accepts is stored cosigned, so that an export proves it was witnessed."""
        self.folder = folder
        self.signer = signer
        pinned = folder / CA_FILE
        if ca_cert is None:
            if not pinned.exists():
                raise CipherpostError(f"{folder} is not a witness store yet: give --ca CA_CERT")
            self.ca = load_ca_certificate(pinned)
        else:
            self.ca = load_ca_certificate(ca_cert)
            if pinned.exists() and load_ca_certificate(pinned) != self.ca:
                raise CipherpostError(f"{folder} already pins another CA certificate")
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not pinned.exists():
                pinned.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        self._logs: dict[str, list[Held]] = {}
        for path in sorted(folder.glob("*/*.checkpoint.json")):
            held = self._parse(path.read_bytes())
            self._logs.setdefault(held.checkpoint.origin, []).append(held)
        self.endings: dict[str, Ending] = {}
        for path in sorted(folder.glob(f"*/{ENDING_FILE}")):
            ending = read_ending(path.read_bytes(), self.ca)
            self.endings[ending.origin] = ending
        # origin -> monotonic time its last checkpoint arrived (held logs: from now on)
        self.last_seen: dict[str, float] = dict.fromkeys(self._logs, time.monotonic())

    @property
    def certificate(self) -> x509.Certificate:
        return self.ca

    def _parse(self, data: bytes) -> Held:
        checked = read_checkpoint_file(data, self.ca)
        return Held(checked.checkpoint, _proofs(json.loads(data)))

    def held(self, origin: str) -> list[Checkpoint]:
        return sorted((h.checkpoint for h in self._logs.get(origin, [])), key=lambda c: c.size)

    def observe(self, data: bytes) -> tuple[Checkpoint, bool]:
        """Check one published checkpoint; returns it and whether it was new."""
        try:
            new = self._parse(data)
        except Refused as e:
            raise WitnessAlarm(f"checkpoint refused: {e}") from None
        x = new.checkpoint
        self.last_seen[x.origin] = time.monotonic()
        ended = self.endings.get(x.origin)
        if ended is not None and x.size > ended.size:
            raise WitnessAlarm(
                f"{x.describe()} after the end of its log ({ended.describe()}): an ended log is"
                " being written again (a restored copy run under its old log id?)"
            )
        held = self._logs.get(x.origin, [])
        if held:
            latest = max(held, key=lambda h: h.checkpoint.size).checkpoint
            if x.size == latest.size:
                if x.root != latest.root:
                    raise WitnessAlarm(f"fork: {x.describe()} and {latest.describe()}")
                return x, False
            if x.size > latest.size:
                self._consistent(latest, x, new.proofs.get(latest.size))
            else:
                later = [h for h in held if h.checkpoint.size > x.size and x.size in h.proofs]
                if not later:
                    raise WitnessAlarm(
                        f"rollback or truncation: {x.describe()} after {latest.describe()}, "
                        "with no proof that the smaller one is a prefix"
                    )
                bigger = min(later, key=lambda h: h.checkpoint.size)
                self._consistent(x, bigger.checkpoint, bigger.proofs[x.size])
        if self.signer is not None:
            doc = cosign(json.loads(data), *self.signer, dt.datetime.now(dt.UTC))
            data = (json.dumps(doc, indent=2) + "\n").encode()
        self._store(x, data)
        self._logs.setdefault(x.origin, []).append(new)
        return x, True

    def end(self, data: bytes) -> Ending:
        """Record the CA-signed end of a log; it must end at the last checkpoint held."""
        ending = read_ending(data, self.ca)
        held = self.held(ending.origin)
        if not held:
            raise CipherpostError(f"this witness holds no checkpoint of {ending.origin}")
        last = held[-1]
        if (last.size, last.root) != (ending.size, ending.root):
            raise CipherpostError(
                f"{ending.describe()} is not at the last checkpoint held ({last.describe()})"
            )
        folder = self.folder / f"{last.code.text}_{last.log_id}"
        write_private_file(folder / ENDING_FILE, data)
        self.endings[ending.origin] = ending
        return ending

    def stale(self, after: float) -> list[str]:
        """Origins whose last checkpoint arrived more than ``after`` seconds ago (ended ones
        excepted): a gateway that stopped signing, or a witness that stopped hearing it."""
        now = time.monotonic()
        return sorted(
            origin
            for origin, seen in self.last_seen.items()
            if now - seen > after and origin not in self.endings
        )

    def _consistent(self, old: Checkpoint, new: Checkpoint, proof: list[bytes] | None) -> None:
        if proof is None:
            raise WitnessAlarm(
                f"no consistency proof from {old.describe()} to {new.describe()}: "
                "the log was forked or rolled back"
            )
        try:
            merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
        except merkle.ProofError as e:
            raise WitnessAlarm(
                f"inconsistent: {new.describe()} does not extend {old.describe()} ({e})"
            ) from None

    def _store(self, cp: Checkpoint, data: bytes) -> None:
        folder = self.folder / f"{cp.code.text}_{cp.log_id}"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{cp.size:012d}.checkpoint.json"
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
