"""``spear sms`` and ``spear spearlet``: run a daemon in the foreground until SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import config_file, parse_labels
from ._base import EXIT_OK, Command, config_of


def run_async(coro) -> Any:
    """Run a coroutine on uvloop (plain asyncio where uvloop is missing), as every daemon does."""
    from .. import memory

    memory.tune()  # big payloads reuse heap pages instead of page-faulting fresh mmaps
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def add_sms_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear sms``."""
    p.add_argument("--listen", help="ROUTER address to bind (default tcp://127.0.0.1:7700)")
    p.add_argument("--data", help="state directory (default ./.spear/sms)")
    p.add_argument("--store", choices=["memory", "leveldb", "rocksdb"], help="state backend")
    p.add_argument("--heartbeat-interval", type=float)
    p.add_argument("--heartbeat-timeout", type=float)
    p.add_argument("--cleanup-interval", type=float)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics here (0: any free port)")
    p.add_argument("--config", help="TOML configuration file")


def add_spearlet_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear spearlet``."""
    p.add_argument("--sms", help="SMS address to register with")
    p.add_argument("--listen", help="ROUTER address for direct invocation (default tcp://127.0.0.1:7701)")
    p.add_argument("--advertise", help="address clients should use to reach this node")
    p.add_argument("--name", help="node name")
    p.add_argument("--node-id", help="stable node id (default: persisted in the data dir)")
    p.add_argument("--labels", help="k=v,k2=v2 placement labels")
    p.add_argument("--data", help="node data directory (default ./.spear/spearlet)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics here (0: any free port)")
    p.add_argument("--host-root", action="append", metavar="PATH[:rw]",
                   help="a host directory functions may reach, read-only unless :rw "
                        "(repeatable; replaces [spearlet] host_roots)")
    p.add_argument("--private-path", action="append", metavar="PATH",
                   help="a path never granted to a function, nor anything in or above it "
                        "(repeatable; replaces [spearlet] private_paths)")
    p.add_argument("--config", help="TOML configuration file")


def cmd_sms(args: argparse.Namespace) -> int:
    """Serve the SMS until SIGTERM/SIGINT."""
    from ..sms.daemon import SMS

    overrides = {
        "sms.listen": args.listen,
        "storage.backend": args.store,
        "storage.path": args.data,
        "sms.heartbeat_interval": args.heartbeat_interval,
        "sms.heartbeat_timeout": args.heartbeat_timeout,
        "sms.cleanup_interval": args.cleanup_interval,
        "sms.metrics_port": args.metrics_port,
    }
    run_async(SMS(config_of(args, overrides)).serve_forever())
    return EXIT_OK


def cmd_spearlet(args: argparse.Namespace) -> int:
    """Serve a Spearlet until SIGTERM/SIGINT."""
    from ..spearlet.daemon import Spearlet

    labels = parse_labels(args.labels) if args.labels else None
    overrides = {
        "spearlet.sms": args.sms,
        "spearlet.listen": args.listen,
        "spearlet.advertise": args.advertise,
        "spearlet.name": args.name,
        "spearlet.node_id": args.node_id,
        "spearlet.labels": labels,
        "spearlet.data": args.data,
        "spearlet.metrics_port": args.metrics_port,
        "spearlet.host_roots": args.host_root,
        "spearlet.private_paths": args.private_path,
    }
    cfg = config_of(args, overrides)
    run_async(Spearlet(cfg, config_file=config_file(getattr(args, "config", None))).serve_forever())
    return EXIT_OK


COMMANDS = {
    "sms": Command(add_sms_arguments, cmd_sms),
    "spearlet": Command(add_spearlet_arguments, cmd_spearlet),
}
