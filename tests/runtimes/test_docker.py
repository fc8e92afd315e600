"""The docker runtime against a real Docker Engine.

Needs the engine and the test images (``.ci/setup-docker.sh`` as root sets up
both). When the engine is unreachable these tests skip with the reason, except
under CI (env ``CI=true``) where they fail: CI must never pass silently
without Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import docker
import pytest

from spear import errors
from spear.protocol import FunctionSpec, Limits
from spear.runtimes.docker import MANAGED_LABEL, OWNER_LABEL, DockerRuntime

pytestmark = pytest.mark.docker

BUSYBOX = "spear-test/busybox:latest"
PYTHON = "spear-test/python:latest"
SETUP_HINT = "run .ci/setup-docker.sh as root (starts dockerd and builds the test images)"


def _engine_problem() -> str | None:
    ok, reason = DockerRuntime().available()
    if not ok:
        return reason
    api = docker.from_env(version="auto", timeout=10).api  # honours DOCKER_HOST
    try:
        for image in (BUSYBOX, PYTHON):
            try:
                api.inspect_image(image)
            except docker.errors.ImageNotFound:
                return f"test image {image} is missing"
    finally:
        api.close()
    return None


def _require_engine() -> None:
    problem = _engine_problem()
    if problem is None:
        return
    message = f"Docker Engine not usable: {problem}; {SETUP_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def rt():
    """One runtime for the whole module: it must keep serving after failures."""
    _require_engine()
    runtime = DockerRuntime(default_timeout=30, default_memory_mb=128)
    yield runtime
    asyncio.run(runtime.close())


@pytest.fixture(scope="module")
def api():
    _require_engine()
    client = docker.from_env(version="auto", timeout=30).api
    yield client
    client.close()


def spec(command, *, image=BUSYBOX, mode="oneshot", name="fn", **kw) -> FunctionSpec:
    return FunctionSpec(name=name, runtime="docker", image=image, command=command, mode=mode, **kw)


async def run_once(rt, fs, data=b"", args=(), limits=Limits(), on_log=None):
    """prepare + create_instance + invoke + destroy, as the Spearlet does."""
    inst = await rt.create_instance(await rt.prepare(fs))
    try:
        return await rt.invoke(inst, data, list(args), limits, on_log)
    finally:
        await rt.destroy(inst)


def still_serves(rt) -> None:
    out = asyncio.run(run_once(rt, spec(["tr", "a-z", "A-Z"]), b"ok"))
    assert out.output == b"OK"


def containers(api, **labels) -> list:
    filters = [f"{MANAGED_LABEL}=1"] + [f"{k}={v}" for k, v in labels.items()]
    return api.containers(all=True, filters={"label": filters})


# ------------------------------------------------------------------ one-shot


def test_oneshot_output_from_stdin(rt):
    out = asyncio.run(run_once(rt, spec(["tr", "a-z", "A-Z"]), b"hello spear\n"))
    assert out.output == b"HELLO SPEAR\n"
    assert out.exit_code == 0
    assert out.usage.cpu_time >= 0 and out.usage.peak_memory >= 0


def test_oneshot_stderr_goes_to_on_log(rt):
    logs: list[bytes] = []
    fs = spec(["sh", "-c", "echo out; echo err1 >&2; cat >&2"])
    out = asyncio.run(run_once(rt, fs, b"err2\n", on_log=logs.append))
    assert out.output == b"out\n"
    assert b"".join(logs) == b"err1\nerr2\n"


def test_oneshot_args_env_workdir(rt):
    fs = spec(["sh", "-c", 'echo "$GREETING $(pwd) $*"', "sh"], env={"GREETING": "hi"}, workdir="/tmp")
    out = asyncio.run(run_once(rt, fs, args=[1, 2.5]))
    assert out.output == b"hi /tmp 1 2.5\n"


def test_oneshot_large_input_and_output(rt):
    data = os.urandom(3 * 1024 * 1024)
    out = asyncio.run(run_once(rt, spec(["cat"]), data))
    assert out.output == data


def test_nonzero_exit_is_function_error(rt):
    fs = spec(["sh", "-c", "echo partial; echo broken pipe dream >&2; exit 3"])
    with pytest.raises(errors.FunctionError) as info:
        asyncio.run(run_once(rt, fs))
    assert "code 3" in info.value.message
    assert "broken pipe dream" in info.value.message
    assert info.value.details["stderr"] == "broken pipe dream\n"  # kept for the record
    assert info.value.details["exit_code"] == 3
    still_serves(rt)


def test_missing_executable_is_function_error(rt):
    with pytest.raises(errors.FunctionError, match="no-such-program"):
        asyncio.run(run_once(rt, spec(["no-such-program"])))
    still_serves(rt)


def test_missing_image_is_not_found(rt):
    with pytest.raises(errors.NotFound, match="never pulls"):
        asyncio.run(rt.prepare(spec(["true"], image="spear-test/absent:latest")))
    still_serves(rt)


def test_invalid_specs(rt):
    with pytest.raises(errors.InvalidArgument):
        asyncio.run(rt.prepare(spec(["true"], image="")))
    with pytest.raises(errors.InvalidArgument):
        asyncio.run(rt.prepare(spec([], mode="pooled")))
    with pytest.raises(errors.InvalidArgument):
        asyncio.run(rt.prepare(FunctionSpec(name="w", runtime="wasm", image=BUSYBOX)))


def test_concurrent_oneshots_do_not_block_the_loop(rt, api):
    async def main():
        ticks = 0
        most = 0
        stop = False

        async def ticker():
            nonlocal ticks
            while not stop:
                await asyncio.sleep(0.01)
                ticks += 1

        async def watcher():
            nonlocal most
            while not stop:
                found = await asyncio.to_thread(containers, api, **{"spear.function": "together"})
                most = max(most, sum(c["State"] == "running" for c in found))

        tasks = [asyncio.create_task(ticker()), asyncio.create_task(watcher())]
        fs = spec(["sh", "-c", "sleep 2; tr a-z A-Z"], name="together")
        outs = await asyncio.gather(*(run_once(rt, fs, f"n{i}".encode()) for i in range(4)))
        stop = True
        await asyncio.gather(*tasks)
        return outs, ticks, most

    outs, ticks, most = asyncio.run(main())
    assert [o.output for o in outs] == [b"N0", b"N1", b"N2", b"N3"]
    # the loop kept ticking while containers ran (a blocked loop would not)
    assert ticks >= 10, ticks
    assert most == 4  # the four ran at the same time, not one after another


# ------------------------------------------------------------------ pooled


def test_pooled_reuses_one_container(rt, api):
    # each exec appends to a file in the container: a count of n proves reuse
    fs = spec(
        ["sh", "-c", "echo x >> /tmp/calls; hostname; wc -l < /tmp/calls; tr a-z A-Z"],
        mode="pooled",
        name="pooled-fn",
    )
    oneshot = spec(["tr", "a-z", "A-Z"], name="oneshot-fn")

    async def main():
        prepared = await rt.prepare(fs)
        inst = await rt.create_instance(prepared)
        try:
            running = containers(api, **{OWNER_LABEL: rt.owner, "spear.function": "pooled-fn"})
            assert len(running) == 1
            hosts = set()
            for i in range(1, 7):
                out = await rt.invoke(inst, b"abc", [], Limits())
                host, count, text = out.output.split(b"\n")
                hosts.add(host)
                assert int(count) == i
                assert text == b"ABC"
                assert inst.reusable
            assert len(hosts) == 1 and running[0]["Id"].startswith(hosts.pop().decode())
            # a one-shot of the same image meanwhile gets a container of its own
            assert (await run_once(rt, oneshot, b"abc")).output == b"ABC"
            assert len(containers(api, **{"spear.function": "pooled-fn"})) == 1
        finally:
            await rt.destroy(inst)

    asyncio.run(main())
    assert containers(api, **{"spear.function": "pooled-fn"}) == []


def test_pooled_failure_marks_instance_not_reusable(rt):
    fs = spec(["sh", "-c", 'test "$(cat)" != fail'], mode="pooled")

    async def main():
        inst = await rt.create_instance(await rt.prepare(fs))
        try:
            assert (await rt.invoke(inst, b"fine", [], Limits())).output == b""
            with pytest.raises(errors.FunctionError, match="code 1"):
                await rt.invoke(inst, b"fail", [], Limits())
            assert not inst.reusable
        finally:
            await rt.destroy(inst)
            await rt.destroy(inst)  # twice: must not raise

    asyncio.run(main())
    still_serves(rt)


# ------------------------------------------------------------------ limits


OOM_BOMB = ["python3", "-c", "b = []\nwhile True: b.append(bytearray(8 << 20))"]


def test_memory_over_limit_oneshot_is_oom(rt):
    fs = spec(OOM_BOMB, image=PYTHON, limits=Limits(memory_mb=48))
    with pytest.raises(errors.ResourceExhausted, match="OOM killed: memory limit 48 MiB"):
        asyncio.run(run_once(rt, fs))
    still_serves(rt)


def test_memory_over_limit_pooled_is_oom(rt):
    fs = spec(OOM_BOMB, image=PYTHON, mode="pooled", limits=Limits(memory_mb=48))

    async def main():
        inst = await rt.create_instance(await rt.prepare(fs))
        try:
            with pytest.raises(errors.ResourceExhausted, match="OOM killed"):
                await rt.invoke(inst, b"", [], Limits())
            assert not inst.reusable
        finally:
            await rt.destroy(inst)

    asyncio.run(main())
    still_serves(rt)


def test_memory_limit_via_busybox_dd(rt):
    # dd with a 200 MiB block needs a 200 MiB buffer: over a 32 MiB limit
    fs = spec(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"], limits=Limits(memory_mb=32))
    with pytest.raises(errors.ResourceExhausted, match="OOM"):
        asyncio.run(run_once(rt, fs))


def test_network_off_by_default(rt):
    out = asyncio.run(run_once(rt, spec(["ls", "/sys/class/net"])))
    assert out.output.split() == [b"lo"]
    probe = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=3)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    out = asyncio.run(run_once(rt, spec(["python3", "-c", probe], image=PYTHON)))
    assert out.output.startswith(b"refused"), out.output


def test_network_on_when_asked(rt):
    out = asyncio.run(run_once(rt, spec(["ls", "/sys/class/net"], limits=Limits(network=True))))
    assert b"lo" in out.output.split() and len(out.output.split()) >= 2


def test_pids_limit(rt):
    forker = (
        "import os, sys, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(10)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e.errno)\n"
        "    sys.exit(0)\n"
        "print(n)\n"
    )
    out = asyncio.run(run_once(rt, spec(["python3", "-c", forker], image=PYTHON, limits=Limits(pids=8))))
    forked, *rest = out.output.split()
    assert int(forked) < 8, out.output
    assert rest == [b"11"]  # EAGAIN
    still_serves(rt)


def test_read_only_rootfs_when_asked(rt):
    probe = ["sh", "-c", "if touch /probe 2>/dev/null; then echo writable; else echo readonly; fi"]
    out = asyncio.run(run_once(rt, spec(probe, limits=Limits(read_only=True))))
    assert out.output == b"readonly\n"
    out = asyncio.run(run_once(rt, spec(probe)))
    assert out.output == b"writable\n"


def test_host_config_of_a_pooled_container(rt, api):
    limits = Limits(memory_mb=64, cpus=0.5, pids=32, read_only=True)
    fs = spec(["true"], mode="pooled", name="config-fn", limits=limits)

    async def main():
        inst = await rt.create_instance(await rt.prepare(fs))
        try:
            (c,) = containers(api, **{"spear.function": "config-fn"})
            assert c["Names"][0].startswith("/spear-config-fn-")
            assert c["Labels"][OWNER_LABEL] == rt.owner and c["Labels"]["spear.mode"] == "pooled"
            hc = api.inspect_container(c["Id"])["HostConfig"]
            assert hc["Memory"] == hc["MemorySwap"] == 64 << 20
            assert hc["NanoCpus"] == 500_000_000
            assert hc["PidsLimit"] == 32
            assert hc["NetworkMode"] == "none"
            assert hc["ReadonlyRootfs"] is True
            assert "no-new-privileges" in hc["SecurityOpt"]
            assert (await rt.invoke(inst, b"", [], Limits())).exit_code == 0
        finally:
            await rt.destroy(inst)

    asyncio.run(main())


def test_cpu_seconds_limit(rt):
    fs = spec(["python3", "-c", "while True: pass"], image=PYTHON, limits=Limits(cpu_seconds=1, timeout=20))
    with pytest.raises(errors.ResourceExhausted, match="CPU time"):
        asyncio.run(run_once(rt, fs))


def test_usage_is_measured(rt):
    work = "s = 0\nfor i in range(2_000_000): s += i\nx = bytearray(40 << 20)\nprint(s)"
    out = asyncio.run(run_once(rt, spec(["python3", "-c", work], image=PYTHON)))
    assert out.output.strip() == str(sum(range(2_000_000))).encode()
    if not rt.measures_usage:
        pytest.skip("usage needs a local engine with the cgroupfs driver (reported as 0)")
    assert out.usage.cpu_time > 0.05
    assert out.usage.peak_memory > 40 << 20


# ------------------------------------------------------------------ timeouts


def test_timeout_oneshot_kills_and_cleans_up(rt, api):
    fs = spec(["sleep", "60"], name="slow-oneshot", limits=Limits(timeout=1))
    with pytest.raises(errors.DeadlineExceeded, match="timeout of 1 s"):
        asyncio.run(run_once(rt, fs))
    assert containers(api, **{"spear.function": "slow-oneshot"}) == []
    still_serves(rt)


def test_timeout_pooled_kills_and_marks_not_reusable(rt, api):
    fs = spec(["sleep", "60"], name="slow-pooled", mode="pooled")

    async def main():
        inst = await rt.create_instance(await rt.prepare(fs))
        try:
            with pytest.raises(errors.DeadlineExceeded):
                await rt.invoke(inst, b"", [], Limits(timeout=1))
            assert not inst.reusable
        finally:
            await rt.destroy(inst)

    asyncio.run(main())
    assert containers(api, **{"spear.function": "slow-pooled"}) == []
    still_serves(rt)


def test_cancelled_invocation_removes_its_container(rt, api):
    fs = spec(["sleep", "60"], name="cancelled-fn")

    async def main():
        task = asyncio.create_task(run_once(rt, fs))
        for _ in range(100):  # wait until its container exists
            await asyncio.sleep(0.05)
            if containers(api, **{"spear.function": "cancelled-fn"}):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # removal of a container cancelled while it was being created finishes in the
    # background: it must happen (bounded wait), not necessarily before the cancel returns
    for _ in range(200):
        if containers(api, **{"spear.function": "cancelled-fn"}) == []:
            break
        time.sleep(0.05)
    assert containers(api, **{"spear.function": "cancelled-fn"}) == []
    still_serves(rt)


def test_cancellation_at_any_moment_leaves_nothing(rt, api):
    oneshot = spec(["sleep", "60"], name="cancel-race")
    pooled = spec(["sleep", "60"], name="cancel-race", mode="pooled")

    async def main():
        for fs in (oneshot, pooled):
            prepared = await rt.prepare(fs)

            async def one():
                inst = await rt.create_instance(prepared)
                try:
                    await rt.invoke(inst, b"", [], Limits())
                finally:
                    await rt.destroy(inst)

            for delay in (0, 0.002, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4):
                task = asyncio.create_task(one())
                await asyncio.sleep(delay)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await rt.settle()

    asyncio.run(main())
    assert containers(api, **{"spear.function": "cancel-race"}) == []
    still_serves(rt)


# ------------------------------------------------------------------ engine


def test_unavailable_engine_is_reported():
    dead = DockerRuntime(base_url="unix:///nonexistent.sock")
    ok, reason = dead.available()
    assert ok is False
    assert "cannot reach Docker Engine at unix:///nonexistent.sock" in reason
    with pytest.raises(errors.Unavailable):
        asyncio.run(dead.prepare(spec(["true"])))
    asyncio.run(dead.close())


def test_close_removes_own_containers(api):
    _require_engine()
    other = DockerRuntime()

    async def main():
        inst = await other.create_instance(await other.prepare(spec(["cat"], mode="pooled")))
        assert len(containers(api, **{OWNER_LABEL: other.owner})) == 1
        assert inst.reusable
        await other.close()  # without destroy: close cleans up

    asyncio.run(main())
    assert containers(api, **{OWNER_LABEL: other.owner}) == []


def test_no_leftover_containers(rt, api):
    # runs last in this module: every test above cleaned up after itself
    # (successful one-shot containers are removed in the background: settle)
    asyncio.run(rt.settle())
    left = containers(api, **{OWNER_LABEL: rt.owner})
    assert left == [], [(c["Names"], c["Labels"], c["Status"]) for c in left]


@pytest.mark.parametrize("mode", ["oneshot", "pooled"])
def test_the_container_sees_the_calls_trace_context(rt, mode):
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    fs = spec(["sh", "-c", 'printf "%s|%s" "$TRACEPARENT" "$TRACESTATE"'], mode=mode,
              env={"KEEP": "1"})

    async def twice():
        inst = await rt.create_instance(await rt.prepare(fs))
        try:
            first = await rt.invoke(inst, b"", [], Limits(), traceparent=tp, tracestate="a=b")
            second = await rt.invoke(inst, b"", [], Limits(), traceparent=tp[:-2] + "00")
            return first.output, second.output
        finally:
            await rt.destroy(inst)

    first, second = asyncio.run(twice())
    assert first == f"{tp}|a=b".encode()
    assert second == f"{tp[:-2]}00|".encode()  # each call its own context
