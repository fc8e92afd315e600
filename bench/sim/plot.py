"""``python -m bench.sim.plot``: the figures of docs/scheduling.md.

Runs every placement policy on every generated placement trace at 50%, 80%
and 95% load (or reads the rows of an earlier ``python -m bench.sim
--policies ... --json FILE`` run with ``--rows FILE``), writes the plot (PNG:
p99 completion time and utilization against load, one panel per trace) and
prints the Markdown table. Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import jobs, placing

LOADS = (0.5, 0.8, 0.95)
COLUMNS = (("trace", "trace"), ("policy", "policy"), ("load", "load"), ("p50_s", "p50 s"),
           ("p99_s", "p99 s"), ("queue_p99_s", "queue p99 s"), ("utilization", "util."),
           ("mem_utilization", "mem. util."), ("cold_starts", "cold"), ("failed", "failed"),
           ("failed_memory", "failed (memory)"))


def rows(policies: list[str], seed: int, nodes: int) -> list[dict]:
    """Every (trace, load, policy) row, in that order."""
    setup = placing.Setup(nodes=nodes, seed=seed)
    out = []
    for name in jobs.TRACES:
        work = jobs.load(name, seed)
        for load in LOADS:
            out.extend(placing.simulate(work, p, load, setup) for p in policies)
    return out


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(
            f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """p99 completion time (top) and utilization (bottom) against load, per trace."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(r["trace"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(2, len(traces), figsize=(4 * len(traces), 6), squeeze=False)
    for col, trace in enumerate(traces):
        for policy in policies:
            mine = sorted((r for r in rows if r["trace"] == trace and r["policy"] == policy),
                          key=lambda r: r["load"])
            loads = [r["load"] for r in mine]
            axes[0][col].plot(loads, [r["p99_s"] for r in mine], marker="o", label=policy)
            axes[1][col].plot(loads, [r["utilization"] for r in mine], marker="o", label=policy)
        axes[0][col].set_title(trace)
        axes[0][col].set_ylabel("p99 completion (s)")
        axes[1][col].set_ylabel("core utilization")
        axes[1][col].set_xlabel("offered load")
    axes[0][0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    """Simulate (or read the rows), write the PNG, print the table."""
    ap = argparse.ArgumentParser(prog="python -m bench.sim.plot", description=__doc__)
    ap.add_argument("--policies", default="baseline,finish,pack",
                    help="comma-separated placement policies (learned is finish)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=placing.Setup.nodes)
    ap.add_argument("--rows", metavar="FILE", help="plot these rows instead of simulating")
    ap.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    ap.add_argument("--out", default="docs/img/scheduling.png", help="the PNG to write")
    args = ap.parse_args(argv)
    if args.rows:
        data = json.loads(Path(args.rows).read_text())
    else:
        data = rows([p for p in args.policies.split(",") if p], args.seed, args.nodes)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    plot(data, Path(args.out))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
