"""How the SMS's cost grows with the number of nodes heartbeating to it.

For each node count it starts a fresh cluster on loopback (one SMS with the
default heartbeat settings: every 1 s, unhealthy after 5 s, plus
``--spearlets`` real Spearlets), measures real execution latency with no
simulated nodes, then starts :mod:`bench.nodesim` processes
(``--per-proc`` nodes each) and, once every simulated node is registered and
heartbeating, measures over ``--window`` seconds:

* the SMS's CPU (% of one core, from its CPU time) and RSS (psutil);
* heartbeats answered per second and their round trip (p50/p99), as the
  simulated nodes saw them;
* nodes that turned unhealthy meanwhile (must be 0);
* real executions (wasm ``add`` through the SMS, ``--rate`` per second, on
  the real Spearlets): latency p50/p99 and failures, against the baseline;
* dispatches that reached a simulated node (must be 0: they offer no runtime);
* whether a full ``ListNodes`` still answers.

::

    python -m bench.scale --nodes 100,1000,10000        # about 2 minutes
    python -m bench.scale --nodes 10000 --window 30 --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.nodesim import NB, percentile  # noqa: E402
from spear import Client, errors, protocol as P  # noqa: E402
from spear.cluster import Cluster  # noqa: E402

CONFIG = """\
[runtimes.docker]
enabled = false
"""


def raise_fd_limit() -> None:
    """The SMS needs a descriptor per connected node: lift our soft limit (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class SimProcess:
    """One ``python -m bench.nodesim`` child and the last JSON line it printed."""

    def __init__(self, sms: str, nodes: int, prefix: str, ramp: float, interval: float = 0.0) -> None:
        cmd = [sys.executable, "-m", "bench.nodesim", "--sms", sms, "--nodes", str(nodes),
               "--prefix", prefix, "--ramp", str(ramp), "--report", "0.5"]
        if interval:
            cmd += ["--interval", str(interval)]
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.last: dict = {}
        self.lock = threading.Lock()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.last = d

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            del self.stderr[:-20]

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.last)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nodesim exited with {self.proc.returncode}: "
                               + "\n".join(self.stderr[-10:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _sum(snaps: list[dict], key: str) -> int:
    return sum(s.get(key, 0) for s in snaps)


def _hist(snaps: list[dict], key: str = "hist") -> list[int]:
    out = [0] * NB
    for s in snaps:
        for i, v in enumerate(s.get(key) or ()):
            out[i] += v
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class ExecLoad:
    """Real executions through the SMS at a steady rate, in a thread."""

    def __init__(self, sms: str, rate: float, function: str = "scale-add") -> None:
        self.sms = sms
        self.rate = rate
        self.function = function
        self.lat: list[float] = []
        self.failed: list[str] = []
        self.nodes: set[str] = set()
        self._stop = threading.Event()
        self._th: threading.Thread | None = None

    def start(self) -> "ExecLoad":
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.rate
        with Client(self.sms, timeout=10) as c:
            i = 0
            nxt = time.perf_counter()
            while not self._stop.is_set():
                i += 1
                t0 = time.perf_counter()
                try:
                    r = c.invoke(self.function, args=[i, 1])
                    if r.ok and r.output == str(i + 1).encode():
                        self.lat.append(time.perf_counter() - t0)
                        self.nodes.add(r.info.node_id)
                    else:
                        self.failed.append(f"{r.status}: {r.info.error}")
                except errors.SpearError as exc:
                    self.failed.append(f"{exc.code}: {exc.message}")
                nxt += period
                delay = nxt - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    nxt = time.perf_counter()

    def stop(self) -> "ExecLoad":
        self._stop.set()
        if self._th is not None:
            self._th.join(15)
        return self

    def summary(self) -> dict:
        return {"executions": len(self.lat) + len(self.failed), "failed": len(self.failed),
                "p50_ms": _ms(_pct(self.lat, 0.5)), "p99_ms": _ms(_pct(self.lat, 0.99)),
                "first_failures": self.failed[:3]}


def _cpu_time(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def run_step(nodes: int, *, window: float = 10.0, spearlets: int = 2, per_proc: int = 2500,
             procs: int | None = None, ramp: float = 200.0, rate: float = 50.0,
             baseline: float = 3.0, settle: float = 3.0, register_timeout: float | None = None,
             store: str = "leveldb", restart: bool = False, restart_timeout: float = 120.0,
             data: str | Path | None = None, progress=print) -> dict:
    """One measurement at ``nodes`` simulated nodes; returns a dict of figures."""
    raise_fd_limit()
    procs = procs or max(1, math.ceil(nodes / per_proc))
    own_tmp = None
    if data is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="spear-scale-")
        data = own_tmp.name
    data = Path(data)
    data.mkdir(parents=True, exist_ok=True)
    (data / "scale.toml").write_text(CONFIG)
    cluster = Cluster(data / f"n{nodes}", spearlets=spearlets, config=str(data / "scale.toml"),
                      store=store, heartbeat_interval=1.0, heartbeat_timeout=5.0,
                      cleanup_interval=60.0)
    sims: list[SimProcess] = []
    out: dict = {"nodes": nodes, "sim_processes": procs, "spearlets": spearlets, "store": store,
                 "ramp_per_s": ramp, "window_s": window, "heartbeat_interval_s": 1.0,
                 "loadavg_start": round(os.getloadavg()[0], 2)}
    try:
        cluster.start(wait=30)
        sms = psutil.Process(cluster.sms.pid)
        with Client(cluster.sms_addr, timeout=30) as c:
            c.deploy(P.FunctionSpec(name="scale-add", runtime="wasm", handler="add",
                                    artifact=(REPO / "examples" / "add.wat").read_bytes()))
            c.invoke("scale-add", args=[1, 1])
            # baseline: real executions with no simulated node
            cpu0, t0 = _cpu_time(sms), time.perf_counter()
            load = ExecLoad(cluster.sms_addr, rate).start()
            time.sleep(baseline)
            base = load.stop().summary()
            out["baseline_exec"] = base
            base_cpu = (_cpu_time(sms) - cpu0) / (time.perf_counter() - t0)
            out["sms_cpu_pct_base"] = round(100 * base_cpu, 1)  # same real load, no sim node
            out["sms_rss_mb_base"] = round(sms.memory_info().rss / 2**20, 1)

            # simulated nodes: register (ramped), then heartbeat every second
            t_reg = time.perf_counter()
            split = [nodes // procs + (1 if i < nodes % procs else 0) for i in range(procs)]
            for i, n in enumerate(split):
                sims.append(SimProcess(cluster.sms_addr, n, f"sim{i}", ramp / procs))
            want = nodes + spearlets
            reg_deadline = t_reg + (register_timeout or (nodes / ramp + 60))
            ready = 0
            while True:
                for s in sims:
                    s.check()
                try:
                    ready = c.stats(timeout=5).nodes_ready
                except errors.DeadlineExceeded:
                    pass
                if ready >= want:
                    break
                if time.perf_counter() > reg_deadline:
                    raise RuntimeError(f"only {ready - spearlets} of {nodes} simulated nodes "
                                       f"registered after {time.perf_counter() - t_reg:.0f}s")
                time.sleep(0.2)
            out["register_all_s"] = round(time.perf_counter() - t_reg, 2)
            progress(f"  {nodes} nodes registered in {out['register_all_s']}s")
            time.sleep(settle)

            # the window: heartbeats from every node while real work runs
            snaps0 = [s.snapshot() for s in sims]
            cpu0, t0 = _cpu_time(sms), time.perf_counter()
            rss0 = sms.memory_info().rss
            load = ExecLoad(cluster.sms_addr, rate).start()
            min_ready = want
            stats_lat = []
            end = t0 + window
            while time.perf_counter() < end:
                ts = time.perf_counter()
                try:
                    min_ready = min(min_ready, c.stats(timeout=5).nodes_ready)
                    stats_lat.append(time.perf_counter() - ts)
                except errors.DeadlineExceeded:
                    min_ready = 0
                time.sleep(max(0.0, min(1.0, end - time.perf_counter())))
            real = load.stop().summary()
            wall = time.perf_counter() - t0
            cpu = _cpu_time(sms) - cpu0
            snaps1 = [s.snapshot() for s in sims]
            rss1 = sms.memory_info().rss
            sim_cpu = sum(_cpu_time(psutil.Process(s.proc.pid)) for s in sims)

            h0, h1 = _hist(snaps0), _hist(snaps1)
            dh = [b - a for a, b in zip(h0, h1)]
            acks = _sum(snaps1, "acks") - _sum(snaps0, "acks")
            sent = _sum(snaps1, "hb_sent") - _sum(snaps0, "hb_sent")
            span = (max(s.get("t", 0) for s in snaps1) - min(s.get("t", 0) for s in snaps0)) or wall
            out.update({
                "sms_cpu_pct": round(100 * cpu / wall, 1),
                "sms_rss_mb": round(rss1 / 2**20, 1),
                "sms_rss_growth_mb_in_window": round((rss1 - rss0) / 2**20, 1),
                # what the heartbeats add, over the baseline with the same real load
                "sms_cpu_us_per_heartbeat": round(1e6 * max(0.0, cpu - base_cpu * wall) / acks, 1)
                if acks else None,
                "sms_rss_kb_per_node": round((rss1 / 1024 - out["sms_rss_mb_base"] * 1024) / nodes, 1),
                "heartbeats_sent_per_s": round(sent / span),
                "heartbeats_answered_per_s": round(acks / span),
                "heartbeat_rtt_p50_ms": _ms(percentile(dh, 0.5)),
                "heartbeat_rtt_p99_ms": _ms(percentile(dh, 0.99)),
                "acks_missing": _sum(snaps1, "ack_missing") - _sum(snaps0, "ack_missing"),
                "unhealthy_seen": want - min_ready,
                "unknown_acks": _sum(snaps1, "unknown_acks"),
                "dispatches_to_sims": _sum(snaps1, "dispatches"),
                "stats_rtt_p50_ms": _ms(_pct(stats_lat, 0.5)),
                "exec": real,
                "sim_cpu_s_total": round(sim_cpu, 1),
            })
            # can a client still list every node?
            ts = time.perf_counter()
            try:
                listed = len(c.nodes(timeout=15))
                out["list_nodes"] = {"ok": True, "nodes": listed,
                                     "ms": round((time.perf_counter() - ts) * 1000, 1)}
            except errors.SpearError as exc:
                out["list_nodes"] = {"ok": False, "error": f"{exc.code}: {exc.message}"}
        out["loadavg_end"] = round(os.getloadavg()[0], 2)  # the machine is shared: context
        if restart:
            out["restart"] = _restart(cluster, want, restart_timeout, progress)
        return out
    finally:
        for s in sims:
            s.stop()
        cluster.stop()
        if own_tmp is not None:
            own_tmp.cleanup()


def _restart(cluster: Cluster, want: int, timeout: float, progress) -> dict:
    """SIGKILL the SMS under full load, start it again, time until every node is ready."""
    import signal

    os.kill(cluster.sms.pid, signal.SIGKILL)
    cluster.sms.wait(10)
    time.sleep(1.0)
    t0 = time.perf_counter()
    cluster.start_sms()
    sms = psutil.Process(cluster.sms.pid)
    res: dict = {"all_ready_s": None, "max_rss_mb": 0.0, "stable": False}
    ready, stats_fail = 0, 0
    with Client(cluster.sms_addr, timeout=5) as c:
        while time.perf_counter() - t0 < timeout:
            cluster._check_alive()
            res["max_rss_mb"] = max(res["max_rss_mb"], round(sms.memory_info().rss / 2**20, 1))
            try:
                ready = c.stats().nodes_ready
            except errors.DeadlineExceeded:
                stats_fail += 1
                continue
            if ready >= want and res["all_ready_s"] is None:
                res["all_ready_s"] = round(time.perf_counter() - t0, 1)
                progress(f"  after an SMS restart: all {want} nodes ready in {res['all_ready_s']}s")
                # and they stay ready
                hold_end = time.perf_counter() + 15
                low = want
                while time.perf_counter() < hold_end:
                    try:
                        low = min(low, c.stats().nodes_ready)
                    except errors.DeadlineExceeded:
                        low = 0
                    time.sleep(1)
                res["stable"] = low >= want
                res["min_ready_after"] = low
                break
            time.sleep(0.5)
    res["last_ready"] = ready
    res["stats_timeouts"] = stats_fail
    res["sms_cpu_s"] = round(_cpu_time(sms), 1)
    if res["all_ready_s"] is None:
        progress(f"  after an SMS restart: only {ready} of {want} ready after {timeout:.0f}s")
    return res


def print_table(rows: list[dict]) -> None:
    cols = [("nodes", "nodes"), ("register_all_s", "register s"),
            ("sms_cpu_pct_base", "SMS CPU% base"), ("sms_cpu_pct", "SMS CPU%"),
            ("sms_rss_mb", "SMS RSS MB"), ("sms_rss_kb_per_node", "KB/node"),
            ("sms_cpu_us_per_heartbeat", "CPU us/hb"),
            ("heartbeats_answered_per_s", "hb/s"), ("heartbeat_rtt_p50_ms", "hb p50 ms"),
            ("heartbeat_rtt_p99_ms", "hb p99 ms"), ("unhealthy_seen", "unhealthy"),
            ("exec_p50", "exec p50 ms"), ("exec_p99", "exec p99 ms"), ("exec_base", "base p50 ms"),
            ("exec_failed", "exec failed"), ("list_nodes", "ListNodes")]
    table = []
    for r in rows:
        r = dict(r)
        r["exec_p50"] = r["exec"]["p50_ms"]
        r["exec_p99"] = r["exec"]["p99_ms"]
        r["exec_base"] = r["baseline_exec"]["p50_ms"]
        r["exec_failed"] = f"{r['exec']['failed']}/{r['exec']['executions']}"
        ln = r["list_nodes"]
        r["list_nodes"] = f"{ln['ms']:.0f} ms" if ln["ok"] else "FAILS"
        table.append([str(r.get(k)) for k, _ in cols])
    heads = [h for _, h in cols]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(heads)]
    print("  ".join(h.rjust(w) for h, w in zip(heads, widths)))
    for t in table:
        print("  ".join(v.rjust(w) for v, w in zip(t, widths)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="100,1000,10000", help="comma-separated node counts")
    ap.add_argument("--window", type=float, default=15.0, help="seconds measured per count")
    ap.add_argument("--spearlets", type=int, default=2, help="real Spearlets (default 2)")
    ap.add_argument("--per-proc", type=int, default=2500, help="simulated nodes per process")
    ap.add_argument("--ramp", type=float, default=200.0, help="registrations per second, in all")
    ap.add_argument("--store", default="leveldb", choices=["leveldb", "memory"],
                    help="SMS state backend (default leveldb, the daemon default)")
    ap.add_argument("--restart", action="store_true",
                    help="then SIGKILL the SMS under full load and time the recovery")
    ap.add_argument("--rate", type=float, default=50.0, help="real executions per second")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    rows = []
    cores = psutil.cpu_count()
    print(f"bench.scale: {cores} cores, SMS heartbeat 1 s / timeout 5 s, store {args.store}, "
          f"registrations ramped at {args.ramp:g}/s, {args.spearlets} real Spearlet(s), "
          f"{args.rate:g} real executions/s", flush=True)
    for n in [int(x) for x in args.nodes.split(",") if x.strip()]:
        print(f"- {n} simulated nodes ...", flush=True)
        r = run_step(n, window=args.window, spearlets=args.spearlets, per_proc=args.per_proc,
                     ramp=args.ramp, rate=args.rate, store=args.store, restart=args.restart,
                     progress=lambda m: print(m, flush=True))
        rows.append(r)
        print("  " + json.dumps({k: v for k, v in r.items() if k not in ("exec", "baseline_exec")}),
              flush=True)
    print()
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": cores, "rows": rows}, indent=2))
        print(f"\nwritten to {args.json}")
    bad = [r["nodes"] for r in rows if r["unhealthy_seen"] or r["dispatches_to_sims"]
           or r["exec"]["failed"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
