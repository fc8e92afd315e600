"""The decisions a simulation asks for, each behind one small interface.

* warming: :func:`warming` builds the REAL :mod:`spear.autoscale.warming`
  policy for a function ("none", "fixed", "learned"), as the Spearlet does;
* placement: which node holds a function's instances (:func:`hashed`: a
  stable hash; the place for placement policies to plug in);
* nodes: how many nodes there are over time (:class:`FixedNodes`). The
  autoscaler's policy (:mod:`spear.autoscale.policy`) plugs in here as a
  :class:`NodeModel` whose ``count`` follows its scale-up/down decisions, to
  give the time to absorb a burst.
"""

from __future__ import annotations

import zlib
from typing import Callable, Protocol

from spear.autoscale import warming as W

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
    """How many nodes serve at ``now``; told how many calls wait for memory."""

    def count(self, now: float) -> int: ...

    def observe(self, now: float, queued: int) -> None: ...


class FixedNodes:
    """A fixed number of nodes."""

    def __init__(self, n: int) -> None:
        self.n = n

    def count(self, now: float) -> int:
        return self.n

    def observe(self, now: float, queued: int) -> None:
        """A fixed cluster does not react."""
