"""The learned warming policy in a Spearlet pool of real wasm instances, on an
injected clock: a function called every 30 minutes is unloaded after each call
and warm again when the next one comes; the fixed keep-alive misses it."""

from __future__ import annotations

import asyncio
import time

from spear import protocol as P
from spear.autoscale.warming import HybridHistogram
from spear.runtimes.wasm import WasmRuntime
from spear.spearlet.core import Maxima, SpearletCore
from spear.spearlet.pool import InstancePool
from spear.spearlet.runner import Runner
from tests.helpers import add_spec

PERIOD = 1800.0


class Clock:
    """A clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _calls(pool: InstancePool, rt: WasmRuntime, clock: Clock, n: int) -> list[bytes]:
    """``n`` calls PERIOD apart, each taking one second; the outputs."""
    out = []
    for _ in range(n):
        slot, inst, _ = await pool.acquire()
        out.append((await rt.invoke(inst, b"", ["1", "2"], P.Limits())).output)
        clock.now += 1.0
        pool.release(slot)
        await pool.evict_idle()
        clock.now += PERIOD - 1.0
        await pool.evict_idle()
        await pool.warm_up()
    return out


def _run(tmp_path, learned: bool) -> tuple[InstancePool, list[bytes], dict]:
    async def main():
        rt = WasmRuntime(tmp_path / "cache")
        clock = Clock()
        spec = add_spec(pool=P.PoolSettings(max=2, idle_ttl=600.0))
        policy = HybridHistogram(spec.pool.idle_ttl) if learned else None
        pool = InstancePool(rt, await rt.prepare(spec), spec.pool, policy, clock=clock)
        try:
            out = await _calls(pool, rt, clock, 12)  # 11 idle times: representative
            seen = {"hits_before": pool.slots.hits}
            # after a call: nothing warm while the pre-warm window runs, one at its end
            slot, _, _ = await pool.acquire()
            clock.now += 1.0
            pool.release(slot)
            clock.now += 60.0
            await pool.evict_idle()
            seen["warm_in_window"] = pool.warm
            clock.now += PERIOD - 70.0
            await pool.evict_idle()
            await pool.warm_up()
            seen["warm_before_next"] = pool.warm
            out += await _calls(pool, rt, clock, 3)
            seen["hits"] = pool.slots.hits - seen["hits_before"]
            return pool, out, seen
        finally:
            await pool.close()
            await rt.close()

    return asyncio.run(main())


def test_learned_warming_prewarms_a_periodic_function(tmp_path):
    pool, out, seen = _run(tmp_path, learned=True)
    assert set(out) == {b"3"}
    assert pool.warming.windows().learned
    assert seen["warm_in_window"] == 0
    assert seen["warm_before_next"] == 1
    # the last four calls found their instance warm: pre-warmed, not started by the call
    assert seen["hits"] == 4


def test_fixed_keep_alive_starts_every_call_of_a_periodic_function_cold(tmp_path):
    pool, out, seen = _run(tmp_path, learned=False)
    assert set(out) == {b"3"}
    assert seen["warm_in_window"] == 1  # kept for idle_ttl, then gone before the next call
    assert seen["warm_before_next"] == 0
    assert seen["hits"] == 0 and pool.cold_starts == 16  # every call started cold


class _Runtimes:
    """One wasm runtime, as the runner's RuntimeManager hands it out."""

    def __init__(self, rt: WasmRuntime) -> None:
        self.runtimes = {"wasm": rt}

    async def ready(self, name: str) -> WasmRuntime:
        return self.runtimes[name]


def _warm_up_on_a_node(tmp_path, node_mb: int, warming: str = "learned", busy_mb: int = 0) -> int:
    """Deploy ``add`` (64 MB) with the given warming, next to ``busy_mb`` of
    warm instances of another function; make its policy want an instance now;
    the instances of ``add`` warm after the runner's warm-up."""
    async def main():
        rt = WasmRuntime(tmp_path / "cache")
        core = SpearletCore("n1", maxima=Maxima(memory_mb=node_mb))
        runner = Runner(_Runtimes(rt), core, warming=warming)
        try:
            if busy_mb:
                await runner.deploy(add_spec("other", limits=P.Limits(memory_mb=busy_mb),
                                             pool=P.PoolSettings(min_warm=1)))
            await runner.deploy(add_spec(limits=P.Limits(memory_mb=64)))
            pool = runner.deployments["add"].pool
            if pool.warming is not None:
                for _ in range(20):  # a function called every 30 minutes, last ended 29 min ago
                    pool.warming.record(PERIOD)
                pool.warming.last_end = time.monotonic() - 29 * 60
            await runner.warm_up()
            return pool.warm
        finally:
            await runner.close()
            await rt.close()

    return asyncio.run(main())


def test_the_runner_prewarms_what_the_learned_policy_wants(tmp_path):
    assert _warm_up_on_a_node(tmp_path, node_mb=1024) == 1


def test_prewarming_is_bounded_by_the_node_memory(tmp_path):
    assert _warm_up_on_a_node(tmp_path, node_mb=128, busy_mb=64) == 1
    assert _warm_up_on_a_node(tmp_path, node_mb=127, busy_mb=64) == 0


def test_a_fixed_node_never_prewarms(tmp_path):
    assert _warm_up_on_a_node(tmp_path, node_mb=1024, warming="fixed") == 0
