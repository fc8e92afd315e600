"""InstancePool: warm instances of one function on one node.

The bookkeeping (which slot is idle, busy or free; hits, misses, evictions)
is the :class:`spear.fast.SlotPool` kernel, Cython with a pure-Python twin;
this wrapper maps slots to runtime instances and does the async work
(creating and destroying instances) around it. A hit costs one kernel call
and a list index.

When every slot is busy and the pool is at its maximum, callers wait in FIFO
order for a released instance, up to ``wait`` seconds, then get
RESOURCE_EXHAUSTED.

Eviction: by default an instance idle for ``idle_ttl`` goes (keeping
``min_warm``). With a learned warming policy (``[spearlet] warming =
"learned"``, :mod:`spear.autoscale.warming`) the pool tells the policy when
calls start and end, asks it how to evict, and :meth:`InstancePool.warm_up`
creates the instance it wants warm at the end of a pre-warm window.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

from .. import errors
from ..autoscale.warming import Policy
from ..fast import SlotPool
from ..protocol import PoolSettings
from ..runtimes import Instance, Prepared, Runtime

log = logging.getLogger("spear.pool")


class InstancePool:
    """Per-function pool of warm instances."""

    def __init__(self, runtime: Runtime, prepared: Prepared, settings: PoolSettings,
                 warming: Policy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # the time releases, evictions and the policy see
        self.warming = warming  # None: idle_ttl alone, no bookkeeping on the hot path
        self.runtime = runtime
        self.prepared = prepared
        self.settings = settings
        self.slots = SlotPool(settings.max)
        self.instances: list[Instance | None] = [None] * settings.max
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._destroying: set[asyncio.Task] = set()
        self.cold_starts = 0
        self.closed = False

    # ------------------------------------------------------------ figures

    @property
    def warm(self) -> int:
        return self.slots.idle

    @property
    def busy(self) -> int:
        return self.slots.busy

    @property
    def waiting(self) -> int:
        """Callers waiting for an instance (the pool is at its maximum)."""
        return len(self._waiters)

    # ------------------------------------------------------------ hot path

    def try_acquire(self) -> int:
        """A warm instance's slot at once, or -1 (then use :meth:`acquire`)."""
        if self.closed:
            return -1
        slot = self.slots.acquire()
        if slot >= 0 and self.warming is not None:
            self.warming.arrive(self.clock())
        return slot

    async def acquire(self, wait: float = 30.0, slot: int = -1) -> tuple[int, Instance, float]:
        """A slot and its instance; the float is the cold-start time (0 on a hit)."""
        if self.closed:
            raise errors.Unavailable(f"function {self.prepared.spec.name!r} was removed")
        if slot >= 0:  # taken by try_acquire, which told the policy
            return slot, self.instances[slot], 0.0
        if self.warming is not None:
            self.warming.arrive(self.clock())
        try:
            slot = self.slots.acquire()
            if slot >= 0:
                return slot, self.instances[slot], 0.0
            slot = self.slots.reserve()
            if slot < 0:
                slot = await self._wait_for_release(wait)
                inst = self.instances[slot]
                if inst is not None:
                    return slot, inst, 0.0
            return await self._create(slot)
        except BaseException:
            if self.warming is not None:  # the call got no instance: it ended here
                self.warming.leave(self.clock())
            raise

    async def _create(self, slot: int) -> tuple[int, Instance, float]:
        t0 = time.perf_counter()
        try:
            inst = await self.runtime.create_instance(self.prepared)
        except BaseException:
            self.slots.discard(slot)
            self._wake_one(-1)
            raise
        self.instances[slot] = inst
        self.cold_starts += 1
        return slot, inst, time.perf_counter() - t0

    async def _wait_for_release(self, wait: float) -> int:
        """The slot a release hands over (FIFO), or RESOURCE_EXHAUSTED after ``wait`` seconds.

        A bare future and one timer per waiter (not ``asyncio.wait_for``, which
        adds a future, a callback and a timer of its own): at a window of
        hundreds in flight most callers of a small pool wait here.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(wait, self._expire, fut, wait)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # handed a slot, then cancelled before it resumed: pass the slot on
                self._put_back(fut.result())
            elif not fut.done():
                fut.cancel()
            try:
                self._waiters.remove(fut)  # a handed-over future has left the deque already
            except ValueError:
                pass
            raise
        finally:
            timer.cancel()

    def _expire(self, fut: asyncio.Future, wait: float) -> None:
        if not fut.done():
            fut.set_exception(errors.ResourceExhausted(
                f"all {self.settings.max} instances of {self.prepared.spec.name!r} busy "
                f"for {wait:g}s"))

    def _wake_one(self, slot: int) -> bool:
        """Hand ``slot`` (busy, or -1: "reserve one yourself") to the oldest waiter."""
        while self._waiters:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            if slot < 0:
                slot = self.slots.reserve()
                if slot < 0:
                    self._waiters.appendleft(fut)
                    return False
            fut.set_result(slot)
            return True
        return False

    def release(self, slot: int, *, healthy: bool = True) -> None:
        """Return an instance; an unhealthy or non-reusable one is destroyed."""
        if self.warming is not None:
            self.warming.leave(self.clock())
        self._put_back(slot, healthy=healthy)

    def _put_back(self, slot: int, *, healthy: bool = True) -> None:
        inst = self.instances[slot]
        if self.closed or not healthy or inst is None or not inst.reusable:
            self.instances[slot] = None
            self.slots.discard(slot)
            if inst is not None:
                self._destroy_later(inst)
            if not self.closed:
                self._wake_one(-1)
            return
        if self._waiters and self._wake_one(slot):
            return  # handed over while still busy: a hit for the waiter
        self.slots.release(slot, self.clock())

    # ------------------------------------------------------------ upkeep

    def _destroy_later(self, inst: Instance) -> None:
        task = asyncio.ensure_future(self._destroy(inst))
        self._destroying.add(task)
        task.add_done_callback(self._destroying.discard)

    async def _destroy(self, inst: Instance) -> None:
        try:
            await self.runtime.destroy(inst)
        except Exception:  # destroy must not take the node down
            log.exception("destroying an instance of %s failed", inst.function)

    async def prewarm(self, count: int | None = None) -> int:
        """Create instances until ``count`` (default min_warm) are idle."""
        target = self.settings.min_warm if count is None else count
        made = 0
        while self.slots.idle < target:
            slot = self.slots.reserve()
            if slot < 0:
                break
            await self._create(slot)
            self.slots.release(slot, self.clock())
            made += 1
        return made

    async def evict_idle(self, now: float | None = None) -> int:
        """Destroy instances idle for longer than ``idle_ttl`` (keeping min_warm),
        or as the warming policy says."""
        now = self.clock() if now is None else now
        ttl, keep = self.settings.idle_ttl, self.settings.min_warm
        if self.warming is not None:
            ttl, learned_keep = self.warming.eviction(now)
            keep = max(keep, learned_keep)
        slots = self.slots.evict(now, ttl, keep)
        for slot in slots:
            inst, self.instances[slot] = self.instances[slot], None
            if inst is not None:
                await self._destroy(inst)
        return len(slots)

    async def warm_up(self, now: float | None = None) -> int:
        """Create the instance the warming policy wants warm at ``now`` (the end
        of a pre-warm window), if none is idle; the number created."""
        if self.warming is None or self.closed:
            return 0
        now = self.clock() if now is None else now
        wanted = self.warming.wanted(now)
        if wanted <= self.slots.idle:
            return 0
        return await self.prewarm(wanted)

    async def close(self) -> None:
        """Destroy every instance; busy ones are destroyed when released."""
        self.closed = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(errors.Unavailable("pool closed"))
        self._waiters.clear()
        for slot in self.slots.idle_slots():
            inst, self.instances[slot] = self.instances[slot], None
            self.slots.discard(slot)
            if inst is not None:
                await self._destroy(inst)
        if self._destroying:
            await asyncio.gather(*self._destroying, return_exceptions=True)
