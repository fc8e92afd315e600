"""Memory the SMS holds per retained execution record.

Runs a TaskService over a real LevelDB store in a temporary directory,
finishes N no-op executions (each with a small input and output, like the
fault and soak runs) and prints the RSS growth per execution, with the
default retention settings (finished executions beyond ``cache_executions``
are an index entry in memory and a record on disk).

    python -m bench.sms_memory [N]        # default N = 100000
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time

import psutil

from spear import protocol as P
from spear.sms.scheduler import NodeTable
from spear.sms.tasks import TaskService, TaskSettings
from spear.store import open_store


class _Out:
    def to_node(self, *a):
        return True

    def to_client(self, *a):
        return True


def measure(n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        store = open_store("leveldb", d + "/sms")
        t = TaskService(store, NodeTable(), _Out(), now=time.time(),
                        settings=TaskSettings(max_executions=max(n, 100)))
        t.register_function(P.FunctionSpec(name="f", runtime="process", command=["cat"]), time.time())
        proc = psutil.Process()
        gc.collect()
        r0 = proc.memory_info().rss
        for i in range(n):
            t.submit(b"client", P.Invoke(id=i, function="f"), b"x" * 16, time.time())
            ex = t.execs[next(reversed(t.execs))]
            t._end(ex, "succeeded", time.time(), output=b"3")
            if i % 500 == 0:
                t.flush()
        t.flush()
        gc.collect()
        r1 = proc.memory_info().rss
        store.close()
        return {"executions": n, "rss_growth_mb": (r1 - r0) / 2**20,
                "bytes_per_execution": (r1 - r0) / n,
                "in_memory_whole": len(t.execs), "index_entries": len(t.archive)}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    r = measure(n)
    print(f"{r['executions']} finished executions: RSS +{r['rss_growth_mb']:.1f} MB, "
          f"{r['bytes_per_execution']:.0f} B each ({r['in_memory_whole']} whole in memory, "
          f"{r['index_entries']} as index entries; LevelDB memtable included)")
