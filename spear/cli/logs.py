"""``spear logs``: one execution's output, or a function's, whichever nodes ran them.

Asked of the SMS, which keeps the record of every execution it placed: a
finished one shows what its record kept (the output, and the stderr tail and
traceback of a failure); a running one is followed to its end, its stderr
shown live when it was invoked in stream mode (the SMS relays the chunks).
``--function`` shows the last executions of a function and, with
``--follow``, each new one as it ends (read from the SMS's event stream).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import msgspec

from .. import errors, protocol as P
from ._base import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Command, client_options,
                    make_client)
from ._output import print_failure

#: seconds one wait of a followed execution lasts before it asks again
_WAIT_STEP = 30.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spear logs``."""
    p.add_argument("execution_id", nargs="?",
                   help="its id, or a unique prefix of 8+ hex digits")
    p.add_argument("--function", metavar="NAME", help="the last executions of this function")
    p.add_argument("-f", "--follow", action="store_true",
                   help="with --function: print each new execution as it ends, until Ctrl-C")
    p.add_argument("--last", type=int, default=10, metavar="N",
                   help="with --function: how many recent executions to show first (default 10)")
    p.add_argument("--node", help="ask this spearlet (address, name or id): an execution "
                                  "invoked on it directly is known there only")
    client_options(p)


def _record_json(res) -> str:
    d = msgspec.to_builtins(res.info)
    d["output"] = res.output.decode("utf-8", "replace")
    return json.dumps(d, sort_keys=True)


def _write_output(output: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(output + (b"" if output.endswith(b"\n") or not output else b"\n"))
    sys.stdout.buffer.flush()


def _show(res) -> None:
    """One execution's record, output and trace."""
    i = res.info
    print(f"execution {i.execution_id}  trace {i.trace_id}")
    print(f"  function {i.function}  status {i.status}  node {i.node_id or '-'}  attempts {i.attempts}")
    t = i.timings
    print(f"  timings: queue {t.queue * 1e3:.3f} ms, cold start {t.cold_start * 1e3:.3f} ms, "
          f"run {t.run * 1e3:.3f} ms, total {t.total * 1e3:.3f} ms")
    u = i.usage
    print(f"  usage: cpu {u.cpu_time * 1e3:.3f} ms, peak memory {u.peak_memory} B, fuel {u.fuel}")
    if i.error:
        print(f"  error: {i.error.code}: {i.error.message}")
        print_failure(i.error, sys.stdout)
    print("--- output ---")
    _write_output(res.output)


def _follow(c, res, args):
    """Wait for a running execution to end, its streamed stderr shown as it comes."""
    i = res.info
    where = f" on {i.node_id}" if i.node_id else ""
    print(f"execution {i.execution_id} of {i.function} is {i.status}{where}: following it "
          "(Ctrl-C stops)", file=sys.stderr)
    started = False
    while res.info.status not in P.TERMINAL:
        for item in c.follow(i.execution_id, wait=_WAIT_STEP, node=args.node):
            if not isinstance(item, bytes):
                res = item
            elif not args.json:
                if not started:
                    print("--- log (live) ---", flush=True)
                    started = True
                sys.stdout.buffer.write(item)
                sys.stdout.buffer.flush()
    return res


def _execution_logs(c, args) -> int:
    res = c.execution(args.execution_id, node=args.node)
    if res.info.status not in P.TERMINAL:
        try:
            res = _follow(c, res, args)
        except KeyboardInterrupt:
            at = f" --node {args.node}" if args.node else ""
            print(f"stopped following; execution {res.info.execution_id} continues: "
                  f"spear logs {res.info.execution_id}{at}", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.json:
        print(_record_json(res))
    else:
        _show(res)
    return EXIT_OK if res.ok else EXIT_FAILED


def _print_block(c, args, execution_id: str) -> None:
    """One execution of a function: a header line, then its output (and failure)."""
    res = c.execution(execution_id)
    if args.json:  # one object a line, for a pipe
        print(_record_json(res), flush=True)
        return
    i = res.info
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(i.submitted_at))
    error = f"  {i.error.code}: {i.error.message}" if i.error else ""
    print(f"==> {i.execution_id}  {i.status}  node {i.node_id or '-'}  {when}Z{error} <==")
    if i.status in P.TERMINAL:
        _write_output(res.output)
        print_failure(i.error, sys.stdout)
    sys.stdout.flush()


def _function_logs(c, args) -> int:
    items, _ = c.executions(function=args.function, limit=max(1, args.last))
    if not items:
        c.function(args.function)  # NOT_FOUND names an unknown function
    shown = {i.execution_id for i in items}
    running = {i.execution_id for i in items if i.status not in P.TERMINAL}
    for info in reversed(items):  # oldest first, like a log
        _print_block(c, args, info.execution_id)
    if not args.follow:
        return EXIT_OK
    # UUIDv7 ids sort by creation time: an id above the newest shown is a new execution
    newest = items[0].execution_id if items else ""
    try:
        # the SMS first replays the events it holds: the ends of the executions shown
        # are skipped, those of the running ones among them are what we wait for
        for ev in c.events():
            if ev.kind != "execution" or ev.detail != args.function or ev.state not in P.TERMINAL:
                continue
            if ev.key in running or (ev.key > newest and ev.key not in shown):
                running.discard(ev.key)
                _print_block(c, args, ev.key)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def cmd_logs(args) -> int:
    """Show one execution's output (following it while it runs), or a function's."""
    if bool(args.execution_id) == bool(args.function):
        print("spear logs: give an execution id or --function NAME", file=sys.stderr)
        return EXIT_USAGE
    if args.follow and not args.function:
        print("spear logs: --follow goes with --function (a running execution is always "
              "followed to its end)", file=sys.stderr)
        return EXIT_USAGE
    with make_client(args) as c:
        try:
            if args.function:
                return _function_logs(c, args)
            return _execution_logs(c, args)
        except errors.NotFound as exc:
            hint = ("" if args.function or args.node else
                    "; spear executions lists the recent ones, and one invoked on a node "
                    "directly needs --node")
            print(f"spear logs: {exc.code}: {exc.message}{hint}", file=sys.stderr)
            return EXIT_FAILED


COMMANDS = {"logs": Command(add_arguments, cmd_logs)}
