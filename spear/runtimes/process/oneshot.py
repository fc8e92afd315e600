"""One-shot runs: every invocation starts ``command + args`` anew.

The input goes to stdin, the output is stdout (capped: past the call's
``max_output`` the process is stopped at once, nothing more is buffered),
stderr is streamed to ``on_log`` as it arrives and its tail kept for the
error, and a non-zero exit is a typed error (see :mod:`.exits`). A timeout
SIGKILLs the whole process group and cgroup and raises ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field

from ... import errors
from ...protocol import Limits
from ..base import LogSink, Outcome, tail_text
from .child import Child
from .exits import failure
from .host import Host
from .limits import Bounds, CpuWatch
from .spec import Plan
from .streams import Tail, close_fd, emit, too_big

log = logging.getLogger(__name__)


@dataclass(eq=False)
class OneShot:
    """Handle of a one-shot instance: just where and how to start each call."""

    plan: Plan
    cwd: str
    tmpdir: str | None
    host: Host
    name: str
    running: set = field(default_factory=set)


class _Pipes:
    """The pipes of one run: ``data`` fed to stdin, stdout collected up to
    ``max_output``, stderr streamed to ``on_log`` and tailed."""

    def __init__(self, child: Child, data: bytes, on_log: LogSink | None, max_output: int) -> None:
        self.child = child
        self.loop = child.loop
        self.on_log = on_log
        self.max_output = max_output
        self.out: list[bytes] = []
        self.size = 0
        self.tail = Tail()
        #: set once stdout and stderr are both closed
        self.eof = self.loop.create_future()
        self.reading = {child.stdout, child.stderr}
        self.pending = memoryview(data)

    def begin(self) -> None:
        """Start reading both outputs and writing the input."""
        child = self.child
        self.loop.add_reader(child.stdout, self._on_stdout)
        self.loop.add_reader(child.stderr, self._on_stderr)
        self._feed()
        if self.pending:
            self.loop.add_writer(child.stdin, self._feed)

    def close(self) -> None:
        """Close every pipe still open (the run is over)."""
        self.child.close_stdin()
        for fd in list(self.reading):
            self._closed(fd)

    def output(self) -> bytes:
        """What came on stdout."""
        return b"".join(self.out)

    def _closed(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        close_fd(fd)
        self.reading.discard(fd)
        if not self.reading and not self.eof.done():
            self.eof.set_result(None)

    def _on_stdout(self) -> None:
        child = self.child
        try:
            chunk = os.read(child.stdout, 1 << 18)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._closed(child.stdout)
            return
        self.size += len(chunk)
        if self.size > self.max_output:  # stop it now: never buffer more than the limit
            self._closed(child.stdout)
            child.kill()
            return
        self.out.append(chunk)

    def _on_stderr(self) -> None:
        try:
            chunk = os.read(self.child.stderr, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.tail.add(chunk)
            emit(self.on_log, chunk)
        else:
            self._closed(self.child.stderr)

    def _feed(self) -> None:
        try:
            while self.pending:
                self.pending = self.pending[os.write(self.child.stdin, self.pending) :]
        except BlockingIOError:
            return
        except OSError:  # the command does not read all of its input: fine
            self.pending = memoryview(b"")
        self.child.close_stdin()


async def run_oneshot(
    h: OneShot,
    data: bytes,
    args: list,
    limits: Limits,
    on_log: LogSink | None,
    timeout: float,
    bounds: Bounds,
    max_output: int,
    env: dict[str, str] | None = None,
) -> Outcome:
    """Run one call of a one-shot instance: start it, feed it, wait, type the result.
    ``env``: variables of this call only (TRACEPARENT), over the plan's."""
    plan = h.plan
    argv = plan.argv + [a if isinstance(a, str) else json.dumps(a) for a in args]
    child = Child(h.host, h.name, argv, {**plan.env, **env} if env else plan.env, h.cwd,
                  plan.executable, bounds, plan.popen_kw)
    h.running.add(child)
    try:
        child.start()
    except BaseException:
        h.running.discard(child)
        for fd in (child.stdout, child.stderr):
            close_fd(fd)
        child.close_stdin()
        await child.wait()
        raise
    pipes = _Pipes(child, data, on_log, max_output)
    cpu_over: list[float] = []
    watch = None
    if limits.cpu_seconds and child.group is not None and child.group.cpu_ns() is not None:
        # RLIMIT_CPU counts one process; the cgroup counts what it started too
        def over(used: float) -> None:
            cpu_over.append(used)
            child.kill()

        watch = CpuWatch(child, limits.cpu_seconds, over)
    pipes.begin()
    try:
        timed_out = await _wait(child, pipes.eof, timeout)
    finally:
        if watch is not None:
            watch.cancel()
        h.running.discard(child)
        pipes.close()
    return _outcome(child, pipes, limits, bounds, timeout, timed_out, cpu_over)


async def _wait(child: Child, eof: asyncio.Future, timeout: float) -> bool:
    """Wait for the run to end (killed at ``timeout``) and its pipes to close;
    True if it timed out. A cancelled call kills it first."""
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
    return timed_out


def _outcome(child: Child, pipes: _Pipes, limits: Limits, bounds: Bounds, timeout: float,
             timed_out: bool, cpu_over: list[float]) -> Outcome:
    """The Outcome of a finished run, or the error that says why it failed."""
    usage = child.usage()
    if pipes.size > pipes.max_output:
        raise too_big(pipes.max_output)
    if cpu_over:
        raise errors.ResourceExhausted(
            f"cpu limit: used {cpu_over[0]:.2f}s of CPU, limit {limits.cpu_seconds:g}s",
            details={"limit": "cpu_seconds", "cpu_time": usage.cpu_time})
    if timed_out:
        stderr = tail_text(pipes.tail.get())
        raise errors.DeadlineExceeded(
            f"timed out after {timeout:g}s", details={"timeout": timeout, "stderr": stderr}
        )
    if child.code != 0:
        exc = failure(
            child.code,
            pipes.tail.get(),
            memory_limited=bool(bounds.memory_mb),
            cpu_limited=bool(limits.cpu_seconds),
            killed_by_us=child.killed,
            oom=child.cg_oom,
        )
        exc.details["cpu_time"] = usage.cpu_time
        exc.details["peak_memory"] = usage.peak_memory
        raise exc
    return Outcome(output=pipes.output(), exit_code=0, usage=usage)
