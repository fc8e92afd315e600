"""Node simulator: thousands of light Spearlet look-alikes in one process.

Each simulated node is one ZeroMQ DEALER (routing id = node id) driven by the
same :class:`spear.mesh.endpoint.Endpoint` as the real daemons. It does what
a Spearlet does on its SMS link and nothing else:

* sends ``Register`` (no runtimes, or ``--runtime NAME`` that no function
  uses, so the scheduler never picks it for real work) and waits for
  ``Welcome``, which sets its heartbeat interval and its session token;
* sends a ``Heartbeat`` (with that session) every interval (phases spread
  evenly over the interval across the process's nodes) and reads the
  ``HeartbeatAck``; ``known=False`` (the SMS restarted, or turned the node
  unhealthy and ended its session) makes it register again;
* answers a ``Dispatch`` (never expected) with ``ErrorReply UNAVAILABLE``
  and counts it.

Run from the repository root::

    python -m bench.nodesim --sms tcp://127.0.0.1:7700 --nodes 2500 --prefix sim0

Every ``--report`` seconds it prints one JSON line with cumulative counters
and a cumulative histogram of heartbeat round trips (bucket ``b`` holds
round trips in ``[1.1**b, 1.1**(b+1))`` microseconds); :mod:`bench.scale`
diffs two lines to get rates and percentiles over a window. SIGTERM or
SIGINT stops it (``--deregister`` first deregisters every node).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import sys
import time

import zmq

from spear import protocol as P
from spear.mesh import context
from spear.mesh.endpoint import Endpoint

NB = 180  # histogram buckets: 1.1**180 us is about 28 minutes
_LOG = math.log(1.1)


def bucket(seconds: float) -> int:
    us = seconds * 1e6
    return 0 if us < 1.0 else min(NB - 1, int(math.log(us) / _LOG))


def percentile(hist: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a bucket histogram, in seconds (bucket midpoint)."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for b, n in enumerate(hist):
        seen += n
        if seen >= rank and n:
            return 1.1 ** (b + 0.5) / 1e6
    return 1.1 ** (NB - 0.5) / 1e6


class SimNode:
    __slots__ = ("sim", "node_id", "ep", "registered", "reg_sent", "hb_id", "hb_sent",
                 "interval", "seq", "session")

    def __init__(self, sim: "Simulator", node_id: str) -> None:
        self.sim = sim
        self.node_id = node_id
        self.ep = Endpoint(zmq.DEALER, self.on_frames, name=node_id, hwm=1000)
        self.ep.sock.setsockopt(zmq.ROUTING_ID, node_id.encode())
        self.ep.sock.setsockopt(zmq.RECONNECT_IVL, 200)
        self.ep.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.registered = False
        self.reg_sent = 0.0
        self.hb_id = 0
        self.hb_sent = 0.0
        self.interval = 1.0
        self.seq = 0
        self.session = 0

    def send(self, msg, payload=None) -> bool:
        ok = self.ep.send(P.encode(msg, payload))
        if not ok:
            self.sim.c["send_failed"] += 1
        return ok

    def register(self, now: float) -> None:
        self.seq += 1
        self.reg_sent = now
        self.sim.c["register_sent"] += 1
        self.send(P.Register(id=self.seq, node=self.sim.node_info(self.node_id)))

    def heartbeat(self, now: float) -> None:
        if self.hb_sent and self.hb_id:
            self.sim.c["ack_missing"] += 1  # the previous one was never answered
        self.seq += 1
        self.hb_id = self.seq
        self.hb_sent = now
        self.sim.c["hb_sent"] += 1
        self.send(P.Heartbeat(id=self.seq, node_id=self.node_id, usage=self.sim.usage,
                              session=self.session))

    def on_frames(self, frames: list) -> None:
        sim = self.sim
        try:
            msg, _ = P.decode(frames)
        except Exception:  # noqa: BLE001 - count, never stop
            sim.c["bad_frames"] += 1
            return
        now = time.perf_counter()
        t = type(msg)
        if t is P.HeartbeatAck:
            if msg.id == self.hb_id:
                sim.hist[bucket(now - self.hb_sent)] += 1
                sim.c["acks"] += 1
                self.hb_id = 0
                self.hb_sent = 0.0
            else:
                sim.c["stale_acks"] += 1
            if not msg.known:
                sim.c["unknown_acks"] += 1
                if self.registered:  # else: registering already (an ack of an older heartbeat)
                    self.registered = False
                    self.register(now)
        elif t is P.Welcome:
            # the newest Welcome holds the current session (the SMS answers in order)
            self.session = msg.session
            self.interval = msg.heartbeat_interval
            if not self.registered:
                self.registered = True
                sim.c["registered"] += 1
                sim.reg_hist[bucket(now - self.reg_sent)] += 1
                if sim.c["registered"] == len(sim.nodes) and not sim.all_registered_at:
                    sim.all_registered_at = time.time()
        elif t is P.Dispatch:
            sim.c["dispatches"] += 1
            self.send(P.ErrorReply(id=msg.id, code="UNAVAILABLE",
                                   message=f"{self.node_id} is a simulated node"))
        elif t is P.ErrorReply:
            sim.c["errors"] += 1
        else:
            sim.c["other"] += 1


class Simulator:
    """N simulated nodes sharing one event loop."""

    def __init__(self, args) -> None:
        self.args = args
        self.c: dict[str, int] = dict.fromkeys(
            ("register_sent", "registered", "hb_sent", "acks", "ack_missing", "stale_acks",
             "unknown_acks", "dispatches", "errors", "other", "bad_frames", "send_failed"), 0)
        self.hist = [0] * NB
        self.reg_hist = [0] * NB
        self.nodes: list[SimNode] = []
        self.all_registered_at = 0.0
        self.started_at = time.time()
        self.usage = P.Usage(cpu_percent=3.0, memory_used=1 << 30, memory_total=8 << 30,
                             disk_used=10 << 30, disk_total=100 << 30, load1=0.1)
        self.capacity = P.Capacity(cores=4.0, memory=8 << 30, disk=100 << 30, slots=64)
        self.runtimes = [args.runtime] if args.runtime else []

    def node_info(self, node_id: str) -> P.NodeInfo:
        # no address: simulated nodes take no direct calls (and no two live nodes share one)
        return P.NodeInfo(node_id=node_id, name=node_id, address="",
                          labels={"sim": "1"}, runtimes=self.runtimes,
                          unavailable={"wasm": "simulated", "process": "simulated"},
                          capacity=self.capacity, usage=self.usage)

    def report(self, final: bool = False) -> None:
        line = {"t": time.time(), "prefix": self.args.prefix, "nodes": len(self.nodes),
                **self.c, "all_registered_at": self.all_registered_at,
                "started_at": self.started_at, "hist": self.hist, "reg_hist": self.reg_hist,
                "final": final}
        sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    async def run(self) -> None:
        a = self.args
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for i in range(a.nodes):
            n = SimNode(self, f"{a.prefix}-{i:05d}")
            n.ep.connect(a.sms)
            n.ep.start(loop)
            self.nodes.append(n)
        reporter = asyncio.ensure_future(self._report_loop())
        ticker = asyncio.ensure_future(self._tick_loop())
        await stop.wait()
        ticker.cancel()
        reporter.cancel()
        if a.deregister:
            for n in self.nodes:
                if n.registered:
                    n.send(P.Deregister(id=n.seq + 1, node_id=n.node_id))
            await asyncio.sleep(0.5)
        self.report(final=True)
        for n in self.nodes:
            n.ep.close()

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.args.report)
            self.report()

    async def _tick_loop(self) -> None:
        """Registration ramp, then heartbeats with phases spread over the interval."""
        a = self.args
        nodes = self.nodes
        n = len(nodes)
        t0 = time.perf_counter()
        reg_done = 0
        hb_done = 0
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            # registration: at most --ramp per second, in node order
            target = n if a.ramp <= 0 else min(n, int((now - t0) * a.ramp) + 1)
            while reg_done < target:
                nodes[reg_done].register(now)
                reg_done += 1
            # heartbeats: node k's turn comes at k/n of every interval
            interval = a.interval or nodes[0].interval
            target = int((now - t0) / interval * n)
            while hb_done < target:
                node = nodes[hb_done % n]
                hb_done += 1
                if node.registered:
                    node.heartbeat(now)
                elif node.reg_sent and now - node.reg_sent > a.register_retry:
                    node.register(now)


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        raise SystemExit(f"nodesim: need {need} file descriptors, the limit is {soft}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.nodesim", description=__doc__.split("\n")[0])
    ap.add_argument("--sms", required=True, help="SMS address")
    ap.add_argument("--nodes", type=int, default=2500, help="simulated nodes in this process")
    ap.add_argument("--prefix", default=f"sim{os.getpid()}", help="node id prefix (unique per process)")
    ap.add_argument("--runtime", default="", help="runtime name to offer (default none)")
    ap.add_argument("--interval", type=float, default=0.0,
                    help="heartbeat interval (default: what the SMS's Welcome says)")
    ap.add_argument("--ramp", type=float, default=1000.0,
                    help="registrations per second (0: all at once)")
    ap.add_argument("--register-retry", type=float, default=2.0,
                    help="seconds before an unanswered Register is sent again (a Spearlet "
                         "backs off to reconnect_max, 2 s by default)")
    ap.add_argument("--report", type=float, default=1.0, help="seconds between JSON lines")
    ap.add_argument("--deregister", action="store_true", help="deregister every node on exit")
    args = ap.parse_args(argv)
    raise_fd_limit(3 * args.nodes + 256)  # a TCP socket and a mailbox per DEALER, and slack
    ctx = context()
    ctx.set(zmq.MAX_SOCKETS, args.nodes + 256)
    from spear.cli.daemons import run_async  # uvloop where available, like the daemons

    run_async(Simulator(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
