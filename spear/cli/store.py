"""``spear store check [PATH]`` and ``spear store repair [PATH]``.

PATH defaults to ``[storage] path`` of the configuration. ``check`` exits 0
when the store opens and every record reads back, 1 when it is damaged.
``repair`` copies the store to ``PATH.backup-…`` first (``--no-backup`` to
skip), runs LevelDB's repairer, then checks; stop the SMS before either.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from ..config import load_config
from ._base import EXIT_FAILED, EXIT_OK, Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``store check`` and ``store repair`` under the ``store`` parser."""
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    for name, text in (("check", "open the store and read every record; exit 1 if damaged"),
                       ("repair", "back the store up, repair it with LevelDB's repairer, check it")):
        s = ssub.add_parser(name, help=text)
        s.add_argument("path", nargs="?", help="store directory (default: [storage] path)")
        s.add_argument("--config", help="TOML configuration file")
        s.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "repair":
            s.add_argument("--no-backup", action="store_true",
                           help="do not copy the store aside first")


def cmd_store(args) -> int:
    """Check or repair the store and print the report."""
    from ..store import repair as r

    path = args.path or load_config(args.config).storage.path
    if args.store_command == "check":
        rep = r.check(path)
    else:
        rep = r.repair(path, backup=not args.no_backup)
    if args.json:
        print(json.dumps(asdict(rep), indent=2, sort_keys=True))
    else:
        for line in rep.lines():
            print(line, file=sys.stdout if rep.ok else sys.stderr)
    return EXIT_OK if rep.ok else EXIT_FAILED


COMMANDS = {"store": Command(add_arguments, cmd_store)}
