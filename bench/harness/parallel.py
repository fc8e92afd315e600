"""Parallel efficiency: a CPU-bound Python handler serially vs on every core, against bare processes."""

from __future__ import annotations

import asyncio
import time

from . import floor
from .procs import run_async
from .results import pct
from .session import Session


async def _fib_parallel(s: Session, per_worker: int, workers: int) -> tuple[float, list[float]]:
    """``workers`` coroutines each invoking fib ``per_worker`` times; (seconds, run times)."""
    from spear.client import AsyncClient

    spec, data, args = s.specs["b-fib"]
    runs: list[float] = []
    async with AsyncClient(s.sms, timeout=120) as c:
        async def worker() -> None:
            for _ in range(per_worker):
                r = await c.invoke("b-fib", data, node=s.node)
                r.raise_for_status()
                runs.append(r.info.timings.run)

        # warm every instance
        await asyncio.gather(*(c.invoke("b-fib", data, node=s.node) for _ in range(workers)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.perf_counter() - t0, runs


def _trial(s: Session, n: int, per: int, data: bytes) -> dict:
    """One Spear trial (serial, then ``cpus`` wide) and one bare-process trial."""
    cpus = s.cpus
    runs_s = []
    with s.client(timeout=120) as c:
        t0 = time.perf_counter()
        for _ in range(n):
            r = c.invoke("b-fib", data, node=s.node)
            r.raise_for_status()
            runs_s.append(r.info.timings.run)
        t_serial = time.perf_counter() - t0
    t_par, runs_p = run_async(_fib_parallel(s, per, cpus))
    b_serial, b_par = floor.bare_parallel(s.plan.fib_arg, n, cpus)
    s.res.floor_sample("parallel.efficiency", (b_serial / b_par) / cpus,
                       f"serial {b_serial:.2f}s, parallel {b_par:.2f}s")
    return {"t_serial": t_serial, "t_parallel": t_par, "efficiency": (t_serial / t_par) / cpus,
            "bare_serial": b_serial, "bare_parallel": b_par, "bare_efficiency": (b_serial / b_par) / cpus,
            "run_p50_serial_ms": pct(runs_s, 50) * 1e3, "run_p50_parallel_ms": pct(runs_p, 50) * 1e3}


def section_parallel(s: Session) -> None:
    """Spear and bare-process trials alternate; the best efficiency of each counts."""
    cpus = s.cpus
    per = max(1, s.plan.fib_n // cpus)
    n = per * cpus
    trials = s.plan.rate_trials
    s.prog.step(f"parallel: deploy fib with {cpus} warm workers")
    with s.client(timeout=120) as c:
        s.ensure(c, "b-fib", sms=False, direct=True)
        spec, data, _ = s.specs["b-fib"]
        for _ in range(3):
            c.invoke("b-fib", data, node=s.node).raise_for_status()
    best = None
    raw = s.res.raw.setdefault("parallel", {"n": n, "cpus": cpus, "trials": []})
    for t in range(trials):
        s.prog.step(f"parallel {t + 1}/{trials}: fib({s.plan.fib_arg}) x{n}, serial then {cpus} wide")
        one = _trial(s, n, per, data)
        raw["trials"].append(one)
        if best is None or one["efficiency"] > best["efficiency"]:
            best = one
    note = (f"fib({s.plan.fib_arg}) x{n}: serial {best['t_serial']:.2f}s, parallel {best['t_parallel']:.2f}s; "
            f"run p50 {best['run_p50_serial_ms']:.1f} -> {best['run_p50_parallel_ms']:.1f} ms")
    if trials > 1:
        note = f"best of {trials}; " + note
    s.res.add("parallel", "parallel.efficiency",
              f"CPU-bound Python handler on {cpus} cores: parallel efficiency", best["efficiency"], "%",
              floor_key="parallel.efficiency", target=(">=", 0.95), note=note)
