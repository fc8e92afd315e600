"""Pick the compiled kernels or their pure-Python twins.

The compiled modules ``spear._fast.scheduler`` and ``spear._fast.pool`` are
used when they import, unless ``SPEAR_NO_EXTENSIONS=1`` asks for pure Python
(read by :func:`spear.config.no_extensions`, which imports only the errors
module: selecting a kernel stays cheap and circle-free).
The ``*_py`` twins are always importable and give identical results.

Public API: ``pick_node``, ``pick_nodes``, ``SlotPool``, ``EXTENSIONS`` (True
only when both compiled modules are live); for tests and benchmarks,
``scheduler_impl``/``pool_impl`` (the live modules), ``py_scheduler``/``py_pool``
(the twins) and ``compiled_scheduler``/``compiled_pool`` (None if not loaded).
"""

from __future__ import annotations

from types import ModuleType

from spear._fast import pool_py as py_pool
from spear._fast import scheduler_py as py_scheduler
from spear.config import no_extensions

__all__ = [
    "EXTENSIONS", "NO_EXTENSIONS_REQUESTED", "SlotPool", "pick_node", "pick_nodes",
    "scheduler_impl", "pool_impl", "py_scheduler", "py_pool",
    "compiled_scheduler", "compiled_pool",
]

#: True when SPEAR_NO_EXTENSIONS=1 asked for the pure-Python twins.
NO_EXTENSIONS_REQUESTED: bool = no_extensions()

compiled_scheduler: ModuleType | None = None
compiled_pool: ModuleType | None = None

if not NO_EXTENSIONS_REQUESTED:
    try:
        from spear._fast import scheduler as compiled_scheduler
    except ImportError:
        compiled_scheduler = None
    try:
        from spear._fast import pool as compiled_pool
    except ImportError:
        compiled_pool = None

#: True only if both compiled kernels are in use.
EXTENSIONS: bool = compiled_scheduler is not None and compiled_pool is not None

scheduler_impl: ModuleType = compiled_scheduler or py_scheduler
pool_impl: ModuleType = compiled_pool or py_pool

pick_node = scheduler_impl.pick_node
pick_nodes = scheduler_impl.pick_nodes
SlotPool = pool_impl.SlotPool
