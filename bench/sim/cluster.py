"""The cluster model and its event loop.

Nodes have memory; a function's instances live on the node its placement
gives. A call takes an idle instance of its function (a warm start) or
starts one (a cold start: ``cold_s`` before it runs), first evicting the
least recently used idle instances of the node to make room; when the node
holds only busy instances the call waits for memory, in order.

Warm instances follow each function's warming policy, asked at every event
of the function and again when it says its answer may change (the next
check), so the loop visits only the moments that matter.

Figures: cold starts, warm memory-seconds (MB times seconds an instance
sits idle: the price of warming), node-hours (the nodes a packing autoscaler
would need for the memory in use, integrated), and waits for memory.
"""

from __future__ import annotations

import collections
import heapq
import math
from dataclasses import dataclass, field

from . import policies
from .workloads import Call, Trace

END, ARRIVE, CHECK = 0, 1, 2  # at equal times: ends free instances before arrivals take them


@dataclass(frozen=True)
class Shape:
    """The simulated cluster: ``nodes`` of ``node_mb`` each, ``cold_s`` to start an instance."""

    nodes: int = 4
    node_mb: int = 16384
    cold_s: float = 0.5


@dataclass
class Stats:
    """What one run counted."""

    calls: int = 0
    cold_starts: int = 0
    prewarms: int = 0
    evictions: int = 0
    pressure_evictions: int = 0
    warm_mb_s: float = 0.0
    node_hours: float = 0.0
    queued: int = 0
    max_wait_s: float = 0.0
    learned_functions: int = 0
    functions: int = 0


class _Instance:
    __slots__ = ("fn", "idle_since")

    def __init__(self, fn: _Function, idle_since: float | None) -> None:
        self.fn = fn
        self.idle_since = idle_since


@dataclass(eq=False)
class _Function:
    name: str
    mem_mb: int
    node: int
    policy: object
    idle: list = field(default_factory=list)  # _Instance, least recently idle first
    gen: int = 0  # the current check; older ones in the heap are stale


class Simulator:
    """One trace under one warming policy on one cluster shape."""

    def __init__(self, trace: Trace, warming: str, shape: Shape = Shape(), *,
                 keep_alive: float = policies.KEEP_ALIVE,
                 placement: policies.Placement = policies.hashed,
                 nodes: policies.NodeModel | None = None) -> None:
        self.trace, self.kind, self.shape = trace, warming, shape
        self.keep_alive = keep_alive
        # as the Spearlet: only a learned pool pre-warms (a fixed one just ages)
        self.prewarm = warming == "learned"
        self.placement = placement
        self.nodes = nodes or policies.FixedNodes()
        #: memory of each node now (a node model that adds nodes raises it)
        self.node_mb = shape.node_mb
        self.stats = Stats()
        self.fns: dict[str, _Function] = {}
        self.used = [0] * shape.nodes  # MB held (busy and idle) per node
        self.queues = [collections.deque() for _ in range(shape.nodes)]  # (call, since)
        self.heap: list = []
        self._seq = 0
        self._last = 0.0  # the time the node-hours are integrated to
        self.nodes.attach(self)

    # ------------------------------------------------------------ the loop

    def run(self) -> Stats:
        """Replay the trace up to its span; the figures."""
        for call in self.trace.calls:
            self._push(call.t, ARRIVE, call)
        horizon = self.trace.span
        while self.heap and self.heap[0][0] <= horizon:
            t, _, kind, obj = heapq.heappop(self.heap)
            if kind == ARRIVE:
                self._arrive(obj, t)
            elif kind == END:
                self._end(obj, t)
            elif obj[1] == obj[0].gen:
                self._check(obj[0], t)
        self._account(horizon)
        for fn in self.fns.values():
            for inst in fn.idle:
                self.stats.warm_mb_s += (horizon - inst.idle_since) * fn.mem_mb
            self.stats.learned_functions += bool(fn.policy.windows().learned)
        self.stats.functions = len(self.fns)
        return self.stats

    def _push(self, t: float, kind: int, obj) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (t, self._seq, kind, obj))

    def _function(self, call: Call) -> _Function:
        fn = self.fns.get(call.func)
        if fn is None:
            node = self.placement(call.func, self.shape.nodes)
            fn = self.fns[call.func] = _Function(call.func, call.mem_mb, node,
                                                 policies.warming(self.kind, self.keep_alive))
        return fn

    # ------------------------------------------------------------ events

    def _arrive(self, call: Call, t: float) -> None:
        fn = self._function(call)
        self.stats.calls += 1
        fn.policy.arrive(t)
        if not self._serve(fn, call, t):
            self.queues[fn.node].append((call, t))
            self.stats.queued += 1
        self.nodes.observe(t, sum(map(len, self.queues)))
        self._check(fn, t)

    def _serve(self, fn: _Function, call: Call, t: float) -> bool:
        """Run ``call`` on a warm instance or a new one; False: no memory now."""
        if fn.idle:
            inst = fn.idle.pop()  # the most recently idle, as the pool takes
            self.stats.warm_mb_s += (t - inst.idle_since) * fn.mem_mb
            inst.idle_since = None
            self._push(t + call.duration, END, inst)
            return True
        if not self._room(fn.node, fn.mem_mb, t):
            return False
        self.stats.cold_starts += 1
        self._push(t + self.shape.cold_s + call.duration, END, _Instance(fn, None))
        return True

    def _end(self, inst: _Instance, t: float) -> None:
        fn = inst.fn
        fn.policy.leave(t)
        inst.idle_since = t
        fn.idle.append(inst)
        self._serve_queue(fn.node, t)
        self._check(fn, t)

    def _serve_queue(self, node: int, t: float) -> None:
        """Start the calls waiting on ``node``, in order, while memory allows."""
        queue = self.queues[node]
        while queue:
            call, since = queue[0]
            if not self._serve(self.fns[call.func], call, t):
                break
            queue.popleft()
            self.stats.max_wait_s = max(self.stats.max_wait_s, t - since)

    def resize(self, node_mb: int, t: float) -> None:
        """Give each node ``node_mb`` from ``t`` on (a node model added or removed
        nodes: their memory is spread over the placement's nodes); waiting calls
        that now fit start."""
        self.node_mb = node_mb
        for node in range(self.shape.nodes):
            self._serve_queue(node, t)

    def _check(self, fn: _Function, t: float) -> None:
        """Evict and pre-warm as ``fn``'s policy says at ``t``; plan the next check."""
        ttl, keep = fn.policy.eviction(t)
        # the same sum as the next check's time below, so that check evicts (floats)
        while len(fn.idle) > keep and fn.idle[0].idle_since + ttl <= t:
            self._drop(fn, fn.idle.pop(0), t)
            self.stats.evictions += 1
        if self.prewarm and not fn.policy.busy and fn.policy.wanted(t) > len(fn.idle) \
                and self.used[fn.node] + fn.mem_mb <= self.node_mb:
            self._hold(fn.node, fn.mem_mb, t)
            fn.idle.append(_Instance(fn, t))
            self.stats.prewarms += 1
        nxt = [x for x in (fn.policy.next_change(t),) if x is not None]
        if len(fn.idle) > keep and ttl > 0:
            nxt.append(fn.idle[0].idle_since + ttl)
        if nxt:
            fn.gen += 1
            self._push(max(min(nxt), t), CHECK, (fn, fn.gen))

    # ------------------------------------------------------------ memory

    def _room(self, node: int, mb: int, t: float) -> bool:
        """Hold ``mb`` on ``node``, evicting its least recently idle instances
        if it must; False when busy instances fill it."""
        while self.used[node] + mb > self.node_mb:
            victims = [fn for fn in self.fns.values() if fn.node == node and fn.idle]
            if not victims:
                return False
            fn = min(victims, key=lambda f: f.idle[0].idle_since)
            self._drop(fn, fn.idle.pop(0), t)
            self.stats.pressure_evictions += 1
        self._hold(node, mb, t)
        return True

    def _hold(self, node: int, mb: int, t: float) -> None:
        self._account(t)
        self.used[node] += mb

    def _drop(self, fn: _Function, inst: _Instance, t: float) -> None:
        self.stats.warm_mb_s += (t - inst.idle_since) * fn.mem_mb
        self._account(t)
        self.used[fn.node] -= fn.mem_mb

    def _account(self, t: float) -> None:
        """Integrate the nodes the memory in use needs up to ``t``."""
        if t > self._last:
            need = math.ceil(sum(self.used) / self.shape.node_mb)
            self.stats.node_hours += need * (t - self._last) / 3600.0
            self._last = t
