"""CLI commands that deploy and invoke functions (filled in with the runtimes)."""

from __future__ import annotations

COMMANDS: dict = {}


def add_parsers(sub, client_opts) -> None:
    """Add the function subcommands to the ``spear`` parser."""
