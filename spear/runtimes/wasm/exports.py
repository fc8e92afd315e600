"""Plain exports of the ``wasm`` runtime: one long-lived store per instance.

The store and instance of an :class:`ExportInstance` are made once
(:func:`instantiate`, running ``_initialize`` if the module has one) and
reused by every call, so guest state (globals, memory) persists between
calls of one instance. The numeric ``args`` are converted to the export's
parameter types (:func:`convert_args`) and the output is the result(s) as
compact JSON text (``b"42"``, ``b"[1,2]"``, ``b"null"`` for no result). After
a trap or ``proc_exit`` the instance is marked broken.

:func:`call` goes through ``wasmtime_func_call_unchecked`` on the current
thread: ~10x cheaper than a thread hop, and the epoch still interrupts a
runaway loop. Everything here runs on whichever thread the runtime chose
(the event loop or a pool thread); nothing here awaits.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
import time
from typing import Any

from ... import errors
from ...protocol import ExecUsage
from ..base import Outcome
from .engine import B, Engine, wasmtime
from .limits import Effective, classify
from .spec import Compiled
from .stdio import FdBox, close_all, fd_path
from .wasi import wasi_config

__all__ = ["ExportInstance", "call", "call_pooled", "convert_args", "instantiate"]

log = logging.getLogger("spear.runtimes.wasm")

_INT_RANGE = {"i32": (-(1 << 31), 1 << 32), "i64": (-(1 << 63), 1 << 64)}


class ExportInstance:
    """``Instance.handle`` of a plain export: one store + instance, reused."""

    __slots__ = (
        "compiled", "store", "ctx", "func", "fref", "memories", "buf", "nbuf",
        "setters", "getters", "mem_limit", "lim_obj", "lim_eff", "inline",
        "slow", "busy", "pipes", "broken", "closed", "lock",
    )

    def __init__(self, compiled: Compiled, inline: bool) -> None:
        self.compiled = compiled
        self.store: Any = None
        self.ctx: Any = None
        self.func: Any = None
        self.fref: Any = None
        self.memories: list = []
        n = max(len(compiled.params), len(compiled.results), 1)
        self.buf = (B.wasmtime_val_raw_t * n)()
        self.nbuf = n
        self.setters = compiled.params
        self.getters = compiled.results
        self.mem_limit = -1
        #: the Limits object of the last call and its resolved form
        self.lim_obj: Any = None
        self.lim_eff: Effective | None = None
        #: calls may run on the event loop (modules that import WASI never do)
        self.inline = inline and not compiled.mod.imports_wasi
        #: the last call took longer than the runtime's ``inline_budget``
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
# arguments and results
# --------------------------------------------------------------------------


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


def convert_args(h: ExportInstance, args: list) -> list:
    """``args`` as the export's parameter types (InvalidArgument if they do not fit)."""
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


def _encode_results(values: list) -> bytes:
    if len(values) == 1:
        v = values[0]
        if v.__class__ is int:
            return str(v).encode()
        return json.dumps(v).encode()
    if not values:
        return b"null"
    return json.dumps(values, separators=(",", ":")).encode()


def _memory_bytes(ctx: Any, memories: list) -> int:
    """The size of the biggest of ``memories`` (the peak: memories never shrink)."""
    size = B._wasmtime_memory_data_size
    peak = 0
    for mem in memories:
        n = size(ctx, ctypes.byref(mem._memory))
        if n > peak:
            peak = n
    return peak


# --------------------------------------------------------------------------
# instantiating and calling
# --------------------------------------------------------------------------


def instantiate(engine: Engine, h: ExportInstance, eff: Effective, box: FdBox | None) -> None:
    """Make the long-lived store and instance of an export (pool thread).
    ``box`` holds the stdout/stderr pipes of a module that imports WASI."""
    compiled = h.compiled
    store = engine.store()
    store.set_limits(memory_size=eff.memory)
    h.mem_limit = eff.memory
    store.set_fuel(eff.fuel)
    start = time.monotonic()
    store.set_epoch_deadline(engine.deadline(start, eff.timeout))
    if box is not None:
        fds = box.take()
        if fds is None:
            raise errors.Cancelled("instance creation cancelled")
        try:
            cfg = wasi_config(compiled.wasi, [], b"", fd_path(fds[0]), fd_path(fds[1]))
            err = B._wasmtime_context_set_wasi(store._context(), cfg)  # takes cfg
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
        raise classify(exc, eff, used, {}, time.monotonic() - start) from None
    h.store = store
    h.ctx = store._context()
    h.func = exports[compiled.export]
    h.fref = ctypes.byref(h.func._func)


def _raw_call(ctx: Any, fref: Any, buf: Any, n: int) -> None:
    """Call through ``wasmtime_func_call_unchecked``; raise Trap/WasmtimeError."""
    trap = ctypes.POINTER(B.wasm_trap_t)()
    err = B._wasmtime_func_call_unchecked(ctx, fref, buf, n, ctypes.byref(trap))
    if err:
        raise wasmtime.WasmtimeError._from_ptr(err)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)


def call(engine: Engine, h: ExportInstance, values: list, eff: Effective, budget: float) -> Outcome:
    """One export call on the current thread (the caller holds ``busy``).
    Records in ``h.slow`` whether it used more than ``budget`` CPU seconds."""
    ctx = h.ctx
    if eff.memory != h.mem_limit:
        h.store.set_limits(memory_size=eff.memory)
        h.mem_limit = eff.memory
    B._wasmtime_context_set_fuel(ctx, eff.fuel)
    start = time.monotonic()
    B._wasmtime_context_set_epoch_deadline(ctx, engine.deadline(start, eff.timeout))
    buf = h.buf
    for i, ty in enumerate(h.setters):
        setattr(buf[i], ty, values[i])
    t_cpu = time.thread_time()
    trap = ctypes.POINTER(B.wasm_trap_t)()
    err = B._wasmtime_func_call_unchecked(ctx, h.fref, buf, h.nbuf, ctypes.byref(trap))
    cpu = time.thread_time() - t_cpu
    # CPU time, not wall time: on a busy machine a preempted call would look
    # slow and push every later call through the thread pool
    h.slow = cpu > budget
    remaining = ctypes.c_uint64(0)
    B._wasmtime_context_get_fuel(ctx, ctypes.byref(remaining))
    fuel = eff.fuel - remaining.value
    peak = _memory_bytes(ctx, h.memories) if h.memories else 0
    if err or trap:
        exc = wasmtime.WasmtimeError._from_ptr(err) if err else wasmtime.Trap._from_ptr(trap)
        usage = {"fuel": fuel, "peak_memory": peak, "cpu_time": cpu}
        raise _failure(h, exc, eff, peak, usage, time.monotonic() - start)
    results = [getattr(buf[i], ty) for i, ty in enumerate(h.getters)]
    return Outcome(
        output=_encode_results(results),
        exit_code=None,
        usage=ExecUsage(cpu_time=cpu, peak_memory=peak, fuel=fuel),
    )


def call_pooled(engine: Engine, h: ExportInstance, values: list, eff: Effective, budget: float) -> Outcome:
    """:func:`call` on a pool thread: takes ``busy`` itself, and frees the
    store if the instance was destroyed while the call ran."""
    with h.lock:
        if h.closed:
            raise errors.Unavailable("wasm instance was destroyed")
        if h.busy:
            raise errors.Internal("wasm instance is already running a call")
        h.busy = True
    try:
        return call(engine, h, values, eff, budget)
    finally:
        with h.lock:
            h.busy = False
            release = h.closed
        if release:  # destroyed while the call ran
            h.release()


def _failure(h: ExportInstance, exc: BaseException, eff: Effective, peak: int, usage: dict,
             ran: float) -> errors.SpearError:
    h.broken = True
    if isinstance(exc, wasmtime.ExitTrap):
        return errors.FunctionError(
            f"export {h.compiled.export!r} called proc_exit({exc.code})",
            details={"exit_code": exc.code, "usage": usage},
        )
    return classify(exc, eff, peak, usage, ran)
