"""Execution cgroups of the process runtime.

Each execution of a process function (a one-shot run, or a pooled worker for
its whole life) gets a cgroup of its own in every hierarchy that holds a
controller the runtime uses:

* ``memory``: ``memory_mb`` (no swap beyond it), the peak charge, OOM kills;
* ``pids``: ``pids`` (processes and threads);
* ``cpu``: ``cpus``, as a CFS quota (only when a function asks for it);
* CPU time: ``cpuacct`` (v1) or ``cpu.stat`` (v2, present in every cgroup);
* membership: the v2 hierarchy when mounted (``cgroup.kill`` ends the whole
  group at once), else the v1 ``pids`` or ``memory`` hierarchy.

A machine may mix the two versions (controllers bound to v1 mounts next to a
v2 mount without controllers, say): each controller is taken from wherever it
is bound. Execution cgroups are created only below the Spearlet's own cgroup
as ``/proc/self/cgroup`` names it, inside one directory of this runtime
(``<own>/spear-process.<pid>``), never elsewhere in the hierarchy.

:meth:`Cgroups.detect` says what works here and why the rest does not;
:class:`Group` is one execution's cgroup. The files themselves are read and
written by :mod:`.cgroupfs`.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
from dataclasses import dataclass, field

from .cgroupfs import (
    V1,
    V2,
    WANTED,
    CgroupError,
    Hierarchy,
    enable_v2,
    inside,
    mounts,
    own_cgroups,
    read,
    reap,
    tidy,
    tree,
    write,
)

log = logging.getLogger(__name__)


@dataclass
class Cgroups:
    """Where this node's execution cgroups go, and what they can limit.

    ``by_controller`` maps each usable controller of :data:`WANTED` to its
    hierarchy; ``track`` is the hierarchy that holds every execution (for
    listing and killing its processes). ``missing`` says, per controller, why
    it is not usable here.
    """

    name: str
    by_controller: dict[str, Hierarchy]
    track: Hierarchy
    missing: dict[str, str] = field(default_factory=dict)
    hierarchies: list[Hierarchy] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    @classmethod
    def detect(cls, name: str | None = None) -> tuple["Cgroups | None", str]:
        """The cgroups of this node, or ``(None, why not)``; needs to be allowed to create them."""
        name = name or f"spear-process.{os.getpid()}"
        own_text = read("/proc/self/cgroup")
        mount_text = read("/proc/self/mountinfo")
        if own_text is None or mount_text is None:
            return None, "no /proc/self/cgroup (not Linux, or no procfs)"
        v1_own, v2_own = own_cgroups(own_text)
        found: list[Hierarchy] = []
        missing: dict[str, str] = {}
        by: dict[str, Hierarchy] = {}
        v2: Hierarchy | None = None
        for fstype, root, point, opts in mounts(mount_text):
            if fstype == "cgroup2":
                if v2_own is None or v2 is not None:
                    continue
                own = inside(root, v2_own, point)
                if own and os.path.isdir(own):
                    v2 = V2(2, own, frozenset())
                continue
            ctrls = frozenset(c for c in opts if c in WANTED)
            if not ctrls:
                continue
            path = next((p for k, p in v1_own.items() if ctrls <= k), None)
            own = inside(root, path, point) if path is not None else None
            if own is None or not os.path.isdir(own):
                for c in ctrls:
                    missing.setdefault(c, f"v1 {point} does not show our cgroup")
                continue
            if not os.access(own, os.W_OK):
                for c in ctrls:
                    missing.setdefault(c, f"{own} is not writable by us")
                continue
            h = V1(1, own, ctrls)
            found.append(h)
            for c in ctrls:
                by.setdefault(c, h)
        if v2 is not None:
            if not os.access(v2.own, os.W_OK):
                if not found:
                    return None, f"{v2.own} (cgroup v2) is not writable by us"
                v2 = None
            else:
                avail = set((read(os.path.join(v2.own, "cgroup.controllers")) or "").split())
                want = {c for c in ("memory", "pids", "cpu") if c not in by and c in avail}
                got, why = enable_v2(v2.own, want) if want else (set(), "")
                for c in want - got:
                    missing[c] = why
                ctrls = frozenset(got | ({"cpuacct"} if "cpuacct" not in by else set()))
                v2 = V2(2, v2.own, ctrls)
                for c in ctrls:
                    by.setdefault(c, v2)
                found.insert(0, v2)
        if not found:
            return None, "no cgroup hierarchy where we may create cgroups"
        track = v2 or by.get("pids") or by.get("memory") or found[0]
        missing = {c: missing.get(c, "no hierarchy has it") for c in WANTED if c not in by}
        self = cls(name, by, track, missing, found)
        try:
            self._make_bases()
        except CgroupError as exc:
            self.close()
            return None, str(exc)
        atexit.register(self._at_exit)  # a process that never closed the runtime
        return self, ""

    def _at_exit(self) -> None:
        if self._made:
            reap(self._made)
            self._made = []

    def _make_bases(self) -> None:
        for h in self.hierarchies:
            tidy(h.own)
            self._make_base(h)

    def _make_base(self, h: Hierarchy) -> None:
        base = os.path.join(h.own, self.name)
        try:
            os.mkdir(base, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise CgroupError(f"cannot create {base}: {exc.strerror}") from None
        if base not in self._made:
            self._made.append(base)
        if isinstance(h, V2):
            ctrls = sorted(c for c in h.controllers if c != "cpuacct")
            if ctrls:
                write(os.path.join(base, "cgroup.subtree_control"),
                       " ".join(f"+{c}" for c in ctrls))

    # -- what callers ask
    def has(self, controller: str) -> bool:
        """Whether executions here can use ``controller``."""
        return controller in self.by_controller

    @property
    def bases(self) -> list[str]:
        """This runtime's directories, one per hierarchy (recorded for :func:`reap`)."""
        return list(self._made)

    def describe(self) -> str:
        """Where the execution cgroups go and what each hierarchy gives (for the log)."""
        parts = []
        for h in self.hierarchies:
            what = ", ".join(sorted(h.controllers)) or "membership only"
            parts.append(f"v{h.version} {os.path.join(h.own, self.name)} ({what})")
        return "; ".join(parts)

    def group(self, name: str, *, cpu: bool = False) -> "Group":
        """Create the cgroup of one execution (``cpu``: also in the cpu hierarchy, for quotas)."""
        use: list[Hierarchy] = []
        for c in ("memory", "pids", "cpuacct") + (("cpu",) if cpu else ()):
            h = self.by_controller.get(c)
            if h is not None and h not in use:
                use.append(h)
        if self.track not in use:
            use.append(self.track)
        g = Group(self, [])
        for h in use:
            path = os.path.join(h.own, self.name, name)
            for attempt in (0, 1):
                try:
                    os.mkdir(path, 0o755)
                except FileExistsError:
                    pass
                except FileNotFoundError:
                    if attempt == 0:  # our directory went away (removed by hand): again
                        try:
                            self._make_base(h)
                            continue
                        except CgroupError:
                            pass
                    g.remove_now()
                    raise CgroupError(f"cannot create {path}: its parent is gone") from None
                except OSError as exc:
                    g.remove_now()
                    raise CgroupError(f"cannot create {path}: {exc.strerror}") from None
                break
            g.dirs.append((h, path))
        return g

    def close(self) -> None:
        """Remove this runtime's (empty) directories; those still busy are reaped at exit."""
        left = []
        for base in self._made:
            try:
                os.rmdir(base)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(base)
        self._made = left


@dataclass(eq=False)
class Group:
    """The cgroup of one execution, spread over the hierarchies that hold its controllers."""

    owner: Cgroups
    dirs: list[tuple[Hierarchy, str]]

    def _at(self, controller: str) -> tuple[Hierarchy, str] | None:
        h = self.owner.by_controller.get(controller)
        if h is None:
            return None
        for hh, path in self.dirs:
            if hh is h:
                return hh, path
        return None

    @property
    def path(self) -> str:
        """The directory in the tracking hierarchy (what tests and logs name)."""
        for h, path in self.dirs:
            if h is self.owner.track:
                return path
        return self.dirs[0][1]

    def limit(self, *, memory: int | None = None, pids: int | None = None,
              cpus: float | None = None, set_cpus: bool = False) -> None:
        """Apply limits; raise CgroupError naming the file on failure (never partial silence)."""
        if memory is not None:
            at = self._at("memory")
            if at is None:
                raise CgroupError("no memory controller")
            at[0].set_memory(at[1], memory)
        if pids is not None:
            at = self._at("pids")
            if at is None:
                raise CgroupError("no pids controller")
            at[0].set_pids(at[1], pids)
        if set_cpus:
            at = self._at("cpu")
            if at is None:
                raise CgroupError("no cpu controller")
            at[0].set_cpus(at[1], cpus)

    def attach(self, pid: int) -> None:
        """Move ``pid`` into the execution's cgroup in every hierarchy."""
        for h, path in self.dirs:
            h.attach(path, pid)

    def cpu_ns(self) -> int | None:
        """CPU time of the execution so far, in ns (None: no CPU accounting)."""
        at = self._at("cpuacct")
        return at[0].cpu_ns(at[1]) if at else None

    def peak(self) -> int | None:
        """Peak memory charge of the execution in bytes (None: no memory controller)."""
        at = self._at("memory")
        return at[0].peak(at[1]) if at else None

    def oom_killed(self) -> bool:
        """Whether the OOM killer ended a process of the execution."""
        at = self._at("memory")
        return bool(at and at[0].oom_kills(at[1]))

    def pids(self) -> list[int]:
        """Every pid of the execution (from the tracking hierarchy)."""
        h, path = next((d for d in self.dirs if d[0] is self.owner.track), self.dirs[0])
        return [p for d in tree(path) for p in h.procs(d)]

    def kill(self) -> None:
        """SIGKILL every process of the execution (those that left its session too)."""
        for h, path in self.dirs:
            if h is self.owner.track:
                h.kill(path)
                return

    def remove_now(self) -> list[str]:
        """rmdir every directory; returns those still busy (processes not gone yet)."""
        busy = []
        for _h, path in self.dirs:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    log.warning("cannot remove cgroup %s: %s", path, exc.strerror)
                busy.append(path)
        self.dirs = [(h, p) for h, p in self.dirs if p in busy]
        return busy
