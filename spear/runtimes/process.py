"""The ``process`` runtime: functions that are operating-system processes.

Three kinds of function, all chosen by the :class:`~spear.protocol.FunctionSpec`:

* **one-shot** (``command``, ``mode="oneshot"``): every invocation starts
  ``command + args``; the input goes to stdin, the output is stdout, stderr is
  streamed to ``on_log`` as it arrives, a non-zero exit is a ``FunctionError``.
* **pooled** (``command``, ``mode="pooled"``): one long-lived worker per
  instance answers many invocations over the framed pipe protocol described
  in ``docs/worker-protocol.md`` (4-byte big-endian length + body on
  stdin/stdout; stderr is the log stream).
* **Python handler** (``handler="module:function"``): always pooled, served by
  :mod:`spear.runtimes.pyworker`. The module is looked up in the working
  directory first, then ``PYTHONPATH`` from ``spec.env``. If ``command`` is
  also given it is the interpreter to use (e.g. ``["/venv/bin/python"]``).

Every process starts in a new session (its own process group) with an
environment built from ``base_env`` plus ``spec.env`` only, never the
Spearlet's own, and in ``spec.workdir`` or a fresh temporary directory per
instance (removed on destroy). Limits:

* ``timeout``: the whole process group is killed with SIGKILL, the call
  raises ``DeadlineExceeded`` and a pooled worker is not reused;
* ``memory_mb``: ``RLIMIT_AS`` (address space, applied with ``prlimit`` right
  after spawn, so a native program that maps more than the limit in its very
  first microseconds is not caught). A Python ``MemoryError`` becomes
  ``ResourceExhausted``; so does a native process that dies with
  out-of-memory signs in its stderr tail or is SIGKILLed by someone else
  (the kernel OOM killer). Runtimes that reserve huge address ranges (Go,
  the JVM) need a generous limit;
* ``cpu_seconds``: ``RLIMIT_CPU`` in whole seconds (SIGXCPU, then SIGKILL
  for one-shot); for a pooled worker the soft limit is moved before each call
  to "CPU used so far + cpu_seconds". Hitting it raises ``ResourceExhausted``.

Nothing is left behind: when the group leader exits the group is SIGKILLed
before the leader is reaped (the zombie pins the group id, so the signal can
never reach a stranger), and children are reaped by ``wait4`` on a pidfd,
which also yields exact CPU time and peak RSS for one-shot calls. A
descendant that leaves the group on purpose (``setsid``) escapes; use the
docker runtime for hostile code.

Usage of a pooled call is the worker's CPU clock delta (``clock_gettime`` on
its process CPU clock: all threads, nanoseconds). Its peak memory is the
worker's peak RSS (``VmHWM``, reset through ``/proc/<pid>/clear_refs``) for
calls that used at least 0.5 ms of CPU, and its RSS after the call (``statm``)
for shorter ones: reading and resetting the peak costs ~25 us, more than the
rest of a warm call, and a call that short cannot touch much memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from time import clock_gettime_ns
from dataclasses import dataclass, field

from .. import errors
from ..protocol import ExecUsage, FunctionSpec, Limits
from .base import Instance, LogSink, Outcome, Prepared, Runtime

log = logging.getLogger(__name__)

#: The Python handler worker, run by path so that it never imports Spear.
PYWORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyworker.py")
#: Version of the framed worker protocol, given to workers in SPEAR_WORKER_PROTOCOL.
WORKER_PROTOCOL = 1
#: Environment a function starts from when the Spearlet passes none.
DEFAULT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
#: Largest reply frame a worker may send, and largest one-shot output.
MAX_FRAME = 1 << 30

STATUS_OK, STATUS_ERROR, STATUS_EXHAUSTED = 0, 1, 2

_TAIL = 4096
_GRACE = 0.5  # seconds a pooled worker gets to exit on EOF before SIGKILL
_REAP_WAIT = 5.0  # bound on waiting for a SIGKILLed process to be reaped
_PRECISE_NS = 500_000  # calls using this much CPU get their exact peak RSS
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_U32 = struct.Struct(">I")
_EMPTY_HEADER = b"\0\0\0\0"
_HANDLER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_OOM_SIGNS = re.compile(
    rb"MemoryError|Cannot allocate memory|out of memory|bad_alloc|ENOMEM|"
    rb"memory allocation failed|failed to allocate|allocation failed",
    re.IGNORECASE,
)


# --------------------------------------------------------------------- helpers


def _cpu_clock(pid: int) -> int:
    """clockid of another process's CPU clock (Linux MAKE_PROCESS_CPUCLOCK)."""
    return ((~pid) << 3) | 2


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _open_proc(pid: int, name: str, flags: int) -> int:
    try:
        return os.open(f"/proc/{pid}/{name}", flags | os.O_CLOEXEC)
    except OSError:  # no procfs, or not allowed: usage figures become 0
        return -1


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (status unknown)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _failure(
    code: int | None,
    tail: bytes,
    *,
    memory_limited: bool,
    cpu_limited: bool,
    killed_by_us: bool,
    prefix: str = "process failed",
) -> errors.SpearError:
    """Type a process that died on its own (not by our timeout)."""
    text = tail[-2048:].decode("utf-8", "replace")
    details = {"exit_code": code, "stderr": text}
    what = _describe_exit(code)
    sig = -code if code is not None and code < 0 else 0
    if cpu_limited and sig in (signal.SIGXCPU, signal.SIGKILL) and not killed_by_us:
        return errors.ResourceExhausted(f"cpu limit ({what})", details=details)
    if memory_limited and _OOM_SIGNS.search(tail):
        return errors.ResourceExhausted(f"memory limit ({what})", details=details)
    if sig == signal.SIGKILL and not killed_by_us:
        return errors.ResourceExhausted(f"{what} (out of memory?)", details=details)
    return errors.FunctionError(f"{prefix}: {what}", details=details)


class _Tail:
    """The last few KiB of a byte stream (stderr, for error details)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > 2 * _TAIL:
            del self.buf[: len(self.buf) - _TAIL]

    def get(self) -> bytes:
        return bytes(self.buf[-_TAIL:])


def _emit(sink: LogSink | None, chunk: bytes) -> None:
    if sink is None:
        return
    try:
        sink(chunk)
    except Exception:  # a broken log sink must not break the invocation
        log.exception("on_log callback failed")


# ----------------------------------------------------------------- the child


class _Child:
    """One process in its own session with pipes on fds 0-2, reaped by us.

    We reap with ``wait4`` (for exact rusage) when its pidfd becomes readable,
    so asyncio's child watchers never see it. Before reaping we SIGKILL the
    whole group, so nothing the function started outlives it.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        executable: str | None,
        memory_mb: int | None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = subprocess.Popen(
                argv,
                executable=executable,
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException as exc:
            for fd in (in_w, out_r, err_r):
                _close(fd)
            if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError)):
                raise errors.InvalidArgument(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
            if isinstance(exc, OSError):
                raise errors.ResourceExhausted(f"cannot start {argv[0]!r}: {exc}") from exc
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                _close(fd)
        # We reap the child ourselves (wait4); a Popen that believes it is still
        # running would waitpid() it from subprocess._cleanup and steal the status.
        proc.returncode = 0
        self.pid = proc.pid
        self.stdin, self.stdout, self.stderr = in_w, out_r, err_r
        for fd in (in_w, out_r, err_r):
            os.set_blocking(fd, False)
        self.exited: asyncio.Future = self.loop.create_future()
        self.code: int | None = None
        self.rusage = None
        self.killed = False
        self.memory_mb: int | None = None
        if memory_mb:
            self.set_memory(memory_mb)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux)
            self._pidfd = -1
            threading.Thread(target=self._wait_thread, daemon=True).start()
        else:
            self.loop.add_reader(self._pidfd, self._on_pidfd)

    # -- limits
    def set_memory(self, memory_mb: int) -> None:
        limit = memory_mb * 1024 * 1024
        try:
            resource.prlimit(self.pid, resource.RLIMIT_AS, (limit, limit))
            self.memory_mb = memory_mb
        except (ProcessLookupError, PermissionError, ValueError) as exc:
            log.debug("prlimit(AS) on %d failed: %s", self.pid, exc)

    def set_cpu(self, soft: float, hard: float) -> None:
        try:
            resource.prlimit(self.pid, resource.RLIMIT_CPU, (soft, hard))
        except (ProcessLookupError, PermissionError, ValueError) as exc:
            log.debug("prlimit(CPU) on %d failed: %s", self.pid, exc)

    def close_stdin(self) -> None:
        """Close our end of the child's stdin once (fd numbers get reused)."""
        fd, self.stdin = self.stdin, -1
        if fd >= 0:
            self.loop.remove_writer(fd)
            _close(fd)

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

    async def wait(self, timeout: float = _REAP_WAIT) -> None:
        """Wait (bounded, shielded from cancellation) until the child is reaped."""
        if not self.exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            except asyncio.TimeoutError:
                log.warning("pid %d not reaped %gs after SIGKILL", self.pid, timeout)

    def _on_pidfd(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # leftovers; the zombie pins the pgid
        except (ProcessLookupError, PermissionError):
            pass
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # somebody else reaped it
            pid, status, rusage = self.pid, None, None
        if pid == 0:
            return
        self.loop.remove_reader(self._pidfd)
        _close(self._pidfd)
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
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.code = os.waitstatus_to_exitcode(status) if status is not None else None
        self.rusage = rusage
        if not self.exited.done():
            self.exited.set_result(self.code)

    def usage(self) -> ExecUsage:
        ru = self.rusage
        if ru is None:
            return ExecUsage()
        return ExecUsage(cpu_time=ru.ru_utime + ru.ru_stime, peak_memory=ru.ru_maxrss * 1024)


# --------------------------------------------------------------------- plans


@dataclass
class _Plan:
    """What ``prepare`` resolved: argv, environment, working directory, mode."""

    argv: list[str]
    executable: str | None
    env: dict[str, str]
    workdir: str
    pooled: bool
    limits: Limits  # the spec's own, used where the call's limits say None


@dataclass(eq=False)
class _OneShot:
    """Handle of a one-shot instance: just where and how to start each call."""

    plan: _Plan
    cwd: str
    tmpdir: str | None
    running: set = field(default_factory=set)


# ------------------------------------------------------------------ one-shot


async def _run_oneshot(
    h: _OneShot,
    data: bytes,
    args: list,
    limits: Limits,
    on_log: LogSink | None,
    timeout: float,
    memory_mb: int,
) -> Outcome:
    plan = h.plan
    argv = plan.argv + [a if isinstance(a, str) else json.dumps(a) for a in args]
    child = _Child(argv, plan.env, h.cwd, plan.executable, memory_mb)
    loop = child.loop
    h.running.add(child)
    if limits.cpu_seconds:
        secs = max(1, math.ceil(limits.cpu_seconds))
        child.set_cpu(secs, secs + 1)
    out: list[bytes] = []
    size = 0
    tail = _Tail()
    eof = loop.create_future()
    reading = {child.stdout, child.stderr}
    pending = memoryview(data)

    def closed(fd: int) -> None:
        loop.remove_reader(fd)
        _close(fd)
        reading.discard(fd)
        if not reading and not eof.done():
            eof.set_result(None)

    def on_stdout() -> None:
        nonlocal size
        try:
            chunk = os.read(child.stdout, 1 << 18)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            closed(child.stdout)
            return
        size += len(chunk)
        out.append(chunk)
        if size > MAX_FRAME:
            closed(child.stdout)
            child.kill()

    def on_stderr() -> None:
        try:
            chunk = os.read(child.stderr, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            tail.add(chunk)
            _emit(on_log, chunk)
        else:
            closed(child.stderr)

    def feed() -> None:
        nonlocal pending
        try:
            while pending:
                pending = pending[os.write(child.stdin, pending) :]
        except BlockingIOError:
            return
        except OSError:  # the command does not read all of its input: fine
            pending = memoryview(b"")
        child.close_stdin()

    loop.add_reader(child.stdout, on_stdout)
    loop.add_reader(child.stderr, on_stderr)
    feed()
    if pending:
        loop.add_writer(child.stdin, feed)

    timed_out = False
    try:
        try:  # shielded: a cancel or timeout must not cancel `exited` itself
            await asyncio.wait_for(asyncio.shield(child.exited), timeout)
        except asyncio.TimeoutError:
            timed_out = True
            child.kill()
            await child.wait()
        # The group is dead now; EOF follows unless a setsid escapee holds a pipe.
        try:
            await asyncio.wait_for(asyncio.shield(eof), 2.0)
        except asyncio.TimeoutError:
            log.warning("pid %d: output pipes still open after exit", child.pid)
    except asyncio.CancelledError:
        child.kill()
        await child.wait()
        raise
    finally:
        h.running.discard(child)
        child.close_stdin()
        for fd in list(reading):
            closed(fd)
    usage = child.usage()
    if size > MAX_FRAME:
        raise errors.ResourceExhausted(f"output larger than {MAX_FRAME} bytes")
    if timed_out:
        stderr = tail.get()[-2048:].decode("utf-8", "replace")
        raise errors.DeadlineExceeded(
            f"timed out after {timeout:g}s", details={"timeout": timeout, "stderr": stderr}
        )
    if child.code != 0:
        exc = _failure(
            child.code,
            tail.get(),
            memory_limited=bool(memory_mb),
            cpu_limited=bool(limits.cpu_seconds),
            killed_by_us=child.killed,
        )
        exc.details["cpu_time"] = usage.cpu_time
        exc.details["peak_memory"] = usage.peak_memory
        raise exc
    return Outcome(output=b"".join(out), exit_code=0, usage=usage)


# ------------------------------------------------------------------- pooled


class _Worker:
    """A long-lived worker process speaking the framed pipe protocol."""

    def __init__(self, plan: _Plan, cwd: str, tmpdir: str | None) -> None:
        self.plan = plan
        self.cwd = cwd
        self.tmpdir = tmpdir
        self.child: _Child | None = None
        self.lock = asyncio.Lock()
        self.sink: LogSink | None = None
        self.tail = _Tail()
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None  # the ready frame or a reply
        self.timed_out = False
        self.reason: errors.SpearError | None = None  # why we killed it
        self.cpu_limited = False
        self.cpu_soft = resource.RLIM_INFINITY
        self._status_fd = self._clear_fd = self._statm_fd = -1
        self._clock = 0

    @property
    def alive(self) -> bool:
        return self.child is not None and not self.child.exited.done() and not self.child.killed

    @property
    def pid(self) -> int:
        return self.child.pid if self.child else 0

    async def start(self, memory_mb: int, timeout: float) -> None:
        plan = self.plan
        child = self.child = _Child(plan.argv, plan.env, self.cwd, plan.executable, memory_mb)
        loop = child.loop
        self._clock = _cpu_clock(child.pid)
        self._statm_fd = _open_proc(child.pid, "statm", os.O_RDONLY)
        self._status_fd = _open_proc(child.pid, "status", os.O_RDONLY)
        self._clear_fd = _open_proc(child.pid, "clear_refs", os.O_WRONLY)
        loop.add_reader(child.stdout, self._on_stdout)
        loop.add_reader(child.stderr, self._on_stderr)
        child.exited.add_done_callback(self._on_exit)
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout, self._on_timeout)
        try:
            status, payload = await self.waiter
        except errors.DeadlineExceeded as exc:
            raise errors.DeadlineExceeded(f"worker not ready after {timeout:g}s") from exc
        except BaseException:
            await self.stop(grace=0)
            raise
        finally:
            timer.cancel()
            self.waiter = None
        if status == STATUS_OK:
            self._memory(precise=True)  # start the peak window after the imports
            return
        await self.stop(grace=0)
        message = payload.decode("utf-8", "replace") or f"status {status}"
        stderr = self.tail.get()[-2048:].decode("utf-8", "replace")
        raise errors.FunctionError(f"worker failed to start: {message}", details={"stderr": stderr})

    # -- I/O callbacks
    def _on_stdout(self) -> bool:
        """Read once and dispatch whole frames; False once nothing more can come now."""
        try:
            chunk = os.read(self.child.stdout, 1 << 18)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self._on_eof()
            return False
        buf = self.buf
        if not buf and len(chunk) >= 5 and _U32.unpack_from(chunk)[0] + 4 == len(chunk):
            self._on_frame(chunk[4], chunk[5:])  # the usual case: one whole frame
            return True
        buf += chunk
        while len(buf) >= 4:
            (size,) = _U32.unpack_from(buf)
            if size < 1 or size > MAX_FRAME:
                self._violation(f"bad frame length {size}")
                return False
            if len(buf) < 4 + size:
                break
            status = buf[4]
            with memoryview(buf) as view:
                payload = bytes(view[5 : 4 + size])
            del buf[: 4 + size]
            self._on_frame(status, payload)
        return True

    def _on_frame(self, status: int, payload: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self._violation("reply frame without a request")
            return
        self._drain_stderr()  # logs written before the reply belong to this call
        waiter.set_result((status, payload))

    def _on_stderr(self) -> None:
        try:
            chunk = os.read(self.child.stderr, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._log(chunk)
        else:
            self.child.loop.remove_reader(self.child.stderr)

    def _drain_stderr(self) -> None:
        fd = self.child.stderr
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:  # BlockingIOError: nothing pending; EBADF: closed
                return
            if not chunk:
                return
            self._log(chunk)

    def _log(self, chunk: bytes) -> None:
        self.tail.add(chunk)
        if self.sink is not None:
            _emit(self.sink, chunk)
        else:
            log.debug("worker %d: %r", self.pid, chunk[:512])

    def _on_eof(self) -> None:
        child = self.child
        child.loop.remove_reader(child.stdout)
        if not child.exited.done():
            # A worker that closed its output is useless; give it a moment to
            # exit on its own (so its status tells why), then kill it.
            child.loop.call_later(_GRACE, child.kill)

    def _violation(self, what: str) -> None:
        log.warning("worker %d broke the protocol: %s", self.pid, what)
        if self.reason is None:
            self.reason = errors.FunctionError(f"worker broke the protocol: {what}")
        self.child.kill()

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.child.kill()
        # A process stuck in the kernel may take long to die: do not hang the call.
        self.child.loop.call_later(_REAP_WAIT, self._give_up, self.waiter)

    @staticmethod
    def _give_up(waiter: asyncio.Future | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_exception(errors.DeadlineExceeded("timed out; the process is not dead yet"))

    def _on_exit(self, _fut: asyncio.Future) -> None:
        child = self.child
        loop = child.loop
        try:  # take what the worker wrote before dying
            while self._on_stdout():
                pass
            self._drain_stderr()
        except Exception:  # pragma: no cover - defensive
            log.exception("draining worker %d", child.pid)
        for fd in (child.stdout, child.stderr):
            loop.remove_reader(fd)
            _close(fd)
        child.stdout = child.stderr = -1
        child.close_stdin()
        for fd in (self._status_fd, self._clear_fd, self._statm_fd):
            _close(fd)
        self._status_fd = self._clear_fd = self._statm_fd = -1
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.timed_out:
                exc: errors.SpearError = errors.DeadlineExceeded("timed out")
            elif self.reason is not None:
                exc = self.reason
            else:
                exc = _failure(
                    child.code,
                    self.tail.get(),
                    memory_limited=bool(child.memory_mb),
                    cpu_limited=self.cpu_limited,
                    killed_by_us=child.killed,
                    prefix="worker died",
                )
            waiter.set_exception(exc)

    # -- requests
    def _send(self, head: bytes, data: bytes) -> None:
        fd = self.child.stdin
        try:
            n = os.writev(fd, (head, data)) if data else os.write(fd, head)
        except BlockingIOError:
            n = 0
        except OSError:
            self.reason = errors.FunctionError("worker stopped reading its input")
            self.child.kill()
            return
        if n < len(head) + len(data):
            rest = memoryview(head + data)[n:]
            loop = self.child.loop

            def on_writable() -> None:
                nonlocal rest
                try:
                    while rest:
                        rest = rest[os.write(fd, rest) :]
                except BlockingIOError:
                    return
                except OSError:
                    self.reason = errors.FunctionError("worker stopped reading its input")
                    self.child.kill()
                loop.remove_writer(fd)

            loop.add_writer(fd, on_writable)

    def _memory(self, precise: bool) -> int:
        """Peak RSS since the last reset (then reset it), or just the current RSS."""
        try:
            if precise and self._status_fd >= 0 and self._clear_fd >= 0:
                text = os.pread(self._status_fd, 4096, 0)
                i = text.index(b"VmHWM:")
                os.write(self._clear_fd, b"5")
                return int(text[i + 6 : text.index(b"kB", i)]) * 1024
            if self._statm_fd >= 0:
                return int(os.pread(self._statm_fd, 128, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def _apply_limits(self, memory_mb: int, cpu_seconds: float | None) -> None:
        child = self.child
        if memory_mb != child.memory_mb:
            child.set_memory(memory_mb)
        if cpu_seconds:
            soft = math.ceil(_clock_ns(self._clock) / 1e9 + cpu_seconds)
            if soft != self.cpu_soft:
                child.set_cpu(soft, resource.RLIM_INFINITY)
                self.cpu_soft = soft
            self.cpu_limited = True
        elif self.cpu_limited:
            child.set_cpu(resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            self.cpu_soft = resource.RLIM_INFINITY
            self.cpu_limited = False

    async def call(
        self,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None,
        timeout: float,
        memory_mb: int,
    ) -> Outcome:
        async with self.lock:
            if not self.alive:
                raise errors.Unavailable("the worker has stopped")
            if args:
                try:
                    header = json.dumps({"args": args}, separators=(",", ":")).encode()
                except (TypeError, ValueError) as exc:
                    raise errors.InvalidArgument(f"args must be JSON-serialisable: {exc}") from None
                head = _U32.pack(4 + len(header) + len(data)) + _U32.pack(len(header)) + header
            else:
                head = _U32.pack(4 + len(data)) + _EMPTY_HEADER
            if memory_mb != self.child.memory_mb or limits.cpu_seconds or self.cpu_limited:
                self._apply_limits(memory_mb, limits.cpu_seconds)
            loop = self.child.loop
            clock = self._clock
            cpu0 = _clock_ns(clock)
            self.waiter = waiter = loop.create_future()
            self.sink = on_log
            self._send(head, data)
            timer = loop.call_later(timeout, self._on_timeout)
            try:
                status, payload = await waiter
            except errors.DeadlineExceeded:
                await self.child.wait()
                raise errors.DeadlineExceeded(
                    f"timed out after {timeout:g}s", details={"timeout": timeout}
                ) from None
            except asyncio.CancelledError:
                self.child.kill()
                await self.child.wait()
                raise
            except errors.SpearError:
                await self.child.wait()
                raise
            finally:
                timer.cancel()
                self.waiter = None
                self.sink = None
            cpu = _clock_ns(clock) - cpu0
            usage = ExecUsage(cpu_time=cpu / 1e9, peak_memory=self._memory(cpu >= _PRECISE_NS))
        if status == STATUS_OK:
            return Outcome(output=payload, exit_code=None, usage=usage)
        message = payload.decode("utf-8", "replace")
        details: dict = {"error": message}
        kind, sep, rest = message.partition(": ")
        if kind.replace(".", "").isidentifier() and (sep or kind == message):
            details["type"], details["message"] = kind, rest
        if status == STATUS_EXHAUSTED:
            raise errors.ResourceExhausted(f"memory limit: {message}", details=details)
        raise errors.FunctionError(message or f"worker error status {status}", details=details)

    async def stop(self, grace: float = _GRACE) -> None:
        """Close the worker's input, wait ``grace`` s for it to exit, then SIGKILL."""
        child = self.child
        if child is None:
            return
        if not child.exited.done():
            try:
                if grace > 0 and not child.killed:
                    child.close_stdin()  # EOF: a well-behaved worker exits now
                    await asyncio.wait_for(asyncio.shield(child.exited), grace)
            except asyncio.TimeoutError:
                pass
            finally:
                child.kill()  # also on cancel; the pidfd callback still reaps it
            await child.wait()


def _clock_ns(clock: int) -> int:
    try:
        return clock_gettime_ns(clock)
    except OSError:  # the process is gone
        return 0


# ------------------------------------------------------------------ runtime


class ProcessRuntime(Runtime):
    """Run functions as processes: one-shot commands, pooled workers, Python handlers."""

    name = "process"

    def __init__(
        self,
        *,
        default_timeout: float = 30.0,
        default_memory_mb: int = 512,
        python: str = sys.executable,
        base_env: dict[str, str] | None = None,
    ) -> None:
        self.default_timeout = default_timeout
        self.default_memory_mb = default_memory_mb
        self.python = python
        self.base_env = dict(DEFAULT_ENV if base_env is None else base_env)
        self._workers: set[_Worker] = set()
        self._oneshots: set[_OneShot] = set()

    def available(self) -> tuple[bool, str]:
        if os.name != "posix":
            return False, "the process runtime needs a POSIX system"
        return True, ""

    # -- prepare
    async def prepare(self, spec: FunctionSpec) -> Prepared:
        if spec.runtime != self.name:
            raise errors.InvalidArgument(f"{spec.name}: runtime is {spec.runtime!r}, not 'process'")
        handler = spec.handler.strip()
        if handler:
            if not _HANDLER_RE.match(handler):
                raise errors.InvalidArgument(
                    f"{spec.name}: handler must look like module:function, got {handler!r}"
                )
            argv = [*(spec.command or [self.python]), PYWORKER, handler]
            pooled = True
        elif spec.command:
            argv = list(spec.command)
            pooled = spec.mode == "pooled"
        else:
            raise errors.InvalidArgument(f"{spec.name}: a process function needs a command or a handler")
        if not argv[0] or any("\0" in a for a in argv):
            raise errors.InvalidArgument(f"{spec.name}: bad command {argv!r}")
        env = dict(self.base_env)
        for key, value in spec.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise errors.InvalidArgument(f"{spec.name}: bad environment variable {key!r}")
            env[key] = value
        env["SPEAR_FUNCTION"] = spec.name
        if pooled:
            env["SPEAR_WORKER_PROTOCOL"] = str(WORKER_PROTOCOL)
        workdir = ""
        if spec.workdir:
            workdir = os.path.abspath(spec.workdir)
            if not os.path.isdir(workdir):
                raise errors.InvalidArgument(f"{spec.name}: workdir {spec.workdir!r} is not a directory")
        executable = self._resolve(spec.name, argv[0], env, workdir)
        plan = _Plan(argv, executable, env, workdir, pooled, spec.limits)
        digest = hashlib.sha256(
            json.dumps([argv, sorted(env.items()), workdir, pooled]).encode()
        ).hexdigest()
        return Prepared(spec=spec, handle=plan, digest=digest)

    @staticmethod
    def _resolve(name: str, exe: str, env: dict[str, str], workdir: str) -> str | None:
        """Find the executable now, so a typo fails the deploy, not every call."""
        if "/" not in exe:
            found = shutil.which(exe, path=env.get("PATH", os.defpath))
            if found is None:
                raise errors.InvalidArgument(f"{name}: command {exe!r} not found on the function's PATH")
            return found
        if not os.path.isabs(exe):
            if not workdir:
                raise errors.InvalidArgument(f"{name}: relative command {exe!r} needs a workdir")
            exe = os.path.join(workdir, exe)
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise errors.InvalidArgument(f"{name}: {exe!r} is not an executable file")
        return exe

    # -- instances
    async def create_instance(self, prepared: Prepared) -> Instance:
        plan: _Plan = prepared.handle
        spec = prepared.spec
        tmpdir = None
        cwd = plan.workdir
        if not cwd:
            tmpdir = cwd = tempfile.mkdtemp(prefix=f"spear-{spec.name}-")
        if not plan.pooled:
            handle = _OneShot(plan, cwd, tmpdir)
            self._oneshots.add(handle)
            return Instance(function=spec.name, handle=handle)
        worker = _Worker(plan, cwd, tmpdir)
        self._workers.add(worker)
        try:
            await worker.start(spec.limits.memory_mb or self.default_memory_mb, self.default_timeout)
        except BaseException:
            self._workers.discard(worker)
            _rmtree(tmpdir)
            raise
        return Instance(function=spec.name, handle=worker)

    async def invoke(
        self,
        instance: Instance,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None = None,
    ) -> Outcome:
        handle = instance.handle
        kind = type(handle)
        if kind is not _Worker and kind is not _OneShot:
            raise errors.InvalidArgument("not an instance of the process runtime")
        own = handle.plan.limits
        timeout = limits.timeout or own.timeout or self.default_timeout
        memory_mb = limits.memory_mb or own.memory_mb or self.default_memory_mb
        if limits.cpu_seconds is None and own.cpu_seconds is not None:
            limits = Limits(timeout=timeout, memory_mb=memory_mb, cpu_seconds=own.cpu_seconds)
        instance.invocations += 1
        if kind is _Worker:
            try:
                outcome = await handle.call(data, args, limits, on_log, timeout, memory_mb)
            except (errors.FunctionError, errors.InvalidArgument):
                if not handle.alive:
                    instance.reusable = False
                raise
            except BaseException:  # timeout, memory, crash, cancel: never reuse
                instance.reusable = False
                raise
            if not handle.alive:  # replied, then died or was killed by a late timer
                instance.reusable = False
            return outcome
        return await _run_oneshot(handle, data, args, limits, on_log, timeout, memory_mb)

    async def destroy(self, instance: Instance) -> None:
        instance.reusable = False
        handle = instance.handle
        if type(handle) is _Worker:
            self._workers.discard(handle)
            await handle.stop()
            _rmtree(handle.tmpdir)
        elif type(handle) is _OneShot:
            self._oneshots.discard(handle)
            for child in list(handle.running):
                child.kill()
            for child in list(handle.running):
                await child.wait()
            _rmtree(handle.tmpdir)

    async def close(self) -> None:
        workers, self._workers = list(self._workers), set()
        oneshots, self._oneshots = list(self._oneshots), set()
        for h in oneshots:
            for child in list(h.running):
                child.kill()
        await asyncio.gather(*(w.stop(grace=0) for w in workers), return_exceptions=True)
        for h in oneshots:
            for child in list(h.running):
                await child.wait()
        for tmpdir in [w.tmpdir for w in workers] + [h.tmpdir for h in oneshots]:
            _rmtree(tmpdir)


def _rmtree(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
