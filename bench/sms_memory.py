"""Memory the SMS holds per retained execution record.

Drives an :class:`spear.sms.core.SMSCore` with events over a real LevelDB
store in a temporary directory, carrying out its store requests as the
daemon does: one node registers, a function is deployed, and N no-op
executions (each with a small input and output, like the fault and soak
runs) go the whole message path - an ``Invoke`` from a client, the
``Dispatch`` sent to the node, a ``Result`` received from the node. It
prints the RSS growth per execution, with the default retention settings
(finished executions beyond ``cache_executions`` are an index entry in
memory and a record on disk).

    python -m bench.sms_memory [N]        # default N = 100000
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from typing import Any

import psutil

from spear import errors, protocol as P
from spear.config import SMSConfig
from spear.sms import recovery
from spear.sms.core import SMSCore
from spear.sms.events import Commit, CommitSoon, Load, Loaded, Persist, Persisted, Received, Send, Upkeep
from spear.store import open_store

CLIENT = b"client"
NODE = b"n1"
#: how many executions finish between two upkeep passes (they write the batched records)
UPKEEP_EVERY = 500


class Driver:
    """Carries out an SMSCore's instructions on ``store`` as the daemon's ``feed`` does:
    a ``Persist`` or ``Load`` at once, its outcome fed back before anything else;
    a ``Commit`` after the events already in hand. Sends are collected, not sent."""

    def __init__(self, core: SMSCore, store: Any) -> None:
        self.core = core
        self.store = store

    def run(self, event: Any) -> list[Send]:
        """Feed ``event`` and everything it leads to; the messages the core sent."""
        sent: list[Send] = []
        pending = [event]
        later: list = []
        while pending or later:
            if not pending:
                pending.append(later.pop(0))
            for ins in self.core.handle(pending.pop(0), time.time()):
                if type(ins) is Send:
                    sent.append(ins)
                elif type(ins) is Persist:
                    pending.append(Persisted(ins.token, self._write(ins)))
                elif type(ins) is Load:
                    pending.append(Loaded(ins.token, [self.store.get(k) for k in ins.keys]))
                elif type(ins) is CommitSoon:
                    later.append(Commit())
        return sent

    def _write(self, ins: Persist) -> str:
        try:
            self.store.write_batch(ins.puts, ins.deletes, sync=ins.sync)
        except errors.SpearError as exc:
            return exc.message
        return ""

    def send(self, msg: Any, ident: bytes = CLIENT, payload: bytes | None = None) -> list[Send]:
        return self.run(Received(ident, "", "", msg, payload))


def _reply(sent: list[Send], kind: type) -> Any:
    for s in sent:
        if isinstance(s.msg, kind):
            return s
        if isinstance(s.msg, P.ErrorReply):
            raise RuntimeError(f"the SMS refused: {s.msg.code} {s.msg.message}")
    raise RuntimeError(f"no {kind.__name__} among {[type(s.msg).__name__ for s in sent]}")


def measure(n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        store = open_store("leveldb", d + "/sms")
        core = SMSCore(SMSConfig(max_executions=max(n, 100)), recovery.read(store), now=time.time())
        drv = Driver(core, store)
        _reply(drv.send(P.Register(id=1, node=P.NodeInfo(
            node_id="n1", name="n1", runtimes=["process"],
            capacity=P.Capacity(cores=4.0, memory=1 << 30))), ident=NODE), P.Welcome)
        _reply(drv.send(P.DeployFunction(id=2, spec=P.FunctionSpec(
            name="f", runtime="process", command=["cat"]))), P.Deployed)
        proc = psutil.Process()
        gc.collect()
        r0 = proc.memory_info().rss
        for i in range(n):
            sent = drv.send(P.Invoke(id=i, function="f"), payload=b"x" * 16)
            dispatch = _reply(sent, P.Dispatch)
            assert dispatch.ident == NODE
            done = P.ExecutionInfo(execution_id=dispatch.msg.execution_id, function="f",
                                   status="succeeded")
            _reply(drv.send(P.Result(id=dispatch.msg.id, execution=done), ident=NODE,
                            payload=b"3"), P.Result)  # the client's answer
            if i % UPKEEP_EVERY == 0:
                drv.run(Upkeep())
        drv.run(Upkeep())
        gc.collect()
        r1 = proc.memory_info().rss
        tasks = core.tasks
        assert not tasks.dirty, "records left unwritten"
        store.close()
        return {"executions": n, "rss_growth_mb": (r1 - r0) / 2**20,
                "bytes_per_execution": (r1 - r0) / n,
                "in_memory_whole": len(tasks.execs), "index_entries": len(tasks.archive)}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    r = measure(n)
    print(f"{r['executions']} finished executions: RSS +{r['rss_growth_mb']:.1f} MB, "
          f"{r['bytes_per_execution']:.0f} B each ({r['in_memory_whole']} whole in memory, "
          f"{r['index_entries']} as index entries; LevelDB memtable included)")
