"""Spear's benchmarks and load tools, run from a checkout (this folder is not installed).

``python -m bench`` is the performance harness (:mod:`bench.harness`, its
child programs in ``floor/`` and ``functions/``); ``python -m bench.NAME``
runs one tool (``soak``, ``scale``, ``nodesim``, ``sms_memory``,
``wasm_timeouts``, ``process_spawn``, ``fuzz_long``); ``test_*.py`` are
pytest-benchmark microbenchmarks. Everything here may import :mod:`spear`;
nothing in :mod:`spear` imports it.
"""
