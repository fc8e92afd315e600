"""WASI commands of the ``wasm`` runtime: a fresh store per call.

Every call runs ``_start`` in a *fresh* store and instance. The input bytes
are stdin, the bytes written to stdout are the output, stderr goes to
``on_log`` and the WASI exit status is ``Outcome.exit_code`` (``proc_exit(0)``
or a plain return is success; anything else raises
:class:`~spear.errors.FunctionError` with ``details["exit_code"]``). A
:class:`CommandInstance` is only a template around the module's pre-linked
``InstancePre``: it holds no guest state, so it is always reusable.

:func:`execute` builds the store, WASI context and instance straight through
the C API, on whichever thread the runtime chose (the event loop for a short
command that cannot block, else a pool thread).
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

from ... import errors
from ...protocol import ExecUsage
from ..base import Outcome
from .engine import EXTERN_FUNC, EXTERN_MEMORY, NO_FINALIZER, B, Engine, short_trap, wasmtime
from .limits import Effective, classify
from .spec import Compiled

__all__ = ["CommandInstance", "execute", "outcome"]


class CommandInstance:
    """``Instance.handle`` of a WASI command: a template, one store per call."""

    __slots__ = ("compiled", "closed", "lim_obj", "lim_eff")

    def __init__(self, compiled: Compiled) -> None:
        self.compiled = compiled
        self.closed = False
        #: the Limits object of the last call and its resolved form
        self.lim_obj: Any = None
        self.lim_eff: Effective | None = None


def execute(engine: Engine, compiled: Compiled, cfg: Any, eff: Effective, budget: float) -> tuple[int, dict]:
    """Run ``_start`` in a fresh store configured with ``cfg`` (consumed),
    on the current thread. Returns (exit code, usage); a trap or a limit
    raises a classified SpearError. Records in ``compiled.slow`` whether the
    run used more than ``budget`` CPU seconds."""
    t_cpu = time.thread_time()
    byref = ctypes.byref
    store = B._wasmtime_store_new(engine.ptr, None, NO_FINALIZER)
    try:
        ctx = B._wasmtime_store_context(store)
        err = B._wasmtime_context_set_wasi(ctx, cfg)  # takes ownership of cfg
        if not err:
            B._wasmtime_store_limiter(store, eff.memory, -1, -1, -1, -1)
            err = B._wasmtime_context_set_fuel(ctx, eff.fuel)
        if err:
            raise errors.Internal(f"cannot set up a WASI store: {short_trap(wasmtime.WasmtimeError._from_ptr(err))}")
        start = time.monotonic()
        B._wasmtime_context_set_epoch_deadline(ctx, engine.deadline(start, eff.timeout))
        mod = compiled.mod
        inst = B.wasmtime_instance_t()
        item = B.wasmtime_extern_t()
        trap = ctypes.POINTER(B.wasm_trap_t)()
        err = B._wasmtime_instance_pre_instantiate(mod.pre_ptr, ctx, byref(inst), byref(trap))
        started = not err and not trap
        if started:
            if not B._wasmtime_instance_export_get(ctx, byref(inst), b"_start", 6, byref(item)) or item.kind != EXTERN_FUNC:
                raise errors.Internal("`_start` export not found after instantiation")
            buf = (B.wasmtime_val_raw_t * 1)()
            err = B._wasmtime_func_call_unchecked(ctx, byref(item.of.func), buf, 1, byref(trap))
        compiled.slow = time.thread_time() - t_cpu > budget
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
        B._wasmtime_context_get_fuel(ctx, byref(remaining))
        peak = 0
        if started:
            for name in mod.memory_names:
                if B._wasmtime_instance_export_get(ctx, byref(inst), name, len(name), byref(item)) and item.kind == EXTERN_MEMORY:
                    peak = max(peak, B._wasmtime_memory_data_size(ctx, byref(item.of.memory)))
        usage = {"fuel": eff.fuel - remaining.value, "peak_memory": peak, "cpu_time": time.thread_time() - t_cpu}
        if failure is not None:
            raise classify(failure, eff, peak, usage, time.monotonic() - start) from None
        return exit_code, usage
    finally:
        B._wasmtime_store_delete(store)  # drops the WASI context: closes its files


def outcome(exit_code: int, usage: dict, out: bytes, overflow: bool, max_output: int) -> Outcome:
    """The Outcome of a command that ran: its stdout, or the error its exit
    status (non-zero) or an output over ``max_output`` bytes (``overflow``) means."""
    if overflow:
        raise errors.ResourceExhausted(
            f"output larger than {max_output} bytes",
            details={"limit": "output", "max_output_bytes": max_output},
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
