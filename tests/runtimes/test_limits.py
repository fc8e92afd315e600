"""Limits of the process runtime that hold against functions that misbehave.

Real processes throughout: output larger than the limit, a worker that writes
frames where it should not, CPU and memory limits of sandboxed functions (the
Spearlet root without CAP_SYS_RESOURCE, functions as ``nobody``), one cgroup
per execution nested under the test's own cgroup, limits that cannot be
applied, and processes that leave their session. Most of it needs root (the
sandbox, cgroups): without root these tests skip, except with ``CI=true``,
where they fail rather than prove nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from spear import errors
from spear.protocol import FunctionSpec, Limits
from spear.runtimes.process import cgroupfs, cgroups as cg
from spear.runtimes.hostpaths import HostPaths
from spear.runtimes.process.leftovers import TAG_VAR
from spear.runtimes.process import ProcessRuntime

from .test_process import descendants, gone

HELPERS = Path(__file__).resolve().parent / "helpers"
TMP = HostPaths([tempfile.gettempdir()])
MIB = 1 << 20


def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the limit tests must run as root in CI (CI=true): they would prove nothing")
        pytest.skip("cgroups and the process sandbox need root")


@pytest.fixture(autouse=True)
def as_root():
    _need_root()


@pytest.fixture(autouse=True)
def no_leftovers():
    before = {p.pid for p in descendants()}
    yield before
    mine = [p for p in descendants() if p.pid not in before]
    assert gone([p.pid for p in mine]), mine


@pytest.fixture
def shared():
    """A world-readable directory with the helpers, and a world-writable ``out`` in it."""
    d = tempfile.mkdtemp(prefix="spear-limits-test-")
    os.chmod(d, 0o755)
    for name, mode in (("rogue.py", 0o644), ("rogue_worker.py", 0o755)):
        shutil.copy(HELPERS / name, d)
        os.chmod(os.path.join(d, name), mode)
    out = os.path.join(d, "out")
    os.mkdir(out)
    os.chmod(out, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(coro, timeout: float = 90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def spec(name: str = "f", **kw) -> FunctionSpec:
    return FunctionSpec(name=name, runtime="process", **kw)


def handler(name: str, shared: str, **kw) -> FunctionSpec:
    return spec(name.replace(":", "-"), handler=name, workdir=shared, **kw)


def worker(shared: str, **kw) -> FunctionSpec:
    return spec("rogue-worker", command=[os.path.join(shared, "rogue_worker.py")], mode="pooled",
                workdir=shared, **kw)


async def start(rt: ProcessRuntime, s: FunctionSpec):
    return await rt.create_instance(await rt.prepare(s))


def own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) -> our cgroup path, from /proc/self/cgroup."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


def execution_dirs(rt: ProcessRuntime) -> list[str]:
    """Execution cgroups currently below the runtime's directories."""
    return [os.path.join(b, d) for b in rt.cgroups.bases for d in os.listdir(b)
            if os.path.isdir(os.path.join(b, d))]


async def until(cond, wait: float = 5.0) -> bool:
    end = asyncio.get_running_loop().time() + wait
    while not cond():
        if asyncio.get_running_loop().time() > end:
            return False
        await asyncio.sleep(0.02)
    return True


# ------------------------------------------------------------------ output


def test_output_over_the_limit_stops_the_function_oneshot():
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        big = await start(rt, spec(command=["head", "-c", str(96 * MIB), "/dev/zero"]))
        with pytest.raises(errors.ResourceExhausted, match="64 MiB") as info:
            await rt.invoke(big, b"", [], Limits(timeout=30))
        assert info.value.details["max_output_bytes"] == 64 * MIB
        # a function asks for less; the node may allow less
        two = await start(rt, spec(command=["head", "-c", str(3 * MIB), "/dev/zero"],
                                   limits=Limits(max_output_mb=2)))
        with pytest.raises(errors.ResourceExhausted, match="2 MiB"):
            await rt.invoke(two, b"", [], Limits(max_output_mb=2))
        small = ProcessRuntime(host_paths=TMP, max_output_mb=1)
        one = await start(small, spec(command=["head", "-c", str(2 * MIB), "/dev/zero"]))
        with pytest.raises(errors.ResourceExhausted, match="1 MiB"):
            await small.invoke(one, b"", [], Limits(max_output_mb=8))  # never above the node's
        fits = await start(rt, spec(command=["head", "-c", str(MIB), "/dev/zero"]))
        assert len((await rt.invoke(fits, b"", [], Limits(max_output_mb=1))).output) == MIB
        await rt.close()
        await small.close()

    run(main())


def test_output_over_the_limit_stops_pooled_workers(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        for inst, arg in ((await start(rt, handler("rogue:big", shared)), b"96"),
                          (await start(rt, worker(shared)), b"big 96")):
            pid = inst.handle.pid
            with pytest.raises(errors.ResourceExhausted, match="64 MiB"):
                await rt.invoke(inst, arg, [], Limits(timeout=30))
            assert not inst.reusable and gone([pid])
            await rt.destroy(inst)
        again = await start(rt, handler("rogue:big", shared))
        assert len((await rt.invoke(again, b"1", [], Limits())).output) == MIB
        await rt.close()

    run(main())


# ------------------------------------------------------------------ protocol


def test_a_frame_on_stdout_is_only_a_log_line(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        inst = await start(rt, worker(shared))
        pid = inst.handle.pid
        logs: list[bytes] = []
        out = await rt.invoke(inst, b"stdout-frame", [], Limits(timeout=10), logs.append)
        assert out.output == b"real" and b"FAKE!" in b"".join(logs)
        assert (await rt.invoke(inst, b"pid", [], Limits(timeout=10))).output == str(pid).encode()
        assert inst.reusable
        await rt.close()

    run(main())


def test_garbage_on_the_reply_pipe_stops_the_worker_at_once(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        for bad, what in ((b"bad-status", "reply status 104"), (b"extra", "after the reply")):
            inst = await start(rt, worker(shared))
            pid = inst.handle.pid
            with pytest.raises(errors.FunctionError, match="broke the protocol") as info:
                await rt.invoke(inst, bad, [], Limits(timeout=20))
            assert what in info.value.message
            assert not inst.reusable and gone([pid])
            await rt.destroy(inst)  # what the pool does; its next instance works
            fresh = await start(rt, worker(shared))
            assert (await rt.invoke(fresh, b"ok", [], Limits(timeout=10))).output == b"ok"
            await rt.destroy(fresh)
        # bytes between calls: the worker is stopped, and the next call gets a new one
        inst = await start(rt, worker(shared))
        pid = inst.handle.pid
        assert (await rt.invoke(inst, b"later", [], Limits(timeout=10))).output == b"ok"
        assert await until(lambda: not inst.handle.alive)
        out = await rt.invoke(inst, b"pid", [], Limits(timeout=10))
        assert int(out.output) != pid and inst.reusable
        await rt.close()

    run(main())


# ------------------------------------------------------------------ cpu


def test_cpu_seconds_holds_for_sandboxed_pooled_workers(shared):
    """As root without CAP_SYS_RESOURCE an rlimit cannot reach a worker running as nobody."""

    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        assert rt.sandbox_user is not None
        for inst, arg in ((await start(rt, handler("rogue:spin", shared)), b"60"),
                          (await start(rt, worker(shared)), b"spin 60")):
            with pytest.raises(errors.ResourceExhausted, match="cpu limit") as info:
                await rt.invoke(inst, arg, [], Limits(cpu_seconds=1, timeout=40))
            assert 1 <= info.value.details["cpu_time"] < 30
            assert not inst.reusable
        ok = await start(rt, handler("rogue:spin", shared))
        for _ in range(3):  # a budget per call, not per worker
            assert (await rt.invoke(ok, b"0.2", [], Limits(cpu_seconds=1))).output == b"spun"
        await rt.close()

    run(main())


def test_every_oneshot_start_is_limited(shared):
    """200 sandboxed starts, each under its rlimits and in its own cgroup from its first instruction."""
    own = own_cgroups()

    async def main():
        rt = ProcessRuntime(host_paths=TMP, default_pids=77)
        assert rt.cgroups is not None
        name = re.escape(f"/spear-process.{os.getpid()}/probe.") + r"\d+\Z"
        probe = await start(rt, spec("probe", command=["cat", "/proc/self/limits", "/proc/self/cgroup",
                                                       "/proc/self/status"]))
        for _ in range(200):
            out = (await rt.invoke(probe, b"", [], Limits(cpu_seconds=1, memory_mb=100))).output.decode()
            assert re.search(r"^Max cpu time\s+1\s+2\s+seconds", out, re.M), out
            assert re.search(rf"^Max address space\s+{100 * MIB}\s+{100 * MIB}\s", out, re.M), out
            assert f"Uid:\t{rt.sandbox_user.uid}\t" in out, out
            seen = {}
            for line in out.splitlines():
                m = re.match(r"^\d+:([^:]*):(/.*)$", line)
                if m:
                    for c in m.group(1).split(",") if m.group(1) else [""]:
                        seen[c] = m.group(2)
            for c in ("memory", "pids", ""):
                if c == "" and rt.cgroups.track.version != 2:
                    continue
                base = own[c].rstrip("/")
                assert seen[c].startswith(base + "/") and re.search(name, seen[c]), (c, seen[c])
        spin = await start(rt, spec(command=["sh", "-c", "while :; do :; done"]))
        with pytest.raises(errors.ResourceExhausted, match="cpu limit"):
            await rt.invoke(spin, b"", [], Limits(cpu_seconds=1, timeout=30))
        # a child's CPU counts too: the cgroup's clock, not one process's rlimit (the
        # children ignore SIGXCPU, so their own RLIMIT_CPU would end them at 2 s only)
        kids = await start(rt, spec(command=["sh", "-c", "trap '' XCPU; (while :; do :; done) & "
                                             "(while :; do :; done) & wait; exit 3"]))
        with pytest.raises(errors.ResourceExhausted, match="cpu limit"):
            await rt.invoke(kids, b"", [], Limits(cpu_seconds=1, timeout=30))
        assert await until(lambda: not execution_dirs(rt)), execution_dirs(rt)
        await rt.close()

    run(main(), timeout=120)


# ------------------------------------------------------------------ memory, pids


def test_memory_limit_holds_for_a_tree_of_processes(shared):
    """Each child stays under RLIMIT_AS; together they pass memory_mb: the cgroup ends it."""
    code = ("import subprocess, sys\n"
            "c = 'b = bytearray(64 << 20)\\nfor i in range(0, len(b), 4096): b[i] = 1\\n"
            "import time; time.sleep(2)'\n"
            "kids = [subprocess.Popen([sys.executable, '-c', c]) for _ in range(4)]\n"
            "sys.exit(1 if any(k.wait() for k in kids) else 0)\n")

    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        if not rt.cgroups.has("memory"):
            pytest.fail(f"no memory cgroup controller here: {rt.cgroups.missing}")
        hog = await start(rt, spec(command=["python3", "-c", code]))
        with pytest.raises(errors.ResourceExhausted, match="memory"):
            await rt.invoke(hog, b"", [], Limits(memory_mb=160, timeout=30))
        fine = await start(rt, spec(command=["python3", "-c", code]))
        out = await rt.invoke(fine, b"", [], Limits(memory_mb=512, timeout=30))
        assert out.usage.peak_memory > 200 * MIB  # the cgroup's peak: the whole tree
        await rt.close()

    run(main())


def test_pids_limit_holds(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        forks = await start(rt, spec(command=["sh", "-c", "for i in $(seq 40); do sleep 5 & done; wait"]))
        with pytest.raises(errors.FunctionError) as info:
            await rt.invoke(forks, b"", [], Limits(pids=10, timeout=30))
        assert "fork" in info.value.details["stderr"].lower() or "resource" in \
            info.value.details["stderr"].lower(), info.value.details
        await rt.close()

    run(main())


def test_cpus_is_a_quota_on_the_execution_cgroup(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        h = rt.cgroups.by_controller.get("cpu")
        if h is None:
            pytest.fail(f"no cpu cgroup controller here: {rt.cgroups.missing}")
        nap = await start(rt, spec("nap", command=["sleep", "1"]))
        task = asyncio.create_task(rt.invoke(nap, b"", [], Limits(cpus=0.25)))
        base = os.path.join(h.own, rt.cgroups.name)
        assert await until(lambda: any(os.path.isdir(os.path.join(base, d)) for d in os.listdir(base)))
        (d,) = [os.path.join(base, d) for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))]
        if h.version == 1:
            assert Path(d, "cpu.cfs_quota_us").read_text().split() == ["25000"]
            assert Path(d, "cpu.cfs_period_us").read_text().split() == ["100000"]
        else:
            assert Path(d, "cpu.max").read_text().split() == ["25000", "100000"]
        await task
        await rt.close()

    run(main())


def test_a_cgroup_per_execution_under_our_own_removed_afterwards(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        groups = rt.cgroups
        for base in groups.bases:  # under our own cgroup, in every hierarchy used
            assert os.path.dirname(base) in {h.own for h in groups.hierarchies}
        used = {groups.by_controller[c] for c in ("memory", "pids", "cpuacct") if groups.has(c)}
        used.add(groups.track)  # the cpu hierarchy only for functions that set limits.cpus
        sleeper = await start(rt, spec("nap", command=["sleep", "1"]))
        task = asyncio.create_task(rt.invoke(sleeper, b"", [], Limits()))
        assert await until(lambda: len(execution_dirs(rt)) == len(used))
        assert all(os.path.basename(d).startswith("nap.") for d in execution_dirs(rt))
        await task
        assert await until(lambda: not execution_dirs(rt)), execution_dirs(rt)
        # a pooled worker: one cgroup for its life, gone when it is
        w = await start(rt, handler("rogue:spin", shared))
        dirs = execution_dirs(rt)
        assert len(dirs) == len(used)
        assert str(w.handle.pid) in Path(groups.track.own, groups.name,
                                         os.path.basename(dirs[0]), "cgroup.procs").read_text().split()
        await rt.destroy(w)
        assert await until(lambda: not execution_dirs(rt)), execution_dirs(rt)
        bases = groups.bases
        await rt.close()
        assert not any(os.path.exists(b) for b in bases)

    run(main())


# ------------------------------------------------------------------ not applied


def test_a_limit_that_cannot_be_applied_fails_the_execution(shared, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="spear.runtimes.process")

    async def main():
        off = ProcessRuntime(host_paths=TMP, cgroups="off")
        assert off.cgroups is None
        cat = await start(off, spec(command=["cat"]))
        for limits, what in ((Limits(pids=10), "limits.pids"), (Limits(cpus=0.5), "limits.cpus")):
            with pytest.raises(errors.Unavailable, match=what) as info:
                await off.invoke(cat, b"", [], limits)
            assert "no cgroups" in info.value.message
        assert (await off.invoke(cat, b"fine", [], Limits())).output == b"fine"
        await off.close()

        rt = ProcessRuntime(host_paths=TMP)
        cat = await start(rt, spec(command=["cat"]))

        def refuse(self, path, limit):
            raise cg.CgroupError(f"cannot write {limit} to {path}/memory.limit_in_bytes: Device busy")

        with monkeypatch.context() as m:
            m.setattr(cg.V1, "set_memory", refuse)
            m.setattr(cg.V2, "set_memory", refuse)
            with pytest.raises(errors.Unavailable, match="memory_mb = 64 .*Device busy"):
                await rt.invoke(cat, b"", [], Limits(memory_mb=64))
            with pytest.raises(errors.Unavailable, match="memory_mb"):
                await start(rt, handler("rogue:spin", shared))

        def no_prlimit(*a, **k):
            raise PermissionError(1, "Operation not permitted")

        with monkeypatch.context() as m:
            m.setattr("spear.runtimes.process.limits.resource.prlimit", no_prlimit)
            with pytest.raises(errors.Unavailable, match="cpu_seconds|RLIMIT"):
                await rt.invoke(cat, b"", [], Limits(cpu_seconds=1))
        assert (await rt.invoke(cat, b"fine", [], Limits(cpu_seconds=1))).output == b"fine"
        assert await until(lambda: not execution_dirs(rt)), execution_dirs(rt)
        await rt.close()

    run(main())
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "cannot apply" in r.getMessage()]
    assert len(warned) >= 5, [r.getMessage() for r in caplog.records]


def test_shell_variables_are_set_only_after_the_switch():
    """The gate is a root-run shell: what a shell acts on reaches only the function."""
    env = {"BASH_ENV": "/tmp/evil.sh", "ENV": "/tmp/evil.sh", "IFS": ":", "KEEP": "me"}

    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        prepared = await rt.prepare(spec(command=["env"], env=env))
        plan = prepared.handle
        assert not {"BASH_ENV", "ENV", "IFS"} & set(plan.env) and plan.env["KEEP"] == "me"
        tool = plan.argv.index("--") + 1  # unshare ... -- /usr/bin/env -- BASH_ENV=... env
        assert plan.argv[tool].endswith("/env") and "BASH_ENV=/tmp/evil.sh" in plan.argv
        inst = await rt.create_instance(prepared)
        lines = (await rt.invoke(inst, b"", [], Limits())).output.decode().splitlines()
        assert {"BASH_ENV=/tmp/evil.sh", "ENV=/tmp/evil.sh", "IFS=:", "KEEP=me"} <= set(lines)
        await rt.close()

    run(main())


# ------------------------------------------------------------------ leftovers


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_processes_that_leave_the_session_are_ended(shared, mode, caplog):
    out = os.path.join(shared, "out")

    async def main():
        rt = ProcessRuntime(host_paths=TMP, cgroups=mode)
        assert (rt.cgroups is None) == (mode == "off")
        daemons = []
        # a one-shot that double-forks a setsid daemon, and a pooled handler that does
        script = ("python3 -c \"import os,sys,time\nif os.fork(): os._exit(0)\nos.setsid()\n"
                  "if os.fork(): os._exit(0)\nopen(sys.argv[1],'w').write(str(os.getpid()))\n"
                  "time.sleep(120)\" $0; until [ -s $0 ]; do sleep 0.05; done")
        path = os.path.join(out, "oneshot.pid")
        one = await start(rt, spec(command=["sh", "-c", script, path]))
        await rt.invoke(one, b"", [], Limits(timeout=20))
        daemons.append(int(Path(path).read_text()))
        assert gone(daemons[-1:], wait=5), daemons
        path = os.path.join(out, "pooled.pid")
        Path(path).touch()
        os.chmod(path, 0o666)
        w = await start(rt, handler("rogue:escape", shared))
        assert (await rt.invoke(w, path.encode(), [], Limits(timeout=20))).output == b"escaped"
        daemons.append(int(Path(path).read_text()))
        assert psutil.Process(daemons[-1]).is_running()  # alive while its worker is
        if mode == "off":
            env = psutil.Process(daemons[-1]).environ()
            assert TAG_VAR in env
        await rt.destroy(w)
        assert gone(daemons, wait=5), daemons
        await rt.close()

    run(main())
    if mode == "off":
        assert any("WITHOUT cgroups" in r.getMessage() and r.levelno >= logging.WARNING
                   for r in caplog.records)


def test_cpu_seconds_without_cgroups_falls_back_to_rlimits_and_the_clock(shared):
    async def main():
        rt = ProcessRuntime(host_paths=TMP, cgroups="off")
        spin = await start(rt, spec(command=["sh", "-c", "while :; do :; done"]))
        with pytest.raises(errors.ResourceExhausted, match="cpu limit"):
            await rt.invoke(spin, b"", [], Limits(cpu_seconds=1, timeout=30))
        pooled = await start(rt, handler("rogue:spin", shared))
        with pytest.raises(errors.ResourceExhausted, match="cpu limit"):
            await rt.invoke(pooled, b"60", [], Limits(cpu_seconds=1, timeout=30))
        await rt.close()

    run(main())


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_restarted_runtime_ends_what_a_killed_one_left(tmp_path, shared, mode):
    """The record in the state directory; the Spearlet-level test is in tests/integration."""
    state = tmp_path / "state"

    async def first():
        rt = ProcessRuntime(host_paths=TMP, state_dir=state, cgroups=mode)
        w = await start(rt, handler("rogue:spin", shared))
        bases = list(rt.cgroups.bases) if rt.cgroups is not None else []
        children = list((rt._host_.ledger.dir / "children").iterdir())
        assert len(children) == (1 if mode == "off" else 0)
        return rt, w.handle.pid, bases

    async def main():
        rt, pid, bases = await first()
        # play dead: forget the runtime without closing it, as a SIGKILL would
        (run_dir,) = list(state.iterdir())
        fake = state / "run-1-1"  # a run whose process is gone
        run_dir.rename(fake)
        rt._host_.ledger.dir = fake
        assert psutil.Process(pid).is_running()
        again = ProcessRuntime(host_paths=TMP, state_dir=state)
        assert await asyncio.to_thread(again.reap_leftovers) >= 1
        assert await until(lambda: gone([pid], wait=0))  # the old runtime (ours) reaps it
        assert not fake.exists() and not any(os.path.exists(b) for b in bases)
        if rt._host_.cgroups is not None:
            rt._host_.cgroups._made = []
        rt._host_ = None
        await rt.close()
        await again.close()

    run(main())


# ------------------------------------------------------------------ detection


def test_missing_controllers_are_said_and_required_cgroups_refuse(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="spear.runtimes.process")
    real = cg.Cgroups.detect

    def without_pids(name=None):
        groups, why = real(name)
        groups.by_controller.pop("pids", None)
        groups.missing["pids"] = "not mounted (test)"
        return groups, why

    async def main():
        with monkeypatch.context() as m:
            m.setattr(cg.Cgroups, "detect", staticmethod(without_pids))
            rt = ProcessRuntime(host_paths=TMP, default_pids=64)
            assert rt.cgroups is not None and not rt.cgroups.has("pids")
            cat = await start(rt, spec(command=["cat"]))
            assert (await rt.invoke(cat, b"default pids skipped", [], Limits())).output
            with pytest.raises(errors.Unavailable, match="no pids cgroup controller"):
                await rt.invoke(cat, b"", [], Limits(pids=5))
            await rt.close()
        with monkeypatch.context() as m:
            m.setattr(cg.Cgroups, "detect", staticmethod(lambda name=None: (None, "nothing (test)")))
            required = ProcessRuntime(host_paths=TMP, cgroups="required")
            ok, why = required.available()
            assert not ok and "cgroups are required" in why and "nothing (test)" in why

    run(main())
    assert any("no pids cgroup controller" in r.getMessage() and "limits.pids fail" in r.getMessage()
               for r in caplog.records if r.levelno >= logging.WARNING)


def test_v2_delegation_moves_a_lone_spearlet_into_a_leaf(tmp_path, monkeypatch):
    """A v2 cgroup holding processes cannot enable controllers for its children (EBUSY)."""
    own = tmp_path / "spear.service"
    own.mkdir()
    (own / "cgroup.type").write_text("domain\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    writes: list[tuple[str, str]] = []
    real = cgroupfs.write

    def write(path, value):
        writes.append((path, value))
        if path.endswith("subtree_control") and (own / "cgroup.procs").read_text().strip():
            raise cg.CgroupError(f"cannot write {value!r} to {path}: Device or resource busy")
        if path.endswith("spearlet/cgroup.procs"):  # what the kernel does on a move
            Path(path).touch()
            (own / "cgroup.procs").write_text("")
        real(path, value)

    monkeypatch.setattr(cgroupfs, "write", write)
    got, why = cgroupfs.enable_v2(str(own), {"memory", "pids"})
    assert got == {"memory", "pids"} and why == ""
    assert (own / "spearlet" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    # not alone: nothing is moved, and the reason says why
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n1\n")
    (own / "cgroup.subtree_control").write_text("")
    got, why = cgroupfs.enable_v2(str(own), {"memory"})
    assert got == set() and "other processes" in why


HYBRID_CGROUP = """9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
"""
HYBRID_MOUNTS = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_CGROUP = "0::/system.slice/spear.service\n"
V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_detection_reads_hybrid_and_unified_layouts():
    v1, v2 = cgroupfs.own_cgroups(HYBRID_CGROUP)
    assert v1[frozenset({"memory"})] == "/process_api/abc" and v2 == "/"
    mounts = {m[2]: m for m in cgroupfs.mounts(HYBRID_MOUNTS)}
    assert mounts["/sys/fs/cgroup/unified"][0] == "cgroup2"
    assert "memory" in mounts["/sys/fs/cgroup/memory"][3]
    assert cgroupfs.inside("/", "/process_api/abc", "/sys/fs/cgroup/memory") == \
        "/sys/fs/cgroup/memory/process_api/abc"
    v1, v2 = cgroupfs.own_cgroups(V2_CGROUP)
    assert v1 == {} and v2 == "/system.slice/spear.service"
    (m,) = cgroupfs.mounts(V2_MOUNTS)
    assert cgroupfs.inside(m[1], v2, m[2]) == "/sys/fs/cgroup/system.slice/spear.service"
    # a container that sees only its own subtree
    assert cgroupfs.inside("/docker/x", "/docker/x/sub", "/sys/fs/cgroup") == "/sys/fs/cgroup/sub"
    assert cgroupfs.inside("/docker/x", "/elsewhere", "/sys/fs/cgroup") is None


def test_v1_and_v2_backends_on_this_machine():
    """Each backend this machine has: create, limit, join, count, kill, remove."""
    groups, why = cg.Cgroups.detect(f"spear-backend-test.{os.getpid()}")
    assert groups is not None, why
    try:
        versions = {h.version for h in groups.hierarchies}
        assert versions, groups.describe()
        g = groups.group("probe")
        g.limit(memory=64 * MIB if groups.has("memory") else None,
                pids=16 if groups.has("pids") else None)
        import subprocess

        p = subprocess.Popen(["sleep", "30"])
        try:
            g.attach(p.pid)
            assert p.pid in g.pids()
            for h, path in g.dirs:
                assert str(p.pid) in Path(path, "cgroup.procs").read_text().split(), (h, path)
            assert g.cpu_ns() is not None
            g.kill()
            assert p.wait(30) == -9
        finally:
            p.kill()
        for h, path in g.dirs:  # each backend's own kill (v1: list and SIGKILL; v2: cgroup.kill)
            p = subprocess.Popen(["sh", "-c", "read x; sleep 30 & sleep 30"], stdin=subprocess.PIPE)
            try:
                g.attach(p.pid)  # before it forks: its children are born inside
                p.stdin.write(b"\n")
                p.stdin.close()
                end = time.monotonic() + 30
                while len(h.procs(path)) < 2 and time.monotonic() < end:
                    time.sleep(0.01)
                assert len(h.procs(path)) >= 2, (h, path)
                h.kill(path)
                assert p.wait(30) == -9
                end = time.monotonic() + 30
                while h.procs(path) and time.monotonic() < end:
                    time.sleep(0.01)
                assert h.procs(path) == [], (h, path)
            finally:
                p.kill()
                p.wait()
        assert g.remove_now() == []
    finally:
        groups.close()
    assert not any(os.path.exists(b) for b in groups.bases)
