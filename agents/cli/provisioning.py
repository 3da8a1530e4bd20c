"""``cipherpost broker ...``: the broker's users, permissions, queues and credentials.

The cipher department provisions every agency from the directory and rotates a login's
password; any holder makes its own TLS key and certificate request (``tls-request``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agents import onboarding
from agents.cli.common import Subcommands, add, directory_args, group, load_directory
from agents.output import emit
from keys.directory import TrustState
from keys.errors import UsageError


def cmd_broker_tls_request(args: argparse.Namespace) -> int:
    from keys import tls
    from keys.keystore import write_private_file

    key_path = args.dir / f"{args.login}.tls.key"
    if key_path.exists():
        raise UsageError(f"{key_path} exists: a new key replaces it only after you move it away")
    args.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = tls.new_key()
    write_private_file(key_path, tls.key_pem(key))
    request = args.dir / f"{args.login}.tls.csr"
    request.write_bytes(tls.make_request(args.login, key))
    emit(
        args,
        {"key": str(key_path), "request": str(request)},
        f"TLS key {key_path} (mode 0600, it never leaves this machine) and request {request}:",
        "send the request to the cipher department (cipherpost ca tls-issue); put the"
        f" certificate beside the key as {args.login}.tls.crt",
    )
    return 0


def cmd_broker_provision(args: argparse.Namespace) -> int:
    from broker.management import Management
    from broker.provision import provision

    trust = TrustState.default()
    directory = load_directory(args, trust)
    mgmt = Management.for_operator(args.admin_url, args.admin_password_file)
    endpoints = _endpoints(args)
    if args.tls_ca is not None:
        mgmt = mgmt.with_ca(args.tls_ca)
    if args.publish and endpoints.certificate_login:
        raise UsageError(
            "--publish logs in as the admin with a password, which a certificate-login broker"
            " does not take: publish with `cipherpost directory publish --broker"
            " CREDS/cp-cipher.broker.json`"
        )
    result = provision(
        mgmt,
        args.vhost,
        directory,
        login_prefix=args.login_prefix,
        credentials_dir=args.credentials_dir,
        endpoints=endpoints,
    )
    lines = list(result.changes) or ["nothing to change: the broker matches the directory"]
    in_kits = []
    if args.kits is not None:
        # Each new agency's login goes into its onboarding kit (0600), with the directory.
        for login, config in list(result.new_credentials.items()):
            kit = args.kits / login.removeprefix(args.login_prefix)
            if (kit / onboarding.KIT_FILE).exists():
                config.save(kit / onboarding.KIT_BROKER)
                del result.new_credentials[login]
                in_kits.append(login)
                lines.append(f"credentials of {login} written to its kit {kit}")
    if args.publish:
        from broker.connection import BrokerConfig
        from broker.directory_feed import publish_directory

        admin = BrokerConfig(
            mgmt.username, mgmt.password, args.amqp_host, args.amqp_port, args.vhost
        )
        publish_directory(admin, directory.raw)
        lines.append(
            f"directory version {directory.version} published to running gateways and agents"
        )
    if result.new_credentials:
        # Written to files only (0600), never to the terminal: a screen is not a safe.
        lines.append(
            f"{len(result.new_credentials)} credentials file(s) written to {args.credentials_dir}"
            " (mode 0600): deliver each to its agency"
        )
    emit(
        args,
        {"changes": list(result.changes), "credentials_in_kits": in_kits,
         "credentials_files": sorted(result.new_credentials),
         "credentials_dir": str(args.credentials_dir),
         "published_version": directory.version if args.publish else None},
        *lines,
    )  # fmt: skip
    return 0


def _endpoints(args: argparse.Namespace) -> Any:
    """Where provisioned clients connect: ``--node`` (repeatable) or --amqp-host/--amqp-port,
    TLS with ``--tls-ca``, certificate-only users with ``--certificate-login``."""
    from broker.provision import Endpoints

    nodes = []
    for item in args.node or []:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UsageError(f"--node {item!r}: give HOST:PORT, e.g. rabbit-1:5671")
        nodes.append((host, int(port)))
    if args.certificate_login and args.tls_ca is None:
        raise UsageError("--certificate-login needs --tls-ca (the CA of the nodes' certificates)")
    return Endpoints(
        tuple(nodes) or ((args.amqp_host, args.amqp_port),),
        args.tls_ca.resolve() if args.tls_ca is not None else None,
        args.certificate_login,
    )


def cmd_broker_rotate(args: argparse.Namespace) -> int:
    from broker.management import Management
    from broker.provision import rotate

    mgmt = Management.for_operator(args.admin_url, args.admin_password_file)
    config = rotate(
        mgmt,
        args.login,
        vhost=args.vhost,
        credentials_dir=args.credentials_dir,
        amqp_host=args.amqp_host,
        amqp_port=args.amqp_port,
    )
    path = args.credentials_dir / (config.login + ".broker.json")
    emit(
        args,
        {"login": config.login, "credentials_file": str(path), "connections_closed": True},
        f"new password for {config.login} written to {path} (mode 0600); its open"
        " connections were closed: deliver the file and restart what used the old one",
    )
    return 0


def cmd_broker_suspend(args: argparse.Namespace) -> int:
    from broker.provision import suspend

    held = suspend(_operator(args), args.login)
    emit(
        args,
        {"login": args.login, "suspended": True, "connections_closed": held},
        f"{args.login} is suspended: it can open no connection, and its {held} open"
        " connection(s) were closed; lift it with `cipherpost broker reinstate`",
    )
    return 0


def cmd_broker_reinstate(args: argparse.Namespace) -> int:
    from broker.provision import reinstate

    if not reinstate(_operator(args), args.login):
        raise UsageError(f"{args.login} is not suspended (its connection limit is not 0)")
    emit(
        args,
        {"login": args.login, "suspended": False},
        f"{args.login} may connect again (its provisioned limits are back)",
    )
    return 0


def _operator(args: argparse.Namespace) -> Any:
    from broker.management import Management

    mgmt = Management.for_operator(args.admin_url, args.admin_password_file)
    return mgmt.with_ca(args.tls_ca) if args.tls_ca is not None else mgmt


def _management_args(sp: argparse.ArgumentParser, *, tls_ca: bool = True) -> None:
    sp.add_argument(
        "--admin-url",
        required=True,
        metavar="URL",
        help="management API and user, e.g. https://admin@broker:15671; the password from"
        " CIPHERPOST_ADMIN_PASSWORD or --admin-password-file, never the command line",
    )
    sp.add_argument("--admin-password-file", type=Path, metavar="FILE", help="mode 0600")
    if tls_ca:
        sp.add_argument(
            "--tls-ca", type=Path, metavar="FILE",
            help="for an https management API: the CA its certificate chains to",
        )  # fmt: skip


def _admin_args(sp: argparse.ArgumentParser) -> None:
    _management_args(sp, tls_ca=False)  # its --tls-ca also goes to the clients
    sp.add_argument("--vhost", default="cipherpost", metavar="VHOST")
    sp.add_argument("--amqp-host", default="127.0.0.1", metavar="HOST")
    sp.add_argument("--amqp-port", type=int, default=5672, metavar="PORT")
    sp.add_argument(
        "--node",
        action="append",
        metavar="HOST:PORT",
        help="a node of a cluster (repeat for each; replaces --amqp-host/--amqp-port):"
        " clients try them in shuffled order (docs/cluster.md)",
    )
    sp.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="TLS: the CA certificate the nodes' certificates chain to; clients pin it and"
        " the management API (https) is checked against it",
    )
    sp.add_argument(
        "--certificate-login",
        action="store_true",
        help="users without any password: each logs in with its TLS client certificate"
        " (<login>.tls.crt/.key beside its credentials file, issued by the TLS CA)",
    )
    sp.add_argument(
        "--credentials-dir",
        type=Path,
        default=Path("broker-credentials"),
        metavar="DIR",
        help="where credentials files are written (0600; default ./broker-credentials);"
        " a password is never printed",
    )


def register(sub: Subcommands) -> None:
    """``cipherpost broker tls-request|provision|rotate|suspend|reinstate``."""
    br_sub = group(sub, "broker", "RabbitMQ provisioning and credentials")
    sp = add(
        br_sub,
        "tls-request",
        cmd_broker_tls_request,
        "make this holder's TLS key (never an agency signing or encryption key) and a"
        " certificate request whose common name is its broker login",
    )
    sp.add_argument("login", metavar="LOGIN", help="the broker login (its credentials file's)")
    sp.add_argument(
        "--dir", type=Path, default=Path("."), metavar="DIR",
        help="where LOGIN.tls.key (0600) and LOGIN.tls.csr go: beside the credentials file",
    )  # fmt: skip
    sp = add(
        br_sub,
        "provision",
        cmd_broker_provision,
        "create or update every agency's broker user, permissions, inbox and binding;"
        " remove revoked agencies' access (idempotent)",
    )
    directory_args(sp)
    _admin_args(sp)
    sp.add_argument("--login-prefix", default="", metavar="PREFIX")
    sp.add_argument(
        "--kits",
        type=Path,
        metavar="KITS_DIR",
        help="onboarding kits: each new agency's credentials go into its own kit",
    )
    sp.add_argument(
        "--publish",
        action="store_true",
        help="also publish this directory version on cp.directory (running holders pick it up)",
    )
    sp = add(
        br_sub,
        "rotate",
        cmd_broker_rotate,
        "issue a new password for one broker login, write its credentials file, close its"
        " connections",
    )
    sp.add_argument("login", metavar="LOGIN")
    _admin_args(sp)
    sp = add(
        br_sub,
        "suspend",
        cmd_broker_suspend,
        "stop one broker login using the broker (a flooding agency): no new connection,"
        " its open ones closed; what it already queued stays and is decided as usual",
    )
    sp.add_argument(
        "login", metavar="LOGIN", help="the broker login, as in its credentials file's name"
    )
    _management_args(sp)
    sp = add(
        br_sub,
        "reinstate",
        cmd_broker_reinstate,
        "lift a suspension (by a gateway's flood guard or `broker suspend`): the login's"
        " provisioned connection and channel limits again",
    )
    sp.add_argument(
        "login", metavar="LOGIN", help="the broker login, as in its credentials file's name"
    )
    _management_args(sp)
