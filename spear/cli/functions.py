"""``spear deploy``, ``spear functions`` and ``spear remove``: what runs where.

A function is described by flags, a TOML function file, or both (flags win);
:func:`spec_from_args` turns them into a :class:`~spear.protocol.FunctionSpec`.
"""

from __future__ import annotations

import argparse
import shlex
import tomllib
from pathlib import Path

import msgspec

from .. import errors, protocol as P
from ..config import parse_labels
from ._base import EXIT_OK, Command, client_options, make_client
from ._output import print_either, print_json, print_table


def add_deploy_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear deploy``."""
    p.add_argument("name", nargs="?", help="function name (or from the file)")
    p.add_argument("-f", "--file", help="TOML function file (keys of FunctionSpec)")
    p.add_argument("--runtime", choices=["wasm", "process", "docker"])
    p.add_argument("--artifact", help="path of a .wasm/.wat file")
    p.add_argument("--handler", help="wasm export name, or Python module:function")
    p.add_argument("--command", dest="cmdline", help="command line (process/docker)")
    p.add_argument("--image", help="docker image")
    p.add_argument("--mode", choices=["oneshot", "pooled"])
    p.add_argument("--env", action="append", default=[], help="K=V (repeatable)")
    p.add_argument("--secret-env", action="append", default=[], metavar="K=V",
                   help="an environment value never shown back (to any role) nor logged (repeatable)")
    p.add_argument("--workdir")
    p.add_argument("--exec-timeout", type=float, dest="limit_timeout", metavar="S",
                   help="seconds an execution of this function may run (default: the node's)")
    # the flag's old name, in scripts written before the timeouts were named alike
    p.add_argument("--timeout-limit", type=float, dest="limit_timeout", help=argparse.SUPPRESS)
    p.add_argument("--memory-mb", type=int)
    p.add_argument("--fuel", type=int)
    p.add_argument("--cpus", type=float)
    p.add_argument("--pids", type=int)
    p.add_argument("--max-output-mb", type=int,
                   help="stop the function once its output exceeds this (MiB; node maximum 64)")
    p.add_argument("--network", action="store_true", help="allow network access")
    p.add_argument("--min-warm", type=int)
    p.add_argument("--max-instances", type=int)
    p.add_argument("--labels", help="placement labels k=v,...")
    p.add_argument("--retries", type=int)
    p.add_argument("--idempotent", action="store_true")
    p.add_argument("--grant", action="append", default=[], help="wasm grants, e.g. env, dir:/a:/b")
    p.add_argument("--node", help="deploy directly on this spearlet (address, name or id)")
    client_options(p)


def add_functions_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear functions``."""
    p.add_argument("--node", help="ask this spearlet directly")
    client_options(p)


def add_remove_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear remove``."""
    p.add_argument("name")
    p.add_argument("--node", help="on this spearlet directly")
    client_options(p)


def _read_file(path: Path) -> dict:
    """The ``[function]`` table (or the whole document) of a TOML function file."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise errors.InvalidArgument(f"{path}: {exc}") from None
    return raw.get("function", raw)


def _apply_env(raw: dict, args) -> None:
    """``--env`` and ``--secret-env`` into ``raw["env"]`` (and ``raw["secret_env"]``)."""
    for kv in args.env:
        if "=" not in kv:
            raise errors.InvalidArgument(f"--env {kv!r} is not K=V")
        k, v = kv.split("=", 1)
        raw.setdefault("env", {})[k] = v
    for kv in args.secret_env:
        if "=" not in kv:
            raise errors.InvalidArgument(f"--secret-env {kv!r} is not K=V")
        k, v = kv.split("=", 1)
        raw.setdefault("env", {})[k] = v
        secret = raw.setdefault("secret_env", [])
        if k not in secret:
            secret.append(k)


def _apply_limits_and_pool(raw: dict, args) -> None:
    limits = raw.setdefault("limits", {})
    for key, val in (("timeout", args.limit_timeout), ("memory_mb", args.memory_mb),
                     ("fuel", args.fuel), ("cpus", args.cpus), ("pids", args.pids),
                     ("max_output_mb", args.max_output_mb)):
        if val is not None:
            limits[key] = val
    if args.network:
        limits["network"] = True
    pool = raw.setdefault("pool", {})
    if args.min_warm is not None:
        pool["min_warm"] = args.min_warm
    if args.max_instances is not None:
        pool["max"] = args.max_instances


def _apply_artifact(raw: dict, args, base: Path) -> None:
    """Read the artifact named by ``--artifact`` (from the cwd) or the file (from its folder)."""
    artifact = args.artifact or raw.pop("artifact_path", None) or (
        raw.get("artifact") if isinstance(raw.get("artifact"), str) else None)
    if not artifact:
        return
    apath = Path(artifact) if args.artifact else base / artifact
    try:
        raw["artifact"] = apath.read_bytes()
    except OSError as exc:
        raise errors.InvalidArgument(f"artifact {apath}: {exc.strerror}") from None


def spec_from_args(args) -> P.FunctionSpec:
    """Build a FunctionSpec from a TOML file and/or flags (flags win)."""
    raw: dict = {}
    base = Path(".")
    if args.file:
        raw = _read_file(Path(args.file))
        base = Path(args.file).parent
    if args.name:
        raw["name"] = args.name
    for key, val in (("runtime", args.runtime), ("handler", args.handler), ("image", args.image),
                     ("mode", args.mode), ("workdir", args.workdir), ("retries", args.retries)):
        if val is not None:
            raw[key] = val
    if args.idempotent:
        raw["idempotent"] = True
    if args.cmdline:
        raw["command"] = shlex.split(args.cmdline)
    elif isinstance(raw.get("command"), str):
        raw["command"] = shlex.split(raw["command"])
    _apply_env(raw, args)
    if args.grant:
        raw["grants"] = list(raw.get("grants", [])) + args.grant
    if args.labels:
        raw["labels"] = parse_labels(args.labels)
    _apply_limits_and_pool(raw, args)
    _apply_artifact(raw, args, base)
    try:
        return msgspec.convert(raw, P.FunctionSpec)
    except msgspec.ValidationError as exc:
        raise errors.InvalidArgument(f"function spec: {exc}") from None


def cmd_deploy(args) -> int:
    """Deploy a function through the SMS (or on one Spearlet)."""
    spec = spec_from_args(args)
    with make_client(args) as c:
        info = c.deploy(spec, node=args.node)
    print_either(args, info, f"deployed {info.name} ({info.runtime}, digest {info.digest[:12]}, {info.warm} warm)")
    return EXIT_OK


def cmd_functions(args) -> int:
    """List the deployed functions."""
    with make_client(args) as c:
        fns = c.functions(node=args.node)
    if args.json:
        print_json(fns)
        return EXIT_OK
    print_table(f"{len(fns)} function(s)", ["name", "runtime", "digest", "warm", "busy", "hits", "misses",
                                            "evictions"],
                [[f.name, f.runtime, f.digest[:12], f.warm, f.busy, f.hits, f.misses, f.evictions]
                 for f in fns])
    return EXIT_OK


def cmd_remove(args) -> int:
    """Remove a function."""
    with make_client(args) as c:
        c.remove(args.name, node=args.node)
    print_either(args, {"removed": args.name}, f"removed {args.name}")
    return EXIT_OK


COMMANDS = {
    "deploy": Command(add_deploy_arguments, cmd_deploy),
    "functions": Command(add_functions_arguments, cmd_functions),
    "remove": Command(add_remove_arguments, cmd_remove),
}
