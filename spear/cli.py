"""The ``spear`` command line: daemons, the embedded cluster and client commands.

``main(argv=None) -> int``; logging is configured here and nowhere else.
Exit codes: 0 success, 1 a failed operation (the error's code is printed),
2 bad usage or configuration, 3 could not reach the service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import msgspec

from . import __version__, errors, logs
from .config import Config, config_file, load_config, parse_labels

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def run_async(coro) -> Any:
    """Run a coroutine on uvloop (plain asyncio where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


# ------------------------------------------------------------------ parsers


def _client_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sms", help="SMS address (default: $SPEAR_SMS or tcp://127.0.0.1:7700)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for a reply")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", help="TOML configuration file")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spear", description="Spear: a distributed serverless platform")
    ap.add_argument("--version", action="version", version=f"spear {__version__}")
    ap.add_argument("--log-level", metavar="LEVEL[,COMPONENT=LEVEL...]",
                    help="debug|info|warning|error, optionally per component: "
                         "info,spear.mesh=debug")
    ap.add_argument("--log-format", choices=["auto", "json", "text"])
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("sms", help="run the management service daemon")
    p.add_argument("--listen", help="ROUTER address to bind (default tcp://127.0.0.1:7700)")
    p.add_argument("--data", help="state directory (default ./.spear/sms)")
    p.add_argument("--store", choices=["memory", "leveldb", "rocksdb"], help="state backend")
    p.add_argument("--heartbeat-interval", type=float)
    p.add_argument("--heartbeat-timeout", type=float)
    p.add_argument("--cleanup-interval", type=float)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics here (0: any free port)")
    p.add_argument("--config", help="TOML configuration file")

    p = sub.add_parser("spearlet", help="run an execution node daemon")
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
    p.add_argument("--config", help="TOML configuration file")

    p = sub.add_parser("up", help="run an embedded cluster: SMS + N spearlets on loopback")
    p.add_argument("-n", "--spearlets", type=int, default=2, help="number of spearlets (default 2)")
    p.add_argument("--data", default="./.spear", help="state directory (default ./.spear)")
    p.add_argument("--port", type=int, default=7700, help="SMS port; spearlets use the next ones")
    p.add_argument("--store", choices=["memory", "leveldb"], default="leveldb")
    p.add_argument("--http", default="127.0.0.1:7780", help="HTTP gateway HOST:PORT (default 127.0.0.1:7780)")
    p.add_argument("--no-gateway", action="store_true", help="do not start the HTTP gateway")
    p.add_argument("--config", help="TOML configuration file passed to every daemon")
    p.add_argument("--host-root", action="append", metavar="PATH[:rw]",
                   help="a host directory functions may reach, read-only unless :rw (repeatable)")

    p = sub.add_parser("nodes", help="list nodes (or show one)")
    p.add_argument("node", nargs="?", help="node id or name")
    p.add_argument("--state", choices=["ready", "unhealthy", "draining", "gone"])
    _client_opts(p)

    p = sub.add_parser("keygen", help="write a CURVE key pair (NAME.key, NAME.key_secret)")
    p.add_argument("name", help="key name, e.g. sms, spearlet-1, alice")
    p.add_argument("--dir", default="./.spear/keys", help="directory (default ./.spear/keys)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("ping", help="check that the SMS (or a spearlet) answers")
    p.add_argument("--node", help="a spearlet address instead of the SMS")
    _client_opts(p)

    from .bench import add_arguments as _bench_arguments
    from .gateway.cli import add_arguments as _gateway_arguments

    _gateway_arguments(sub.add_parser(
        "gateway", help="run the HTTP gateway: REST, OpenAPI, Swagger UI, admin page"))

    _bench_arguments(sub.add_parser(
        "bench", help="measure Spear against a bare-pyzmq floor (SPEC section 9)"))

    from . import cli_functions

    cli_functions.add_parsers(sub, _client_opts)

    from . import cli_config, cli_store

    cli_config.add_parsers(sub)
    cli_store.add_parsers(sub)
    return ap


# ------------------------------------------------------------------ helpers


def _config(args, overrides: dict | None = None) -> Config:
    return load_config(getattr(args, "config", None), overrides=overrides or {})


def _client(args):
    from .client import Client

    cfg = _config(args, {"global.sms": args.sms, "global.timeout": args.timeout})
    return Client(cfg.global_.sms, timeout=cfg.global_.timeout, security=cfg.security)


def _to_builtins(obj) -> Any:
    return msgspec.to_builtins(obj)


def _print_json(obj) -> None:
    print(json.dumps(_to_builtins(obj), indent=2, sort_keys=True, default=str))


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table on a terminal (rich), plain aligned text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        Console = None
    if Console is not None:
        t = Table(title=title, header_style="bold")
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*[str(x) for x in r])
        Console(width=max(100, os.get_terminal_size(1).columns if sys.stdout.isatty() else 160)).print(t)
        return
    print(title)  # pragma: no cover
    for r in [columns, *rows]:  # pragma: no cover
        print("  ".join(str(x) for x in r))


# ------------------------------------------------------------------ commands


def cmd_sms(args) -> int:
    from .sms.daemon import SMS

    overrides = {
        "sms.listen": args.listen,
        "storage.backend": args.store,
        "storage.path": args.data,
        "sms.heartbeat_interval": args.heartbeat_interval,
        "sms.heartbeat_timeout": args.heartbeat_timeout,
        "sms.cleanup_interval": args.cleanup_interval,
        "sms.metrics_port": args.metrics_port,
    }
    cfg = _config(args, overrides)
    run_async(SMS(cfg).serve_forever())
    return EXIT_OK


def cmd_spearlet(args) -> int:
    from .spearlet.daemon import Spearlet

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
    }
    cfg = _config(args, overrides)
    run_async(Spearlet(cfg, config_file=config_file(getattr(args, "config", None))).serve_forever())
    return EXIT_OK


def cmd_nodes(args) -> int:
    with _client(args) as c:
        if args.node:
            n = c.node(args.node)
            if args.json:
                _print_json(n)
            else:
                _print_nodes([n])
            return EXIT_OK
        nodes = c.nodes(args.state)
    if args.json:
        _print_json(nodes)
    else:
        _print_nodes(nodes)
    return EXIT_OK


def _runtime_states(n) -> str:
    """One line per runtime: available or not (why is printed below the table)."""
    return "\n".join([f"{r}: yes" for r in n.runtimes]
                     + [f"{r}: no" for r in sorted(n.unavailable)]) or "-"


def _print_nodes(nodes) -> None:
    now = time.time()
    rows = []
    for n in nodes:
        u = n.usage
        runtimes = _runtime_states(n)
        rows.append([
            n.name, n.node_id, n.state, n.address,
            f"{u.cpu_percent:.0f}% of {n.capacity.cores:g}",
            f"{_fmt_bytes(u.memory_used)}/{_fmt_bytes(n.capacity.memory)}",
            f"{u.load1:.2f}", u.running, u.warm,
            ",".join(f"{k}={v}" for k, v in n.labels.items()) or "-",
            runtimes,
            f"{max(0.0, now - n.last_seen):.1f}s ago",
        ])
    print_table(f"{len(nodes)} node(s)",
                ["name", "id", "state", "address", "cpu", "memory", "load", "running", "warm",
                 "labels", "runtimes", "heartbeat"], rows)
    off = [(n.name, r, why) for n in nodes for r, why in sorted(n.unavailable.items())]
    if off:
        print("runtimes not available:")
        for name, r, why in off:
            print(f"  {name} {r}: {why if len(nodes) == 1 else why[:200]}")


def cmd_ping(args) -> int:
    with _client(args) as c:
        t0 = time.perf_counter()
        pong = c.ping(node=args.node)
        dt = time.perf_counter() - t0
    if args.json:
        _print_json({"role": pong.role, "node_id": pong.node_id, "version": pong.version, "rtt": dt})
    else:
        print(f"{pong.role} {pong.node_id} version {pong.version}: {dt * 1e3:.2f} ms")
    return EXIT_OK


def cmd_keygen(args) -> int:
    from .mesh.security import keygen

    public_file, secret_file, z85 = keygen(args.dir, args.name)
    if args.json:
        _print_json({"public": str(public_file), "secret": str(secret_file), "z85": z85})
    else:
        print(f"public key  {public_file}  ({z85})")
        print(f"secret key  {secret_file}  (mode 0600: keep it on this host)")
    return EXIT_OK


def cmd_up(args) -> int:
    from .cluster import run_up

    return run_up(args)


COMMANDS = {
    "sms": cmd_sms,
    "spearlet": cmd_spearlet,
    "nodes": cmd_nodes,
    "ping": cmd_ping,
    "keygen": cmd_keygen,
    "bench": lambda args: __import__("spear.bench", fromlist=["run"]).run(args),
    "gateway": lambda args: __import__("spear.gateway.cli", fromlist=["run"]).run(args),
    "up": cmd_up,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spear`` command."""
    from . import cli_config, cli_functions, cli_store

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    daemon = args.command in ("sms", "spearlet", "up", "gateway")
    if daemon:
        # before any file is made: state, caches and logs are born 0600/0700 (SPEC §8)
        from . import fsmodes

        fsmodes.daemon_umask()
    try:
        cfg = _config(args, {"global.log_level": args.log_level,
                             "global.log_format": args.log_format})
    except errors.ConfigError as exc:
        print(f"spear: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(args.log_level or cfg.global_.log_level if daemon else (args.log_level or "warning"),
               args.log_format or cfg.global_.log_format, component=args.command)
    handler = (COMMANDS.get(args.command) or cli_functions.COMMANDS.get(args.command)
               or cli_store.COMMANDS.get(args.command) or cli_config.COMMANDS[args.command])
    try:
        return handler(args)
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
        return 130
    except BrokenPipeError:  # e.g. `spear nodes | head`
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
