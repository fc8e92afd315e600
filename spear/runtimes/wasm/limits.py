"""Limits of a ``wasm`` call, and what a trap that ended it means.

A limit left ``None`` in the call's ``Limits`` falls back to the function's
own limits, then to the runtime defaults. ``memory_mb`` is a store limit on
every linear memory (a failed ``memory.grow`` followed by a trap near the
limit is reported as ``ResourceExhausted("memory limit ...")``); ``fuel`` is
set per call and running out raises ``ResourceExhausted("fuel exhausted")``;
``timeout`` is an epoch deadline and raises ``DeadlineExceeded``. Other traps
raise ``FunctionError``.
"""

from __future__ import annotations

from ... import errors
from ...protocol import Limits
from .engine import MIB, UNLIMITED_FUEL, short_trap, wasmtime

__all__ = ["Effective", "classify", "effective"]


class Effective:
    """Limits resolved to engine units (cached per ``Limits`` object by the instances)."""

    __slots__ = ("timeout", "memory", "memory_mb", "fuel")

    def __init__(self, timeout: float, memory_mb: int, fuel: int | None) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.memory = memory_mb * MIB
        self.fuel = fuel if fuel is not None else UNLIMITED_FUEL


def effective(limits: Limits | None, spec_limits: Limits, default_timeout: float,
              default_memory_mb: int, default_fuel: int | None) -> Effective:
    """The limits of one call: ``limits`` (None: the function's), then the
    function's own ``spec_limits``, then the defaults."""
    lim = limits if limits is not None else spec_limits
    timeout = lim.timeout if lim.timeout is not None else spec_limits.timeout
    memory_mb = lim.memory_mb if lim.memory_mb is not None else spec_limits.memory_mb
    fuel = lim.fuel if lim.fuel is not None else spec_limits.fuel
    return Effective(
        timeout if timeout is not None else default_timeout,
        memory_mb if memory_mb is not None else default_memory_mb,
        fuel if fuel is not None else default_fuel,
    )


def _near_limit(used: int, limit: int) -> bool:
    """True if a memory of ``used`` bytes is close enough to ``limit`` that a
    failed ``memory.grow`` (and the trap that follows it) is the likely cause."""
    return limit - used < max(MIB, limit >> 4)


def classify(exc: BaseException, eff: Effective, used_memory: int, usage: dict,
             ran: float = 0.0) -> errors.SpearError:
    """The typed error of a trap; ``ran``: wall seconds since the call's
    deadline was set (reported for timeouts)."""
    reason = short_trap(exc)
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
            f"{used_memory / MIB:.1f} MiB: {reason})",
            details=details,
        )
    details["trap"] = reason
    details["backtrace"] = str(exc)
    return errors.FunctionError(f"wasm trap: {reason}" if code is not None else reason, details=details)
