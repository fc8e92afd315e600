"""CPU per round trip of sequential calls: Spear against the bare 2-hop floor.

One call at a time (latency, not throughput), each process's CPU time over
``--n`` calls divided by the calls: on a virtual machine the wake-ups of a
sequential exchange cost more than the work, and this shows how much each
side spends::

    python bench/seq_cpu.py --functions b-add,b-noop --n 3000

Prints, for the floor's 2-hop echo and for each function direct (and
``--sms`` through the SMS), the p50 and the CPU per call of the client and
of each daemon. ``--raw`` adds, for the first function, the client sending
the same request frames over a bare socket (no client library), and a ping.
Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness.floor import Floor  # noqa: E402
from bench.harness.plan import Plan  # noqa: E402
from bench.harness.procs import CpuMeter, Progress  # noqa: E402
from bench.harness.session import Session  # noqa: E402


def _p50(ts: list[float]) -> float:
    return sorted(ts)[len(ts) // 2] * 1e3


def floor_2hop(n: int) -> None:
    f = Floor()
    try:  # started inside: its servers have sessions of their own, no Ctrl-C stops them
        f.start()
        f.latency(f.echo_addr, 300)
        with CpuMeter({"client": os.getpid(), "echo": f.pids["echo"]}) as m:
            ts = f.latency(f.echo_addr, n, warm=0)
        print(f"floor 2-hop echo:         p50 {_p50(ts):.3f} ms  {m.summary(n)}")
    finally:
        f.stop()


def spear(functions: list[str], n: int, sms: bool, raw: bool) -> None:
    from spear import protocol as P

    s = Session(Plan.make(True), ["latency"], Progress(1, False), profile=None, keep=False, data=None)
    try:  # started inside: its daemons have sessions of their own, no Ctrl-C stops them
        s.start_cluster()
        with s.client() as c:
            for name in functions:
                s.ensure(c, name, sms=True, direct=True)
                spec, data, args = s.specs[name]
                for path in ("direct", "sms") if sms else ("direct",):
                    node = s.node if path == "direct" else None
                    for _ in range(200):
                        c.invoke(name, data, args=args, node=node)
                    ts = []
                    perf = time.perf_counter
                    with CpuMeter(s.pids()) as m:
                        for _ in range(n):
                            t0 = perf()
                            c.invoke(name, data, args=args, node=node)
                            ts.append(perf() - t0)
                    print(f"{name + ' ' + path + ':':25s} p50 {_p50(ts):.3f} ms  {m.summary(n)}")
            if raw:
                name = functions[0]
                spec, data, args = s.specs[name]
                sock = c._borrow(s.node)  # a socket of the client's own pool: its routing id
                msg, payload = c._invoke_msg(name, data, args, "sync", None, "")
                for label, frames in (("same frames, bare socket", P.encode(msg, payload)),
                                      ("ping, bare socket", P.encode(P.Ping(id=msg.id)))):
                    ts = []
                    with CpuMeter(s.pids()) as m:
                        for _ in range(n):
                            t0 = time.perf_counter()
                            sock.send_multipart(frames)
                            sock.recv_multipart()
                            ts.append(time.perf_counter() - t0)
                    print(f"{label + ':':25s} p50 {_p50(ts):.3f} ms  {m.summary(n)}")
                sock.close(linger=0)
    finally:
        s.stop_cluster()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--functions", default="b-add,b-noop")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--sms", action="store_true", help="also through the SMS")
    p.add_argument("--raw", action="store_true", help="also bare-socket exchanges")
    a = p.parse_args(argv)
    floor_2hop(a.n)
    spear(a.functions.split(","), a.n, a.sms, a.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
