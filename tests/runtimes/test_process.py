"""The process runtime, with real processes: one-shot, pooled, Python handlers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from spear import errors
from spear.protocol import FunctionSpec, Limits
from spear.runtimes.base import STDERR_TAIL, TRACEBACK_TAIL
from spear.runtimes.hostpaths import HostPaths
from spear.runtimes.process import ProcessRuntime
from tests.helpers import EXAMPLES, gone

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent / "helpers"
PY = sys.executable
#: Tests that run sys.executable as a command or hand tmp_path to functions run
#: them as the test's own user: both usually live where the sandbox user
#: (nobody, when tests run as root) cannot go. test_sandbox.py covers the sandbox.
AS_SELF = None
#: a workdir is a host path: these tests let functions into the examples, read-only
EXAMPLES_ROOT = HostPaths([str(EXAMPLES)])


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def spec(name: str = "f", **kw) -> FunctionSpec:
    return FunctionSpec(name=name, runtime="process", **kw)


def handler_spec(handler: str, **kw) -> FunctionSpec:
    env = {"PYTHONPATH": f"{EXAMPLES}:{HELPERS}", **kw.pop("env", {})}
    return spec(handler.replace(":", "-"), handler=handler, env=env, **kw)


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


async def start(rt: ProcessRuntime, s: FunctionSpec):
    return await rt.create_instance(await rt.prepare(s))


_BEFORE: set[int] = set()


def new_descendants() -> list[psutil.Process]:
    """Descendants started since this test began (other modules' daemons excluded)."""
    return [p for p in descendants() if p.pid not in _BEFORE]


@pytest.fixture(autouse=True)
def no_leftovers():
    # daemons of other modules' long-lived fixtures are not this test's business
    _BEFORE.clear()
    _BEFORE.update(p.pid for p in descendants())
    yield
    mine = new_descendants()
    assert gone([p.pid for p in mine]), mine


# ------------------------------------------------------------------ one-shot


def test_oneshot_echo_shout_and_args():
    async def main():
        rt = ProcessRuntime()
        cat = await start(rt, spec(command=["cat"]))
        out = await rt.invoke(cat, b"hello\x00world" * 1000, [], Limits())
        assert out.output == b"hello\x00world" * 1000 and out.exit_code == 0
        assert out.usage.peak_memory > 0
        shout = await start(rt, spec(command=[str(EXAMPLES / "shout.sh")]))
        logs: list[bytes] = []
        out = await rt.invoke(shout, b"quiet please", [], Limits(), logs.append)
        assert out.output == b"QUIET PLEASE"
        assert logs == [b"shout: shouting\n"]
        echo = await start(rt, spec(command=["echo", "-n"]))
        assert (await rt.invoke(echo, b"", ["a", 1, 2.5], Limits())).output == b"a 1 2.5"
        big = os.urandom(3 << 20)  # larger than any pipe buffer, both ways
        assert (await rt.invoke(cat, big, [], Limits())).output == big
        for inst in (cat, shout, echo):
            await rt.destroy(inst)
        await rt.close()

    run(main())


def test_oneshot_stderr_is_streamed_before_the_result():
    async def main():
        rt = ProcessRuntime()
        # the command goes on only once the log sink has seen its first line:
        # a runtime that held stderr back until the exit would time out here
        cmd = ["sh", "-c", "echo first >&2; until [ -e go ]; do sleep 0.01; done; echo second >&2; cat"]
        inst = await start(rt, spec(command=cmd))
        seen: list[bytes] = []

        def sink(chunk: bytes) -> None:
            seen.append(chunk)
            if b"first" in chunk:
                Path(inst.handle.cwd, "go").touch()

        out = await rt.invoke(inst, b"out", [], Limits(timeout=20), sink)
        assert out.output == b"out"
        assert b"".join(seen) == b"first\nsecond\n"
        await rt.close()

    run(main())


def test_oneshot_failure_is_typed_and_runtime_keeps_working():
    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, spec(command=["sh", "-c", "echo oops >&2; exit 3"]))
        with pytest.raises(errors.FunctionError) as info:
            await rt.invoke(inst, b"", [], Limits())
        assert info.value.details["exit_code"] == 3
        assert "oops" in info.value.details["stderr"]
        killer = await start(rt, spec(command=["sh", "-c", "kill -SEGV $$"]))
        with pytest.raises(errors.FunctionError, match="SIGSEGV"):
            await rt.invoke(killer, b"", [], Limits())
        cat = await start(rt, spec(command=["cat"]))
        assert (await rt.invoke(cat, b"still fine", [], Limits())).output == b"still fine"
        await rt.close()

    run(main())


def test_oneshot_usage_counts_cpu_and_memory():
    async def main():
        rt = ProcessRuntime(user=AS_SELF)
        code = (
            "import time\nb = bytearray(60 << 20)\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
        )
        inst = await start(rt, spec(command=[PY, "-c", code]))
        out = await rt.invoke(inst, b"", [], Limits())
        assert out.usage.cpu_time >= 0.19
        assert out.usage.peak_memory >= 60 << 20
        await rt.close()

    run(main())


# ---------------------------------------------------------- python handlers


def test_short_calls_report_memory_the_worker_keeps():
    """Short calls report the worker's RSS (read every few calls), long ones
    their peak: memory a call keeps shows in every later call's usage."""
    async def main():
        rt = ProcessRuntime(host_paths=EXAMPLES_ROOT)
        inst = await start(rt, handler_spec("testhandlers:hold"))
        small = [(await rt.invoke(inst, b"", [], Limits())).usage.peak_memory for _ in range(20)]
        assert all(0 < m < 60 << 20 for m in small)
        big = await rt.invoke(inst, b"80", [], Limits())
        assert big.output == str(80 << 20).encode() and big.usage.peak_memory >= 80 << 20
        for _ in range(20):
            assert (await rt.invoke(inst, b"", [], Limits())).usage.peak_memory >= 80 << 20
        await rt.close()

    run(main())


def test_handler_results_and_reuse():
    async def main():
        rt = ProcessRuntime(host_paths=EXAMPLES_ROOT)
        upper = await start(rt, spec("up", handler="handlers:upper", workdir=str(EXAMPLES)))
        assert (await rt.invoke(upper, b"abc", [], Limits())).output == b"ABC"
        fib = await start(rt, handler_spec("handlers:fib"))
        out = await rt.invoke(fib, b"20", [], Limits())
        assert out.output == b'{"n":20,"fib":6765}' and out.exit_code is None
        assert out.usage.cpu_time > 0 and out.usage.peak_memory > 0
        noop = await start(rt, handler_spec("handlers:noop"))
        assert (await rt.invoke(noop, b"x", [], Limits())).output == b""
        args = await start(rt, handler_spec("testhandlers:args"))
        assert (await rt.invoke(args, b"d", [1, "two"], Limits())).output == b'["d",1,"two"]'
        await rt.close()

    run(main())


RAISING_LINE = 'raise ValueError("bad input: " + data.decode())'


def test_oneshot_failure_keeps_only_the_tail_of_a_huge_stderr():
    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, spec(command=[
            "sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x >&2; echo END >&2; exit 1"]))
        with pytest.raises(errors.FunctionError) as info:
            await rt.invoke(inst, b"", [], Limits(timeout=20))
        tail = info.value.details["stderr"]
        assert tail.endswith("xxEND\n") and len(tail) == STDERR_TAIL
        await rt.close()

    run(main())


def test_the_python_worker_sends_the_end_of_the_traceback_after_a_nul():
    from spear.runtimes.process import pyworker

    def ping(n, message):
        if n == 0:
            raise ValueError(message)
        pong(n - 1, message)

    def pong(n, message):
        ping(n - 1, message)

    for message in ("nul \0 inside", "nul \0 inside" + "x" * 20_000):
        try:
            ping(400, message)  # a traceback far longer than what is sent
        except ValueError as exc:
            payload = pyworker._failed(exc)
        head, _, tb = payload.partition(b"\0")
        assert head.startswith(b"ValueError: nul \\0 inside")  # a NUL in it cannot end it early
        assert len(tb) <= pyworker.TRACEBACK_TAIL == TRACEBACK_TAIL
        assert b"raise ValueError(message)" in tb  # the raising line: the end is kept
        assert b"ValueError: nul \x00 inside" in tb


def test_handler_exception_is_typed_and_worker_is_reused():
    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, handler_spec("testhandlers:pid"))
        pid = (await rt.invoke(inst, b"", [], Limits())).output
        boom = await start(rt, handler_spec("testhandlers:boom"))
        boom_pid = boom.handle.pid
        logs: list[bytes] = []
        for _ in range(2):
            with pytest.raises(errors.FunctionError) as info:
                await rt.invoke(boom, b"xyz", [], Limits(), logs.append)
            assert info.value.details["type"] == "ValueError"
            assert info.value.message == "ValueError: bad input: xyz"
            assert boom.reusable and boom.handle.pid == boom_pid
            tb = info.value.details["traceback"]  # sent with the error reply, raising line included
            assert tb.startswith("Traceback") and RAISING_LINE in tb
            # the call's own stderr: this call's traceback once, not its predecessor's too
            assert info.value.details["stderr"].count("Traceback") == 1
        assert b"Traceback" in b"".join(logs)  # the traceback is in the call's logs
        weird = await start(rt, handler_spec("testhandlers:weird"))
        with pytest.raises(errors.FunctionError, match="JSON"):
            await rt.invoke(weird, b"", [], Limits())
        assert weird.reusable
        for _ in range(3):
            assert (await rt.invoke(inst, b"", [], Limits())).output == pid
        assert inst.invocations == 4
        await rt.close()

    run(main())


def test_handler_logs_go_to_on_log_and_never_corrupt_the_protocol():
    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, handler_spec("testhandlers:talk"))
        for _ in range(3):
            logs: list[bytes] = []
            out = await rt.invoke(inst, b"", [], Limits(), logs.append)
            assert out.output == b"done"
            assert b"".join(logs) == b"to stdout, which is the log stream\nto stderr\n"
        child = await start(rt, handler_spec("testhandlers:talk_child"))
        for _ in range(2):  # a frame on a subprocess's stdout is a log line, nothing else
            logs = []
            assert (await rt.invoke(child, b"", [], Limits(), logs.append)).output == b"done"
            assert b"".join(logs) == b"from a child\n\0\0\0\6\0FAKE!"
        await rt.close()

    run(main())


def test_handler_that_cannot_load_fails_at_create():
    async def main():
        rt = ProcessRuntime()
        with pytest.raises(errors.FunctionError, match="No module named 'nosuchmodule'"):
            await start(rt, handler_spec("nosuchmodule:f"))
        with pytest.raises(errors.FunctionError, match="AttributeError"):
            await start(rt, handler_spec("handlers:nosuchfunction"))
        await rt.close()

    run(main())


def test_worker_crash_is_typed_and_not_reused():
    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, handler_spec("testhandlers:crash"))
        with pytest.raises(errors.FunctionError, match="exit code 7"):
            await rt.invoke(inst, b"", [], Limits())
        assert not inst.reusable
        with pytest.raises(errors.Unavailable):
            await rt.invoke(inst, b"", [], Limits())
        await rt.destroy(inst)
        await rt.close()

    run(main())


# --------------------------------------------------- a worker in another language


def test_pooled_bash_worker():
    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, spec(command=[str(HELPERS / "upper_worker.sh")], mode="pooled"))
        logs: list[bytes] = []
        out = await rt.invoke(inst, b"hello bash", ["ignored"], Limits(), logs.append)
        assert out.output == b"HELLO BASH" and logs == [b"upper_worker: 10 bytes\n"]
        pid = (await rt.invoke(inst, b"pid", [], Limits())).output
        assert int(pid) == inst.handle.pid
        with pytest.raises(errors.FunctionError) as info:
            await rt.invoke(inst, b"fail", [], Limits())
        assert info.value.details["type"] == "ShoutError" and inst.reusable
        assert (await rt.invoke(inst, b"pid", [], Limits())).output == pid
        with pytest.raises(errors.FunctionError, match="exit code 3"):
            await rt.invoke(inst, b"exit", [], Limits())
        assert not inst.reusable
        await rt.destroy(inst)
        await rt.close()

    run(main())


# ------------------------------------------------------------------- limits


def _pids(path: Path, count: int) -> list[int]:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if path.exists():
            pids = [int(x) for x in path.read_text().split()]
            if len(pids) >= count:
                return pids
        time.sleep(0.02)
    raise AssertionError(f"expected {count} pids in {path}")


def test_oneshot_timeout_kills_the_whole_group(tmp_path, caplog):
    async def main():
        rt = ProcessRuntime(user=AS_SELF)
        pidfile = tmp_path / "pids"
        inst = await start(rt, spec(command=[PY, str(HELPERS / "tree.py"), str(pidfile)]))
        logs: list[bytes] = []
        with caplog.at_level(logging.WARNING, logger="spear.runtimes.process"):
            with pytest.raises(errors.DeadlineExceeded):
                await rt.invoke(inst, b"", [], Limits(timeout=1.0), logs.append)
        # the whole group died with the leader: no descendant kept a pipe open
        assert not [r for r in caplog.records if "still open" in r.getMessage()]
        assert logs == [b"tree: started\n"]
        pids = _pids(pidfile, 2)
        assert gone(pids), pids
        cat = await start(rt, spec(command=["cat"]))
        assert (await rt.invoke(cat, b"ok", [], Limits())).output == b"ok"
        await rt.close()

    run(main())


def test_pooled_timeout_kills_the_worker_and_its_tree(tmp_path):
    async def main():
        rt = ProcessRuntime(user=AS_SELF)
        pidfile = tmp_path / "pids"
        inst = await start(rt, handler_spec("testhandlers:tree"))
        worker = inst.handle.pid
        with pytest.raises(errors.DeadlineExceeded):
            await rt.invoke(inst, str(pidfile).encode(), [], Limits(timeout=1.0))
        assert not inst.reusable
        pids = _pids(pidfile, 3)
        assert worker in pids and gone(pids), pids
        await rt.destroy(inst)
        again = await start(rt, handler_spec("testhandlers:pid"))
        assert int((await rt.invoke(again, b"", [], Limits())).output) != worker
        await rt.close()

    run(main())


def test_memory_bomb_is_resource_exhausted():
    async def main():
        rt = ProcessRuntime(user=AS_SELF)
        inst = await start(rt, handler_spec("testhandlers:bomb", limits=Limits(memory_mb=256)))
        with pytest.raises(errors.ResourceExhausted, match="memory limit"):
            await rt.invoke(inst, b"", [], Limits(memory_mb=256))
        assert not inst.reusable
        await rt.destroy(inst)
        code = "x = []\nwhile True: x.append(bytearray(16 << 20))"
        native = await start(rt, spec(command=[PY, "-c", code]))
        with pytest.raises(errors.ResourceExhausted, match="memory limit"):
            await rt.invoke(native, b"", [], Limits(memory_mb=200))
        ok = await start(rt, handler_spec("handlers:echo"))
        assert (await rt.invoke(ok, b"fine", [], Limits(memory_mb=256))).output == b"fine"
        await rt.close()

    run(main())


def test_cpu_limit_is_resource_exhausted():
    async def main():
        rt = ProcessRuntime(user=AS_SELF)
        spin = [PY, "-c", "while True: pass"]
        inst = await start(rt, spec(command=spin))
        with pytest.raises(errors.ResourceExhausted, match="cpu limit"):
            await rt.invoke(inst, b"", [], Limits(cpu_seconds=0.5, timeout=10))
        pooled = await start(rt, handler_spec("testhandlers:spin"))
        assert (await rt.invoke(pooled, b"0.1", [], Limits(cpu_seconds=1))).output == b"spun"
        with pytest.raises(errors.ResourceExhausted, match="cpu limit"):
            await rt.invoke(pooled, b"30", [], Limits(cpu_seconds=1, timeout=10))
        await rt.close()

    run(main())


def test_cancel_kills_the_process_group():
    async def main():
        rt = ProcessRuntime()
        for inst in (
            await start(rt, handler_spec("testhandlers:sleep")),
            await start(rt, spec(command=["sh", "-c", "sleep 30 & sleep 30"])),
        ):
            task = asyncio.create_task(rt.invoke(inst, b"30", [], Limits()))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert gone([p.pid for p in new_descendants()])
        await rt.close()

    run(main())


# -------------------------------------------------------- environment, cwd


def test_environment_is_scrubbed_and_spec_env_visible(monkeypatch):
    monkeypatch.setenv("SPEAR_TEST_SECRET", "hunter2")

    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, handler_spec("testhandlers:env", env={"GREETING": "hi"}))
        env = (await rt.invoke(inst, b"", [], Limits())).output.decode()
        assert "hunter2" not in env and "SPEAR_TEST_SECRET" not in env
        assert '"GREETING":"hi"' in env and '"PATH":' in env
        one = await start(rt, spec(command=["env"], env={"GREETING": "hi"}))
        lines = (await rt.invoke(one, b"", [], Limits())).output.decode().splitlines()
        assert "GREETING=hi" in lines and not any("hunter2" in x for x in lines)
        custom = ProcessRuntime(base_env={"PATH": "/usr/bin:/bin", "ONLY": "this"})
        inst = await start(custom, spec(command=["env"]))
        out = (await custom.invoke(inst, b"", [], Limits())).output.decode()
        names = {line.split("=")[0] for line in out.splitlines()}
        # SPEAR_SWEEP: the mark that finds escaped descendants where there are no cgroups
        assert names - {"SPEAR_SWEEP"} == {"PATH", "ONLY", "SPEAR_FUNCTION"}
        assert ("SPEAR_SWEEP" in names) == (custom.cgroups is None)
        await rt.close()
        await custom.close()

    run(main())


def test_workdir_given_or_temporary(tmp_path):
    async def main():
        rt = ProcessRuntime(user=AS_SELF, host_paths=HostPaths([str(tmp_path)]))
        inst = await start(rt, handler_spec("testhandlers:cwd", workdir=str(tmp_path)))
        assert (await rt.invoke(inst, b"", [], Limits())).output.decode() == str(tmp_path)
        pwd = await start(rt, spec(command=["pwd"], workdir=str(tmp_path)))
        assert (await rt.invoke(pwd, b"", [], Limits())).output.decode().strip() == str(tmp_path)
        temp = await start(rt, handler_spec("testhandlers:cwd"))
        where = (await rt.invoke(temp, b"", [], Limits())).output.decode()
        assert os.path.isdir(where) and where != str(tmp_path)
        await rt.destroy(temp)
        assert not os.path.exists(where)
        await rt.destroy(inst)
        assert tmp_path.is_dir()  # a given workdir is never removed
        await rt.close()

    run(main())


def test_prepare_rejects_bad_specs(tmp_path):
    async def main():
        rt = ProcessRuntime(host_paths=HostPaths([str(tmp_path)]))
        bad = [
            spec(),
            spec(handler="no-colon"),
            spec(command=["no-such-command-anywhere"]),
            spec(command=["./relative"]),
            spec(command=["cat"], workdir=str(tmp_path / "missing")),
            spec(command=["cat"], env={"A=B": "c"}),
        ]
        for s in bad:
            with pytest.raises(errors.InvalidArgument):
                await rt.prepare(s)

    run(main())


def test_destroy_and_close_leave_no_process():
    async def main():
        rt = ProcessRuntime()
        insts = [await start(rt, handler_spec("handlers:echo")) for _ in range(3)]
        bash = await start(rt, spec(command=[str(HELPERS / "upper_worker.sh")], mode="pooled"))
        pids = [i.handle.pid for i in insts] + [bash.handle.pid]
        await rt.invoke(insts[0], b"x", [], Limits())
        await rt.destroy(insts[0])
        await rt.destroy(insts[0])  # already dead: must not raise
        assert gone(pids[:1], wait=0)
        await rt.close()
        assert gone(pids, wait=0)
        assert gone([p.pid for p in new_descendants()], wait=0)

    run(main())


def test_works_under_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, handler_spec("handlers:upper"))
        assert (await rt.invoke(inst, b"uv", [], Limits())).output == b"UV"
        one = await start(rt, spec(command=["cat"]))
        assert (await rt.invoke(one, b"uv", [], Limits())).output == b"uv"
        sleeper = await start(rt, spec(command=["sleep", "5"]))
        with pytest.raises(errors.DeadlineExceeded):
            await rt.invoke(sleeper, b"", [], Limits(timeout=0.2))
        await rt.close()

    uvloop.run(main())


def test_works_without_pidfd(monkeypatch):
    monkeypatch.delattr(os, "pidfd_open")  # older kernels: a thread reaps instead

    async def main():
        rt = ProcessRuntime()
        cat = await start(rt, spec(command=["cat"]))
        out = await rt.invoke(cat, b"no pidfd", [], Limits())
        assert out.output == b"no pidfd" and out.usage.peak_memory > 0
        sleeper = await start(rt, spec(command=["sh", "-c", "sleep 5 & sleep 5"]))
        with pytest.raises(errors.DeadlineExceeded):
            await rt.invoke(sleeper, b"", [], Limits(timeout=0.2))
        inst = await start(rt, handler_spec("handlers:echo"))
        assert (await rt.invoke(inst, b"x", [], Limits())).output == b"x"
        await rt.close()

    run(main())


def test_the_worker_in_the_protocol_docs_works(tmp_path):
    """docs/worker-protocol.md's "complete worker in 20 lines", run as written."""
    import re

    text = (ROOT / "docs" / "worker-protocol.md").read_text()
    code = re.search(r"```python\n(#!/usr/bin/env python3\n.*?)```", text, re.S).group(1)
    path = tmp_path / "upper_worker.py"
    path.write_text(code.replace("#!/usr/bin/env python3", f"#!{PY}", 1))
    path.chmod(0o755)

    async def main():
        rt = ProcessRuntime(user=AS_SELF, host_paths=HostPaths([str(tmp_path)]))
        inst = await start(rt, spec(command=[str(path)], mode="pooled", workdir=str(tmp_path)))
        logs: list[bytes] = []
        out = await rt.invoke(inst, b"hello docs", [], Limits(), logs.append)
        assert out.output == b"HELLO DOCS" and logs == [b"upper: 10 bytes\n"]
        assert (await rt.invoke(inst, b"again", ["arg"], Limits())).output == b"AGAIN"
        await rt.close()

    run(main())


def test_each_call_sees_its_own_trace_context():
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    other = tp[:-2] + "00"

    async def main():
        rt = ProcessRuntime(host_paths=EXAMPLES_ROOT)
        worker = await start(rt, handler_spec("testhandlers:env"))
        seen = []
        for kw in (dict(traceparent=tp, tracestate="a=b"), dict(traceparent=other), {}):
            out = await rt.invoke(worker, b"", [], Limits(), **kw)
            env = json.loads(out.output)
            seen.append((env.get("TRACEPARENT"), env.get("TRACESTATE")))
        shell = await start(rt, spec("sh", command=["sh", "-c", 'printf "%s|%s" "$TRACEPARENT" "$TRACESTATE"']))
        once = await rt.invoke(shell, b"", [], Limits(), traceparent=tp, tracestate="a=b")
        await rt.close()
        return seen, once.output

    seen, once = run(main())
    # a pooled worker sets each call's variables and unsets the last call's it lacks
    assert seen == [(tp, "a=b"), (other, None), (None, None)]
    assert once == f"{tp}|a=b".encode()


def test_a_handlers_child_processes_see_the_calls_trace_context():
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async def main():
        rt = ProcessRuntime(host_paths=EXAMPLES_ROOT)
        worker = await start(rt, handler_spec("testhandlers:child_env"))
        seen = []
        for kw in (dict(traceparent=tp, tracestate="k=v"), {}, dict(traceparent=tp[:-1] + "0")):
            seen.append((await rt.invoke(worker, b"", [], Limits(), **kw)).output)
        await rt.close()
        return seen

    assert run(main()) == [f"{tp}|k=v".encode(), b"|", f"{tp[:-1]}0|".encode()]


def test_each_call_sees_its_trace_context_whatever_the_last_handler_did_with_it():
    def tp(i: int) -> str:
        return f"00-{i:032x}-00f067aa0ba902b7-01"

    async def main():
        rt = ProcessRuntime(host_paths=EXAMPLES_ROOT)
        worker = await start(rt, handler_spec("testhandlers:meddle"))
        seen = []
        for i, (act, state) in enumerate([("set", ""), ("", ""), ("unset", ""), ("", ""),
                                          ("del-state", "k=v"), ("", "k=v")], 1):
            out = await rt.invoke(worker, act.encode(), [], Limits(), traceparent=tp(i),
                                  tracestate=state)
            seen.append(json.loads(out.output))
        await rt.close()
        return seen

    seen = run(main())
    for i, (got, state) in enumerate(zip(seen, ["", "", "", "", "k=v", "k=v"]), 1):
        assert got == {"env": [tp(i), state or None], "child": f"{tp(i)}|{state}"}, (i, got)


def test_a_pooled_worker_does_not_grow_with_each_calls_trace_context():
    # every call carries a new TRACEPARENT; setting it through setenv() keeps every
    # old value (glibc never frees them): ~100 bytes per call, forever
    async def main():
        rt = ProcessRuntime(host_paths=EXAMPLES_ROOT)
        worker = await start(rt, handler_spec("testhandlers:rss"))

        async def calls(n: int) -> int:
            for i in range(n):
                out = await rt.invoke(worker, b"", [], Limits(),
                                      traceparent=f"00-{i + 1:032x}-00f067aa0ba902b7-01")
            return int(out.output)

        before = await calls(2000)
        after = await calls(20000)
        await rt.close()
        return after - before

    assert run(main()) < 512 * 1024
