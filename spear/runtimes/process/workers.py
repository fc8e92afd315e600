"""Pooled workers: one long-lived process per instance, many invocations.

A worker speaks the framed protocol of ``docs/worker-protocol.md``: 4-byte
big-endian length + body; requests on fd 3, replies on fd 4 (the gate moves
the pipes there, see :mod:`.child`); stdout and stderr are the log stream,
so stray output can never desynchronise the protocol. Any byte on the reply
pipe that is not exactly one well-formed reply to a pending request stops
the worker and fails the call saying why.

Usage of a pooled call is the worker's CPU clock delta (``clock_gettime`` on
its process CPU clock: all threads, nanoseconds). Its peak memory is the
worker's peak RSS (``VmHWM``, reset through ``/proc/<pid>/clear_refs``) for
calls that used at least 0.5 ms of CPU, and its RSS (``statm``) for shorter
ones: reading and resetting the peak costs ~25 us, more than the rest of a
warm call, and a call that short cannot touch much memory. The RSS is read
again only every :data:`_RSS_EVERY` short calls (and after every long one):
short calls in between report the last reading, which a call under 0.5 ms
of CPU can move by a few MiB at most.

Payloads of 64 KiB and more skip the pipes when the worker took its shared
region (:mod:`.region`): the request then carries the input's length, the
reply (status 3) the output's, checked against the call's output limit.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import struct

from ... import errors
from ...protocol import ExecUsage, Limits
from ..base import TRACEBACK_TAIL, LogSink, Outcome, tail_text
from .child import REAP_WAIT, Child, clock_ns, cpu_clock
from .exits import describe_exit, failure
from .host import Host
from .limits import Bounds, CpuWatch, change_group_limits, change_memory
from .region import REGION_MIN, REGION_WORD, Region
from .spec import Plan
from .streams import MAX_OUTPUT, Tail, close_fd, emit, open_proc, too_big

log = logging.getLogger(__name__)

STATUS_OK, STATUS_ERROR, STATUS_EXHAUSTED = 0, 1, 2
#: the output is in the worker's region; the payload is its length (u64 BE)
STATUS_REGION = 3

_GRACE = 0.5  # seconds a pooled worker gets to exit on EOF before SIGKILL
_PRECISE_NS = 500_000  # calls using this much CPU get their exact peak RSS
_RSS_EVERY = 8  # short calls between two RSS readings (the others reuse the last)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_EMPTY_HEADER = b"\0\0\0\0"


def _request_head(size: int, args: list, env: dict[str, str] | None, region: int = -1) -> bytes:
    """A request's frame length, header length and JSON header; ``size`` input
    bytes follow on the pipe, or ``region`` bytes wait in the worker's region."""
    if env and not args and len(env) == 1 and region < 0:
        # the common call: only TRACEPARENT, whose characters need no escaping
        header = b'{"env":{"TRACEPARENT":"%s"}}' % env["TRACEPARENT"].encode()
    elif args or env or region >= 0:
        fields: dict = {"args": args} if args else {}
        if env:
            fields["env"] = env
        if region >= 0:
            fields["region"] = region
        try:
            header = json.dumps(fields, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise errors.InvalidArgument(f"args must be JSON-serialisable: {exc}") from None
    else:
        return _U32.pack(4 + size) + _EMPTY_HEADER
    return _U32.pack(4 + len(header) + size) + _U32.pack(len(header)) + header


class Worker:
    """A long-lived worker process speaking the framed protocol on fds 3 and 4."""

    def __init__(self, plan: Plan, cwd: str, tmpdir: str | None, host: Host, name: str,
                 max_output: int = MAX_OUTPUT) -> None:
        self.plan = plan
        self.cwd = cwd
        self.tmpdir = tmpdir
        self.host = host
        self.name = name
        self.child: Child | None = None
        self.lock = asyncio.Lock()
        self.sink: LogSink | None = None
        self.tail = Tail()
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None  # the ready frame or a reply
        self.timed_out = False
        self.reason: errors.SpearError | None = None  # why we killed it
        self.max_output = max_output  # of the current call's reply
        self.bounds = Bounds()
        self.start_timeout = 30.0
        self.died_idle = False  # died with no call running: the next call starts a new one
        self.stopping = False
        self._status_fd = self._clear_fd = self._statm_fd = -1
        self._clock = 0
        self._rss = 0  # the last RSS reading, reported by short calls
        self._rss_age = 0  # short calls since it was taken
        self.region: Region | None = None  # big payloads' way, once the worker took it
        self._top = STATUS_EXHAUSTED  # the highest reply status this worker may send

    @property
    def alive(self) -> bool:
        """Whether the worker runs and may take a call."""
        return self.child is not None and not self.child.exited.done() and not self.child.killed

    @property
    def pid(self) -> int:
        """The worker's pid (0 before it started)."""
        return self.child.pid if self.child else 0

    async def start(self, bounds: Bounds, timeout: float) -> None:
        """Start the worker under ``bounds`` and wait (up to ``timeout``) for its ready frame."""
        plan = self.plan
        self.bounds, self.start_timeout = bounds, timeout
        self.buf = bytearray()
        self.tail = Tail()
        self.timed_out = self.died_idle = False
        self.reason = None
        self._top = STATUS_EXHAUSTED
        region = self.region = Region.create()
        try:
            child = Child(self.host, self.name, plan.argv, plan.env, self.cwd, plan.executable,
                           bounds, plan.popen_kw, worker=True,
                           region_fd=region.fd if region is not None else -1)
        except BaseException:
            self._close_region()
            raise
        try:
            child.start()
        except BaseException:
            for fd in (child.stdout, child.stderr):
                close_fd(fd)
            child.close_stdin()
            await child.wait()
            self._close_region()
            raise
        self.child = child
        loop = child.loop
        self._clock = cpu_clock(child.pid)
        self._statm_fd = open_proc(child.pid, "statm", os.O_RDONLY)
        self._status_fd = open_proc(child.pid, "status", os.O_RDONLY)
        self._clear_fd = open_proc(child.pid, "clear_refs", os.O_WRONLY)
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
            self._rss = self._memory(precise=True)  # start the peak window after the imports
            self._rss_age = 0
            if region is not None and REGION_WORD in payload.split():
                self._top = STATUS_REGION
            else:  # a worker that does not speak of it never gets big payloads that way
                self._close_region()
            return
        await self.stop(grace=0)
        message = payload.decode("utf-8", "replace") or f"status {status}"
        stderr = tail_text(self.tail.get())
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
            if size + 4 == len(chunk) and chunk[4] <= self._top and size <= self.max_output:
                self._on_frame(chunk[4], chunk[5:])  # the usual case: one whole frame
                return True
        buf += chunk
        if len(buf) < 5:
            return True
        (size,) = _U32.unpack_from(buf)
        if size < 1:
            self._violation("a frame of length 0")
            return False
        if buf[4] > self._top:
            self._violation(f"reply status {buf[4]} (0 to {self._top} expected; "
                            f"header {bytes(buf[:5]).hex()})")
            return False
        if size - 1 > self.max_output:
            self._stop_for(too_big(self.max_output), f"a reply of {size - 1} bytes")
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
        if status == STATUS_REGION:
            payload = self._from_region(payload)
            if payload is None:
                return
            status = STATUS_OK
        self._drain_stderr()  # logs written before the reply belong to this call
        self.waiter.set_result((status, payload))

    def _from_region(self, payload: bytes) -> bytes | None:
        """The output a status-3 reply points at, checked before a byte is read; None
        (and the worker stopped) if the reply is malformed or the output too big."""
        if len(payload) != _U64.size:
            self._violation(f"a region reply of {len(payload)} bytes ({_U64.size} expected)")
            return None
        (size,) = _U64.unpack(payload)
        if size > self.max_output:
            self._stop_for(too_big(self.max_output), f"a reply of {size} bytes in the region")
            return None
        region = self.region
        if size > region.size:
            self._violation(f"an output of {size} bytes in a region of {region.size}")
            return None
        return region.read(size)

    def _close_region(self) -> None:
        region, self.region = self.region, None
        self._top = STATUS_EXHAUSTED
        if region is not None:
            region.close()

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
            emit(self.sink, chunk)
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
        self.child.loop.call_later(REAP_WAIT, self._give_up, self.waiter)

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
            close_fd(fd)
        child.stdout = child.stderr = -1
        child.close_stdin()
        for fd in (self._status_fd, self._clear_fd, self._statm_fd):
            close_fd(fd)
        self._status_fd = self._clear_fd = self._statm_fd = -1
        self._close_region()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.timed_out:
                exc: errors.SpearError = errors.DeadlineExceeded("timed out")
            elif self.reason is not None:
                exc = self.reason
            else:
                exc = failure(
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
                        child.pid, self.name, describe_exit(child.code),
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

    def _call_memory(self, cpu_ns: int) -> int:
        """A call's peak memory: exact after a long call, else the RSS, read every
        :data:`_RSS_EVERY` calls (a long call's peak is the next reading)."""
        if cpu_ns >= _PRECISE_NS:
            self._rss_age = _RSS_EVERY  # memory may have moved: read it next time
            return self._memory(precise=True)
        self._rss_age += 1
        if self._rss_age >= _RSS_EVERY or not self._rss:
            self._rss = self._memory(precise=False)
            self._rss_age = 0
        return self._rss

    def _apply(self, bounds: Bounds) -> None:
        """A call whose limits differ from those the worker runs under: change them."""
        child = self.child
        now = self.bounds
        if bounds.memory_mb and bounds.memory_mb != child.memory_mb:
            change_memory(child, bounds.memory_mb)
        pids = bounds.pids if bounds.pids != now.pids else None
        cpus = bounds.cpus if bounds.cpus != now.cpus else None
        if pids is not None or cpus is not None:
            change_group_limits(child, pids, cpus)
        self.bounds = Bounds(memory_mb=child.memory_mb, pids=bounds.pids or now.pids,
                              cpus=bounds.cpus if bounds.cpus is not None else now.cpus)

    def _cpu_over(self, seconds: float, used: float) -> None:
        self._stop_for(errors.ResourceExhausted(
            f"cpu limit: the call used {used:.2f}s of CPU, limit {seconds:g}s",
            details={"limit": "cpu_seconds", "cpu_time": used}), "cpu_seconds")

    def _request(self, data: bytes, args: list, env: dict[str, str] | None) -> tuple[bytes, bytes]:
        """The request's head and what follows it on the pipe: big inputs go into
        the worker's region (nothing follows), small ones follow the head."""
        region = self.region
        if region is not None and REGION_MIN <= len(data) <= region.size:
            try:
                return _request_head(0, args, env, region.write(data)), b""
            except OSError as exc:  # no memory for the region's pages
                raise errors.ResourceExhausted(
                    f"cannot hand the input to the worker: {exc}") from None
        return _request_head(len(data), args, env), data

    async def call(
        self,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None,
        timeout: float,
        bounds: Bounds,
        max_output: int = MAX_OUTPUT,
        env: dict[str, str] | None = None,
    ) -> Outcome:
        """One invocation: send the request, wait for the reply under ``timeout``,
        ``limits.cpu_seconds`` and ``max_output``; a worker that died idle is restarted first.
        ``env``: variables the worker sets for this call (the header's ``env``)."""
        async with self.lock:
            if not self.alive:
                if self.child is not None and not self.stopping:
                    await self.child.wait()  # killed between calls: reaped, died_idle set
                if not self.died_idle:
                    raise errors.Unavailable("the worker has stopped")
                await self.start(self.bounds, self.start_timeout)
            head, data = self._request(data, args, env)
            if bounds != self.bounds:
                self._apply(bounds)
            self.max_output = max_output
            loop = self.child.loop
            clock = self._clock
            cpu0 = clock_ns(clock)
            self.waiter = waiter = loop.create_future()
            self.tail = Tail()  # a failed call keeps its own stderr, not its predecessors'
            self.sink = on_log
            self._send(head, data)
            timer = loop.call_later(timeout, self._on_timeout)
            seconds = limits.cpu_seconds
            watch = (CpuWatch(self.child, seconds, functools.partial(self._cpu_over, seconds))
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
                if self.region is not None:
                    self.region.settle()
            cpu = clock_ns(clock) - cpu0
            usage = ExecUsage(cpu_time=cpu / 1e9, peak_memory=self._call_memory(cpu))
        if status == STATUS_OK:
            return Outcome(output=payload, exit_code=None, usage=usage)
        # "Type: message", then (from Spear's Python worker) NUL and the traceback's end
        head, _, tb = payload.partition(b"\0")
        message = head.decode("utf-8", "replace")
        details: dict = {"error": message, "stderr": tail_text(self.tail.get())}
        if tb:
            details["traceback"] = tail_text(tb, TRACEBACK_TAIL)
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
