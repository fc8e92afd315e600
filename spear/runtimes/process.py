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
Spearlet's own, and in ``spec.workdir`` (under a host root the node allows,
see :mod:`.hostpaths`) or a fresh temporary directory per instance (removed
on destroy). Limits:

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

Sandbox (see ``docs/sandbox.md``): when the Spearlet runs as root, functions
run as an unprivileged user (``user="auto"``: ``nobody``, no supplementary
groups), so they cannot read the Spearlet's key files; and a function whose
``limits.network`` is false starts in a new, empty network namespace (only a
loopback that is down): it can connect nowhere, not even to 127.0.0.1. Both
are done by exec'ing util-linux ``unshare`` in front of the command
(``unshare --net -G gid -S uid -- cmd``), which keeps the cheap vfork spawn
path and the same pid. A non-root Spearlet isolates the network with a user
namespace (``unshare --user --map-current-user --net``) where the kernel
allows it; where no isolation is possible such functions are refused with
``Unavailable`` (``strict_network=True``, the default) or run with network
after one warning (``strict_network=False``).

Nothing is left behind: when the group leader exits the group is SIGKILLed
before the leader is reaped (the zombie pins the group id, so the signal can
never reach a stranger), and children are reaped by ``wait4`` on a pidfd,
which also yields exact CPU time and peak RSS for one-shot calls. A
descendant that leaves the group on purpose (``setsid``) escapes; use the
docker runtime for hostile code (all sandboxed functions share one user).

Usage of a pooled call is the worker's CPU clock delta (``clock_gettime`` on
its process CPU clock: all threads, nanoseconds). Its peak memory is the
worker's peak RSS (``VmHWM``, reset through ``/proc/<pid>/clear_refs``) for
calls that used at least 0.5 ms of CPU, and its RSS after the call (``statm``)
for shorter ones: reading and resetting the peak costs ~25 us, more than the
rest of a warm call, and a call that short cannot touch much memory.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import math
import os
import pwd
import re
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from time import clock_gettime_ns
from dataclasses import dataclass, field

from .. import errors
from ..fsmodes import FUNCTION_UMASK
from ..protocol import ExecUsage, FunctionSpec, Limits
from .base import Instance, LogSink, Outcome, Prepared, Runtime
from .hostpaths import HostPaths

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

#: input/output pipes of functions are enlarged to this (Linux default: 64 KiB),
#: so a 1 MiB input or output crosses in one write instead of sixteen wake-ups.
#: Only as root: an unprivileged user's pipes share a 64 MiB quota, past which
#: the kernel shrinks every new pipe of that user to one page.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _grow_pipe(fd: int) -> None:
    if os.geteuid() != 0:
        return
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # not Linux, or a limit: the default size still works
        pass
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


# ------------------------------------------------------------------- sandbox

#: Where the sandbox tools (util-linux ``unshare``) and fallback interpreters are looked up.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NOBODY = 65534  # the overflow uid/gid, used if the system has no "nobody" entry
_PY_NAME = re.compile(r"^python(\d+)\.(\d+)$")
#: Variables through which the dynamic loader or libc of a *root* process can be
#: made to load code or files of the function's choosing: the list glibc itself
#: strips for setuid programs, plus every ``LD_*``, ``GLIBC_*`` and ``MALLOC_*``.
#: The root-run ``unshare`` never sees them; ``env`` sets them again after the
#: switch to the sandbox user, so the function still gets them.
_LOADER_VARS = frozenset(
    {
        "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "NIS_PATH",
        "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR",
    }
)


def _loader_sensitive(name: str) -> bool:
    return name in _LOADER_VARS or name.startswith(("LD_", "GLIBC_", "MALLOC_"))


@dataclass(frozen=True)
class _User:
    """The unprivileged identity functions run as (set only when it differs from ours)."""

    name: str
    uid: int
    gid: int


def _resolve_user(user: str | None, euid: int) -> _User | None:
    """The identity to switch to, or None to run functions as the Spearlet's own user.

    ``"auto"``: ``nobody`` when we are root, else ourselves. ``None``/``""``:
    ourselves. A name or numeric uid: that user (only root can switch).
    """
    if not user:
        return None
    if user == "auto":
        if euid != 0:
            return None
        try:
            pw = pwd.getpwnam("nobody")
            return _User("nobody", pw.pw_uid, pw.pw_gid)
        except KeyError:
            return _User("nobody", _NOBODY, _NOBODY)
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise ValueError(f"no such user: {user!r}") from None
        uid = int(user)
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            found = _User(user, uid, uid)
        else:
            found = _User(pw.pw_name, pw.pw_uid, pw.pw_gid)
    else:
        found = _User(pw.pw_name, pw.pw_uid, pw.pw_gid)
    if found.uid == euid:
        return None  # already that user: nothing to switch
    if euid != 0:
        raise ValueError(f"cannot run functions as {user!r}: the Spearlet is not root")
    return found


def _allows(st: os.stat_result, user: _User, bit: int) -> bool:
    """Whether the permission bits of ``st`` grant ``bit`` (4 r, 2 w, 1 x) to ``user``.

    The user has no supplementary groups (we clear them). ACLs are not read.
    """
    if user.uid == 0:
        return bit != 1 or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == user.uid:
        return bool((st.st_mode >> 6) & bit)
    if st.st_gid == user.gid:
        return bool((st.st_mode >> 3) & bit)
    return bool(st.st_mode & bit)


def _denied(
    path: str, user: _User | None, *, read: bool = False, execute: bool = False
) -> str | None:
    """Why ``user`` cannot reach ``path`` (and read / execute / enter it), or None if it can.

    Every directory on the way must be searchable, both along the path as
    written and along its resolved form (symlinks).
    """
    if user is None:
        return None
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    dirs: list[str] = []
    for p in (path, real):
        d = os.path.dirname(p)
        chain = []
        while True:
            chain.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        dirs.extend(reversed(chain))
    seen: set[str] = set()
    for d in dirs:
        if d in seen:
            continue
        seen.add(d)
        try:
            st = os.stat(d)
        except OSError as exc:
            return f"{d}: {exc.strerror}"
        if not _allows(st, user, 1):
            return f"{d} is not searchable by {user.name} (mode {stat.filemode(st.st_mode)})"
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if read and not _allows(st, user, 4):
        return f"{real} is not readable by {user.name} (mode {stat.filemode(st.st_mode)})"
    if execute and not _allows(st, user, 1):
        what = "searchable" if stat.S_ISDIR(st.st_mode) else "executable"
        return f"{real} is not {what} by {user.name} (mode {stat.filemode(st.st_mode)})"
    return None


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _python_version(path: str) -> tuple[int, int] | None:
    """major.minor of an interpreter, from what we know without running it."""
    real = os.path.realpath(path)
    if real == os.path.realpath(sys.executable):
        return sys.version_info[:2]
    m = _PY_NAME.match(os.path.basename(real))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _python_denied(path: str, user: _User | None) -> str | None:
    """Why ``user`` cannot run the interpreter ``path`` (binary, then its standard library)."""
    why = _denied(path, user, execute=True)
    if why or user is None:
        return why
    real = os.path.realpath(path)
    if real == os.path.realpath(sys.executable):
        stdlib = os.path.dirname(os.path.abspath(os.__file__))
    else:
        stdlib = os.path.join(os.path.dirname(os.path.dirname(real)), "lib")
    if os.path.isdir(stdlib):
        return _denied(stdlib, user, read=True, execute=True)
    return None


def _probe_isolation(unshare: str | None, root: bool) -> tuple[list[str] | None, str]:
    """The ``unshare`` prefix that gives a process a new, empty network namespace here.

    Returns ``(prefix, "")`` or ``(None, why not)``. Runs the prefix once to be
    sure (a container without CAP_SYS_ADMIN, or a kernel refusing user
    namespaces to unprivileged users, fails only when tried).
    """
    if unshare is None:
        return None, "the unshare program (util-linux) is not installed"
    if root:
        tries = [[unshare, "--net"]]
    else:  # a user namespace gives an unprivileged user its own network namespace
        tries = [[unshare, "--user", "--map-current-user", "--net"], [unshare, "--user", "--net"]]
    why = ""
    for prefix in tries:
        try:
            r = subprocess.run(
                [*prefix, "--", unshare, "--version"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={"PATH": _SYSTEM_PATH, "LANG": "C"},
                timeout=10,
                close_fds=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = str(exc)
            continue
        if r.returncode == 0:
            return prefix, ""
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"{' '.join(prefix)} exited with {r.returncode}"
    return None, why


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
        popen_kw: dict | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        _grow_pipe(in_w)
        _grow_pipe(out_w)
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
                # the Spearlet's umask (077) keeps its own files private; a function
                # writes for its own users, so its process starts with the usual one
                umask=FUNCTION_UMASK,
                **(popen_kw or {}),
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
    """What ``prepare`` resolved: argv, environment, working directory, mode.

    ``argv`` already starts with the sandbox wrapper (``unshare ... --``) when
    there is one; ``popen_kw`` holds ``user``/``group`` only when the switch
    must be done by ``subprocess`` itself (no ``unshare`` on this system).
    """

    argv: list[str]
    executable: str | None
    env: dict[str, str]
    workdir: str
    pooled: bool
    limits: Limits  # the spec's own, used where the call's limits say None
    popen_kw: dict = field(default_factory=dict)


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
    child = _Child(argv, plan.env, h.cwd, plan.executable, memory_mb, plan.popen_kw)
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
        child = self.child = _Child(
            plan.argv, plan.env, self.cwd, plan.executable, memory_mb, plan.popen_kw
        )
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
    """Run functions as processes: one-shot commands, pooled workers, Python handlers.

    ``user``: who functions run as. ``"auto"`` (default): ``nobody`` when the
    Spearlet is root, else the Spearlet's own user; ``None`` or ``""``: the
    Spearlet's own user; a name or uid: that user (needs root).
    ``strict_network``: when a function with ``limits.network = false`` cannot
    get a network namespace here, refuse it (``Unavailable``, the default) or,
    if False, run it with network after logging one warning.
    ``host_paths``: where a ``workdir`` may be (see :mod:`.hostpaths`); none
    by default, so only functions without one (a fresh temporary directory)
    deploy.
    """

    name = "process"

    def __init__(
        self,
        *,
        default_timeout: float = 30.0,
        default_memory_mb: int = 512,
        python: str = sys.executable,
        base_env: dict[str, str] | None = None,
        user: str | None = "auto",
        strict_network: bool = True,
        host_paths: HostPaths | None = None,
    ) -> None:
        self.host_paths = host_paths if host_paths is not None else HostPaths()
        self.default_timeout = default_timeout
        self.default_memory_mb = default_memory_mb
        self.python = python
        self.base_env = dict(DEFAULT_ENV if base_env is None else base_env)
        self.strict_network = strict_network
        self._root = os.geteuid() == 0
        #: the identity functions are switched to; None: they run as we do
        self.sandbox_user: _User | None = _resolve_user(user, os.geteuid())
        self._unshare = shutil.which("unshare", path=_SYSTEM_PATH)
        self._isolation: tuple[list[str] | None, str] | None = None  # probed on first need
        self._handler_python: str | None = None
        self._pyworker: str | None = None
        self._pyworker_copy: str | None = None  # a readable copy we made, removed at close
        self._warned_network = False
        self._workers: set[_Worker] = set()
        self._oneshots: set[_OneShot] = set()
        if self.sandbox_user is not None:
            u = self.sandbox_user
            log.info("process functions run as %s (uid %d, gid %d)", u.name, u.uid, u.gid)

    def available(self) -> tuple[bool, str]:
        if os.name != "posix":
            return False, "the process runtime needs a POSIX system"
        return True, ""

    # -- sandbox
    async def network_isolation(self) -> tuple[bool, str]:
        """``(True, "")`` if functions can be denied the network here, else ``(False, why)``."""
        if self._isolation is None:
            self._isolation = await asyncio.to_thread(_probe_isolation, self._unshare, self._root)
        prefix, why = self._isolation
        return prefix is not None, why

    async def _network_prefix(self, name: str) -> list[str]:
        """The ``unshare`` prefix for a function denied the network ([] if it may not be)."""
        ok, why = await self.network_isolation()
        if ok:
            return list(self._isolation[0])
        message = (
            f"network isolation needs root or user namespaces ({why}); "
            "deploy with limits.network=true to allow network"
        )
        if self.strict_network:
            raise errors.Unavailable(f"{name}: {message}", details={"reason": why})
        if not self._warned_network:
            self._warned_network = True
            log.warning(
                "process functions with limits.network=false will HAVE network: %s", message
            )
        return []

    def _python_for_handlers(self, name: str) -> str:
        """``self.python``, or a system interpreter of the same version the sandbox user can run."""
        if self._handler_python is not None:
            return self._handler_python
        user = self.sandbox_user
        why = _python_denied(self.python, user)
        if why is None:
            self._handler_python = self.python
            return self.python
        want = _python_version(self.python)
        names = [f"python{want[0]}.{want[1]}"] if want else []
        names.append("python3")
        others: list[str] = []
        for exe in names:
            found = shutil.which(exe, path=_SYSTEM_PATH)
            if found is None or _python_denied(found, user) is not None:
                continue
            if want is None or _python_version(found) == want:
                others.insert(0, found)
                break
            others.append(found)
        if not others:
            raise errors.InvalidArgument(
                f"{name}: the Python interpreter {self.python} cannot be run by {user.name}, "
                f"the user functions run as ({why}), and no system python3 can; install "
                "Python where that user can read it or name an interpreter in the command"
            )
        alt = others[0]
        got, fmt = _python_version(alt), lambda v: ".".join(map(str, v)) if v else "?"
        log.warning(
            "Python handlers run with %s (Python %s): the Spearlet's interpreter %s (Python %s) "
            "cannot be run by %s: %s", alt, fmt(got), self.python, fmt(want), user.name, why,
        )
        self._handler_python = alt
        return alt

    def _worker_script(self, name: str) -> str:
        """Path of pyworker.py that the sandbox user can read (a copy if need be)."""
        if self._pyworker is not None:
            return self._pyworker
        user = self.sandbox_user
        if _denied(PYWORKER, user, read=True) is None:
            self._pyworker = PYWORKER
            return PYWORKER
        copy_dir = tempfile.mkdtemp(prefix="spear-pyworker-")
        try:
            os.chmod(copy_dir, 0o755)
            target = os.path.join(copy_dir, "pyworker.py")
            shutil.copyfile(PYWORKER, target)
            os.chmod(target, 0o644)
            why = _denied(target, user, read=True)
        except OSError as exc:
            why = str(exc)
        if why is not None:
            _rmtree(copy_dir)
            raise errors.InvalidArgument(
                f"{name}: no place where {user.name} can read pyworker.py ({why})"
            )
        log.info("%s cannot read %s: Python handlers use a copy in %s", user.name, PYWORKER, copy_dir)
        self._pyworker_copy = copy_dir
        self._pyworker = target
        return target

    # -- prepare
    async def prepare(self, spec: FunctionSpec) -> Prepared:
        if spec.runtime != self.name:
            raise errors.InvalidArgument(f"{spec.name}: runtime is {spec.runtime!r}, not 'process'")
        user = self.sandbox_user
        handler = spec.handler.strip()
        if handler:
            if not _HANDLER_RE.match(handler):
                raise errors.InvalidArgument(
                    f"{spec.name}: handler must look like module:function, got {handler!r}"
                )
            interpreter = list(spec.command) or [self._python_for_handlers(spec.name)]
            argv = [*interpreter, self._worker_script(spec.name), handler]
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
            # a host path: allowed roots only (read access: the process runtime
            # cannot make a directory read-only; file modes and the user do)
            granted = self.host_paths.grant(spec.workdir, write=False,
                                            what=f"{spec.name}: workdir {spec.workdir!r}")
            workdir = granted.path
            granted.close()
            why = _denied(workdir, user, read=True, execute=True)
            if why is not None:
                raise errors.InvalidArgument(
                    f"{spec.name}: workdir {spec.workdir!r} is not accessible to {user.name}, "
                    f"the user functions run as: {why}"
                )
        executable = self._resolve(spec.name, argv[0], env, workdir)
        why = _denied(executable, user, execute=True)
        if why is None and user is not None and _is_script(executable):
            why = _denied(executable, user, read=True)
        if why is not None:
            raise errors.InvalidArgument(
                f"{spec.name}: command {argv[0]!r} cannot be run by {user.name}, "
                f"the user functions run as: {why}"
            )
        wrapper = [] if spec.limits.network else await self._network_prefix(spec.name)
        popen_kw: dict = {}
        if user is not None:
            if self._unshare is not None:  # unshare switches ids after making namespaces
                wrapper = (wrapper or [self._unshare]) + ["-G", str(user.gid), "-S", str(user.uid)]
            else:  # no vfork then: slower to spawn from a big Spearlet, but correct
                popen_kw = {"user": user.uid, "group": user.gid, "extra_groups": []}
        if wrapper:
            target = [executable]
            moved = {k: v for k, v in env.items() if _loader_sensitive(k)}
            if moved and user is not None:  # never let them reach the root-run wrapper
                env_tool = shutil.which("env", path=_SYSTEM_PATH)
                if env_tool is None or "=" in executable:
                    raise errors.InvalidArgument(
                        f"{spec.name}: cannot pass {', '.join(sorted(moved))} to a sandboxed "
                        + ("command whose path contains '='" if env_tool else "command: no env program")
                    )
                env = {k: v for k, v in env.items() if k not in moved}
                target = [env_tool, "--", *(f"{k}={v}" for k, v in moved.items()), executable]
            argv = [*wrapper, "--", *target, *argv[1:]]
            executable = None
        plan = _Plan(argv, executable, env, workdir, pooled, spec.limits, popen_kw)
        digest = hashlib.sha256(
            json.dumps([argv, sorted(env.items()), workdir, pooled, sorted(popen_kw.items())]).encode()
        ).hexdigest()
        return Prepared(spec=spec, handle=plan, digest=digest)

    @staticmethod
    def _resolve(name: str, exe: str, env: dict[str, str], workdir: str) -> str:
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
            user = self.sandbox_user
            if user is not None:  # mode 0700: the function's own, nobody else's
                try:
                    os.chown(tmpdir, user.uid, user.gid)
                except OSError:
                    _rmtree(tmpdir)
                    raise
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
        copy, self._pyworker_copy = self._pyworker_copy, None
        if copy:
            self._pyworker = None
            _rmtree(copy)


def _rmtree(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
