# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled slot bookkeeping for a warm-instance pool.

``pool_py.py`` is the twin and the reference: see its docstring for the slot
states and the order slots are handed out. Same data structures here, in C
arrays: an idle doubly linked list (newest at the head) and a free stack.
"""

from libc.stdlib cimport malloc, free

__all__ = ["FREE", "IDLE", "BUSY", "SlotPool"]

FREE = 0
IDLE = 1
BUSY = 2

cdef enum:
    _FREE = 0
    _IDLE = 1
    _BUSY = 2
    _NIL = -1


cdef class SlotPool:
    """Slot states of one function's warm-instance pool (see pool_py.SlotPool)."""

    cdef Py_ssize_t _capacity
    cdef unsigned char *_state
    cdef double *_last_used
    cdef Py_ssize_t *_prev
    cdef Py_ssize_t *_next
    cdef Py_ssize_t *_free
    cdef Py_ssize_t _nfree
    cdef Py_ssize_t _head
    cdef Py_ssize_t _tail
    cdef Py_ssize_t _idle
    cdef Py_ssize_t _busy
    cdef unsigned long long _hits
    cdef unsigned long long _misses
    cdef unsigned long long _evictions

    def __cinit__(self, Py_ssize_t capacity):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        # malloc(0) may return NULL, so always ask for at least one entry.
        cdef size_t n = <size_t>(capacity if capacity > 0 else 1)
        self._state = <unsigned char *>malloc(n * sizeof(unsigned char))
        self._last_used = <double *>malloc(n * sizeof(double))
        self._prev = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
        self._next = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
        self._free = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
        if (self._state == NULL or self._last_used == NULL or self._prev == NULL
                or self._next == NULL or self._free == NULL):
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(capacity):
            self._state[i] = _FREE
            self._last_used[i] = 0.0
            self._prev[i] = _NIL
            self._next[i] = _NIL
            self._free[i] = capacity - 1 - i  # top of stack is slot 0
        self._capacity = capacity
        self._nfree = capacity
        self._head = _NIL
        self._tail = _NIL
        self._idle = 0
        self._busy = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def __dealloc__(self):
        free(self._state)
        free(self._last_used)
        free(self._prev)
        free(self._next)
        free(self._free)

    # -- read-only figures -------------------------------------------------

    @property
    def capacity(self):
        """Number of slots."""
        return self._capacity

    @property
    def size(self):
        """Live instances: idle + busy."""
        return self._idle + self._busy

    @property
    def idle(self):
        """Warm instances waiting for work."""
        return self._idle

    @property
    def busy(self):
        """Instances handed out and not yet released."""
        return self._busy

    @property
    def hits(self):
        """acquire() calls that found a warm instance."""
        return self._hits

    @property
    def misses(self):
        """acquire() calls that found none."""
        return self._misses

    @property
    def evictions(self):
        """Slots freed by evict()."""
        return self._evictions

    # -- hot path ----------------------------------------------------------

    def acquire(self):
        """Take the most recently released idle slot and mark it busy; -1 if none."""
        cdef Py_ssize_t slot = self._head
        cdef Py_ssize_t nxt
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
        self._state[slot] = _BUSY
        self._idle -= 1
        self._busy += 1
        self._hits += 1
        return slot

    def release(self, Py_ssize_t slot, double now):
        """Mark a busy slot idle, last used at ``now``; ValueError if it is not busy."""
        if slot < 0 or slot >= self._capacity or self._state[slot] != _BUSY:
            raise ValueError(f"slot {slot} is not busy")
        cdef Py_ssize_t head = self._head
        self._state[slot] = _IDLE
        self._last_used[slot] = now
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

    def reserve(self):
        """Take a free slot for a new instance and mark it busy; -1 if the pool is full."""
        if self._nfree == 0:
            return -1
        self._nfree -= 1
        cdef Py_ssize_t slot = self._free[self._nfree]
        self._state[slot] = _BUSY
        self._busy += 1
        return slot

    def discard(self, Py_ssize_t slot):
        """Free a busy or idle slot (its instance is gone); ValueError if already free."""
        if slot < 0 or slot >= self._capacity or self._state[slot] == _FREE:
            raise ValueError(f"slot {slot} is already free")
        if self._state[slot] == _IDLE:
            self._unlink(slot)
            self._idle -= 1
        else:
            self._busy -= 1
        self._state[slot] = _FREE
        self._push_free(slot)

    def evict(self, double now, double ttl, Py_ssize_t min_keep):
        """Free idle slots unused for ``ttl`` or more, oldest first.

        Never leaves fewer than ``min_keep`` live instances (idle + busy).
        Returns the freed slots in eviction order.
        """
        if min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {min_keep}")
        cdef Py_ssize_t budget = self._idle + self._busy - min_keep
        cdef Py_ssize_t slot = self._tail
        cdef Py_ssize_t newer
        cdef list out = []
        while budget > 0 and slot != _NIL:
            newer = self._prev[slot]
            if now - self._last_used[slot] >= ttl:
                self._unlink(slot)
                self._state[slot] = _FREE
                self._push_free(slot)
                self._idle -= 1
                out.append(slot)
                budget -= 1
            slot = newer
        self._evictions += len(out)
        return out

    # -- introspection -----------------------------------------------------

    def state(self, Py_ssize_t slot):
        """FREE, IDLE or BUSY; ValueError if the slot is out of range."""
        if slot < 0 or slot >= self._capacity:
            raise ValueError(f"slot {slot} out of range 0..{self._capacity - 1}")
        return self._state[slot]

    def last_used(self, Py_ssize_t slot):
        """``now`` of the slot's last release (0.0 if never released)."""
        if slot < 0 or slot >= self._capacity:
            raise ValueError(f"slot {slot} out of range 0..{self._capacity - 1}")
        return self._last_used[slot]

    def idle_slots(self):
        """Idle slots, most recently released first (the order acquire() takes them)."""
        cdef list out = []
        cdef Py_ssize_t slot = self._head
        while slot != _NIL:
            out.append(slot)
            slot = self._next[slot]
        return out

    def __repr__(self):
        return (f"SlotPool(capacity={self._capacity}, idle={self._idle}, busy={self._busy}, "
                f"hits={self._hits}, misses={self._misses}, evictions={self._evictions})")

    cdef inline void _push_free(self, Py_ssize_t slot) noexcept:
        self._free[self._nfree] = slot
        self._nfree += 1

    cdef inline void _unlink(self, Py_ssize_t slot) noexcept:
        cdef Py_ssize_t prv = self._prev[slot]
        cdef Py_ssize_t nxt = self._next[slot]
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
