"""Microbenchmarks of the Cython kernels against their pure-Python twins.

Run with ``python3 -m pytest bench/test_kernels.py``; compare within a group
(same size, both twins) since the machines are shared and noisy. The target is
one scheduling decision over 10,000 nodes in under 50 µs, and the
compiled path at least 20x its twin. The pool benches time a loop of
``PAIRS`` acquire+release pairs, so divide the mean by ``PAIRS``.
"""

from __future__ import annotations

import pytest

import spear.fast as fast
from bench.harness.kernels import cluster_arrays as _cluster_arrays

PAIRS = 1000
SIZES = (100, 1_000, 10_000)


def _impl(kind: str, compiled, twin):
    if kind == "py":
        return twin
    if compiled is None:
        pytest.skip("compiled kernel not loaded (SPEAR_NO_EXTENSIONS=1 or not built)")
    return compiled


def _cluster(n: int, seed: int = 42) -> tuple:
    """A plausible cluster: mixed node sizes, partly loaded, 5% warm, 90% eligible."""
    return _cluster_arrays(n, seed)


@pytest.mark.parametrize("kind", ["compiled", "py"])
@pytest.mark.parametrize("n", SIZES)
def test_pick_node(benchmark, kind, n):
    mod = _impl(kind, fast.compiled_scheduler, fast.py_scheduler)
    c = _cluster(n)
    benchmark.group = f"pick_node n={n}"
    benchmark.extra_info["nodes"] = n
    best = benchmark(mod.pick_node, *c, 1.0, 2048.0)
    assert best >= 0


@pytest.mark.parametrize("kind", ["compiled", "py"])
def test_pick_nodes_top3(benchmark, kind):
    mod = _impl(kind, fast.compiled_scheduler, fast.py_scheduler)
    c = _cluster(10_000)
    benchmark.group = "pick_nodes k=3 n=10000"
    top = benchmark(mod.pick_nodes, *c, 1.0, 2048.0, 3)
    assert len(top) == 3


@pytest.mark.parametrize("kind", ["compiled", "py"])
def test_pool_acquire_release(benchmark, kind):
    mod = _impl(kind, fast.compiled_pool, fast.py_pool)
    pool = mod.SlotPool(16)
    for _ in range(4):
        pool.release(pool.reserve(), 0.0)
    acquire, release = pool.acquire, pool.release

    def pairs():
        for _ in range(PAIRS):
            release(acquire(), 1.0)

    benchmark.group = f"acquire+release x{PAIRS}"
    benchmark.extra_info["pairs_per_round"] = PAIRS
    benchmark(pairs)
    assert pool.hits >= PAIRS and pool.misses == 0


@pytest.mark.parametrize("kind", ["compiled", "py"])
def test_pool_acquire_miss(benchmark, kind):
    mod = _impl(kind, fast.compiled_pool, fast.py_pool)
    pool = mod.SlotPool(16)
    acquire = pool.acquire

    def misses():
        for _ in range(PAIRS):
            acquire()

    benchmark.group = f"acquire miss x{PAIRS}"
    benchmark(misses)
