"""Placement simulation: the REAL SMS core (:class:`spear.sms.core.SMSCore`)
driven by a discrete-event loop with simulated time and simulated nodes.

The core gets what the daemon would give it: node registrations, function
deployments, async ``Invoke`` messages at the trace's (load-scaled) arrival
times, the nodes' ``Result`` messages at simulated finish times, ``Upkeep``
once a simulated second. Its ``Dispatch`` instructions are the decisions
measured. Store writes are acknowledged at once (nothing is kept: the run
is in memory). Every live node sends a ``Heartbeat`` every
``heartbeat_s`` with its load average (as Linux computes ``load1``: a
one-minute exponential average of the runnable tasks, here its executions
plus its background tenant's) and the executions it runs; a failed node
stops, and is reported gone (``Deregister``) ``detect_s`` after it fails;
the SMS then retries its executions elsewhere.

A simulated node runs whatever it is sent. Node types differ in size and
in what they are slow at, and functions in what they are bound by: each
function is memory-bound with probability :attr:`Setup.memory_bound` (a
draw seeded by the run's seed and the function's name), else CPU-bound.
CPU-bound work runs 1.6x slower on the big 8-core boxes (cheap ones, slow
per core: :data:`SLOWNESS`); memory-bound work runs 1.6x slower on the
medium boxes (slow memory: :data:`MEMORY_SLOWNESS`) and at reference speed
on the big ones (plenty of memory bandwidth per core). Some nodes share
their cores with a background tenant (a batch job of another team) whose
use changes every few minutes. An execution's run time is the call's
reference run time, times its node type's slowness for its function's
kind, times the processor sharing it meets when it starts:
``max(1, (executions running there + tenant's cores) / cores)`` (fixed at
its start: a simplification of processor sharing). A cold start when the
node holds no idle instance of the function (instances stay idle for
``keep_alive``), and the execution fails for memory when its peak passes
its function's request (the hard limit) or when the peaks of what runs
there would pass the node's memory.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import random
from dataclasses import dataclass, field

from spear import protocol as P
from spear.config import SMSConfig
from spear.protocol import Capacity, NodeInfo, Usage
from spear.sms import executions
from spear.sms.core import SMSCore
from spear.sms.events import Commit, CommitSoon, Load, Loaded, Persist, Persisted, Received, Send, Upkeep

from . import jobs
from .jobs import Work

MiB = 1 << 20
#: node sizes (cores, memory GiB), used in turn; their names label the nodes (``size``)
SIZES = ((2, 4), (4, 8), (8, 24))
SIZE_NAMES = ("small", "medium", "large")
#: run time per core of each size against the reference for CPU-bound work
#: (small and medium nodes are the reference; the large ones are cheap boxes,
#: 1.6x slower per core)
SLOWNESS = (1.0, 1.0, 1.6)
#: the same for memory-bound work (the medium boxes have slow memory)
MEMORY_SLOWNESS = (1.0, 1.6, 1.0)
#: the probability that a function is memory-bound
MEMORY_BOUND = 0.5
#: a background tenant uses this fraction of its node's cores (uniform), for
#: a phase of this many seconds (uniform), then draws again
TENANT_USE = (0.0, 0.9)
TENANT_PHASE_S = (60.0, 240.0)
#: the time constant of Linux's one-minute load average
LOAD_TAU_S = 60.0
CLIENT = b"client"
_ZEROS = memoryview(bytes(jobs.MAX_INPUT))  # the simulated calls' inputs (their size matters)


@dataclass(frozen=True)
class Setup:
    """The simulated cluster and its failures."""

    nodes: int = 20
    cold_s: float = 0.5
    keep_alive: float = 60.0
    #: nodes that fail during a run (at fixed fractions of the span)
    failures: int = 2
    detect_s: float = 5.0
    seed: int = 1
    #: the fraction of nodes (drawn with the seed) that have a background tenant
    tenants: float = 1 / 3
    heartbeat_s: float = 2.0
    #: the probability that a function is memory-bound (0: every function CPU-bound)
    memory_bound: float = MEMORY_BOUND

    def memory_bound_functions(self, functions) -> set[str]:
        """Which of ``functions`` are memory-bound (seeded per name: the same
        function is of the same kind whatever else the trace holds)."""
        return {f for f in functions
                if random.Random(f"{self.seed}:{f}").random() < self.memory_bound}

    def slowness(self, i: int, memory_share: float) -> float:
        """Node ``i``'s mean slowness on work of which ``memory_share`` (of its
        reference run time) is memory-bound."""
        k = i % len(SIZES)
        return (1.0 - memory_share) * SLOWNESS[k] + memory_share * MEMORY_SLOWNESS[k]

    def capacity(self) -> list[tuple[int, int]]:
        """(cores, memory MiB) of each node."""
        return [(SIZES[i % len(SIZES)][0], SIZES[i % len(SIZES)][1] * 1024)
                for i in range(self.nodes)]

    def tenanted(self) -> set[int]:
        """The nodes (by index) that have a background tenant."""
        rng = random.Random(self.seed * 7919 + 1)
        return set(rng.sample(range(self.nodes), round(self.tenants * self.nodes)))

    def reference_cores(self, memory_share: float = 0.0) -> float:
        """The cluster's capacity in reference cores: each node's cores, less its
        tenant's mean use, over its mean slowness on work of which ``memory_share``
        is memory-bound (what ``--load`` is a fraction of)."""
        mean = sum(TENANT_USE) / 2
        tenanted = self.tenanted()
        return sum((c - (mean * c if i in tenanted else 0.0)) / self.slowness(i, memory_share)
                   for i, (c, _) in enumerate(self.capacity()))


@dataclass
class Outcome:
    """What one run measured (times in simulated seconds)."""

    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_memory: int = 0
    cold_starts: int = 0
    retried: int = 0
    latency: list[float] = field(default_factory=list)
    queue_delay: list[float] = field(default_factory=list)
    busy_core_s: float = 0.0
    used_mb_s: float = 0.0
    capacity_core_s: float = 0.0
    capacity_mb_s: float = 0.0
    makespan: float = 0.0


class _Node:
    """A simulated Spearlet: what runs there and its idle instances."""

    def __init__(self, node_id: str, cores: int, mem_mb: int,
                 slowness: tuple[float, float], mean_slowness: float) -> None:
        self.id = node_id
        self.cores = cores
        self.mem_mb = mem_mb
        self.slowness = slowness  # (CPU-bound, memory-bound) work
        self.used_mb = 0.0
        # eid -> (msg, start, peak, how many times its reference run it takes)
        self.running: dict[str, tuple[P.Dispatch, float, float, float]] = {}
        self.open: set[str] = set()  # dispatched here, result not sent yet
        self.idle: dict[str, list[float]] = {}  # function -> idle-since times
        self.tenant = 0.0  # cores the background tenant uses now
        self.ref_cores = cores / mean_slowness  # capacity in reference cores (less a tenant's mean)
        self.load1 = 0.0
        self.load_at = 0.0
        self.alive = True
        self.born = 0.0
        self.died = math.inf

    def runnable(self) -> float:
        return len(self.running) + self.tenant

    def update_load(self, now: float) -> None:
        """Linux's load1: an exponential average of the runnable tasks."""
        e = math.exp(-(now - self.load_at) / LOAD_TAU_S)
        self.load1 = self.load1 * e + self.runnable() * (1.0 - e)
        self.load_at = now


@contextlib.contextmanager
def _seeded_ids(seed: int):
    """Execution ids from a seeded generator for the run, so the core's order
    over them (e.g. retrying a lost node's work) is the same on every run
    (with ``PYTHONHASHSEED`` fixed, as sets of ids are iterated)."""
    rng = random.Random(seed)

    def new_id() -> str:
        h = f"{rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-8{h[17:20]}-{h[20:]}"

    real = executions.new_id
    executions.new_id = new_id
    try:
        yield
    finally:
        executions.new_id = real


def scale(work: Work, load: float, cores: float) -> float:
    """The factor on arrival times that makes the offered work ``load`` x ``cores``
    (reference cores: see :meth:`Setup.reference_cores`)."""
    offered = sum(j.run for j in work.jobs) / work.span  # core-seconds per second
    return offered / (load * cores)


class PlacementSim:
    """One run: ``work`` at ``load`` on ``setup`` under SMS config ``sms`` (the policy)."""

    def __init__(self, work: Work, load: float, setup: Setup, sms: dict | None = None) -> None:
        self.work = work
        self.setup = setup
        cfg = SMSConfig(max_executions=10_000_000, cache_executions=10_000_000,
                        queue_timeout=3600.0, max_queue=10_000_000, **(sms or {}))
        self.core = SMSCore(cfg, now=0.0)
        self.memory_bound = setup.memory_bound_functions(work.request_mb)
        total = sum(j.run for j in work.jobs)
        share = (sum(j.run for j in work.jobs if j.func in self.memory_bound) / total
                 if total > 0 else 0.0)
        self.nodes = {f"n{i:02d}": _Node(f"n{i:02d}", c, m, (SLOWNESS[i % len(SIZES)],
                                         MEMORY_SLOWNESS[i % len(SIZES)]),
                                         setup.slowness(i, share))
                      for i, (c, m) in enumerate(setup.capacity())}
        self.by_ident = {n.encode(): n for n in self.nodes}
        self.factor = scale(work, load, setup.reference_cores(share))
        self.heap: list = []
        self.seq = 0
        self.rid = 0
        self.job_of_rid: dict[int, object] = {}
        self.job_of: dict[str, object] = {}
        self.first_dispatch: dict[str, float] = {}
        self.out = Outcome()
        self.now = 0.0
        self.work_left = 0  # events of the trace still to come (not the periodic ones)
        self.last_work = 0.0
        self.hb = 0
        self.tenanted = [self.nodes[f"n{i:02d}"] for i in sorted(setup.tenanted())]
        mean = sum(TENANT_USE) / 2
        for node in self.tenanted:
            node.ref_cores *= 1.0 - mean

    # ------------------------------------------------------------ the loop

    #: events that repeat while there is work (they do not keep a run going)
    PERIODIC = frozenset(("upkeep", "heartbeat", "tenant"))

    def _at(self, t: float, kind: str, arg=None) -> None:
        if kind not in self.PERIODIC:
            self.work_left += 1
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, arg))

    def _feed(self, event) -> None:
        """One event and everything it leads to, as the daemon carries it out."""
        pending = [event]
        later = []
        while pending or later:
            if not pending:
                pending.append(later.pop(0))
            for ins in self.core.handle(pending.pop(0), self.now):
                if type(ins) is Send:
                    self._sent(ins)
                elif type(ins) is Persist:
                    pending.append(Persisted(ins.token))
                elif type(ins) is Load:
                    pending.append(Loaded(ins.token, [None] * len(ins.keys)))
                elif type(ins) is CommitSoon:
                    later.append(Commit())

    def _msg(self, msg, ident: bytes = CLIENT, payload=None) -> None:
        self._feed(Received(ident, "", "", msg, payload))

    def run(self) -> Outcome:
        """Replay the whole trace; the figures."""
        with _seeded_ids(self.setup.seed):
            return self._replay()

    def _replay(self) -> Outcome:
        self._start()
        end = self.work.span * self.factor
        for job in self.work.jobs:
            self._at(job.t * self.factor, "arrive", job)
        rng = random.Random(self.setup.seed)
        victims = rng.sample(sorted(self.nodes), min(self.setup.failures, len(self.nodes) - 1))
        for k, nid in enumerate(victims):
            self._at(end * (k + 1) / (len(victims) + 1), "fail", nid)
        self._at(1.0, "upkeep")
        self._at(self.setup.heartbeat_s, "heartbeat")
        self.tenant_rng = random.Random(self.setup.seed * 104729 + 3)
        for node in self.tenanted:
            self._tenant(node)
        while self.heap:
            t, _, kind, arg = heapq.heappop(self.heap)
            self.now = t
            if kind not in self.PERIODIC:
                self.work_left -= 1
                self.last_work = t
            if kind == "upkeep":
                self._feed(Upkeep())
                if self._busy():
                    self._at(t + 1.0, "upkeep")
            else:
                getattr(self, "_" + kind)(arg)
        return self._finish()

    def _busy(self) -> bool:
        return self.work_left > 0 or self.core.tasks.queued > 0

    def _heartbeat(self, _=None) -> None:
        """Every live node reports its load average and what it runs."""
        for node in self.nodes.values():
            if node.alive:
                node.update_load(self.now)
                self.hb += 1
                self._msg(P.Heartbeat(id=self.hb, node_id=node.id, usage=Usage(
                    load1=node.load1, running=len(node.running)),
                    running_ids=sorted(node.open)), node.id.encode())
        if self._busy():
            self._at(self.now + self.setup.heartbeat_s, "heartbeat")

    def _tenant(self, node: _Node) -> None:
        """``node``'s background tenant starts a new phase."""
        node.update_load(self.now)
        node.tenant = node.cores * self.tenant_rng.uniform(*TENANT_USE)
        if self._busy() or self.now == 0.0:
            self._at(self.now + self.tenant_rng.uniform(*TENANT_PHASE_S), "tenant", node)

    def _start(self) -> None:
        for node in self.nodes.values():
            size = SIZE_NAMES[int(node.id[1:]) % len(SIZES)]
            info = NodeInfo(node_id=node.id, name=node.id, runtimes=["process"],
                            labels={"size": size},
                            capacity=Capacity(cores=float(node.cores), memory=node.mem_mb * MiB))
            self._msg(P.Register(id=self._rid(), node=info, proof="p"), node.id.encode())
        for name, req in sorted(self.work.request_mb.items()):
            self._msg(P.DeployFunction(id=self._rid(), spec=P.FunctionSpec(
                name=name, runtime="process", command=["true"], retries=2,
                limits=P.Limits(memory_mb=req, cpus=1.0))))

    def _rid(self) -> int:
        self.rid += 1
        return self.rid

    # ------------------------------------------------------------ events

    def _arrive(self, job) -> None:
        rid = self._rid()
        self.job_of_rid[rid] = job
        self.out.submitted += 1
        self._msg(P.Invoke(id=rid, function=job.func, mode="async"),
                  payload=_ZEROS[:job.size] if job.size else None)

    def _sent(self, s: Send) -> None:
        msg = s.msg
        if type(msg) is P.Accepted:
            job = self.job_of_rid.pop(msg.id, None)
            if job is not None:
                self.job_of[msg.execution_id] = job
        elif type(msg) is P.Dispatch:
            self._run(self.nodes[self.by_ident[s.ident]], msg)

    def _run(self, node: _Node, msg: P.Dispatch) -> None:
        """``node`` starts ``msg`` now (a dead node starts nothing: it never answers)."""
        if not node.alive:
            return
        job = self.job_of[msg.execution_id]
        self.first_dispatch.setdefault(msg.execution_id, self.now)
        idle = node.idle.get(msg.function)
        while idle and self.now - idle[-1] > self.setup.keep_alive:
            idle.pop(0)  # expired (oldest first)
        cold = not idle
        if cold:
            self.out.cold_starts += 1
        else:
            idle.pop()
        node.open.add(msg.execution_id)
        if job.peak_mb > self.work.request_mb[job.func] or node.used_mb + job.peak_mb > node.mem_mb:
            self._at(self.now + 0.01, "result", (node.id, msg, "memory", cold, 0.0))
            return
        start = self.now + (self.setup.cold_s if cold else 0.0)
        node.update_load(self.now)
        # its type's speed for its kind of work, and the cores it shares with the
        # others there when it starts
        slow = node.slowness[msg.function in self.memory_bound] * max(1.0, (len(node.running) + 1 + node.tenant) / node.cores)
        node.used_mb += job.peak_mb
        node.running[msg.execution_id] = (msg, start, job.peak_mb, slow)
        self._at(start + job.run * slow, "result",
                 (node.id, msg, "succeeded", cold, job.run * slow))

    def _result(self, arg) -> None:
        nid, msg, status, cold, run = arg
        node = self.nodes[nid]
        if not node.alive:
            return
        job = self.job_of[msg.execution_id]
        peak = job.peak_mb
        node.open.discard(msg.execution_id)
        if status == "succeeded":
            node.update_load(self.now)
            _, _, peak, _ = node.running.pop(msg.execution_id)
            node.used_mb -= peak
            node.idle.setdefault(msg.function, []).append(self.now)
            self.out.busy_core_s += job.run  # the work done, in reference core-seconds
            self.out.used_mb_s += run * peak
            err = None
        else:
            self.out.failed_memory += 1
            err = P.ErrorInfo(code="RESOURCE_EXHAUSTED", message="out of memory")
        info = P.ExecutionInfo(
            execution_id=msg.execution_id, function=msg.function, status=(
                "succeeded" if status == "succeeded" else "failed"), node_id=nid, error=err,
            timings=P.Timings(cold_start=self.setup.cold_s if cold else 0.0, run=run),
            usage=P.ExecUsage(cpu_time=run, peak_memory=int(peak * MiB)), cold=cold)
        self._msg(P.Result(id=msg.id, execution=info), nid.encode())

    def _fail(self, nid: str) -> None:
        node = self.nodes[nid]
        node.alive = False
        node.died = self.now
        for msg, start, peak, slow in node.running.values():  # work done there so far is lost
            self.out.busy_core_s += max(0.0, self.now - start) / slow
            self.out.used_mb_s += max(0.0, self.now - start) * peak
        node.running.clear()
        node.open.clear()
        self._at(self.now + self.setup.detect_s, "gone", nid)

    def _gone(self, nid: str) -> None:
        self._msg(P.Deregister(id=self._rid(), node_id=nid), nid.encode())

    # ------------------------------------------------------------ figures

    def _finish(self) -> Outcome:
        out = self.out
        out.makespan = self.last_work
        for eid, job in self.job_of.items():
            ex = self.core.tasks.execs.get(eid)
            status = ex.info.status if ex is not None else "lost"
            if status == "succeeded":
                out.succeeded += 1
                out.latency.append(ex.info.finished_at - job.t * self.factor)
                out.queue_delay.append(self.first_dispatch[eid] - job.t * self.factor)
            else:
                out.failed += 1
        out.failed += len(self.job_of_rid)  # refused at submission
        out.retried = self.core.tasks.counts.get("retried", 0)
        for node in self.nodes.values():
            alive = min(node.died, out.makespan) - node.born
            out.capacity_core_s += node.ref_cores * alive
            out.capacity_mb_s += node.mem_mb * alive
        return out


#: placement policies: the ``[sms]`` settings each runs the core with ("learned":
#: shortest expected finish on the learned cost models)
POLICIES: dict[str, dict] = {"baseline": {}, "learned": {"placement": "finish"},
                             "finish": {"placement": "finish"}, "pack": {"placement": "pack"}}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def row(trace: str, policy: str, load: float, setup: Setup, out: Outcome) -> dict:
    """The JSON row of one (trace, policy, load) run."""
    return {
        "trace": trace, "policy": policy, "load": load, "nodes": setup.nodes,
        "seed": setup.seed, "submitted": out.submitted, "succeeded": out.succeeded,
        "failed": out.failed, "failed_memory": out.failed_memory,
        "cold_starts": out.cold_starts, "retried": out.retried,
        "p50_s": round(_pct(out.latency, 0.5), 4), "p99_s": round(_pct(out.latency, 0.99), 4),
        "queue_p50_s": round(_pct(out.queue_delay, 0.5), 4),
        "queue_p99_s": round(_pct(out.queue_delay, 0.99), 4),
        "utilization": round(out.busy_core_s / out.capacity_core_s, 4) if out.capacity_core_s else 0.0,
        "mem_utilization": round(out.used_mb_s / out.capacity_mb_s, 4) if out.capacity_mb_s else 0.0,
        "makespan_s": round(out.makespan, 2),
    }


def simulate(work: Work, policy: str, load: float, setup: Setup) -> dict:
    """Run one (trace, policy, load) and return its row."""
    return row(work.name, policy, load, setup,
               PlacementSim(work, load, setup, POLICIES[policy]).run())
