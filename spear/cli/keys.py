"""``spear keygen``: a CURVE key pair for a daemon or a user."""

from __future__ import annotations

import argparse

from ._base import EXIT_OK, Command
from ._output import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear keygen``."""
    p.add_argument("name", help="key name, e.g. sms, spearlet-1, alice")
    p.add_argument("--dir", default="./.spear/keys", help="directory (default ./.spear/keys)")
    p.add_argument("--json", action="store_true")


def cmd_keygen(args) -> int:
    """Write ``NAME.key`` and ``NAME.key_secret`` (0600) and print where."""
    from ..mesh.security import keygen

    public_file, secret_file, z85 = keygen(args.dir, args.name)
    if args.json:
        print_json({"public": str(public_file), "secret": str(secret_file), "z85": z85})
    else:
        print(f"public key  {public_file}  ({z85})")
        print(f"secret key  {secret_file}  (mode 0600: keep it on this host)")
    return EXIT_OK


COMMANDS = {"keygen": Command(add_arguments, cmd_keygen)}
