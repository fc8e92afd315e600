"""Pipelined no-op invocations and 1 MiB echoes, through the SMS and direct."""

from __future__ import annotations

import asyncio
import os
import time

from . import floor
from .plan import MiB
from .procs import CpuMeter, run_async
from .results import ms
from .session import Session


async def pipelined(s: Session, name: str, node: str | None, n: int, window: int) -> dict:
    """``n`` invocations of ``name`` by ``window`` coroutines sharing one ``AsyncClient``."""
    from spear.client import AsyncClient

    spec, data, args = s.specs[name]
    async with AsyncClient(s.sms, timeout=120) as c:
        for _ in range(100):
            (await c.invoke(name, data, args=args, node=node)).raise_for_status()
        failed = []
        per = [n // window + (1 if i < n % window else 0) for i in range(window)]

        async def worker(k: int) -> None:
            for _ in range(k):
                r = await c.invoke(name, data, args=args, node=node)
                if not r.ok:
                    failed.append(r.info.error)

        with CpuMeter(s.pids()) as m:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(k) for k in per if k))
            dt = time.perf_counter() - t0
    return {"n": n, "window": window, "seconds": dt, "rate": n / dt, "failed": len(failed),
            "first_error": str(failed[0]) if failed else "", "cpu": m.as_json(n), "cpu_summary": m.summary(n)}


def _check_mib(r) -> None:
    r.raise_for_status()
    if len(r.output) != MiB:
        raise RuntimeError(f"1 MiB echo returned {len(r.output)} bytes")


async def _mib_async(s: Session, name: str, node: str | None, n: int) -> dict:
    from spear.client import AsyncClient

    blob = os.urandom(MiB)
    async with AsyncClient(s.sms, timeout=60) as c:
        ts = []
        for i in range(n + 3):
            t0 = time.perf_counter()
            r = await c.invoke(name, blob, node=node)
            dt = time.perf_counter() - t0
            _check_mib(r)
            if i >= 3:
                ts.append(dt)
    return ms(ts)


def _mib_blocking(c, name: str, node: str | None, n: int) -> dict:
    blob = os.urandom(MiB)
    ts = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        r = c.invoke(name, blob, node=node)
        dt = time.perf_counter() - t0
        _check_mib(r)
        if i >= 3:
            ts.append(dt)
    return ms(ts)


def _rate_trials(s: Session, raw: dict) -> dict[str, dict]:
    """Floor and Spear trials alternately; the best Spear trial per path."""
    plan = s.plan
    # alternating, a burst of noise from other tenants hits both; the best of each counts
    best: dict[str, dict] = {}
    for t in range(plan.rate_trials):
        for path, node, hop in (("sms", None, "3hop"), ("direct", s.node, "2hop")):
            s.prog.step(f"throughput {t + 1}/{plan.rate_trials}: {plan.rate_n:,} no-op, {path}, "
                        f"{plan.window} in flight")
            if s.floor is not None:
                floor.rate_trial(s.floor, s.res, plan, hop)
            r = run_async(pipelined(s, "b-add", node, plan.rate_n, plan.window))
            raw.setdefault(f"{path}_trials", []).append(r)
            if path not in best or (r["rate"] > best[path]["rate"] and not r["failed"]) or best[path]["failed"]:
                best[path] = r
    return best


def section_throughput(s: Session) -> None:
    """Pipelined rates (vs the floor's), then 1 MiB echoes (blocking and async, the better counts)."""
    plan = s.plan
    raw = s.res.raw.setdefault("throughput", {})
    with s.client() as c:
        s.prog.step("throughput: deploy")
        s.ensure(c, "b-add", sms=True, direct=True)
        s.ensure(c, "b-echo", sms=True, direct=True)
    best = _rate_trials(s, raw)
    for path, hop in (("sms", "3hop"), ("direct", "2hop")):
        r = best[path]
        note = r["cpu_summary"]
        if plan.rate_trials > 1:
            note = f"best of {plan.rate_trials}; " + note
        if r["failed"]:
            note = f"{r['failed']} FAILED ({r['first_error'][:80]}); " + note
        s.res.add("throughput", f"rate.{path}",
                  f"pipelined no-op wasm invocations, {path} (AsyncClient, {plan.window} in flight)",
                  r["rate"] if not r["failed"] else None, "/s", floor_key=f"{hop}.rate",
                  target=("ratio>=", 0.6) if path == "sms" else None, note=note)
    for path, node, hop, bound in (("sms", None, "3hop", 1.2), ("direct", s.node, "2hop", None)):
        s.prog.step(f"throughput: 1 MiB echo, {path}")
        with s.client() as c:
            b = _mib_blocking(c, "b-echo", node, plan.mib_n)
        a = run_async(_mib_async(s, "b-echo", node, plan.mib_n))
        raw[f"1mib.{path}"] = {"blocking": b, "async": a}
        best_, which, other = (b, "blocking Client", a) if b["p50"] <= a["p50"] else (a, "AsyncClient", b)
        s.res.add("throughput", f"mib.{path}.p50", f"1 MiB echo (Python handler echo), {path}: p50",
                  best_["p50"], "ms", floor_key=f"{hop}.1mib.p50",
                  target=("ratio<=", bound) if bound else None,
                  note=f"{which}; other {other['p50']:.2f} ms")
