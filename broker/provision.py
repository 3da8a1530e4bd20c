"""Provisioning: vhost, topology, one broker user per agency, anchored permissions.

Each agency gets a submit lane (``cp.submit.<code>``, routing key = its code, a
topic permission so it can publish nowhere else) and per-user connection and
channel limits: one agency's flood stays in its own lane. Its inbox and
directory feed get names with a random suffix, made once and written only to
its own credentials file: another agency cannot even find them to count what
waits there (``broker/topology.py``).

Idempotent: running it again changes nothing and says so. A revoked agency
loses its permissions and its user (its connections close); its inbox queue
is kept so nothing already delivered is lost. New passwords are written to
``credentials_dir/<login>.broker.json`` (mode 0600) or returned to be printed
once; they are never logged.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from broker import topology
from broker.connection import BrokerConfig, TlsFiles
from broker.management import Management, ManagementError
from keys.codes import AgencyCode
from keys.directory import Directory
from keys.errors import CipherpostError

GATEWAY_LOGIN = "cp-gateway"
WITNESS_LOGIN = "cp-witness"
PUBLISHER_LOGIN = "cp-cipher"  # the cipher department: publishes directory versions
SERVICE_LOGINS = (GATEWAY_LOGIN, WITNESS_LOGIN, PUBLISHER_LOGIN)  # provisioned without limits


@dataclass(frozen=True)
class Endpoints:
    """Where the provisioned clients connect: the nodes, and for TLS the CA file clients pin
    and whether they log in with a certificate (then users get no password at all)."""

    nodes: tuple[tuple[str, int], ...]
    tls_ca: Path | None = None
    certificate_login: bool = False

    def config(
        self, login: str, password: str, vhost: str, folder: Path, queues: tuple[str, str]
    ) -> BrokerConfig:
        """The credentials of ``login``; its TLS key and certificate are expected beside the
        file, as ``<login>.tls.key`` / ``<login>.tls.crt`` (made by the agency, issued by the
        cipher department: see docs/cluster.md)."""
        tls = None
        if self.tls_ca is not None:
            cert = folder / f"{login}.tls.crt" if self.certificate_login else None
            key = folder / f"{login}.tls.key" if self.certificate_login else None
            tls = TlsFiles(self.tls_ca, cert, key)
        host, port = self.nodes[0]
        nodes = self.nodes if len(self.nodes) > 1 else ()
        inbox, feed = queues
        return BrokerConfig(
            login, password, host, port, vhost, inbox=inbox, feed=feed, nodes=nodes, tls=tls
        )


@dataclass
class ProvisionResult:
    """What changed, and credentials created in this run (login -> config)."""

    changes: list[str] = field(default_factory=list)
    new_credentials: dict[str, BrokerConfig] = field(default_factory=dict)


def declare_topology(mgmt: Management, vhost: str, result: ProvisionResult) -> None:
    """Exchanges, the submit and dead-letter queues and their bindings."""
    v = mgmt.q(vhost)
    for name, kind in (
        (topology.SUBMIT_EXCHANGE, "topic"),
        (topology.DELIVER_EXCHANGE, "direct"),
        (topology.DEAD_EXCHANGE, "fanout"),
        (topology.CHECKPOINT_EXCHANGE, "fanout"),
        (topology.DIRECTORY_EXCHANGE, "fanout"),
    ):
        existing = mgmt.get(f"/api/exchanges/{v}/{mgmt.q(name)}")
        if existing is None:
            mgmt.put(f"/api/exchanges/{v}/{mgmt.q(name)}", {"type": kind, "durable": True})
            result.changes.append(f"exchange {name} created")
        elif existing.get("type") != kind:
            raise ManagementError(
                f"exchange {name} in vhost {vhost} is of type {existing.get('type')}, not {kind}:"
                " this vhost has an older topology; provision a new vhost"
            )
    _queue(mgmt, vhost, topology.DEAD_QUEUE, topology.DEAD_QUEUE_ARGUMENTS, result)
    _bind(mgmt, vhost, topology.DEAD_EXCHANGE, topology.DEAD_QUEUE, "", result)
    _queue(mgmt, vhost, topology.WITNESS_QUEUE, topology.QUEUE_ARGUMENTS, result)
    _bind(mgmt, vhost, topology.CHECKPOINT_EXCHANGE, topology.WITNESS_QUEUE, "", result)


def _queue(
    mgmt: Management, vhost: str, name: str, arguments: dict[str, object], result: ProvisionResult
) -> None:
    path = f"/api/queues/{mgmt.q(vhost)}/{mgmt.q(name)}"
    if mgmt.get(path) is None:
        mgmt.put(path, {"durable": True, "auto_delete": False, "arguments": arguments})
        result.changes.append(f"queue {topology.shown(name)} created")


def _bind(
    mgmt: Management, vhost: str, exchange: str, queue: str, key: str, result: ProvisionResult
) -> None:
    base = f"/api/bindings/{mgmt.q(vhost)}/e/{mgmt.q(exchange)}/q/{mgmt.q(queue)}"
    existing = mgmt.get(base) or []
    if not any(b.get("routing_key") == key for b in existing):
        mgmt.post(base, {"routing_key": key})
        result.changes.append(
            f"binding {exchange} -[{key or '*'}]-> {topology.shown(queue)} created"
        )


def _user(
    mgmt: Management,
    vhost: str,
    login: str,
    permissions: dict[str, str],
    result: ProvisionResult,
    endpoints: Endpoints,
    folder: Path,
    *,
    topic: dict[str, str] | None = None,
    limits: dict[str, int] | None = None,
    queues: tuple[str, str] = ("", ""),
) -> None:
    path = f"/api/users/{mgmt.q(login)}"
    if mgmt.get(path) is None:
        if endpoints.certificate_login:
            # A certificate-only user: no password exists that could be guessed or stolen.
            password = ""
            mgmt.put(path, {"password_hash": "", "tags": ""})
        else:
            password = secrets.token_urlsafe(24)
            mgmt.put(path, {"password": password, "tags": ""})
        result.changes.append(f"user {login} created")
        result.new_credentials[login] = endpoints.config(login, password, vhost, folder, queues)
    perm_path = f"/api/permissions/{mgmt.q(vhost)}/{mgmt.q(login)}"
    current = mgmt.get(perm_path)
    want = dict(permissions)
    if current is None or any(current.get(k) != v for k, v in want.items()):
        mgmt.put(perm_path, want)
        result.changes.append(f"permissions of {login} set")
    if topic is not None:
        topic_path = f"/api/topic-permissions/{mgmt.q(vhost)}/{mgmt.q(login)}"
        held_topic = mgmt.get(topic_path) or []
        current_topic = [t for t in held_topic if t["exchange"] == topic["exchange"]]
        if not current_topic or any(current_topic[0].get(k) != v for k, v in topic.items()):
            mgmt.put(topic_path, topic)
            result.changes.append(f"topic permissions of {login} on {topic['exchange']} set")
    if limits:
        held = mgmt.get(f"/api/user-limits/{mgmt.q(login)}") or []
        values = {k: v for item in held for k, v in item.get("value", {}).items()}
        if values.get("max-connections") == 0:
            # Suspended (a gateway found it flooding): provisioning never lifts that.
            result.changes.append(
                f"{login} is suspended and stays so (lift it: cipherpost broker reinstate)"
            )
            return
        for name, value in limits.items():
            if values.get(name) != value:
                mgmt.put(f"/api/user-limits/{mgmt.q(login)}/{name}", {"value": value})
                result.changes.append(f"limit {name}={value} of {login} set")


def provision(
    mgmt: Management,
    vhost: str,
    directory: Directory,
    *,
    amqp_host: str = "127.0.0.1",
    amqp_port: int = 5672,
    login_prefix: str = "",
    credentials_dir: Path | None = None,
    endpoints: Endpoints | None = None,
) -> ProvisionResult:
    """Bring the broker in line with the directory; returns what changed.

    Broker users are global to the node, so a deployment (or a test run) may
    prefix every login; the gateway strips the same prefix to find the code.
    ``endpoints`` (a cluster, TLS, certificate login) replaces ``amqp_host``/``amqp_port``.
    """
    result = ProvisionResult()
    ends = endpoints or Endpoints(((amqp_host, amqp_port),))
    folder = credentials_dir or Path(".")
    if mgmt.get(f"/api/vhosts/{mgmt.q(vhost)}") is None:
        mgmt.put(f"/api/vhosts/{mgmt.q(vhost)}", {})
        result.changes.append(f"vhost {vhost} created")
    # The admin needs rights in the vhost to manage it (the management API runs as that user).
    admin_perm = f"/api/permissions/{mgmt.q(vhost)}/{mgmt.q(mgmt.username)}"
    if mgmt.get(admin_perm) is None:
        mgmt.put(admin_perm, {"configure": ".*", "write": ".*", "read": ".*"})
    declare_topology(mgmt, vhost, result)
    existing = {str(q["name"]) for q in mgmt.get(f"/api/queues/{mgmt.q(vhost)}") or []}
    _user(
        mgmt,
        vhost,
        login_prefix + GATEWAY_LOGIN,
        topology.gateway_permissions(),
        result,
        ends,
        folder,
    )
    for login, permissions in (
        (WITNESS_LOGIN, topology.witness_permissions()),
        (PUBLISHER_LOGIN, topology.publisher_permissions()),
    ):
        _user(mgmt, vhost, login_prefix + login, permissions, result, ends, folder)
    for entry in sorted(directory.entries.values(), key=lambda e: e.code.text):
        login = login_prefix + entry.code.text
        lane = topology.submit_queue(entry.code)
        # Kept for a revoked agency too: what it queued before is decided (and refused).
        _queue(mgmt, vhost, lane, topology.SUBMIT_QUEUE_ARGUMENTS, result)
        _bind(mgmt, vhost, topology.SUBMIT_EXCHANGE, lane, entry.code.text, result)
        inbox, feed = _private_queues(mgmt, existing, entry.code, vhost, login)
        # The inbox is kept even for a revoked agency: what was delivered is not lost.
        _queue(mgmt, vhost, inbox, topology.QUEUE_ARGUMENTS, result)
        _bind(mgmt, vhost, topology.DELIVER_EXCHANGE, inbox, entry.code.text, result)
        _queue(mgmt, vhost, feed, topology.FEED_QUEUE_ARGUMENTS, result)
        _bind(mgmt, vhost, topology.DIRECTORY_EXCHANGE, feed, "", result)
        if entry.revoked:
            if mgmt.get(f"/api/users/{mgmt.q(login)}") is not None:
                mgmt.delete(f"/api/permissions/{mgmt.q(vhost)}/{mgmt.q(login)}")
                mgmt.delete(f"/api/users/{mgmt.q(login)}")
                result.changes.append(f"user {login} removed (revoked)")
            continue
        _user(
            mgmt,
            vhost,
            login,
            topology.agency_permissions(inbox, feed),
            result,
            ends,
            folder,
            topic=topology.agency_topic_permissions(entry.code),
            limits=topology.USER_LIMITS,
            queues=(inbox, feed),
        )
    if credentials_dir is not None:
        for login, config in result.new_credentials.items():
            config.save(credentials_dir / f"{login}.broker.json")
    return result


def _private_queues(
    mgmt: Management, existing: set[str], code: AgencyCode, vhost: str, login: str
) -> tuple[str, str]:
    """The agency's inbox and feed names: those its permissions name (a queue deleted by
    mistake comes back under the name its credentials file holds), else those on the
    broker, else new ones."""
    held = agency_queues(mgmt, vhost, login)
    if held[0]:
        return held
    names = []
    for prefix in (topology.inbox_prefix(code), topology.directory_prefix(code)):
        if prefix[:-1] in existing:
            raise ManagementError(
                f"queue {prefix[:-1]} in vhost {vhost} is named after the agency code alone:"
                " this vhost has an older topology; provision a new vhost"
            )
        found = sorted(n for n in existing if topology.is_private_name(n, prefix))
        if len(found) > 1:
            raise ManagementError(
                f"vhost {vhost} holds {len(found)} queues for {prefix}*: delete the ones no"
                " credentials file names, then provision again"
            )
        names.append(found[0] if found else topology.private_name(prefix))
    return names[0], names[1]


_READ_TWO = re.compile(r"\^\((?P<inbox>[^|()]+)\|(?P<feed>[^|()]+)\)\$")


def agency_queues(mgmt: Management, vhost: str, login: str) -> tuple[str, str]:
    """The private inbox and feed names that ``login``'s read permission names
    (``("", "")`` for a login that is not an agency's or has no permissions yet)."""
    held = mgmt.get(f"/api/permissions/{mgmt.q(vhost)}/{mgmt.q(login)}") or {}
    match = _READ_TWO.fullmatch(str(held.get("read", "")))
    if match is None:
        return "", ""
    inbox, feed = (match[k].replace("\\", "") for k in ("inbox", "feed"))
    if not (inbox.startswith(topology.INBOX_PREFIX) and feed.startswith(topology.DIRECTORY_PREFIX)):
        return "", ""
    return inbox, feed


def delete_vhost(mgmt: Management, vhost: str, logins: list[str]) -> None:
    """Remove a vhost and the given users (test and demo clean-up)."""
    mgmt.delete(f"/api/vhosts/{mgmt.q(vhost)}")
    for login in logins:
        mgmt.delete(f"/api/users/{mgmt.q(login)}")


def rotate(
    mgmt: Management,
    login: str,
    *,
    vhost: str,
    credentials_dir: Path,
    amqp_host: str = "127.0.0.1",
    amqp_port: int = 5672,
) -> BrokerConfig:
    """Give ``login`` a new password, write it to its credentials file (0600), and close the
    connections that logged in with the old one. The new password is never printed."""
    path = f"/api/users/{mgmt.q(login)}"
    if mgmt.get(path) is None:
        raise ManagementError(f"no broker user {login!r}: nothing to rotate")
    target = credentials_dir / f"{login}.broker.json"
    base: BrokerConfig | None = None
    try:
        base = BrokerConfig.load(target)  # keep where it connects: nodes, TLS, vhost
        vhost = base.vhost
    except (OSError, CipherpostError):
        pass
    if base is not None and base.certificate_login:
        raise ManagementError(
            f"{login} logs in with a TLS certificate, not a password: issue a new certificate"
            " (docs/cluster.md) instead of rotating"
        )
    inbox, feed = agency_queues(mgmt, vhost, login)
    password = secrets.token_urlsafe(24)
    mgmt.put(path, {"password": password, "tags": ""})
    if base is None:
        base = BrokerConfig(login, "", amqp_host, amqp_port, vhost)
    config = dataclasses.replace(base, password=password, inbox=inbox, feed=feed)
    config.save(target)
    # The broker's own connection tracking (what enforces the user's connection limit) closes
    # them at once; the statistics listing lags by its collection interval and would miss a
    # connection opened in the last few seconds.
    mgmt.delete(f"/api/connections/username/{mgmt.q(login)}")
    return config


def user_limits(mgmt: Management, login: str) -> dict[str, int]:
    """The broker's limits on ``login`` (empty: none set)."""
    held = mgmt.get(f"/api/user-limits/{mgmt.q(login)}") or []
    return {k: int(v) for item in held for k, v in item.get("value", {}).items()}


def suspend(mgmt: Management, login: str) -> int:
    """Stop ``login`` using the broker: no connection or channel may open, and the
    connections it holds are closed. Returns how many it held.

    The limits come first so that none opens between the listing and the closing;
    the list is RabbitMQ's connection tracking (``/api/connections/username/``),
    which knows a connection from its first frame, unlike the statistics listing.
    """
    for name in topology.USER_LIMITS:
        mgmt.put(f"/api/user-limits/{mgmt.q(login)}/{name}", {"value": 0})
    return close_connections(mgmt, login)


def close_connections(mgmt: Management, login: str) -> int:
    """Close every connection ``login`` holds; returns how many it held."""
    path = f"/api/connections/username/{mgmt.q(login)}"
    held = len(mgmt.get(path) or [])
    if held:
        mgmt.delete(path)
    return held


def reinstate(mgmt: Management, login: str) -> bool:
    """Lift a suspension: the limits provisioning gives ``login`` again (an agency's; none
    for the gateway, witness and cipher department logins, which provisioning leaves
    unlimited). False if ``login`` was not suspended."""
    if user_limits(mgmt, login).get("max-connections") != 0:
        return False
    service = login.endswith(SERVICE_LOGINS)  # after a deployment's login prefix
    for name, value in topology.USER_LIMITS.items():
        path = f"/api/user-limits/{mgmt.q(login)}/{name}"
        if service:
            mgmt.delete(path)
        else:  # an agency, or a login of unknown kind: the limits are the safer default
            mgmt.put(path, {"value": value})
    return True
