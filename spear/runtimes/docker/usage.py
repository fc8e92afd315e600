"""CPU time and peak memory of a container, read from cgroups.

Best effort: when the engine is local and uses the ``cgroupfs`` cgroup
driver (:func:`detect_cgroups`), each container is placed under its own
cgroup parent ``/spear/<container-name>`` (:class:`Cgroup`) whose
hierarchical counters survive the container: CPU time is ``cpuacct.usage``
(v1) or ``cpu.stat usage_usec`` (v2) and peak memory is
``memory.max_usage_in_bytes`` (v1, reset before each exec in pooled mode) or
``memory.peak`` (v2, since the container started). Peak memory is the
cgroup's charge, page cache included. Elsewhere both are 0.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any

__all__ = ["CGROUP_PARENT", "CGROUP_ROOT", "Cgroup", "detect_cgroups"]

CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PARENT = "spear"


def detect_cgroups(api: Any) -> int | None:
    """The cgroup version (1 or 2) whose counters this host shows for the
    engine's containers, or None if usage cannot be measured (blocking)."""
    try:
        info = api.info()
    except Exception:
        return None
    if info.get("CgroupDriver") != "cgroupfs":
        return None
    version = 2 if str(info.get("CgroupVersion", "1")) == "2" else 1
    probe = os.path.join(CGROUP_ROOT, "cgroup.controllers" if version == 2 else "memory")
    return version if os.path.exists(probe) else None


class Cgroup:
    """The cgroup parent ``/spear/<name>`` that holds exactly one container."""

    def __init__(self, version: int, name: str) -> None:
        self.version = version
        self.name = name

    @property
    def parent(self) -> str:
        """The ``cgroup_parent`` to create the container with."""
        return f"/{CGROUP_PARENT}/{self.name}"

    def _path(self, controller: str, *parts: str) -> str:
        if self.version == 2:
            return os.path.join(CGROUP_ROOT, CGROUP_PARENT, self.name, *parts)
        return os.path.join(CGROUP_ROOT, controller, CGROUP_PARENT, self.name, *parts)

    @staticmethod
    def _read(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return None

    @staticmethod
    def _field(text: str | None, key: str) -> int | None:
        for line in (text or "").splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                try:
                    return int(v)
                except ValueError:
                    return None
        return None

    def cpu_ns(self) -> int | None:
        """CPU time used by everything ever in the cgroup, in nanoseconds."""
        if self.version == 2:
            usec = self._field(self._read(self._path("", "cpu.stat")), "usage_usec")
            return None if usec is None else usec * 1000
        text = self._read(self._path("cpuacct", "cpuacct.usage"))
        try:
            return int(text) if text else None
        except ValueError:
            return None

    def peak(self) -> int | None:
        """Peak memory charge in bytes (v1: since the last :meth:`reset_peak`)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        text = self._read(self._path("memory", name))
        try:
            return int(text) if text else None
        except ValueError:
            return None

    def reset_peak(self) -> None:
        """Start a new peak (v1 only: v2's reset is per open file, not used)."""
        if self.version == 1:
            try:
                with open(self._path("memory", "memory.max_usage_in_bytes"), "w") as f:
                    f.write("0")
            except OSError:
                pass

    def oom_kills(self, container_id: str) -> int | None:
        """How many processes the kernel's OOM killer ended in the container."""
        if self.version == 2:  # memory.events is hierarchical in v2
            return self._field(self._read(self._path("memory", "memory.events")), "oom_kill")
        text = self._read(self._path("memory", container_id, "memory.oom_control"))
        return self._field(text, "oom_kill")

    @staticmethod
    def rmdir_parent(name: str) -> None:
        """Remove the (empty) cgroup parent of the container called ``name``."""
        paths = glob.glob(os.path.join(CGROUP_ROOT, "*", CGROUP_PARENT, name))
        paths.append(os.path.join(CGROUP_ROOT, CGROUP_PARENT, name))
        for path in paths:
            for _ in range(20):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the container's own cgroup is still being removed
                    time.sleep(0.01)

    def remove(self) -> None:
        """Remove this cgroup parent (its container is gone)."""
        self.rmdir_parent(self.name)
