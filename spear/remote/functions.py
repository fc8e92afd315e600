"""The object ``@spear.function`` makes: a function plus how to run it remotely.

The function travels pickled with cloudpickle (see
:func:`.shipping.ship_module` for which modules go with it by value and
which are imported on the node). Its deployment is named by the hash of
everything the node runs: the pickled function, the code bundle, the
resolved requirements, the Python version and the limits; so a change to
any of them is a new deployment, and an unchanged function keeps its name.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import operator
import re
import sys
import threading

import cloudpickle

from .. import errors, protocol as P
from ..client.requirements import this_python
from .runner.spear_runner import dumps_call
from .shipping import HANDLER, requirement_lines, ship_module

_UNITS = {"": 1 << 20, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10**6, "mb": 10**6,
          "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_PYTHON_RE = re.compile(r"^3\.\d{1,2}\Z")
#: cloudpickle's by-value registry is process-wide: one pickling at a time
_PICKLING = threading.Lock()


def memory_mb(value: int | str | None) -> int | None:
    """``256`` (MiB), ``"256MiB"``, ``"1GiB"``, ``"512MB"`` ... as whole MiB (at least 1)."""
    if value is None or isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        raise errors.InvalidArgument(f"memory must look like 256MiB or 1GiB, got {value!r}")
    return max(1, int(float(match.group(1)) * unit) >> 20)


def check_python(python: str | None) -> str | None:
    """``python`` if it is a ``major.minor`` such as ``"3.11"`` (or None)."""
    if python is not None and not _PYTHON_RE.match(python):
        raise errors.InvalidArgument(f"python must be a version like \"3.11\", got {python!r}")
    return python


class RemoteFunction:
    """A plain function that can also run on the cluster.

    ``fn(...)`` runs it here; ``fn.remote(...)`` returns a
    :class:`~.futures.RemoteFuture`; ``fn.map(items)`` yields the results of
    ``fn(item)`` in input order with at most ``max_in_flight`` calls running.
    """

    def __init__(self, fn, *, memory: int | str | None = None, timeout: float | None = None,
                 retries: int = 0, requirements=(), python: str | None = None,
                 connection=None) -> None:
        if not callable(fn):
            raise TypeError(f"spear.function needs a function, got {type(fn).__name__}")
        functools.update_wrapper(self, fn)
        self._fn = fn
        self.memory_mb = memory_mb(memory)
        self.timeout = timeout
        self.retries = retries
        self.requirements = requirement_lines(requirements)
        self.python = check_python(python)
        self._connection = connection
        self._blobs: dict[str | None, bytes] = {}  # bundle root -> the pickled function

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __reduce__(self):
        # Pickled (as a global of a shipped function, say), it becomes the
        # plain function: on the node a call to it just runs it there, and
        # neither Spear nor this object's connection travel.
        return operator.itemgetter(0), ((self._fn,),)

    def __repr__(self) -> str:
        return f"<spear.function {self.__qualname__}>"

    def pickled(self, root: str | None = None) -> bytes:
        """The function pickled for a connection whose bundle holds ``root``
        (modules there go by reference, see :func:`.shipping.ship_module`)."""
        blob = self._blobs.get(root)
        if blob is None:
            with _PICKLING:
                ship_module(self._fn, root)
                blob = cloudpickle.dumps(self._fn)
            self._blobs[root] = blob
        return blob

    def spec(self, code, pins: list[str], python: str) -> P.FunctionSpec:
        """The deployment of this function with the bundle ``code`` (a
        :class:`~.shipping.CodeBundle`), the resolved requirements ``pins`` on
        ``python``: named ``py-<qualname>-<hash of all of it>``."""
        digest = hashlib.sha256(self.pickled(code.root))
        if python != this_python() and self._by_value():
            raise errors.InvalidArgument(
                f"{self.__qualname__} travels by value (its code is pickled), which only "
                f"Python {this_python()} can load, not python={python!r}: put it in a module "
                "of the working directory or of an installed package to run it on another Python")
        for part in (code.sha256, python, repr((self.memory_mb, self.timeout, self.retries)), *pins):
            digest.update(b"\0" + part.encode())
        qualname = re.sub(r"[^A-Za-z0-9_.\-]+", "", self.__qualname__.replace(".<locals>", ""))
        return P.FunctionSpec(
            name=f"py-{qualname[:100] or 'fn'}-{digest.hexdigest()[:16]}", runtime="process",
            handler=HANDLER, artifact=code.data, artifact_sha256=code.sha256,
            requirements=list(pins), python=python,
            limits=P.Limits(timeout=self.timeout, memory_mb=self.memory_mb), retries=self.retries,
        )

    def _by_value(self) -> bool:
        """Whether cloudpickle ships this function's code (decided by :meth:`pickled`)."""
        fn = self._fn
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        return (module is None or module.__name__ == "__main__" or "<locals>" in fn.__qualname__
                or fn.__name__ == "<lambda>"
                or module.__name__ in cloudpickle.list_registry_pickle_by_value())

    @property
    def deployment_name(self) -> str:
        """The name this function deploys under on its connection (the default one
        unless it was given one); resolves the requirements on first use."""
        return self._conn().spec_of(self).name

    def encode_call(self, args: tuple, kwargs: dict, root: str | None = None) -> bytes:
        """The invocation input of ``fn(*args, **kwargs)`` for a bundle of ``root``."""
        return dumps_call(self.pickled(root), args, kwargs)

    def _conn(self):
        from .connection import default_connection

        return self._connection or default_connection()

    def remote(self, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the cluster; returns a :class:`~.futures.RemoteFuture`."""
        return self._conn().submit(self, args, kwargs)

    def traced(self, traceparent: str, tracestate: str = "") -> Traced:
        """This function's calls joining the W3C trace ``traceparent``:
        ``fn.traced(tp).remote(...)`` (a malformed context starts a new trace)."""
        return Traced(self, (traceparent, tracestate))

    def map(self, items, *, max_in_flight: int = 64, timeout: float | None = None):
        """Yield ``fn(item)`` for each item, in order, at most ``max_in_flight`` running.

        ``timeout`` bounds the wait for each result. A call that raised raises
        here when its turn comes; the calls still running go on.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(self.remote(item))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result(timeout)
        while pending:
            yield pending.popleft().result(timeout)


class Traced:
    """A :class:`RemoteFunction` whose calls carry a W3C trace context."""

    def __init__(self, fn: RemoteFunction, trace: tuple[str, str]) -> None:
        self.fn, self.trace = fn, trace

    def remote(self, *args, **kwargs):
        """As :meth:`RemoteFunction.remote`, in the trace."""
        return self.fn._conn().submit(self.fn, args, kwargs, self.trace)
