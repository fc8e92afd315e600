"""The decisions a simulation asks for, each behind one small interface.

* warming: :func:`warming` builds the REAL :mod:`spear.autoscale.warming`
  policy for a function ("none", "fixed", "learned"), as the Spearlet does;
* placement: which node holds a function's instances (:func:`hashed`: a
  stable hash; the place for placement policies to plug in);
* nodes: what the cluster does when calls wait for memory
  (:class:`FixedNodes`: nothing; the cluster keeps its ``Shape.nodes``).
  This is the hook for the autoscaler's policy (:mod:`spear.autoscale.policy`):
  a :class:`NodeModel` that feeds it the queue and adds nodes after a start
  delay makes the report's ``burst_absorb_s`` its time to absorb a burst.
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
    """Told, each time a call starts waiting, how many calls wait for memory."""

    def observe(self, now: float, queued: int) -> None: ...


class FixedNodes:
    """The cluster's nodes, and no more."""

    def observe(self, now: float, queued: int) -> None:
        """A fixed cluster does not react."""
