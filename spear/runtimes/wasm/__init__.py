"""The ``wasm`` runtime: WebAssembly functions on wasmtime-py.

This package holds :class:`WasmRuntime` (``runtime.py``, which ties the rest
together) and its parts, each in its own module: the function spec and its
grants (``spec.py``), the shared wasmtime engine and its epoch clock
(``engine.py``), compiled modules and their disk cache (``modules.py``), call
limits and trap classification (``limits.py``), plain exports
(``exports.py``) and WASI commands (``commands.py``), a call's WASI context
(``wasi.py``), its stdout/stderr plumbing (``stdio.py``) and the thread pool
for calls that cannot run inline (``pool.py``). It may import
:mod:`spear.errors`, :mod:`spear.protocol`, :mod:`spear.runtimes.base` and
:mod:`spear.runtimes.hostpaths`, and wasmtime; nothing above the runtimes.
"""

from .engine import UNLIMITED_FUEL, WASMTIME_VERSION
from .runtime import WasmRuntime

__all__ = ["UNLIMITED_FUEL", "WASMTIME_VERSION", "WasmRuntime"]
