"""One process of a function: spawned behind the gate, limited, reaped.

Every process starts in a new session (its own process group) behind a gate:
``sh -c 'read -r _; exec "$@"'``. While it waits for that line,
:meth:`Child.start` has :func:`.limits.apply` set its limits; only then does
it exec the command, in the same pid.

Nothing is left behind: when the group leader exits the group and the
execution's cgroup are SIGKILLed before the leader is reaped (the zombie pins
the group id, so the signal can never reach a stranger), and children are
reaped by ``wait4`` on a pidfd, which also yields exact CPU time and peak RSS
(the cgroup's figures where there is one). A descendant that leaves the
session (``setsid``, a double fork) is still in the cgroup; without cgroups
it is found by the ``SPEAR_SWEEP`` mark in its environment (see
:mod:`.leftovers`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import subprocess
import threading
from time import clock_gettime_ns

from ... import errors
from ...fsmodes import FUNCTION_UMASK
from ...protocol import ExecUsage
from . import limits
from .host import Host
from .leftovers import TAG_VAR, new_tag, sweep
from .limits import Bounds
from .region import REGION_VAR
from .streams import close_fd, grow_pipe

log = logging.getLogger(__name__)

#: The gate every process starts behind: ``sh`` blocks reading one line from fd 0
#: while the runtime applies rlimits and joins the process to its cgroups, then
#: exec's the command (same pid). A worker's gate also moves the protocol pipes
#: to fds 3 (requests) and 4 (replies), and points stdin at /dev/null and stdout
#: at the log stream. dash and bash read that line byte by byte: nothing more.
_GATE = 'read -r _ || exit 125; exec "$@"'
_GATE_WORKER = 'read -r _ || exit 125; exec 3<&0 4>&1 0</dev/null 1>&2; exec "$@"'
#: variables a shell adds to what it exports: unset unless the function set them
_SHELL_ADDS = ("PWD", "OLDPWD", "SHLVL")
REAP_WAIT = 5.0  # bound on waiting for a SIGKILLed process to be reaped


def cpu_clock(pid: int) -> int:
    """clockid of another process's CPU clock (Linux MAKE_PROCESS_CPUCLOCK)."""
    return ((~pid) << 3) | 2


def clock_ns(clock: int) -> int:
    """The value of a process CPU clock in ns; 0 once the process is gone."""
    try:
        return clock_gettime_ns(clock)
    except OSError:  # the process is gone
        return 0


class Child:
    """One process in its own session with pipes on fds 0-2, reaped by us.

    A worker may also get its region (``region_fd``, see :mod:`.region`):
    inherited under the same number, named in ``SPEAR_WORKER_REGION``.

    It starts behind the gate (:data:`_GATE`): :meth:`start` applies its
    limits — rlimits while it is still the root-run ``sh``, its cgroups — and
    only then lets it exec the command; a limit that cannot be applied kills
    it and fails the execution. We reap with ``wait4`` (for exact rusage) when
    its pidfd becomes readable, so asyncio's child watchers never see it.
    Before reaping we SIGKILL the whole group and everything in its cgroup (or,
    without cgroups, every process carrying its tag), so nothing the function
    started outlives it.
    """

    def __init__(
        self,
        host: Host,
        name: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        executable: str | None,
        bounds: Bounds,
        popen_kw: dict | None = None,
        *,
        worker: bool = False,
        region_fd: int = -1,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.bounds = bounds
        self.group = host.new_group(name, cpu=bounds.cpus is not None)
        self.tag = self.record = ""
        if host.cgroups is None:  # descendants are found by this mark instead
            self.tag = new_tag()
            env = {**env, TAG_VAR: self.tag}
        kw = dict(popen_kw or {})
        if region_fd >= 0:  # a worker's region (see .region): inherited under its own number
            env = {**env, REGION_VAR: str(region_fd)}
            kw["pass_fds"] = (region_fd,)
        rl = limits.rlimits(bounds)
        #: rlimits set by the forked child itself (the fork path), not by limits.apply
        self.pre_applied = bool(rl) and "user" in kw
        if self.pre_applied:
            kw["preexec_fn"] = functools.partial(limits.set_rlimits, tuple((r, v) for r, v, _ in rl))
        target = list(argv) if executable is None else [executable, *argv[1:]]
        script = _GATE_WORKER if worker else _GATE
        added = [v for v in _SHELL_ADDS if v not in env]
        if added:
            script = f"unset {' '.join(added)}; {script}"
        self.pid, self.stdin, self.stdout, self.stderr = self._spawn(
            name, argv[0], [host.sh, "-c", script, "spear", *target], env, cwd, kw)
        for fd in (self.stdin, self.stdout, self.stderr):
            os.set_blocking(fd, False)
        self.exited: asyncio.Future = self.loop.create_future()
        self.code: int | None = None
        self.rusage = None
        self.killed = False
        self.memory_mb: int | None = None
        self.cg_cpu: int | None = None
        self.cg_peak: int | None = None
        self.cg_oom = False
        if self.tag and host.ledger is not None:
            try:
                self.record = host.ledger.started(self.pid, self.tag)
            except OSError as exc:
                log.warning("cannot record pid %d in %s: %s", self.pid, host.ledger.dir, exc)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux)
            self._pidfd = -1
            threading.Thread(target=self._wait_thread, daemon=True).start()
        else:
            self.loop.add_reader(self._pidfd, self._on_pidfd)

    def _spawn(self, name: str, command: str, args: list[str], env: dict[str, str], cwd: str,
               kw: dict) -> tuple[int, int, int, int]:
        """Start the gate; returns (pid, stdin, stdout, stderr), the errors typed."""
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        grow_pipe(in_w)
        grow_pipe(out_w)
        try:
            proc = subprocess.Popen(
                args,
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                # the Spearlet's umask (077) keeps its own files private; a function
                # writes for its own users, so its process starts with the usual one
                umask=FUNCTION_UMASK,
                **kw,
            )
        except BaseException as exc:
            for fd in (in_w, out_r, err_r):
                close_fd(fd)
            self._drop_group()
            if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError)):
                raise errors.InvalidArgument(f"cannot start {command!r}: {exc.strerror}") from exc
            if isinstance(exc, OSError):
                raise errors.ResourceExhausted(f"cannot start {command!r}: {exc}") from exc
            if isinstance(exc, subprocess.SubprocessError):  # preexec_fn: setrlimit failed
                log.warning("cannot apply the rlimits of %s: %s", name, exc)
                raise errors.Unavailable(f"cannot apply the limits of {name}: {exc}") from exc
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                close_fd(fd)
        # We reap the child ourselves (wait4); a Popen that believes it is still
        # running would waitpid() it from subprocess._cleanup and steal the status.
        proc.returncode = 0
        return proc.pid, in_w, out_r, err_r

    def start(self) -> None:
        """Apply every limit while the gate holds the process (:func:`.limits.apply`),
        then let it run. A limit that cannot be applied kills it and raises
        ``Unavailable`` naming the limit."""
        limits.apply(self)
        os.write(self.stdin, b"\n")  # the gate's line: the pipe is empty, this cannot block

    def cpu_ns(self) -> int:
        """CPU time of the execution so far: its cgroup's, else the process's own clock."""
        if self.group is not None:
            ns = self.group.cpu_ns()
            if ns is not None:
                return ns
        return clock_ns(cpu_clock(self.pid))

    def close_stdin(self) -> None:
        """Close our end of the child's stdin once (fd numbers get reused)."""
        fd, self.stdin = self.stdin, -1
        if fd >= 0:
            self.loop.remove_writer(fd)
            close_fd(fd)

    # -- death
    def kill(self) -> None:
        """SIGKILL the whole process group (idempotent)."""
        if self.exited.done():
            return  # the group was already killed just before reaping
        self.killed = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait(self, timeout: float = REAP_WAIT) -> None:
        """Wait (bounded, shielded from cancellation) until the child is reaped."""
        if not self.exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            except asyncio.TimeoutError:
                log.warning("pid %d not reaped %gs after SIGKILL", self.pid, timeout)

    def _kill_all(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # leftovers; the zombie pins the pgid
        except (ProcessLookupError, PermissionError):
            pass
        if self.group is not None:  # those that left the session too
            self.group.kill()

    def _on_pidfd(self) -> None:
        self._kill_all()
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # somebody else reaped it
            pid, status, rusage = self.pid, None, None
        if pid == 0:
            return
        self.loop.remove_reader(self._pidfd)
        close_fd(self._pidfd)
        self._pidfd = -1
        self._finish(status, rusage)

    def _wait_thread(self) -> None:
        try:
            _, status, rusage = os.wait4(self.pid, 0)
        except ChildProcessError:
            status, rusage = None, None
        try:
            self.loop.call_soon_threadsafe(self._finish, status, rusage, True)
        except RuntimeError:  # loop closed
            pass

    def _finish(self, status, rusage, late_group_kill: bool = False) -> None:
        if late_group_kill:
            self._kill_all()
        self.code = os.waitstatus_to_exitcode(status) if status is not None else None
        self.rusage = rusage
        self._release()
        if not self.exited.done():
            self.exited.set_result(self.code)

    def _release(self) -> None:
        """After the reap: read the cgroup's figures and remove it; sweep by tag; unrecord."""
        group = self.group
        if group is not None:
            self.cg_cpu = group.cpu_ns()
            self.cg_peak = group.peak()
            self.cg_oom = group.oom_killed()
            self._drop_group()
        if self.tag:
            try:
                sweep({self.tag}, self.host.sweep_uid, skip=self.pid)
            except Exception:  # pragma: no cover - a sweep must not break the reap
                log.exception("sweeping for the descendants of pid %d", self.pid)
            if self.record and self.host.ledger is not None:
                self.host.ledger.ended(self.record)

    def _drop_group(self, attempt: int = 0) -> None:
        group = self.group
        if group is None:
            return
        if attempt:
            group.kill()
        if not group.remove_now():
            self.host.pending.discard(group)
            self.group = None
            return
        self.host.pending.add(group)
        if attempt >= 200:
            log.warning("cgroup %s still busy; left for the next start to remove", group.path)
            self.host.pending.discard(group)
            self.group = None
            return
        try:
            self.loop.call_later(0.005 * min(attempt + 1, 10), self._drop_group, attempt + 1)
        except RuntimeError:  # loop closed
            pass

    def usage(self) -> ExecUsage:
        """CPU time and peak memory of the reaped execution (the cgroup's figures where there are)."""
        ru = self.rusage
        cpu = ru.ru_utime + ru.ru_stime if ru is not None else 0.0
        peak = ru.ru_maxrss * 1024 if ru is not None else 0
        if self.cg_cpu is not None:  # the whole execution, not only its first process
            cpu = self.cg_cpu / 1e9
        if self.cg_peak:
            peak = self.cg_peak
        return ExecUsage(cpu_time=cpu, peak_memory=peak)
