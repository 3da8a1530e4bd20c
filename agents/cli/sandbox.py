"""``demo`` and ``tour``: the exchange shown in a throwaway world.

Both run the command line itself, handed in as ``commands`` (``agents.cli.main``): neither
imports it back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from agents.cli.common import Subcommands, add

Commands = Callable[[Sequence[str] | None], int]


def cmd_demo(args: argparse.Namespace, commands: Commands) -> int:
    from agents.demo import main as demo_main

    return demo_main(args.admin_url, args.amqp_port, args.dir, args.cluster_dir, commands=commands)


def cmd_tour(args: argparse.Namespace, commands: Commands) -> int:
    from agents.tour import run_tour

    return run_tour(commands, args.dir)


def register_demo(sub: Subcommands, commands: Commands) -> None:
    """``cipherpost demo``."""
    sp = add(
        sub,
        "demo",
        lambda a: cmd_demo(a, commands),
        "the exchange end to end over RabbitMQ, in a throwaway vhost (removed at the end)",
        json_help=None,
    )
    sp.add_argument("--admin-url", default="http://guest:guest@127.0.0.1:15672", metavar="URL")
    sp.add_argument("--amqp-port", type=int, default=5672, metavar="PORT")
    sp.add_argument("--dir", type=Path, metavar="DIR", help="keep the demo's files here")
    sp.add_argument(
        "--cluster-dir",
        type=Path,
        metavar="DIR",
        help="run on a cluster started by `python -m compose.cluster start --dir DIR` (a source"
        " checkout): every node, TLS only, certificate login; --admin-url is then ignored",
    )


def register_tour(sub: Subcommands, commands: Commands) -> None:
    """``cipherpost tour``."""
    sp = add(
        sub,
        "tour",
        lambda a: cmd_tour(a, commands),
        "offline tour: make a CA, enroll agencies, seal, verify, open, refuse forgeries",
        json_help=None,
    )
    sp.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="keep the tour's files here (default: a temporary folder, removed)",
    )
