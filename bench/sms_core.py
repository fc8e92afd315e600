"""The SMS core's own CPU per execution: no sockets, no store, no event loop.

Drives :class:`spear.sms.core.SMSCore` as the daemon does (``handle(event,
now)``, carrying out its instructions: a write is reported done at once)
with one registered node and one wasm function: batches of ``--batch``
blocking invocations from one client, the Dispatches they lead to answered
by the node with a succeeded Result, then the 20 ms upkeep (which writes the
records). Prints the CPU time per execution; what the daemon adds on top is
the mesh (receiving, decoding, encoding, sending) and the real store::

    python bench/sms_core.py                       # the default placement (baseline)
    python bench/sms_core.py --placement finish
    python bench/sms_core.py --profile tottime     # then cProfile's top 35
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

from spear import protocol as P
from spear.config import SMSConfig
from spear.protocol import Capacity, NodeInfo
from spear.sms.core import SMSCore
from spear.sms.events import (Commit, CommitSoon, Load, Loaded, Persist, Persisted, Received,
                              Send, Upkeep)

ADD = Path(__file__).resolve().parent.parent / "examples" / "add.wat"
NODE, CLIENT = b"node-1", b"client-1"


class Driver:
    """One SMS core, one node, one function, one client."""

    def __init__(self, placement: str) -> None:
        self.core = SMSCore(SMSConfig(placement=placement), now=0.0)
        self.now = 0.0
        self.rid = 10
        self.dispatches: list[P.Dispatch] = []
        self.replies = 0
        node = NodeInfo(node_id="node-1", name="n1", runtimes=["wasm"],
                        capacity=Capacity(cores=64.0, memory=64 << 30))
        self.feed(Received(NODE, "", "", P.Register(id=1, node=node, proof="p"), None))
        spec = P.FunctionSpec(name="add", runtime="wasm", artifact=ADD.read_bytes(), handler="add")
        self.feed(Received(CLIENT, "", "", P.DeployFunction(id=2, spec=spec), None))

    def feed(self, event) -> None:
        """``event`` and everything its instructions lead to."""
        pending = [event]
        while pending:
            for ins in self.core.handle(pending.pop(0), self.now):
                kind = type(ins)
                if kind is Send:
                    if type(ins.msg) is P.Dispatch:
                        self.dispatches.append(ins.msg)
                    else:
                        self.replies += 1
                elif kind is Persist:
                    pending.append(Persisted(ins.token))
                elif kind is Load:
                    pending.append(Loaded(ins.token, [None] * len(ins.keys)))
                elif kind is CommitSoon:
                    pending.append(Commit())

    def batch(self, k: int) -> int:
        """``k`` invocations to their results, then an upkeep; the executions done."""
        for _ in range(k):
            self.rid += 1
            self.feed(Received(CLIENT, "", "", P.Invoke(id=self.rid, function="add", args=[1, 2]),
                               None))
        done, self.dispatches = self.dispatches, []
        for d in done:
            info = P.ExecutionInfo(
                execution_id=d.execution_id, function="add", status="succeeded", node_id="node-1",
                timings=P.Timings(run=2e-5, total=3e-5),
                usage=P.ExecUsage(cpu_time=2e-5, peak_memory=1 << 20))
            self.feed(Received(NODE, "", "", P.Result(id=d.id, execution=info), b"3"))
        self.now += 0.02
        self.feed(Upkeep())
        return len(done)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--placement", default="baseline", choices=["baseline", "finish", "pack"])
    ap.add_argument("--batch", type=int, default=64, help="invocations per upkeep")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--profile", metavar="SORT", help="cProfile sorted by SORT (tottime, cumtime)")
    args = ap.parse_args(argv)
    d = Driver(args.placement)
    for _ in range(20):  # warm: models past their history, caches filled
        d.batch(args.batch)
    t0 = time.process_time()  # CPU time: what other processes run meanwhile matters less
    n = sum(d.batch(args.batch) for _ in range(args.batches))
    seconds = time.process_time() - t0
    if d.replies < n:
        sys.exit(f"only {d.replies} replies for {n} executions")
    print(f"placement {args.placement}: {n} executions, {seconds / n * 1e6:.1f} us of CPU "
          "each (the SMS core alone)")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(100):
            d.batch(args.batch)
        prof.disable()
        pstats.Stats(prof).sort_stats(args.profile).print_stats(35)


if __name__ == "__main__":
    main()
