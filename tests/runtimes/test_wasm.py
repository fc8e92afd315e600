"""The wasm runtime against real wasmtime (no mocks)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spear import errors
from spear.protocol import FunctionSpec, Limits
from spear.runtimes.base import Instance, Outcome
from spear.runtimes.hostpaths import HostPaths
from spear.runtimes.wasm import WasmRuntime
from tests.helpers import EXAMPLES

ROOT = Path(__file__).resolve().parents[2]


def wat(name: str) -> bytes:
    path = EXAMPLES / name if (EXAMPLES / name).exists() else EXAMPLES / "tests" / name
    return path.read_bytes()


def spec(artifact: bytes | str, handler: str = "", name: str = "fn", **kw) -> FunctionSpec:
    if isinstance(artifact, str):
        artifact = wat(artifact)
    return FunctionSpec(name=name, runtime="wasm", artifact=artifact, handler=handler, **kw)


def run(coro_fn, *args, **kwargs):
    """Run ``coro_fn(rt, ...)`` on a fresh event loop with a fresh runtime."""

    async def main():
        rt = WasmRuntime(kwargs.pop("cache_dir"), **kwargs.pop("rt_kwargs", {}))
        try:
            return await coro_fn(rt, *args)
        finally:
            await rt.close()

    return asyncio.run(main())


@pytest.fixture
def go(tmp_path):
    def _go(coro_fn, *args, **rt_kwargs):
        return run(coro_fn, *args, cache_dir=tmp_path / "cache", rt_kwargs=rt_kwargs)

    return _go


async def deploy(rt: WasmRuntime, s: FunctionSpec) -> Instance:
    return await rt.create_instance(await rt.prepare(s))


async def call(rt, inst, data=b"", args=(), limits=None, logs=None) -> Outcome:
    return await rt.invoke(inst, data, list(args), limits or Limits(), logs.append if logs is not None else None)


async def assert_healthy(rt: WasmRuntime) -> None:
    """The runtime still serves both kinds of function."""
    inst = await deploy(rt, spec("add.wat", "add"))
    assert (await call(rt, inst, args=[40, 2])).output == b"42"
    inst = await deploy(rt, spec("hello.wat"))
    assert (await call(rt, inst, b"again")).output == b"hello, again"


# ---------------------------------------------------------------- WASI command


def test_hello_output_and_stderr_logs(go):
    async def body(rt):
        p = await rt.prepare(spec("hello.wat", name="hello"))
        assert p.digest and len(p.digest) == 64
        inst = await rt.create_instance(p)
        assert inst.function == "hello" and inst.reusable
        logs: list[bytes] = []
        out = await call(rt, inst, b"alice", logs=logs)
        assert out.output == b"hello, alice"
        assert out.exit_code == 0
        assert b"".join(logs) == b"hello.wat: greeting written\n"
        assert out.usage.fuel > 0 and out.usage.peak_memory == 17 * 65536 and out.usage.cpu_time >= 0
        # a fresh store per call: same instance, no leftover state
        out = await call(rt, inst, b"")
        assert out.output == b"hello, world"
        assert inst.reusable

    go(body)


def test_hello_handler_start_and_big_io(go):
    async def body(rt):
        inst = await deploy(rt, spec("hello.wat", "_start"))
        big = bytes(range(256)) * 3600  # ~900 KiB, far more than a pipe buffer
        out = await call(rt, inst, big)
        assert out.output == b"hello, " + big

    go(body)


def test_concurrent_commands(go):
    async def body(rt):
        inst = await deploy(rt, spec("hello.wat"))
        outs = await asyncio.gather(*(call(rt, inst, str(i).encode()) for i in range(20)))
        assert [o.output for o in outs] == [f"hello, {i}".encode() for i in range(20)]

    go(body)


def test_nonzero_exit_is_function_error(go):
    async def body(rt):
        inst = await deploy(rt, spec("exit.wat"))
        logs: list[bytes] = []
        with pytest.raises(errors.FunctionError) as ei:
            await call(rt, inst, b"3", logs=logs)
        assert ei.value.details["exit_code"] == 3
        assert ei.value.details["output"] == "bye"
        assert b"exit.wat: exiting\n" in b"".join(logs)
        # proc_exit(0) is success
        out = await call(rt, inst, b"0")
        assert out.exit_code == 0 and out.output == b"bye"
        await assert_healthy(rt)

    go(body)


def test_trap_in_command_is_function_error(go):
    async def body(rt):
        inst = await deploy(rt, spec("trap.wat"))
        with pytest.raises(errors.FunctionError) as ei:
            await call(rt, inst)
        assert "unreachable" in ei.value.message
        await assert_healthy(rt)

    go(body)


def test_commands_do_not_block_the_loop(go):
    async def body(rt):
        inst = await deploy(rt, spec("spin.wat"))
        beats = 0
        stop = asyncio.Event()

        async def heartbeat():
            nonlocal beats
            while not stop.is_set():
                beats += 1
                await asyncio.sleep(0.01)

        hb = asyncio.create_task(heartbeat())
        with pytest.raises(errors.DeadlineExceeded):
            await call(rt, inst, limits=Limits(timeout=0.3))
        stop.set()
        await hb
        assert beats >= 10

    go(body)


# A command for the inline tests. No input: returns at once. Else the first
# input byte picks: "s" spins forever, "1"/"2" floods stdout/stderr with 64 KiB
# writes until one fails, then proc_exit(7).
MODES = b"""(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (i32.eqz (i32.load (i32.const 8))) (then (return)))
    (if (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 115))
      (then (loop $l (br $l))))
    (i32.store (i32.const 16) (i32.const 65536))
    (i32.store (i32.const 20) (i32.const 65536))
    (block $done
      (loop $w
        (br_if $done (call $fd_write (i32.sub (i32.load8_u (i32.const 1024)) (i32.const 48))
                                     (i32.const 16) (i32.const 1) (i32.const 24)))
        (br $w)))
    (call $exit (i32.const 7))))"""


def count_pool_calls(rt: WasmRuntime) -> list:
    """Record every call the runtime hands to its thread pool."""
    calls: list = []
    submit = rt._submit

    def spy(fn, *args):
        calls.append(fn.__name__)
        return submit(fn, *args)

    rt._submit = spy
    return calls


def test_warm_inline_command_delivers_stderr_to_on_log(go):
    async def body(rt):
        assert rt.inline_commands
        inst = await deploy(rt, spec("hello.wat", name="hello"))
        pool = count_pool_calls(rt)
        # the first call of a command runs on the pool (its duration is unknown)
        assert (await call(rt, inst, b"first")).output == b"hello, first"
        assert pool == ["_run_command"] and inst.handle.compiled.slow is False
        # warm: inline on the loop, stdio through reusable memfds
        for i in range(3):
            logs: list[bytes] = []
            out = await call(rt, inst, f"warm{i}".encode(), logs=logs)
            assert out.output == f"hello, warm{i}".encode() and out.exit_code == 0
            assert b"".join(logs) == b"hello.wat: greeting written\n"
            assert out.usage.fuel > 0 and out.usage.peak_memory == 17 * 65536
        assert pool == ["_run_command"]
        assert len(rt._captures.spare) == 1 and not rt._captures.active
        # a fresh store per call still; big input and output; empty input
        big = bytes(range(256)) * 3600
        assert (await call(rt, inst, big)).output == b"hello, " + big
        assert (await call(rt, inst, b"")).output == b"hello, world"
        # a failing on_log does not break an inline call
        out = await rt.invoke(inst, b"x", [], Limits(), lambda chunk: 1 / 0)
        assert out.output == b"hello, x"
        # non-zero exit inline: stderr still delivered, stdout tail in details
        ex = await deploy(rt, spec("exit.wat"))
        await call(rt, ex, b"0")
        logs = []
        with pytest.raises(errors.FunctionError) as ei:
            await call(rt, ex, b"5", logs=logs)
        assert ei.value.details["exit_code"] == 5 and ei.value.details["output"] == "bye"
        assert b"".join(logs) == b"exit.wat: exiting\n"
        assert ei.value.details["stderr"] == "exit.wat: exiting\n"  # kept for the record
        # limits apply inline too
        with pytest.raises(errors.ResourceExhausted):
            await call(rt, inst, limits=Limits(memory_mb=1))
        with pytest.raises(errors.ResourceExhausted) as ei:
            await call(rt, inst, b"x", limits=Limits(fuel=50))
        assert ei.value.details["limit"] == "fuel"
        assert pool == ["_run_command"] * 2  # one first call per function
        await assert_healthy(rt)

    go(body, inline_budget=1.0)  # a loaded machine must not move calls to the pool


def test_long_running_command_moves_to_the_pool_and_times_out(go):
    async def body(rt):
        inst = await deploy(rt, spec(MODES, name="modes"))
        compiled = inst.handle.compiled
        pool = count_pool_calls(rt)
        await call(rt, inst)  # first call: pool
        await call(rt, inst)  # fast: inline
        assert pool == ["_run_command"] and compiled.slow is False
        # a runaway call that was started inline is still stopped by the epoch
        # (1 s: "slow" is CPU time over 0.1 s, which a machine whose cores
        # other processes share may not give a shorter call)
        with pytest.raises(errors.DeadlineExceeded) as ei:
            await call(rt, inst, b"s", limits=Limits(timeout=1.0))
        assert ei.value.details["limit"] == "timeout" and ei.value.details["run"] >= 1.0
        assert pool == ["_run_command"] and compiled.slow is True
        # ... and the next call goes to the pool: the loop keeps running
        beats = 0

        async def heartbeat():
            nonlocal beats
            while True:
                beats += 1
                await asyncio.sleep(0.01)

        hb = asyncio.create_task(heartbeat())
        # (1 s again, so that it stays "slow")
        with pytest.raises(errors.DeadlineExceeded):
            await call(rt, inst, b"s", limits=Limits(timeout=1.0))
        hb.cancel()
        assert pool == ["_run_command"] * 2 and beats >= 10
        # a fast call (on the pool) brings it back inline
        await call(rt, inst)
        assert pool == ["_run_command"] * 3 and compiled.slow is False
        await call(rt, inst)
        assert pool == ["_run_command"] * 3

    go(body, inline_budget=0.1)  # fast calls stay fast on a loaded machine


def test_inline_command_output_cap(go):
    async def body(rt):
        inst = await deploy(rt, spec(MODES, name="modes"))
        await call(rt, inst)
        pool = count_pool_calls(rt)
        # stdout: the ticker seals the memfd past the cap, the guest's write
        # fails, and the call is ResourceExhausted
        with pytest.raises(errors.ResourceExhausted) as ei:
            await call(rt, inst, b"1", limits=Limits(timeout=5))
        assert ei.value.details["limit"] == "output"
        assert pool == [] and not rt._captures.spare  # the sealed pair was dropped
        # stderr: logs are cut at the cap, the guest sees a failed write
        logs: list[bytes] = []
        with pytest.raises(errors.FunctionError) as ei:
            await call(rt, inst, b"2", limits=Limits(timeout=5), logs=logs)
        assert ei.value.details["exit_code"] == 7
        assert sum(map(len, logs)) == 1 << 20 and max(map(len, logs)) <= 1 << 16
        assert pool == [] and not rt._captures.spare
        assert (await call(rt, inst)).output == b""
        assert pool == [] and len(rt._captures.spare) == 1
        await assert_healthy(rt)

    go(body, max_output_bytes=1 << 20, inline_budget=1.0)


def test_commands_that_may_block_never_run_inline(go, tmp_path):
    sleeper = b"""(module
      (import "wasi_snapshot_preview1" "poll_oneoff"
        (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")))"""

    async def body(rt):
        pool = count_pool_calls(rt)
        for s in (spec(sleeper), spec("hello.wat", grants=[f"dir:{tmp_path}"])):
            inst = await deploy(rt, s)
            assert inst.handle.compiled.inline is False
            for _ in range(3):
                await call(rt, inst)
        assert pool == ["_run_command"] * 6

    go(body, host_paths=HostPaths([str(tmp_path)]))

    async def off(rt):
        inst = await deploy(rt, spec("hello.wat"))
        pool = count_pool_calls(rt)
        for _ in range(3):
            assert (await call(rt, inst, b"x")).output == b"hello, x"
        assert pool == ["_run_command"] * 3

    go(off, inline_commands=False)


# ---------------------------------------------------------------- exports


def test_export_add_and_instance_reuse(go):
    async def body(rt):
        p = await rt.prepare(spec("add.wat", "add"))
        inst = await rt.create_instance(p)
        handle = inst.handle
        assert (await call(rt, inst, args=[2, 3])).output == b"5"
        assert (await call(rt, inst, args=[-7, 3])).output == b"-4"
        assert (await call(rt, inst, args=["40", 2.0])).output == b"42"
        assert inst.handle is handle and inst.reusable
        # the same instance (and its state) is reused across calls
        cnt = await deploy(rt, spec("add.wat", "count"))
        outs = [(await call(rt, cnt)).output for _ in range(3)]
        assert outs == [b"1", b"2", b"3"]
        other = await deploy(rt, spec("add.wat", "count"))
        assert (await call(rt, other)).output == b"1"
        assert (await call(rt, cnt)).output == b"4"
        # multi-value, floats, fib
        assert (await call(rt, await deploy(rt, spec("add.wat", "divmod")), args=[17, 5])).output == b"[3,2]"
        assert (await call(rt, await deploy(rt, spec("add.wat", "scale")), args=[1.5, 2])).output == b"3.0"
        fib = await deploy(rt, spec("add.wat", "fib"))
        assert (await call(rt, fib, args=[10])).output == b"55"
        assert (await call(rt, fib, args=[90])).output == b"2880067194370816120"
        out = await call(rt, fib, args=[10])
        assert out.exit_code is None and out.usage.fuel > 0

    go(body)


def test_export_bad_args(go):
    async def body(rt):
        inst = await deploy(rt, spec("add.wat", "add"))
        for bad in ([1], [1, 2, 3], ["x", 1], [1.5, 1], [1 << 64, 1], [None, 1]):
            with pytest.raises(errors.InvalidArgument):
                await call(rt, inst, args=bad)
        assert (await call(rt, inst, args=[(1 << 63) - 1, 1])).output == str(-(1 << 63)).encode()
        assert inst.reusable

    go(body)


@settings(max_examples=50, deadline=None)
@given(a=st.integers(-(1 << 63), (1 << 63) - 1), b=st.integers(-(1 << 63), (1 << 63) - 1))
def test_export_add_matches_i64_arithmetic(tmp_path_factory, a, b):
    async def body(rt):
        inst = await deploy(rt, spec("add.wat", "add"))
        return (await call(rt, inst, args=[a, b])).output

    expected = (a + b + (1 << 63)) % (1 << 64) - (1 << 63)
    out = run(body, cache_dir=tmp_path_factory.getbasetemp() / "hyp-cache")
    assert out == str(expected).encode()


def test_export_trap_marks_instance_not_reusable(go):
    async def body(rt):
        inst = await deploy(rt, spec("trap.wat", "divzero"))
        with pytest.raises(errors.FunctionError) as ei:
            await call(rt, inst, args=[1])
        assert "divide by zero" in ei.value.message
        assert inst.reusable is False
        await rt.destroy(inst)
        await rt.destroy(inst)  # idempotent
        await assert_healthy(rt)

    go(body)


def test_exports_of_wasi_modules_run_on_the_pool(go):
    async def body(rt):
        # hello.wat also exports `memory`; its `_start` as a plain export is
        # not allowed through handler "_start" (that is the command), so use
        # exit.wat's WASI imports via a reactor-style module instead.
        reactor = b"""(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "log line\\n")
          (global $n (mut i32) (i32.const 0))
          (func (export "_initialize") (global.set $n (i32.const 100)))
          (func (export "bump") (result i32)
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const 9))
            (drop (call $w (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 24)))
            (global.set $n (i32.add (global.get $n) (i32.const 1)))
            (global.get $n)))"""
        inst = await deploy(rt, spec(reactor, "bump"))
        assert inst.handle.inline is False
        logs: list[bytes] = []
        assert (await call(rt, inst, logs=logs)).output == b"101"
        assert (await call(rt, inst, logs=logs)).output == b"102"
        assert b"".join(logs) == b"log line\nlog line\n"
        await rt.destroy(inst)

    go(body)


WORK = b"""(module
  (func (export "work") (param $n i64) (result i64)
    (local $acc i64)
    (block $done
      (loop $l
        (br_if $done (i64.eqz (local.get $n)))
        (local.set $acc (i64.add (local.get $acc) (local.get $n)))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $l)))
    (local.get $acc)))"""


def test_slow_export_moves_off_the_loop(go):
    async def body(rt):
        inst = await deploy(rt, spec(WORK, "work"))
        assert inst.handle.inline
        assert (await call(rt, inst, args=[10])).output == b"55"
        assert inst.handle.slow is False
        n = 1
        while not inst.handle.slow:  # find a call over the runtime's CPU budget
            assert n < 1 << 40, "no call was ever slow"
            n *= 4
            await call(rt, inst, args=[n])
        n *= 16  # long enough for the loop to beat several times meanwhile
        beats = 0

        async def heartbeat():
            nonlocal beats
            while True:
                beats += 1
                await asyncio.sleep(0.001)

        hb = asyncio.create_task(heartbeat())
        await asyncio.sleep(0)
        beats = 0
        out = await call(rt, inst, args=[n])  # now on the pool: the loop keeps beating
        hb.cancel()
        assert out.output == str(n * (n + 1) // 2).encode()
        assert beats >= 3
        await call(rt, inst, args=[1])
        assert inst.handle.slow is False  # back inline after a quick call

    go(body)


def test_destroy_while_a_pooled_call_runs(go):
    async def body(rt):
        reactor = b"""(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "spin") (loop $l (br $l))))"""
        inst = await deploy(rt, spec(reactor, "spin"))
        task = asyncio.create_task(call(rt, inst, limits=Limits(timeout=0.3)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert inst.reusable is False
        await rt.destroy(inst)  # the worker frees the store when the call ends
        await asyncio.sleep(0.5)
        assert inst.handle.store is None
        await assert_healthy(rt)

    go(body)


# ---------------------------------------------------------------- limits


def test_fuel_stops_infinite_loop(go):
    async def body(rt):
        for handler, limits in (("spin", Limits(fuel=100_000)), ("", Limits(fuel=100_000))):
            inst = await deploy(rt, spec("spin.wat", handler))
            with pytest.raises(errors.ResourceExhausted) as ei:
                await call(rt, inst, limits=limits)
            assert "fuel exhausted" in ei.value.message
            assert ei.value.details["usage"]["fuel"] == 100_000
        await assert_healthy(rt)

    go(body)


def test_default_fuel_from_runtime(go):
    async def body(rt):
        inst = await deploy(rt, spec("spin.wat", "spin"))
        with pytest.raises(errors.ResourceExhausted):
            await call(rt, inst)
        # the function's own limits beat the runtime default
        inst = await deploy(rt, spec("spin.wat", "spin", limits=Limits(fuel=5_000)))
        with pytest.raises(errors.ResourceExhausted) as ei:
            await call(rt, inst)
        assert ei.value.details["fuel"] == 5_000

    go(body, default_fuel=50_000)


def test_timeout_stops_infinite_loop(go):
    async def body(rt):
        for handler in ("spin", ""):
            inst = await deploy(rt, spec("spin.wat", handler))
            with pytest.raises(errors.DeadlineExceeded) as ei:
                await call(rt, inst, limits=Limits(timeout=0.2))
            # never stopped before its limit (how soon after: bench/wasm_timeouts.py)
            assert ei.value.details["limit"] == "timeout" and ei.value.details["run"] >= 0.2
        # the interrupted export instance is not reused, the runtime still works
        await assert_healthy(rt)
        ok = await deploy(rt, spec("spin.wat", "ok"))
        assert (await call(rt, ok, limits=Limits(timeout=0.2))).output == b"1"

    go(body)


def test_default_timeout_from_runtime(go):
    async def body(rt):
        inst = await deploy(rt, spec("spin.wat", "spin"))
        with pytest.raises(errors.DeadlineExceeded) as ei:
            await call(rt, inst)
        assert ei.value.details["timeout"] == 0.1 and ei.value.details["run"] >= 0.1

    go(body, default_timeout=0.1)


def test_memory_bomb_stopped_by_memory_limit(go):
    async def body(rt):
        for handler in ("bomb", ""):
            inst = await deploy(rt, spec("membomb.wat", handler))
            with pytest.raises(errors.ResourceExhausted) as ei:
                await call(rt, inst, limits=Limits(memory_mb=8))
            assert "memory limit" in ei.value.message
            assert 7 * (1 << 20) <= ei.value.details["usage"]["peak_memory"] <= 8 * (1 << 20)
        # the store limit bounds linear memory
        inst = await deploy(rt, spec("membomb.wat", "pages"))
        assert (await call(rt, inst)).output == b"1"
        await assert_healthy(rt)

    go(body)


def test_memory_limit_below_module_minimum(go):
    async def body(rt):
        inst = await deploy(rt, spec("hello.wat"))  # needs 17 pages = 1.06 MiB
        with pytest.raises(errors.ResourceExhausted) as ei:
            await call(rt, inst, limits=Limits(memory_mb=1))
        assert ei.value.details["limit"] == "memory"
        # the function's own limit applies when the call gives none
        inst = await deploy(rt, spec("hello.wat", "_start", limits=Limits(memory_mb=1)))
        with pytest.raises(errors.ResourceExhausted):
            await call(rt, inst)
        # an export is instantiated by create_instance, so that is where it fails
        with pytest.raises(errors.ResourceExhausted):
            await deploy(rt, spec(b'(module (memory 32) (func (export "f")))', "f", limits=Limits(memory_mb=1)))
        await assert_healthy(rt)

    go(body)


def test_output_cap(go):
    async def body(rt):
        inst = await deploy(rt, spec("hello.wat"))
        with pytest.raises(errors.ResourceExhausted) as ei:
            await call(rt, inst, b"x" * 500_000)
        assert ei.value.details["limit"] == "output"
        assert (await call(rt, inst, b"ok")).output == b"hello, ok"

    go(body, max_output_bytes=100_000)


# ---------------------------------------------------------------- artifacts


def test_bad_artifacts_are_invalid_argument(go):
    async def body(rt):
        cases = [
            spec(b"\0asm\x01\0\0\0garbage"),
            spec(b"(module (func (export \"x\") (result i32)))", "x"),  # type error
            spec(b"(module (func"),  # bad text
            spec(b"\xff\xfe\x00binary junk"),
            spec(b"(module (func (export \"f\")))"),  # no _start
            spec("add.wat", "nope"),
            spec(b'(module (import "env" "f" (func)) (func (export "_start")))'),
            spec(b'(module (func (export "r") (result externref) (ref.null extern)))', "r"),
            spec("hello.wat", grants=["sockets"]),
            spec("hello.wat", grants=["dir:relative/path"]),
            spec("hello.wat", grants=["dir:/definitely/not/here"]),
        ]
        for s in cases:
            with pytest.raises(errors.InvalidArgument):
                await rt.prepare(s)
        with pytest.raises(errors.InvalidArgument) as ei:
            await rt.prepare(spec(b"\0asm\x01\0\0\0garbage"))
        assert "failed to parse" in ei.value.message
        with pytest.raises(errors.InvalidArgument):
            await rt.prepare(FunctionSpec(name="x", runtime="wasm"))
        await assert_healthy(rt)

    go(body, host_paths=HostPaths(["/definitely"]))  # an allowed root, but no such directory


def test_binary_artifact(go):
    import wasmtime

    async def body(rt):
        binary = bytes(wasmtime.wat2wasm(wat("add.wat").decode()))
        p = await rt.prepare(spec(binary, "add"))
        inst = await rt.create_instance(p)
        assert (await call(rt, inst, args=[1, 1])).output == b"2"

    go(body)


def test_module_cache_survives_restart(tmp_path):
    cache = tmp_path / "cache"

    async def first(rt):
        p = await rt.prepare(spec("add.wat", "add"))
        assert (rt.compiles, rt.disk_hits) == (1, 0)
        assert rt.cache_path(p.digest).is_file()
        # a redeploy in the same runtime does not even hit the disk
        await rt.prepare(spec("add.wat", "fib"))
        assert (rt.compiles, rt.memory_hits) == (1, 1)
        return p.digest

    async def second(rt):
        p = await rt.prepare(spec("add.wat", "add"))
        assert (rt.compiles, rt.disk_hits, rt.cache_hits) == (0, 1, 1)
        assert p.handle.mod.from_cache
        inst = await rt.create_instance(p)
        assert (await call(rt, inst, args=[20, 22])).output == b"42"
        return p.digest

    d1 = run(first, cache_dir=cache)
    d2 = run(second, cache_dir=cache)
    assert d1 == d2
    # a corrupt entry is replaced by a recompile, not an error
    entry = next(cache.glob("*.cwasm"))
    entry.write_bytes(b"not a module")

    async def third(rt):
        p = await rt.prepare(spec("add.wat", "add"))
        assert (rt.compiles, rt.disk_hits) == (1, 0)
        inst = await rt.create_instance(p)
        assert (await call(rt, inst, args=[1, 2])).output == b"3"

    run(third, cache_dir=cache)
    assert entry.stat().st_size > 100


def test_concurrent_prepare_compiles_once(go):
    async def body(rt):
        ps = await asyncio.gather(*(rt.prepare(spec("add.wat", "add")) for _ in range(5)))
        assert rt.compiles == 1 and len({p.digest for p in ps}) == 1

    go(body)


# ---------------------------------------------------------------- sandbox


def test_no_file_access_without_grant(go, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret.txt").write_bytes(b"top secret")

    async def body(rt):
        inst = await deploy(rt, spec("readfile.wat"))
        logs: list[bytes] = []
        with pytest.raises(errors.FunctionError) as ei:
            await call(rt, inst, logs=logs)
        assert ei.value.details["exit_code"] == 2
        assert b"open failed" in b"".join(logs) and "open failed" in ei.value.details["stderr"]
        # granted: the directory is visible, and only it
        inst = await deploy(rt, spec("readfile.wat", grants=[f"dir:{data}:/data"]))
        assert (await call(rt, inst)).output == b"top secret"
        inst = await deploy(rt, spec("readfile.wat", grants=[f"dir:{data}:/data:ro"]))
        assert (await call(rt, inst)).output == b"top secret"

    go(body, host_paths=HostPaths([str(data)]))


def test_env_only_with_grant(go):
    async def body(rt):
        inst = await deploy(rt, spec("env.wat", env={"GREETING": "hi"}))
        assert (await call(rt, inst)).output == b""
        inst = await deploy(rt, spec("env.wat", env={"GREETING": "hi", "A": "1"}, grants=["env"]))
        assert (await call(rt, inst)).output == b"A=1\0GREETING=hi\0"

    go(body)


def test_a_command_sees_the_calls_trace_context_granted_env_or_not(go):
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async def body(rt):
        inst = await deploy(rt, spec("env.wat", env={"GREETING": "hi"}))
        out = await rt.invoke(inst, b"", [], Limits(), traceparent=tp, tracestate="a=b")
        assert out.output == f"TRACEPARENT={tp}\0TRACESTATE=a=b\0".encode()
        inst = await deploy(rt, spec("env.wat", env={"A": "1"}, grants=["env"]))
        out = await rt.invoke(inst, b"", [], Limits(), traceparent=tp)
        assert out.output == f"A=1\0TRACEPARENT={tp}\0".encode()
        assert (await call(rt, inst)).output == b"A=1\0"  # no context: nothing added
        out = rt.invoke_now(inst, b"", [], Limits(), traceparent=tp)  # the inline path too
        assert out is None or out.output == f"A=1\0TRACEPARENT={tp}\0".encode()

    go(body)


def test_argv_only_with_grant(go):
    async def body(rt):
        inst = await deploy(rt, spec("args.wat", name="prog"))
        assert (await call(rt, inst, args=[1, "two"])).output == b"prog\0"
        inst = await deploy(rt, spec("args.wat", name="prog", grants=["args"]))
        assert (await call(rt, inst, args=[1, "two"])).output == b"prog\0" + b"1\0two\0"

    go(body)


# ---------------------------------------------------------------- lifecycle


def test_on_log_errors_do_not_break_the_call(go):
    async def body(rt):
        inst = await deploy(rt, spec("hello.wat"))

        def bad(chunk):
            raise RuntimeError("log sink down")

        out = await rt.invoke(inst, b"x", [], Limits(), bad)
        assert out.output == b"hello, x"

    go(body)


def test_close_stops_ticker_and_refuses_work(tmp_path):
    async def body():
        rt = WasmRuntime(tmp_path / "c")
        assert rt.available() == (True, "")
        inst = await deploy(rt, spec("add.wat", "add"))
        ticker = rt._engine.ticker
        assert ticker.is_alive()
        await rt.close()
        assert not ticker.is_alive()
        assert rt.available()[0] is False
        with pytest.raises(errors.Unavailable):
            await call(rt, inst, args=[1, 2])
        with pytest.raises(errors.Unavailable):
            await rt.prepare(spec("add.wat", "add"))
        await rt.close()  # idempotent

    before = threading.active_count()
    asyncio.run(body())
    assert threading.active_count() <= before + 1
