"""Soak: sustained invocations through the SMS while Spearlets die and come back.

A cluster on loopback (one SMS, ``--spearlets`` Spearlets; heartbeat 0.2 s,
unhealthy after 1 s) runs a steady open-loop load of asynchronous
invocations through the SMS with :class:`spear.AsyncClient`:

* ``soak-add``  (70%): wasm export ``add``, retries=3, idempotent;
* ``soak-slow`` (20%): pooled Python handler :func:`slow_echo` (sleeps
  20-150 ms, echoes), retries=3, idempotent - so executions are in flight
  whenever a node dies;
* ``soak-once`` (10%): wasm ``add`` with retries=0: at-most-once, it may end
  ``lost`` when its node dies, never twice.

Every ``--chaos-every`` seconds one Spearlet (never the last one alive) is
killed - SIGKILL of its whole process group two times in three, SIGTERM
otherwise - and started again 0.5-2 s later with the same data directory,
hence the same node id. At the end the load stops, every execution is
waited for, and the report gives executions submitted, succeeded, failed,
lost (must be 0 for the retryable functions), wrong outputs, the SMS's own
counts (each execution counted once), reservations, and the RSS of the SMS
and the Spearlets at start, after warm-up and at the end.

::

    python -m bench.soak                      # 60 s
    python -m bench.soak --seconds 600 --rate 500 --json /tmp/soak.json
    SPEAR_SOAK_SECONDS=600 python -m pytest tests/multihost/test_soak.py

The top of this module imports the standard library only: the soak's Python
handler (:func:`slow_echo`) is loaded from this file by the pooled worker.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def slow_echo(data: bytes) -> bytes:
    """The soak's Python handler: a short random sleep, then the input back."""
    time.sleep(random.uniform(0.02, 0.15))
    return data


SOAK_TOML = """\
[sms]
max_executions = {max_executions}

[spearlet]
max_concurrency = 256
drain_timeout = 1.0
reconnect_max = 0.5

[runtimes.docker]
enabled = false
"""

MIX = (("soak-add", 0.7), ("soak-slow", 0.2), ("soak-once", 0.1))
RETRYABLE = {"soak-add", "soak-slow"}


def _rss_tree(pid: int) -> tuple[int, int]:
    """RSS of a process and of it plus its children (bytes)."""
    import psutil

    try:
        p = psutil.Process(pid)
        own = p.memory_info().rss
        total = own
        for ch in p.children(recursive=True):
            try:
                total += ch.memory_info().rss
            except psutil.Error:
                pass
        return own, total
    except psutil.Error:
        return 0, 0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)


class Soak:
    def __init__(self, args, log=print) -> None:
        self.a = args
        self.log = log
        self.rng = random.Random(args.seed)
        self.records: dict[str, tuple[str, bytes]] = {}  # eid -> (function, expected output)
        self.outcome: dict[str, object] = {}  # eid -> ExecutionResult or "unresolved"
        self.latency: list[float] = []
        self.submit_errors: dict[str, int] = {}
        self.chaos: list[dict] = []
        self.rss: dict[str, dict] = {}
        self.stop_at = 0.0

    # ------------------------------------------------------------------ setup

    def specs(self):
        from spear import protocol as P

        add = (REPO / "examples" / "add.wat").read_bytes()
        return [
            P.FunctionSpec(name="soak-add", runtime="wasm", handler="add", artifact=add,
                           retries=3, idempotent=True),
            P.FunctionSpec(name="soak-slow", runtime="process", handler="soak:slow_echo",
                           workdir=str(HERE), mode="pooled",
                           pool=P.PoolSettings(min_warm=1, max=16), retries=3, idempotent=True),
            P.FunctionSpec(name="soak-once", runtime="wasm", handler="add", artifact=add,
                           retries=0),
        ]

    def sample_rss(self, cluster, label: str) -> None:
        sms_own, _ = _rss_tree(cluster.sms.pid)
        nodes = {}
        for i, p in enumerate(cluster.spearlets):
            own, tree = _rss_tree(p.pid) if p.poll() is None else (0, 0)
            nodes[f"spearlet-{i + 1}"] = {"rss_mb": round(own / 2**20, 1),
                                          "with_workers_mb": round(tree / 2**20, 1)}
        self.rss[label] = {"sms_mb": round(sms_own / 2**20, 1), "spearlets": nodes}

    # ------------------------------------------------------------------ load

    def _pick(self, i: int) -> tuple[str, list, bytes, bytes]:
        x = self.rng.random()
        acc = 0.0
        for name, share in MIX:
            acc += share
            if x < acc:
                break
        if name == "soak-slow":
            data = f"slow-{i}".encode()
            return name, [], data, data
        return name, [i, 7], b"", str(i + 7).encode()

    async def _follow(self, c, eid: str, t0: float) -> None:
        from spear import errors, protocol as P

        deadline = self.stop_at + self.a.drain_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.outcome[eid] = "unresolved"
                return
            try:
                r = await c.wait(eid, timeout=min(left, 20.0))
            except errors.DeadlineExceeded:
                continue
            except errors.SpearError as exc:
                self.outcome[eid] = f"error {exc.code}: {exc.message}"
                return
            if r.status in P.TERMINAL:
                self.outcome[eid] = r
                self.latency.append(time.monotonic() - t0)
                return

    async def _submit_and_follow(self, c, name, args, data, want) -> None:
        from spear import errors

        t0 = time.monotonic()
        try:
            eid = await c.submit(name, data, args=args)
        except errors.SpearError as exc:
            self.submit_errors[exc.code] = self.submit_errors.get(exc.code, 0) + 1
            return
        self.records[eid] = (name, want)
        await self._follow(c, eid, t0)

    async def load(self, c) -> None:
        import asyncio

        period = 1.0 / self.a.rate
        inflight: set = set()
        i = 0
        nxt = time.monotonic()
        while time.monotonic() < self.stop_at:
            now = time.monotonic()
            if now < nxt:
                await asyncio.sleep(nxt - now)
            nxt += period
            if time.monotonic() - nxt > 1.0:
                nxt = time.monotonic()  # fell behind: do not burst to catch up
            if len(inflight) >= self.a.max_inflight:
                self.submit_errors["throttled"] = self.submit_errors.get("throttled", 0) + 1
                continue
            i += 1
            # submissions overlap (the SMS answers an async submit once it is synced
            # to disk: a loop that waited for each would measure the disk, not Spear)
            task = asyncio.ensure_future(self._submit_and_follow(c, *self._pick(i)))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.gather(*inflight)

    async def chaos_loop(self, cluster) -> None:
        import asyncio
        import signal

        n = len(cluster.spearlets)
        down: set[int] = set()
        while time.monotonic() < self.stop_at - 2.0:
            await asyncio.sleep(self.a.chaos_every * self.rng.uniform(0.7, 1.3))
            alive = [i for i in range(n) if i not in down]
            if len(alive) < 2 or time.monotonic() >= self.stop_at - 2.0:
                continue
            i = self.rng.choice(alive)
            p = cluster.spearlets[i]
            how = "SIGKILL" if self.rng.random() < 2 / 3 else "SIGTERM"
            t = time.monotonic()
            if how == "SIGKILL":
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the node and its function processes
                except ProcessLookupError:
                    pass
            else:
                p.send_signal(signal.SIGTERM)
            down.add(i)
            await asyncio.get_running_loop().run_in_executor(None, lambda: p.wait(20))
            delay = self.rng.uniform(0.5, 2.0)
            await asyncio.sleep(delay)
            cluster.start_spearlet(i)
            down.discard(i)
            self.chaos.append({"t": round(t - (self.stop_at - self.a.seconds), 1),
                               "node": f"spearlet-{i + 1}", "signal": how,
                               "down_s": round(time.monotonic() - t, 2)})
            self.log(f"  chaos: spearlet-{i + 1} {how}, back after {time.monotonic() - t:.1f}s")

    async def drive(self, cluster) -> None:
        import asyncio

        from spear import AsyncClient

        async with AsyncClient(cluster.sms_addr, timeout=20) as c:
            t_start = time.monotonic()
            self.stop_at = t_start + self.a.seconds
            warm_at = t_start + self.a.seconds * 0.3
            load = asyncio.ensure_future(self.load(c))
            chaos = asyncio.ensure_future(self.chaos_loop(cluster))
            while not load.done():
                await asyncio.sleep(0.5)
                if warm_at and time.monotonic() >= warm_at:
                    self.sample_rss(cluster, "warm")
                    warm_at = 0.0
            await load
            await chaos

    # ------------------------------------------------------------------ run

    def run(self) -> dict:
        import asyncio
        import tempfile

        from spear import Client
        from spear.cluster import Cluster

        a = self.a
        tmp = tempfile.TemporaryDirectory(prefix="spear-soak-")
        data = Path(a.data or tmp.name)
        data.mkdir(parents=True, exist_ok=True)
        cfg = data / "soak.toml"
        cfg.write_text(SOAK_TOML.format(max_executions=a.max_executions))
        cluster = Cluster(data / "cluster", spearlets=a.spearlets, config=str(cfg),
                          heartbeat_interval=0.2, heartbeat_timeout=1.0, cleanup_interval=5.0,
                          host_roots=[str(HERE)])  # soak-slow's workdir (read-only)
        try:
            cluster.start(wait=30)
            with Client(cluster.sms_addr, timeout=60) as c:
                for spec in self.specs():
                    c.deploy(spec)
                # warm every function on the cluster before the start figures
                for k in range(3 * a.spearlets):
                    assert c.invoke("soak-add", args=[k, 1]).ok
                    assert c.invoke("soak-slow", b"warm").output == b"warm"
                base = c.stats()
            self.sample_rss(cluster, "start")
            self.log(f"soak: {a.seconds:g}s at {a.rate:g}/s on {a.spearlets} spearlets, "
                     f"a node killed about every {a.chaos_every:g}s")
            t0 = time.monotonic()
            asyncio.run(self.drive(cluster))
            elapsed = time.monotonic() - t0
            with Client(cluster.sms_addr, timeout=30) as c:
                deadline = time.monotonic() + 30
                while True:
                    st = c.stats()
                    if (st.executions_active == 0 and st.cores_reserved == 0
                            and st.memory_reserved == 0) or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                time.sleep(1.5)  # a node restarted last: let it register and settle
                nodes = c.nodes()
            self.sample_rss(cluster, "end")
            return self.report(base, st, nodes, elapsed)
        finally:
            cluster.stop()
            if not a.keep:
                tmp.cleanup()

    def report(self, base, st, nodes, elapsed: float) -> dict:
        from spear.client import ExecutionResult

        by_fn: dict[str, dict[str, int]] = {}
        wrong, reran_once = [], []
        for eid, (fn, want) in self.records.items():
            r = self.outcome.get(eid, "unresolved")
            if isinstance(r, ExecutionResult):
                status = r.status
                if r.ok and r.output != want:
                    wrong.append(eid)
                if fn == "soak-once" and r.info.attempts > 1:
                    reran_once.append(eid)
            else:
                status = "unresolved" if r == "unresolved" else "error"
            d = by_fn.setdefault(fn, {})
            d[status] = d.get(status, 0) + 1
            d["submitted"] = d.get("submitted", 0) + 1
        tot: dict[str, int] = {}
        for d in by_fn.values():
            for k, v in d.items():
                tot[k] = tot.get(k, 0) + v
        lost_retryable = sum(by_fn.get(fn, {}).get(k, 0) for fn in RETRYABLE
                             for k in ("lost", "unresolved", "error"))
        failed_retryable = sum(by_fn.get(fn, {}).get(k, 0) for fn in RETRYABLE
                               for k in ("failed", "timed_out", "cancelled"))
        counts = {k: st.counts.get(k, 0) - base.counts.get(k, 0) for k in st.counts}
        terminal = sum(counts.get(k, 0) for k in ("succeeded", "failed", "cancelled",
                                                  "timed_out", "lost"))
        s0, sw, s1 = (self.rss[k]["sms_mb"] for k in ("start", "warm", "end"))
        return {
            "seconds": self.a.seconds, "elapsed_s": round(elapsed, 1), "rate_target": self.a.rate,
            "spearlets": self.a.spearlets,
            "submitted": tot.get("submitted", 0),
            "succeeded": tot.get("succeeded", 0),
            "failed": tot.get("failed", 0) + tot.get("timed_out", 0) + tot.get("cancelled", 0),
            "lost": tot.get("lost", 0),
            "unresolved": tot.get("unresolved", 0) + tot.get("error", 0),
            "lost_retryable": lost_retryable,
            "failed_retryable": failed_retryable,
            "wrong_output": len(wrong),
            "once_ran_twice": len(reran_once),
            "by_function": by_fn,
            "submit_errors": self.submit_errors,
            "throughput_per_s": round(tot.get("submitted", 0) / max(self.a.seconds, 1e-9), 1),
            "latency_p50_ms": _pct(self.latency, 0.5), "latency_p99_ms": _pct(self.latency, 0.99),
            "sms_counts": counts,
            "sms_counted_once": counts.get("submitted", 0) == tot.get("submitted", 0) == terminal,
            "reservations_after": {"cores": st.cores_reserved, "memory": st.memory_reserved,
                                   "active": st.executions_active},
            "nodes_after": {n.name: n.state for n in nodes},
            "chaos": self.chaos,
            "rss": self.rss,
            "sms_rss_growth_mb": round(s1 - sw, 1),
            "sms_rss_growth_from_start_mb": round(s1 - s0, 1),
            "loadavg": round(os.getloadavg()[0], 2),
        }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("SPEAR_SOAK_SECONDS", "60")),
                    help="load duration (default $SPEAR_SOAK_SECONDS or 60)")
    ap.add_argument("--rate", type=float, default=300.0, help="submissions per second")
    ap.add_argument("--spearlets", type=int, default=3)
    ap.add_argument("--chaos-every", type=float, default=6.0,
                    help="mean seconds between node kills")
    ap.add_argument("--max-inflight", type=int, default=2000)
    ap.add_argument("--max-executions", type=int, default=5000,
                    help="SMS execution records kept (retention: its memory plateaus)")
    ap.add_argument("--drain-timeout", type=float, default=90.0,
                    help="seconds after the load stops to wait for every execution")
    ap.add_argument("--rss-bound-mb", type=float, default=64.0,
                    help="allowed SMS RSS growth from warm-up to the end")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data", help="keep the cluster's state and logs here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (with --data unset)")
    ap.add_argument("--json", help="write the report here")
    return ap.parse_args(argv)


def check(r: dict, rss_bound_mb: float) -> list[str]:
    """What a soak must show; returns the violations (empty: passed)."""
    bad = []
    if r["lost_retryable"]:
        bad.append(f"{r['lost_retryable']} retryable executions lost or unresolved")
    if r["failed_retryable"]:
        bad.append(f"{r['failed_retryable']} retryable executions failed")
    if r["unresolved"]:
        bad.append(f"{r['unresolved']} executions never reached a terminal state")
    if r["wrong_output"]:
        bad.append(f"{r['wrong_output']} wrong outputs")
    if not r["sms_counted_once"]:
        bad.append(f"SMS counts do not balance: {r['sms_counts']} vs {r['submitted']} submitted")
    if any(r["reservations_after"].values()):
        bad.append(f"reservations left: {r['reservations_after']}")
    if any(s != "ready" for s in r["nodes_after"].values()):
        bad.append(f"nodes not ready at the end: {r['nodes_after']}")
    if r["sms_rss_growth_mb"] > rss_bound_mb:
        bad.append(f"SMS RSS grew {r['sms_rss_growth_mb']} MB after warm-up (bound {rss_bound_mb})")
    return bad


def main(argv=None) -> int:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    args = parse_args(argv)
    r = Soak(args, log=lambda m: print(m, flush=True)).run()
    keys = ("submitted", "succeeded", "failed", "lost", "unresolved", "lost_retryable",
            "wrong_output", "once_ran_twice", "throughput_per_s", "latency_p50_ms",
            "latency_p99_ms", "sms_counted_once", "sms_rss_growth_mb", "loadavg")
    print("\n" + "\n".join(f"  {k:>22}: {r[k]}" for k in keys))
    print(f"  {'by function':>22}: {json.dumps(r['by_function'])}")
    print(f"  {'kills':>22}: {len(r['chaos'])} "
          f"({sum(1 for c in r['chaos'] if c['signal'] == 'SIGKILL')} SIGKILL)")
    for label in ("start", "warm", "end"):
        x = r["rss"][label]
        nodes = ", ".join(f"{k} {v['rss_mb']}/{v['with_workers_mb']}" for k, v in x["spearlets"].items())
        print(f"  {'RSS MB ' + label:>22}: SMS {x['sms_mb']}; spearlet (own/with workers) {nodes}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
        print(f"\nwritten to {args.json}")
    bad = check(r, args.rss_bound_mb)
    for b in bad:
        print(f"FAIL: {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
