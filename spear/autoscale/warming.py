"""Instance warming: when to keep a function's instances warm, learned from its calls.

Pure: no clock, no I/O. The caller tells a policy when calls start
(:meth:`~HybridHistogram.arrive`) and end (:meth:`~HybridHistogram.leave`)
and asks, at any ``now``, how many idle instances are wanted
(:meth:`~HybridHistogram.wanted`). The Spearlet's instance pools and the
trace-driven simulator (``python -m bench.sim``) both drive this module.

:class:`FixedKeepAlive` keeps an instance for a fixed time after the last
call ends (the pool's ``idle_ttl``); with a keep-alive of 0 it keeps none.

:class:`HybridHistogram` is the hybrid-histogram policy of Shahrad et al.,
"Serverless in the Wild" (USENIX ATC 2020). It keeps a histogram of the idle
times of the function (end of the last call to the start of the next, in
minute bins up to a range, 4 h by default). From it:

* pre-warm window = a low percentile (5th) of the idle times, less a margin:
  for that long after a call ends nothing is kept warm (no call is likely);
* keep-alive = a high percentile (99th) less the pre-warm window, plus a
  margin: from the end of the pre-warm window, one instance is kept warm that
  long.

With too few idle times, or too many beyond the range (a histogram that says
nothing), it falls back to the fixed keep-alive.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Windows:
    """When to warm after a function goes idle: nothing for ``prewarm`` seconds,
    then keep warm for ``keep_alive`` seconds. ``learned``: from the histogram
    (False: the fixed fallback)."""

    prewarm: float
    keep_alive: float
    learned: bool = False


class _Calls(abc.ABC):
    """Calls in flight and when the last one ended, and the decisions every
    policy draws from its :meth:`windows`."""

    def __init__(self) -> None:
        self.busy = 0
        self.last_end: float | None = None

    def arrive(self, now: float) -> float | None:
        """A call starts at ``now``; returns the idle time it ends, if any."""
        idle = None
        if self.busy == 0 and self.last_end is not None:
            idle = max(0.0, now - self.last_end)
        self.busy += 1
        return idle

    def leave(self, now: float) -> None:
        """A call ends at ``now``."""
        self.busy = max(0, self.busy - 1)
        if self.busy == 0:
            self.last_end = now

    @abc.abstractmethod
    def windows(self) -> Windows:
        """The pre-warm window and keep-alive in force now."""

    def wanted(self, now: float) -> int:
        """Idle instances to keep at ``now`` (0 or 1; the caller may keep more
        only while calls run). Before the first call: none."""
        if self.busy or self.last_end is None:
            return 0
        w = self.windows()
        idle = now - self.last_end
        return 1 if w.prewarm <= idle < w.prewarm + w.keep_alive else 0

    def eviction(self, now: float) -> tuple[float, int]:
        """How a pool evicts at ``now``: ``(ttl, keep)`` = free idle instances
        unused for ``ttl`` seconds or more, keeping ``keep`` of them.

        Without a pre-warm window (the fixed keep-alive, and a learned one
        that starts at once) each instance ages on its own, as the pool's
        ``idle_ttl`` always did; with one, the window rules the idle function:
        every idle instance goes outside it, one stays inside it.
        """
        w = self.windows()
        if w.prewarm == 0.0 or self.busy:
            return w.keep_alive, 0
        return 0.0, self.wanted(now)

    def next_change(self, now: float) -> float | None:
        """The next time after ``now`` at which :meth:`wanted` may change while
        the function stays idle (None: never). The simulator's next event; the
        pool sweeps periodically instead."""
        if self.busy or self.last_end is None:
            return None
        w = self.windows()
        for t in (self.last_end + w.prewarm, self.last_end + w.prewarm + w.keep_alive):
            if t > now:
                return t
        return None


class FixedKeepAlive(_Calls):
    """Keep an instance ``keep_alive`` seconds after the last call ends."""

    def __init__(self, keep_alive: float) -> None:
        super().__init__()
        self.keep_alive = max(0.0, float(keep_alive))

    def windows(self) -> Windows:
        """No pre-warm window; the fixed keep-alive."""
        return Windows(0.0, self.keep_alive)


class HybridHistogram(_Calls):
    """The hybrid-histogram policy (see the module docstring).

    ``fallback``: the fixed keep-alive used until the histogram is
    representative; ``bin_s``/``range_s``: the histogram's bins and range;
    ``head``/``tail``: the percentiles giving the pre-warm window and the end
    of the keep-alive; ``margin``: the fraction taken off the pre-warm window
    and added to the keep-alive; ``min_samples``: idle times needed before the
    histogram is trusted; ``max_out_of_range``: the largest fraction of idle
    times beyond the range it tolerates.
    """

    def __init__(self, fallback: float, *, bin_s: float = 60.0, range_s: float = 4 * 3600.0,
                 head: float = 5.0, tail: float = 99.0, margin: float = 0.10,
                 min_samples: int = 10, max_out_of_range: float = 0.5) -> None:
        super().__init__()
        if bin_s <= 0 or range_s < bin_s:
            raise ValueError("need 0 < bin_s <= range_s")
        if not 0 <= head <= tail <= 100:
            raise ValueError("need 0 <= head <= tail <= 100")
        self.fallback = max(0.0, float(fallback))
        self.bin_s = float(bin_s)
        self.bins = [0] * int(math.ceil(range_s / bin_s))
        self.head, self.tail, self.margin = head, tail, margin
        self.min_samples = min_samples
        self.max_out_of_range = max_out_of_range
        self.in_range = 0
        self.out_of_range = 0
        self._windows: Windows | None = None  # cached until the next idle time

    def arrive(self, now: float) -> float | None:
        """A call starts: its idle time (if the function was idle) joins the histogram."""
        idle = super().arrive(now)
        if idle is not None:
            self.record(idle)
        return idle

    def record(self, idle: float) -> None:
        """Add one idle time (seconds)."""
        i = int(idle // self.bin_s)
        if i < len(self.bins):
            self.bins[i] += 1
            self.in_range += 1
        else:
            self.out_of_range += 1
        self._windows = None

    def _percentile(self, pct: float) -> int:
        """The bin (index) holding the ``pct``-th percentile of in-range idle times."""
        rank = pct / 100.0 * self.in_range
        seen = 0
        for i, n in enumerate(self.bins):
            seen += n
            if n and seen >= rank:
                return i
        return len(self.bins) - 1

    def representative(self) -> bool:
        """Enough idle times, and not too many beyond the range."""
        total = self.in_range + self.out_of_range
        return (self.in_range >= self.min_samples
                and self.out_of_range <= self.max_out_of_range * total)

    def windows(self) -> Windows:
        """The pre-warm window and keep-alive the histogram gives, or the fallback."""
        if self._windows is None:
            if not self.representative():
                self._windows = Windows(0.0, self.fallback)
            else:
                # head: the lower edge of its bin; tail: the upper edge of its bin
                prewarm = self._percentile(self.head) * self.bin_s * (1.0 - self.margin)
                end = (self._percentile(self.tail) + 1) * self.bin_s
                keep = (end - prewarm) * (1.0 + self.margin)
                self._windows = Windows(prewarm, keep, learned=True)
        return self._windows


Policy = FixedKeepAlive | HybridHistogram


def make(kind: str, keep_alive: float) -> Policy:
    """The policy named ``kind`` ("none", "fixed", "learned"); ``keep_alive``
    is the fixed keep-alive (and the learned policy's fallback)."""
    if kind == "none":
        return FixedKeepAlive(0.0)
    if kind == "fixed":
        return FixedKeepAlive(keep_alive)
    if kind == "learned":
        return HybridHistogram(keep_alive)
    raise ValueError(f"unknown warming policy {kind!r} (none, fixed, learned)")
