"""``spear invoke``, ``spear executions`` and ``spear cancel``: running functions."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

import msgspec

from .. import errors, protocol as P
from ._base import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Command, client_options, make_client
from ._output import print_either, print_failure, print_table


#: seconds one wait of a sync ``spear invoke`` lasts before it asks again
_WAIT_STEP = 30.0


def add_invoke_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear invoke``."""
    p.add_argument("name")
    p.add_argument("input", nargs="?", default=None, help="input text; '-' reads stdin")
    p.add_argument("-i", "--input-file", help="read the input from this file")
    p.add_argument("--args", help="comma-separated numeric arguments (wasm exports)")
    p.add_argument("--node", help="invoke this spearlet (address, name or id) directly")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--async", dest="is_async", action="store_true", help="return an execution id")
    g.add_argument("--stream", action="store_true", help="print logs as they come, then the output")
    p.add_argument("--exec-timeout", type=float, metavar="S",
                   help="seconds this execution may run (default: the function's limit)")
    p.add_argument("--trace-id", default="")
    p.add_argument("--idempotency-key", default="",
                   help="run once per key: repeating the command returns the first execution")
    client_options(p)


def add_executions_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear executions``."""
    p.add_argument("execution_id", nargs="?",
                   help="show this execution (its id, or a unique prefix of 8+ hex digits)")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to S seconds for it to finish")
    p.add_argument("--function", default="", help="only this function")
    p.add_argument("--status", choices=sorted(P.TERMINAL | {"pending", "scheduled", "running"}))
    p.add_argument("--node-id", default="", help="only executions placed on this node")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--node", help="ask this spearlet directly (with an execution id)")
    client_options(p)


def add_execution_id_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear cancel``: one execution."""
    p.add_argument("execution_id", help="its id, or a unique prefix of 8+ hex digits")
    p.add_argument("--node")
    client_options(p)


def parse_args_list(text: str | None) -> list:
    """``"1,2.5"`` -> ``[1, 2.5]``: the numeric arguments of a wasm export."""
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
    """The output on stdout, a one-line summary on stderr (or all of it as JSON)."""
    if args.json:
        d = msgspec.to_builtins(res.info)
        d["output"] = res.output.decode("utf-8", "replace")
        print(json.dumps(d, indent=2, sort_keys=True))
    else:
        # the bytes exactly as returned (a redirected binary must not change); a
        # newline only to keep a terminal's prompt off the output's last line
        sys.stdout.flush()
        sys.stdout.buffer.write(res.output)
        if res.output and not res.output.endswith(b"\n") and sys.stdout.isatty():
            sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()
        i = res.info
        t = i.timings
        print(f"[{i.status}] {i.function} on {i.node_id} exec {i.execution_id} "
              f"run {t.run * 1e3:.2f} ms, cold {t.cold_start * 1e3:.2f} ms, total {t.total * 1e3:.2f} ms"
              + (f" - {i.error.code}: {i.error.message}" if i.error else ""), file=sys.stderr)
        print_failure(i.error, sys.stderr)
    return EXIT_OK if res.ok else EXIT_FAILED


def _print_interrupted(eid: str | None, args) -> int:
    """After Ctrl-C: which execution goes on running, and the commands that follow it."""
    at = f" --node {args.node}" if args.node else ""  # a spearlet's own ids live there only
    if eid is None:  # interrupted before the SMS knew it, or run on a spearlet directly
        where = f" on {args.node}" if args.node else f": spear executions --function {args.name} lists it"
        print(f"interrupted; the execution continues{where}", file=sys.stderr)
    else:
        print(f"interrupted; execution {eid} continues: spear executions {eid}{at} / "
              f"spear logs {eid}{at} / spear cancel {eid}{at}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _invoke_stream(c, args, data: bytes, fargs: list) -> int:
    """Stream the logs to stderr as they come, then print the result.

    A stream names its execution only in its last reply, so the command
    gives the invocation a trace id of its own (unless given one) and, on
    Ctrl-C, asks the SMS which execution carries it.
    """
    trace_id = args.trace_id or uuid.uuid4().hex
    res = None
    try:
        for item in c.stream(args.name, data, args=fargs, node=args.node,
                             timeout=args.exec_timeout, trace_id=trace_id):
            if isinstance(item, bytes):
                sys.stderr.buffer.write(item)
                sys.stderr.flush()
            else:
                res = item
    except KeyboardInterrupt:
        eid = None
        if not args.node:  # executions run directly on a spearlet are not listed by the SMS
            items, _ = c.executions(function=args.name, limit=100)
            eid = next((i.execution_id for i in items if i.trace_id == trace_id), None)
        return _print_interrupted(eid, args)
    return _print_result(args, res)


def cmd_invoke(args) -> int:
    """Invoke a function: wait for the result, stream its logs, or just submit it."""
    data = _read_input(args)
    fargs = parse_args_list(args.args)
    with make_client(args) as c:
        if args.is_async:
            eid = c.submit(args.name, data, args=fargs, node=args.node, timeout=args.exec_timeout,
                           trace_id=args.trace_id, idempotency_key=args.idempotency_key)
            print_either(args, {"execution_id": eid}, eid)
            return EXIT_OK
        if args.stream:
            return _invoke_stream(c, args, data, fargs)
        # submitted, then waited for: so Ctrl-C can say which execution goes on running
        eid = c.submit(args.name, data, args=fargs, node=args.node, timeout=args.exec_timeout,
                       trace_id=args.trace_id, idempotency_key=args.idempotency_key)
        try:
            res = c.wait(eid, timeout=_WAIT_STEP, node=args.node)
            while res.info.status not in P.TERMINAL:
                res = c.wait(eid, timeout=_WAIT_STEP, node=args.node)
        except KeyboardInterrupt:
            return _print_interrupted(eid, args)
    return _print_result(args, res)


def cmd_executions(args) -> int:
    """List executions (filtered, paged) or show one."""
    with make_client(args) as c:
        if args.execution_id:
            res = c.execution(args.execution_id, wait=args.wait, node=args.node)
            return _print_result(args, res)
        items, total = c.executions(function=args.function, status=args.status,
                                    node_id=args.node_id, limit=args.limit, offset=args.offset)
    if args.json:
        print_either(args, {"total": total, "executions": items}, "")
        return EXIT_OK
    # whole ids: a UUIDv7 starts with its millisecond, so rows made together share
    # any short prefix, and one unique among these rows may not be among all
    print_table(f"{len(items)} of {total} execution(s)",
                ["id", "function", "status", "node", "attempts", "run ms", "total ms", "error"],
                [[i.execution_id, i.function, i.status, i.node_id, i.attempts,
                  f"{i.timings.run * 1e3:.2f}", f"{i.timings.total * 1e3:.2f}",
                  f"{i.error.code}: {i.error.message[:40]}" if i.error else ""] for i in items],
                no_wrap=("id",))
    return EXIT_OK


def cmd_cancel(args) -> int:
    """Ask for an execution to be cancelled."""
    with make_client(args) as c:
        c.cancel(args.execution_id, node=args.node)
    print_either(args, {"cancelled": args.execution_id}, f"cancel requested for {args.execution_id}")
    return EXIT_OK


COMMANDS = {
    "invoke": Command(add_invoke_arguments, cmd_invoke),
    "executions": Command(add_executions_arguments, cmd_executions),
    "cancel": Command(add_execution_id_arguments, cmd_cancel),
}
