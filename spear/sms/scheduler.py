"""Scheduler: flat typed arrays of node figures and the scoring kernel.

Every ready node has a slot in parallel ``array`` columns (free and total
CPU and memory, load, penalty, and the learned speed factor of its type).
A decision fills two byte masks — eligible (ready, runtime offered, labels
match) and warm (the node already has the function) — from caches keyed by
the request's shape, then calls
:func:`spear.fast.pick_nodes` (Cython, or its pure-Python twin) for the
best candidates in order. Reservations are taken on dispatch and returned on
every terminal state; the free columns are capacity minus reservations.
"""

from __future__ import annotations

import collections
import math
from array import array

from ..fast import pick_nodes, scheduler_impl
from ..protocol import NodeInfo

#: scoring policies of the kernel (``spear._fast.scheduler_py`` documents both)
BASELINE: int = scheduler_impl.BASELINE
FINISH: int = scheduler_impl.FINISH

#: added to a node's score penalty when it refuses or fails a dispatch
PENALTY = 2.0
#: seconds for a penalty to decay by half
PENALTY_HALF_LIFE = 5.0
#: labels naming a node's type, first found wins (the autoscaler's first)
TYPE_LABELS = ("spear.node-type", "node.type", "type")
#: functions whose own speed column is kept (80 KB each at 10,000 nodes)
FUNCTION_COLUMNS = 64


def node_type(info: NodeInfo) -> str:
    """What the SMS calls a node's type: its type label, else its shape
    (e.g. ``8c/24576MiB``: the cores and memory it registered with)."""
    labels = info.labels
    for key in TYPE_LABELS:
        t = labels.get(key)
        if t:
            return t
    return f"{info.capacity.cores:g}c/{info.capacity.memory >> 20}MiB"


class NodeTable:
    """Scheduling view of the cluster, one array slot per known node."""

    def __init__(self) -> None:
        self.slot_of: dict[str, int] = {}
        self.node_at: list[str | None] = []
        self.info: list[NodeInfo | None] = []
        self.free_cpu = array("d")
        self.free_mem = array("d")
        self.cap_cpu = array("d")
        self.cap_mem = array("d")
        self.load = array("d")
        self.penalty = array("d")
        #: per node, how much longer than the reference its type runs work (learned)
        self.speed = array("d")
        self.type_of: list[str] = []
        #: the speed factor of each node type (:meth:`set_speeds`); 1.0 if absent
        self.speeds: dict[str, float] = {}
        self.speeds_version = -1
        #: node type -> its slots, and a counter bumped when a slot is added or
        #: changes type (what the per-function columns are built from)
        self.slots_of_type: dict[str, set[int]] = {}
        self.layout = 0
        # function -> (its factors' version, speeds_version, layout, column)
        self._fspeed: collections.OrderedDict[str, tuple[int, int, int, array]] = \
            collections.OrderedDict()
        self._penalty_at: dict[int, float] = {}
        self.ready = bytearray()
        self.functions: list[set[str]] = []
        self._free_slots: list[int] = []
        self._eligible: dict[tuple, bytearray] = {}
        self._warm: dict[str, bytearray] = {}
        self.reserved: dict[str, list[float]] = {}  # node -> [cpu, mem]
        self.running: dict[str, int] = {}  # node -> executions dispatched there

    def __len__(self) -> int:
        return len(self.slot_of)

    # ------------------------------------------------------------ membership

    def upsert(self, info: NodeInfo) -> int:
        """Add or refresh a node (capacity, labels, runtimes, state, load)."""
        slot = self.slot_of.get(info.node_id)
        if slot is None:
            if self._free_slots:
                slot = self._free_slots.pop()
            else:
                slot = len(self.node_at)
                for col in (self.free_cpu, self.free_mem, self.cap_cpu, self.cap_mem, self.load,
                            self.penalty):
                    col.append(0.0)
                self.speed.append(1.0)
                self.type_of.append("")
                self.ready.append(0)
                self.node_at.append(None)
                self.info.append(None)
                self.functions.append(set())
                for mask in self._eligible.values():
                    mask.append(0)
                for mask in self._warm.values():
                    mask.append(0)
            self.slot_of[info.node_id] = slot
            self.node_at[slot] = info.node_id
            self.functions[slot] = set()
            self.penalty[slot] = 0.0
            self.reserved.setdefault(info.node_id, [0.0, 0.0])
            for mask in self._warm.values():
                mask[slot] = 0
        old = self.info[slot]
        self.info[slot] = info
        self.cap_cpu[slot] = info.capacity.cores
        self.cap_mem[slot] = float(info.capacity.memory)
        kind = node_type(info)
        if kind != self.type_of[slot]:
            self.slots_of_type.get(self.type_of[slot], set()).discard(slot)
            self.slots_of_type.setdefault(kind, set()).add(slot)
            self.type_of[slot] = kind
            self.layout += 1
        self.speed[slot] = self.speeds.get(kind, 1.0)
        self.update_usage(info)
        ready = 1 if info.state == "ready" else 0
        if (old is None or old.labels != info.labels or old.runtimes != info.runtimes
                or self.ready[slot] != ready):
            self.ready[slot] = ready
            self._eligible.clear()  # label/runtime/state changed: rebuild lazily
        self._refresh_free(info.node_id)
        return slot

    def update_usage(self, info: NodeInfo) -> None:
        slot = self.slot_of.get(info.node_id)
        if slot is not None:
            self._set_load(slot, info.node_id)

    def _set_load(self, slot: int, node_id: str) -> None:
        # the heartbeat's load average lags by seconds; executions we dispatched
        # and that are still running count at once, so bursts spread out
        info = self.info[slot]
        cores = max(info.capacity.cores, 1.0) if info is not None else 1.0
        hb = info.usage.load1 if info is not None else 0.0
        self.load[slot] = (hb + self.running.get(node_id, 0)) / cores

    def set_speeds(self, speeds: dict[str, float], version: int) -> None:
        """Take the node types' learned speed factors (``version``: the models'
        counter, so an unchanged set is not written again); O(nodes)."""
        if version == self.speeds_version:
            return
        self.speeds = dict(speeds)
        self.speeds_version = version
        for i, kind in enumerate(self.type_of):
            self.speed[i] = self.speeds.get(kind, 1.0)

    def function_speed(self, function: str,
                       factors: tuple[int, dict[str, float]] | None) -> array:
        """The speed column for ``function``: its own ``factors`` (version, factor
        per node type) where it has them, the pooled factor elsewhere. Kept per
        function and rebuilt (a copy of the pooled column, then the slots of its
        types) only when its version, the pooled factors or the node slots changed."""
        if factors is None:
            return self.speed
        version, own = factors
        cached = self._fspeed.get(function)
        if (cached is not None and cached[0] == version and cached[1] == self.speeds_version
                and cached[2] == self.layout):
            self._fspeed.move_to_end(function)
            return cached[3]
        col = array("d", self.speed)
        for kind, f in own.items():
            for slot in self.slots_of_type.get(kind, ()):
                col[slot] = f
        self._fspeed[function] = (version, self.speeds_version, self.layout, col)
        self._fspeed.move_to_end(function)
        if len(self._fspeed) > FUNCTION_COLUMNS:
            self._fspeed.popitem(last=False)
        return col

    def all_ready(self) -> bool:
        """True when there are nodes and every known one is ready."""
        return bool(self.slot_of) and all(self.ready[s] for s in self.slot_of.values())

    def set_state(self, node_id: str, state: str) -> None:
        slot = self.slot_of.get(node_id)
        if slot is None:
            return
        ready = 1 if state == "ready" else 0
        if self.ready[slot] != ready:
            self.ready[slot] = ready
            self._eligible.clear()

    def remove(self, node_id: str) -> None:
        slot = self.slot_of.pop(node_id, None)
        if slot is None:
            return
        self.node_at[slot] = None
        self.info[slot] = None
        self.ready[slot] = 0
        self.functions[slot] = set()
        self.free_cpu[slot] = self.free_mem[slot] = 0.0
        self.reserved.pop(node_id, None)
        self.running.pop(node_id, None)
        for mask in self._eligible.values():
            mask[slot] = 0
        for mask in self._warm.values():
            mask[slot] = 0
        self._free_slots.append(slot)

    # ------------------------------------------------------------ warmth

    def mark_warm(self, node_id: str, function: str) -> None:
        slot = self.slot_of.get(node_id)
        if slot is None:
            return
        self.functions[slot].add(function)
        mask = self._warm.get(function)
        if mask is not None:
            mask[slot] = 1

    def forget_function(self, function: str) -> None:
        self._warm.pop(function, None)
        for fs in self.functions:
            fs.discard(function)

    def _warm_mask(self, function: str) -> bytearray:
        mask = self._warm.get(function)
        if mask is None:
            mask = bytearray(len(self.node_at))
            for i, fs in enumerate(self.functions):
                if function in fs:
                    mask[i] = 1
            self._warm[function] = mask
        return mask

    # ------------------------------------------------------------ reservations

    def _refresh_free(self, node_id: str) -> None:
        slot = self.slot_of[node_id]
        cpu, mem = self.reserved.get(node_id, (0.0, 0.0))
        self._refresh(slot, self.info[slot], cpu, mem, self.running.get(node_id, 0))

    def _refresh(self, slot: int, info: NodeInfo | None, cpu: float, mem: float, running: int) -> None:
        """Free capacity of ``slot`` after reservations (cpu, mem) and ``running`` executions."""
        if info is not None and info.capacity.slots and running >= info.capacity.slots:
            self.free_cpu[slot] = -1.0  # at its concurrency limit: fits nothing
        else:
            self.free_cpu[slot] = self.cap_cpu[slot] - cpu
        self.free_mem[slot] = self.cap_mem[slot] - mem

    def _adjust(self, node_id: str, cpu: float, mem: float, running: int) -> None:
        """Change a node's reservations by (cpu, mem) and its running count by
        ``running`` (+1 or -1), then refresh its free capacity and load (one refresh).

        Once per dispatch and once per ending: its work is inlined here rather
        than spread over the helpers the cold paths use.
        """
        r = self.reserved.get(node_id)
        if r is None and (cpu > 0 or mem > 0):
            r = self.reserved[node_id] = [0.0, 0.0]
        if r is not None:
            if cpu or mem:  # (releasing what was never reserved: no-op)
                c = r[0] + cpu
                m = r[1] + mem
                r[0] = c if c >= 1e-9 else 0.0
                r[1] = m if m >= 1e-3 else 0.0
            cpu, mem = r
        else:
            cpu = mem = 0.0
        n = self.running.get(node_id, 0) + running
        if n < 0:
            n = 0
        self.running[node_id] = n
        slot = self.slot_of.get(node_id)
        if slot is not None:
            info = self.info[slot]
            self._refresh(slot, info, cpu, mem, n)
            if info is not None:
                self.load[slot] = (info.usage.load1 + n) / max(info.capacity.cores, 1.0)
            else:
                self.load[slot] = n

    def take(self, node_id: str, cpu: float, mem: float) -> None:
        """A dispatch: reserve cpu/mem and count one more running, in one step."""
        self._adjust(node_id, cpu, mem, +1)

    def give(self, node_id: str, cpu: float, mem: float) -> None:
        """The reverse of :meth:`take` (an execution left the node)."""
        self._adjust(node_id, -cpu, -mem, -1)

    def total_reserved(self) -> tuple[float, float]:
        cpu = sum(r[0] for r in self.reserved.values())
        mem = sum(r[1] for r in self.reserved.values())
        return cpu, mem

    # ------------------------------------------------------------ penalties

    def penalise(self, node_id: str, now: float, amount: float = PENALTY) -> None:
        slot = self.slot_of.get(node_id)
        if slot is None:
            return
        self._decay(slot, now)
        self.penalty[slot] += amount
        self._penalty_at[slot] = now

    def _decay(self, slot: int, now: float) -> None:
        at = self._penalty_at.get(slot)
        if at is None:
            return
        p = self.penalty[slot] * math.pow(0.5, (now - at) / PENALTY_HALF_LIFE)
        if p < 0.01:
            p = 0.0
            del self._penalty_at[slot]
        else:
            self._penalty_at[slot] = now
        self.penalty[slot] = p

    def decay_penalties(self, now: float) -> None:
        for slot in list(self._penalty_at):
            self._decay(slot, now)

    # ------------------------------------------------------------ decisions

    def _eligible_mask(self, runtime: str, labels: tuple) -> bytearray:
        key = (runtime, labels)
        mask = self._eligible.get(key)
        if mask is None:
            mask = bytearray(len(self.node_at))
            for i, info in enumerate(self.info):
                if info is None or not self.ready[i] or runtime not in info.runtimes:
                    continue
                if all(info.labels.get(k) == v for k, v in labels):
                    mask[i] = 1
            self._eligible[key] = mask
        return mask

    def candidates(self, *, runtime: str, labels: dict, function: str, cpu: float, mem: float,
                   k: int = 3, exclude: set[str] | None = None, policy: int = BASELINE,
                   duration: float = 0.0, cold: float = 0.0, slope: float = 1.0,
                   speed: array | None = None) -> list[str]:
        """Best ``k`` node ids for the request, best first (empty: nothing fits).

        ``policy`` :data:`FINISH` ranks by expected finish time from a predicted
        run time ``duration`` (on a reference node at no load), each node's
        speed factor (``speed``: the function's column from :meth:`function_speed`;
        None: the pooled one), its load times ``slope``, and the function's mean
        ``cold`` start.
        """
        if not self.node_at:
            return []
        elig = self._eligible_mask(runtime, tuple(sorted(labels.items())) if labels else ())
        if exclude:
            elig = bytearray(elig)
            for nid in exclude:
                slot = self.slot_of.get(nid)
                if slot is not None:
                    elig[slot] = 0
        warm = self._warm.get(function)
        if warm is None:
            warm = self._warm_mask(function)
        picks = pick_nodes(self.free_cpu, self.free_mem, self.cap_cpu, self.cap_mem, self.load,
                           elig, warm, self.penalty, cpu, mem, k, policy, duration, cold,
                           self.speed if speed is None else speed, slope)
        return [self.node_at[i] for i in picks]

    def why_not(self, *, runtime: str, labels: dict, cpu: float, mem: float) -> tuple[str, bool]:
        """Why no node fits, and whether waiting could help (nodes busy, not absent)."""
        ready = [i for i in self.info if i is not None and self.ready[self.slot_of[i.node_id]]]
        if not ready:
            return "no ready nodes", False
        with_rt = [i for i in ready if runtime in i.runtimes]
        if not with_rt:
            reasons = {i.unavailable.get(runtime, "not offered") for i in ready}
            return (f"no ready node offers runtime {runtime!r} "
                    f"({'; '.join(sorted(reasons))[:200]})"), False
        matching = [i for i in with_rt if all(i.labels.get(k) == v for k, v in labels.items())]
        if not matching:
            return f"no ready node with runtime {runtime!r} matches labels {labels}", False
        big = [i for i in matching if i.capacity.cores >= cpu and i.capacity.memory >= mem]
        if not big:
            return (f"no node is large enough for {cpu:g} cores and {mem / 2**20:.0f} MiB "
                    f"(largest: {max(i.capacity.cores for i in matching):g} cores)"), False
        return (f"no node has {cpu:g} free cores and {mem / 2**20:.0f} MiB free memory now "
                f"({len(big)} candidate(s) busy)"), True
