"""CLI commands that deploy, list and invoke functions, and ``spear demo``."""

from __future__ import annotations

import json
import shlex
import sys
import tomllib
from pathlib import Path

import msgspec

from . import errors, protocol as P
from .config import parse_labels

COMMANDS: dict = {}


def command(name):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


def add_parsers(sub, client_opts) -> None:
    """Add the function subcommands to the ``spear`` parser."""
    p = sub.add_parser("deploy", help="deploy a function (from flags or a TOML function file)")
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
    p.add_argument("--timeout-limit", type=float, dest="limit_timeout", help="execution timeout (s)")
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
    p.add_argument("--node", help="deploy directly on the spearlet at this address")
    client_opts(p)

    p = sub.add_parser("functions", help="list deployed functions")
    p.add_argument("--node", help="ask this spearlet directly")
    client_opts(p)

    p = sub.add_parser("remove", help="remove a function")
    p.add_argument("name")
    p.add_argument("--node", help="on this spearlet directly")
    client_opts(p)

    p = sub.add_parser("invoke", help="invoke a function")
    p.add_argument("name")
    p.add_argument("input", nargs="?", default=None, help="input text; '-' reads stdin")
    p.add_argument("-i", "--input-file", help="read the input from this file")
    p.add_argument("--args", help="comma-separated numeric arguments (wasm exports)")
    p.add_argument("--node", help="invoke the spearlet at this address directly")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--async", dest="is_async", action="store_true", help="return an execution id")
    g.add_argument("--stream", action="store_true", help="print logs as they come, then the output")
    p.add_argument("--exec-timeout", type=float, help="execution timeout (s)")
    p.add_argument("--trace-id", default="")
    p.add_argument("--idempotency-key", default="",
                   help="run once per key: repeating the command returns the first execution")
    client_opts(p)

    p = sub.add_parser("executions", help="list executions (filters, paging) or show one")
    p.add_argument("execution_id", nargs="?", help="show this execution")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to S seconds for it to finish")
    p.add_argument("--function", default="", help="only this function")
    p.add_argument("--status", choices=sorted(P.TERMINAL | {"pending", "scheduled", "running"}))
    p.add_argument("--node-id", default="", help="only executions placed on this node")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--node", help="ask this spearlet directly (with an execution id)")
    client_opts(p)

    p = sub.add_parser("logs", help="an execution's record, output and trace")
    p.add_argument("execution_id")
    p.add_argument("--node")
    client_opts(p)

    p = sub.add_parser("events", help="node and execution events (resumable with --since)")
    p.add_argument("--since", type=int, default=0, help="replay events after this sequence number")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p.add_argument("--for", dest="duration", type=float, default=0.0, help="stop after S seconds")
    client_opts(p)

    p = sub.add_parser("stats", help="cluster resources, reservations and execution counts")
    client_opts(p)

    p = sub.add_parser("cancel", help="cancel an execution")
    p.add_argument("execution_id")
    p.add_argument("--node")
    client_opts(p)

    p = sub.add_parser("demo", help="start a cluster, deploy every example, invoke each in every mode")
    p.add_argument("--data", default="./.spear/demo")
    p.add_argument("--examples", default=None, help="examples directory (default: ./examples)")


def _parse_args_list(text: str | None) -> list:
    if not text:
        return []
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(int(part))
        except ValueError:
            try:
                out.append(float(part))
            except ValueError:
                raise errors.InvalidArgument(f"--args: {part!r} is not a number") from None
    return out


def spec_from_args(args) -> P.FunctionSpec:
    """Build a FunctionSpec from a TOML file and/or flags (flags win)."""
    raw: dict = {}
    base = Path(".")
    if args.file:
        path = Path(args.file)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise errors.InvalidArgument(f"{path}: {exc}") from None
        base = path.parent
        raw = raw.get("function", raw)
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
    if args.env:
        env = raw.setdefault("env", {})
        for kv in args.env:
            if "=" not in kv:
                raise errors.InvalidArgument(f"--env {kv!r} is not K=V")
            k, v = kv.split("=", 1)
            env[k] = v
    for kv in args.secret_env:
        if "=" not in kv:
            raise errors.InvalidArgument(f"--secret-env {kv!r} is not K=V")
        k, v = kv.split("=", 1)
        raw.setdefault("env", {})[k] = v
        secret = raw.setdefault("secret_env", [])
        if k not in secret:
            secret.append(k)
    if args.grant:
        raw["grants"] = list(raw.get("grants", [])) + args.grant
    if args.labels:
        raw["labels"] = parse_labels(args.labels)
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
    artifact = args.artifact or raw.pop("artifact_path", None) or (
        raw.get("artifact") if isinstance(raw.get("artifact"), str) else None)
    if artifact:
        apath = Path(artifact) if args.artifact else base / artifact
        try:
            raw["artifact"] = apath.read_bytes()
        except OSError as exc:
            raise errors.InvalidArgument(f"artifact {apath}: {exc.strerror}") from None
    try:
        return msgspec.convert(raw, P.FunctionSpec)
    except msgspec.ValidationError as exc:
        raise errors.InvalidArgument(f"function spec: {exc}") from None


def _client(args):
    from .cli import _client as make

    return make(args)


def _out(args, obj, text: str) -> None:
    if args.json:
        print(json.dumps(msgspec.to_builtins(obj), indent=2, sort_keys=True, default=str))
    else:
        print(text)


@command("deploy")
def cmd_deploy(args) -> int:
    spec = spec_from_args(args)
    with _client(args) as c:
        info = c.deploy(spec, node=args.node)
    _out(args, info, f"deployed {info.name} ({info.runtime}, digest {info.digest[:12]}, {info.warm} warm)")
    return 0


@command("functions")
def cmd_functions(args) -> int:
    from .cli import print_table

    with _client(args) as c:
        fns = c.functions(node=args.node)
    if args.json:
        _out(args, fns, "")
        return 0
    print_table(f"{len(fns)} function(s)", ["name", "runtime", "digest", "warm", "busy", "hits", "misses",
                                            "evictions"],
                [[f.name, f.runtime, f.digest[:12], f.warm, f.busy, f.hits, f.misses, f.evictions]
                 for f in fns])
    return 0


@command("remove")
def cmd_remove(args) -> int:
    with _client(args) as c:
        c.remove(args.name, node=args.node)
    _out(args, {"removed": args.name}, f"removed {args.name}")
    return 0


def _read_input(args) -> bytes:
    if args.input_file:
        try:
            return Path(args.input_file).read_bytes()
        except OSError as exc:
            raise errors.InvalidArgument(f"{args.input_file}: {exc.strerror}") from None
    if args.input == "-":
        return sys.stdin.buffer.read()
    return (args.input or "").encode()


def _print_result(args, res) -> int:
    if args.json:
        d = msgspec.to_builtins(res.info)
        d["output"] = res.output.decode("utf-8", "replace")
        print(json.dumps(d, indent=2, sort_keys=True))
    else:
        if res.output:
            sys.stdout.buffer.write(res.output)
            if not res.output.endswith(b"\n"):
                sys.stdout.buffer.write(b"\n")
            sys.stdout.flush()
        i = res.info
        t = i.timings
        print(f"[{i.status}] {i.function} on {i.node_id} exec {i.execution_id[:12]} "
              f"run {t.run * 1e3:.2f} ms, cold {t.cold_start * 1e3:.2f} ms, total {t.total * 1e3:.2f} ms"
              + (f" - {i.error.code}: {i.error.message}" if i.error else ""), file=sys.stderr)
    return 0 if res.ok else 1


@command("invoke")
def cmd_invoke(args) -> int:
    data = _read_input(args)
    fargs = _parse_args_list(args.args)
    with _client(args) as c:
        if args.is_async:
            eid = c.submit(args.name, data, args=fargs, node=args.node, timeout=args.exec_timeout,
                           trace_id=args.trace_id, idempotency_key=args.idempotency_key)
            _out(args, {"execution_id": eid}, eid)
            return 0
        if args.stream:
            res = None
            for item in c.stream(args.name, data, args=fargs, node=args.node,
                                 timeout=args.exec_timeout, trace_id=args.trace_id):
                if isinstance(item, bytes):
                    sys.stderr.buffer.write(item)
                    sys.stderr.flush()
                else:
                    res = item
            return _print_result(args, res)
        res = c.invoke(args.name, data, args=fargs, node=args.node, timeout=args.exec_timeout,
                       trace_id=args.trace_id, idempotency_key=args.idempotency_key)
    return _print_result(args, res)


@command("executions")
def cmd_executions(args) -> int:
    from .cli import print_table

    with _client(args) as c:
        if args.execution_id:
            res = c.execution(args.execution_id, wait=args.wait, node=args.node)
            return _print_result(args, res)
        items, total = c.executions(function=args.function, status=args.status,
                                    node_id=args.node_id, limit=args.limit, offset=args.offset)
    if args.json:
        _out(args, {"total": total, "executions": items}, "")
        return 0
    print_table(f"{len(items)} of {total} execution(s)",
                ["id", "function", "status", "node", "attempts", "run ms", "total ms", "error"],
                [[i.execution_id[:12], i.function, i.status, i.node_id, i.attempts,
                  f"{i.timings.run * 1e3:.2f}", f"{i.timings.total * 1e3:.2f}",
                  f"{i.error.code}: {i.error.message[:40]}" if i.error else ""] for i in items])
    return 0


@command("logs")
def cmd_logs(args) -> int:
    with _client(args) as c:
        res = c.execution(args.execution_id, node=args.node)
    i = res.info
    if args.json:
        return _print_result(args, res)
    print(f"execution {i.execution_id}  trace {i.trace_id}")
    print(f"  function {i.function}  status {i.status}  node {i.node_id or '-'}  attempts {i.attempts}")
    t = i.timings
    print(f"  timings: queue {t.queue * 1e3:.3f} ms, cold start {t.cold_start * 1e3:.3f} ms, "
          f"run {t.run * 1e3:.3f} ms, total {t.total * 1e3:.3f} ms")
    u = i.usage
    print(f"  usage: cpu {u.cpu_time * 1e3:.3f} ms, peak memory {u.peak_memory} B, fuel {u.fuel}")
    if i.error:
        print(f"  error: {i.error.code}: {i.error.message}")
    print("--- output ---")
    sys.stdout.buffer.write(res.output + (b"" if res.output.endswith(b"\n") or not res.output else b"\n"))
    return 0 if res.ok or i.status not in P.TERMINAL else 1


@command("events")
def cmd_events(args) -> int:
    import time as _time

    deadline = _time.monotonic() + args.duration if args.duration else None
    with _client(args) as c:
        n = 0
        for ev in c.events(since=args.since, until=deadline):
            n += 1
            if args.json:
                print(json.dumps(msgspec.to_builtins(ev)), flush=True)
            else:
                print(f"{ev.seq:>8} {ev.kind:<9} {ev.key:<34} {ev.state:<10} {ev.detail}", flush=True)
            if args.count and n >= args.count:
                break
    return 0


@command("stats")
def cmd_stats(args) -> int:
    with _client(args) as c:
        st = c.stats()
    _out(args, st, f"{st.nodes_ready} ready node(s): {st.cores_total:g} cores, "
         f"{st.memory_total / 2**30:.1f} GiB; reserved {st.cores_reserved:g} cores, "
         f"{st.memory_reserved / 2**20:.0f} MiB; {st.executions_active} active; counts {st.counts}")
    return 0


@command("cancel")
def cmd_cancel(args) -> int:
    with _client(args) as c:
        c.cancel(args.execution_id, node=args.node)
    _out(args, {"cancelled": args.execution_id}, f"cancel requested for {args.execution_id}")
    return 0


@command("demo")
def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)
