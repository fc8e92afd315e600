"""InstancePool's waiters: FIFO handover, the wait bound, and a waiter cancelled
after a slot was handed to it (the slot goes on, it is never lost)."""

from __future__ import annotations

import asyncio

import pytest

from spear import errors, protocol as P
from spear.runtimes.base import Instance, Prepared
from spear.spearlet.pool import InstancePool


class _Runtime:
    """Just enough of a runtime for the pool: instances are plain objects."""

    async def create_instance(self, prepared: Prepared) -> Instance:
        return Instance(prepared.spec.name, object())

    async def destroy(self, inst: Instance) -> None:
        inst.reusable = False


def _pool(size: int = 1) -> InstancePool:
    spec = P.FunctionSpec(name="f", runtime="process", command=["cat"],
                          pool=P.PoolSettings(max=size))
    return InstancePool(_Runtime(), Prepared(spec), spec.pool)


def test_waiters_get_released_instances_in_order():
    async def main():
        pool = _pool()
        slot, inst, _ = await pool.acquire()
        order = []

        async def wait(tag):
            s, i, cold = await pool.acquire(wait=5.0)
            order.append(tag)
            assert (s, i, cold) == (slot, inst, 0.0)
            pool.release(s)

        tasks = [asyncio.ensure_future(wait(t)) for t in "abc"]
        await asyncio.sleep(0)
        assert pool.waiting == 3
        pool.release(slot)
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"] and pool.waiting == 0 and pool.warm == 1

    asyncio.run(main())


def test_a_waiter_gives_up_after_its_wait():
    async def main():
        pool = _pool()
        await pool.acquire()
        with pytest.raises(errors.ResourceExhausted, match="busy for 0.01s"):
            await pool.acquire(wait=0.01)
        assert pool.waiting == 0

    asyncio.run(main())


def test_a_waiter_cancelled_after_the_handover_passes_the_slot_on():
    async def main():
        pool = _pool()
        slot, _, _ = await pool.acquire()
        first = asyncio.ensure_future(pool.acquire(wait=5.0))
        second = asyncio.ensure_future(pool.acquire(wait=5.0))
        await asyncio.sleep(0)
        pool.release(slot)  # handed to ``first``, which is cancelled before it resumes
        first.cancel()
        got, _, _ = await second
        assert got == slot and first.cancelled() and pool.busy == 1
        pool.release(got)
        assert pool.warm == 1 and pool.waiting == 0

    asyncio.run(main())
