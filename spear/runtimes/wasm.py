"""The ``wasm`` runtime: WebAssembly functions on wasmtime-py.

Two kinds of function, chosen by ``FunctionSpec.handler``:

* **WASI command** (handler ``""`` or ``"_start"``): every invocation runs
  ``_start`` in a *fresh* store and instance. The input bytes are stdin, the
  bytes written to stdout are the output, stderr goes to ``on_log`` (live for
  pool runs, after the run for inline runs) and the WASI exit status is
  ``Outcome.exit_code`` (``proc_exit(0)`` or a plain return is success;
  anything else raises :class:`~spear.errors.FunctionError` with
  ``details["exit_code"]``). ``Instance`` is then only a cheap template
  around a pre-linked ``InstancePre``: it holds no guest state, so it is
  always ``reusable``.
* **Plain export** (handler = export name): the store and instance are made
  once in :meth:`WasmRuntime.create_instance` and reused by every invocation,
  so guest state (globals, memory) persists between calls of one instance.
  The numeric ``args`` are converted to the export's parameter types and the
  output is the result(s) as compact JSON text (``b"42"``, ``b"[1,2]"``,
  ``b"null"`` for no result). After a trap or ``proc_exit`` the instance is
  marked ``reusable = False``.

Limits (``None`` falls back to the function's own limits, then to the
runtime defaults): ``memory_mb`` is a store limit on every linear memory (a
failed ``memory.grow`` followed by a trap near the limit is reported as
``ResourceExhausted("memory limit ...")``); ``fuel`` is set per call and running
out raises ``ResourceExhausted("fuel exhausted")``; ``timeout`` is an epoch
deadline (a daemon thread ticks the shared engine every ``epoch_tick``
seconds) and raises ``DeadlineExceeded``. Other traps raise ``FunctionError``.

Where calls run (wasmtime-py calls into C through ``ctypes``, which releases
the GIL, so the pool runs in parallel):

* Exports of self-contained modules run *inline* on the event loop through a
  low-level ``wasmtime_func_call_unchecked`` path: ~10x cheaper than a thread
  hop, and the epoch ticker still interrupts a runaway loop. Exports of
  modules that import WASI run on a dedicated thread pool.
* WASI commands run inline too once their last run was short, when no host
  call can block them (no preopened directory, no ``poll_oneoff`` import):
  the store, WASI context and instance are built straight through the C API
  and stdout/stderr go to a reusable pair of memfds (:mod:`.wasm_io`) read
  after the run. The first call of a command, and any other command, runs on
  the pool with stdout/stderr pipes read live by the event loop.
* Either kind whose last call took longer than ``inline_budget`` seconds
  runs its next call on the pool, and comes back inline after a short one.

Compiled modules are serialized to ``cache_dir`` under a key made of the
artifact's sha256, the wasmtime version and the engine configuration, so a
redeploy or a Spearlet restart deserializes (mmap) instead of recompiling.
The cache directory must be trusted: deserializing is only safe for files
this runtime wrote itself.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import hashlib
import json
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import errors
from ..protocol import ExecUsage, FunctionSpec, Limits
from .base import Instance, LogSink, Outcome, Prepared, Runtime
from .hostpaths import HostDir, HostPaths
from .wasm_pool import EpochClock, Job, WorkerPool
from .wasm_io import (
    Capture, FdBox, Output, Pump, WasiArgs, capture_supported, close_all, deliver, fd_path, open_pipes,
    safe_sink, wasi_config,
)

try:  # pragma: no branch - wasmtime is a hard dependency in practice
    import wasmtime
    from wasmtime import _bindings as _B

    _IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - exercised only without wasmtime
    wasmtime = None  # type: ignore[assignment]
    _B = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"wasmtime-py is not usable: {exc}"

try:
    from importlib.metadata import version as _dist_version

    WASMTIME_VERSION = _dist_version("wasmtime") if wasmtime is not None else ""
except Exception:  # pragma: no cover
    WASMTIME_VERSION = "unknown"

__all__ = ["WasmRuntime", "WASMTIME_VERSION"]

log = logging.getLogger("spear.runtimes.wasm")

WASM_MAGIC = b"\0asm"
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
#: fuel given to a call that has no fuel limit (consumption is still counted)
UNLIMITED_FUEL = (1 << 63) - 1
#: bump when the cache layout or the engine configuration changes
CACHE_FORMAT = "spear-wasm-cache-v1"
_MIB = 1 << 20
_NUMERIC = ("i32", "i64", "f32", "f64")
#: WASI imports that can park the calling thread (a sleep)
_BLOCKING_IMPORTS = frozenset({"poll_oneoff"})
#: wasmtime_extern_t kinds
_EXTERN_FUNC = 0
_EXTERN_MEMORY = 3
#: idle capture-file pairs kept for inline commands
_SPARE_CAPTURES = 4
_INT_RANGE = {"i32": (-(1 << 31), 1 << 32), "i64": (-(1 << 63), 1 << 64)}


# --------------------------------------------------------------------------
# compiled form and instances
# --------------------------------------------------------------------------


class _Sandbox:
    """What a function may touch, parsed from ``FunctionSpec.grants``."""

    __slots__ = ("env", "preopens", "dirs", "args", "network")

    def __init__(self) -> None:
        self.env: list[tuple[str, str]] = []
        self.preopens: list[tuple[str, str, bool]] = []
        #: the granted directories' open handles, kept as long as the preopens use them
        self.dirs: list[HostDir] = []
        self.args = False
        self.network = False


class _Module:
    """A compiled module shared by every spec with the same artifact."""

    __slots__ = ("module", "pre", "pre_ptr", "exports", "imports_wasi", "may_block", "memory_names", "from_cache")

    def __init__(self, module: Any, pre: Any, from_cache: bool) -> None:
        self.module = module
        self.pre = pre
        self.pre_ptr = pre.ptr()  # kept alive by ``pre``
        self.exports = {e.name: e.type for e in module.exports}
        wasi = {i.name for i in module.imports if i.module in WASI_MODULES}
        self.imports_wasi = bool(wasi)
        #: the guest can sleep inside a host call, where the epoch cannot stop it
        self.may_block = not wasi.isdisjoint(_BLOCKING_IMPORTS)
        self.memory_names = tuple(
            n.encode() for n, t in self.exports.items() if isinstance(t, wasmtime.MemoryType)
        )
        self.from_cache = from_cache


class _Compiled:
    """``Prepared.handle``: a module plus how this spec runs it."""

    __slots__ = (
        "mod", "name", "command", "export", "params", "results", "sandbox", "limits",
        "wasi", "inline", "slow",
    )

    def __init__(self, mod: _Module, spec: FunctionSpec, sandbox: _Sandbox) -> None:
        self.mod = mod
        self.name = spec.name
        self.sandbox = sandbox
        self.limits = spec.limits
        handler = spec.handler
        self.command = handler in ("", "_start")
        self.export = "_start" if self.command else handler
        ty = mod.exports.get(self.export)
        if ty is None or not isinstance(ty, wasmtime.FuncType):
            if self.command:
                raise errors.InvalidArgument(
                    "module has no `_start` function (not a WASI command); set "
                    "handler to the name of an exported function to call it"
                )
            funcs = sorted(n for n, t in mod.exports.items() if isinstance(t, wasmtime.FuncType))
            raise errors.InvalidArgument(
                f"module has no exported function {handler!r}; exported functions: {funcs}"
            )
        self.params = tuple(str(p) for p in ty.params)
        self.results = tuple(str(r) for r in ty.results)
        if self.command and (self.params or self.results):
            raise errors.InvalidArgument("`_start` must take no parameters and return nothing")
        bad = [t for t in self.params + self.results if t not in _NUMERIC]
        if bad:
            raise errors.InvalidArgument(
                f"export {handler!r} uses non-numeric types {bad}; only i32, i64, f32, f64 are supported"
            )
        self.wasi = WasiArgs(spec.name, sandbox.env, sandbox.preopens, sandbox.args, sandbox.network)
        #: a command may run inline on the event loop only if no host call can
        #: block it: no preopened directories, no ``poll_oneoff`` (stdin is in
        #: memory, stdout/stderr are memfds)
        self.inline = self.command and not sandbox.preopens and not mod.may_block
        #: the last call of this command took longer than ``inline_budget``
        #: (unknown at first: the first call runs on the pool)
        self.slow = True


class _Effective:
    """Limits resolved to engine units, cached per Limits object."""

    __slots__ = ("timeout", "memory", "memory_mb", "fuel")

    def __init__(self, timeout: float, memory_mb: int, fuel: int | None) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.memory = memory_mb * _MIB
        self.fuel = fuel if fuel is not None else UNLIMITED_FUEL


class _CommandInstance:
    """Instance handle of a WASI command: a template, one store per call."""

    __slots__ = ("compiled", "closed", "lim_obj", "lim_eff")

    def __init__(self, compiled: _Compiled) -> None:
        self.compiled = compiled
        self.closed = False
        self.lim_obj: Any = None
        self.lim_eff: _Effective | None = None


class _ExportInstance:
    """Instance handle of a plain export: one store + instance, reused."""

    __slots__ = (
        "compiled", "store", "ctx", "func", "fref", "memories", "buf", "nbuf",
        "setters", "getters", "mem_limit", "lim_obj", "lim_eff", "inline",
        "slow", "busy", "pipes", "broken", "closed", "lock",
    )

    def __init__(self, compiled: _Compiled) -> None:
        self.compiled = compiled
        self.store: Any = None
        self.ctx: Any = None
        self.func: Any = None
        self.fref: Any = None
        self.memories: list = []
        n = max(len(compiled.params), len(compiled.results), 1)
        self.buf = (_B.wasmtime_val_raw_t * n)()
        self.nbuf = n
        self.setters = compiled.params
        self.getters = compiled.results
        self.mem_limit = -1
        self.lim_obj: Any = None
        self.lim_eff: _Effective | None = None
        self.inline = not compiled.mod.imports_wasi
        self.slow = False
        self.busy = False
        self.pipes: tuple[int, int] | None = None  # (stdout_r, stderr_r) for WASI exports
        self.broken = False  # a call trapped or exited: guest state is suspect
        self.closed = False
        # guards busy/closed between a pool worker and destroy() on the loop
        self.lock = threading.Lock()

    def release(self) -> None:
        """Free the store and pipes (only when no call is running)."""
        store, self.store, self.ctx, self.func, self.fref, self.memories = self.store, None, None, None, None, []
        if store is not None:
            try:
                store.close()
            except Exception:  # pragma: no cover - defensive
                log.exception("closing a wasm store failed")
        close_all(self.pipes)
        self.pipes = None


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _short_trap(exc: BaseException) -> str:
    """The reason line of a wasmtime trap/error message (no backtrace)."""
    text = str(exc).strip()
    if "Caused by:" in text:
        tail = [ln.strip() for ln in text.split("Caused by:", 1)[1].splitlines() if ln.strip()]
        if tail:
            reason = tail[-1]
            # "0: foo" / "1: bar" style chains: keep the last cause
            if len(reason) > 2 and reason[0].isdigit() and ": " in reason[:4]:
                reason = reason.split(": ", 1)[1]
            return reason
    return text.splitlines()[0] if text else type(exc).__name__


def _memory_bytes(ctx: Any, memories: list) -> int:
    size = _B._wasmtime_memory_data_size
    peak = 0
    for mem in memories:
        n = size(ctx, ctypes.byref(mem._memory))
        if n > peak:
            peak = n
    return peak


def _near_limit(used: int, limit: int) -> bool:
    """True if a memory of ``used`` bytes is close enough to ``limit`` that a
    failed ``memory.grow`` (and the trap that follows it) is the likely cause."""
    return limit - used < max(_MIB, limit >> 4)


def _raw_call(ctx: Any, fref: Any, buf: Any, n: int) -> None:
    """Call through ``wasmtime_func_call_unchecked``; raise Trap/WasmtimeError."""
    trap = ctypes.POINTER(_B.wasm_trap_t)()
    err = _B._wasmtime_func_call_unchecked(ctx, fref, buf, n, ctypes.byref(trap))
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)


def _convert_arg(i: int, ty: str, value: Any) -> int | float:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text, 0) if ty in _INT_RANGE else float(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise errors.InvalidArgument(f"arg {i}: {value!r} is not a number") from None
    if ty in _INT_RANGE:
        if isinstance(value, float):
            if not value.is_integer():
                raise errors.InvalidArgument(f"arg {i}: {value!r} is not an integer ({ty})")
            value = int(value)
        if not isinstance(value, int):
            raise errors.InvalidArgument(f"arg {i}: {value!r} is not an integer ({ty})")
        lo, hi = _INT_RANGE[ty]
        if not lo <= value < hi:
            raise errors.InvalidArgument(f"arg {i}: {value} is out of range for {ty}")
        return int(value)
    if isinstance(value, (int, float)):
        return float(value)
    raise errors.InvalidArgument(f"arg {i}: {value!r} is not a number ({ty})")


def _encode_results(values: list) -> bytes:
    if len(values) == 1:
        v = values[0]
        if v.__class__ is int:
            return str(v).encode()
        return json.dumps(v).encode()
    if not values:
        return b"null"
    return json.dumps(values, separators=(",", ":")).encode()


#: the ``finalizer`` of a store that has no host data
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))


# --------------------------------------------------------------------------
# the runtime
# --------------------------------------------------------------------------


class WasmRuntime(Runtime):
    """WebAssembly functions on one shared wasmtime Engine (see module doc).

    Counters for the compiled-module cache: ``compiles`` (artifacts compiled
    by cranelift), ``disk_hits`` (deserialized from ``cache_dir``),
    ``memory_hits`` (found among already loaded modules); ``cache_hits`` is
    the sum of the last two.

    ``host_paths``: the host directories ``dir:`` grants may preopen (see
    :mod:`.hostpaths`); none by default.

    Pool calls (see :mod:`.wasm_pool`): ``max_workers`` threads (default: the
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
        max_output_bytes: int = 64 * _MIB,
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
        self.cache_dir = Path(cache_dir)
        self.default_memory_mb = default_memory_mb
        self.default_fuel = default_fuel
        self.default_timeout = float(default_timeout)
        self.epoch_tick = float(epoch_tick)
        self.inline_exports = inline_exports
        self.inline_budget = inline_budget
        #: short WASI commands run inline with memfd stdio (Linux only)
        self.inline_commands = inline_commands and capture_supported()
        self.max_output_bytes = max_output_bytes
        self.compiles = 0
        self.disk_hits = 0
        self.memory_hits = 0
        self._loaded: collections.OrderedDict[str, _Module] = collections.OrderedDict()
        self._loaded_max = loaded_modules
        self._inflight: dict[str, asyncio.Future] = {}
        self._closed = False
        self._engine: Any = None
        self._engine_ptr: Any = None
        self._linker: Any = None
        # capture files of inline commands: idle pairs, and the pairs in use
        # (watched by the epoch ticker, which seals a file past the output cap)
        self._captures: list[Capture] = []
        self._capturing: set[Capture] = set()
        self._capture_lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._clock: EpochClock | None = None
        self._pool = WorkerPool(max_workers or os.cpu_count() or 4, max_queue, queue_timeout)
        #: how long a pool call past its deadline may take to come back before
        #: it counts as blocked in a host call (the epoch ends it within ~2 ticks)
        self.deadline_grace = max(0.05, 5 * self.epoch_tick)
        #: everything that makes a serialized module (in)compatible
        self.engine_fingerprint = (
            f"{CACHE_FORMAT};wasmtime={WASMTIME_VERSION};machine={platform.machine()};"
            f"system={platform.system()};consume_fuel=1;epoch_interruption=1"
        )
        if wasmtime is None:
            return
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        self._engine = wasmtime.Engine(cfg)
        self._engine_ptr = self._engine.ptr()
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        self._clock = EpochClock(self._engine.increment_epoch, self.epoch_tick)
        self._ticker = threading.Thread(target=self._tick, name="spear-wasm-epoch", daemon=True)
        self._ticker.start()

    # -- runtime-wide --------------------------------------------------------

    @property
    def cache_hits(self) -> int:
        return self.disk_hits + self.memory_hits

    @property
    def engine(self) -> Any:
        return self._engine

    def available(self) -> tuple[bool, str]:
        if wasmtime is None:
            return False, _IMPORT_ERROR
        if self._closed:
            return False, "wasm runtime is closed"
        return True, ""

    @property
    def pool(self) -> WorkerPool:
        """The threads pool calls run on (counters: running, waiting, refused, expired)."""
        return self._pool

    def _tick(self) -> None:
        """Keep the epoch on the clock (:class:`EpochClock`); after close(),
        keep going until the last pool call has ended so its deadline still fires."""
        clock = self._clock
        monotonic = time.monotonic
        wait = self._stop.wait
        pool = self._pool
        capturing = self._capturing
        while True:
            delay = clock.next_at() - monotonic()
            if delay > 0 and wait(delay):
                if not pool.running:
                    return
                time.sleep(delay)
            clock.advance(monotonic())
            if capturing:  # an inline command is running: bound its output
                with self._capture_lock:
                    for cap in capturing:
                        cap.enforce(self.max_output_bytes)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Queue ``fn(*args)`` for a pool thread (``ResourceExhausted`` when full)."""
        if self._closed:
            raise errors.Unavailable("wasm runtime is closed")
        return self._pool.submit(fn, *args)

    async def _await_call(self, job: Job, eff: _Effective) -> Any:
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
        self._stop.set()
        if self._ticker is not None and not self._pool.running:
            await asyncio.to_thread(self._ticker.join, 5.0)
        self._loaded.clear()
        while self._captures:
            self._captures.pop().close()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Unavailable("wasm runtime is closed")
        if wasmtime is None:
            raise errors.Unavailable(_IMPORT_ERROR)

    # -- prepare: validate, compile or load from the cache -------------------

    def cache_path(self, digest: str) -> Path:
        """Where the serialized module of an artifact with this sha256 lives."""
        key = hashlib.sha256(f"{self.engine_fingerprint}\0{digest}".encode()).hexdigest()
        return self.cache_dir / f"{key}.cwasm"

    async def prepare(self, spec: FunctionSpec) -> Prepared:
        self._check_open()
        artifact = spec.artifact
        if not artifact:
            raise errors.InvalidArgument(f"function {spec.name!r}: a wasm function needs an artifact (.wasm or .wat bytes)")
        if not isinstance(artifact, (bytes, bytearray, memoryview)):
            raise errors.InvalidArgument("artifact must be bytes")
        artifact = bytes(artifact)
        sandbox = self._parse_grants(spec)
        digest = hashlib.sha256(artifact).hexdigest()
        mod = await self._module(artifact, digest)
        compiled = _Compiled(mod, spec, sandbox)
        return Prepared(spec=spec, handle=compiled, digest=digest)

    async def _module(self, artifact: bytes, digest: str) -> _Module:
        """The loaded module for an artifact: from memory, from a compile of
        the same artifact already under way, from the disk cache, or compiled."""
        while True:
            mod = self._loaded.get(digest)
            if mod is not None:
                self._loaded.move_to_end(digest)
                self.memory_hits += 1
                return mod
            pending = self._inflight.get(digest)
            if pending is None:
                break
            try:
                await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                # the compiling caller was cancelled: try again ourselves
        fut = asyncio.get_running_loop().create_future()
        self._inflight[digest] = fut
        try:
            mod = await asyncio.to_thread(self._load, artifact, digest)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._inflight.pop(digest, None)
        if mod.from_cache:
            self.disk_hits += 1
        else:
            self.compiles += 1
        self._loaded[digest] = mod
        while len(self._loaded) > self._loaded_max:
            self._loaded.popitem(last=False)
        fut.set_result(mod)
        return mod

    def _load(self, artifact: bytes, digest: str) -> _Module:
        """Deserialize from the disk cache, else compile and store. (thread)"""
        engine = self._engine
        path = self.cache_path(digest)
        module = None
        from_cache = False
        if path.is_file():
            try:
                module = wasmtime.Module.deserialize_file(engine, str(path))
                from_cache = True
            except Exception as exc:  # stale/corrupt entry: recompile and replace
                log.warning("wasm cache entry %s unusable (%s); recompiling", path.name, _short_trap(exc))
                try:
                    path.unlink()
                except OSError:
                    pass
        if module is None:
            module = self._compile(artifact)
            self._store_cache(path, module)
        try:
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise errors.InvalidArgument(
                f"cannot link module: {_short_trap(exc)} (only WASI preview1 imports are provided)"
            ) from None
        return _Module(module, pre, from_cache)

    def _compile(self, artifact: bytes) -> Any:
        if artifact[:4] == WASM_MAGIC:
            wasm = artifact
        else:
            try:
                text = artifact.decode("utf-8")
            except UnicodeDecodeError:
                raise errors.InvalidArgument(
                    "artifact is neither a wasm binary (no \\0asm magic) nor UTF-8 .wat text"
                ) from None
            try:
                wasm = wasmtime.wat2wasm(text)
            except wasmtime.WasmtimeError as exc:
                raise errors.InvalidArgument(f"invalid .wat text: {exc}") from None
        try:
            return wasmtime.Module(self._engine, bytes(wasm))
        except wasmtime.WasmtimeError as exc:
            raise errors.InvalidArgument(f"invalid wasm module: {exc}") from None

    def _store_cache(self, path: Path, module: Any) -> None:
        try:
            data = module.serialize()
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except Exception as exc:  # the cache is an optimisation; never fail a deploy
            log.warning("cannot write wasm cache entry %s: %s", path, exc)

    def _parse_grants(self, spec: FunctionSpec) -> _Sandbox:
        sb = _Sandbox()
        for grant in spec.grants:
            if grant == "env":
                sb.env = sorted(spec.env.items())
            elif grant == "args":
                sb.args = True
            elif grant == "network":
                sb.network = True
            elif grant.startswith("dir:"):
                parts = grant[4:].split(":")
                host = parts[0]
                guest = parts[1] if len(parts) > 1 and parts[1] else host
                mode = parts[2] if len(parts) > 2 else "ro"
                if len(parts) > 3 or mode not in ("ro", "rw"):
                    raise errors.InvalidArgument(f"bad grant {grant!r}: use dir:HOST[:GUEST[:ro|rw]]")
                writable = mode == "rw" and not spec.limits.read_only
                granted = self.host_paths.grant(host, write=writable, what=f"{spec.name}: grant {grant!r}")
                sb.dirs.append(granted)
                sb.preopens.append((granted.handle_path, guest, writable))
            else:
                raise errors.InvalidArgument(
                    f"unknown grant {grant!r} for the wasm runtime; known: env, args, network, dir:HOST[:GUEST[:ro|rw]]"
                )
        if spec.limits.network:
            sb.network = True
        return sb

    # -- limits ----------------------------------------------------------------

    def _effective(self, limits: Limits | None, spec_limits: Limits) -> _Effective:
        lim = limits if limits is not None else spec_limits
        timeout = lim.timeout if lim.timeout is not None else spec_limits.timeout
        memory_mb = lim.memory_mb if lim.memory_mb is not None else spec_limits.memory_mb
        fuel = lim.fuel if lim.fuel is not None else spec_limits.fuel
        return _Effective(
            timeout if timeout is not None else self.default_timeout,
            memory_mb if memory_mb is not None else self.default_memory_mb,
            fuel if fuel is not None else self.default_fuel,
        )

    def _classify(self, exc: BaseException, eff: _Effective, used_memory: int, usage: dict,
                  ran: float = 0.0) -> errors.SpearError:
        """The typed error of a trap; ``ran``: wall seconds since the call's
        deadline was set (reported for timeouts)."""
        reason = _short_trap(exc)
        details: dict = {"usage": usage}
        code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
        if code == wasmtime.TrapCode.OUT_OF_FUEL or "all fuel consumed" in reason:
            details.update(limit="fuel", fuel=eff.fuel)
            return errors.ResourceExhausted("fuel exhausted", details=details)
        if code == wasmtime.TrapCode.INTERRUPT or reason.endswith("wasm trap: interrupt"):
            details.update(limit="timeout", timeout=eff.timeout, run=ran)
            return errors.DeadlineExceeded(
                f"exceeded its timeout of {eff.timeout:g}s (ran {ran:.3f}s)", details=details)
        if "exceeds memory limits" in reason or "memory minimum size" in reason:
            details.update(limit="memory", memory_mb=eff.memory_mb)
            return errors.ResourceExhausted(f"memory limit of {eff.memory_mb} MiB: {reason}", details=details)
        if code is not None and used_memory and _near_limit(used_memory, eff.memory):
            details.update(limit="memory", memory_mb=eff.memory_mb, trap=reason)
            return errors.ResourceExhausted(
                f"memory limit of {eff.memory_mb} MiB reached (trap after memory grew to "
                f"{used_memory / _MIB:.1f} MiB: {reason})",
                details=details,
            )
        details["trap"] = reason
        details["backtrace"] = str(exc)
        return errors.FunctionError(f"wasm trap: {reason}" if code is not None else reason, details=details)

    # -- instances -------------------------------------------------------------

    async def create_instance(self, prepared: Prepared) -> Instance:
        self._check_open()
        compiled = prepared.handle
        if not isinstance(compiled, _Compiled):
            raise errors.InvalidArgument("prepared handle does not come from the wasm runtime")
        if compiled.command:
            return Instance(function=compiled.name, handle=_CommandInstance(compiled))
        h = _ExportInstance(compiled)
        h.inline = h.inline and self.inline_exports
        eff = self._effective(None, compiled.limits)
        if compiled.mod.imports_wasi:
            loop = asyncio.get_running_loop()
            out_r, err_r, box = open_pipes()
            h.pipes = (out_r, err_r)
            pump = Pump(loop, [(out_r, None), (err_r, None)])  # output of _initialize is dropped
            try:
                await self._await_call(self._submit(self._instantiate_export, h, eff, box), eff)
            except BaseException:
                close_all(h.pipes)
                h.pipes = None
                raise
            finally:
                close_all(box.take())  # only if the worker never started
                pump.finish()
        else:
            await self._await_call(self._submit(self._instantiate_export, h, eff, None), eff)
        return Instance(function=compiled.name, handle=h)

    def _instantiate_export(self, h: _ExportInstance, eff: _Effective, box: FdBox | None) -> None:
        """Make the long-lived store and instance of an export. (pool thread)"""
        compiled = h.compiled
        store = wasmtime.Store(self._engine)
        store.set_limits(memory_size=eff.memory)
        h.mem_limit = eff.memory
        store.set_fuel(eff.fuel)
        start = time.monotonic()
        store.set_epoch_deadline(self._clock.ticks(start, eff.timeout))
        if box is not None:
            fds = box.take()
            if fds is None:
                raise errors.Cancelled("instance creation cancelled")
            try:
                cfg = wasi_config(compiled.wasi, [], b"", fd_path(fds[0]), fd_path(fds[1]))
                err = _B._wasmtime_context_set_wasi(store._context(), cfg)  # takes cfg
                if err:
                    raise wasmtime.WasmtimeError._from_ptr(err)
            finally:
                close_all(fds)  # wasmtime opened its own descriptors
        try:
            inst = compiled.mod.pre.instantiate(store)
            exports = inst.exports(store)
            h.memories = [x for x in exports.by_index if isinstance(x, wasmtime.Memory)]
            init = exports.get("_initialize")
            if isinstance(init, wasmtime.Func) and compiled.export != "_initialize":
                _raw_call(store._context(), ctypes.byref(init._func), h.buf, h.nbuf)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            used = _memory_bytes(store._context(), h.memories) if h.memories else 0
            store.close()
            if isinstance(exc, wasmtime.ExitTrap):
                raise errors.FunctionError(
                    f"module exited with status {exc.code} while initializing",
                    details={"exit_code": exc.code},
                ) from None
            raise self._classify(exc, eff, used, {}, time.monotonic() - start) from None
        h.store = store
        h.ctx = store._context()
        h.func = exports[compiled.export]
        h.fref = ctypes.byref(h.func._func)

    async def destroy(self, instance: Instance) -> None:
        h = instance.handle
        instance.reusable = False
        if h is None or getattr(h, "closed", True):
            return
        if isinstance(h, _ExportInstance):
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
    ) -> Outcome:
        h = instance.handle
        if h.__class__ is _ExportInstance:
            if h.closed or self._closed:
                raise errors.Unavailable("wasm instance or runtime is closed")
            if h.lim_obj is limits and limits is not None:
                eff = h.lim_eff
            else:
                eff = self._effective(limits, h.compiled.limits)
                h.lim_obj, h.lim_eff = limits, eff
            values = self._convert_args(h, args)
            if h.inline and not h.slow:
                # inline: nothing else can run on this thread meanwhile, so
                # the busy flag needs no lock here
                if h.busy:
                    raise errors.Internal("wasm instance is already running a call")
                h.busy = True
                try:
                    return self._call_export(h, values, eff)
                finally:
                    h.busy = False
                    if h.broken:
                        instance.reusable = False
            try:
                return await self._call_export_threaded(h, values, eff, on_log)
            finally:
                if h.broken:
                    instance.reusable = False
        if h.__class__ is _CommandInstance:
            if h.closed or self._closed:
                raise errors.Unavailable("wasm instance or runtime is closed")
            compiled = h.compiled
            if h.lim_obj is limits and limits is not None:
                eff = h.lim_eff
            else:
                eff = self._effective(limits, compiled.limits)
                h.lim_obj, h.lim_eff = limits, eff
            if compiled.inline and not compiled.slow and self.inline_commands:
                return self._run_command_inline(compiled, data, args, eff, on_log)
            return await self._run_command_async(compiled, data, args, eff, on_log)
        raise errors.InvalidArgument("instance does not come from the wasm runtime")

    def invoke_now(self, instance: Instance, data: bytes, args: list,
                   limits: Limits) -> Outcome | None:
        """The Spearlet's fast path: inline calls answered without a coroutine.

        Same rules as :meth:`invoke`: exports and short WASI commands of
        modules that cannot block run inline; anything else returns None.
        Logs (stderr) are not streamed here: stream mode never uses this path.
        """
        h = instance.handle
        if h.__class__ is _ExportInstance:
            if h.closed or self._closed or not h.inline or h.slow or h.busy:
                return None
            if h.lim_obj is limits and limits is not None:
                eff = h.lim_eff
            else:
                eff = self._effective(limits, h.compiled.limits)
                h.lim_obj, h.lim_eff = limits, eff
            values = self._convert_args(h, args)
            h.busy = True
            try:
                return self._call_export(h, values, eff)
            finally:
                h.busy = False
                if h.broken:
                    instance.reusable = False
        if h.__class__ is _CommandInstance:
            compiled = h.compiled
            if (h.closed or self._closed or not compiled.inline or compiled.slow
                    or not self.inline_commands):
                return None
            if h.lim_obj is limits and limits is not None:
                eff = h.lim_eff
            else:
                eff = self._effective(limits, compiled.limits)
                h.lim_obj, h.lim_eff = limits, eff
            return self._run_command_inline(compiled, data, args, eff, None)
        return None

    def _convert_args(self, h: _ExportInstance, args: list) -> list:
        params = h.setters
        if len(args) != len(params):
            raise errors.InvalidArgument(
                f"export {h.compiled.export!r} takes {len(params)} args ({', '.join(params) or 'none'}), got {len(args)}"
            )
        out = []
        for i, (ty, v) in enumerate(zip(params, args)):
            if v.__class__ is int and ty in _INT_RANGE:
                lo, hi = _INT_RANGE[ty]
                if lo <= v < hi:
                    out.append(v)
                    continue
            out.append(_convert_arg(i, ty, v))
        return out

    def _call_export_pooled(self, h: _ExportInstance, values: list, eff: _Effective) -> Outcome:
        with h.lock:
            if h.closed:
                raise errors.Unavailable("wasm instance was destroyed")
            if h.busy:
                raise errors.Internal("wasm instance is already running a call")
            h.busy = True
        try:
            return self._call_export(h, values, eff)
        finally:
            with h.lock:
                h.busy = False
                release = h.closed
            if release:  # destroyed while the call ran
                h.release()

    def _call_export(self, h: _ExportInstance, values: list, eff: _Effective) -> Outcome:
        """One export call on the current thread (the caller holds ``busy``)."""
        ctx = h.ctx
        if eff.memory != h.mem_limit:
            h.store.set_limits(memory_size=eff.memory)
            h.mem_limit = eff.memory
        _B._wasmtime_context_set_fuel(ctx, eff.fuel)
        start = time.monotonic()
        _B._wasmtime_context_set_epoch_deadline(ctx, self._clock.ticks(start, eff.timeout))
        buf = h.buf
        for i, ty in enumerate(h.setters):
            setattr(buf[i], ty, values[i])
        t_cpu = time.thread_time()
        trap = ctypes.POINTER(_B.wasm_trap_t)()
        err = _B._wasmtime_func_call_unchecked(ctx, h.fref, buf, h.nbuf, ctypes.byref(trap))
        cpu = time.thread_time() - t_cpu
        # CPU time, not wall time: on a busy machine a preempted call would look
        # slow and push every later call through the thread pool
        h.slow = cpu > self.inline_budget
        remaining = ctypes.c_uint64(0)
        _B._wasmtime_context_get_fuel(ctx, ctypes.byref(remaining))
        fuel = eff.fuel - remaining.value
        peak = _memory_bytes(ctx, h.memories) if h.memories else 0
        if err or trap:
            exc = wasmtime.WasmtimeError._from_ptr(err) if err else wasmtime.Trap._from_ptr(trap)
            usage = {"fuel": fuel, "peak_memory": peak, "cpu_time": cpu}
            raise self._export_failure(h, exc, eff, peak, usage, time.monotonic() - start)
        results = [getattr(buf[i], ty) for i, ty in enumerate(h.getters)]
        return Outcome(
            output=_encode_results(results),
            exit_code=None,
            usage=ExecUsage(cpu_time=cpu, peak_memory=peak, fuel=fuel),
        )

    def _export_failure(self, h: _ExportInstance, exc: BaseException, eff: _Effective, peak: int, usage: dict,
                        ran: float) -> errors.SpearError:
        h.broken = True
        if isinstance(exc, wasmtime.ExitTrap):
            return errors.FunctionError(
                f"export {h.compiled.export!r} called proc_exit({exc.code})",
                details={"exit_code": exc.code, "usage": usage},
            )
        return self._classify(exc, eff, peak, usage, ran)

    async def _call_export_threaded(self, h: _ExportInstance, values: list, eff: _Effective, on_log: LogSink | None) -> Outcome:
        loop = asyncio.get_running_loop()
        pump = None
        if h.pipes is not None:
            sink = safe_sink(on_log)
            pump = Pump(loop, [(h.pipes[0], sink), (h.pipes[1], sink)])
        try:
            job = self._submit(self._call_export_pooled, h, values, eff)
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

    def _run_command_inline(self, compiled: _Compiled, data: bytes, args: list, eff: _Effective, on_log: LogSink | None) -> Outcome:
        """Run a short command on the event-loop thread. stdout and stderr go
        to a reusable pair of memfds; stderr reaches ``on_log`` after the run."""
        spare = self._captures
        if spare:
            cap = spare.pop()
        else:
            try:
                cap = Capture()
            except OSError as exc:
                raise errors.Unavailable(f"cannot create the stdio files of a WASI call: {exc}") from None
        lock = self._capture_lock
        try:
            cfg = wasi_config(compiled.wasi, args, data, cap.out_path, cap.err_path)
            with lock:
                self._capturing.add(cap)
            try:
                exit_code, usage = self._exec_command(compiled, cfg, eff)
            finally:
                with lock:
                    self._capturing.discard(cap)
                limit = self.max_output_bytes
                logs, _ = cap.read(cap.err, limit, partial=True)
                out, out_size = cap.read(cap.out, limit, partial=False)
                deliver(logs, on_log)
        finally:
            if cap.sealed or self._closed or len(spare) >= _SPARE_CAPTURES:
                cap.close()
            else:
                spare.append(cap)
        return self._command_outcome(exit_code, usage, out, out_size > limit)

    async def _run_command_async(self, compiled: _Compiled, data: bytes, args: list, eff: _Effective, on_log: LogSink | None) -> Outcome:
        """Run a command on the pool, its stdout/stderr pipes read live."""
        loop = asyncio.get_running_loop()
        out_r, err_r, box = open_pipes(big_stdout=True)
        output = Output(self.max_output_bytes)
        pump = Pump(loop, [(out_r, output), (err_r, safe_sink(on_log))])
        try:
            job = self._submit(self._run_command, compiled, data, args, eff, box)
            exit_code, usage = await self._await_call(job, eff)
        finally:
            close_all(box.take())  # only if the worker never started
            pump.finish()
            close_all(tuple(fd for fd, _ in pump.fds))  # the read ends still open
        try:
            outcome = self._command_outcome(exit_code, usage, b"".join(output.chunks), output.overflow)
        except errors.SpearError as exc:
            exc.details.setdefault("queued", job.waited)
            raise
        outcome.queued = job.waited
        return outcome

    def _command_outcome(self, exit_code: int, usage: dict, out: bytes, overflow: bool) -> Outcome:
        if overflow:
            raise errors.ResourceExhausted(
                f"output larger than {self.max_output_bytes} bytes",
                details={"limit": "output", "max_output_bytes": self.max_output_bytes},
            )
        if exit_code:
            raise errors.FunctionError(
                f"exited with status {exit_code}",
                details={"exit_code": exit_code, "usage": usage, "output": out[-4096:].decode("utf-8", "replace")},
            )
        return Outcome(
            output=out,
            exit_code=0,
            usage=ExecUsage(cpu_time=usage["cpu_time"], peak_memory=usage["peak_memory"], fuel=usage["fuel"]),
        )

    def _run_command(self, compiled: _Compiled, data: bytes, args: list, eff: _Effective, box: FdBox) -> tuple[int, dict]:
        """Run ``_start`` in a fresh store (pool thread). Returns (exit code, usage)."""
        fds = box.take()
        if fds is None:  # the caller gave up before this worker started
            raise errors.Cancelled("invocation cancelled before it started")
        try:
            cfg = wasi_config(compiled.wasi, args, data, fd_path(fds[0]), fd_path(fds[1]))
        finally:
            close_all(fds)  # wasmtime opened its own descriptors
        return self._exec_command(compiled, cfg, eff)

    def _exec_command(self, compiled: _Compiled, cfg: Any, eff: _Effective) -> tuple[int, dict]:
        """Run ``_start`` in a fresh store configured with ``cfg`` (consumed),
        on the current thread, through the C API directly. Returns (exit code,
        usage); a trap or a limit raises a classified SpearError. Records in
        ``compiled.slow`` whether the run took longer than ``inline_budget``."""
        t_cpu = time.thread_time()
        byref = ctypes.byref
        store = _B._wasmtime_store_new(self._engine_ptr, None, _NO_FINALIZER)
        try:
            ctx = _B._wasmtime_store_context(store)
            err = _B._wasmtime_context_set_wasi(ctx, cfg)  # takes ownership of cfg
            if not err:
                _B._wasmtime_store_limiter(store, eff.memory, -1, -1, -1, -1)
                err = _B._wasmtime_context_set_fuel(ctx, eff.fuel)
            if err:
                raise errors.Internal(f"cannot set up a WASI store: {_short_trap(wasmtime.WasmtimeError._from_ptr(err))}")
            start = time.monotonic()
            _B._wasmtime_context_set_epoch_deadline(ctx, self._clock.ticks(start, eff.timeout))
            mod = compiled.mod
            inst = _B.wasmtime_instance_t()
            item = _B.wasmtime_extern_t()
            trap = ctypes.POINTER(_B.wasm_trap_t)()
            err = _B._wasmtime_instance_pre_instantiate(mod.pre_ptr, ctx, byref(inst), byref(trap))
            started = not err and not trap
            if started:
                if not _B._wasmtime_instance_export_get(ctx, byref(inst), b"_start", 6, byref(item)) or item.kind != _EXTERN_FUNC:
                    raise errors.Internal("`_start` export not found after instantiation")
                buf = (_B.wasmtime_val_raw_t * 1)()
                err = _B._wasmtime_func_call_unchecked(ctx, byref(item.of.func), buf, 1, byref(trap))
            compiled.slow = time.thread_time() - t_cpu > self.inline_budget
            exit_code = 0
            failure: BaseException | None = None
            if err:
                exc = wasmtime.WasmtimeError._from_ptr(err)
                if isinstance(exc, wasmtime.ExitTrap):
                    exit_code = exc.code
                else:
                    failure = exc
            elif trap:
                failure = wasmtime.Trap._from_ptr(trap)
            remaining = ctypes.c_uint64(0)
            _B._wasmtime_context_get_fuel(ctx, byref(remaining))
            peak = 0
            if started:
                for name in mod.memory_names:
                    if _B._wasmtime_instance_export_get(ctx, byref(inst), name, len(name), byref(item)) and item.kind == _EXTERN_MEMORY:
                        peak = max(peak, _B._wasmtime_memory_data_size(ctx, byref(item.of.memory)))
            usage = {"fuel": eff.fuel - remaining.value, "peak_memory": peak, "cpu_time": time.thread_time() - t_cpu}
            if failure is not None:
                raise self._classify(failure, eff, peak, usage, time.monotonic() - start) from None
            return exit_code, usage
        finally:
            _B._wasmtime_store_delete(store)  # drops the WASI context: closes its files
