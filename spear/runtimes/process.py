"""The ``process`` runtime: functions that are operating-system processes.

Three kinds of function, all chosen by the :class:`~spear.protocol.FunctionSpec`:

* **one-shot** (``command``, ``mode="oneshot"``): every invocation starts
  ``command + args``; the input goes to stdin, the output is stdout, stderr is
  streamed to ``on_log`` as it arrives, a non-zero exit is a ``FunctionError``.
* **pooled** (``command``, ``mode="pooled"``): one long-lived worker per
  instance answers many invocations over the framed pipe protocol described
  in ``docs/worker-protocol.md`` (4-byte big-endian length + body; requests
  on fd 3, replies on fd 4; stdout and stderr are the log stream, so stray
  output can never desynchronise the protocol).
* **Python handler** (``handler="module:function"``): always pooled, served by
  :mod:`spear.runtimes.pyworker`. The module is looked up in the working
  directory first, then ``PYTHONPATH`` from ``spec.env``. If ``command`` is
  also given it is the interpreter to use (e.g. ``["/venv/bin/python"]``).

Every process starts in a new session (its own process group) with an
environment built from ``base_env`` plus ``spec.env`` only, never the
Spearlet's own, and in ``spec.workdir`` (under a host root the node allows,
see :mod:`.hostpaths`) or a fresh temporary directory per instance (removed
on destroy).

Every process starts behind a gate: ``sh -c 'read -r _; exec "$@"'``. While
it waits for that line, :meth:`_Child.start` — the one place where limits
meet a process — sets its rlimits (it is still the root-run ``sh``, so no
CAP_SYS_RESOURCE is needed) and moves it into the execution's cgroups (see
:mod:`.cgroups`); only then does it exec the command, in the same pid. A limit
that cannot be applied kills it and fails the execution with ``Unavailable``
naming the limit, logged at warning. Limits:

* ``timeout``: the whole process group (and cgroup) is killed with SIGKILL,
  the call raises ``DeadlineExceeded`` and a pooled worker is not reused;
* ``memory_mb``: ``RLIMIT_AS`` (address space) and, where there is a memory
  cgroup, its limit (no swap beyond it) for the whole execution. A Python
  ``MemoryError`` becomes ``ResourceExhausted``; so does an OOM kill of the
  cgroup, a native process that dies with out-of-memory signs in its stderr
  tail or one SIGKILLed by someone else. Runtimes that reserve huge address
  ranges (Go, the JVM) need a generous limit;
* ``cpu_seconds``: one-shot: ``RLIMIT_CPU`` in whole seconds (SIGXCPU, then
  SIGKILL) plus, with a cgroup, its CPU clock (children count); pooled: per
  call, a watch on the worker's CPU clock (its cgroup's, else its own) that
  kills it once the call has used that much. Hitting it raises
  ``ResourceExhausted``;
* ``pids`` (default ``default_pids``) and ``cpus`` (a CFS quota): cgroup only;
  a function that sets one where there is no such controller fails;
* output: a call's output (one-shot stdout, a worker's reply) larger than
  ``limits.max_output_mb`` or the node's ``max_output_mb`` (at most the
  wire's 64 MiB payload cap) stops the function at once: ``ResourceExhausted``
  with the limit in the message.

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

Nothing is left behind: when the group leader exits the group and the
execution's cgroup are SIGKILLed before the leader is reaped (the zombie pins
the group id, so the signal can never reach a stranger), and children are
reaped by ``wait4`` on a pidfd, which also yields exact CPU time and peak RSS
(the cgroup's figures where there is one). A descendant that leaves the
session (``setsid``, a double fork) is still in the cgroup; without cgroups
it is found by the ``SPEAR_SWEEP`` mark in its environment (see
:mod:`.leftovers`). What a SIGKILLed Spearlet leaves running is recorded in
``state_dir`` and ended by :meth:`ProcessRuntime.reap_leftovers` at the next
start. Use the docker runtime for hostile code (all sandboxed functions share
one user).

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
import functools
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
from typing import Callable

from .. import errors
from ..fsmodes import FUNCTION_UMASK
from ..protocol import MAX_PAYLOAD, ExecUsage, FunctionSpec, Limits
from . import cgroups as cg
from .base import Instance, LogSink, Outcome, Prepared, Runtime
from .hostpaths import HostPaths
from .leftovers import TAG_VAR, Ledger, new_tag, sweep

log = logging.getLogger(__name__)

#: The Python handler worker, run by path so that it never imports Spear.
PYWORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyworker.py")
#: Version of the framed worker protocol, given to workers in SPEAR_WORKER_PROTOCOL.
#: 2: requests on fd 3, replies on fd 4; stdin is /dev/null, stdout a log stream.
WORKER_PROTOCOL = 2
#: Environment a function starts from when the Spearlet passes none.
DEFAULT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
#: Largest output of a call (one-shot stdout, a worker's reply payload): the
#: wire's payload cap. A node may set less ([runtimes.process] max_output_mb),
#: a function less again (limits.max_output_mb).
MAX_OUTPUT = MAX_PAYLOAD
_MIB = 1 << 20
#: The gate every process starts behind: ``sh`` blocks reading one line from fd 0
#: while the runtime applies rlimits and joins the process to its cgroups, then
#: exec's the command (same pid). A worker's gate also moves the protocol pipes
#: to fds 3 (requests) and 4 (replies), and points stdin at /dev/null and stdout
#: at the log stream. dash and bash read that line byte by byte: nothing more.
_GATE = 'read -r _ || exit 125; exec "$@"'
_GATE_WORKER = 'read -r _ || exit 125; exec 3<&0 4>&1 0</dev/null 1>&2; exec "$@"'
#: variables a shell adds to what it exports: unset unless the function set them
_SHELL_ADDS = ("PWD", "OLDPWD", "SHLVL")

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
    oom: bool = False,
) -> errors.SpearError:
    """Type a process that died on its own (not by our timeout).

    ``oom``: the execution's memory cgroup reports an OOM kill.
    """
    text = tail[-2048:].decode("utf-8", "replace")
    details = {"exit_code": code, "stderr": text}
    what = _describe_exit(code)
    sig = -code if code is not None and code < 0 else 0
    if oom:
        return errors.ResourceExhausted(f"memory limit ({what}: the memory cgroup's OOM killer)",
                                        details=details)
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
        # and what a shell acts on: the root-run gate is ``sh -c``
        "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH", "POSIXLY_CORRECT",
    }
)


def _loader_sensitive(name: str) -> bool:
    return name in _LOADER_VARS or name.startswith(("LD_", "GLIBC_", "MALLOC_", "BASH_FUNC_"))


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


@dataclass(frozen=True)
class _Bounds:
    """The limits one process starts under, all applied by :meth:`_Child.start`."""

    memory_mb: int | None = None  # RLIMIT_AS, and the memory cgroup where there is one
    cpu_seconds: float | None = None  # RLIMIT_CPU (one-shot runs)
    pids: int | None = None  # the pids cgroup
    cpus: float | None = None  # the cpu cgroup's quota


@dataclass(eq=False)
class _Host:
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
        if self.cgroups is None:
            return None
        self.serial += 1
        try:
            return self.cgroups.group(f"{name}.{self.serial}", cpu=cpu)
        except cg.CgroupError as exc:
            log.warning("cannot create the cgroup of an execution of %s: %s", name, exc)
            raise errors.Unavailable(f"cannot create the execution's cgroup: {exc}") from None


def _set_rlimits(pairs: tuple) -> None:  # pragma: no cover - runs in the forked child
    for res, value in pairs:
        resource.setrlimit(res, value)


class _Child:
    """One process in its own session with pipes on fds 0-2, reaped by us.

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
        host: _Host,
        name: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        executable: str | None,
        bounds: _Bounds,
        popen_kw: dict | None = None,
        *,
        worker: bool = False,
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
        rl = self._rlimits(bounds)
        self._pre_applied = bool(rl) and "user" in kw
        if self._pre_applied:  # already the fork path: the child sets them itself
            kw["preexec_fn"] = functools.partial(_set_rlimits, tuple((r, v) for r, v, _ in rl))
        target = list(argv) if executable is None else [executable, *argv[1:]]
        script = _GATE_WORKER if worker else _GATE
        added = [v for v in _SHELL_ADDS if v not in env]
        if added:
            script = f"unset {' '.join(added)}; {script}"
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        _grow_pipe(in_w)
        _grow_pipe(out_w)
        try:
            proc = subprocess.Popen(
                [host.sh, "-c", script, "spear", *target],
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
                _close(fd)
            self._drop_group()
            if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError)):
                raise errors.InvalidArgument(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
            if isinstance(exc, OSError):
                raise errors.ResourceExhausted(f"cannot start {argv[0]!r}: {exc}") from exc
            if isinstance(exc, subprocess.SubprocessError):  # preexec_fn: setrlimit failed
                log.warning("cannot apply the rlimits of %s: %s", name, exc)
                raise errors.Unavailable(f"cannot apply the limits of {name}: {exc}") from exc
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

    # -- limits
    @staticmethod
    def _rlimits(b: _Bounds) -> list:
        out = []
        if b.memory_mb:
            limit = b.memory_mb * _MIB
            out.append((resource.RLIMIT_AS, (limit, limit),
                        f"limits.memory_mb = {b.memory_mb} (RLIMIT_AS)"))
        if b.cpu_seconds:
            secs = max(1, math.ceil(b.cpu_seconds))
            out.append((resource.RLIMIT_CPU, (secs, secs + 1),
                        f"limits.cpu_seconds = {b.cpu_seconds:g} (RLIMIT_CPU)"))
        return out

    def start(self) -> None:
        """Apply every limit while the gate holds the process, then let it run.

        The one place where limits meet a process: a limit that cannot be
        applied kills it and raises ``Unavailable`` naming the limit (logged
        at warning).
        """
        b, group = self.bounds, self.group
        steps: list[tuple[str, Callable[[], object]]] = []
        if not self._pre_applied:
            for res, value, label in self._rlimits(b):
                steps.append((label, functools.partial(resource.prlimit, self.pid, res, value)))
        cgroups = self.host.cgroups
        if group is not None and b.memory_mb and cgroups.has("memory"):
            steps.append((f"limits.memory_mb = {b.memory_mb} (memory cgroup)",
                          functools.partial(group.limit, memory=b.memory_mb * _MIB)))
        for name, value, kw in (("pids", b.pids, {"pids": b.pids}),
                                ("cpus", b.cpus, {"cpus": b.cpus, "set_cpus": True})):
            if value is None:
                continue
            label = f"limits.{name} = {value:g} ({name if name == 'pids' else 'cpu'} cgroup)"
            if group is None or not cgroups.has("cpu" if name == "cpus" else name):
                why = (self.host_why("cpu" if name == "cpus" else name))
                steps.append((label, functools.partial(_refuse, why)))
            else:
                steps.append((label, functools.partial(group.limit, **kw)))
        if group is not None:
            steps.append(("the execution's cgroup (joining it)", functools.partial(group.attach, self.pid)))
        for label, step in steps:
            try:
                step()
            except (OSError, ValueError, cg.CgroupError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                log.warning("cannot apply %s to pid %d: %s; the execution fails", label, self.pid, why)
                self.kill()
                raise errors.Unavailable(f"cannot apply {label}: {why}",
                                         details={"limit": label.split(" ")[0]}) from None
        self.memory_mb = b.memory_mb or None
        os.write(self.stdin, b"\n")  # the gate's line: the pipe is empty, this cannot block

    def host_why(self, controller: str) -> str:
        cgroups = self.host.cgroups
        if cgroups is None:
            return "this node has no cgroups (see the warning at start)"
        return f"this node has no {controller} cgroup controller: {cgroups.missing.get(controller, '?')}"

    def set_memory(self, memory_mb: int) -> None:
        """Change a running worker's memory limit (a call that asks for another one)."""
        limit = memory_mb * _MIB
        try:
            if self.group is not None and self.host.cgroups.has("memory"):
                self.group.limit(memory=limit)
            resource.prlimit(self.pid, resource.RLIMIT_AS, (limit, limit))
        except (OSError, ValueError, cg.CgroupError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("cannot change the memory limit of worker %d to %d MiB: %s",
                        self.pid, memory_mb, why)
            raise errors.Unavailable(
                f"cannot apply limits.memory_mb = {memory_mb} to a running worker "
                f"(started with {self.memory_mb}): {why}", details={"limit": "memory_mb"}) from None
        self.memory_mb = memory_mb

    def set_group_limits(self, pids: int | None, cpus: float | None) -> None:
        """Change a running worker's pids / cpus limits (cgroup only)."""
        for name, value, kw in (("pids", pids, {"pids": pids}),
                                ("cpus", cpus, {"cpus": cpus, "set_cpus": True})):
            if value is None:
                continue
            controller = "cpu" if name == "cpus" else name
            try:
                if self.group is None or not self.host.cgroups.has(controller):
                    raise cg.CgroupError(self.host_why(controller))
                self.group.limit(**kw)
            except cg.CgroupError as exc:
                log.warning("cannot apply %s = %g to worker %d: %s", name, value, self.pid, exc)
                raise errors.Unavailable(f"cannot apply limits.{name} = {value:g}: {exc}",
                                         details={"limit": name}) from None

    def cpu_ns(self) -> int:
        """CPU time of the execution so far: its cgroup's, else the process's own clock."""
        if self.group is not None:
            ns = self.group.cpu_ns()
            if ns is not None:
                return ns
        return _clock_ns(_cpu_clock(self.pid))

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
        ru = self.rusage
        cpu = ru.ru_utime + ru.ru_stime if ru is not None else 0.0
        peak = ru.ru_maxrss * 1024 if ru is not None else 0
        if self.cg_cpu is not None:  # the whole execution, not only its first process
            cpu = self.cg_cpu / 1e9
        if self.cg_peak:
            peak = self.cg_peak
        return ExecUsage(cpu_time=cpu, peak_memory=peak)


def _refuse(why: str) -> None:
    raise cg.CgroupError(why)


class _CpuWatch:
    """Ends an execution that used ``cpu_seconds`` of CPU: no rlimit, no privilege needed.

    Checks the CPU clock (the cgroup's, else the process's) when the budget
    could be spent at the earliest, given how many CPUs it may use, and again
    until it is or the call ends.
    """

    def __init__(self, child: _Child, seconds: float, on_over: Callable[[float], None]) -> None:
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
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None



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
    host: _Host
    name: str
    running: set = field(default_factory=set)


# ------------------------------------------------------------------ one-shot


def _too_big(limit: int) -> errors.ResourceExhausted:
    mib = f"{limit / _MIB:g} MiB" if limit % (_MIB // 16) == 0 else f"{limit} bytes"
    return errors.ResourceExhausted(
        f"output larger than the limit of {mib}: the function was stopped",
        details={"limit": "max_output_mb", "max_output_bytes": limit})


async def _run_oneshot(
    h: _OneShot,
    data: bytes,
    args: list,
    limits: Limits,
    on_log: LogSink | None,
    timeout: float,
    bounds: _Bounds,
    max_output: int,
) -> Outcome:
    plan = h.plan
    argv = plan.argv + [a if isinstance(a, str) else json.dumps(a) for a in args]
    child = _Child(h.host, h.name, argv, plan.env, h.cwd, plan.executable, bounds, plan.popen_kw)
    loop = child.loop
    h.running.add(child)
    try:
        child.start()
    except BaseException:
        h.running.discard(child)
        for fd in (child.stdout, child.stderr):
            _close(fd)
        child.close_stdin()
        await child.wait()
        raise
    out: list[bytes] = []
    size = 0
    tail = _Tail()
    eof = loop.create_future()
    reading = {child.stdout, child.stderr}
    pending = memoryview(data)
    cpu_over: list[float] = []
    watch = None
    if limits.cpu_seconds and child.group is not None and child.group.cpu_ns() is not None:
        # RLIMIT_CPU counts one process; the cgroup counts what it started too
        def over(used: float) -> None:
            cpu_over.append(used)
            child.kill()

        watch = _CpuWatch(child, limits.cpu_seconds, over)

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
        if size > max_output:  # stop it now: never buffer more than the limit
            closed(child.stdout)
            child.kill()
            return
        out.append(chunk)

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
        # The group is dead now; EOF follows unless an escapee holds a pipe.
        try:
            await asyncio.wait_for(asyncio.shield(eof), 2.0)
        except asyncio.TimeoutError:
            log.warning("pid %d: output pipes still open after exit", child.pid)
    except asyncio.CancelledError:
        child.kill()
        await child.wait()
        raise
    finally:
        if watch is not None:
            watch.cancel()
        h.running.discard(child)
        child.close_stdin()
        for fd in list(reading):
            closed(fd)
    usage = child.usage()
    if size > max_output:
        raise _too_big(max_output)
    if cpu_over:
        raise errors.ResourceExhausted(
            f"cpu limit: used {cpu_over[0]:.2f}s of CPU, limit {limits.cpu_seconds:g}s",
            details={"limit": "cpu_seconds", "cpu_time": usage.cpu_time})
    if timed_out:
        stderr = tail.get()[-2048:].decode("utf-8", "replace")
        raise errors.DeadlineExceeded(
            f"timed out after {timeout:g}s", details={"timeout": timeout, "stderr": stderr}
        )
    if child.code != 0:
        exc = _failure(
            child.code,
            tail.get(),
            memory_limited=bool(bounds.memory_mb),
            cpu_limited=bool(limits.cpu_seconds),
            killed_by_us=child.killed,
            oom=child.cg_oom,
        )
        exc.details["cpu_time"] = usage.cpu_time
        exc.details["peak_memory"] = usage.peak_memory
        raise exc
    return Outcome(output=b"".join(out), exit_code=0, usage=usage)



# ------------------------------------------------------------------- pooled


class _Worker:
    """A long-lived worker process speaking the framed protocol on fds 3 and 4."""

    def __init__(self, plan: _Plan, cwd: str, tmpdir: str | None, host: _Host, name: str,
                 max_output: int = MAX_OUTPUT) -> None:
        self.plan = plan
        self.cwd = cwd
        self.tmpdir = tmpdir
        self.host = host
        self.name = name
        self.child: _Child | None = None
        self.lock = asyncio.Lock()
        self.sink: LogSink | None = None
        self.tail = _Tail()
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None  # the ready frame or a reply
        self.timed_out = False
        self.reason: errors.SpearError | None = None  # why we killed it
        self.max_output = max_output  # of the current call's reply
        self.bounds = _Bounds()
        self.start_timeout = 30.0
        self.died_idle = False  # died with no call running: the next call starts a new one
        self.stopping = False
        self._status_fd = self._clear_fd = self._statm_fd = -1
        self._clock = 0

    @property
    def alive(self) -> bool:
        return self.child is not None and not self.child.exited.done() and not self.child.killed

    @property
    def pid(self) -> int:
        return self.child.pid if self.child else 0

    async def start(self, bounds: _Bounds, timeout: float) -> None:
        plan = self.plan
        self.bounds, self.start_timeout = bounds, timeout
        self.buf = bytearray()
        self.tail = _Tail()
        self.timed_out = self.died_idle = False
        self.reason = None
        child = _Child(self.host, self.name, plan.argv, plan.env, self.cwd, plan.executable,
                       bounds, plan.popen_kw, worker=True)
        try:
            child.start()
        except BaseException:
            for fd in (child.stdout, child.stderr):
                _close(fd)
            child.close_stdin()
            await child.wait()
            raise
        self.child = child
        loop = child.loop
        self._clock = _cpu_clock(child.pid)
        self._statm_fd = _open_proc(child.pid, "statm", os.O_RDONLY)
        self._status_fd = _open_proc(child.pid, "status", os.O_RDONLY)
        self._clear_fd = _open_proc(child.pid, "clear_refs", os.O_WRONLY)
        loop.add_reader(child.stdout, self._on_reply)
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
    def _on_reply(self) -> bool:
        """Read the reply pipe once and check what came; False once nothing more can come now.

        The worker may write only while a request is pending, exactly one
        frame, with a known status and a payload within the output limit. Any
        other byte is a protocol violation: the worker is killed at once and
        the call fails saying why (never a desynchronised stream).
        """
        try:
            chunk = os.read(self.child.stdout, 1 << 18)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self._on_eof()
            return False
        waiter = self.waiter
        if waiter is None or waiter.done():
            self._violation(f"{len(chunk)} byte(s) on the reply pipe with no request pending")
            return False
        buf = self.buf
        if not buf and len(chunk) >= 5:
            size = _U32.unpack_from(chunk)[0]
            if size + 4 == len(chunk) and chunk[4] <= STATUS_EXHAUSTED and size <= self.max_output:
                self._on_frame(chunk[4], chunk[5:])  # the usual case: one whole frame
                return True
        buf += chunk
        if len(buf) < 5:
            return True
        (size,) = _U32.unpack_from(buf)
        if size < 1:
            self._violation("a frame of length 0")
            return False
        if buf[4] > STATUS_EXHAUSTED:
            self._violation(f"reply status {buf[4]} (0, 1 or 2 expected; header {bytes(buf[:5]).hex()})")
            return False
        if size - 1 > self.max_output:
            self._stop_for(_too_big(self.max_output), f"a reply of {size - 1} bytes")
            return False
        if len(buf) < 4 + size:
            return True
        if len(buf) > 4 + size:
            self._violation(f"{len(buf) - 4 - size} byte(s) after the reply")
            return False
        status = buf[4]
        with memoryview(buf) as view:
            payload = bytes(view[5:])
        buf.clear()
        self._on_frame(status, payload)
        return True

    def _on_frame(self, status: int, payload: bytes) -> None:
        self._drain_stderr()  # logs written before the reply belong to this call
        self.waiter.set_result((status, payload))

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
        self._stop_for(errors.FunctionError(
            f"worker broke the protocol: {what}; it was stopped and is replaced",
            details={"protocol": what}), what)

    def _stop_for(self, reason: errors.SpearError, what: str) -> None:
        log.warning("worker %d of %s stopped: %s: %s", self.pid, self.name, reason.code, what)
        self.buf.clear()
        if self.reason is None:
            self.reason = reason
        self.child.loop.remove_reader(self.child.stdout)
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
            if self.reason is None:
                while self._on_reply():
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
                    cpu_limited=False,
                    killed_by_us=child.killed,
                    prefix="worker died",
                    oom=child.cg_oom,
                )
            waiter.set_exception(exc)
        elif not self.stopping:
            self.died_idle = True
            log.warning("worker %d of %s ended between calls (%s%s); the next call starts a new one",
                        child.pid, self.name, _describe_exit(child.code),
                        f": {self.reason.message}" if self.reason is not None else "")

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

    def _apply(self, bounds: _Bounds) -> None:
        """A call whose limits differ from those the worker runs under: change them."""
        child = self.child
        now = self.bounds
        if bounds.memory_mb and bounds.memory_mb != child.memory_mb:
            child.set_memory(bounds.memory_mb)
        pids = bounds.pids if bounds.pids != now.pids else None
        cpus = bounds.cpus if bounds.cpus != now.cpus else None
        if pids is not None or cpus is not None:
            child.set_group_limits(pids, cpus)
        self.bounds = _Bounds(memory_mb=child.memory_mb, pids=bounds.pids or now.pids,
                              cpus=bounds.cpus if bounds.cpus is not None else now.cpus)

    def _cpu_over(self, seconds: float, used: float) -> None:
        self._stop_for(errors.ResourceExhausted(
            f"cpu limit: the call used {used:.2f}s of CPU, limit {seconds:g}s",
            details={"limit": "cpu_seconds", "cpu_time": used}), "cpu_seconds")

    async def call(
        self,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None,
        timeout: float,
        bounds: _Bounds,
        max_output: int = MAX_OUTPUT,
    ) -> Outcome:
        async with self.lock:
            if not self.alive:
                if self.child is not None and not self.stopping:
                    await self.child.wait()  # killed between calls: reaped, died_idle set
                if not self.died_idle:
                    raise errors.Unavailable("the worker has stopped")
                await self.start(self.bounds, self.start_timeout)
            if args:
                try:
                    header = json.dumps({"args": args}, separators=(",", ":")).encode()
                except (TypeError, ValueError) as exc:
                    raise errors.InvalidArgument(f"args must be JSON-serialisable: {exc}") from None
                head = _U32.pack(4 + len(header) + len(data)) + _U32.pack(len(header)) + header
            else:
                head = _U32.pack(4 + len(data)) + _EMPTY_HEADER
            if bounds != self.bounds:
                self._apply(bounds)
            self.max_output = max_output
            loop = self.child.loop
            clock = self._clock
            cpu0 = _clock_ns(clock)
            self.waiter = waiter = loop.create_future()
            self.sink = on_log
            self._send(head, data)
            timer = loop.call_later(timeout, self._on_timeout)
            seconds = limits.cpu_seconds
            watch = (_CpuWatch(self.child, seconds, functools.partial(self._cpu_over, seconds))
                     if seconds else None)
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
                if watch is not None:
                    watch.cancel()
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
        self.stopping = True
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
    ``max_output_mb``: the node's largest output of a call (at most, and by
    default, the wire's 64 MiB payload cap); ``limits.max_output_mb`` of a
    function may lower it.
    ``default_pids``: pids limit of executions whose function sets none
    (applied where there is a pids cgroup controller).
    ``cgroups``: ``"auto"`` (use them where they work, else rlimits with a
    warning), ``"required"`` (the runtime is unavailable without them) or
    ``"off"`` (rlimits only).
    ``state_dir``: where the record of started processes is kept (the node's
    data directory), so that :meth:`reap_leftovers` of a restarted Spearlet
    ends what a killed one left running. None: no record.
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
        max_output_mb: int | None = None,
        default_pids: int | None = None,
        cgroups: str = "auto",
        state_dir: str | os.PathLike | None = None,
    ) -> None:
        if cgroups not in ("auto", "required", "off"):
            raise ValueError(f"cgroups must be 'auto', 'required' or 'off', not {cgroups!r}")
        if max_output_mb is not None and not 1 <= max_output_mb <= MAX_OUTPUT // _MIB:
            raise ValueError(f"max_output_mb must be between 1 and {MAX_OUTPUT // _MIB}")
        self.host_paths = host_paths if host_paths is not None else HostPaths()
        self.max_output = max_output_mb * _MIB if max_output_mb else MAX_OUTPUT
        self.default_pids = default_pids
        self.cgroups_mode = cgroups
        self.state_dir = state_dir
        self._host_: _Host | None = None
        self._cgroups_why = ""
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
        if self.cgroups_mode == "required":
            host = self._host()
            if host.cgroups is None:
                return False, f"cgroups are required ([runtimes.process] cgroups) but: {self._cgroups_why}"
        return True, ""

    # -- what every process starts under
    def _host(self) -> _Host:
        """The gate, the cgroups and the record, found once (the first start)."""
        host = self._host_
        if host is not None:
            return host
        sh = shutil.which("sh", path=_SYSTEM_PATH)
        if sh is None:
            raise errors.Unavailable("the process runtime needs /bin/sh")
        groups = None
        if self.cgroups_mode == "off":
            self._cgroups_why = "turned off ([runtimes.process] cgroups = \"off\")"
        else:
            groups, self._cgroups_why = cg.Cgroups.detect()
        ledger = Ledger(self.state_dir) if self.state_dir is not None else None
        user = self.sandbox_user
        host = _Host(sh=sh, cgroups=groups, ledger=ledger,
                     sweep_uid=user.uid if user is not None else os.geteuid())
        if groups is not None:
            log.info("process executions get their own cgroups: %s", groups.describe())
            if ledger is not None:
                try:
                    ledger.record_cgroups(groups.bases)
                except OSError as exc:
                    log.warning("cannot record the cgroups in %s: %s", ledger.dir, exc)
            for c, why in sorted(groups.missing.items()):
                log.warning("no %s cgroup controller for process executions (%s): %s", c, why, {
                    "memory": "memory_mb is enforced as RLIMIT_AS (address space) per process",
                    "pids": "functions that set limits.pids fail; no default pids limit",
                    "cpu": "functions that set limits.cpus fail",
                    "cpuacct": "cpu_seconds counts each process alone (RLIMIT_CPU)",
                }[c])
        elif self.cgroups_mode != "required":
            log.warning(
                "process executions run WITHOUT cgroups (%s): limits fall back to rlimits "
                "(memory_mb: RLIMIT_AS per process; cpu_seconds: RLIMIT_CPU per process, the "
                "worker's own CPU for pooled calls); functions that set limits.pids or "
                "limits.cpus fail; processes that leave their session are found by the %s "
                "mark in their environment", self._cgroups_why, TAG_VAR)
        self._host_ = host
        return host

    @property
    def cgroups(self) -> cg.Cgroups | None:
        """The node's execution cgroups (None: rlimits only; see the warning at start)."""
        return self._host().cgroups

    def reap_leftovers(self) -> int:
        """End what an earlier run of this node left (recorded in ``state_dir``); returns how many."""
        if self.state_dir is None:
            return 0
        from .leftovers import reap_leftovers

        return reap_leftovers(self.state_dir)

    def _bounds(self, limits: Limits, own: Limits, memory_mb: int, oneshot: bool) -> _Bounds:
        pids = limits.pids or own.pids
        if pids is None and self.default_pids:
            groups = self._host().cgroups
            if groups is not None and groups.has("pids"):
                pids = self.default_pids
        return _Bounds(memory_mb=memory_mb,
                       cpu_seconds=(limits.cpu_seconds or own.cpu_seconds) if oneshot else None,
                       pids=pids,
                       cpus=limits.cpus if limits.cpus is not None else own.cpus)

    def _max_output(self, limits: Limits, own: Limits) -> int:
        mb = limits.max_output_mb or own.max_output_mb
        return min(self.max_output, mb * _MIB) if mb else self.max_output

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
        try:
            host = self._host()
        except BaseException:
            _rmtree(tmpdir)
            raise
        if not plan.pooled:
            handle = _OneShot(plan, cwd, tmpdir, host, spec.name)
            self._oneshots.add(handle)
            return Instance(function=spec.name, handle=handle)
        worker = _Worker(plan, cwd, tmpdir, host, spec.name, self.max_output)
        self._workers.add(worker)
        memory_mb = spec.limits.memory_mb or self.default_memory_mb
        try:
            await worker.start(self._bounds(Limits(), spec.limits, memory_mb, False),
                               self.default_timeout)
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
        bounds = self._bounds(limits, own, memory_mb, kind is _OneShot)
        max_output = self._max_output(limits, own)
        instance.invocations += 1
        if kind is _Worker:
            try:
                outcome = await handle.call(data, args, limits, on_log, timeout, bounds, max_output)
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
        return await _run_oneshot(handle, data, args, limits, on_log, timeout, bounds, max_output)

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
        host, self._host_ = self._host_, None
        if host is not None:
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


def _rmtree(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
