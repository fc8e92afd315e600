"""``python -m bench.sim``: replay traces under warming policies (``--warming``)
or placement policies on the real SMS core (``--policies``); from the repository root."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from . import jobs, placing, policies, report, workloads
from .cluster import Shape, Simulator


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__)
    ap.add_argument("--trace", default=None,
                    help="comma-separated generated traces (warming: %s; placement: %s) or "
                         "Azure Functions 2021 CSV files (app,func,end_timestamp,duration)"
                         % (", ".join(workloads.GENERATED), ", ".join(jobs.TRACES)))
    ap.add_argument("--warming", default=None,
                    help="comma-separated warming policies: " + ", ".join(policies.WARMING))
    ap.add_argument("--policies", default=None,
                    help="comma-separated placement policies (placement mode): "
                         + ", ".join(placing.POLICIES))
    ap.add_argument("--load", default="0.5,0.8,0.95",
                    help="placement: offered work as fractions of the cluster's cores")
    ap.add_argument("--seed", type=int, default=1,
                    help="placement: node failures and the memory drawn for Azure traces")
    ap.add_argument("--failures", type=int, default=placing.Setup.failures,
                    help="placement: nodes that fail during each run")
    ap.add_argument("--keep-alive", type=float, default=None,
                    help="the fixed keep-alive, and the learned policy's fallback (s)")
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--node-mb", type=int, default=Shape.node_mb, help="warming: node memory")
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
    if args.policies is not None and args.warming is not None:
        ap.error("--policies (placement) and --warming are two modes: give one")
    args.placement = args.policies is not None
    if args.trace is None:
        args.trace = ",".join(jobs.TRACES if args.placement else workloads.GENERATED)
    args.trace = [t for t in args.trace.split(",") if t]
    if args.placement:
        args.policies = [p for p in args.policies.split(",") if p]
        for p in args.policies:
            if p not in placing.POLICIES:
                ap.error(f"unknown placement policy {p!r} (choose from {', '.join(placing.POLICIES)})")
        try:
            args.load = [float(x) for x in args.load.split(",") if x]
        except ValueError:
            ap.error("--load takes numbers, e.g. 0.8,0.95")
        if not args.load or any(not 0 < x <= 2 for x in args.load):
            ap.error("--load: each in (0, 2]")
        return args
    args.warming = [w for w in (args.warming or "none,fixed,learned").split(",") if w]
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
    """Run every (trace, policy[, load]); print the table, write the JSON."""
    args = parse(argv)
    try:
        return _placement(args) if args.placement else _warming(args)
    except (OSError, ValueError) as exc:
        print(f"bench.sim: {exc}", file=sys.stderr)
        return 2


def _warming(args: argparse.Namespace) -> int:
    shape = Shape(args.nodes or Shape.nodes, args.node_mb, args.cold_s)
    keep_alive = policies.KEEP_ALIVE if args.keep_alive is None else args.keep_alive
    args.keep_alive = keep_alive
    rows = []
    for name in args.trace:
        trace = workloads.load(name)
        for kind in args.warming:
            for scaled in (False, True) if args.autoscale else (False,):
                rows.append(run(trace, kind, shape, args, scaled))
    print(report.table(rows))
    if args.json:
        report.write_json(rows, args.json)
    return 0


def _placement(args: argparse.Namespace) -> int:
    setup = placing.Setup(nodes=args.nodes or placing.Setup.nodes, cold_s=args.cold_s,
                          keep_alive=placing.Setup.keep_alive if args.keep_alive is None
                          else args.keep_alive, failures=args.failures, seed=args.seed)
    rows = []
    for name in args.trace:
        work = jobs.load(name, args.seed)
        for load in args.load:
            for policy in args.policies:
                rows.append(placing.simulate(work, policy, load, setup))
    print(report.placement_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
