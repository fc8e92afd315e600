"""What every command module shares: exit codes, the command record, client options.

Imports nothing of Spear at module level: the configuration (and with it
msgspec) is loaded when a command reads it and the client when a command
makes one, so ``spear --help`` and a module that merely builds parsers stay cheap.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Callable, NamedTuple

if TYPE_CHECKING:
    from ..config import Config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
#: Ctrl-C, as a shell reports a process ended by SIGINT
EXIT_INTERRUPTED = 130


class Command(NamedTuple):
    """One subcommand: what fills its parser and what runs it."""

    #: adds the subcommand's options to its (already created) parser
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: runs the command with the parsed arguments; returns the exit code
    run: Callable[[argparse.Namespace], int]


def client_options(p: argparse.ArgumentParser) -> None:
    """The options every command that talks to the SMS or a Spearlet takes."""
    p.add_argument("--sms", help="SMS address (default: $SPEAR_SMS or tcp://127.0.0.1:7700)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the SMS (or spearlet) to answer a request; "
                        "not how long a function may run (that is --exec-timeout)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", help="TOML configuration file")


def config_of(args: argparse.Namespace, overrides: dict | None = None) -> Config:
    """The effective configuration: ``--config`` (if the command has it) and ``overrides``."""
    from ..config import load_config

    return load_config(getattr(args, "config", None), overrides=overrides or {})


def make_client(args: argparse.Namespace):
    """A blocking :class:`~spear.client.Client` from the client options.

    A ``--node`` given as a node's name or id is replaced by its address.
    """
    from ..client import Client

    cfg = config_of(args, {"global.sms": args.sms, "global.timeout": args.timeout})
    client = Client(cfg.global_.sms, timeout=cfg.global_.timeout, security=cfg.security)
    if getattr(args, "node", None):  # every command's --node goes through here
        try:
            args.node = node_address(client, args.node)
        except BaseException:
            client.close()
            raise
    return client


def node_address(client, node: str | None) -> str | None:
    """The spearlet address ``--node`` names: an address as given, else a node's name or id.

    Raises NotFound naming the known nodes, so a typo is one line, not a traceback.
    """
    if not node or "://" in node:
        return node
    from .. import errors

    nodes = client.nodes()
    for n in nodes:
        if node in (n.name, n.node_id):
            return n.address
    known = ", ".join(sorted(n.name for n in nodes)) or "none"
    raise errors.NotFound(f"no node named {node!r} (known: {known})")
