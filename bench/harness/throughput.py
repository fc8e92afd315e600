"""Pipelined no-op invocations (wasm, Python) and 64 KiB / 1 MiB / 16 MiB echoes, via the SMS and direct."""

from __future__ import annotations

import asyncio
import os
import time

from . import floor
from .plan import PAYLOADS, ROW_PREFIX, echo_warm
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


def _check_echo(r, size: int) -> None:
    r.raise_for_status()
    if len(r.output) != size:
        raise RuntimeError(f"echo of {size} bytes returned {len(r.output)} bytes")


async def _echo_async(s: Session, name: str, node: str | None, size: int, n: int) -> dict:
    """``n`` sequential echoes of ``size`` random bytes through one ``AsyncClient``; ms."""
    from spear.client import AsyncClient

    blob = os.urandom(size)
    warm = echo_warm(size)
    async with AsyncClient(s.sms, timeout=60) as c:
        ts = []
        for i in range(n + warm):
            t0 = time.perf_counter()
            r = await c.invoke(name, blob, node=node)
            dt = time.perf_counter() - t0
            _check_echo(r, size)
            if i >= warm:
                ts.append(dt)
    return ms(ts)


def _echo_blocking(c, name: str, node: str | None, size: int, n: int) -> dict:
    """``n`` sequential echoes of ``size`` random bytes through the blocking ``Client`` ``c``; ms."""
    blob = os.urandom(size)
    warm = echo_warm(size)
    ts = []
    for i in range(n + warm):
        t0 = time.perf_counter()
        r = c.invoke(name, blob, node=node)
        dt = time.perf_counter() - t0
        _check_echo(r, size)
        if i >= warm:
            ts.append(dt)
    return ms(ts)


#: (payload tag, path) -> the most the row may be, as a multiple of its floor
_ECHO_TARGETS = {("1mib", "sms"): 1.2}


#: the pipelined rows: (function, runtime tag, label); the wasm rows keep their historic keys
RATE_FUNCS = (("b-add", "", "no-op wasm"), ("b-noop", ".python", "no-op Python handler"))
#: (path, runtime tag) -> the least the row may be, as a multiple of its floor
_RATE_TARGETS = {("sms", ""): 0.6, ("sms", ".python"): 0.4}


def _rate_trials(s: Session, raw: dict) -> dict[str, dict]:
    """Floor and Spear trials alternately; the best Spear trial per row (``<path><tag>``)."""
    plan = s.plan
    # alternating, a burst of noise from other tenants hits both; the best of each counts
    best: dict[str, dict] = {}
    for t in range(plan.rate_trials):
        for name, tag, label in RATE_FUNCS:
            for path, node, hop in (("sms", None, "3hop"), ("direct", s.node, "2hop")):
                s.prog.step(f"throughput {t + 1}/{plan.rate_trials}: {plan.rate_n:,} {label}, {path}, "
                            f"{plan.window} in flight")
                if s.floor is not None:
                    floor.rate_trial(s.floor, s.res, plan, hop)
                r = run_async(pipelined(s, name, node, plan.rate_n, plan.window))
                key = path + tag
                raw.setdefault(f"{key}_trials", []).append(r)
                b = best.get(key)
                if b is None or (r["rate"] > b["rate"] and not r["failed"]) or b["failed"]:
                    best[key] = r
    return best


def rate_rows(s: Session, raw: dict) -> None:
    """The pipelined rows ``rate.<path>`` (wasm) and ``rate.<path>.python``, each beside its floor."""
    plan = s.plan
    best = _rate_trials(s, raw)
    for _, tag, label in RATE_FUNCS:
        for path, hop in (("sms", "3hop"), ("direct", "2hop")):
            r = best[path + tag]
            note = r["cpu_summary"]
            if plan.rate_trials > 1:
                note = f"best of {plan.rate_trials}; " + note
            if r["failed"]:
                note = f"{r['failed']} FAILED ({r['first_error'][:80]}); " + note
            bound = _RATE_TARGETS.get((path, tag))
            s.res.add("throughput", f"rate.{path}{tag}",
                      f"pipelined {label} invocations, {path} (AsyncClient, {plan.window} in flight)",
                      r["rate"] if not r["failed"] else None, "/s", floor_key=f"{hop}.rate",
                      target=("ratio>=", bound) if bound else None, note=note)


def section_throughput(s: Session) -> None:
    """Pipelined rates (vs the floor's, see :func:`rate_rows`), then echoes of each payload size."""
    raw = s.res.raw.setdefault("throughput", {})
    with s.client() as c:
        s.prog.step("throughput: deploy")
        for name in ("b-add", "b-noop", "b-echo"):
            s.ensure(c, name, sms=True, direct=True)
    rate_rows(s, raw)
    echo_rows(s, raw)


def echo_rows(s: Session, raw: dict) -> None:
    """Echoes of each payload size through the Python handler ``b-echo``, via the SMS and direct.

    Both public clients measure; the one with the lower p50 makes the row,
    the other's p50 goes in its note. Each row's floor is the same size
    through the bare floor with as many hops (3 for the SMS, 2 direct),
    measured in the same run; the bare-pipes floor rows show what the
    handler's own hop costs.
    """
    for size_tag, size, label in PAYLOADS:
        n = s.plan.echo_n[size_tag]
        for path, node, hop in (("sms", None, "3hop"), ("direct", s.node, "2hop")):
            s.prog.step(f"throughput: {label} echo, {path}")
            with s.client() as c:
                b = _echo_blocking(c, "b-echo", node, size, n)
            a = run_async(_echo_async(s, "b-echo", node, size, n))
            raw[f"{size_tag}.{path}"] = {"blocking": b, "async": a}
            best, which, other = (b, "blocking Client", a) if b["p50"] <= a["p50"] else (a, "AsyncClient", b)
            bound = _ECHO_TARGETS.get((size_tag, path))
            s.res.add("throughput", f"{ROW_PREFIX[size_tag]}.{path}.p50",
                      f"{label} echo (Python handler echo), {path}: p50", best["p50"], "ms",
                      floor_key=f"{hop}.{size_tag}.p50", target=("ratio<=", bound) if bound else None,
                      note=f"{which}; other {other['p50']:.2f} ms; n={n}")
