"""``spear gateway`` (also ``python -m spear.gateway``): the HTTP gateway daemon.

Wired into :mod:`spear.cli` like ``spear bench``: ``add_arguments(parser)``
fills the subcommand's parser, ``run(args) -> int`` runs it.
"""

from __future__ import annotations

import argparse
import sys

from .. import errors


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``spear gateway``."""
    p.add_argument("--sms", help="SMS address (default: [global] sms, $SPEAR_SMS or tcp://127.0.0.1:7700)")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="where to serve HTTP (default: [gateway] listen or 127.0.0.1:7780)")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--max-body", type=int, metavar="BYTES",
                   help="largest request body (default 64 MiB, the wire's payload cap)")
    p.add_argument("--invoke-timeout", type=float, metavar="S",
                   help="longest wait for a synchronous invocation (default 300)")
    p.add_argument("--sample-interval", type=float, metavar="S",
                   help="seconds between live-figure samples (default 2)")
    p.add_argument("--access-log", action="store_true", default=None, help="log every request")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host name to answer to (repeat; replaces [gateway] allowed_hosts, "
                        "default 127.0.0.1, localhost, [::1])")
    p.add_argument("--allowed-origin", action="append", metavar="URL",
                   help="a browser origin that may send writes (repeat; [gateway] allowed_origins)")
    return p


def settings_from_args(args):
    """Resolve :class:`~spear.gateway.server.Settings` from parsed arguments."""
    from ..config import load_config
    from .server import from_config

    cfg = load_config(args.config)
    return from_config(cfg, sms=args.sms, http=args.http, overrides={
        "max_body": args.max_body,
        "invoke_timeout": args.invoke_timeout,
        "sample_interval": args.sample_interval,
        "access_log": args.access_log,
        "allowed_hosts": args.allowed_host,
        "allowed_origins": args.allowed_origin,
    })


def run(args: argparse.Namespace) -> int:
    """Serve the gateway until SIGINT/SIGTERM."""
    from ..mesh.security import warn_open
    from .server import serve

    settings = settings_from_args(args)
    if not getattr(settings.security, "key", ""):
        warn_open("gateway's SMS link")
    return serve(settings)


def main(argv: list[str] | None = None) -> int:
    """``python -m spear.gateway``: the same as ``spear gateway``."""
    from .. import fsmodes, logs
    from ..config import load_config

    fsmodes.daemon_umask()  # as `spear gateway` (spear.cli.main) does

    ap = argparse.ArgumentParser(prog="spear gateway", description="Spear HTTP gateway")
    ap.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--log-format", choices=["auto", "json", "text"])
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        logs.setup(args.log_level or cfg.global_.log_level, args.log_format or cfg.global_.log_format,
                   component="gateway")
        return run(args)
    except errors.ConfigError as exc:
        print(f"spear gateway: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
