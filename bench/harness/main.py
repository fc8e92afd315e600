"""``python -m bench``: the flags, the order of the sections, the run from start to table."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from . import floor, latency, remote, throughput
from .kernels import measure_pool, measure_scheduler
from .parallel import section_parallel
from .plan import CLUSTER_SECTIONS, PAYLOADS, SECTIONS, Plan, select_sections
from .procs import Progress
from .profile import print_profile, profile_pass
from .report import meta, print_results, write_json
from .results import Results
from .runtimes import section_cold, section_docker
from .session import Session
from .throughput import section_throughput

#: the order of the table's sections
_ORDER = {s: i for i, s in enumerate(("floor", "latency", "throughput", "startup", "cold",
                                      "scheduler", "pool", "rss", "parallel", "docker"))}


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``python -m bench``."""
    p.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    p.add_argument("--json", metavar="PATH", default="bench/results.json",
                   help="where to write the figures as JSON (default bench/results.json)")
    p.add_argument("--only", metavar="SECTIONS", default="",
                   help=f"comma-separated sections to run: {','.join(SECTIONS)} "
                        "(floor is added when latency or throughput is asked)")
    p.add_argument("--spearlets", type=int, default=1, help="spearlets in the cluster (default 1)")
    p.add_argument("--window", type=int, default=None, help="invocations in flight for throughput (default 512)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="after measuring, run the SMS load again under py-spy and write profiles to DIR")
    p.add_argument("--data", metavar="DIR", default=None, help="cluster data directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary cluster data (logs)")
    p.add_argument("--no-progress", action="store_true", help="plain progress lines instead of a bar")
    return p


def count_steps(sections: list[str], plan: Plan, profile: bool) -> int:
    """How many progress steps the run will announce (the progress bar's total)."""
    want = set(sections)
    n = 0
    if "scheduler" in want:
        n += 4  # 100, 1,000 and 10,000 nodes, then the finish policy at 10,000
    if "pool" in want:
        n += 1
    floor_pass = 1 + len(PAYLOADS)  # round trips, then one step per echo payload
    if "floor" in want:
        n += floor_pass + (0 if "throughput" in want else 1)
        if plan.refloor and CLUSTER_SECTIONS & want:
            n += floor_pass
    if CLUSTER_SECTIONS & want:
        n += 2
        n += 1 if "rss" in want else 0
        n += latency.STEPS if "latency" in want else 0
        if "throughput" in want:
            n += 1 + 2 * len(throughput.RATE_FUNCS) * plan.rate_trials + 2 * len(PAYLOADS)
        n += remote.STEPS if "remote" in want else 0
        n += 5 if "cold" in want else 0
        n += 1 + plan.rate_trials if "parallel" in want else 0
        n += 1 if "docker" in want else 0
        n += 1 if profile else 0
    return n


def _start_floor(s: Session) -> None:
    """The floor's servers stay up (idle) for the whole run, for interleaved trials."""
    s.floor = floor.Floor()
    s.floor.start()
    floor.latency_pass(s.floor, s.res, s.plan, s.prog)
    if "throughput" not in s.sections:  # otherwise interleaved with Spear's trials
        s.prog.step("floor: pipelined round trips")
        for _ in range(s.plan.rate_trials):
            floor.rate_trial(s.floor, s.res, s.plan, "2hop")
            floor.rate_trial(s.floor, s.res, s.plan, "3hop")


def _cluster_sections(s: Session) -> None:
    """Start the cluster, run every cluster section asked for, stop it."""
    want = s.sections
    s.start_cluster()
    if "rss" in want:
        s.section_rss()
    s.prog.step("startup: deploy + first result via SMS")
    s.first_result()
    for name, section in (("latency", latency.section_latency), ("throughput", section_throughput),
                          ("remote", remote.section_remote),
                          ("cold", section_cold), ("parallel", section_parallel),
                          ("docker", section_docker)):
        if name in want:
            section(s)
    if "rss" in want:
        s.note_rss_after_load()
    if s.profile:
        profile_pass(s)
    s.stop_cluster()


def run_sections(s: Session) -> Results:
    """Every section asked for, in order; everything started is stopped, also on error."""
    want = s.sections
    try:
        if "scheduler" in want:
            measure_scheduler(s.res, s.plan, s.prog)
        if "pool" in want:
            measure_pool(s.res, s.plan, s.prog)
        if "floor" in want:
            _start_floor(s)
        if CLUSTER_SECTIONS & set(want):
            _cluster_sections(s)
            if s.floor is not None and s.plan.refloor:
                floor.latency_pass(s.floor, s.res, s.plan, s.prog, tag=" (again)")
    finally:
        s.stop_cluster()
        if s.floor is not None:
            s.floor.stop()
            s.floor = None
    floor.floor_figures(s.res)
    s.res.finalize()
    s.res.figures.sort(key=lambda f: _ORDER.get(f.section, 99))
    return s.res


def run(args: argparse.Namespace) -> int:
    """Run the harness with parsed ``args``; returns an exit code."""
    started = time.perf_counter()
    plan = Plan.make(args.quick)
    plan.spearlets = max(1, args.spearlets)
    if args.window:
        plan.window = args.window
    sections = select_sections(args.only)
    prog = Progress(count_steps(sections, plan, bool(args.profile)), enabled=not args.no_progress)
    session = Session(plan, sections, prog, profile=args.profile, keep=args.keep, data=args.data)

    def on_term(signum, frame):  # SIGTERM stops the run like Ctrl-C: cleanup runs in finally
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        with prog:
            res = run_sections(session)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    print_results(res, plan)
    if "profile" in res.raw:
        print_profile(res.raw["profile"])
    info = meta(plan, sections, started)
    write_json(args.json, res, info)
    failed = sum(1 for f in res.figures if f.passed is False)
    print(f"wrote {args.json} in {info['seconds']:.0f}s; {sum(1 for f in res.figures if f.passed)} pass, "
          f"{failed} fail against the targets")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bench``."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m bench", description="Spear's figures against a bare-pyzmq floor"))
    return run(parser.parse_args(argv))
