"""The wasmtime side of the ``wasm`` runtime: the one shared Engine, its
WASI linker, and the epoch that ends calls at their deadline.

Every store of the runtime comes from one :class:`Engine` configured with
fuel metering and epoch interruption (a serialized module is only valid for
that configuration, see :attr:`Engine.fingerprint`).

**Deadlines** (:class:`EpochClock`). wasmtime interrupts a guest when the
engine's epoch passes the store's epoch deadline. The clock ties epoch *n* to
the instant ``origin + n * tick`` of ``time.monotonic()``: the ticker thread
raises the epoch to what the clock says, several steps at once when it woke
late, and never further. A call that starts at ``start`` with timeout ``T``
gets the first epoch strictly after ``start + T`` as its deadline, so it is
never interrupted before it has run ``T`` seconds, and it is interrupted
within about two ticks after that (one for the rounding, one for the ticker's
wake-up), whatever the load did to earlier ticks. Counting ticks instead of
time made a 30 s timeout fire late by the ticker's accumulated lag.
"""

from __future__ import annotations

import ctypes
import platform
import threading
import time
from typing import Any, Callable

try:  # pragma: no branch - wasmtime is a hard dependency in practice
    import wasmtime
    from wasmtime import _bindings as B

    IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - exercised only without wasmtime
    wasmtime = None  # type: ignore[assignment]
    B = None  # type: ignore[assignment]
    IMPORT_ERROR = f"wasmtime-py is not usable: {exc}"

try:
    from importlib.metadata import version as _dist_version

    WASMTIME_VERSION = _dist_version("wasmtime") if wasmtime is not None else ""
except Exception:  # pragma: no cover
    WASMTIME_VERSION = "unknown"

__all__ = [
    "B", "CACHE_FORMAT", "EXTERN_FUNC", "EXTERN_MEMORY", "IMPORT_ERROR", "MIB", "NO_FINALIZER",
    "UNLIMITED_FUEL", "WASMTIME_VERSION", "EpochClock", "Engine", "short_trap", "wasmtime",
]

MIB = 1 << 20
#: fuel given to a call that has no fuel limit (consumption is still counted)
UNLIMITED_FUEL = (1 << 63) - 1
#: bump when the cache layout or the engine configuration changes
CACHE_FORMAT = "spear-wasm-cache-v1"
#: wasmtime_extern_t kinds
EXTERN_FUNC = 0
EXTERN_MEMORY = 3
#: the ``finalizer`` of a store that has no host data
NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))


def short_trap(exc: BaseException) -> str:
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


class EpochClock:
    """An engine epoch that follows the monotonic clock (see module doc).

    ``increment`` raises the engine's epoch by one. Only the ticker thread
    calls :meth:`advance`; any thread calls :meth:`ticks`.
    """

    __slots__ = ("tick", "origin", "epoch", "_increment")

    def __init__(self, increment: Callable[[], None], tick: float) -> None:
        self.tick = tick
        self.origin = time.monotonic()
        #: the engine's epoch as far as this clock knows: it is raised after
        #: the engine's, so it is never ahead of it
        self.epoch = 0
        self._increment = increment

    def ticks(self, start: float, timeout: float) -> int:
        """The relative epoch deadline (``set_epoch_deadline``) of a call that
        started at monotonic time ``start`` and may run ``timeout`` seconds."""
        target = int((start + timeout - self.origin) / self.tick) + 1
        return max(1, target - self.epoch)

    def next_at(self) -> float:
        """The monotonic time of the next epoch."""
        return self.origin + (self.epoch + 1) * self.tick

    def advance(self, now: float) -> None:
        """Raise the epoch to what the clock says at ``now`` (ticker thread)."""
        target = int((now - self.origin) / self.tick)
        inc = self._increment
        while self.epoch < target:
            inc()
            self.epoch += 1


class Engine:
    """The shared wasmtime Engine (fuel + epoch interruption), its WASI
    linker, and the daemon thread that keeps its epoch on the clock.

    ``on_tick`` runs on the ticker thread after every epoch step (the runtime
    bounds the output of inline commands there). ``busy()`` says whether a
    pool call still runs: after :meth:`stop` the ticker goes on until it does
    not, so the deadline of that call still fires.
    """

    def __init__(self, tick: float, on_tick: Callable[[], None], busy: Callable[[], bool]) -> None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        self.wasmtime = wasmtime.Engine(cfg)
        self.ptr = self.wasmtime.ptr()
        self.linker = wasmtime.Linker(self.wasmtime)
        self.linker.define_wasi()
        self.clock = EpochClock(self.wasmtime.increment_epoch, tick)
        self._on_tick = on_tick
        self._busy = busy
        self._stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="spear-wasm-epoch", daemon=True)
        self.ticker.start()

    @staticmethod
    def fingerprint() -> str:
        """Everything that makes a serialized module (in)compatible."""
        return (
            f"{CACHE_FORMAT};wasmtime={WASMTIME_VERSION};machine={platform.machine()};"
            f"system={platform.system()};consume_fuel=1;epoch_interruption=1"
        )

    def deadline(self, start: float, timeout: float) -> int:
        """The epoch deadline of a call that started at ``start`` (monotonic)."""
        return self.clock.ticks(start, timeout)

    def _tick(self) -> None:
        clock = self.clock
        monotonic = time.monotonic
        wait = self._stop.wait
        on_tick = self._on_tick
        while True:
            delay = clock.next_at() - monotonic()
            if delay > 0 and wait(delay):
                if not self._busy():
                    return
                time.sleep(delay)
            clock.advance(monotonic())
            on_tick()

    def stop(self) -> None:
        """Ask the ticker to end (once no pool call runs)."""
        self._stop.set()

    def store(self) -> Any:
        """A new ``wasmtime.Store`` of this engine."""
        return wasmtime.Store(self.wasmtime)
