"""``python -m bench.sim``: replay traces under warming policies; from the repository root."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from . import policies, report, workloads
from .cluster import Shape, Simulator


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__)
    ap.add_argument("--trace", default="zipf,bursts,diurnal",
                    help="comma-separated generated traces (%s) or Azure Functions 2021 CSV "
                         "files (app,func,end_timestamp,duration)" % ", ".join(workloads.GENERATED))
    ap.add_argument("--warming", default="none,fixed,learned",
                    help="comma-separated warming policies: " + ", ".join(policies.WARMING))
    ap.add_argument("--keep-alive", type=float, default=policies.KEEP_ALIVE,
                    help="the fixed keep-alive, and the learned policy's fallback (s)")
    ap.add_argument("--nodes", type=int, default=Shape.nodes)
    ap.add_argument("--node-mb", type=int, default=Shape.node_mb)
    ap.add_argument("--cold-s", type=float, default=Shape.cold_s, help="time to start an instance")
    ap.add_argument("--autoscale", action="store_true",
                    help="run each pair again with the autoscaler's policy adding nodes "
                         "(a row field, autoscale, tells them apart)")
    ap.add_argument("--max-nodes", type=int, default=0,
                    help="the autoscaler's max_nodes (default: 2 x --nodes)")
    ap.add_argument("--min-nodes", type=int, default=0,
                    help="the autoscaled cluster's own nodes, its min_nodes (default: --nodes)")
    ap.add_argument("--start-s", type=float, default=30.0, help="time for an added node to join")
    ap.add_argument("--json", metavar="FILE", help="write the rows to FILE")
    args = ap.parse_args(argv)
    args.trace = [t for t in args.trace.split(",") if t]
    args.warming = [w for w in args.warming.split(",") if w]
    for w in args.warming:
        if w not in policies.WARMING:
            ap.error(f"unknown warming policy {w!r} (choose from {', '.join(policies.WARMING)})")
    return args


def run(trace, kind: str, shape: Shape, args, scaled: bool) -> report.Row:
    """One (trace, policy) run, on a fixed cluster or an autoscaled one."""
    model = policies.AutoscaledNodes(shape.nodes, shape.node_mb, own=args.min_nodes or shape.nodes,
                                     start_s=args.start_s,
                                     max_nodes=args.max_nodes or 2 * shape.nodes) if scaled else None
    stats = Simulator(trace, kind, shape, keep_alive=args.keep_alive, nodes=model).run()
    row = report.row(trace.name, kind, stats, shape, args.keep_alive)
    if model is None:
        return replace(row, cluster_node_hours=round(shape.nodes * trace.span / 3600, 4),
                       peak_nodes=shape.nodes)
    return replace(row, autoscale=True, cluster_node_hours=round(model.node_hours(trace.span), 4),
                   peak_nodes=model.peak)


def main(argv: list[str] | None = None) -> int:
    """Run every (trace, policy) pair; print the table, write the JSON."""
    args = parse(argv)
    shape = Shape(args.nodes, args.node_mb, args.cold_s)
    rows = []
    for name in args.trace:
        try:
            trace = workloads.load(name)
        except (OSError, ValueError) as exc:
            print(f"bench.sim: {exc}", file=sys.stderr)
            return 2
        for kind in args.warming:
            for scaled in (False, True) if args.autoscale else (False,):
                rows.append(run(trace, kind, shape, args, scaled))
    print(report.table(rows))
    if args.json:
        report.write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
