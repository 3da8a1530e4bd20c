"""An offline gateway world for the fast decision and settlement tests (no RabbitMQ).

Real keys, CA, directory, signed policy and audit store; only the broker is
replaced by :class:`gateway.transport.MemoryTransport`. Everything that crosses
the broker is tested again against the real one (``test_gateway_attacks.py``,
``test_gateway_refusals.py``).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pika

import envelopes
from broker.connection import BrokerConfig
from broker.topology import submit_queue
from envelopes.frames import encode_header_frame
from envelopes.header import Header
from envelopes.notices import sign_notice
from envelopes.parts import iter_parts
from gateway.audit import ACCEPTED, Decided
from gateway.config import GatewayConfig
from gateway.decide import Context
from gateway.policy import Policy, sign_policy
from gateway.service import Gateway, Loaded
from gateway.transport import MemoryDelivery, MemoryTransport
from keys import ca
from keys.agency import AgencyKeys
from keys.auditkey import AuditKeyRequest, load_audit_certificate, load_audit_key, make_audit_key
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.levels import Level, Urgency
from tests.helpers import PASSPHRASE, World, make_world

P = "000.00.00.H41"  # the province
A = "000.01.12.H41"
B = "000.02.12.H41"
X = "000.03.12.H41"  # cleared for Mật only
OTHER = "000.00.00.H42"
GATEWAY = "000.00.99.G99"
PREFIX = "t-"
AGENCIES = {
    P: Level.TOI_MAT,
    A: Level.TOI_MAT,
    B: Level.TOI_MAT,
    X: Level.MAT,
    OTHER: Level.TOI_MAT,
    GATEWAY: Level.TUYET_MAT,
}
POLICY = """
[policy]
name = "kit"
version = 5

[[rule]]
id = "no-tuyet-mat-online"
action = "deny"
reason = "Tuyệt mật never travels over this network"
level_min = "tuyet-mat"

[[rule]]
id = "h41-internal"
action = "allow"
reason = "exchanges inside province H41"
sender = "*.H41"
recipients = "*.H41"
"""


@dataclass
class Kit:
    world: World
    directory: Directory
    policy: Policy
    now: dt.datetime
    policy_bytes: bytes = b""

    @property
    def keys(self) -> dict[str, AgencyKeys]:
        return self.world.keys

    def context(self, now: dt.datetime | None = None, **changes: object) -> Context:
        ctx = Context(self.directory, self.policy, now or self.now, "gw1", PREFIX)
        return Context(**{**ctx.__dict__, **changes})  # type: ignore[arg-type]

    def seal(
        self,
        sender: str,
        to: list[str],
        doc: bytes = b"x" * 300,
        *,
        level: Level = Level.MAT,
        envelope_id: bytes | None = None,
        now: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(days=30),
    ) -> bytes:
        out = io.BytesIO()
        envelopes.seal(
            io.BytesIO(doc),
            out,
            keys=self.keys[sender],
            directory=self.directory,
            to=[AgencyCode.parse(c) for c in to],
            level=level,
            size=len(doc),
            urgency=Urgency.KHAN,
            segment_size=1024,
            envelope_id=envelope_id,
            now=now or self.now,
            lifetime=lifetime,
        )
        return out.getvalue()

    def notice(self, signer: str, addressee: str, cpe: bytes, *, kind: str = "status",
               status: str = "03", note: str = "") -> bytes:  # fmt: skip
        h = envelopes.header.Header.parse(_header_raw(cpe))
        return sign_notice(
            self.keys[signer].signing_key,
            kind=kind,
            envelope_id=h.envelope_id,
            header_hash=h.hash,
            signer=AgencyCode.parse(signer),
            addressee=AgencyCode.parse(addressee),
            status=status,
            now=self.now,
            note=note,
        ).raw


class FakeState:
    """The recorded state, in memory (a stub: the real one is the audit store)."""

    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str], Decided] = {}
        self.forwards: dict[tuple[str, str, int], str] = {}  # accepted parts: digest
        self.confirmed_parts: set[tuple[str, str, int]] = set()
        self.relays: set[str] = set()
        self.refusals: set[str] = set()

    def decision(self, envelope_id: str, header_hash: str) -> Decided | None:
        return self.decisions.get((envelope_id, header_hash))

    def has_envelope(self, envelope_id: str) -> bool:
        return any(k[0] == envelope_id for k in self.decisions)

    def part(self, envelope_id: str, header_hash: str, index: int) -> str | None:
        return self.forwards.get((envelope_id, header_hash, index))

    def confirmed(self, envelope_id: str, header_hash: str, index: int) -> bool:
        return (envelope_id, header_hash, index) in self.confirmed_parts

    def relayed(self, key: str) -> bool:
        return key in self.relays

    def refused(self, digest: str) -> bool:
        return digest in self.refusals

    def accept(self, cpe: bytes, decision: str = ACCEPTED) -> Header:
        h = Header.parse(_header_raw(cpe))
        self.decisions[(h.envelope_id.hex(), h.hash.hex())] = Decided(
            decision,
            "h41-internal" if decision == ACCEPTED else "default-deny",
            h.sender.text,
            tuple(r.code.text for r in h.recipients),
            0,
        )
        return h


def parts(cpe: bytes) -> list[bytes]:
    return [body for _, _, body in iter_parts(io.BytesIO(cpe))]


def _header_raw(cpe: bytes) -> bytes:
    reader = envelopes.frames.FrameReader(io.BytesIO(cpe))
    return envelopes.frames.parse_header_frame(reader.next())[0]


def delivery(body: bytes, publisher: str | None, *, kind: str = "part",
             lane: str | None = None) -> MemoryDelivery:  # fmt: skip
    """A delivery as RabbitMQ would hand it over: ``publisher`` is the code whose login
    published (its ``user_id``), ``lane`` the submit lane (default: the publisher's)."""
    lane = lane or publisher or A
    return MemoryDelivery(
        body,
        pika.BasicProperties(type=kind, user_id=PREFIX + publisher if publisher else None),
        queue=submit_queue(AgencyCode.parse(lane)),
    )


def make_kit(root: Path, now: dt.datetime | None = None) -> Kit:
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    world = make_world(root, AGENCIES, now=now - dt.timedelta(days=1))
    directory = Directory.load(
        build_directory(world.authority, world.certs, now - dt.timedelta(minutes=5), 30),
        TrustState(None),
        now=now,
    )
    policy_bytes = sign_policy(POLICY, world.authority, now - dt.timedelta(minutes=5), 7)
    policy = Policy.load_signed(policy_bytes, world.authority.certificate.public_key(), now)  # type: ignore[arg-type]
    return Kit(world, directory, policy, now, policy_bytes)


def make_gateway(kit: Kit, root: Path, transport: MemoryTransport | None = None) -> Gateway:
    """A gateway over the kit's world whose broker is ``transport``."""
    audit_dir = root / "gw-audit"
    if not (audit_dir / "audit.crt").exists():
        request = make_audit_key(audit_dir, AgencyCode.parse(GATEWAY), PASSPHRASE, kit.now)
        cert = ca.issue_audit(
            kit.world.authority, AuditKeyRequest.parse(request.read_bytes()), root / "audit-certs",
            kit.now - dt.timedelta(minutes=5), 30,
        )  # fmt: skip
        shutil.copy(cert, audit_dir / "audit.crt")
    (root / "directory.cpd").write_bytes(kit.directory.raw)
    (root / "policy.cpp").write_bytes(kit.policy_bytes)
    config = GatewayConfig(
        gateway_id="gw1",
        agency_dir=root / "unused",
        directory=root / "directory.cpd",
        ca_cert=kit.world.root / "ca" / "ca.crt",
        policy=root / "policy.cpp",
        audit_db=root / "audit.db",
        state_dir=root / "gw-state",
        broker_credentials=root / "unused.json",
        audit_dir=audit_dir,
        login_prefix=PREFIX,
        checkpoint_every=1000,
        checkpoint_seconds=3600,
    )
    os.makedirs(config.state_dir, exist_ok=True)
    loaded = Loaded(
        kit.directory,
        kit.policy,
        kit.keys[GATEWAY],
        BrokerConfig("t-gateway", "unused"),
        load_audit_key(audit_dir, PASSPHRASE),
        load_audit_certificate(audit_dir / "audit.crt", kit.world.authority.certificate),
        (audit_dir / "audit.crt").read_bytes(),
        kit.world.authority.certificate,
    )
    return Gateway(config, loaded, transport=transport or MemoryTransport())


def forged_header_part(cpe: bytes, **changes: object) -> bytes:
    """The first part of ``cpe`` with its header fields changed and a zero signature."""
    from tests.vectors.generate import _edit_header, _frames

    (h_raw, _), segs = _frames(cpe)
    s = segs[0]
    seg = envelopes.frames.encode_segment_frame(s.index, s.final, s.ciphertext, s.signature)
    return encode_header_frame(_edit_header(h_raw, **changes), b"\0" * 64) + seg


def witness_signer(kit: Kit, root: Path) -> tuple[object, bytes]:
    """The witness's key and its CA certificate (role witness): it cosigns checkpoints."""
    from keys.certs import ROLE_WITNESS

    folder = root / "witness-key"
    request = make_audit_key(folder, AgencyCode.parse(GATEWAY), PASSPHRASE, kit.now)
    cert = ca.issue_audit(
        kit.world.authority, AuditKeyRequest.parse(request.read_bytes()), root / "witness-cert",
        kit.now - dt.timedelta(minutes=5), 30, ROLE_WITNESS,
    )  # fmt: skip
    return load_audit_key(folder, PASSPHRASE), cert.read_bytes()
