"""Limits meet processes here: rlimits, cgroup limits and the CPU watch.

Every process starts behind a gate (see :mod:`.child`): while it waits,
:func:`apply` — the one place where limits meet a process — sets its rlimits
(it is still the root-run ``sh``, so no CAP_SYS_RESOURCE is needed) and moves
it into the execution's cgroups. A limit that cannot be applied kills it and
fails the execution with ``Unavailable`` naming the limit, logged at warning.

* ``timeout``: the whole process group (and cgroup) is killed with SIGKILL
  (by the one-shot run or the worker, not here);
* ``memory_mb``: ``RLIMIT_AS`` (address space) and, where there is a memory
  cgroup, its limit (no swap beyond it) for the whole execution. A Python
  ``MemoryError`` becomes ``ResourceExhausted``; so does an OOM kill of the
  cgroup, a native process that dies with out-of-memory signs in its stderr
  tail or one SIGKILLed by someone else (see :mod:`.exits`). Runtimes that
  reserve huge address ranges (Go, the JVM) need a generous limit;
* ``cpu_seconds``: one-shot: ``RLIMIT_CPU`` in whole seconds (SIGXCPU, then
  SIGKILL) plus, with a cgroup, its CPU clock (children count); pooled: per
  call, a :class:`CpuWatch` on the worker's CPU clock (its cgroup's, else its
  own) that kills it once the call has used that much;
* ``pids`` (default: the runtime's ``default_pids``) and ``cpus`` (a CFS
  quota): cgroup only; a function that sets one where there is no such
  controller fails;
* output: a call's output larger than ``limits.max_output_mb`` or the node's
  ``max_output_mb`` (at most the wire's 64 MiB payload cap) stops the
  function at once (see :mod:`.streams`).

A running worker whose call asks for other limits gets them through
:func:`change_memory` and :func:`change_group_limits`, under the same rule.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ... import errors
from . import cgroups as cg
from .streams import MIB

if TYPE_CHECKING:
    from .child import Child

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bounds:
    """The limits one process starts under, all applied by :func:`apply`."""

    memory_mb: int | None = None  # RLIMIT_AS, and the memory cgroup where there is one
    cpu_seconds: float | None = None  # RLIMIT_CPU (one-shot runs)
    pids: int | None = None  # the pids cgroup
    cpus: float | None = None  # the cpu cgroup's quota


def rlimits(b: Bounds) -> list[tuple[int, tuple[int, int], str]]:
    """The rlimits of ``b``: (resource, (soft, hard), the label an error names)."""
    out = []
    if b.memory_mb:
        limit = b.memory_mb * MIB
        out.append((resource.RLIMIT_AS, (limit, limit),
                    f"limits.memory_mb = {b.memory_mb} (RLIMIT_AS)"))
    if b.cpu_seconds:
        secs = max(1, math.ceil(b.cpu_seconds))
        out.append((resource.RLIMIT_CPU, (secs, secs + 1),
                    f"limits.cpu_seconds = {b.cpu_seconds:g} (RLIMIT_CPU)"))
    return out


def set_rlimits(pairs: tuple) -> None:  # pragma: no cover - runs in the forked child
    """``preexec_fn`` of a process spawned by fork (a user switch without ``unshare``)."""
    for res, value in pairs:
        resource.setrlimit(res, value)


def _refuse(why: str) -> None:
    raise cg.CgroupError(why)


def _steps(child: Child) -> list[tuple[str, Callable[[], object]]]:
    """What :func:`apply` does to ``child``, each step with the label its error names."""
    b, group = child.bounds, child.group
    steps: list[tuple[str, Callable[[], object]]] = []
    if not child.pre_applied:
        for res, value, label in rlimits(b):
            steps.append((label, functools.partial(resource.prlimit, child.pid, res, value)))
    cgroups = child.host.cgroups
    if group is not None and b.memory_mb and cgroups.has("memory"):
        steps.append((f"limits.memory_mb = {b.memory_mb} (memory cgroup)",
                      functools.partial(group.limit, memory=b.memory_mb * MIB)))
    for name, value, kw in (("pids", b.pids, {"pids": b.pids}),
                            ("cpus", b.cpus, {"cpus": b.cpus, "set_cpus": True})):
        if value is None:
            continue
        label = f"limits.{name} = {value:g} ({name if name == 'pids' else 'cpu'} cgroup)"
        if group is None or not cgroups.has("cpu" if name == "cpus" else name):
            why = child.host.why_no("cpu" if name == "cpus" else name)
            steps.append((label, functools.partial(_refuse, why)))
        else:
            steps.append((label, functools.partial(group.limit, **kw)))
    if group is not None:
        steps.append(("the execution's cgroup (joining it)", functools.partial(group.attach, child.pid)))
    return steps


def apply(child: Child) -> None:
    """Apply every limit of ``child`` while its gate holds it.

    The one place where limits meet a process: a limit that cannot be
    applied kills it and raises ``Unavailable`` naming the limit (logged
    at warning).
    """
    for label, step in _steps(child):
        try:
            step()
        except (OSError, ValueError, cg.CgroupError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("cannot apply %s to pid %d: %s; the execution fails", label, child.pid, why)
            child.kill()
            raise errors.Unavailable(f"cannot apply {label}: {why}",
                                     details={"limit": label.split(" ")[0]}) from None
    child.memory_mb = child.bounds.memory_mb or None


def change_memory(child: Child, memory_mb: int) -> None:
    """Change a running worker's memory limit (a call that asks for another one)."""
    limit = memory_mb * MIB
    try:
        if child.group is not None and child.host.cgroups.has("memory"):
            child.group.limit(memory=limit)
        resource.prlimit(child.pid, resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError, cg.CgroupError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning("cannot change the memory limit of worker %d to %d MiB: %s",
                    child.pid, memory_mb, why)
        raise errors.Unavailable(
            f"cannot apply limits.memory_mb = {memory_mb} to a running worker "
            f"(started with {child.memory_mb}): {why}", details={"limit": "memory_mb"}) from None
    child.memory_mb = memory_mb


def change_group_limits(child: Child, pids: int | None, cpus: float | None) -> None:
    """Change a running worker's pids / cpus limits (cgroup only)."""
    for name, value, kw in (("pids", pids, {"pids": pids}),
                            ("cpus", cpus, {"cpus": cpus, "set_cpus": True})):
        if value is None:
            continue
        controller = "cpu" if name == "cpus" else name
        try:
            if child.group is None or not child.host.cgroups.has(controller):
                raise cg.CgroupError(child.host.why_no(controller))
            child.group.limit(**kw)
        except cg.CgroupError as exc:
            log.warning("cannot apply %s = %g to worker %d: %s", name, value, child.pid, exc)
            raise errors.Unavailable(f"cannot apply limits.{name} = {value:g}: {exc}",
                                     details={"limit": name}) from None


class CpuWatch:
    """Ends an execution that used ``cpu_seconds`` of CPU: no rlimit, no privilege needed.

    Checks the CPU clock (the cgroup's, else the process's) when the budget
    could be spent at the earliest, given how many CPUs it may use, and again
    until it is or the call ends.
    """

    def __init__(self, child: Child, seconds: float, on_over: Callable[[float], None]) -> None:
        self.child = child
        self.budget = int(seconds * 1e9)
        self.on_over = on_over
        cpus = child.bounds.cpus
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
        self.rate = max(0.05, min(n, cpus) if cpus else n)
        self.start = child.cpu_ns()
        self.handle = child.loop.call_later(self._delay(0), self._check)

    def _delay(self, used: int) -> float:
        return max((self.budget - used) / 1e9 / self.rate, 0.005)

    def _check(self) -> None:
        used = self.child.cpu_ns() - self.start
        if used >= self.budget:
            self.handle = None
            self.on_over(used / 1e9)
            return
        self.handle = self.child.loop.call_later(self._delay(used), self._check)

    def cancel(self) -> None:
        """Stop watching (the call ended)."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
