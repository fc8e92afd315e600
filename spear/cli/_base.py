"""What every command module shares: exit codes, the command record, client options.

Imports only the light parts of Spear (``config``); the client is imported
when a command makes one, so a module that merely builds parsers stays cheap.
"""

from __future__ import annotations

import argparse
from typing import Callable, NamedTuple

from ..config import Config, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class Command(NamedTuple):
    """One subcommand: what fills its parser and what runs it."""

    #: adds the subcommand's options to its (already created) parser
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: runs the command with the parsed arguments; returns the exit code
    run: Callable[[argparse.Namespace], int]


def client_options(p: argparse.ArgumentParser) -> None:
    """The options every command that talks to the SMS or a Spearlet takes."""
    p.add_argument("--sms", help="SMS address (default: $SPEAR_SMS or tcp://127.0.0.1:7700)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for a reply")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", help="TOML configuration file")


def config_of(args: argparse.Namespace, overrides: dict | None = None) -> Config:
    """The effective configuration: ``--config`` (if the command has it) and ``overrides``."""
    return load_config(getattr(args, "config", None), overrides=overrides or {})


def make_client(args: argparse.Namespace):
    """A blocking :class:`~spear.client.Client` from the client options."""
    from ..client import Client

    cfg = config_of(args, {"global.sms": args.sms, "global.timeout": args.timeout})
    return Client(cfg.global_.sms, timeout=cfg.global_.timeout, security=cfg.security)
