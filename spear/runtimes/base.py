"""The interface every runtime provides (wasm, process, docker).

A runtime turns a :class:`~spear.protocol.FunctionSpec` into running code in
steps, all driven by the Spearlet's RuntimeManager, Runner and InstancePool:

1. ``prepare(spec)`` once per deploy: validate the spec, compile or fetch the
   artifact (cached), return an opaque ``Prepared`` handle.
2. ``create_instance(prepared)`` per warm instance (cold start).
3. ``invoke(instance, data, args, limits, on_log, traceparent=, tracestate=)``
   per call (the W3C context the function sees as the TRACEPARENT and
   TRACESTATE environment variables: :func:`spear.tracing.env`); returns an
   :class:`Outcome` or raises a typed :mod:`spear.errors` exception:
   ``DeadlineExceeded`` (timeout), ``ResourceExhausted`` (memory, fuel, OOM),
   ``FunctionError`` (the user's code failed), ``InvalidArgument``.
   After any exception, or when ``instance.reusable`` is False, the caller
   destroys the instance instead of returning it to the pool.
4. ``destroy(instance)`` frees everything (processes, containers, stores).
5. ``release(prepared)`` once the deployment is replaced or removed and its
   instances are gone; ``collect()`` (synchronous, quick) now and then removes
   cached things no deployment uses.

The other methods are coroutines and must never block the event loop for long:
blocking SDK calls go to a thread.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

from ..protocol import ExecUsage, FunctionSpec, Limits

LogSink = Callable[[bytes], None]

#: what a failed call keeps of its stderr, and a Python handler of its traceback
#: (``details["stderr"]``, ``details["traceback"]``; ErrorInfo allows as much)
STDERR_TAIL, TRACEBACK_TAIL = 4096, 8192


def tail_text(data: bytes, limit: int = STDERR_TAIL) -> str:
    """The last ``limit`` bytes of ``data`` as text (at most ``limit`` characters)."""
    return data[-limit:].decode("utf-8", "replace")


@dataclass
class Outcome:
    """What one successful invocation produced."""

    output: bytes
    exit_code: int | None = None
    usage: ExecUsage = field(default_factory=ExecUsage)
    #: seconds the call waited inside the runtime (for a worker thread) before
    #: it ran: the caller reports it as queue time, not run time. A failed
    #: call carries the same figure as ``details["queued"]`` of its error
    queued: float = 0.0


@dataclass
class Instance:
    """One warm instance of a function; ``handle`` is the runtime's own object."""

    function: str
    handle: Any
    reusable: bool = True
    invocations: int = 0


@dataclass
class Prepared:
    """A function ready to instantiate: the spec plus the runtime's compiled form."""

    spec: FunctionSpec
    handle: Any = None
    digest: str = ""


class Runtime(abc.ABC):
    """Base class of all runtimes."""

    #: name used in FunctionSpec.runtime
    name: str = ""

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` if usable on this node, else ``(False, reason)``."""
        return True, ""

    @abc.abstractmethod
    async def prepare(self, spec: FunctionSpec) -> Prepared:
        """Validate and compile/fetch the artifact; raise InvalidArgument on bad specs."""

    @abc.abstractmethod
    async def create_instance(self, prepared: Prepared) -> Instance:
        """Create one instance (this is the cold start)."""

    @abc.abstractmethod
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
        """Run one invocation on ``instance`` under ``limits``; the function sees
        ``traceparent``/``tracestate`` as TRACEPARENT/TRACESTATE."""

    def invoke_now(self, instance: Instance, data: bytes, args: list, limits: Limits, *,
                   traceparent: str = "", tracestate: str = "") -> Outcome | None:
        """Run the call synchronously if it is known to be short (fast path).

        Returns None when the call must go through :meth:`invoke` (the
        default). A runtime that answers must enforce the same limits and
        raise the same errors as ``invoke``; it must never block for long.
        """
        return None

    @abc.abstractmethod
    async def destroy(self, instance: Instance) -> None:
        """Release the instance; must not raise for an already-dead instance."""

    async def release(self, prepared: Prepared) -> None:
        """``prepared`` is no longer deployed (its instances are destroyed): free
        what ``prepare`` kept for it (an unpacked bundle, a use of an environment)."""

    def collect(self) -> None:
        """Remove cached things nothing uses any more (called now and then by the Spearlet)."""

    async def close(self) -> None:
        """Release runtime-wide resources (threads, clients) at Spearlet stop."""
