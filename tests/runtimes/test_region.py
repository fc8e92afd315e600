"""Big payloads through a pooled worker's shared region, and workers that abuse it.

Workers run sandboxed (as ``nobody`` when the tests run as root), as on a
node. Every abuse fails its call cleanly and stops only that worker (its
instance is not reused); the runtime goes on serving new instances.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from spear import errors
from spear.protocol import FunctionSpec, Limits
from spear.runtimes.hostpaths import HostPaths
from spear.runtimes.process import ProcessRuntime
from spear.runtimes.process.region import REGION_KEEP, REGION_MIN, REGION_SIZE, Region
from spear.runtimes.process.workers import STATUS_REGION, Worker

from .test_process import descendants, gone

HELPERS = Path(__file__).resolve().parent / "helpers"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TMP = HostPaths([tempfile.gettempdir(), str(EXAMPLES)])
MIB = 1 << 20
SIZES = [0, 1, REGION_MIN - 1, REGION_MIN, MIB, 16 * MIB]


@pytest.fixture(autouse=True)
def no_leftovers():
    before = {p.pid for p in descendants()}
    yield
    mine = [p for p in descendants() if p.pid not in before]
    assert gone([p.pid for p in mine]), mine


@pytest.fixture
def shared():
    """A world-readable directory holding the rogue worker (the sandbox user runs it)."""
    d = tempfile.mkdtemp(prefix="spear-region-test-")
    os.chmod(d, 0o755)
    shutil.copy(HELPERS / "region_worker.py", d)
    os.chmod(os.path.join(d, "region_worker.py"), 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(coro, timeout: float = 90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def rogue(shared: str, *argv: str, **kw) -> FunctionSpec:
    return FunctionSpec(name="region-worker", runtime="process", mode="pooled", workdir=shared,
                        command=[os.path.join(shared, "region_worker.py"), *argv], **kw)


async def start(rt: ProcessRuntime, s: FunctionSpec):
    return await rt.create_instance(await rt.prepare(s))


def test_python_handler_echoes_every_size_byte_exact():
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        inst = await start(rt, FunctionSpec(name="echo", runtime="process", handler="handlers:echo",
                                            workdir=str(EXAMPLES)))
        worker = inst.handle
        assert isinstance(worker, Worker) and worker._top == STATUS_REGION  # it took its region
        for size in SIZES:
            blob = os.urandom(size)
            out = await rt.invoke(inst, blob, [], Limits(timeout=60))
            assert out.output == blob, size
        # the 16 MiB call's pages past the kept window went back; the next calls still work
        assert REGION_KEEP < 16 * MIB
        for size in (16 * MIB + 1, MIB):
            blob = os.urandom(size)
            assert (await rt.invoke(inst, blob, [], Limits(timeout=60))).output == blob
            held = os.fstat(worker.region.fd).st_blocks * 512  # the region's pages in memory
            assert MIB <= held <= REGION_KEEP, (size, held)
        assert inst.handle.pid == worker.pid  # one worker served them all
        await rt.close()

    run(main())


def test_a_big_output_over_the_limit_fails_cleanly():
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        spec = FunctionSpec(name="echo", runtime="process", handler="handlers:echo",
                            workdir=str(EXAMPLES), limits=Limits(max_output_mb=1))
        inst = await start(rt, spec)
        with pytest.raises(errors.ResourceExhausted, match="1 MiB"):
            await rt.invoke(inst, b"x" * (MIB + 1), [], Limits(max_output_mb=1))
        assert not inst.reusable and not inst.handle.alive
        inst = await start(rt, spec)
        assert (await rt.invoke(inst, b"y" * MIB, [], Limits(max_output_mb=1))).output == b"y" * MIB
        await rt.close()

    run(main())


def test_lengths_a_worker_makes_up_fail_cleanly(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        inst = await start(rt, rogue(shared))
        assert (await rt.invoke(inst, b"echo 100000", [], Limits())).output == b"z" * 100000
        abuses = [
            (f"len {2**64 - 1}", Limits(), errors.ResourceExhausted, "output larger than the limit"),
            (f"len {MIB + 1}", Limits(max_output_mb=1), errors.ResourceExhausted, "limit of 1 MiB"),
            ("short", Limits(), errors.FunctionError, "region reply of 3 bytes"),
        ]
        for cmd, limits, kind, message in abuses:
            with pytest.raises(kind, match=message):
                await rt.invoke(inst, cmd.encode(), [], limits)
            assert not inst.handle.alive and inst.handle.region is None  # stopped, region closed
            inst = await start(rt, rogue(shared))  # the runtime serves on
            assert (await rt.invoke(inst, b"echo 65536", [], Limits())).output == b"z" * 65536
        await rt.close()

    run(main())


def test_a_worker_cannot_resize_its_region_or_write_past_it(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        inst = await start(rt, rogue(shared))
        for cmd in (b"grow", b"shrink", b"past"):
            assert (await rt.invoke(inst, cmd, [], Limits())).output == b"EPERM", cmd
        blob = os.urandom(2 * MIB)  # the region still works, at its full size
        assert (await rt.invoke(inst, blob, [], Limits())).output == blob
        await rt.close()

    run(main())


def test_each_worker_gets_its_own_region(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        a = await start(rt, rogue(shared))
        b = await start(rt, rogue(shared))
        assert a.handle.region.fd != b.handle.region.fd
        one, two = os.urandom(MIB), os.urandom(MIB)
        outs = await asyncio.gather(rt.invoke(a, one, [], Limits()), rt.invoke(b, two, [], Limits()))
        assert [o.output for o in outs] == [one, two]
        await rt.close()

    run(main())


def test_a_worker_that_did_not_take_the_region_may_not_reply_through_it(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        inst = await start(rt, rogue(shared, "noregion"))
        assert inst.handle.region is None  # never announced: closed on our side
        big = b"ok " + b"." * MIB  # a big input takes the pipe
        assert (await rt.invoke(inst, big, [], Limits())).output == b"ok"
        with pytest.raises(errors.FunctionError, match="reply status 3"):
            await rt.invoke(inst, b"unasked 5", [], Limits())
        assert not inst.handle.alive
        await rt.close()

    run(main())


def test_region_is_sealed_at_its_size():
    region = Region.create(1 << 20)
    assert region is not None and region.size == 1 << 20
    try:
        with pytest.raises(OSError):
            os.ftruncate(region.fd, 4096)
        with pytest.raises(OSError):
            os.pwrite(region.fd, b"x", 1 << 20)
        assert region.write(b"abc") == 3 and region.read(3) == b"abc"
    finally:
        region.close()
    assert REGION_SIZE >= 64 * MIB
