"""The audit log as the cipher department sees it: checkpoints, verification, proofs.

- :class:`Checkpointer` (gateway side): signs a checkpoint of the gateway's log
  every N leaves or T seconds, stores it, and on start refuses a store that no
  longer matches the last checkpoint it signed.
- :func:`verify_store`: recompute every log from its leaf bytes, check every
  record against its leaf, every checkpoint signature and root, and name the
  first place that does not hold.
- :func:`prove` / :func:`check_proof`: an inclusion proof of one envelope's
  record, checkable offline with the checkpoint file and the CA certificate.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import merkle
from gateway.audit import LEAF_FIELDS, AuditStore, decode_leaf
from gateway.checkpoint import (
    Checkpoint,
    VerifiedFile,
    checkpoint_file,
    parse_checkpoint,
    read_checkpoint_file,
    sign_checkpoint,
    verify_checkpoint,
)
from gateway.ending import FILE_NAME as ENDING_FILE
from gateway.ending import Ending, read_ending
from keys.certs import AgencyCertificate
from keys.codes import AgencyCode
from keys.errors import CipherpostError, Refused
from keys.keystore import write_private_file

PROOF_MAGIC = "cipherpost-audit-inclusion-proof-v1"
CONSISTENCY_HISTORY = 16  # a published checkpoint carries proofs from this many earlier ones


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the gateway side --------------------------------------------------------------------------


class Checkpointer:
    """Signs this gateway's checkpoints and guards its store against rollback."""

    def __init__(
        self,
        store: AuditStore,
        key: Ed25519PrivateKey,
        certificate: AgencyCertificate,
        certificate_pem: bytes,
        state_dir: Path,
        *,
        every: int,
        seconds: float,
    ) -> None:
        self.store = store
        self.key = key
        self.certificate = certificate
        self.certificate_pem = certificate_pem
        self.code: AgencyCode = certificate.code
        self.every = every
        self.seconds = seconds
        self.state_dir = state_dir
        self.state_file = state_dir / f"checkpoint-{store.log_id}.txt"
        self._last: Checkpoint | None = None

    def check_on_start(self) -> Checkpoint | None:
        """Refuse to run on a store that no longer matches the last signed checkpoint."""
        candidates = [verify_checkpoint(n, self.certificate) for n in self._known_notes()]
        candidates = [c for c in candidates if c.log_id == self.store.log_id]
        if not candidates:
            return None
        last = max(candidates, key=lambda c: c.size)
        size = self.store.size()
        if size < last.size:
            raise CipherpostError(
                f"audit store {self.store.path} holds {size} leaves of log "
                f"{self.store.log_id} but checkpoint {last.describe()} was signed: "
                "the store was truncated or rolled back; refusing to run"
            )
        report = verify_store(self.store, [(last, self.certificate)], logs=[self.store.log_id])
        if not report.ok:
            raise CipherpostError(
                f"audit store no longer matches checkpoint {last.describe()}: "
                f"{report.problems[0]}; refusing to run (see: cipherpost audit verify)"
            )
        self._last = last
        return last

    @staticmethod
    def read_state_note(state_dir: Path, log_id: str) -> bytes | None:
        """The last checkpoint note a gateway signed for ``log_id`` (its rollback guard)."""
        path = state_dir / f"checkpoint-{log_id}.txt"
        return path.read_bytes() if path.exists() else None

    @property
    def last(self) -> Checkpoint | None:
        """The latest checkpoint this gateway signed or started from."""
        return self._last

    def _known_notes(self) -> list[bytes]:
        notes = self.store.checkpoints(self.store.log_id)
        if self.state_file.exists():
            notes.append(self.state_file.read_bytes())
        return notes

    def due(self, now: dt.datetime) -> bool:
        size = self.store.size()
        last_size = self._last.size if self._last else 0
        if size <= last_size:
            return False
        if size - last_size >= self.every:
            return True
        last_time = self._last.time if self._last else dt.datetime.min.replace(tzinfo=dt.UTC)
        return (now - last_time).total_seconds() >= self.seconds

    def sign(self, now: dt.datetime) -> bytes | None:
        """Sign and store a checkpoint of the log as it is; returns the message to publish."""
        size, root = self.store.root()
        if size == 0 or (self._last is not None and size <= self._last.size):
            return None
        previous = self._last
        note = sign_checkpoint(self.key, self.code, self.store.log_id, size, root, now)
        if not self.store.add_checkpoint(self.store.log_id, size, root, now.isoformat(), note):
            return None  # another process of this gateway signed this size first
        self.state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_file(self.state_file, note)  # fsynced: it is the rollback guard
        self._last = parse_checkpoint(note)
        return self.message(note, previous)

    def message(self, note: bytes, previous: Checkpoint | None) -> bytes:
        """The checkpoint file with consistency proofs from the last few earlier checkpoints."""
        cp = parse_checkpoint(note)
        # The stored sizes come from the table (no re-parsing of every note ever signed).
        stored = self.store.checkpoint_sizes(self.store.log_id, cp.size, CONSISTENCY_HISTORY)
        earlier = sorted(set(stored) | ({previous.size} if previous else set()))
        earlier = [s for s in earlier if 0 < s < cp.size][-CONSISTENCY_HISTORY:]
        doc = json.loads(checkpoint_file(note, self.certificate_pem))
        doc["consistency"] = [
            {
                "old_size": s,
                "proof": [
                    _b64(h) for h in self.store.consistency_proof(self.store.log_id, s, cp.size)
                ],
            }
            for s in earlier
        ]
        return json.dumps(doc, indent=2).encode() + b"\n"


# --- verification ------------------------------------------------------------------------------


class Unwitnessed(CipherpostError):
    """Everything checked holds, but some leaves are covered by no witnessed checkpoint.

    Exit code 4: not "OK" (nobody outside the gateway vouches for those leaves
    yet; a running gateway has such a tail for up to its checkpoint interval),
    and not a proof of tampering either.
    """

    exit_code = 4


@dataclass
class Report:
    """What :func:`verify_store` found; ``problems`` in the order found (first = earliest).

    ``witnessed``: per log, the size of the largest checkpoint checked against
    it; leaves beyond it (``unwitnessed``) are recomputed but vouched for by
    no checkpoint.
    """

    logs: dict[str, int] = field(default_factory=dict)
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    witnessed: dict[str, int] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)  # log id -> its documented end

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unwitnessed(self) -> dict[str, tuple[int, int]]:
        """Per log with an unwitnessed tail: (first unwitnessed leaf, leaves in the log)."""
        return {
            log_id: (self.witnessed.get(log_id, 0), size)
            for log_id, size in self.logs.items()
            if size > self.witnessed.get(log_id, 0)
        }

    def tails(self) -> list[str]:
        """One line per unwitnessed tail."""
        return [
            f"log {log_id!r}: leaves {start}..{size - 1} are not covered by any witnessed "
            "checkpoint" + ("" if start else " (the log has no witnessed checkpoint at all)")
            for log_id, (start, size) in self.unwitnessed.items()
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "complete": self.ok and not self.unwitnessed,
            "logs": self.logs,
            "witnessed": self.witnessed,
            "unwitnessed": self.tails(),
            "ended": self.ended,
            "checkpoints_checked": self.checkpoints,
            "problems": self.problems,
        }


def _column_problem(index: int, fields: dict[str, Any], stored: dict[str, Any]) -> str | None:
    """Compare the stored columns of a record with its leaf bytes."""
    try:
        values = dict(stored)
        values["time_ms"] = int(dt.datetime.fromisoformat(str(stored["time"])).timestamp() * 1000)
        values["recipients"] = json.loads(str(stored["recipients"]))
    except ValueError:
        return f"leaf {index}: stored time or recipients are malformed"
    for name in LEAF_FIELDS[2:]:
        if values[name] != fields[name]:
            return f"leaf {index}: stored {name} differs from the signed-over leaf bytes"
    return None


def verify_store(
    store: AuditStore,
    checkpoints: Iterable[tuple[Checkpoint, AgencyCertificate]],
    *,
    logs: list[str] | None = None,
    endings: Iterable[Ending] = (),
    cosigned: Iterable[tuple[str, int]] | None = None,
) -> Report:
    """Recompute every log and check it against every (already signature-checked) checkpoint.

    ``endings`` (CA-signed, :mod:`gateway.ending`): a log ended after its store was lost
    is reported as ended, not as deleted; a store still holding it must not go past its end.
    ``cosigned``: the (log id, size) of checkpoints a CA-certified witness cosigned; when
    given, only those count as witnessed (a checkpoint the gateway's operator signed alone
    proves nothing about what the witness saw).
    """
    report = Report()
    vouched = None if cosigned is None else set(cosigned)
    ended = {e.origin.rsplit("/", 1)[-1]: e for e in endings}
    by_log: dict[str, list[Checkpoint]] = {}
    for cp, cert in checkpoints:
        if cert.code != cp.code:
            report.problems.append(f"checkpoint {cp.describe()} with another gateway's certificate")
            continue
        by_log.setdefault(cp.log_id, []).append(cp)
        report.checkpoints += 1
    held = store.logs()
    for log_id in sorted(set(by_log) - set(held)):
        if log_id in ended:
            report.ended[log_id] = ended[log_id].describe()
            continue
        if logs is None or log_id in logs:
            cp = max(by_log[log_id], key=lambda c: c.size)
            report.problems.append(
                f"checkpoint {cp.describe()} is of log {log_id!r}, which this store does not hold "
                "(a checkpoint from another log, or the whole log was deleted)"
            )
    for log_id in held if logs is None else [x for x in held if x in logs]:
        _verify_log(store, log_id, sorted(by_log.get(log_id, []), key=lambda c: c.size), report,
                    vouched)  # fmt: skip
        if log_id in ended:
            end = ended[log_id]
            report.ended[log_id] = end.describe()
            if report.logs.get(log_id, 0) > end.size:
                report.problems.append(
                    f"log {log_id!r}: {report.logs[log_id]} leaves, but it {end.describe()}:"
                    " leaves were written after its end"
                )
            report.witnessed[log_id] = max(report.witnessed.get(log_id, 0), end.size)
    report.problems += store.state_problems()
    return report


def _verify_log(
    store: AuditStore,
    log_id: str,
    cps: list[Checkpoint],
    report: Report,
    vouched: set[tuple[str, int]] | None = None,
) -> None:
    tree = merkle.CompactRange()
    pending = list(cps)
    last_good = 0
    first_problem = len(report.problems)

    def check_checkpoints() -> None:
        nonlocal last_good
        while pending and pending[0].size == tree.size:
            cp = pending.pop(0)
            if tree.root() != cp.root:
                report.problems.append(
                    f"log {log_id!r}: root at size {cp.size} differs from checkpoint "
                    f"{cp.describe()}: a leaf between {last_good} and {cp.size - 1} was "
                    "modified, inserted, deleted or reordered"
                )
            else:
                last_good = cp.size
                if vouched is None or (log_id, cp.size) in vouched:
                    report.witnessed[log_id] = cp.size

    check_checkpoints()
    for position, leaf, stored_hash, columns in store.leaves(log_id):
        computed = merkle.leaf_hash(leaf)
        try:
            fields = decode_leaf(leaf)
        except ValueError as e:
            report.problems.append(f"log {log_id!r}: leaf {position}: {e}")
            fields = None
        if fields is not None and len(report.problems) == first_problem:
            if position != tree.size:
                report.problems.append(
                    f"log {log_id!r}: leaf {tree.size} is missing (next stored is {position}): "
                    "deleted"
                )
            elif fields["leaf_index"] != position:
                report.problems.append(
                    f"log {log_id!r}: leaf {position} holds the record of sequence "
                    f"{fields['leaf_index']}: inserted, deleted or reordered"
                )
            elif computed != stored_hash:
                report.problems.append(
                    f"log {log_id!r}: leaf {position}: its bytes do not match its stored hash "
                    "(modified)"
                )
            else:
                problem = _column_problem(position, fields, columns)
                if problem:
                    report.problems.append(f"log {log_id!r}: {problem}")
        tree.append(computed)
        check_checkpoints()
    report.logs[log_id] = tree.size
    for cp in pending:
        report.problems.append(
            f"log {log_id!r}: the store holds {tree.size} leaves but checkpoint {cp.describe()} "
            "was signed: truncated or rolled back"
        )
    for a, b in itertools.pairwise(cps):
        if b.time < a.time:
            report.problems.append(
                f"log {log_id!r}: checkpoint {b.describe()} is older than the smaller "
                f"{a.describe()}"
            )


def load_endings(folder: Path, ca: x509.Certificate) -> tuple[list[Ending], list[str]]:
    """Every log ending (``*/ending.json``) a witness store holds, verified; and the problems."""
    good: list[Ending] = []
    problems: list[str] = []
    for path in sorted(folder.rglob(ENDING_FILE)):
        try:
            good.append(read_ending(path.read_bytes(), ca))
        except Refused as e:
            problems.append(f"{path}: {e}")
    return good, problems


def load_checkpoint_files(
    folder: Path, ca: x509.Certificate
) -> tuple[list[VerifiedFile], list[str]]:
    """Every ``*.checkpoint.json`` in ``folder``, verified (cosignatures too); the problems."""
    good: list[VerifiedFile] = []
    problems: list[str] = []
    for path in sorted(folder.rglob("*.checkpoint.json")):
        try:
            good.append(read_checkpoint_file(path.read_bytes(), ca))
        except Refused as e:
            problems.append(f"{path.name}: {e}")
    return good, problems


def load_checkpoint_dir(
    folder: Path, ca: x509.Certificate
) -> tuple[list[tuple[Checkpoint, AgencyCertificate]], list[str]]:
    """Every ``*.checkpoint.json`` in ``folder``, verified; and the problems found."""
    files, problems = load_checkpoint_files(folder, ca)
    return [(f.checkpoint, f.certificate) for f in files], problems


# --- proofs ------------------------------------------------------------------------------------


def prove(store: AuditStore, envelope_id: str, checkpoint: VerifiedFile | None) -> dict[str, Any]:
    """An inclusion proof of the envelope's first record, against a signed checkpoint."""
    found = store.find(envelope_id)
    if checkpoint is not None:
        found = [f for f in found if f[0] == checkpoint.checkpoint.log_id]
    if not found:
        raise CipherpostError(f"no audit record of envelope {envelope_id} in {store.path}")
    log_id, index = found[0]
    if checkpoint is None:
        notes = [parse_checkpoint(n) for n in store.checkpoints(log_id)]
        covering = [c for c in notes if c.size > index]
        if not covering:
            raise CipherpostError(
                f"leaf {index} of log {log_id!r} is not in a signed checkpoint yet; try again later"
            )
        cp = min(covering, key=lambda c: c.size)
        note, pem = cp.note, None
    else:
        cp = checkpoint.checkpoint
        if cp.size <= index:
            raise CipherpostError(f"checkpoint {cp.describe()} does not cover leaf {index} yet")
        note, pem = cp.note, checkpoint.certificate_pem
    leaf = store.leaf(log_id, index)
    return {
        "format": PROOF_MAGIC,
        "envelope_id": envelope_id,
        "log_id": log_id,
        "leaf_index": index,
        "tree_size": cp.size,
        "leaf": _b64(leaf),
        "proof": [_b64(h) for h in store.inclusion_proof(log_id, index, cp.size)],
        "checkpoint": note.decode(),
        **({"audit_certificate": pem.decode()} if pem else {}),
    }


def check_proof(proof: dict[str, Any], checkpoint: VerifiedFile) -> dict[str, Any]:
    """Verify an inclusion proof offline; returns the leaf's fields. :class:`Refused` if not."""
    try:
        if proof.get("format") != PROOF_MAGIC:
            raise ValueError("not a cipherpost inclusion proof")
        leaf = base64.b64decode(proof["leaf"], validate=True)
        path = [base64.b64decode(h, validate=True) for h in proof["proof"]]
        index = int(proof["leaf_index"])
        size = int(proof["tree_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise Refused(f"malformed proof: {e}") from None
    cp = checkpoint.checkpoint
    if proof.get("log_id") != cp.log_id:
        raise Refused(f"proof is for log {proof.get('log_id')!r}, checkpoint for {cp.log_id!r}")
    if size != cp.size:
        raise Refused(f"proof is for tree size {size}, checkpoint is {cp.describe()}")
    try:
        merkle.verify_inclusion(merkle.leaf_hash(leaf), index, size, path, cp.root)
    except merkle.ProofError as e:
        raise Refused(f"inclusion proof does not verify against {cp.describe()}: {e}") from None
    try:
        fields = decode_leaf(leaf)
    except ValueError as e:
        raise Refused(f"proven leaf is not an audit record: {e}") from None
    if fields["leaf_index"] != index:
        raise Refused(f"leaf claims sequence {fields['leaf_index']} but sits at {index}")
    if proof.get("envelope_id") not in (None, fields["envelope_id"]):
        raise Refused("proof names another envelope than its leaf")
    return fields
