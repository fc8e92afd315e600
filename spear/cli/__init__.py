"""The ``spear`` command line: one module per command group, imported only when one of its commands runs.

This package may import anything in :mod:`spear`; nothing in :mod:`spear`
imports it except the ``__main__`` modules (``python -m spear``,
``spear.sms``, ``spear.spearlet``, ``spear.gateway``). Its modules import
:mod:`._base` and :mod:`._output`, never this ``__init__`` nor each other.
:data:`COMMANDS` names every command, its group module and its one-line help,
so ``spear --help`` imports no command module and ``spear deploy ...`` only
:mod:`.functions`.

``main(argv=None) -> int``; logging is configured here and nowhere else.
Exit codes: 0 success, 1 a failed operation (the error's code is printed),
2 bad usage or configuration, 3 could not reach the service, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__, errors
from ._base import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Command

#: command -> (module of this package that implements it, one-line help), in help order
COMMANDS: dict[str, tuple[str, str]] = {
    "sms": ("daemons", "run the management service daemon"),
    "spearlet": ("daemons", "run an execution node daemon"),
    "up": ("cluster", "run an embedded cluster: SMS + N spearlets on loopback"),
    "autoscaler": ("autoscaler", "add and remove nodes as the load asks (runs until SIGTERM)"),
    "nodes": ("nodes", "list nodes (or show one)"),
    "keygen": ("keys", "write a CURVE key pair (NAME.key, NAME.key_secret)"),
    "ping": ("nodes", "check that the SMS (or a spearlet) answers"),
    "gateway": ("gateway", "run the HTTP gateway: REST, OpenAPI, Swagger UI, admin page"),
    "deploy": ("functions", "deploy a function (flags, a TOML function file, a directory of Python)"),
    "functions": ("functions", "list deployed functions (or show one)"),
    "remove": ("functions", "remove a function"),
    "invoke": ("executions", "invoke a function"),
    "executions": ("executions", "list executions (filters, paging) or show one"),
    "logs": ("logs", "one execution's output (followed while it runs), or a function's"),
    "events": ("nodes", "node and execution events (resumable with --since)"),
    "stats": ("nodes", "cluster resources, reservations and execution counts"),
    "cancel": ("executions", "cancel an execution"),
    "demo": ("cluster", "start a cluster, deploy every example, invoke each in every mode"),
    "config": ("config", "show or check the configuration"),
    "store": ("store", "check or repair the SMS's LevelDB store (SMS stopped)"),
}

#: commands that run daemons: they log at the configured level and make private files
DAEMONS = frozenset({"sms", "spearlet", "up", "gateway", "autoscaler"})


def load_command(name: str) -> Command:
    """Import the module of command ``name`` and return its :class:`~._base.Command`."""
    module = importlib.import_module(f".{COMMANDS[name][0]}", __name__)
    return module.COMMANDS[name]


def _logging_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--log-level", metavar="LEVEL[,COMPONENT=LEVEL...]", default=default,
                   help="debug|info|warning|error, optionally per component: info,spear.mesh=debug")
    p.add_argument("--log-format", choices=["auto", "json", "text"], default=default)


def command_in(argv: list[str]) -> str | None:
    """The command ``argv`` asks for: its first word that is not a top-level option or its value."""
    words = iter(argv)
    for word in words:
        if word in ("--log-level", "--log-format"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


class _Parser(argparse.ArgumentParser):
    """A parser that takes positionals and options in any order (``invoke add --json hi``).

    Plain argparse gives an optional positional its (empty) value as soon as it
    meets the first positional word, so a word after an option is "unrecognized";
    intermixed parsing does not. A parser with subcommands parses as usual (argparse
    cannot intermix those), and its subcommands' parsers intermix in turn.
    """

    _plain = False

    def parse_known_args(self, args=None, namespace=None):
        if self._plain or any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._actions):
            return super().parse_known_args(args, namespace)
        self._plain = True  # parse_known_intermixed_args calls back here, twice
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._plain = False


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``spear`` parser; only ``command``'s subparser gets its options (and its module imported).

    Every other subcommand is listed with its help line, which is all
    ``spear --help`` shows.
    """
    ap = _Parser(prog="spear", description="Spear: a distributed serverless platform")
    ap.add_argument("--version", action="version", version=f"spear {__version__}")
    _logging_options(ap, None)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text)
        if name != command:
            continue
        load_command(name).add_arguments(p)
        if name in DAEMONS:
            # `python -m spear.gateway --log-level debug` (and so `spear gateway --log-level
            # debug`) must work: the daemons take the logging options after their name too
            _logging_options(p, argparse.SUPPRESS)
    return ap


def _setup_logging(args: argparse.Namespace) -> None:
    """Daemons log at the configured level; client commands at ``warning`` unless told."""
    from .. import logs
    from ..config import load_config
    from ._base import config_of

    daemon = args.command in DAEMONS
    overrides = {"global.log_level": args.log_level, "global.log_format": args.log_format}
    if daemon:
        cfg = config_of(args, overrides)  # a bad configuration stops a daemon before it starts
        level, fmt = args.log_level or cfg.global_.log_level, args.log_format or cfg.global_.log_format
    else:
        # a client command loads the configuration it needs itself and reports its errors
        # (`config check FILE` must not fail on a bad SPEAR_* variable it was told to ignore)
        try:
            cfg = config_of(args, overrides)
        except errors.ConfigError:
            cfg = load_config(None, env={}, overrides=overrides)  # the flags alone must be valid
        level, fmt = args.log_level or "warning", args.log_format or cfg.global_.log_format
    logs.setup(level, fmt, component=args.command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spear`` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = command_in(argv)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    if args.command in DAEMONS:
        # before any file is made: state, caches and logs are born 0600/0700
        from .. import fsmodes

        fsmodes.daemon_umask()
    try:
        _setup_logging(args)
        return load_command(args.command).run(args)
    except errors.ConfigError as exc:
        print(f"spear: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except (errors.DeadlineExceeded, errors.Unavailable) as exc:
        print(f"spear: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except errors.SpearError as exc:
        print(f"spear: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `spear nodes | head`
        return EXIT_OK
