"""``spear autoscaler``: grow and shrink the cluster's nodes with its load, until SIGTERM."""

from __future__ import annotations

import argparse

from ._base import EXIT_OK, Command, config_of


def add_autoscaler_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear autoscaler``."""
    p.add_argument("--sms", help="SMS address (default: [global] sms)")
    p.add_argument("--config", help="TOML configuration file (its [autoscaler] section)")
    p.add_argument("--provider", choices=["local", "docker", "kubernetes", "cloud"],
                   help="where nodes come from (default: [autoscaler] provider)")
    p.add_argument("--min-nodes", type=int)
    p.add_argument("--max-nodes", type=int)
    p.add_argument("--data", help="the autoscaler's state directory (default ./.spear/autoscaler)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics here (0: any free port)")
    p.add_argument("--keep-nodes", action="store_true",
                   help="leave the nodes running on exit (the next run takes them back)")


def cmd_autoscaler(args: argparse.Namespace) -> int:
    """Run the autoscaler in the foreground."""
    import asyncio

    from ..autoscale.controller import serve

    cfg = config_of(args, {
        "global.sms": args.sms,
        "autoscaler.provider": args.provider,
        "autoscaler.min_nodes": args.min_nodes,
        "autoscaler.max_nodes": args.max_nodes,
        "autoscaler.data": args.data,
        "autoscaler.metrics_port": args.metrics_port,
    })
    asyncio.run(serve(cfg, keep_nodes=args.keep_nodes))
    return EXIT_OK


COMMANDS = {"autoscaler": Command(add_autoscaler_arguments, cmd_autoscaler)}
