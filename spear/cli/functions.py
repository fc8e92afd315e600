"""``spear deploy``, ``spear functions`` and ``spear remove``: what runs where.

A function is described by flags, a TOML function file, or both (flags win);
:func:`spec_from_args` turns them into a :class:`~spear.protocol.FunctionSpec`.

A Python handler can ship its code: ``spear deploy ./myfunc --runtime python
--handler mod:fn`` packs the directory into a code bundle (the artifact, with
its SHA-256), resolves the requirements to exact pins here, with uv, and
records the Python version they were resolved for. The rule: a directory
given as the positional argument is shipped, and only a Python handler
(``--runtime python``, or ``process`` with ``--handler``) ships one;
``--workdir`` still names a directory that must already exist on the nodes.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import sys
import tomllib
import zipfile
from pathlib import Path

import msgspec

from .. import errors, protocol as P
from ..config import parse_labels
from ..specs import canonical_runtime
from ._base import EXIT_OK, Command, client_options, make_client
from ._output import fmt_bytes, print_either, print_json, print_table


def add_deploy_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear deploy``."""
    p.add_argument("name", nargs="?", metavar="NAME|DIR",
                   help="function name (or from the file); or a directory of Python code to ship "
                        "(written as a path: ./myfunc), then the name is --name or the directory's")
    p.add_argument("--name", dest="fn_name", metavar="NAME",
                   help="function name, when the positional argument is a directory")
    p.add_argument("-f", "--file", help="TOML function file (keys of FunctionSpec)")
    p.add_argument("--runtime", choices=["wasm", "process", "docker", "python"],
                   help="python: a Python handler (the process runtime with --handler, which "
                        "it requires)")
    p.add_argument("--artifact", help="path of a .wasm/.wat file (or of a Python handler's code bundle, "
                                      "a zip; a directory as NAME|DIR is packed for you)")
    p.add_argument("--handler", help="wasm export name, or Python module:function (required with "
                                     "--runtime python: no default, e.g. main:handler)")
    p.add_argument("--requirements", metavar="FILE",
                   help="requirements.txt of a Python handler: resolved here to exact pins (uv)")
    p.add_argument("--requirement", action="append", default=[], metavar="LINE",
                   help="one requirement of a Python handler, e.g. 'humanize>=4' (repeatable)")
    p.add_argument("--python", metavar="X.Y",
                   help="Python version of a Python handler (default: this one's, "
                        f"{sys.version_info[0]}.{sys.version_info[1]})")
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
    """The options of ``spear functions`` (``list``, the default) and ``spear functions show NAME``."""
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list",
                   help="list the functions (default), or show one's spec")
    p.add_argument("function", nargs="?", help="the function to show")
    p.add_argument("--node", help="ask this spearlet directly (list only)")
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


def _code_dir(args) -> Path | None:
    """The directory to ship, when the positional argument names one.

    It does when it is written as a path (``./myfunc``, ``.``, ``/src/f``) or,
    with ``--runtime python``, names an existing directory; otherwise it is
    the function's name, as it always was.
    """
    word = args.name
    if not word:
        return None
    as_path = "/" in word or os.sep in word or word in (".", "..")
    if not as_path and not (args.runtime == "python" and os.path.isdir(word)):
        return None
    if not os.path.isdir(word):
        raise errors.InvalidArgument(f"{word} is not a directory (the code to ship)")
    return Path(word)


def spec_from_args(args, progress=None) -> P.FunctionSpec:
    """Build a FunctionSpec from a TOML file and/or flags (flags win).

    ``progress`` hears what packing and resolving do (they take a moment).
    """
    raw: dict = {}
    base = Path(".")
    if args.file:
        raw = _read_file(Path(args.file))
        base = Path(args.file).parent
    code = _code_dir(args)
    name = args.fn_name or (args.name if code is None else None)
    if name:
        raw["name"] = name
    elif code is not None and "name" not in raw:
        raw["name"] = code.resolve().name
    for key, val in (("runtime", args.runtime), ("handler", args.handler), ("image", args.image),
                     ("mode", args.mode), ("workdir", args.workdir), ("retries", args.retries),
                     ("python", args.python)):
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
    _apply_python(raw, args, code, progress or (lambda text: None))
    try:
        return msgspec.convert(raw, P.FunctionSpec)
    except msgspec.ValidationError as exc:
        raise errors.InvalidArgument(f"function spec: {exc}") from None


def _apply_python(raw: dict, args, code: Path | None, say) -> None:
    """What a Python handler ships: its code bundle, pinned requirements, Python version.

    ``runtime = "python"`` becomes the process runtime here. Only a Python
    handler takes a directory, requirements or a Python version.
    """
    alias = raw.get("runtime") == "python"
    if "runtime" in raw:
        raw["runtime"] = canonical_runtime(raw["runtime"])
    if alias and not raw.get("handler"):
        raise errors.InvalidArgument("--runtime python needs --handler module:function "
                                     "(e.g. main:handler for def handler(data) in main.py)")
    from ..client.requirements import read_file, this_python

    lines = list(raw.get("requirements", []))
    if args.requirements:
        lines += read_file(args.requirements)
    lines += args.requirement
    if not (raw.get("runtime") == "process" and raw.get("handler")):
        if code is not None:
            raise errors.InvalidArgument(f"only a Python handler ships a directory ({code}): "
                                         "use --runtime python --handler module:function")
        if lines or raw.get("python"):
            raise errors.InvalidArgument("requirements and --python apply to Python handlers only "
                                         "(--runtime python --handler module:function)")
        return
    if code is not None:
        if raw.get("artifact") is not None:
            raise errors.InvalidArgument(f"give the code as a directory ({code}) or --artifact, not both")
        raw["artifact"], raw["artifact_sha256"] = _pack(code, say)
    if alias or code is not None or lines:
        # functions pickled or written here run on this version unless told otherwise
        raw["python"] = raw.get("python") or this_python()
    if raw.get("python") and not re.fullmatch(r"3\.\d{1,2}", str(raw["python"])):
        raise errors.InvalidArgument(f"--python {raw['python']} is not a major.minor version "
                                     "such as 3.11")
    if lines:
        raw["requirements"] = _resolve(lines, raw["python"], say)


def _pack(code: Path, say) -> tuple[bytes, str]:
    """The code bundle of ``code`` and its SHA-256; says how many files and bytes it holds."""
    from ..bundles import pack, sha256

    data = pack(str(code))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        count = len(zf.infolist())
    if not count:
        raise errors.InvalidArgument(f"{code} holds no files to ship")
    digest = sha256(data)
    say(f"packed {count} file(s) from {code}, {fmt_bytes(len(data))}, sha256 {digest[:12]}…")
    return data, digest


def _resolve(lines: list[str], python: str, say) -> list[str]:
    """Exact pins for ``lines``; the resolver's explanation folded onto one line."""
    from ..client.requirements import resolve

    try:
        return resolve(lines, python, say)
    except errors.SpearError as exc:
        text = "; ".join(line.strip() for line in exc.message.splitlines() if line.strip())
        raise type(exc)(text) from None


def cmd_deploy(args) -> int:
    """Deploy a function through the SMS (or on one Spearlet)."""
    spec = spec_from_args(args, progress=lambda text: print(text, file=sys.stderr, flush=True))
    with make_client(args) as c:
        info = c.deploy(spec, node=args.node)
    print_either(args, info, f"deployed {info.name} ({info.runtime}, digest {info.digest[:12]}, {info.warm} warm)")
    return EXIT_OK


def cmd_functions(args) -> int:
    """List the deployed functions, or show one."""
    if args.action == "show":
        return _show_function(args)
    if args.function:
        raise errors.InvalidArgument(f"to show {args.function}: spear functions show {args.function}")
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


def _show_function(args) -> int:
    """One function's spec as the SMS registered it (secret values and artifact bytes left out)."""
    if not args.function:
        raise errors.InvalidArgument("spear functions show needs a function name")
    if args.node:
        raise errors.InvalidArgument("spear functions show asks the SMS: drop --node")
    with make_client(args) as c:
        spec = c.function(args.function)
    if args.json:
        print_json(spec)
        return EXIT_OK
    # a Python handler is always served pooled, whatever mode says
    rows = [("runtime", spec.runtime), ("mode", "" if spec.handler else spec.mode),
            ("handler", spec.handler),
            ("command", shlex.join(spec.command)), ("image", spec.image),
            ("workdir", spec.workdir), ("python", spec.python),
            ("requirements", ", ".join(spec.requirements)),
            ("artifact sha256", spec.artifact_sha256),
            ("limits", ", ".join(f"{k} {v}" for k, v in msgspec.to_builtins(spec.limits).items()
                                 if v not in (None, 0, False))),
            ("pool", ", ".join(f"{k} {v}" for k, v in msgspec.to_builtins(spec.pool).items())),
            ("env", ", ".join(f"{k}=(secret)" if k in spec.secret_env else f"{k}={v}"
                              for k, v in spec.env.items())),
            ("labels", ", ".join(f"{k}={v}" for k, v in spec.labels.items())),
            ("retries", spec.retries or ""),
            ("idempotent", "yes" if spec.idempotent else ""),
            ("grants", ", ".join(spec.grants))]
    print(f"function {spec.name}")
    for key, value in rows:
        if value not in ("", None):
            print(f"  {key + ':':18}{value}")
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
