"""Execution cgroups of the process runtime: cgroup v1 and v2 behind one interface.

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
:class:`Group` is one execution's cgroup; :func:`reap` ends and removes what
an earlier run of the node left under its recorded directories.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: the controllers the process runtime can use
WANTED = ("memory", "pids", "cpu", "cpuacct")
_PERIOD_US = 100_000  # CFS period for ``cpus`` quotas
_KILL_ROUNDS = 64  # v1 without cgroup.kill: rounds of "list, SIGKILL" before giving up


class CgroupError(Exception):
    """A cgroup could not be created, limited, joined or read; the message names the file."""


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"cannot open {path}: {exc.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")
    except OSError:
        return None


def _int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _field(path: str, name: str) -> int | None:
    """``name value`` lines (cpu.stat, memory.events, memory.oom_control): the value of one."""
    text = _read(path)
    if text is None:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            try:
                return int(value)
            except ValueError:
                return None
    return None


# ----------------------------------------------------------------- hierarchies


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy, seen from the Spearlet's own cgroup in it."""

    version: int
    #: our own cgroup's directory in this hierarchy
    own: str
    #: the controllers of WANTED that this hierarchy gives us
    controllers: frozenset[str]

    def procs(self, path: str) -> list[int]:
        text = _read(os.path.join(path, "cgroup.procs")) or ""
        return [int(x) for x in text.split() if x.isdigit()]

    def attach(self, path: str, pid: int) -> None:
        _write(os.path.join(path, "cgroup.procs"), str(pid))

    def kill(self, path: str) -> None:
        """SIGKILL every process in ``path`` (and below it)."""
        killed: set[int] = set()
        for _ in range(_KILL_ROUNDS):
            new = {p for d in _tree(path) for p in self.procs(d)} - killed
            if not new:  # those left are dying; only a fork since the last round matters
                return
            for pid in new:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            killed |= new
        log.warning("%s: new processes still appear after %d rounds of SIGKILL", path, _KILL_ROUNDS)

    # the limit files differ between versions
    def set_memory(self, path: str, limit: int) -> None:
        raise NotImplementedError

    def set_pids(self, path: str, limit: int | None) -> None:
        _write(os.path.join(path, "pids.max"), "max" if limit is None else str(limit))

    def set_cpus(self, path: str, cpus: float | None) -> None:
        raise NotImplementedError

    def cpu_ns(self, path: str) -> int | None:
        raise NotImplementedError

    def peak(self, path: str) -> int | None:
        raise NotImplementedError

    def oom_kills(self, path: str) -> int:
        raise NotImplementedError


class V1(Hierarchy):
    """A cgroup v1 hierarchy (one mount per controller, or a few co-mounted)."""

    def set_memory(self, path: str, limit: int) -> None:
        _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
        swap = os.path.join(path, "memory.memsw.limit_in_bytes")
        if os.path.exists(swap):  # memory + swap = memory: no swapping beyond the limit
            _write(swap, str(limit))

    def set_cpus(self, path: str, cpus: float | None) -> None:
        quota = -1 if cpus is None else max(1000, int(cpus * _PERIOD_US))
        _write(os.path.join(path, "cpu.cfs_period_us"), str(_PERIOD_US))
        _write(os.path.join(path, "cpu.cfs_quota_us"), str(quota))

    def cpu_ns(self, path: str) -> int | None:
        return _int(os.path.join(path, "cpuacct.usage"))

    def peak(self, path: str) -> int | None:
        return _int(os.path.join(path, "memory.max_usage_in_bytes"))

    def oom_kills(self, path: str) -> int:
        kills = _field(os.path.join(path, "memory.oom_control"), "oom_kill")
        if kills is not None:
            return kills
        return 1 if (_int(os.path.join(path, "memory.failcnt")) or 0) > 0 else 0


class V2(Hierarchy):
    """The unified hierarchy (cgroup v2)."""

    def kill(self, path: str) -> None:
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
        except CgroupError:  # before Linux 5.14: one process at a time
            super().kill(path)

    def set_memory(self, path: str, limit: int) -> None:
        _write(os.path.join(path, "memory.max"), str(limit))
        swap = os.path.join(path, "memory.swap.max")
        if os.path.exists(swap):
            _write(swap, "0")

    def set_cpus(self, path: str, cpus: float | None) -> None:
        value = "max" if cpus is None else str(max(1000, int(cpus * _PERIOD_US)))
        _write(os.path.join(path, "cpu.max"), f"{value} {_PERIOD_US}")

    def cpu_ns(self, path: str) -> int | None:
        usec = _field(os.path.join(path, "cpu.stat"), "usage_usec")
        return None if usec is None else usec * 1000

    def peak(self, path: str) -> int | None:
        return _int(os.path.join(path, "memory.peak"))

    def oom_kills(self, path: str) -> int:
        return _field(os.path.join(path, "memory.events"), "oom_kill") or 0


def _tidy(own: str) -> None:
    """Remove the empty directories of runtimes whose process is gone (a SIGKILLed
    Spearlet that never came back). Only empty ones: processes are ended only by
    :func:`reap`, for runs a node recorded itself."""
    try:
        names = os.listdir(own)
    except OSError:
        return
    for name in names:
        prefix, dot, pid = name.partition(".")
        if not (prefix.startswith("spear-") and dot and pid.isdigit()):
            continue
        if os.path.exists(f"/proc/{pid}"):
            continue
        for d in _tree(os.path.join(own, name)):
            try:
                os.rmdir(d)
            except OSError:
                break  # not empty: leave it for that node's own restart


def _tree(path: str) -> list[str]:
    """``path`` and every cgroup below it, deepest first."""
    out: list[str] = []
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        out.append(dirpath)
    return out or [path]


# ----------------------------------------------------------------- detection


def _own_cgroups(text: str) -> tuple[dict[frozenset[str], str], str | None]:
    """/proc/self/cgroup: {v1 controller set: path}, and the v2 path (or None)."""
    v1: dict[frozenset[str], str] = {}
    v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _id, ctrls, path = parts
        if ctrls == "" and _id == "0":
            v2 = path
        elif ctrls:
            v1[frozenset(ctrls.split(","))] = path
    return v1, v2


def _mounts(text: str) -> list[tuple[str, str, str, frozenset[str]]]:
    """/proc/self/mountinfo: (fstype, root, mount point, options) of cgroup mounts."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        out.append((rfields[0], fields[3], point, frozenset(rfields[2].split(","))))
    return out


def _inside(mount_root: str, own: str, point: str) -> str | None:
    """Directory of cgroup ``own`` in a hierarchy mounted at ``point`` showing ``mount_root``."""
    if mount_root == "/":
        rel = own.lstrip("/")
    elif own == mount_root or own.startswith(mount_root.rstrip("/") + "/"):
        rel = own[len(mount_root):].lstrip("/")
    else:
        return None  # our cgroup is not visible through this mount
    return os.path.join(point, rel) if rel else point


def _enable_v2(own: str, want: set[str]) -> tuple[set[str], str]:
    """Enable ``want`` for the children of ``own`` (v2); returns (enabled, why not the rest).

    A v2 cgroup that holds processes cannot hand controllers to its children,
    so a Spearlet alone in its cgroup first moves itself into a leaf below it
    (``<own>/spearlet``), the usual arrangement of a delegated cgroup.
    """
    sub = os.path.join(own, "cgroup.subtree_control")
    have = set((_read(sub) or "").split())
    need = want - have
    if not need:
        return want, ""
    line = " ".join(f"+{c}" for c in sorted(need))
    try:
        _write(sub, line)
        return want, ""
    except CgroupError as exc:
        first = str(exc)
    me = os.getpid()
    others = [p for p in Hierarchy(2, own, frozenset()).procs(own) if p != me]
    if others or not os.path.exists(os.path.join(own, "cgroup.type")):
        return have & want, (f"{first} (the Spearlet's cgroup also holds other processes, "
                             "so it cannot delegate controllers)")
    leaf = os.path.join(own, "spearlet")
    try:
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(me))
        _write(sub, line)
    except (OSError, CgroupError) as exc:
        return have & want, f"{first}; moving the Spearlet into {leaf} did not help: {exc}"
    log.info("moved the Spearlet into %s so that %s can enable %s for executions",
             leaf, own, ", ".join(sorted(need)))
    return want, ""


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
        own_text = _read("/proc/self/cgroup")
        mount_text = _read("/proc/self/mountinfo")
        if own_text is None or mount_text is None:
            return None, "no /proc/self/cgroup (not Linux, or no procfs)"
        v1_own, v2_own = _own_cgroups(own_text)
        found: list[Hierarchy] = []
        missing: dict[str, str] = {}
        by: dict[str, Hierarchy] = {}
        v2: Hierarchy | None = None
        for fstype, root, point, opts in _mounts(mount_text):
            if fstype == "cgroup2":
                if v2_own is None or v2 is not None:
                    continue
                own = _inside(root, v2_own, point)
                if own and os.path.isdir(own):
                    v2 = V2(2, own, frozenset())
                continue
            ctrls = frozenset(c for c in opts if c in WANTED)
            if not ctrls:
                continue
            path = next((p for k, p in v1_own.items() if ctrls <= k), None)
            own = _inside(root, path, point) if path is not None else None
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
                avail = set((_read(os.path.join(v2.own, "cgroup.controllers")) or "").split())
                want = {c for c in ("memory", "pids", "cpu") if c not in by and c in avail}
                got, why = _enable_v2(v2.own, want) if want else (set(), "")
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
            _tidy(h.own)
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
                _write(os.path.join(base, "cgroup.subtree_control"),
                       " ".join(f"+{c}" for c in ctrls))

    # -- what callers ask
    def has(self, controller: str) -> bool:
        return controller in self.by_controller

    @property
    def bases(self) -> list[str]:
        """This runtime's directories, one per hierarchy (recorded for :func:`reap`)."""
        return list(self._made)

    def describe(self) -> str:
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

    def paths(self) -> list[str]:
        return [p for _, p in self.dirs]

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
        for h, path in self.dirs:
            h.attach(path, pid)

    def cpu_ns(self) -> int | None:
        at = self._at("cpuacct")
        return at[0].cpu_ns(at[1]) if at else None

    def peak(self) -> int | None:
        at = self._at("memory")
        return at[0].peak(at[1]) if at else None

    def oom_killed(self) -> bool:
        at = self._at("memory")
        return bool(at and at[0].oom_kills(at[1]))

    def pids(self) -> list[int]:
        h, path = next((d for d in self.dirs if d[0] is self.owner.track), self.dirs[0])
        return [p for d in _tree(path) for p in h.procs(d)]

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


# --------------------------------------------------------------------- reaping


def reap(paths: list[str]) -> tuple[int, list[str]]:
    """Kill every process in and below each of ``paths`` and remove those cgroups.

    For directories an earlier run of this node recorded. Returns (processes
    killed, directories that could not be removed).
    """
    killed = 0
    left: list[str] = []
    for base in paths:
        if not os.path.isdir(base):
            continue
        v2 = os.path.exists(os.path.join(base, "cgroup.kill")) or os.path.exists(
            os.path.join(base, "cgroup.type"))
        h: Hierarchy = (V2 if v2 else V1)(2 if v2 else 1, os.path.dirname(base), frozenset())
        for _ in range(3):
            pids = [p for d in _tree(base) for p in h.procs(d)]
            if not pids:
                break
            killed += len(pids)
            h.kill(base)
            _wait_gone(pids)
        for d in _tree(base):
            try:
                os.rmdir(d)
            except OSError:
                left.append(d)
    return killed, left


def _wait_gone(pids: list[int], wait: float = 2.0) -> None:
    import time

    end = time.monotonic() + wait
    while time.monotonic() < end:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if not alive:
            return
        time.sleep(0.01)
