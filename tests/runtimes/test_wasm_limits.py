"""Time limits of the wasm runtime that hold against functions that misbehave:
real wasmtime, real threads, no mocks.

What is asserted is what the runtime reports (status, error code, limit,
the run and queue times it measured), never how long the test took: the
precise figure (how far past its limit a timeout ends) is measured by
``bench/wasm_timeouts.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spear import errors, protocol as P
from spear.config import load_config
from spear.runtimes import RuntimeManager
from spear.runtimes.wasm import UNLIMITED_FUEL, WasmRuntime
from spear.runtimes.wasm.engine import EpochClock
from spear.spearlet.runner import Runner
from tests.helpers import EXAMPLES

SPIN = (EXAMPLES / "tests" / "spin.wat").read_bytes()
HELLO = (EXAMPLES / "hello.wat").read_bytes()
#: an export of a module that imports WASI: it always runs on the pool
SPIN_WASI_EXPORT = b"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "spin") (loop $l (br $l))))"""
#: a command that sleeps 1.5 s inside poll_oneoff, where the epoch cannot reach it
SLEEPER = b"""(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 1500000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"""


def spec(artifact: bytes, handler: str = "", name: str = "fn", **kw) -> P.FunctionSpec:
    return P.FunctionSpec(name=name, runtime="wasm", artifact=artifact, handler=handler, **kw)


@pytest.fixture
def go(tmp_path):
    """``go(body, **runtime_kwargs)`` runs ``body(rt)`` with a fresh runtime."""

    def _go(body, **kwargs):
        async def main():
            rt = WasmRuntime(tmp_path / "cache", **kwargs)
            try:
                return await body(rt)
            finally:
                await rt.close()

        return asyncio.run(main())

    return _go


async def deploy(rt: WasmRuntime, s: P.FunctionSpec):
    return await rt.create_instance(await rt.prepare(s))


async def call(rt, inst, data=b"", timeout=None):
    return await rt.invoke(inst, data, [], P.Limits(timeout=timeout))


async def until(cond, what: str, limit: float = 10.0) -> None:
    """Wait for a condition (bounded: a broken runtime fails, never hangs)."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


def assert_timeout(exc: errors.SpearError, limit: float) -> None:
    """Ended by its own timeout, after running the whole of it."""
    assert isinstance(exc, errors.DeadlineExceeded), exc
    assert exc.code == "DEADLINE_EXCEEDED"
    assert exc.details["limit"] == "timeout" and exc.details["timeout"] == limit
    assert f"timeout of {limit:g}s" in exc.message
    assert exc.details["run"] >= limit, exc.details  # never before the limit


# ---------------------------------------------------------------- the deadline


@pytest.mark.parametrize("kind", ["inline export", "command on the pool", "export on the pool"])
def test_timeout_ends_the_call_by_the_epoch_with_reason_timeout(go, kind):
    artifact, handler = {
        "inline export": (SPIN, "spin"),
        "command on the pool": (SPIN, ""),  # a first call always runs on the pool
        "export on the pool": (SPIN_WASI_EXPORT, "spin"),
    }[kind]

    async def body(rt):
        # the pool's backstop out of the way: only the epoch deadline can end it
        rt.deadline_grace = 30.0
        inst = await deploy(rt, spec(artifact, handler))
        with pytest.raises(errors.DeadlineExceeded) as ei:
            await call(rt, inst, timeout=0.3)
        assert_timeout(ei.value, 0.3)
        assert "host call" not in ei.value.message
        # not a fuel trap: it had all the fuel there is and used a fraction
        assert ei.value.details["usage"]["fuel"] < UNLIMITED_FUEL

    go(body)


def test_spec_timeout_and_runtime_default_are_the_limits_named(go):
    async def body(rt):
        rt.deadline_grace = 30.0
        inst = await deploy(rt, spec(SPIN, "", limits=P.Limits(timeout=0.25)))
        with pytest.raises(errors.DeadlineExceeded) as ei:
            await call(rt, inst)
        assert_timeout(ei.value, 0.25)
        inst = await deploy(rt, spec(SPIN, "spin", name="dflt"))
        with pytest.raises(errors.DeadlineExceeded) as ei:
            await call(rt, inst)
        assert_timeout(ei.value, 0.2)

    go(body, default_timeout=0.2)


def test_guest_blocked_in_a_host_call_is_timed_out_by_the_backstop(go):
    async def body(rt):
        inst = await deploy(rt, spec(SLEEPER))
        with pytest.raises(errors.DeadlineExceeded) as ei:
            await call(rt, inst, timeout=0.2)
        assert_timeout(ei.value, 0.2)
        assert "host call" in ei.value.message
        # the thread stays with the sleeping guest until it wakes, then frees up
        assert rt.pool.running == 1
        await until(lambda: rt.pool.running == 0, "the sleeping guest's thread came back")
        assert (await call(rt, await deploy(rt, spec(HELLO, name="h")), b"x")).output == b"hello, x"

    go(body, max_workers=1)


@given(origin=st.floats(0, 1e5), lag=st.integers(0, 50), start=st.floats(0, 1e5),
       timeout=st.floats(1e-3, 86400), tick=st.sampled_from([0.001, 0.01, 0.05]))
def test_epoch_deadline_is_never_before_the_limit(origin, lag, start, timeout, tick):
    """Whatever epoch the ticker reached (it may lag behind the clock), the
    deadline given to a call is an epoch the clock reaches only after
    ``start + timeout``, and at most two ticks after it."""
    clock = EpochClock(lambda: None, tick)
    clock.origin = origin
    start = origin + start
    clock.epoch = max(0, int((start - origin) / tick) - lag)
    deadline_epoch = clock.epoch + clock.ticks(start, timeout)
    fires_at = origin + deadline_epoch * tick
    assert fires_at >= start + timeout - 1e-6 * max(1.0, start)
    assert fires_at <= start + timeout + 2 * tick + 1e-6 * max(1.0, start)


def test_the_clock_catches_up_after_a_late_tick():
    bumps = []
    clock = EpochClock(lambda: bumps.append(1), 0.01)
    clock.advance(clock.origin + 0.055)  # the ticker woke 5 ticks late
    assert clock.epoch == len(bumps) == 5
    clock.advance(clock.origin + 0.055)  # never past the clock
    assert clock.epoch == 5


# ---------------------------------------------------------------- the pool


def test_queued_calls_get_their_whole_timeout_and_report_the_wait(go):
    """One thread, six spinners submitted together: each runs its own timeout
    in full once the ones before it have ended, and reports the wait apart.
    (The old runtime timed the last ones out from submission, unrun.)"""

    async def body(rt):
        rt.deadline_grace = 30.0
        inst = await deploy(rt, spec(SPIN, ""))
        results = await asyncio.gather(*(call(rt, inst, timeout=0.25) for _ in range(6)),
                                       return_exceptions=True)
        for exc in results:
            assert_timeout(exc, 0.25)
        waits = sorted(exc.details["queued"] for exc in results)
        # lower bounds that follow from "never before the limit": the k-th call
        # (k >= 3) was queued before the second one started, so it waited for
        # k - 2 whole timeouts at least
        assert waits[-1] >= 4 * 0.25 and sum(w >= 0.25 for w in waits) >= 4, waits
        assert rt.pool.running == rt.pool.waiting == 0

    go(body, max_workers=1, queue_timeout=60)


def test_well_behaved_call_behind_spinners_runs_once_a_thread_frees(go):
    async def body(rt):
        spin = await deploy(rt, spec(SPIN, "", name="spin"))
        hello = await deploy(rt, spec(HELLO, name="hello"))
        spinners = [asyncio.ensure_future(call(rt, spin, timeout=0.3)) for _ in range(2)]
        await until(lambda: rt.pool.running == 2, "both threads spin")
        out = await call(rt, hello, b"patient", timeout=5)
        assert out.output == b"hello, patient"
        assert out.queued > 0  # waited for a spinner, reported apart
        for exc in await asyncio.gather(*spinners, return_exceptions=True):
            assert isinstance(exc, errors.DeadlineExceeded)

    go(body, max_workers=2, queue_timeout=60)


def test_a_full_queue_refuses_at_once_naming_the_limit(go):
    async def body(rt):
        spin = await deploy(rt, spec(SPIN, "", name="spin"))
        hello = await deploy(rt, spec(HELLO, name="hello"))
        spinners = [asyncio.ensure_future(call(rt, spin, timeout=0.5)) for _ in range(2)]
        await until(lambda: rt.pool.running == 1 and rt.pool.waiting == 1, "one spins, one waits")
        with pytest.raises(errors.ResourceExhausted) as ei:
            await call(rt, hello, b"x", timeout=5)
        exc = ei.value
        assert exc.code == "RESOURCE_EXHAUSTED" and exc.details["limit"] == "max_queue"
        assert "[runtimes.wasm] max_queue = 1" in exc.message
        assert rt.pool.refused == 1
        for exc in await asyncio.gather(*spinners, return_exceptions=True):
            assert isinstance(exc, errors.DeadlineExceeded)
        # the pool is whole again
        assert rt.pool.running == rt.pool.waiting == 0
        assert (await call(rt, hello, b"y")).output == b"hello, y"

    go(body, max_workers=1, max_queue=1, queue_timeout=60)


def test_a_call_that_waits_too_long_is_refused_and_never_runs(go):
    async def body(rt):
        ran: list[str] = []
        real = rt._run_command

        def counting(compiled, *args):
            ran.append(compiled.name)
            return real(compiled, *args)

        rt._run_command = counting
        spin = await deploy(rt, spec(SPIN, "", name="spin"))
        hello = await deploy(rt, spec(HELLO, name="hello"))
        spinner = asyncio.ensure_future(call(rt, spin, timeout=1.0))
        await until(lambda: rt.pool.running == 1, "the spinner holds the thread")
        with pytest.raises(errors.ResourceExhausted) as ei:
            await call(rt, hello, b"x", timeout=5)
        exc = ei.value
        assert exc.details["limit"] == "queue_timeout"
        assert "[runtimes.wasm] queue_timeout = 0.1" in exc.message
        assert exc.details["queued"] >= 0.1
        assert rt.pool.expired == 1 and rt.pool.waiting == 0
        with pytest.raises(errors.DeadlineExceeded):
            await spinner
        await until(lambda: rt.pool.running == 0, "the thread is free")
        assert ran == ["spin"]  # the refused call never started

    go(body, max_workers=1, queue_timeout=0.1)


def test_a_cancelled_waiting_call_never_runs(go):
    async def body(rt):
        spin = await deploy(rt, spec(SPIN, "", name="spin"))
        spinner = asyncio.ensure_future(call(rt, spin, timeout=0.4))
        await until(lambda: rt.pool.running == 1, "the spinner holds the thread")
        waiting = asyncio.ensure_future(call(rt, spin, timeout=5))
        await until(lambda: rt.pool.waiting == 1, "the second call waits")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert rt.pool.waiting == 0
        with pytest.raises(errors.DeadlineExceeded):
            await spinner
        await until(lambda: rt.pool.running == 0, "the thread is free")  # nothing else ran

    go(body, max_workers=1, queue_timeout=60)


# ---------------------------------------------------------------- through the Spearlet


async def _service(tmp_path: Path, toml: str) -> Runner:
    cfg = tmp_path / "spear.toml"
    cfg.write_text(f'[spearlet]\ndata = "{tmp_path / "node"}"\n'
                   '[runtimes.process]\nenabled = false\n'
                   '[runtimes.docker]\nenabled = false\n' + toml)
    config = load_config(cfg, env={})
    rm = RuntimeManager(config, config.spearlet.data, "node-1")
    await rm.probe()
    assert "wasm" in rm.runtimes, rm.unavailable
    return Runner(rm, "node-1")


async def _execute(fs: Runner, name: str, data: bytes = b"", timeout=None) -> P.ExecutionInfo:
    """One execution the way the Spearlet runs async and SMS work."""
    return await fs.execute(name, data, timeout=timeout)


@pytest.mark.parametrize("max_queue", [3, 2])
def test_spinning_tenant_never_times_out_a_well_behaved_caller(tmp_path, max_queue):
    """Three spinners on one thread: one runs, two wait. The well-behaved
    caller either waits its turn and runs (the wait reported as ``queue``,
    not ``run``) or, when the queue is full, is refused RESOURCE_EXHAUSTED:
    it is never timed out.

    The ``>=`` bounds follow from a deadline never firing before its limit:
    calls submitted before the second spinner started wait for whole timeouts.
    """

    async def main():
        fs = await _service(tmp_path, "[runtimes.wasm]\nthreads = 1\n"
                                      f"max_queue = {max_queue}\nqueue_timeout = 30\n")
        try:
            rt = fs.runtimes.get("wasm")
            await fs.deploy(spec(SPIN, "", name="spin", limits=P.Limits(timeout=0.4)))
            await fs.deploy(spec(HELLO, name="hello", limits=P.Limits(timeout=0.4)))
            spinners = [asyncio.ensure_future(_execute(fs, "spin")) for _ in range(3)]
            await until(lambda: rt.pool.running == 1 and rt.pool.waiting == 2,
                        "one spinner runs, two wait")
            info = await _execute(fs, "hello", b"me")
            spun = await asyncio.gather(*spinners)
            return info, spun
        finally:
            await fs.close()
            await fs.runtimes.close()

    info, spun = asyncio.run(main())
    assert info.status != "timed_out", info
    if max_queue == 3:
        assert info.status == "succeeded", info
        # behind three spinners: the wait is queue time, the run is its own
        assert info.timings.queue >= 0.4, info.timings
        assert info.timings.queue + info.timings.cold_start + info.timings.run \
            == pytest.approx(info.timings.total)
    else:
        assert info.status == "failed" and info.error.code == "RESOURCE_EXHAUSTED", info
        assert "max_queue = 2" in info.error.message
    for s in spun:
        assert s.status == "timed_out" and s.error.code == "DEADLINE_EXCEEDED", s
        assert "timeout of 0.4s" in s.error.message
        assert s.timings.run >= 0.4, s.timings
    # the last spinner waited for two whole timeouts, reported as queue, not
    # run: counted from when the first one started, less the moment between
    # that and its own submission (the three are submitted a few ms apart)
    assert max(s.timings.queue for s in spun) >= 0.8 - 0.05, [s.timings for s in spun]


def test_config_keys_reach_the_pool(tmp_path):
    async def main():
        fs = await _service(tmp_path, "[runtimes.wasm]\nthreads = 3\nmax_queue = 7\n"
                                      "queue_timeout = 1.5\n")
        try:
            return fs.runtimes.get("wasm").pool
        finally:
            await fs.runtimes.close()

    pool = asyncio.run(main())
    assert (pool.threads, pool.max_queue, pool.queue_timeout) == (3, 7, 1.5)
