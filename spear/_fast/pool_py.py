"""Pure-Python twin of ``pool.pyx``: slot bookkeeping for a warm-instance pool.

The pool wrapper maps slot numbers ``0 .. capacity-1`` to instance objects;
this kernel only tracks each slot's state:

* ``FREE``: no instance; ``reserve()`` hands it out for a cold start.
* ``IDLE``: a warm instance waiting; ``acquire()`` hands out the most
  recently released one (LIFO keeps the warmest instance hot).
* ``BUSY``: in use; ``release()`` makes it idle, ``discard()`` frees it.

Idle slots sit on a doubly linked list, newest at the head, so acquire,
release and discard are O(1) and eviction walks from the oldest end. Free
slots sit on a stack: ``reserve()`` reuses the most recently freed slot, and
a fresh pool hands out 0, 1, 2, ...

Both twins must behave identically; change one, change the other.
"""

from __future__ import annotations

import operator

__all__ = ["FREE", "IDLE", "BUSY", "SlotPool"]

FREE = 0
IDLE = 1
BUSY = 2

_NIL = -1


class SlotPool:
    """Slot states of one function's warm-instance pool (see module docstring)."""

    __slots__ = (
        "_capacity", "_state", "_last_used", "_prev", "_next", "_head", "_tail",
        "_free", "_idle", "_busy", "_hits", "_misses", "_evictions",
    )

    def __init__(self, capacity: int) -> None:
        capacity = operator.index(capacity)
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self._capacity = capacity
        self._state = [FREE] * capacity
        self._last_used = [0.0] * capacity
        self._prev = [_NIL] * capacity  # towards the head (newer)
        self._next = [_NIL] * capacity  # towards the tail (older)
        self._head = _NIL
        self._tail = _NIL
        self._free = list(range(capacity - 1, -1, -1))  # top of stack is slot 0
        self._idle = 0
        self._busy = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    # -- read-only figures -------------------------------------------------

    @property
    def capacity(self) -> int:
        """Number of slots."""
        return self._capacity

    @property
    def size(self) -> int:
        """Live instances: idle + busy."""
        return self._idle + self._busy

    @property
    def idle(self) -> int:
        """Warm instances waiting for work."""
        return self._idle

    @property
    def busy(self) -> int:
        """Instances handed out and not yet released."""
        return self._busy

    @property
    def hits(self) -> int:
        """acquire() calls that found a warm instance."""
        return self._hits

    @property
    def misses(self) -> int:
        """acquire() calls that found none."""
        return self._misses

    @property
    def evictions(self) -> int:
        """Slots freed by evict()."""
        return self._evictions

    # -- hot path ----------------------------------------------------------

    def acquire(self) -> int:
        """Take the most recently released idle slot and mark it busy; -1 if none."""
        slot = self._head
        if slot == _NIL:
            self._misses += 1
            return -1
        nxt = self._next[slot]
        self._head = nxt
        if nxt == _NIL:
            self._tail = _NIL
        else:
            self._prev[nxt] = _NIL
        self._next[slot] = _NIL
        self._state[slot] = BUSY
        self._idle -= 1
        self._busy += 1
        self._hits += 1
        return slot

    def release(self, slot: int, now: float) -> None:
        """Mark a busy slot idle, last used at ``now``; ValueError if it is not busy."""
        if not 0 <= slot < self._capacity or self._state[slot] != BUSY:
            raise ValueError(f"slot {slot} is not busy")
        head = self._head
        self._state[slot] = IDLE
        self._last_used[slot] = float(now)
        self._prev[slot] = _NIL
        self._next[slot] = head
        if head == _NIL:
            self._tail = slot
        else:
            self._prev[head] = slot
        self._head = slot
        self._busy -= 1
        self._idle += 1

    # -- cold path ---------------------------------------------------------

    def reserve(self) -> int:
        """Take a free slot for a new instance and mark it busy; -1 if the pool is full."""
        if not self._free:
            return -1
        slot = self._free.pop()
        self._state[slot] = BUSY
        self._busy += 1
        return slot

    def discard(self, slot: int) -> None:
        """Free a busy or idle slot (its instance is gone); ValueError if already free."""
        if not 0 <= slot < self._capacity or self._state[slot] == FREE:
            raise ValueError(f"slot {slot} is already free")
        if self._state[slot] == IDLE:
            self._unlink(slot)
            self._idle -= 1
        else:
            self._busy -= 1
        self._state[slot] = FREE
        self._free.append(slot)

    def evict(self, now: float, ttl: float, min_keep: int) -> list[int]:
        """Free idle slots unused for ``ttl`` or more, oldest first.

        Never leaves fewer than ``min_keep`` live instances (idle + busy).
        "Oldest" is release order, which is ``last_used`` order for a
        monotonic ``now``. Returns the freed slots in eviction order.
        """
        if min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {min_keep}")
        now = float(now)
        ttl = float(ttl)
        budget = self._idle + self._busy - min_keep
        out: list[int] = []
        slot = self._tail
        while budget > 0 and slot != _NIL:
            newer = self._prev[slot]
            if now - self._last_used[slot] >= ttl:
                self._unlink(slot)
                self._state[slot] = FREE
                self._free.append(slot)
                self._idle -= 1
                out.append(slot)
                budget -= 1
            slot = newer
        self._evictions += len(out)
        return out

    # -- introspection -----------------------------------------------------

    def state(self, slot: int) -> int:
        """FREE, IDLE or BUSY; ValueError if the slot is out of range."""
        if not 0 <= slot < self._capacity:
            raise ValueError(f"slot {slot} out of range 0..{self._capacity - 1}")
        return self._state[slot]

    def last_used(self, slot: int) -> float:
        """``now`` of the slot's last release (0.0 if never released)."""
        if not 0 <= slot < self._capacity:
            raise ValueError(f"slot {slot} out of range 0..{self._capacity - 1}")
        return self._last_used[slot]

    def idle_slots(self) -> list[int]:
        """Idle slots, most recently released first (the order acquire() takes them)."""
        out = []
        slot = self._head
        while slot != _NIL:
            out.append(slot)
            slot = self._next[slot]
        return out

    def __repr__(self) -> str:
        return (f"SlotPool(capacity={self._capacity}, idle={self._idle}, busy={self._busy}, "
                f"hits={self._hits}, misses={self._misses}, evictions={self._evictions})")

    def _unlink(self, slot: int) -> None:
        prv = self._prev[slot]
        nxt = self._next[slot]
        if prv == _NIL:
            self._head = nxt
        else:
            self._next[prv] = nxt
        if nxt == _NIL:
            self._tail = prv
        else:
            self._prev[nxt] = prv
        self._prev[slot] = _NIL
        self._next[slot] = _NIL
