"""The object ``@spear.function`` makes: a function plus how to run it remotely.

The function travels pickled by value with cloudpickle. Which modules go by
value: cloudpickle always ships ``__main__``'s functions by value; beyond
that, the function's own module is shipped by value unless it lives in the
interpreter's standard library or site-packages (an installed package, which
the node is expected to have too). So a script, a notebook, a test module or
a package of your project works without being installed on the node; other
modules the function uses are imported there by name.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import operator
import os
import re
import sys
import sysconfig
import threading

import cloudpickle

from .. import protocol as P
from .runner import spear_runner
from .runner.spear_runner import dumps_call

#: the working directory of deployed functions: the runner's directory
RUNNER_DIR = os.path.dirname(os.path.abspath(spear_runner.__file__))
HANDLER = "spear_runner:run"
_UNITS = {"": 1 << 20, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10**6, "mb": 10**6,
          "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def memory_mb(value: int | str | None) -> int | None:
    """``256`` (MiB), ``"256MiB"``, ``"1GiB"``, ``"512MB"`` ... as whole MiB (at least 1)."""
    if value is None or isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        from .. import errors

        raise errors.InvalidArgument(f"memory must look like 256MiB or 1GiB, got {value!r}")
    return max(1, int(float(match.group(1)) * unit) >> 20)


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.abspath(paths[k]) + os.sep
                 for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)


def ship_module_by_value(fn) -> None:
    """Register ``fn``'s module with cloudpickle by value unless it is installed
    (see the module docstring for the rule)."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":
        return
    path = getattr(module, "__file__", None)
    if path and os.path.abspath(path).startswith(_installed_roots()):
        return
    cloudpickle.register_pickle_by_value(module)


class RemoteFunction:
    """A plain function that can also run on the cluster.

    ``fn(...)`` runs it here; ``fn.remote(...)`` returns a
    :class:`~.futures.RemoteFuture`; ``fn.map(items)`` yields the results of
    ``fn(item)`` in input order with at most ``max_in_flight`` calls running.
    """

    def __init__(self, fn, *, memory: int | str | None = None, timeout: float | None = None,
                 retries: int = 0, connection=None) -> None:
        if not callable(fn):
            raise TypeError(f"spear.function needs a function, got {type(fn).__name__}")
        functools.update_wrapper(self, fn)
        self._fn = fn
        self.memory_mb = memory_mb(memory)
        self.timeout = timeout
        self.retries = retries
        self._connection = connection
        self._lock = threading.Lock()
        self._blob: bytes | None = None
        self._name = ""

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __reduce__(self):
        # Pickled (as a global of a shipped function, say), it becomes the
        # plain function: on the node a call to it just runs it there, and
        # neither Spear nor this object's lock and connection travel.
        return operator.itemgetter(0), ((self._fn,),)

    def __repr__(self) -> str:
        return f"<spear.function {self.__qualname__}>"

    def _pickled(self) -> bytes:
        with self._lock:
            if self._blob is None:
                ship_module_by_value(self._fn)
                self._blob = cloudpickle.dumps(self._fn)
                digest = hashlib.sha256(self._blob).hexdigest()[:16]
                qualname = re.sub(r"[^A-Za-z0-9_.\-]+", "", self.__qualname__.replace(".<locals>", ""))
                self._name = f"py-{qualname[:100] or 'fn'}-{digest}"
            return self._blob

    @property
    def deployment_name(self) -> str:
        """``py-<qualname>-<hash of the pickled function>``: a changed function, a new name."""
        self._pickled()
        return self._name

    def spec(self) -> P.FunctionSpec:
        """The deployment: a pooled Python handler running :mod:`.runner.spear_runner`."""
        return P.FunctionSpec(
            name=self.deployment_name, runtime="process", handler=HANDLER, workdir=RUNNER_DIR,
            limits=P.Limits(timeout=self.timeout, memory_mb=self.memory_mb), retries=self.retries,
        )

    def encode_call(self, args: tuple, kwargs: dict) -> bytes:
        """The invocation input of ``fn(*args, **kwargs)``."""
        return dumps_call(self._pickled(), args, kwargs)

    def remote(self, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the cluster; returns a :class:`~.futures.RemoteFuture`."""
        from .connection import default_connection

        return (self._connection or default_connection()).submit(self, args, kwargs)

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
