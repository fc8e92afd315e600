"""Spear: a distributed serverless platform on a ZeroMQ mesh.

This package's face holds the public entry points, :class:`Client`
(blocking, safe to share between threads) and :class:`AsyncClient`, what
they take and return (:class:`FunctionSpec`, :class:`Limits`,
:class:`PoolSettings`, :class:`ExecutionResult`, :class:`ExecutionInfo`,
:class:`FunctionInfo`, :class:`NodeInfo`), the decorator API of
:mod:`spear.remote` (:func:`function`, :func:`connect`, :func:`get`,
:func:`wait`) and the exception tree :mod:`spear.errors`; it imports them
lazily, so importing any part of Spear (``spear.fast``, ``spear.protocol``)
does not pay for the client's mesh.
Below it, lowest floor first: ``errors``; ``protocol``, ``config``, ``ids``;
``roles`` and the small shared modules; the parts ``mesh``, ``store``,
``runtimes``, ``_fast``/``fast``, ``metrics``; the services ``sms``,
``spearlet`` and ``client``, ``gateway``; ``cli`` on top. An import only goes
down a floor (``tests/test_layout.py`` checks it).
"""

__version__ = "0.1.0"

from . import errors  # noqa: E402

#: public name -> the module it lives in, imported on first use
_LAZY = {
    "AsyncClient": "client",
    "Client": "client",
    "ExecutionResult": "client",
    "ExecutionInfo": "protocol",
    "FunctionInfo": "protocol",
    "FunctionSpec": "protocol",
    "Limits": "protocol",
    "NodeInfo": "protocol",
    "PoolSettings": "protocol",
    "connect": "remote",
    "function": "remote",
    "get": "remote",
    "wait": "remote",
}

__all__ = [*_LAZY, "errors", "__version__"]


def __getattr__(name: str):
    # the client pulls in pyzmq and the mesh: only when it is asked for
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spear' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
