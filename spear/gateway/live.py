"""Live figures for the admin page, and the logs this gateway saw stream by.

:class:`Monitor` samples the SMS every ``interval`` seconds (three requests:
``Stats``, the newest page of executions and the nodes) and keeps the last
``window`` seconds of :class:`~spear.gateway.models.Sample` for plots, and of
each node's usage (:class:`~spear.gateway.models.NodeSample`: heartbeats
are not stored anywhere else); listeners get each new sample as it is taken. The figure arithmetic is in
:func:`make_sample`, a pure function of two readings, tested without a
cluster.

:class:`LogStore` keeps the stderr of executions streamed through this
gateway (the SMS keeps none), bounded in executions and bytes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from .. import errors, protocol as P
from .models import LiveHistory, NodeHistory, NodeSample, Sample

log = logging.getLogger("spear.gateway")

_FAILED = ("failed", "timed_out", "lost")


class Reading:
    """What one poll of the SMS returned."""

    __slots__ = ("ts", "stats", "recent")

    def __init__(self, ts: float, stats: P.StatsReply, recent: list[P.ExecutionInfo]) -> None:
        self.ts = ts
        self.stats = stats
        self.recent = recent


def _pct(sorted_values: list[float], q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def make_sample(prev: Reading | None, cur: Reading) -> Sample:
    """The figures between two readings (rates are 0 for the first one)."""
    st = cur.stats
    counts = st.counts
    done = sum(counts.get(s, 0) for s in P.TERMINAL)
    failed = sum(counts.get(s, 0) for s in _FAILED)
    rate = fail_rate = 0.0
    since = cur.ts - 60.0
    if prev is not None:
        dt = max(cur.ts - prev.ts, 1e-6)
        pc = prev.stats.counts
        # a negative difference means the SMS restarted and its counters with it
        rate = max(0, done - sum(pc.get(s, 0) for s in P.TERMINAL)) / dt
        fail_rate = max(0, failed - sum(pc.get(s, 0) for s in _FAILED)) / dt
        since = prev.ts
    finished = [i for i in cur.recent if i.status in P.TERMINAL and i.finished_at > since]
    lat = sorted((i.finished_at - i.submitted_at) * 1e3 for i in finished if i.submitted_at > 0)
    ok = [i for i in finished if i.status == "succeeded"]
    return Sample(
        ts=cur.ts,
        invocations_per_s=round(rate, 3),
        failures_per_s=round(fail_rate, 3),
        latency_p50_ms=round(_pct(lat, 0.5), 3) if lat else None,
        latency_p95_ms=round(_pct(lat, 0.95), 3) if lat else None,
        pool_hit_rate=round(sum(not i.cold for i in ok) / len(ok), 4) if ok else None,
        executions_active=st.executions_active,
        nodes_ready=st.nodes_ready,
        cores_total=st.cores_total,
        cores_reserved=st.cores_reserved,
    )


class Monitor:
    """Periodic sampler of cluster figures with a bounded history."""

    def __init__(self, client, *, interval: float = 2.0, window: float = 600.0,
                 sample_size: int = 200) -> None:
        self.client = client
        self.interval = interval
        self.sample_size = sample_size
        self.samples: collections.deque[Sample] = collections.deque(maxlen=max(2, int(window / interval)))
        #: node id -> its usage samples (nodes the SMS no longer lists are dropped)
        self.nodes: dict[str, collections.deque[NodeSample]] = {}
        self._prev: Reading | None = None
        self._listeners: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def history(self) -> LiveHistory:
        """The cluster samples held, oldest first."""
        return LiveHistory(interval=self.interval, samples=list(self.samples))

    def node_history(self, node_id: str) -> NodeHistory:
        """One node's usage samples held, oldest first (none for a node not seen yet)."""
        return NodeHistory(node_id=node_id, interval=self.interval,
                           samples=list(self.nodes.get(node_id, ())))

    def _sample_nodes(self, ts: float, nodes: list[P.NodeInfo]) -> None:
        keep = self.samples.maxlen
        seen = set()
        for n in nodes:
            u = n.usage
            q = self.nodes.get(n.node_id)
            if q is None:
                q = self.nodes[n.node_id] = collections.deque(maxlen=keep)
            q.append(NodeSample(ts=ts, state=n.state, cpu_percent=u.cpu_percent,
                                memory_used=u.memory_used,
                                memory_total=n.capacity.memory or u.memory_total,
                                load1=u.load1, running=u.running, warm=u.warm))
            seen.add(n.node_id)
        for gone in set(self.nodes) - seen:
            del self.nodes[gone]

    async def poll(self) -> Sample:
        """Take one sample now (also what the loop does every interval)."""
        stats = await self.client.stats()
        recent, _ = await self.client.executions(limit=self.sample_size)
        nodes = await self.client.nodes()
        cur = Reading(time.time(), stats, recent)
        self._sample_nodes(cur.ts, nodes)
        sample = make_sample(self._prev, cur)
        self._prev = cur
        self.samples.append(sample)
        for q in list(self._listeners):
            if q.full():
                q.get_nowait()
            q.put_nowait(sample)
        return sample

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except errors.SpearError as exc:
                log.debug("live sample failed: %s", exc)
            except Exception:  # never let a figure kill the gateway
                log.exception("live sample failed")
            await asyncio.sleep(self.interval)

    async def listen(self):
        """Every new sample, as it is taken."""
        q: asyncio.Queue = asyncio.Queue(16)
        self._listeners.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._listeners.discard(q)


class LogTail(list):
    """Log chunks of one execution, keeping only the last ``max_bytes`` (a function
    writing without end to stderr must not grow the gateway's memory)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.size = 0

    def append(self, chunk: bytes) -> None:  # type: ignore[override]
        super().append(chunk)
        self.size += len(chunk)
        while self.size > self.max_bytes and len(self) > 1:
            self.size -= len(self.pop(0))


class LogStore:
    """Captured stderr per execution id, newest ``max_executions`` kept."""

    def __init__(self, max_executions: int = 1000, max_bytes: int = 64 * 1024) -> None:
        self.max_executions = max_executions
        self.max_bytes = max_bytes
        self._logs: collections.OrderedDict[str, tuple[bytes, bool]] = collections.OrderedDict()

    def put(self, execution_id: str, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        truncated = len(data) > self.max_bytes
        if truncated:
            data = data[-self.max_bytes:]  # the end of a log says most about how it ended
        self._logs[execution_id] = (data, truncated)
        self._logs.move_to_end(execution_id)
        while len(self._logs) > self.max_executions:
            self._logs.popitem(last=False)

    def get(self, execution_id: str) -> tuple[bytes, bool] | None:
        """``(data, truncated)`` or None when nothing was captured."""
        return self._logs.get(execution_id)
