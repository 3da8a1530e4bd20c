"""A throwaway exchange in its own vhost: CA, agencies, gateway, policy, provisioning.

Used by ``cipherpost demo`` and by the tests: the same commands an operator
runs, as library calls, in a temporary folder; :meth:`World.cleanup` removes
the vhost and every broker user it created.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agents.client import Client
from agents.config import AgentConfig
from broker.connection import BrokerConfig
from broker.management import Management
from broker.provision import (
    GATEWAY_LOGIN,
    PUBLISHER_LOGIN,
    WITNESS_LOGIN,
    Endpoints,
    delete_vhost,
    provision,
)
from gateway.config import GatewayConfig
from gateway.policy import sign_policy
from gateway.service import Gateway, load
from keys import agency, ca, tls
from keys.auditkey import AUDIT_CERT_FILE, AuditKeyRequest, make_audit_key
from keys.certs import ROLE_WITNESS
from keys.codes import AgencyCode
from keys.directory import Directory, TrustState, build_directory
from keys.errors import CipherpostError
from keys.keystore import write_private_file
from keys.levels import Level

PASSPHRASE = b"throwaway-world-passphrase"
GATEWAY_CODE = "000.00.99.G99"  # the cipher department's gateway, an entry of the directory
DEFAULT_POLICY = """
[policy]
name = "Province H41 (demo)"
version = 1

[[rule]]
id = "no-tuyet-mat-online"
action = "deny"
reason = "Tuyệt mật documents never travel over this network"
level_min = "tuyet-mat"

[[rule]]
id = "h41-internal"
action = "allow"
reason = "exchanges inside province H41"
sender = "*.H41"
recipients = "*.H41"
"""


@dataclass(frozen=True)
class BrokerSite:
    """A broker other than the machine's single node: a cluster's nodes over TLS, every client
    logging in with a certificate issued by ``tls_ca_dir`` (the cipher department's TLS CA).
    ``admin`` is the management API of one node (https, trusting the TLS CA)."""

    admin: Management
    nodes: tuple[tuple[str, int], ...]
    tls_ca_dir: Path

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.nodes, self.tls_ca_dir / tls.TLS_CA_CERT_FILE, True)

    @classmethod
    def load(cls, cluster_dir: Path) -> BrokerSite:
        """The cluster that ``python -m compose.cluster start --dir DIR`` started (its
        ``cluster.json``, mode 0600, holds the nodes' ports and the admin's password)."""
        try:
            state = json.loads((cluster_dir / "cluster.json").read_text())
            nodes = state["nodes"]
            admin = Management(
                f"https://127.0.0.1:{nodes[0]['management_port']}",
                "cp-admin",
                str(state["admin_password"]),
                cluster_dir / "tls" / tls.TLS_CA_CERT_FILE,
            )
            endpoints = tuple(("127.0.0.1", int(n["amqp_port"])) for n in nodes)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CipherpostError(f"{cluster_dir}: no cluster started there ({e})") from None
        return cls(admin, endpoints, cluster_dir / "tls")

    def issue_client(self, login: str, folder: Path, now: dt.datetime) -> None:
        """What enrollment does for a broker login: the holder makes a TLS key and a request
        (its common name = the login), the cipher department's TLS CA issues it."""
        key = tls.new_key()
        ca_cert, ca_key = tls.open_ca(self.tls_ca_dir)
        cert = tls.issue_client(ca_cert, ca_key, tls.make_request(login, key), now)
        tls.write_key_and_cert(key, cert, folder / f"{login}.tls.key", folder / f"{login}.tls.crt")


@dataclass
class World:
    root: Path
    vhost: str
    prefix: str
    mgmt: Management
    agencies: dict[str, Level]
    gateways: list[tuple[Gateway, threading.Thread]] = field(default_factory=list)
    directory: Directory | None = None

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def directory_path(self) -> Path:
        return self.root / "directory.cpd"

    @property
    def witness_key(self) -> Path:
        """The witness's key folder (``audit witness --key``): it cosigns checkpoints."""
        return self.root / "witness-key"

    def agent_config(self, code: str) -> Path:
        return self.root / "agents" / code / "agent.toml"

    def gateway_config(self, name: str = "gw1") -> Path:
        return self.root / f"{name}.toml"

    def client(self, code: str) -> Client:
        return Client(AgentConfig.load(self.agent_config(code)), PASSPHRASE)

    def login(self, code: str) -> str:
        return self.prefix + code

    def broker(self, code: str) -> BrokerConfig:
        """The broker credentials provisioning wrote for ``code``'s agency."""
        credentials = self.root / "broker-credentials" / f"{self.login(code)}.broker.json"
        return BrokerConfig.load(credentials)

    def inbox(self, code: str) -> str:
        """The private name of ``code``'s inbox queue (from its credentials file)."""
        return self.broker(code).agency_queues()[0]

    def start_gateway(self, name: str = "gw1") -> Gateway:
        config = GatewayConfig.load(self.gateway_config(name))
        gw = Gateway(config, load(config, PASSPHRASE))
        thread = threading.Thread(target=gw.run, name=f"gateway-{name}", daemon=True)
        thread.start()
        if not gw.ready.wait(30):
            raise RuntimeError("gateway did not connect")
        self.gateways.append((gw, thread))
        return gw

    def stop_gateways(self) -> None:
        for gw, thread in self.gateways:
            gw.stop()
            thread.join(timeout=30)
        self.gateways.clear()

    def cleanup(self) -> None:
        self.stop_gateways()
        delete_vhost(
            self.mgmt,
            self.vhost,
            [self.login(c) for c in [*self.agencies, GATEWAY_CODE]]
            + [self.prefix + x for x in (GATEWAY_LOGIN, WITNESS_LOGIN, PUBLISHER_LOGIN)],
        )


def _flood_section(world: World, on: bool) -> str:
    """The gateway config's ``[flood]`` table: the world's admin suspends flooding logins."""
    if not on:
        return ""
    secret = world.root / "admin.password"
    if not secret.exists():
        write_private_file(secret, world.mgmt.password.encode() + b"\n")
    scheme, _, host = world.mgmt.base_url.partition("://")
    return (
        f'\n[flood]\nadmin_url = "{scheme}://{world.mgmt.username}@{host}"\n'
        f'admin_password_file = "{secret.name}"\n'
    )


def build_world(
    root: Path,
    agencies: dict[str, tuple[str, Level]],
    *,
    admin_url: str = "http://guest:guest@127.0.0.1:15672",
    amqp_port: int = 5672,
    vhost: str | None = None,
    policy_text: str = DEFAULT_POLICY,
    gateways: tuple[str, ...] = ("gw1",),
    site: BrokerSite | None = None,
    now: dt.datetime | None = None,
    checkpoint_every: int = 1000,
    checkpoint_seconds: float = 2.0,
    flood_guard: bool = False,
) -> World:
    """Everything an operator would set up, in ``root``; nothing started yet.

    ``flood_guard``: the gateways suspend a flooding login with the world's admin
    (its password in ``root/admin.password``, mode 0600).
    """
    now = now or dt.datetime.now(dt.UTC)
    tag = secrets.token_hex(4)
    world = World(
        root,
        vhost or f"cp-{tag}",
        f"cp{tag}-",
        site.admin if site is not None else Management.from_url(admin_url),
        {code: clearance for code, (_, clearance) in agencies.items()},
    )
    ca.init_ca(world.ca_dir, PASSPHRASE, now, "Ban Cơ yếu (throwaway)")
    authority = ca.open_ca(world.ca_dir, PASSPHRASE)
    certs = root / "certs"
    everyone = dict(agencies)
    everyone[GATEWAY_CODE] = ("Cổng trao đổi của Ban Cơ yếu", Level.TUYET_MAT)
    for code, (name, clearance) in everyone.items():
        folder = root / "agents" / code / "keys" if code != GATEWAY_CODE else root / "gateway-keys"
        agency.enroll(folder, AgencyCode.parse(code), name, PASSPHRASE, now)
        request = agency.EnrollmentRequest.parse((folder / agency.REQUEST_FILE).read_bytes())
        ca.issue(authority, request, clearance, certs, now, valid_days=365)
    world.directory_path.write_bytes(build_directory(authority, certs, now, valid_days=7))
    (root / "policy.cpp").write_bytes(sign_policy(policy_text, authority, now, valid_days=7))
    world.directory = Directory.load(
        world.directory_path.read_bytes(),
        TrustState(None),
        now=now,
        ca_certificate=authority.certificate,
    )
    creds = root / "broker-credentials"
    provisioned = provision(
        world.mgmt,
        world.vhost,
        world.directory,
        amqp_port=amqp_port,
        login_prefix=world.prefix,
        credentials_dir=creds,
        endpoints=site.endpoints if site is not None else None,
    )
    if site is not None:
        for login in provisioned.new_credentials:
            site.issue_client(login, creds, now)
    flood = _flood_section(world, flood_guard)
    _audit_keys(world, authority, now, gateways, checkpoint_every, checkpoint_seconds, flood)
    for code in agencies:
        base = root / "agents" / code
        (base / "agent.toml").write_text(
            f'agency_dir = "keys"\ndirectory = "../../directory.cpd"\nca_cert = "../../ca/ca.crt"\n'
            f'inbox = "inbox"\n\n[broker]\n'
            f'credentials = "../../broker-credentials/{world.prefix}{code}.broker.json"\n'
        )
    return world


def _audit_keys(
    world: World,
    authority: ca.CertificateAuthority,
    now: dt.datetime,
    gateways: tuple[str, ...],
    checkpoint_every: int,
    checkpoint_seconds: float,
    flood: str,
) -> None:
    """The witness's audit key, and each gateway instance's audit key and configuration."""
    root, certs = world.root, world.root / "certs"
    # The cipher department's witness cosigns the checkpoints it checked: its own key.
    witness_req = make_audit_key(world.witness_key, AgencyCode.parse(GATEWAY_CODE), PASSPHRASE, now)
    ca.issue_audit(
        authority, AuditKeyRequest.parse(witness_req.read_bytes()), certs, now, 30, ROLE_WITNESS
    )
    (certs / f"{GATEWAY_CODE}.{ROLE_WITNESS}.crt").replace(world.witness_key / AUDIT_CERT_FILE)
    for name in gateways:
        # Each gateway instance keeps its own log, signed with its own audit key.
        audit_dir = root / f"{name}-audit"
        audit_req = make_audit_key(audit_dir, AgencyCode.parse(GATEWAY_CODE), PASSPHRASE, now)
        ca.issue_audit(authority, AuditKeyRequest.parse(audit_req.read_bytes()), certs, now, 30)
        (certs / f"{GATEWAY_CODE}.audit.crt").replace(audit_dir / AUDIT_CERT_FILE)
        world.gateway_config(name).write_text(
            f'gateway_id = "{name}"\nagency_dir = "gateway-keys"\ndirectory = "directory.cpd"\n'
            f'ca_cert = "ca/ca.crt"\npolicy = "policy.cpp"\naudit_db = "audit.db"\n'
            f'state_dir = "{name}-state"\naudit_dir = "{name}-audit"\n\n'
            f"[audit]\ncheckpoint_every = {checkpoint_every}\n"
            f"checkpoint_seconds = {checkpoint_seconds}\n\n[broker]\n"
            f'credentials = "broker-credentials/{world.prefix}{GATEWAY_LOGIN}.broker.json"\n'
            f'login_prefix = "{world.prefix}"\n' + flood
        )
