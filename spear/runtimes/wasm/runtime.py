"""The ``wasm`` runtime: WebAssembly functions on wasmtime-py.

Two kinds of function, chosen by ``FunctionSpec.handler``: a **WASI command**
(handler ``""`` or ``"_start"``, see :mod:`.commands`) runs in a fresh store
per call; a **plain export** (handler = export name, see :mod:`.exports`)
keeps one store per instance. Their limits are in :mod:`.limits`.

Where calls run (wasmtime-py calls into C through ``ctypes``, which releases
the GIL, so the pool runs in parallel):

* Exports of self-contained modules run *inline* on the event loop; the
  epoch ticker still interrupts a runaway loop. Exports of modules that
  import WASI run on the thread pool (:mod:`.pool`).
* WASI commands run inline too once their last run was short, when no host
  call can block them (no preopened directory, no ``poll_oneoff`` import):
  stdout/stderr go to a reusable pair of memfds (:mod:`.stdio`) read after
  the run. The first call of a command, and any other command, runs on the
  pool with stdout/stderr pipes read live by the event loop.
* Either kind whose last call took longer than ``inline_budget`` seconds of
  CPU runs its next call on the pool, and comes back inline after a short one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from ... import errors
from ...protocol import FunctionSpec, Limits
from ..base import Instance, LogSink, Outcome, Prepared, Runtime, tail_text
from ..hostpaths import HostPaths
from . import commands, exports
from .commands import CommandInstance
from .engine import IMPORT_ERROR, MIB, Engine, wasmtime
from .exports import ExportInstance
from .limits import Effective, effective
from .modules import ModuleCache
from .pool import Job, WorkerPool
from .spec import Compiled, artifact_of, parse_grants
from .stdio import (Captures, ErrTail, FdBox, Output, Pump, capture_supported, close_all, deliver,
                    fd_path, open_pipes, safe_sink)
from .wasi import wasi_config

__all__ = ["WasmRuntime"]


class WasmRuntime(Runtime):
    """WebAssembly functions on one shared wasmtime Engine (see module doc).

    Counters of the compiled-module cache (:mod:`.modules`): ``compiles``,
    ``disk_hits``, ``memory_hits``; ``cache_hits`` is the sum of the last two.

    ``host_paths``: the host directories ``dir:`` grants may preopen (see
    :mod:`spear.runtimes.hostpaths`); none by default.

    Pool calls (see :mod:`.pool`): ``max_workers`` threads (default: the
    CPU count), at most ``max_queue`` calls waiting for one, each for at most
    ``queue_timeout`` seconds; beyond either bound a call fails at once with
    ``ResourceExhausted`` naming the limit. A call's timeout counts from when
    it starts running; ``Outcome.queued`` (or ``details["queued"]`` of an
    error) is the time it waited.
    """

    name = "wasm"

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        default_memory_mb: int = 128,
        default_fuel: int | None = None,
        default_timeout: float = 30.0,
        epoch_tick: float = 0.01,
        inline_exports: bool = True,
        inline_commands: bool = True,
        inline_budget: float = 0.002,
        max_workers: int | None = None,
        max_queue: int = 64,
        queue_timeout: float = 2.0,
        max_output_bytes: int = 64 * MIB,
        loaded_modules: int = 256,
        host_paths: HostPaths | None = None,
    ) -> None:
        self.host_paths = host_paths if host_paths is not None else HostPaths()
        if default_memory_mb < 1:
            raise errors.InvalidArgument("default_memory_mb must be >= 1")
        if default_fuel is not None and default_fuel < 1:
            raise errors.InvalidArgument("default_fuel must be >= 1 or None")
        if default_timeout <= 0 or epoch_tick <= 0:
            raise errors.InvalidArgument("default_timeout and epoch_tick must be > 0")
        self.default_memory_mb = default_memory_mb
        self.default_fuel = default_fuel
        self.default_timeout = float(default_timeout)
        self.epoch_tick = float(epoch_tick)
        self.inline_exports = inline_exports
        self.inline_budget = inline_budget
        #: short WASI commands run inline with memfd stdio (Linux only)
        self.inline_commands = inline_commands and capture_supported()
        self.max_output_bytes = max_output_bytes
        self._closed = False
        self._pool = WorkerPool(max_workers or os.cpu_count() or 4, max_queue, queue_timeout)
        #: how long a pool call past its deadline may take to come back before
        #: it counts as blocked in a host call (the epoch ends it within ~2 ticks)
        self.deadline_grace = max(0.05, 5 * self.epoch_tick)
        # capture files of inline commands (the epoch ticker seals a file past the output cap)
        self._captures = Captures(max_output_bytes)
        self._engine: Engine | None = None
        self._modules: ModuleCache | None = None
        if wasmtime is None:
            return
        self._engine = Engine(self.epoch_tick, self._captures.enforce, lambda: self._pool.running > 0)
        self._modules = ModuleCache(self._engine, Path(cache_dir), loaded_modules)

    # -- runtime-wide --------------------------------------------------------

    @property
    def compiles(self) -> int:
        """Artifacts compiled by cranelift."""
        return self._modules.compiles if self._modules else 0

    @property
    def disk_hits(self) -> int:
        """Modules deserialized from the disk cache."""
        return self._modules.disk_hits if self._modules else 0

    @property
    def memory_hits(self) -> int:
        """Modules found already loaded."""
        return self._modules.memory_hits if self._modules else 0

    @property
    def cache_hits(self) -> int:
        """Modules that were not compiled (``disk_hits + memory_hits``)."""
        return self.disk_hits + self.memory_hits

    def cache_path(self, digest: str) -> Path:
        """Where the serialized module of an artifact with this sha256 lives."""
        if self._modules is None:
            raise errors.Unavailable(IMPORT_ERROR)
        return self._modules.path(digest)

    def available(self) -> tuple[bool, str]:
        if wasmtime is None:
            return False, IMPORT_ERROR
        if self._closed:
            return False, "wasm runtime is closed"
        return True, ""

    @property
    def pool(self) -> WorkerPool:
        """The threads pool calls run on (counters: running, waiting, refused, expired)."""
        return self._pool

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Queue ``fn(*args)`` for a pool thread (``ResourceExhausted`` when full)."""
        if self._closed:
            raise errors.Unavailable("wasm runtime is closed")
        return self._pool.submit(fn, *args)

    async def _await_call(self, job: Job, eff: Effective) -> Any:
        """Wait for a pool call: at most ``queue_timeout`` for a thread, then
        its timeout from when it started (the epoch ends runaway wasm; the
        pool's backstop only covers a guest blocked inside a host call)."""
        return await self._pool.result(job, eff.timeout, self.deadline_grace)

    async def close(self, grace: float = 5.0) -> None:
        """Refuse new work, drop queued calls, give running calls up to
        ``grace`` seconds, then stop the epoch ticker (it outlives calls that
        are still running, so their deadlines keep working)."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown()
        end = time.monotonic() + grace
        while self._pool.running and time.monotonic() < end:
            await asyncio.sleep(self.epoch_tick)
        if self._engine is not None:
            self._engine.stop()
            if not self._pool.running:
                await asyncio.to_thread(self._engine.ticker.join, 5.0)
        if self._modules is not None:
            self._modules.clear()
        self._captures.close()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Unavailable("wasm runtime is closed")
        if wasmtime is None:
            raise errors.Unavailable(IMPORT_ERROR)

    def _limits(self, h: ExportInstance | CommandInstance, limits: Limits | None) -> Effective:
        """The resolved limits of a call on ``h`` (the last call's, if the
        caller passes the same Limits object again)."""
        if h.lim_obj is limits and limits is not None:
            return h.lim_eff
        eff = effective(limits, h.compiled.limits, self.default_timeout, self.default_memory_mb,
                        self.default_fuel)
        h.lim_obj, h.lim_eff = limits, eff
        return eff

    # -- deploy ----------------------------------------------------------------

    async def prepare(self, spec: FunctionSpec) -> Prepared:
        self._check_open()
        artifact = artifact_of(spec)
        sandbox = parse_grants(spec, self.host_paths)
        digest = hashlib.sha256(artifact).hexdigest()
        mod = await self._modules.get(artifact, digest)
        return Prepared(spec=spec, handle=Compiled(mod, spec, sandbox), digest=digest)

    async def create_instance(self, prepared: Prepared) -> Instance:
        self._check_open()
        compiled = prepared.handle
        if not isinstance(compiled, Compiled):
            raise errors.InvalidArgument("prepared handle does not come from the wasm runtime")
        if compiled.command:
            return Instance(function=compiled.name, handle=CommandInstance(compiled))
        h = ExportInstance(compiled, self.inline_exports)
        eff = self._limits(h, None)
        if not compiled.mod.imports_wasi:
            await self._await_call(self._submit(exports.instantiate, self._engine, h, eff, None), eff)
            return Instance(function=compiled.name, handle=h)
        loop = asyncio.get_running_loop()
        out_r, err_r, box = open_pipes()
        h.pipes = (out_r, err_r)
        pump = Pump(loop, [(out_r, None), (err_r, None)])  # output of _initialize is dropped
        try:
            await self._await_call(self._submit(exports.instantiate, self._engine, h, eff, box), eff)
        except BaseException:
            close_all(h.pipes)
            h.pipes = None
            raise
        finally:
            close_all(box.take())  # only if the worker never started
            pump.finish()
        return Instance(function=compiled.name, handle=h)

    async def destroy(self, instance: Instance) -> None:
        h = instance.handle
        instance.reusable = False
        if h is None or getattr(h, "closed", True):
            return
        if isinstance(h, ExportInstance):
            with h.lock:
                h.closed = True
                if h.busy:  # a pool worker is still in the call: it frees the store
                    return
            h.release()
        else:
            h.closed = True

    # -- invoke ------------------------------------------------------------------

    async def invoke(
        self,
        instance: Instance,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None = None,
        *,
        traceparent: str = "",
        tracestate: str = "",
    ) -> Outcome:
        h = instance.handle
        if h.__class__ is ExportInstance:
            if h.closed or self._closed:
                raise errors.Unavailable("wasm instance or runtime is closed")
            eff = self._limits(h, limits)
            values = exports.convert_args(h, args)
            try:
                if h.inline and not h.slow:
                    return self._call_export_inline(h, values, eff)
                return await self._call_export_threaded(h, values, eff, on_log)
            finally:
                if h.broken:
                    instance.reusable = False
        if h.__class__ is CommandInstance:
            if h.closed or self._closed:
                raise errors.Unavailable("wasm instance or runtime is closed")
            compiled = h.compiled
            eff = self._limits(h, limits)
            trace = (traceparent, tracestate)
            if compiled.inline and not compiled.slow and self.inline_commands:
                return self._run_command_inline(compiled, data, args, eff, on_log, trace)
            return await self._run_command_async(compiled, data, args, eff, on_log, trace)
        raise errors.InvalidArgument("instance does not come from the wasm runtime")

    def invoke_now(self, instance: Instance, data: bytes, args: list, limits: Limits, *,
                   traceparent: str = "", tracestate: str = "") -> Outcome | None:
        """The Spearlet's fast path: inline calls answered without a coroutine.

        Same rules as :meth:`invoke`: exports and short WASI commands of
        modules that cannot block run inline; anything else returns None.
        A plain export has no per-call environment (no TRACEPARENT).
        Logs (stderr) are not streamed here: stream mode never uses this path.
        """
        h = instance.handle
        if h.__class__ is ExportInstance:
            if h.closed or self._closed or not h.inline or h.slow or h.busy:
                return None
            # the hot path: the limits cache and the busy flag without a call
            eff = h.lim_eff if h.lim_obj is limits and limits is not None else self._limits(h, limits)
            values = exports.convert_args(h, args)
            h.busy = True
            try:
                return exports.call(self._engine, h, values, eff, self.inline_budget)
            finally:
                h.busy = False
                if h.broken:
                    instance.reusable = False
        if h.__class__ is CommandInstance:
            compiled = h.compiled
            if (h.closed or self._closed or not compiled.inline or compiled.slow
                    or not self.inline_commands):
                return None
            eff = self._limits(h, limits)
            return self._run_command_inline(compiled, data, args, eff, None,
                                            (traceparent, tracestate))
        return None

    # -- plain exports -------------------------------------------------------------

    def _call_export_inline(self, h: ExportInstance, values: list, eff: Effective) -> Outcome:
        # nothing else can run on the event-loop thread meanwhile, so the
        # busy flag needs no lock here
        if h.busy:
            raise errors.Internal("wasm instance is already running a call")
        h.busy = True
        try:
            return exports.call(self._engine, h, values, eff, self.inline_budget)
        finally:
            h.busy = False

    async def _call_export_threaded(self, h: ExportInstance, values: list, eff: Effective,
                                    on_log: LogSink | None) -> Outcome:
        loop = asyncio.get_running_loop()
        pump = None
        if h.pipes is not None:
            sink = safe_sink(on_log)
            pump = Pump(loop, [(h.pipes[0], sink), (h.pipes[1], sink)])
        try:
            job = self._submit(exports.call_pooled, self._engine, h, values, eff, self.inline_budget)
            outcome = await self._await_call(job, eff)
            outcome.queued = job.waited
            return outcome
        except (asyncio.CancelledError, errors.DeadlineExceeded):
            h.broken = True  # the call may still be running
            raise
        finally:
            if pump is not None:
                pump.finish()

    # -- WASI commands ------------------------------------------------------------

    def _run_command_inline(self, compiled: Compiled, data: bytes, args: list, eff: Effective,
                            on_log: LogSink | None, trace: tuple[str, str]) -> Outcome:
        """Run a short command on the event-loop thread. stdout and stderr go
        to a reusable pair of memfds; stderr reaches ``on_log`` after the run."""
        captures = self._captures
        try:
            cap = captures.take()
        except OSError as exc:
            raise errors.Unavailable(f"cannot create the stdio files of a WASI call: {exc}") from None
        logs = b""
        try:
            cfg = wasi_config(compiled.wasi, args, data, cap.out_path, cap.err_path, trace)
            captures.watch(cap)
            try:
                exit_code, usage = commands.execute(self._engine, compiled, cfg, eff, self.inline_budget)
            finally:
                captures.unwatch(cap)
                limit = self.max_output_bytes
                logs, _ = cap.read(cap.err, limit, partial=True)
                out, out_size = cap.read(cap.out, limit, partial=False)
                deliver(logs, on_log)
            return commands.outcome(exit_code, usage, out, out_size > limit, limit)
        except errors.SpearError as exc:  # a trap, a limit or a non-zero exit: keep its stderr
            exc.details.setdefault("stderr", tail_text(logs))
            raise
        finally:
            captures.give_back(cap, keep=not self._closed)

    async def _run_command_async(self, compiled: Compiled, data: bytes, args: list, eff: Effective,
                                 on_log: LogSink | None, trace: tuple[str, str]) -> Outcome:
        """Run a command on the pool, its stdout/stderr pipes read live."""
        loop = asyncio.get_running_loop()
        out_r, err_r, box = open_pipes(big_stdout=True)
        output = Output(self.max_output_bytes)
        err = ErrTail(safe_sink(on_log))
        pump = Pump(loop, [(out_r, output), (err_r, err)])
        job: Job | None = None
        try:
            try:
                job = self._submit(self._run_command, compiled, data, args, eff, box, trace)
                exit_code, usage = await self._await_call(job, eff)
            finally:
                close_all(box.take())  # only if the worker never started
                pump.finish()
                close_all(tuple(fd for fd, _ in pump.fds))  # the read ends still open
            result = commands.outcome(exit_code, usage, b"".join(output.chunks), output.overflow,
                                      self.max_output_bytes)
        except errors.SpearError as exc:  # a trap, a limit or a non-zero exit: keep its stderr
            exc.details.setdefault("stderr", err.text())
            if job is not None:
                exc.details.setdefault("queued", job.waited)
            raise
        result.queued = job.waited
        return result

    def _run_command(self, compiled: Compiled, data: bytes, args: list, eff: Effective,
                     box: FdBox, trace: tuple[str, str]) -> tuple[int, dict]:
        """Run ``_start`` in a fresh store (pool thread). Returns (exit code, usage)."""
        fds = box.take()
        if fds is None:  # the caller gave up before this worker started
            raise errors.Cancelled("invocation cancelled before it started")
        try:
            cfg = wasi_config(compiled.wasi, args, data, fd_path(fds[0]), fd_path(fds[1]), trace)
        finally:
            close_all(fds)  # wasmtime opened its own descriptors
        return commands.execute(self._engine, compiled, cfg, eff, self.inline_budget)
