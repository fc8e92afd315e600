"""The decisions a simulation asks for, each behind one small interface.

* warming: :func:`warming` builds the REAL :mod:`spear.autoscale.warming`
  policy for a function ("none", "fixed", "learned"), as the Spearlet does;
* placement: which node holds a function's instances (:func:`hashed`: a
  stable hash; the place for placement policies to plug in);
* nodes: what the cluster does when calls wait for memory
  (:class:`FixedNodes`: nothing; the cluster keeps its ``Shape.nodes``;
  :class:`AutoscaledNodes`: the autoscaler's own policy,
  :mod:`spear.autoscale.policy`, fed the simulated queue, adds nodes after a
  start delay and removes idle ones, so the report's ``burst_absorb_s`` is its
  time to absorb a burst).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Protocol

from spear.autoscale import warming as W
from spear.autoscale.policy import NodeView, Observation, Policy, Settings
from spear.autoscale.providers.base import NodeType

#: the fixed keep-alive the comparison uses (the pool's idle_ttl in production)
KEEP_ALIVE = 600.0
WARMING = ("none", "fixed", "learned")

Placement = Callable[[str, int], int]


def warming(kind: str, keep_alive: float = KEEP_ALIVE) -> W.Policy:
    """A fresh per-function warming policy."""
    return W.make(kind, keep_alive)


def hashed(func: str, nodes: int) -> int:
    """The node of ``func``: a stable hash of its name."""
    return zlib.crc32(func.encode()) % nodes


class NodeModel(Protocol):
    """Attached to the simulator once, then told at each arrival how many calls
    wait for memory."""

    def attach(self, sim) -> None: ...

    def observe(self, now: float, queued: int) -> None: ...


class FixedNodes:
    """The cluster's nodes, and no more."""

    def attach(self, sim) -> None:
        """A fixed cluster needs nothing of the simulator."""

    def observe(self, now: float, queued: int) -> None:
        """A fixed cluster does not react."""


#: the memory one simulated call is taken to need when sizing a node's slots
SLOT_MB = 256


@dataclass
class _Added:
    name: str
    ready_at: float
    state: str = "starting"  # starting | ready | draining
    last_active: float = 0.0


class AutoscaledNodes:
    """The REAL autoscaler :class:`~spear.autoscale.policy.Policy` on the simulated cluster.

    Every ``tick`` seconds of trace time (at the first arrival after it) the
    policy sees the simulated queue (calls and their memory, as queued cores
    of one core per node), the cluster's own nodes (not its to drain) and the
    nodes it added. A scale up adds nodes that join ``start_s`` later; drained
    nodes go once idle, as the controller does. A node's memory is spread over
    the placement's ``bins`` (:meth:`Simulator.resize`), as a scheduler spreads
    load over every node: the model is of capacity, not of which node a call
    lands on. The cluster has ``own`` nodes to begin with, never fewer. A node counts as running while the memory in use needs it
    (nodes ranked cluster's own first, then by age) or calls wait.
    ``node_hours()``: the nodes paid for (starting and draining ones too).
    """

    def __init__(self, bins: int, node_mb: int, *, own: int, max_nodes: int, start_s: float = 30.0,
                 tick: float = 2.0, settings: Settings | None = None) -> None:
        if own < 1:
            raise ValueError("the autoscaled cluster needs a node of its own")
        self.bins, self.base, self.unit_mb = bins, own, node_mb
        self.start_s, self.tick = start_s, tick
        kind = NodeType(name="sim", provider="sim", cores=1.0, memory_mb=node_mb,
                        max_nodes=max(0, max_nodes - own))
        self.policy = Policy(settings or Settings(min_nodes=own, max_nodes=max_nodes), [kind])
        self.added: dict[str, _Added] = {}
        self.sim = None
        self.peak = own
        self._next = 0.0
        self._seq = 0
        self._node_s = 0.0
        self._last = 0.0

    def attach(self, sim) -> None:
        """Remember the simulator it resizes."""
        self.sim = sim

    def observe(self, now: float, queued: int) -> None:
        """One policy tick when one is due."""
        if now < self._next:
            return
        self._next = now + self.tick
        self._integrate(now)
        for a in self.added.values():
            if a.state == "starting" and a.ready_at <= now:
                a.state, a.last_active = "ready", now
        self._resize(now)
        for d in self.policy.tick(self._observation(now, queued)):
            self._act(d, now)

    def _observation(self, now: float, queued: int) -> Observation:
        sim = self.sim
        need = math.ceil(sum(sim.used) / self.unit_mb)
        queued_mb = sum(call.mem_mb for q in sim.queues for call, _ in q)
        slots = max(1, self.unit_mb // SLOT_MB)
        views = [NodeView(node_id=f"own-{i}", name=f"own-{i}", running=int(i < need or queued > 0),
                          slots=slots, cores=1.0) for i in range(self.base)]
        live = [a for a in self.added.values() if a.state != "starting"]
        for rank, a in enumerate(live, start=self.base):
            busy = rank < need or queued > 0
            if busy:
                a.last_active = now
            views.append(NodeView(node_id=a.name, name=a.name, node_type="sim", owned=True,
                                  state=a.state, running=int(busy), slots=slots, cores=1.0,
                                  last_active=a.last_active))
        starting = sum(1 for a in self.added.values() if a.state == "starting")
        return Observation(now=now, queued=queued, queued_cores=queued_mb / self.unit_mb,
                           nodes=tuple(views), starting={"sim": starting} if starting else {})

    def _act(self, d, now: float) -> None:
        if d.action == "scale_up":
            for _ in range(d.count):
                self._seq += 1
                name = f"auto-{self._seq}"
                self.added[name] = _Added(name, now + self.start_s)
        elif d.action in ("drain", "resume"):
            self.added[d.name].state = "draining" if d.action == "drain" else "ready"
        elif d.action == "remove":
            del self.added[d.name]
            self._resize(now)
        self.peak = max(self.peak, self.base + len(self.added))

    def _resize(self, now: float) -> None:
        live = sum(1 for a in self.added.values() if a.state != "starting")
        mb = self.unit_mb * (self.base + live) // self.bins
        if mb != self.sim.node_mb:
            self.sim.resize(mb, now)

    def _integrate(self, now: float) -> None:
        if now > self._last:
            self._node_s += (self.base + len(self.added)) * (now - self._last)
            self._last = now

    def node_hours(self, until: float) -> float:
        """The nodes paid for, integrated up to ``until``."""
        self._integrate(until)
        return self._node_s / 3600.0
