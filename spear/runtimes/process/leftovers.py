"""What the process runtime started, recorded so that nothing outlives a crash.

A Spearlet that is SIGKILLed cannot end the processes of its functions; they
are re-parented to init and keep running. The process runtime therefore keeps
a record in the node's data directory (``<data>/process/``), one directory per
run of the runtime, ``run-<pid>-<start time>``, holding:

* ``cgroups``: the runtime's cgroup directories, one per line (see
  :mod:`.cgroups`), written once before the first process starts;
* ``children/<pid>-<start time>-<tag>``: one empty file per process started on
  a node without cgroups, removed when that process is reaped. ``tag`` is the
  value of ``SPEAR_SWEEP`` in the process's environment, which its
  descendants inherit.

:func:`reap_leftovers` runs when a Spearlet starts: for every record of a run
whose process is gone, it kills everything in the recorded cgroups and every
recorded process (checked against its start time, so a recycled pid is never
hit) with its process group and whatever carries its tag, then deletes the
record. :func:`sweep` is the same tag search, used after every execution on
nodes without cgroups, where it finds descendants that left the session.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
from pathlib import Path

from . import cgroupfs

log = logging.getLogger(__name__)

#: the environment variable that marks a process's descendants (nodes without cgroups)
TAG_VAR = "SPEAR_SWEEP"


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    try:
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def new_tag() -> str:
    """A fresh value for :data:`TAG_VAR`."""
    return secrets.token_hex(12)


def sweep(tags: set[str], uid: int | None = None, *, skip: int = 0) -> int:
    """SIGKILL every process whose environment carries one of ``tags``; returns how many.

    ``uid``: look only at processes of that user (cheaper). Processes whose
    environment we may not read are passed over.
    """
    if not tags:
        return 0
    needles = [f"{TAG_VAR}={t}".encode() for t in tags]
    me = os.getpid()
    killed = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for name in entries:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in (me, skip):
            continue
        if uid is not None:
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
            except OSError:
                continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if not env:
            continue
        items = env.split(b"\0")
        if any(n in items for n in needles):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed


class Ledger:
    """The record of one run of the process runtime (created on first use)."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.state_dir = Path(state_dir)
        me = os.getpid()
        self.dir = self.state_dir / f"run-{me}-{start_time(me) or 0}"
        self._children: Path | None = None

    def _ready(self) -> Path:
        if self._children is None:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.dir.mkdir(mode=0o700, exist_ok=True)
            children = self.dir / "children"
            children.mkdir(mode=0o700, exist_ok=True)
            self._children = children
        return self._children

    def record_cgroups(self, paths: list[str]) -> None:
        """Record the runtime's cgroup directories (replacing an earlier record)."""
        self._ready()
        tmp = self.dir / "cgroups.tmp"
        tmp.write_text("".join(p + "\n" for p in paths))
        os.replace(tmp, self.dir / "cgroups")

    def started(self, pid: int, tag: str) -> str:
        """Record a process; returns the name to pass to :meth:`ended`."""
        name = f"{pid}-{start_time(pid) or 0}-{tag}"
        fd = os.open(self._ready() / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        return name

    def ended(self, name: str) -> None:
        """Forget a process recorded by :meth:`started` (it was reaped)."""
        if self._children is not None:
            try:
                os.unlink(self._children / name)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Remove this run's record (nothing of it is left running)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self._children = None


def _alive(run: str) -> bool:
    """Whether the process that wrote record ``run-<pid>-<start>`` is still running."""
    try:
        _, pid, start = run.split("-", 2)
        return start_time(int(pid)) == int(start)
    except ValueError:
        return False


def reap_leftovers(state_dir: str | os.PathLike) -> int:
    """End what earlier, dead runs recorded under ``state_dir``; returns processes killed."""
    state = Path(state_dir)
    try:
        runs = sorted(p for p in state.iterdir() if p.name.startswith("run-") and p.is_dir())
    except OSError:
        return 0
    killed = 0
    for run in runs:
        if _alive(run.name):
            continue
        paths = []
        try:
            paths = [line for line in (run / "cgroups").read_text().splitlines() if line]
        except OSError:
            pass
        if paths:
            n, left = cgroupfs.reap(paths)
            killed += n
            for path in left:
                log.warning("could not remove the cgroup %s left by an earlier run", path)
        tags = set()
        try:
            entries = list((run / "children").iterdir())
        except OSError:
            entries = []
        for entry in entries:
            try:
                pid_s, start_s, tag = entry.name.split("-", 2)
                pid, start = int(pid_s), int(start_s)
            except ValueError:
                continue
            tags.add(tag)
            if start and start_time(pid) == start:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                killed += 1
        killed += sweep(tags)
        shutil.rmtree(run, ignore_errors=True)
    return killed
