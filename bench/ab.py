"""A/B: is a change faster, on a machine whose speed moves from minute to minute?

Two clusters run side by side, each started with its own environment (A and
B: e.g. a feature switch read at import, or ``PYTHONPATH`` pointing at two
checkouts); pipelined trials alternate between them (A B, then B A, ...) so
that a noisy neighbour slows both alike, and the medians are printed with
the CPU each process spent per invocation, the steadier figure::

    python bench/ab.py --a '{}' --b '{"SPEAR_NO_BATCH": "1"}' --functions b-add,b-noop

``--functions``: the bench's functions (``bench/harness/session.py``);
``--n`` invocations per trial (``--window`` in flight, through one
``AsyncClient``); ``--trials`` per side, function and path; ``--json PATH``.
Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness.plan import Plan  # noqa: E402
from bench.harness.procs import Progress, run_async  # noqa: E402
from bench.harness.session import Session  # noqa: E402
from bench.harness.throughput import pipelined  # noqa: E402


def start(env: dict[str, str], functions: list[str]) -> Session:
    """A cluster whose daemons start with ``env`` added to ours, every function deployed."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        s = Session(Plan.make(True), ["throughput"], Progress(1, False), profile=None,
                    keep=False, data=None)
        try:
            s.start_cluster()
        except BaseException:  # its daemons have sessions of their own: no Ctrl-C stops them
            s.stop_cluster()
            raise
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        with s.client() as c:
            for f in functions:
                s.ensure(c, f, sms=True, direct=True)
    except BaseException:
        s.stop_cluster()
        raise
    return s


def env_json(text: str) -> dict[str, str]:
    """``--a``/``--b``: a JSON object of strings (an environment)."""
    try:
        env = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise argparse.ArgumentTypeError('an object of strings, e.g. {"SPEAR_NO_BATCH": "1"}')
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=env_json, default={}, help="JSON object: environment of side A's daemons")
    p.add_argument("--b", type=env_json, default={}, help="JSON object: environment of side B's daemons")
    p.add_argument("--functions", default="b-add,b-noop")
    p.add_argument("--paths", default="sms,direct")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    functions = a.functions.split(",")
    sides = {"A": a.a, "B": a.b}
    sessions: dict[str, Session] = {}
    rows: dict[tuple[str, str, str], list[dict]] = {}
    try:
        for label, env in sides.items():
            sessions[label] = start(env, functions)
        for t in range(a.trials):
            for f in functions:
                for path in a.paths.split(","):
                    for label in ("A", "B") if t % 2 == 0 else ("B", "A"):
                        s = sessions[label]
                        r = run_async(pipelined(s, f, None if path == "sms" else s.node, a.n, a.window))
                        rows.setdefault((f, path, label), []).append(r)
    finally:
        for s in sessions.values():
            s.stop_cluster()
    out = []
    for (f, path, label), runs in sorted(rows.items()):
        cpu = {k: statistics.median(r["cpu"]["cpu_us_per_op"].get(k, 0.0) for r in runs)
               for k in ("client", "sms", "spearlet")}
        rate = statistics.median(r["rate"] for r in runs)
        out.append({"function": f, "path": path, "side": label, "rate": rate,
                    "rates": [r["rate"] for r in runs], "cpu_us_per_op": cpu,
                    "failed": sum(r["failed"] for r in runs)})
        print(f"{f:10s} {path:6s} {label}: {rate:8,.0f}/s median of {len(runs)}   CPU per "
              f"invocation: client {cpu['client']:5.1f} µs, SMS {cpu['sms']:5.1f} µs, "
              f"spearlet {cpu['spearlet']:5.1f} µs")
    if a.json:
        Path(a.json).write_text(json.dumps({"a": sides["A"], "b": sides["B"], "rows": out}, indent=1))
    return 1 if any(r["failed"] for r in out) else 0


if __name__ == "__main__":
    sys.exit(main())
