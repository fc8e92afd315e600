"""The autoscaler's decisions, as a pure function of what the SMS reports.

:class:`Policy` reads, tick by tick, an :class:`Observation` (queued demand,
the nodes with their running work and warm functions, nodes still starting)
and returns :class:`Decision` objects (``scale_up``, ``drain``, ``resume``,
``remove``). It does no I/O and never reads a clock: ``now`` is part of the
observation, so the same inputs always give the same decisions and tests
drive it with a fake clock.

Rules, in order:

* **Bounds.** Each :class:`~.providers.base.NodeType` keeps between its
  ``min_nodes`` and ``max_nodes``; all types together keep between the
  policy's ``min_nodes`` and ``max_nodes``. Below a minimum it scales up at
  once; it never starts past a maximum nor removes below a minimum.
* **Scale up** when executions wait in the SMS's queue on ``up_ticks``
  consecutive ticks (one short burst that the nodes absorb starts nothing)
  and ``up_cooldown`` has passed since the last scale up. It asks for enough
  nodes to hold the queue (by slots and by cores), less those already
  starting, cheapest type first. A node it is draining is resumed before a
  new one is started.
* **Scale down** drains one of its own nodes at a time: one that ran nothing
  for ``scale_down_idle_s`` while nothing was queued, and only once
  ``down_cooldown`` has passed since the last scale up or down (so a node
  started for a burst is not drained by the lull right after it). A node
  that holds the only warm instance of a busy function is kept until it has
  been idle for ``protect_idle_s``.
* **Remove** a draining node only once it has run nothing for ``settle_s``.

Nodes not started by the autoscaler (``owned=False``) count towards the
bounds and absorb demand, but are never drained or removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .providers.base import NodeType


@dataclass(frozen=True)
class NodeView:
    """One node as the policy needs it (built by the controller from ``ListNodes``)."""

    node_id: str
    name: str
    node_type: str = ""        # "" for nodes the autoscaler did not start
    owned: bool = False        # started by this autoscaler (it may drain and remove it)
    state: str = "ready"       # ready | unhealthy | draining | gone
    running: int = 0
    slots: int = 0             # concurrent executions it takes (0: unknown / no limit)
    cores: float = 0.0
    warm: frozenset[str] = frozenset()  # functions it ran recently (so holds warm)
    #: when it last started or ended an execution, as far as the SMS's records show
    #: (a heartbeat's ``running`` misses short calls between two heartbeats)
    last_active: float = 0.0


@dataclass(frozen=True)
class Observation:
    """What the controller saw at ``now``."""

    now: float
    queued: int = 0                 # executions waiting in the SMS for capacity
    queued_cores: float = 0.0       # the cores they ask for together
    nodes: tuple[NodeView, ...] = ()
    starting: dict[str, int] = field(default_factory=dict)  # node type -> nodes created, not yet registered
    busy: frozenset[str] = frozenset()  # functions called recently


@dataclass(frozen=True)
class Decision:
    """One action for the controller: ``scale_up`` (``node_type``, ``count``),
    ``drain``, ``resume`` or ``remove`` (``node_id``, ``name``)."""

    action: str
    node_type: str = ""
    count: int = 0
    node_id: str = ""
    name: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Settings:
    """The policy's knobs (from ``[autoscaler]``)."""

    min_nodes: int = 0
    max_nodes: int = 4
    scale_down_idle_s: float = 60.0
    up_cooldown: float = 5.0
    down_cooldown: float = 30.0
    up_ticks: int = 2
    protect_idle_s: float = 300.0
    #: a draining node is removed once it ran nothing for this long (a heartbeat's
    #: running count lags a dispatch by up to one heartbeat)
    settle_s: float = 2.0


class Policy:
    """Stateful across ticks (idle clocks, cooldowns, demand streak); pure otherwise."""

    def __init__(self, settings: Settings, types: list[NodeType]) -> None:
        if not types:
            raise ValueError("the autoscaler needs at least one node type")
        self.s = settings
        self.types = sorted(types, key=lambda t: (t.cost, t.name))
        self._idle_since: dict[str, float] = {}
        self._streak = 0
        self._last_up = -math.inf
        self._last_down = -math.inf

    # ------------------------------------------------------------ the tick

    def tick(self, obs: Observation) -> list[Decision]:
        """The decisions for this observation (empty: nothing to do)."""
        live = [n for n in obs.nodes if n.state != "gone"]
        self._track_idle(obs, live)
        out = [Decision("remove", node_id=n.node_id, name=n.name, reason="drained and idle")
               for n in live if n.owned and n.state == "draining" and n.running == 0
               and self._idle(n, obs.now) >= self.s.settle_s]
        removed = {d.node_id for d in out}
        live = [n for n in live if n.node_id not in removed]
        self._streak = self._streak + 1 if obs.queued > 0 else 0
        up = self._to_minimum(obs, live)
        if not up and self._streak >= self.s.up_ticks and obs.now - self._last_up >= self.s.up_cooldown:
            up = self._for_demand(obs, live)
        if up:
            self._last_up = obs.now
            return out + up
        if obs.queued == 0:
            out += self._scale_down(obs, live)
        return out

    def _idle(self, n: NodeView, now: float) -> float:
        """How long ``n`` has run nothing."""
        return now - max(self._idle_since.get(n.node_id, now), n.last_active)

    def _track_idle(self, obs: Observation, live: list[NodeView]) -> None:
        seen = set()
        for n in live:
            seen.add(n.node_id)
            if n.running:
                self._idle_since.pop(n.node_id, None)
            else:
                self._idle_since.setdefault(n.node_id, obs.now)
        for gone in set(self._idle_since) - seen:
            del self._idle_since[gone]

    # ------------------------------------------------------------ up

    def _counts(self, obs: Observation, live: list[NodeView]) -> dict[str, int]:
        """Nodes per type that are or will be serving (draining ones excluded)."""
        counts = {t.name: obs.starting.get(t.name, 0) for t in self.types}
        for n in live:
            if n.node_type in counts and n.state != "draining":
                counts[n.node_type] += 1
        return counts

    def _room(self, obs: Observation, live: list[NodeView]) -> tuple[dict[str, int], int]:
        """Per type how many more may start, and how many more all together."""
        counts = self._counts(obs, live)
        foreign = sum(1 for n in live if not n.owned and n.state != "draining")
        total = foreign + sum(counts.values())
        return {t.name: max(0, t.max_nodes - counts[t.name]) for t in self.types}, self.s.max_nodes - total

    def _to_minimum(self, obs: Observation, live: list[NodeView]) -> list[Decision]:
        counts = self._counts(obs, live)
        room, total_room = self._room(obs, live)
        out: list[Decision] = []
        for t in self.types:
            want = min(t.min_nodes - counts[t.name], room[t.name], total_room)
            if want > 0:
                out.append(Decision("scale_up", node_type=t.name, count=want, reason="below min_nodes"))
                total_room -= want
                counts[t.name] += want
        foreign = sum(1 for n in live if not n.owned and n.state != "draining")
        short = min(self.s.min_nodes - foreign - sum(counts.values()), total_room)
        if short > 0:
            out += self._spread(short, room, "below min_nodes")
        return out

    def _for_demand(self, obs: Observation, live: list[NodeView]) -> list[Decision]:
        draining = [n for n in live if n.owned and n.state == "draining"]
        if draining:  # cheaper than a new node, and it still holds its warm instances
            return [Decision("resume", node_id=n.node_id, name=n.name, reason="demand came back")
                    for n in draining]
        # sized by the cheapest type's nodes; _spread moves on to the next when it is full
        t = self.types[0]
        # a node's slots: as its type's nodes report them, else as any node's (likely alike)
        slots = max((n.slots for n in live if n.node_type == t.name and n.slots), default=0) or \
            max((n.slots for n in live if n.slots), default=0)
        by_slots = math.ceil(obs.queued / slots) if slots else obs.queued
        by_cores = math.ceil(obs.queued_cores / t.cores) if t.cores and obs.queued_cores else 0
        need = max(1, by_slots, by_cores) - sum(obs.starting.values())
        room, total_room = self._room(obs, live)
        need = min(need, total_room)
        if need <= 0:
            return []
        return self._spread(need, room, f"{obs.queued} execution(s) queued")

    def _spread(self, need: int, room: dict[str, int], reason: str) -> list[Decision]:
        out = []
        for t in self.types:
            n = min(need, room[t.name])
            if n > 0:
                out.append(Decision("scale_up", node_type=t.name, count=n, reason=reason))
                room[t.name] -= n
                need -= n
            if need <= 0:
                break
        return out

    # ------------------------------------------------------------ down

    def _scale_down(self, obs: Observation, live: list[NodeView]) -> list[Decision]:
        if obs.now - max(self._last_up, self._last_down) < self.s.down_cooldown:
            return []
        counts = self._counts(obs, live)
        floor = {t.name: t.min_nodes for t in self.types}
        serving = sum(1 for n in live if n.state != "draining") + sum(obs.starting.values())
        if serving <= self.s.min_nodes:
            return []
        holders: dict[str, int] = {}
        for n in live:
            if n.state != "draining":
                for f in n.warm & obs.busy:
                    holders[f] = holders.get(f, 0) + 1
        for n in sorted(live, key=lambda n: self._idle_since.get(n.node_id, obs.now)):
            if not n.owned or n.state != "ready" or n.running or counts.get(n.node_type, 0) <= floor.get(n.node_type, 0):
                continue
            idle = self._idle(n, obs.now)
            if idle < self.s.scale_down_idle_s:
                continue
            sole = any(holders.get(f) == 1 for f in n.warm & obs.busy)
            if sole and idle < self.s.protect_idle_s:
                continue
            self._last_down = obs.now
            return [Decision("drain", node_id=n.node_id, name=n.name,
                             reason=f"idle {idle:.0f}s")]
        return []
