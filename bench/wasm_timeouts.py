"""How precisely a wasm timeout ends a call that spins forever.

For each place a call can run (inline on the event loop, a command on the
thread pool, an export on the pool) and each limit T, a spinning function is
called N times with timeout T; the figure is the *overshoot*: how long after
T the caller got ``DEADLINE_EXCEEDED`` back (wall time, ``time.monotonic``),
p50 and max, in ms. The goal is under 100 ms, and never below T (a negative
overshoot would be a call stopped before its limit).

Also measured:

* ``queued``: one pool thread, a spinner holding it, and a second spinner
  waiting: the second one's overshoot counted from when it *started*
  (its reported wait subtracted), and the wait it reported;
* ``client``: through the public client library, straight to a Spearlet
  (``spear.Client.invoke(..., node=...)``): client-observed overshoot and the
  Spearlet's ``timings.run - T``.

    python -m bench.wasm_timeouts                 # T = 0.1, 1, 5 s; about 2 minutes
    python -m bench.wasm_timeouts --quick         # T = 0.1, 1 s; about 30 s
    python -m bench.wasm_timeouts --long          # adds T = 30 s (a long timeout)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from spear import errors, protocol as P
from spear.runtimes.wasm import WasmRuntime

ROOT = Path(__file__).resolve().parents[1]
SPIN = (ROOT / "examples" / "tests" / "spin.wat").read_bytes()
SPIN_WASI_EXPORT = b"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "spin") (loop $l (br $l))))"""

PATHS = {
    "inline export": (SPIN, "spin"),
    "pool command": (SPIN, ""),
    "pool export": (SPIN_WASI_EXPORT, "spin"),
}


def _row(name: str, limit: float, overshoots: list[float], note: str = "") -> dict:
    ms = [o * 1e3 for o in overshoots]
    return {"path": name, "T": limit, "n": len(ms), "p50_ms": statistics.median(ms),
            "min_ms": min(ms), "max_ms": max(ms), "note": note}


async def _spin_once(rt: WasmRuntime, inst, limit: float) -> tuple[float, dict]:
    t0 = time.monotonic()
    try:
        await rt.invoke(inst, b"", [], P.Limits(timeout=limit))
    except errors.DeadlineExceeded as exc:
        return time.monotonic() - t0 - limit, exc.details
    raise AssertionError("a spinning call returned")


async def runtime_rows(limits: list[float], n_of) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        rt = WasmRuntime(d)
        try:
            for name, (artifact, handler) in PATHS.items():
                spec = P.FunctionSpec(name="spin", runtime="wasm", artifact=artifact, handler=handler)
                prepared = await rt.prepare(spec)
                for limit in limits:
                    got, reasons = [], set()
                    for _ in range(n_of(limit)):
                        inst = await rt.create_instance(prepared)  # an interrupted export is not reused
                        over, details = await _spin_once(rt, inst, limit)
                        got.append(over)
                        reasons.add("backstop" if "host call" in str(details) else details["limit"])
                        await rt.destroy(inst)
                    rows.append(_row(name, limit, got, "ended by: " + ",".join(sorted(reasons))))
        finally:
            await rt.close()
        # one thread, a spinner holding it, a second spinner waiting for it
        rt = WasmRuntime(d, max_workers=1, queue_timeout=600)
        try:
            prepared = await rt.prepare(P.FunctionSpec(name="spin", runtime="wasm", artifact=SPIN))
            inst = await rt.create_instance(prepared)
            for limit in limits:
                got, waits = [], []
                for _ in range(n_of(limit)):
                    first = asyncio.ensure_future(_spin_once(rt, inst, limit))
                    while rt.pool.running < 1:  # the first spinner holds the thread
                        await asyncio.sleep(0.001)
                    t0 = time.monotonic()
                    try:
                        await rt.invoke(inst, b"", [], P.Limits(timeout=limit))
                    except errors.DeadlineExceeded as exc:
                        end = time.monotonic() - t0
                        waits.append(exc.details["queued"])
                        got.append(end - exc.details["queued"] - limit)
                    await first
                rows.append(_row("queued behind a spinner", limit, got,
                                 f"waited p50 {statistics.median(waits) * 1e3:.0f} ms (reported as queue)"))
        finally:
            await rt.close()
    return rows


def client_rows(limits: list[float], n_of) -> list[dict]:
    from spear import Client
    from spear.cluster import Cluster

    rows = []
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "spear.toml"
        cfg.write_text('[runtimes.docker]\nenabled = false\n')
        c = Cluster(Path(d) / "c", spearlets=1, config=str(cfg))
        try:
            c.start(wait=30)
            node = c.spearlet_addrs[0]
            with Client(c.sms_addr, timeout=max(limits) + 30) as cl:
                cl.deploy(P.FunctionSpec(name="spin", runtime="wasm", artifact=SPIN), node=node)
                for limit in limits:
                    seen, ran = [], []
                    for _ in range(n_of(limit)):
                        t0 = time.monotonic()
                        r = cl.invoke("spin", node=node, timeout=limit)
                        seen.append(time.monotonic() - t0 - limit)
                        assert r.status == "timed_out" and r.info.error.code == "DEADLINE_EXCEEDED", r.info
                        ran.append(r.info.timings.run - limit)
                    rows.append(_row("client -> spearlet", limit, seen,
                                     f"timings.run - T p50 {statistics.median(ran) * 1e3:.1f} ms, "
                                     f"max {max(ran) * 1e3:.1f} ms"))
        finally:
            c.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T = 0.1 and 1 s only")
    ap.add_argument("--long", action="store_true", help="also T = 30 s")
    ap.add_argument("--no-client", action="store_true", help="skip the run through a Spearlet")
    args = ap.parse_args(argv)
    limits = [0.1, 1.0] if args.quick else [0.1, 1.0, 5.0]
    if args.long:
        limits.append(30.0)

    def n_of(limit: float) -> int:
        return 10 if limit <= 0.1 else 5 if limit <= 1 else 2 if limit <= 5 else 1

    rows = asyncio.run(runtime_rows(limits, n_of))
    if not args.no_client:
        rows += client_rows(limits, n_of)
    print(f"{'path':<26} {'T (s)':>6} {'n':>3} {'p50 ms':>8} {'min ms':>8} {'max ms':>8}  note")
    for r in rows:
        print(f"{r['path']:<26} {r['T']:>6g} {r['n']:>3} {r['p50_ms']:>8.1f} {r['min_ms']:>8.1f} "
              f"{r['max_ms']:>8.1f}  {r['note']}")
    worst = max(r["max_ms"] for r in rows)
    early = min(r["min_ms"] for r in rows)
    print(f"\nworst overshoot past the limit: {worst:.1f} ms (goal < 100 ms); "
          f"earliest: {early:+.1f} ms (must not be negative)")
    return 0 if worst < 100 and early >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
