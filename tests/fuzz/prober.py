"""A valid client that keeps using the fuzzed cluster, in a process of its own.

The fuzzer's CPU-bound Python (and the GIL) must never count against the
daemons, so the prober runs :data:`PROBER_SRC` in a subprocess: every
``period`` seconds it pings both daemons, lists the nodes, invokes ``add``
through the SMS and directly on the Spearlet, and samples both daemons' RSS.
Each operation must answer within :data:`PROBE_TIMEOUT`; what fails is
reported back as text when the fuzz closes the prober's stdin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: every probe operation must answer within this many seconds (its client timeout)
PROBE_TIMEOUT = 5.0

#: The valid client runs in its own process, so the fuzzer's CPU-bound Python
#: (and the GIL) never counts as daemon latency.
PROBER_SRC = r"""
import collections, json, select, sys, time
import psutil
from spear import Client

cfg = json.loads(sys.argv[1])
addr, real = cfg["node"], cfg["real_id"]
latency = collections.defaultdict(list)
failures = []
rss_peak = {k: 0 for k in cfg["pids"]}
rounds = 0


def op(name, fn):
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:
        failures.append(f"{time.strftime('%X')} {name}: {exc!r}")
        return None
    latency[name].append(time.perf_counter() - t0)
    return out


with Client(cfg["sms"], timeout=cfg["timeout"]) as c:
    while True:
        if select.select([sys.stdin], [], [], cfg["period"])[0]:
            break  # stdin closed: the fuzz is over
        op("ping sms", c.ping)
        op("ping node", lambda: c.ping(node=addr))
        nodes = op("nodes", c.nodes)
        if nodes is not None:
            me = [n for n in nodes if n.node_id == real]
            if not me or me[0].state != "ready":
                failures.append(f"real node not ready in nodes(): {me}")
        r = op("invoke sms", lambda: c.invoke("add", args=[1, 2], timeout=cfg["timeout"]))
        if r is not None and (not r.ok or r.output != b"3" or r.info.node_id != real):
            failures.append(f"invoke via SMS: {r.info}")
        r = op("invoke node", lambda: c.invoke("add", args=[1, 2], node=addr,
                                                timeout=cfg["timeout"]))
        if r is not None and (not r.ok or r.output != b"3"):
            failures.append(f"direct invoke: {r.info}")
        if rounds % 8 == 0:
            fns = op("functions", c.functions)
            if fns is not None and "add" not in {f.name for f in fns}:
                failures.append("add no longer listed by the SMS")
            fns = op("functions node", lambda: c.functions(node=addr))
            if fns is not None and "add" not in {f.name for f in fns}:
                failures.append("add no longer deployed on the node")
        for key, pid in cfg["pids"].items():
            try:
                rss_peak[key] = max(rss_peak[key], psutil.Process(pid).memory_info().rss)
            except psutil.Error as exc:
                failures.append(f"{key} (pid {pid}) is gone: {exc!r}")
        rounds += 1

print(json.dumps({"latency": latency, "failures": failures, "rounds": rounds,
                  "rss_peak": rss_peak}))
"""


class Prober:
    """A valid client using the cluster all along (a subprocess running PROBER_SRC)."""

    def __init__(self, cluster, real_id: str, period: float = 0.25) -> None:
        cfg = {"sms": cluster.sms_addr, "node": cluster.spearlet_addrs[0], "real_id": real_id,
               "period": period, "timeout": PROBE_TIMEOUT,
               "pids": {"sms": cluster.sms.pid, "node": cluster.spearlets[0].pid}}
        self.proc = subprocess.Popen([sys.executable, "-c", PROBER_SRC, json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=str(Path(__file__).resolve().parents[2]))
        self.latency: dict[str, list[float]] = {}
        self.failures: list[str] = []
        self.rounds = 0
        self.rss_peak = {"sms": 0, "node": 0}

    def stop(self) -> None:
        try:
            out, _ = self.proc.communicate(input=b"", timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        if self.proc.returncode != 0:
            self.failures.append(f"prober exited with {self.proc.returncode}")
            return
        r = json.loads(out)
        self.latency, self.failures = r["latency"], r["failures"]
        self.rounds, self.rss_peak = r["rounds"], r["rss_peak"]
