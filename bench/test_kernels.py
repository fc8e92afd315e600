"""Microbenchmarks of the Cython kernels against their pure-Python twins.

Not part of the test run; ``python -m pytest bench/test_kernels.py
--benchmark-only``. Every bench runs both twins (``compiled``, ``py``); the
compiled one skips when it is not loaded (``SPEAR_NO_EXTENSIONS=1`` or not
built). Compare within a group (same size, both twins) since the machines
are shared and noisy. The target is one scheduling decision over 10,000 nodes
in under 50 µs, and the compiled path at least 20x its twin.

* ``pick_node n=N``: one placement decision (the best node) over N nodes.
* ``pick_nodes k=3 n=N``: the SMS's call, the best 3 nodes (its candidates
  for one execution, tried in order).
* ``schedule n=N``: the SMS's whole decision around that call,
  ``NodeTable.candidates`` (cached masks) then ``take`` and ``give`` of the
  chosen node's reservation, with each twin patched in as its kernel.
* pool benches time a loop of ``PAIRS`` operations, so divide the mean by
  ``PAIRS``: ``acquire+release`` (warm take/return, the hot path),
  ``acquire miss`` (no idle instance), ``reserve+discard`` (the cold path: a
  slot for a new instance, freed when it dies); ``evict sweep`` walks a pool
  of ``SWEEP`` idle slots none of which is stale (the periodic check).
"""

from __future__ import annotations

import random

import pytest

import spear.fast as fast
import spear.sms.scheduler as sched
from bench.harness.kernels import cluster_arrays as _cluster_arrays
from spear import protocol as P

PAIRS = 1000
SIZES = (100, 1_000, 10_000)
#: idle slots walked by the eviction sweep (the largest pool a function may have)
SWEEP = 4096


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
@pytest.mark.parametrize("n", SIZES)
def test_pick_nodes_top3(benchmark, kind, n):
    mod = _impl(kind, fast.compiled_scheduler, fast.py_scheduler)
    c = _cluster(n)
    benchmark.group = f"pick_nodes k=3 n={n}"
    benchmark.extra_info["nodes"] = n
    top = benchmark(mod.pick_nodes, *c, 1.0, 2048.0, 3)
    assert len(top) == 3
    assert top == fast.py_scheduler.pick_nodes(*c, 1.0, 2048.0, 3)  # the twins agree


def _node_table(n: int, seed: int = 42) -> sched.NodeTable:
    """A table of n ready nodes like ``_cluster``'s: mixed sizes, partly reserved, 5% warm."""
    rnd = random.Random(seed)
    table = sched.NodeTable()
    for i in range(n):
        cores = float(rnd.choice((2, 4, 8, 16, 32)))
        nid = f"node-{i:05d}"
        table.upsert(P.NodeInfo(
            node_id=nid, runtimes=["wasm", "process"], labels={"zone": f"z{i % 3}"},
            capacity=P.Capacity(cores=cores, memory=int(cores) << 32),
            usage=P.Usage(load1=rnd.uniform(0.0, cores))))
        table.take(nid, rnd.uniform(0.0, cores / 2), rnd.uniform(0.0, cores * (1 << 31)))
        if rnd.random() < 0.05:
            table.mark_warm(nid, "add-wasm")
    return table


@pytest.mark.parametrize("kind", ["compiled", "py"])
@pytest.mark.parametrize("n", SIZES)
def test_schedule_decision(benchmark, monkeypatch, kind, n):
    mod = _impl(kind, fast.compiled_scheduler, fast.py_scheduler)
    monkeypatch.setattr(sched, "pick_nodes", mod.pick_nodes)
    table = _node_table(n)
    cpu, mem = 1.0, float(256 << 20)

    def decide():
        best = table.candidates(runtime="wasm", labels={}, function="add-wasm",
                                cpu=cpu, mem=mem)[0]
        table.take(best, cpu, mem)
        table.give(best, cpu, mem)
        return best

    benchmark.group = f"schedule n={n}"
    benchmark.extra_info["nodes"] = n
    assert benchmark(decide) in table.slot_of


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
    assert pool.misses >= PAIRS


@pytest.mark.parametrize("kind", ["compiled", "py"])
def test_pool_reserve_discard(benchmark, kind):
    mod = _impl(kind, fast.compiled_pool, fast.py_pool)
    pool = mod.SlotPool(16)
    reserve, discard = pool.reserve, pool.discard

    def pairs():
        for _ in range(PAIRS):
            discard(reserve())

    benchmark.group = f"reserve+discard x{PAIRS}"
    benchmark.extra_info["pairs_per_round"] = PAIRS
    benchmark(pairs)
    assert pool.size == 0


@pytest.mark.parametrize("kind", ["compiled", "py"])
def test_pool_evict_sweep(benchmark, kind):
    mod = _impl(kind, fast.compiled_pool, fast.py_pool)
    pool = mod.SlotPool(SWEEP)
    for slot in [pool.reserve() for _ in range(SWEEP)]:
        pool.release(slot, 100.0)
    benchmark.group = f"evict sweep, {SWEEP} idle"
    benchmark.extra_info["idle_slots"] = SWEEP
    evicted = benchmark(pool.evict, 200.0, 300.0, 0)  # none idle for the ttl yet
    assert evicted == [] and pool.idle == SWEEP
