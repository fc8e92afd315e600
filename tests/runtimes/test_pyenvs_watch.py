"""The watch over a running Python environment build, offline: the installer
is replaced by a command that only sleeps, the budget by one it outgrows at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time

import pytest

from spear import errors
from spear.runtimes.process import pyenvs as pyenvs_mod
from spear.runtimes.process.pyenvs import PyEnvs

VERSION = tuple(sys.version_info[:2])
SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


@pytest.fixture
def root():
    d = tempfile.mkdtemp(prefix="spear-test-watch-")
    yield os.path.join(d, "envs")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def run(arun):
    return lambda coro, timeout=30: arun(asyncio.wait_for(coro, timeout))


def sleeping(envs: PyEnvs, calls: list) -> None:
    """The installer of ``envs`` sleeps 30 s (each command run appended to ``calls``)."""
    def commands(*args, **kw):
        calls.append(args)
        return [SLEEP]
    envs._commands = commands


def outgrown(root: str, calls: list | None = None) -> PyEnvs:
    """Environments whose every build outgrows the budget at its first measure."""
    envs = PyEnvs(root, max_bytes=1, min_free_bytes=0, installer="pip")
    envs.watch_every = 0.02
    sleeping(envs, calls if calls is not None else [])
    return envs


def builds_left(root: str) -> list[str]:
    return [n for n in os.listdir(root) if n.startswith(".build-") and "-gc-" not in n]


def test_a_build_stopped_for_its_size_is_refused_again_without_a_build(root, run):
    # before the watch, a too big set was built, measured and remembered: the next
    # deploy of it was refused at once. Stopped while it runs, it must be remembered too,
    # or each deploy downloads it again up to the budget
    async def main():
        calls: list = []
        envs = outgrown(root, calls)
        with pytest.raises(errors.ResourceExhausted) as ei:
            await envs.acquire("big", sys.executable, VERSION, ["x==1"])
        assert ei.value.details["while_building"] is True
        assert len(calls) == 1
        with pytest.raises(errors.ResourceExhausted) as ei:
            await envs.acquire("big", sys.executable, VERSION, ["x==1"])
        assert len(calls) == 1, "built again"
        assert not ei.value.details.get("while_building")

    run(main())


def test_the_watch_reads_the_budget_on_the_loop_thread(root, run):
    # the loop changes _sizes/_users/_locks (collect, release, other deploys): a thread
    # iterating them may see "dictionary changed size during iteration"
    async def main():
        envs = outgrown(root)
        seen = []
        room = envs._room

        def spy(key):
            seen.append(threading.current_thread() is threading.main_thread())
            return room(key)
        envs._room = spy
        with pytest.raises(errors.ResourceExhausted):
            await envs.acquire("big", sys.executable, VERSION, ["x==1"])
        assert seen and all(seen), seen

    run(main())


def test_a_stopped_build_is_removed_off_the_loop_and_the_next_build_works(root, run, monkeypatch):
    # a build is stopped when it is big (up to envs_max_mb): removing it must not
    # stall the loop, as _remove does not
    async def main():
        envs = outgrown(root)
        on_loop = []
        rmtree = shutil.rmtree

        def spy(path, *a, **kw):
            if os.path.basename(path).startswith(".build-"):
                on_loop.append(threading.current_thread() is threading.main_thread())
            return rmtree(path, *a, **kw)
        monkeypatch.setattr(pyenvs_mod.shutil, "rmtree", spy)
        with pytest.raises(errors.ResourceExhausted):
            await envs.acquire("big", sys.executable, VERSION, ["x==1"])
        for _ in range(200):
            if not builds_left(root):
                break
            await asyncio.sleep(0.01)
        assert builds_left(root) == []
        assert on_loop and not any(on_loop), on_loop
        # the next build (no requirements: a bare venv, offline) works
        envs2 = PyEnvs(root, min_free_bytes=0, installer="pip")
        key = await envs2.acquire("small", sys.executable, VERSION, [])
        assert os.path.exists(envs2.python_of(key)) and envs2.builds == 1

    run(main())


def test_the_build_timeout_still_fires_with_its_error(root, run):
    async def main():
        envs = PyEnvs(root, timeout=0.6, min_free_bytes=0, installer="pip")
        envs.watch_every = 0.25
        sleeping(envs, [])
        t0 = time.monotonic()
        with pytest.raises(errors.Unavailable) as ei:
            await envs.acquire("slow", sys.executable, VERSION, ["x==1"])
        took = time.monotonic() - t0
        assert "took over 0.6s" in ei.value.message and "env_build_timeout" in ei.value.message
        assert took >= 0.55, took  # not before its time (a loaded machine only adds)

    run(main())


def test_a_disk_below_the_reserve_refuses_the_first_build_too(root, run):
    # the first build on a node makes the environments' directory: the free disk
    # must be read where it will be, not skipped because it is not there yet
    async def main():
        assert not os.path.exists(root)
        free = shutil.disk_usage(os.path.dirname(root)).free
        envs = PyEnvs(root, min_free_bytes=free + (1 << 30), installer="pip")
        with pytest.raises(errors.ResourceExhausted) as ei:
            await envs.acquire("small", sys.executable, VERSION, [])
        assert ei.value.details["limit"] == "envs_min_free_mb" and envs.builds == 0

    run(main())


def test_a_slow_measure_is_taken_less_often(root, run):
    # measuring a big build walks tens of thousands of files (~0.5 s for 57k) in a
    # thread of the Spearlet's process: back to back, the loop would share the GIL with
    # it for the whole build. The measures take at most about a fifth of the time
    async def main():
        os.makedirs(root)
        envs = PyEnvs(root, min_free_bytes=0, installer="pip")
        envs.watch_every = 0.01
        calls = []

        async def watch():
            calls.append(time.monotonic())
            time.sleep(0.1)  # a slow walk (in a thread, really)

        argv = [sys.executable, "-c", "import time; time.sleep(1.5)"]
        await envs._run("f", [], argv, time.monotonic() + 30, ("", ""), watch, root)
        assert len(calls) >= 2, calls
        # each measure took >= 0.1 s, so the next waited >= 0.4 s (load only adds),
        # against 0.01 s back to back before
        gaps = [b - a for a, b in zip(calls, calls[1:])]
        assert all(g >= 0.4 for g in gaps), gaps

    run(main())
