"""The cgroup file system, v1 and v2 behind one interface (used by :mod:`.cgroups`).

A :class:`Hierarchy` is one mounted hierarchy seen from the Spearlet's own
cgroup: it lists, joins, limits, reads and kills the processes of a cgroup
directory in it (:class:`V1` and :class:`V2` differ in file names and in how
a whole group is killed). The functions below read ``/proc/self/cgroup`` and
``/proc/self/mountinfo`` to find our own cgroup in each hierarchy, enable v2
controllers for our children, and :func:`reap` what an earlier run left.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: the controllers the process runtime can use
WANTED = ("memory", "pids", "cpu", "cpuacct")
_PERIOD_US = 100_000  # CFS period for ``cpus`` quotas
_KILL_ROUNDS = 64  # v1 without cgroup.kill: rounds of "list, SIGKILL" before giving up


class CgroupError(Exception):
    """A cgroup could not be created, limited, joined or read; the message names the file."""


def write(path: str, value: str) -> None:
    """Write ``value`` to a cgroup file; CgroupError naming the file if refused."""
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


def read(path: str) -> str | None:
    """The text of a cgroup file; None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")
    except OSError:
        return None


def read_int(path: str) -> int | None:
    """A cgroup file holding one number; None if missing or not a number."""
    text = read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_field(path: str, name: str) -> int | None:
    """``name value`` lines (cpu.stat, memory.events, memory.oom_control): the value of one."""
    text = read(path)
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
        """The pids in the cgroup ``path`` (not below it)."""
        text = read(os.path.join(path, "cgroup.procs")) or ""
        return [int(x) for x in text.split() if x.isdigit()]

    def attach(self, path: str, pid: int) -> None:
        """Move ``pid`` into the cgroup ``path``."""
        write(os.path.join(path, "cgroup.procs"), str(pid))

    def kill(self, path: str) -> None:
        """SIGKILL every process in ``path`` (and below it)."""
        killed: set[int] = set()
        for _ in range(_KILL_ROUNDS):
            new = {p for d in tree(path) for p in self.procs(d)} - killed
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
        """Limit the memory of ``path`` to ``limit`` bytes, swap included."""
        raise NotImplementedError

    def set_pids(self, path: str, limit: int | None) -> None:
        """Limit the processes and threads of ``path`` (None: no limit)."""
        write(os.path.join(path, "pids.max"), "max" if limit is None else str(limit))

    def set_cpus(self, path: str, cpus: float | None) -> None:
        """Give ``path`` a CFS quota of ``cpus`` CPUs (None: no quota)."""
        raise NotImplementedError

    def cpu_ns(self, path: str) -> int | None:
        """CPU time used in ``path`` so far, in ns (None: not readable)."""
        raise NotImplementedError

    def peak(self, path: str) -> int | None:
        """Peak memory charge of ``path`` in bytes (None: not readable)."""
        raise NotImplementedError

    def oom_kills(self, path: str) -> int:
        """How many processes the OOM killer ended in ``path``."""
        raise NotImplementedError


class V1(Hierarchy):
    """A cgroup v1 hierarchy (one mount per controller, or a few co-mounted)."""

    def set_memory(self, path: str, limit: int) -> None:
        write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
        swap = os.path.join(path, "memory.memsw.limit_in_bytes")
        if os.path.exists(swap):  # memory + swap = memory: no swapping beyond the limit
            write(swap, str(limit))

    def set_cpus(self, path: str, cpus: float | None) -> None:
        quota = -1 if cpus is None else max(1000, int(cpus * _PERIOD_US))
        write(os.path.join(path, "cpu.cfs_period_us"), str(_PERIOD_US))
        write(os.path.join(path, "cpu.cfs_quota_us"), str(quota))

    def cpu_ns(self, path: str) -> int | None:
        return read_int(os.path.join(path, "cpuacct.usage"))

    def peak(self, path: str) -> int | None:
        return read_int(os.path.join(path, "memory.max_usage_in_bytes"))

    def oom_kills(self, path: str) -> int:
        kills = read_field(os.path.join(path, "memory.oom_control"), "oom_kill")
        if kills is not None:
            return kills
        return 1 if (read_int(os.path.join(path, "memory.failcnt")) or 0) > 0 else 0


class V2(Hierarchy):
    """The unified hierarchy (cgroup v2)."""

    def kill(self, path: str) -> None:
        try:
            write(os.path.join(path, "cgroup.kill"), "1")
        except CgroupError:  # before Linux 5.14: one process at a time
            super().kill(path)

    def set_memory(self, path: str, limit: int) -> None:
        write(os.path.join(path, "memory.max"), str(limit))
        swap = os.path.join(path, "memory.swap.max")
        if os.path.exists(swap):
            write(swap, "0")

    def set_cpus(self, path: str, cpus: float | None) -> None:
        value = "max" if cpus is None else str(max(1000, int(cpus * _PERIOD_US)))
        write(os.path.join(path, "cpu.max"), f"{value} {_PERIOD_US}")

    def cpu_ns(self, path: str) -> int | None:
        usec = read_field(os.path.join(path, "cpu.stat"), "usage_usec")
        return None if usec is None else usec * 1000

    def peak(self, path: str) -> int | None:
        return read_int(os.path.join(path, "memory.peak"))

    def oom_kills(self, path: str) -> int:
        return read_field(os.path.join(path, "memory.events"), "oom_kill") or 0


def tidy(own: str) -> None:
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
        for d in tree(os.path.join(own, name)):
            try:
                os.rmdir(d)
            except OSError:
                break  # not empty: leave it for that node's own restart


def tree(path: str) -> list[str]:
    """``path`` and every cgroup below it, deepest first."""
    out: list[str] = []
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        out.append(dirpath)
    return out or [path]


# ------------------------------------------------------- finding our own cgroups


def own_cgroups(text: str) -> tuple[dict[frozenset[str], str], str | None]:
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


def mounts(text: str) -> list[tuple[str, str, str, frozenset[str]]]:
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


def inside(mount_root: str, own: str, point: str) -> str | None:
    """Directory of cgroup ``own`` in a hierarchy mounted at ``point`` showing ``mount_root``."""
    if mount_root == "/":
        rel = own.lstrip("/")
    elif own == mount_root or own.startswith(mount_root.rstrip("/") + "/"):
        rel = own[len(mount_root):].lstrip("/")
    else:
        return None  # our cgroup is not visible through this mount
    return os.path.join(point, rel) if rel else point


def enable_v2(own: str, want: set[str]) -> tuple[set[str], str]:
    """Enable ``want`` for the children of ``own`` (v2); returns (enabled, why not the rest).

    A v2 cgroup that holds processes cannot hand controllers to its children,
    so a Spearlet alone in its cgroup first moves itself into a leaf below it
    (``<own>/spearlet``), the usual arrangement of a delegated cgroup.
    """
    sub = os.path.join(own, "cgroup.subtree_control")
    have = set((read(sub) or "").split())
    need = want - have
    if not need:
        return want, ""
    line = " ".join(f"+{c}" for c in sorted(need))
    try:
        write(sub, line)
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
        write(os.path.join(leaf, "cgroup.procs"), str(me))
        write(sub, line)
    except (OSError, CgroupError) as exc:
        return have & want, f"{first}; moving the Spearlet into {leaf} did not help: {exc}"
    log.info("moved the Spearlet into %s so that %s can enable %s for executions",
             leaf, own, ", ".join(sorted(need)))
    return want, ""


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
            pids = [p for d in tree(base) for p in h.procs(d)]
            if not pids:
                break
            killed += len(pids)
            h.kill(base)
            _wait_gone(pids)
        for d in tree(base):
            try:
                os.rmdir(d)
            except OSError:
                left.append(d)
    return killed, left


def _wait_gone(pids: list[int], wait: float = 2.0) -> None:
    end = time.monotonic() + wait
    while time.monotonic() < end:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if not alive:
            return
        time.sleep(0.01)
