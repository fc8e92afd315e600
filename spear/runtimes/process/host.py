"""What the node gives every process it starts: the gate shell, cgroups, the record.

:func:`open_host` finds them once, at the first start of a function, and
logs at warning what is missing (a controller, cgroups altogether);
:func:`close_host` removes the runtime's cgroups and record at close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass, field

from ... import errors
from . import cgroups as cg
from .leftovers import TAG_VAR, Ledger
from .sandbox import SYSTEM_PATH, User

log = logging.getLogger(__name__)

#: what each missing controller costs, said once at start
_WITHOUT = {
    "memory": "memory_mb is enforced as RLIMIT_AS (address space) per process",
    "pids": "functions that set limits.pids fail; no default pids limit",
    "cpu": "functions that set limits.cpus fail",
    "cpuacct": "cpu_seconds counts each process alone (RLIMIT_CPU)",
}


@dataclass(eq=False)
class Host:
    """What this node gives every process it starts: the gate, cgroups, the record."""

    sh: str
    cgroups: cg.Cgroups | None
    ledger: Ledger | None
    #: without cgroups: uid whose processes are searched for an execution's tag
    sweep_uid: int | None = None
    #: groups whose directories are not removed yet (their processes are dying)
    pending: set = field(default_factory=set)
    serial: int = 0

    def new_group(self, name: str, cpu: bool) -> cg.Group | None:
        """The cgroup of a new execution of ``name`` (None on a node without cgroups)."""
        if self.cgroups is None:
            return None
        self.serial += 1
        try:
            return self.cgroups.group(f"{name}.{self.serial}", cpu=cpu)
        except cg.CgroupError as exc:
            log.warning("cannot create the cgroup of an execution of %s: %s", name, exc)
            raise errors.Unavailable(f"cannot create the execution's cgroup: {exc}") from None

    def why_no(self, controller: str) -> str:
        """Why an execution here cannot use ``controller`` (for the error of a limit)."""
        if self.cgroups is None:
            return "this node has no cgroups (see the warning at start)"
        return f"this node has no {controller} cgroup controller: {self.cgroups.missing.get(controller, '?')}"


def open_host(cgroups_mode: str, state_dir: str | os.PathLike | None,
              user: User | None) -> tuple[Host, str]:
    """Find the gate shell, the cgroups (unless ``cgroups_mode`` is "off") and
    open the record in ``state_dir``; returns the host and why there are no
    cgroups ("" when there are)."""
    sh = shutil.which("sh", path=SYSTEM_PATH)
    if sh is None:
        raise errors.Unavailable("the process runtime needs /bin/sh")
    groups = None
    if cgroups_mode == "off":
        why = "turned off ([runtimes.process] cgroups = \"off\")"
    else:
        groups, why = cg.Cgroups.detect()
    ledger = Ledger(state_dir) if state_dir is not None else None
    host = Host(sh=sh, cgroups=groups, ledger=ledger,
                sweep_uid=user.uid if user is not None else os.geteuid())
    if groups is not None:
        log.info("process executions get their own cgroups: %s", groups.describe())
        if ledger is not None:
            try:
                ledger.record_cgroups(groups.bases)
            except OSError as exc:
                log.warning("cannot record the cgroups in %s: %s", ledger.dir, exc)
        for c, missing in sorted(groups.missing.items()):
            log.warning("no %s cgroup controller for process executions (%s): %s",
                        c, missing, _WITHOUT[c])
    elif cgroups_mode != "required":
        log.warning(
            "process executions run WITHOUT cgroups (%s): limits fall back to rlimits "
            "(memory_mb: RLIMIT_AS per process; cpu_seconds: RLIMIT_CPU per process, the "
            "worker's own CPU for pooled calls); functions that set limits.pids or "
            "limits.cpus fail; processes that leave their session are found by the %s "
            "mark in their environment", why, TAG_VAR)
    return host, why


async def close_host(host: Host) -> None:
    """Remove the runtime's cgroups and record once the last processes are gone."""
    for _ in range(200):  # cgroups of processes that are still dying
        if not host.pending:
            break
        await asyncio.sleep(0.01)
    for group in list(host.pending):
        log.warning("cgroup %s still busy at close", group.path)
    if host.cgroups is not None:
        host.cgroups.close()
    if host.ledger is not None and not host.pending:
        host.ledger.close()
