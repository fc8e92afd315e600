"""Warm no-op invocations, direct and through the SMS, against the 2-hop and 3-hop floors."""

from __future__ import annotations

import time

from .floor import bare_wasmtime_us
from .procs import run_async
from .results import ms, pct
from .session import Session

#: the latency rows: function, label, whether the target applies
LATENCY_FUNCS = [
    ("b-add", "wasm export (add.wat add)", True),
    ("b-hello", "WASI command (hello.wat)", True),
    ("b-worker", "pooled process worker (no-op)", True),
    ("b-noop", "Python handler (handlers:noop)", True),
    ("b-oneshot", "one-shot process (cat)", False),
]

#: progress steps :func:`section_latency` announces
STEPS = 2 + len(LATENCY_FUNCS) * 2 + 2


def _blocking(s: Session, c, name: str, node: str | None, n: int, warm: int) -> dict:
    """``n`` sequential invocations with the blocking client."""
    spec, data, args = s.specs[name]
    for _ in range(warm):
        c.invoke(name, data, args=args, node=node).raise_for_status()
    ts, runs, totals = [], [], []
    perf = time.perf_counter
    invoke = c.invoke
    for _ in range(n):
        t0 = perf()
        r = invoke(name, data, args=args, node=node)
        ts.append(perf() - t0)
        if not r.ok:
            r.raise_for_status()
        runs.append(r.info.timings.run)
        totals.append(r.info.timings.total)
    out = ms(ts)
    out["run_p50"] = pct(runs, 50) * 1e3
    out["node_total_p50"] = pct(totals, 50) * 1e3
    return out


async def _async(s: Session, pairs: list[tuple[str, str | None, int, int]]) -> dict:
    """The same sequential invocations with ``AsyncClient``."""
    from spear.client import AsyncClient

    out = {}
    async with AsyncClient(s.sms, timeout=60) as c:
        perf = time.perf_counter
        for name, node, n, warm in pairs:
            spec, data, args = s.specs[name]
            for _ in range(warm):
                (await c.invoke(name, data, args=args, node=node)).raise_for_status()
            ts = []
            for _ in range(n):
                t0 = perf()
                r = await c.invoke(name, data, args=args, node=node)
                ts.append(perf() - t0)
                if not r.ok:
                    r.raise_for_status()
            out[(name, node)] = ms(ts)
    return out


def _measure(s: Session, raw: dict) -> None:
    """Ping, then every function direct and through the SMS, blocking then async, into ``raw``."""
    plan = s.plan
    pairs = []
    with s.client() as c:
        s.prog.step("latency: deploy functions")
        for name, _, _ in LATENCY_FUNCS:
            s.ensure(c, name, sms=True, direct=True)
        # Spear's own request path without an execution
        s.prog.step("latency: ping SMS and spearlet")
        for label, node in (("sms", None), ("direct", s.node)):
            for _ in range(50):
                c.ping(node=node)
            ts = []
            for _ in range(plan.lat_n):
                t0 = time.perf_counter()
                c.ping(node=node)
                ts.append(time.perf_counter() - t0)
            raw[f"ping.{label}"] = ms(ts)
        for name, label, _ in LATENCY_FUNCS:
            n = plan.oneshot_n if name == "b-oneshot" else plan.lat_n
            warm = plan.lat_warm if n > 50 else 5
            for path, node in (("direct", s.node), ("sms", None)):
                s.prog.step(f"latency: {label[:22]}, {path}")
                raw[f"{name}.{path}.blocking"] = _blocking(s, c, name, node, n, warm)
                pairs.append((name, node, n, warm))
    s.prog.step("latency: the same with AsyncClient")
    for (name, node), v in run_async(_async(s, pairs)).items():
        raw[f"{name}.{'direct' if node else 'sms'}.async"] = v


def section_latency(s: Session) -> None:
    """Measure, then one row per function and path (the better of blocking and async)."""
    raw = s.res.raw.setdefault("latency", {})
    _measure(s, raw)
    res = s.res
    res.add("latency", "ping.direct.p50", "Spear ping of a spearlet p50 (no execution)",
            raw["ping.direct"]["p50"], "ms", floor_key="2hop.p50", note="blocking Client")
    res.add("latency", "ping.sms.p50", "Spear ping of the SMS p50 (no execution)",
            raw["ping.sms"]["p50"], "ms", floor_key="2hop.p50", note="blocking Client")
    for name, label, has_target in LATENCY_FUNCS:
        for path, floor, bound in (("direct", "2hop", 1.5), ("sms", "3hop", 2.0)):
            b = raw[f"{name}.{path}.blocking"]
            a = raw.get(f"{name}.{path}.async")
            best, which = (b, "blocking Client")
            if a is not None and a["p50"] < b["p50"]:
                best, which = a, "AsyncClient"
            other = a if best is b else b
            note = f"{which}; other {other['p50']:.3f} ms" if other else which
            if path == "direct":
                note += f"; node total {b['node_total_p50'] * 1e3:.0f} µs"
            res.add("latency", f"lat.{name}.{path}.p50", f"warm {label}, {path}: p50",
                    best["p50"], "ms", floor_key=f"{floor}.p50",
                    target=("ratio<=", bound) if has_target else None, note=note)
            res.add("latency", f"lat.{name}.{path}.p99", f"warm {label}, {path}: p99",
                    best["p99"], "ms", floor_key=f"{floor}.p99")
    # the wasm runtime's own cost vs a bare wasmtime-py call of the same export
    s.prog.step("latency: bare wasmtime-py call")
    bare = bare_wasmtime_us(s.ex / "add.wat", s.plan.kernel_repeat)
    res.floor_sample("wasmtime.call", bare, "add(store, 1, 2) through wasmtime-py's Func.__call__")
    raw["wasmtime_bare_us"] = bare
    res.add("latency", "wasm.run", "wasm export: Spear's run time (timings.run p50)",
            raw["b-add.direct.blocking"]["run_p50"] * 1e3, "us", floor_key="wasmtime.call",
            target=("ratio<=", 1.5), note="pool acquire + call + result encoding inside the spearlet")
