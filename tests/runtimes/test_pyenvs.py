"""Python handlers shipped as code bundles, with requirements: the node's code cache
and environments, for real (uv or pip, PyPI, the sandbox as ``nobody``).

Functions run as ``nobody`` here, so these tests need root (like test_sandbox.py)
and the network (PyPI); without either they skip, except that CI=true makes a
missing root a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
import tempfile

import psutil
import pytest

from spear import errors, protocol as P
from spear.config import child_env
from spear.protocol import FunctionSpec, Limits
from spear.runtimes.process import ProcessRuntime
from spear.runtimes.process.codecache import default_cache_dir
from spear.runtimes.process.pyenvs import ABOUT, LAST_USE, PyEnvs, find_uv
from spear.spearlet.core import SpearletCore
from spear.spearlet.runner import Runner
from tests.helpers import gone, make_bundle

from .test_sandbox import nobody

NODE = "node-pyenvs"
#: a handler that reports who runs it, where, and with which humanize
HUMANIZE_APP = make_bundle({"app.py": (
    "import json, os, sys\n"
    "import humanize\n"
    "def handle(data, *args):\n"
    "    return json.dumps({'size': humanize.naturalsize(int(data)), 'uid': os.getuid(),\n"
    "                       'cwd': os.getcwd(), 'humanize': humanize.__file__,\n"
    "                       'prefix': sys.prefix}).encode()\n")})
#: a handler that tries to write where it must not
WRITER_APP = make_bundle({"app.py": (
    "import json, os, sys, sysconfig\n"
    "def _try(path):\n"
    "    try:\n"
    "        with open(path, 'w') as f:\n"
    "            f.write('x')\n"
    "        return 'written'\n"
    "    except OSError as exc:\n"
    "        return type(exc).__name__\n"
    "def handle(data, *args):\n"
    "    site = sysconfig.get_paths()['purelib']\n"
    "    return json.dumps({'code': _try('app.py'), 'new': _try('new.py'),\n"
    "                       'site': _try(os.path.join(site, 'evil.py')),\n"
    "                       'bin': _try(os.path.join(sys.prefix, 'bin', 'evil'))}).encode()\n")})


@pytest.fixture(autouse=True)
def as_root():
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("these tests must run as root in CI (CI=true): they would prove nothing")
        pytest.skip("functions run as nobody only when the Spearlet is root")


@pytest.fixture(autouse=True)
def spearlet_umask():
    """The Spearlet's umask: what the node writes is private unless made otherwise."""
    old = os.umask(0o077)
    yield
    os.umask(old)


@pytest.fixture
def cache():
    """A cache directory the sandbox user can reach (pytest's tmp_path is 0700)."""
    root = tempfile.mkdtemp(prefix="spear-test-cache-")
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def runtime(cache: str, **kw) -> ProcessRuntime:
    return ProcessRuntime(cache_dir=cache, installer_env=child_env(), node=NODE, **kw)


def hspec(name: str = "hz", artifact: bytes = HUMANIZE_APP, **kw) -> FunctionSpec:
    kw.setdefault("requirements", ["humanize"])
    return FunctionSpec(name=name, runtime="process", handler="app:handle", artifact=artifact, **kw)


@pytest.fixture
def run(arun):
    """Run a test's coroutine on asyncio and on uvloop (the Spearlet's loop)."""
    return lambda coro, timeout=180: arun(asyncio.wait_for(coro, timeout))


def all_in(cache: str) -> list[str]:
    """Everything in the environments' directory, builds in progress included."""
    return sorted(os.listdir(os.path.join(cache, "envs")))


def envs_in(cache: str) -> list[str]:
    """The environments (removed ones may still be deleted by a thread under a dot name)."""
    return sorted(n for n in os.listdir(os.path.join(cache, "envs")) if not n.startswith("."))


def test_a_bundled_handler_with_a_requirement_runs_as_nobody(cache, run):
    async def main():
        rt = runtime(cache)
        try:
            prepared = await rt.prepare(hspec())
            inst = await rt.create_instance(prepared)
            out = json.loads((await rt.invoke(inst, b"123456789", [], Limits())).output)
            await rt.destroy(inst)
        finally:
            await rt.close()
        code = os.path.join(cache, "code", prepared.handle.bundle)
        env = os.path.join(cache, "envs", prepared.handle.pyenv)
        assert out["size"] == "123.5 MB"
        assert out["uid"] == nobody()[0]
        assert out["cwd"] == code and out["prefix"] == env
        assert out["humanize"].startswith(env + "/")

    run(main())


def test_the_sandbox_user_cannot_write_into_its_code_or_environment(cache, run):
    async def main():
        rt = runtime(cache)
        try:
            prepared = await rt.prepare(hspec("writer", WRITER_APP))
            inst = await rt.create_instance(prepared)
            out = json.loads((await rt.invoke(inst, b"", [], Limits())).output)
            await rt.destroy(inst)
        finally:
            await rt.close()
        assert out == {"code": "PermissionError", "new": "PermissionError",
                       "site": "PermissionError", "bin": "PermissionError"}
        for sub in ("code", "envs"):
            for top, dirs, files in os.walk(os.path.join(cache, sub)):
                for path in [top] + [os.path.join(top, f) for f in files]:
                    st = os.lstat(path)
                    if stat.S_ISLNK(st.st_mode):
                        continue
                    assert st.st_uid == 0 and not st.st_mode & 0o022, path
                    assert st.st_mode & 0o004, path  # and readable by all

    run(main())


def test_one_requirement_set_is_built_once_and_kept_across_restarts(cache, run):
    async def main():
        rt = runtime(cache)
        try:
            # eight first deploys at once, the same set in any order: one build
            specs = [hspec(f"f{i}", requirements=["humanize", "msgspec"][:: 1 if i % 2 else -1])
                     for i in range(8)]
            prepared = await asyncio.gather(*(rt.prepare(s) for s in specs))
            assert rt._envs.builds == 1
            keys = {p.handle.pyenv for p in prepared}
            assert len(keys) == 1 and envs_in(cache) == sorted(keys)
            for p in prepared:
                await rt.release(p)
        finally:
            await rt.close()
        again = runtime(cache)  # a restarted Spearlet finds it built
        try:
            p = await again.prepare(hspec(requirements=["msgspec", "humanize"]))
            assert again._envs.builds == 0 and {p.handle.pyenv} == keys
            inst = await again.create_instance(p)
            out = json.loads((await again.invoke(inst, b"2048", [], Limits())).output)
            assert out["size"] == "2.0 kB"
            await again.destroy(inst)
        finally:
            await again.close()

    run(main())


def test_a_requirement_that_does_not_exist_fails_the_deploy_naming_it(cache, run):
    async def main():
        rt = runtime(cache)
        try:
            with pytest.raises(errors.InvalidArgument) as info:
                await rt.prepare(hspec(requirements=["humanize", "spear-no-such-package-xyz==1.0"]))
        finally:
            await rt.close()
        message = info.value.message
        assert "spear-no-such-package-xyz==1.0" in message and NODE in message
        assert "humanize'" not in message  # the one at fault only
        assert "installer said" in message and info.value.details["output"]
        assert envs_in(cache) == []  # no half environment, no temporary
        assert os.listdir(os.path.join(cache, "code")) == []  # its bundle released too

    run(main())


def test_an_unknown_python_version_is_a_clear_error(cache, run):
    async def main():
        rt = runtime(cache)
        try:
            with pytest.raises(errors.InvalidArgument, match=r"no Python 3\.99 .*nobody"):
                await rt.prepare(hspec(requirements=[], python="3.99"))
        finally:
            await rt.close()

    run(main())


def test_a_bundle_with_a_workdir_or_a_command_is_refused(cache, run):
    async def main():
        rt = runtime(cache)
        try:
            with pytest.raises(errors.InvalidArgument, match="leave workdir empty"):
                await rt.prepare(hspec(requirements=[], workdir="/srv"))
            with pytest.raises(errors.InvalidArgument, match="leave command empty"):
                await rt.prepare(hspec(command=["/usr/bin/python3"]))
            with pytest.raises(errors.InvalidArgument, match="SHA-256"):
                await rt.prepare(hspec(requirements=[], artifact_sha256="0" * 64))
        finally:
            await rt.close()
        assert os.listdir(os.path.join(cache, "code")) == []

    run(main())


def test_release_removes_a_bundle_once_no_function_uses_it(cache, run):
    async def main():
        rt = runtime(cache)
        try:
            a = await rt.prepare(hspec("a", requirements=[]))
            b = await rt.prepare(hspec("b", requirements=[]))
            code = os.path.join(cache, "code", a.handle.bundle)
            assert a.handle.bundle == b.handle.bundle and os.path.isdir(code)
            await rt.release(a)
            await rt.release(a)  # twice is once
            assert os.path.isdir(code)
            await rt.release(b)
            assert not os.path.exists(code)
            # what an earlier run left is collected; what is in use is not
            c = await rt.prepare(hspec("c", requirements=[]))
            os.mkdir(os.path.join(cache, "code", "f" * 64))
            rt.collect()
            assert os.listdir(os.path.join(cache, "code")) == [c.handle.bundle]
            await rt.release(c)
        finally:
            await rt.close()

    run(main())


def test_unused_environments_are_collected_after_their_ttl(cache, run):
    async def main():
        rt = runtime(cache, env_ttl=3600)
        try:
            used = await rt.prepare(hspec("used"))
            idle = await rt.prepare(hspec("idle", requirements=["msgspec"]))
            keys = [used.handle.pyenv, idle.handle.pyenv]
            await rt.release(idle)
            rt.collect()
            assert envs_in(cache) == sorted(keys)  # within its ttl
            old = os.path.getmtime(os.path.join(cache, "envs", keys[1], LAST_USE)) - 7200
            for key in keys:
                os.utime(os.path.join(cache, "envs", key, LAST_USE), (old, old))
            rt.collect()
            assert envs_in(cache) == [keys[0]]  # the one in use stays
        finally:
            await rt.close()

    run(main())


def test_a_killed_or_timed_out_build_leaves_no_environment(cache, run):
    async def main():
        rt = runtime(cache, env_build_timeout=0.05)
        try:
            with pytest.raises(errors.Unavailable, match="env_build_timeout"):
                await rt.prepare(hspec())
            assert envs_in(cache) == []
            rt._envs.timeout = 120
            task = asyncio.ensure_future(rt.prepare(hspec()))
            while not all_in(cache):  # the build has started
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert envs_in(cache) == []
        finally:
            await rt.close()
        # what a SIGKILLed build leaves is removed when the next runtime starts
        os.mkdir(os.path.join(cache, "envs", ".build-0123-x"))
        again = runtime(cache)
        try:
            await again.prepare(hspec(requirements=[], python="3.11"))
            assert [e for e in all_in(cache) if e.startswith(".build-0123")] == []
        finally:
            await again.close()

    run(main())


@pytest.mark.skipif(find_uv() is None, reason="the pip fallback is compared with uv")
def test_the_pip_fallback_builds_the_same_environment(cache, run):
    async def main():
        rt = runtime(cache, installer="pip")
        try:
            prepared = await rt.prepare(hspec())
            inst = await rt.create_instance(prepared)
            out = json.loads((await rt.invoke(inst, b"1000", [], Limits())).output)
            await rt.destroy(inst)
            with pytest.raises(errors.InvalidArgument, match="spear-no-such-package-xyz"):
                await rt.prepare(hspec("bad", requirements=["spear-no-such-package-xyz==1.0"]))
        finally:
            await rt.close()
        assert out["size"] == "1.0 kB" and out["uid"] == nobody()[0]

    run(main())


class _Manager:
    """The one runtime of a Runner (the RuntimeManager's part the Runner uses)."""

    def __init__(self, rt: ProcessRuntime) -> None:
        self.runtimes = {"process": rt}

    async def ready(self, name: str) -> ProcessRuntime:
        return self.runtimes[name]


def test_a_redeploy_of_new_code_leaves_no_old_worker_and_a_remove_no_code(cache, run):
    def app(version: str) -> bytes:
        return make_bundle({"app.py": (
            "import os\n"
            f"def handle(data, *args):\n    return b'{version} %d' % os.getpid()\n")})

    async def call(r: Runner, replies: list) -> list[str]:
        replies.clear()
        r.handlers()[P.Invoke](b"c", P.Invoke(id=1, function="f"), b"")
        while not replies:
            await asyncio.sleep(0.01)
        (_, msg, payload), = replies
        assert msg.execution.status == "succeeded", msg
        return bytes(payload).decode().split()

    async def main():
        rt = runtime(cache)
        r = Runner(_Manager(rt), SpearletCore(NODE))
        replies: list = []
        r.reply = lambda ident, msg, payload=None: replies.append((ident, msg, payload))
        warm = P.PoolSettings(min_warm=1, max=2)
        try:
            await r.deploy(hspec("f", app("v1"), requirements=[], pool=warm))
            old_code = os.path.join(cache, "code", r.deployments["f"].prepared.handle.bundle)
            version, pid = await call(r, replies)
            assert version == "v1" and psutil.pid_exists(int(pid))
            await r.deploy(hspec("f", app("v2"), requirements=[], pool=warm))
            version, new_pid = await call(r, replies)
            assert version == "v2" and new_pid != pid
            assert gone([int(pid)])
            assert not os.path.exists(old_code)
            new_code = os.path.join(cache, "code", r.deployments["f"].prepared.handle.bundle)
            replies.clear()
            r.handlers()[P.RemoveFunction](b"c", P.RemoveFunction(id=2, name="f"), None)
            while not replies:
                await asyncio.sleep(0.01)
            assert isinstance(replies[0][1], P.Ok) and not os.path.exists(new_code)
        finally:
            await r.close()
            await rt.close()

    run(main())


def test_the_default_cache_dir_and_one_the_sandbox_user_cannot_reach(cache, run):
    data = os.path.join(cache, "data")
    as_nobody = default_cache_dir(data, other_user=True)
    assert as_nobody.startswith("/var/cache/spear/") and len(os.path.basename(as_nobody)) == 12
    assert as_nobody == default_cache_dir(data + "/", other_user=True)  # one per data dir
    assert default_cache_dir(data, other_user=False) == os.path.join(data, "cache")

    unused = os.path.join(cache, "unused")
    idle = runtime(unused)
    idle.collect()  # a node that never deployed a bundle makes no cache
    assert not os.path.exists(unused)
    run(idle.close())

    private = os.path.join(cache, "private")
    os.mkdir(private, 0o700)

    async def main():
        rt = runtime(os.path.join(private, "cache"))
        try:
            with pytest.raises(errors.Unavailable, match=r"cache_dir.*not reachable by nobody"):
                await rt.prepare(hspec(requirements=[]))
        finally:
            await rt.close()

    run(main())


def test_the_environments_stay_within_their_disk_budget(cache, run):
    # a tenant deploying one requirement set after another must not fill the disk
    version = tuple(sys.version_info[:2])
    root = os.path.join(cache, "envs")

    def size(key: str) -> int:
        with open(os.path.join(root, key, ABOUT)) as f:
            return json.load(f)["bytes"]

    home = os.path.join(cache, "home")  # the installer's: where its cache would go
    env = {k: v for k, v in child_env().items() if not k.startswith("XDG_")} | {"HOME": home}

    async def main():
        envs = PyEnvs(root, env=env, node=NODE)
        # finished builds judged here: the watch would stop b's whenever it ran over
        # its first measure (0.5 s, a loaded machine) and b would never count as built
        envs.watch_every = 3600.0
        a = await envs.acquire("a", sys.executable, version, ["humanize==4.9.0"])
        assert size(a) > 0
        envs.max_bytes = size(a) * 3 // 2  # room for one of these, not two
        for _ in range(2):  # a is in use: b cannot stay; asked again, it is not rebuilt
            with pytest.raises(errors.ResourceExhausted) as ei:
                await envs.acquire("b", sys.executable, version, ["humanize==4.8.0"])
            assert "envs_max_mb" in ei.value.message and "b:" in ei.value.message
            assert envs_in(cache) == [a] and envs.builds == 2  # a, and b once
        envs.release(a)  # unused now: b's build makes room by removing it
        b = await envs.acquire("b", sys.executable, version, ["humanize==4.8.0"])
        assert envs_in(cache) == [b]
        # a restarted node reads the sizes back (and measures an environment whose
        # size was never written); a full budget refuses before building
        with open(os.path.join(root, b, ABOUT)) as f:
            about = json.load(f)
        with open(os.path.join(root, b, ABOUT), "w") as f:
            json.dump({k: v for k, v in about.items() if k != "bytes"}, f)
        again = PyEnvs(root, env=env, node=NODE, max_bytes=about["bytes"])
        assert await again.acquire("b2", sys.executable, version, ["humanize==4.8.0"]) == b
        with pytest.raises(errors.ResourceExhausted) as ei:
            await again.acquire("c", sys.executable, version, ["humanize==4.7.0"])
        assert again.builds == 0 and ei.value.details["limit"] == "envs_max_mb"
        assert envs_in(cache) == [b]

    run(main())
    # no installer cache outside the budget, keeping every wheel ever installed
    assert not os.path.exists(os.path.join(home, ".cache")), os.listdir(os.path.join(home, ".cache"))


def test_a_build_that_outgrows_the_budget_or_the_free_disk_is_stopped_while_it_runs(cache, run):
    # one requirement set bigger than the whole budget must not be written out whole
    # (and removed after): the build is stopped once it passes what could be made room for
    version = tuple(sys.version_info[:2])
    root = os.path.join(cache, "envs")
    env = {k: v for k, v in child_env().items() if not k.startswith("XDG_")} | {
        "HOME": os.path.join(cache, "home")}

    async def main():
        envs = PyEnvs(root, env=env, node=NODE, max_bytes=4 << 20)
        envs.watch_every = 0.05
        with pytest.raises(errors.ResourceExhausted) as ei:
            await envs.acquire("big", sys.executable, version, ["numpy==1.26.4"])
        assert ei.value.details["limit"] == "envs_max_mb", ei.value
        assert ei.value.details["while_building"] is True
        assert "while it was built" in ei.value.message
        assert envs.builds == 0 and envs_in(cache) == []
        assert not [n for n in os.listdir(root) if n.startswith(".build-")]
        # the installer's downloads count too: they go under the build's own directory
        assert not os.path.exists(os.path.join(cache, "home", ".cache"))
        # a disk with less free space than the reserve: refused before any build
        free = shutil.disk_usage(root).free
        tight = PyEnvs(root, env=env, node=NODE, min_free_bytes=free + (1 << 30))
        with pytest.raises(errors.ResourceExhausted) as ei:
            await tight.acquire("small", sys.executable, version, ["humanize==4.9.0"])
        assert ei.value.details["limit"] == "envs_min_free_mb" and tight.builds == 0
        assert "free" in ei.value.message and envs_in(cache) == []

    run(main())


def test_unused_environments_are_removed_to_keep_the_free_disk_reserve(cache, run):
    # below envs_min_free_mb a build first removes unused environments (least recently
    # used first), as it does for the budget, rather than be refused while they stay
    from spear.runtimes.process.pyenvs import _disk_use

    version = tuple(sys.version_info[:2])
    root = os.path.join(cache, "envs")
    env = {k: v for k, v in child_env().items() if not k.startswith("XDG_")} | {
        "HOME": os.path.join(cache, "home")}
    disk = 100 << 30

    def free() -> int:  # a disk as big as `disk` that holds only the finished environments
        done = [n for n in os.listdir(root) if not n.startswith(".")] if os.path.isdir(root) else []
        return disk - sum(_disk_use(os.path.join(root, n)) for n in done)

    async def main():
        envs = PyEnvs(root, env=env, node=NODE)
        envs._free = free
        a = await envs.acquire("a", sys.executable, version, ["humanize==4.9.0"])
        envs.min_free_bytes = disk - 1  # any finished environment puts the disk below it
        with pytest.raises(errors.ResourceExhausted) as ei:  # a is in use: it stays
            await envs.acquire("b", sys.executable, version, ["humanize==4.8.0"])
        assert ei.value.details["limit"] == "envs_min_free_mb" and envs_in(cache) == [a]
        envs.release(a)  # unused now: b's build removes it first
        b = await envs.acquire("b", sys.executable, version, ["humanize==4.8.0"])
        assert envs_in(cache) == [b] and envs.builds == 2
        assert not [n for n in os.listdir(root) if n.startswith(".build-")]

    run(main())


def test_keeping_disk_free_spares_an_environment_taken_while_it_deletes(tmp_path):
    # below the free-disk reserve a build deletes unused environments one by one,
    # awaiting each deletion: an environment a prepare takes meanwhile (a concurrent
    # acquire of an existing one) must not be deleted under it
    root = tmp_path / "envs"
    for i, key in enumerate(("old", "taken")):
        (root / key / "bin").mkdir(parents=True)
        (root / key / LAST_USE).touch()
        os.utime(root / key / LAST_USE, (1000 + i, 1000 + i))
    envs = PyEnvs(str(root), min_free_bytes=1 << 62)  # never enough free disk

    async def main():
        envs._sizes = {"old": 1, "taken": 1}
        task = asyncio.create_task(envs._keep_free("f", "new"))
        await asyncio.sleep(0)  # it now deletes "old" in a thread
        envs._users["taken"] = 1  # what acquire does first for an existing environment
        await task

    asyncio.run(main())
    assert not (root / "old").exists()
    assert (root / "taken" / "bin").is_dir()
