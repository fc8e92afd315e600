"""Host access through grants: deny by default, attacked through
the Spearlet's deploy path with real wasmtime and real processes.

A node is laid out like a real one: a read-only host root ``srv/`` that also
holds the Spearlet's data directory, its key directory and its configuration
file, a writable root ``out/``, and a directory ``outside/`` that is no root.
The in-process tests deploy through :class:`Runner` built on a
:class:`RuntimeManager` the way the Spearlet builds them; the last ones go
through a real Spearlet subprocess, by direct deploy and by SMS dispatch.
The chokepoint itself is attacked in test_hostpaths.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from spear import Client, errors, protocol as P
from spear.cluster import Cluster
from spear.config import load_config
from spear.runtimes import RuntimeManager
from spear.spearlet.runner import Runner
from tests.helpers import EXAMPLES

READFILE = (EXAMPLES / "tests" / "readfile.wat").read_bytes()

#: a WASI command that creates "out.txt" in its first preopened directory and
#: writes "written" to it; exit 2 if the open fails (a read-only preopen)
WRITEFILE = b"""(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "out.txt")
  (data (i32.const 96) "written")
  (func (export "_start")
    ;; path_open(dirfd=3, dirflags=0, "out.txt", oflags=CREAT|TRUNC,
    ;;           rights=fd_write, inheriting=0, fdflags=0, &fd at 32)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 7)
          (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 32))
      (then (call $proc_exit (i32.const 2))))
    (i32.store (i32.const 0) (i32.const 96))
    (i32.store (i32.const 4) (i32.const 7))
    (if (call $fd_write (i32.load (i32.const 32)) (i32.const 0) (i32.const 1) (i32.const 24))
      (then (call $proc_exit (i32.const 3)))))
)"""


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class Host:
    """The directories of one node (see the module docstring)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.srv = base / "srv"
        self.data = self.srv / "files"  # what functions are meant to read
        self.spearlet = self.srv / "spearlet"  # the Spearlet's data directory
        self.keys = self.srv / "keys"
        self.etc = self.srv / "etc"
        self.cache = self.srv / "cache"  # the process runtime's code and environment cache
        self.out = base / "out"
        self.outside = base / "outside"
        for d in (self.data, self.spearlet / "wasm-cache", self.keys, self.etc, self.out, self.outside,
                  self.cache / "code"):
            d.mkdir(parents=True)
        (self.data / "secret.txt").write_bytes(b"allowed data")
        (self.outside / "secret.txt").write_bytes(b"HOST SECRET")
        (self.keys / "node.key_secret").write_bytes(b"NODE KEY")
        (self.data / "escape").symlink_to(self.outside)
        (self.data / "to-keys").symlink_to(self.keys)
        self.config_file = self.etc / "spear.toml"
        self.config_file.write_text(
            f'[spearlet]\ndata = "{self.spearlet}"\n'
            f'host_roots = ["{self.srv}", "{self.out}:rw"]\n'
            f'[security]\nkey = "{self.keys / "node.key_secret"}"\n'
            '[runtimes.process]\nuser = ""\n'  # tmp_path is out of nobody's reach
            f'cache_dir = "{self.cache}"\n'
            '[runtimes.docker]\nenabled = false\n')


@pytest.fixture
def host(tmp_path) -> Host:
    return Host(tmp_path)


async def node(host: Host) -> Runner:
    """The Spearlet's deploy path, wired as the daemon wires it (no sockets)."""
    config = load_config(host.config_file, env={})
    rm = RuntimeManager(config, config.spearlet.data, "node-1", config_file=str(host.config_file))
    await rm.probe()
    assert {"wasm", "process"} <= set(rm.runtimes), rm.unavailable
    return Runner(rm, "node-1")


async def invoke(fs: Runner, name: str) -> bytes:
    d = fs.get(name)
    inst = await d.runtime.create_instance(d.prepared)
    try:
        return (await d.runtime.invoke(inst, b"", [], P.Limits())).output
    finally:
        await d.runtime.destroy(inst)


def wasm(grant: str, artifact: bytes = READFILE, name: str = "fn") -> P.FunctionSpec:
    return P.FunctionSpec(name=name, runtime="wasm", artifact=artifact, grants=[grant])


async def refused(fs: Runner, spec: P.FunctionSpec) -> errors.PermissionDenied:
    with pytest.raises(errors.PermissionDenied) as ei:
        await fs.deploy(spec)
    assert spec.name not in fs.deployments
    return ei.value


def in_process(host: Host, body) -> None:
    async def main():
        fs = await node(host)
        try:
            await body(fs)
        finally:
            await fs.close()
            await fs.runtimes.close()

    run(main())


# ------------------------------------------------------------- refused


def test_dir_slash_is_refused(host):
    async def body(fs):
        for grant in ("dir:/", "dir:/:/host", "dir:/:/host:ro", "dir:/:/host:rw"):
            e = await refused(fs, wasm(grant))
            assert repr(grant) in e.message
            assert f"{host.srv} (ro)" in e.message and f"{host.out} (rw)" in e.message
            assert e.code == "PERMISSION_DENIED"

    in_process(host, body)


def test_an_absolute_directory_outside_the_roots_is_refused(host):
    async def body(fs):
        for grant in ("dir:/etc", f"dir:{host.outside}", f"dir:{host.outside}:/data:ro",
                      f"dir:{host.base}", "dir:/definitely/not/here"):
            e = await refused(fs, wasm(grant))
            assert "outside the host roots" in e.message and repr(grant) in e.message

    in_process(host, body)


def test_dotdot_escapes_are_refused(host):
    async def body(fs):
        for grant in (f"dir:{host.srv}/../outside", f"dir:{host.data}/../../outside:/d:ro",
                      f"dir:{host.srv}/files/../../../../etc"):
            await refused(fs, wasm(grant))

    in_process(host, body)


def test_a_symlink_inside_a_root_pointing_outside_is_refused(host):
    async def body(fs):
        for grant in (f"dir:{host.data}/escape", f"dir:{host.data}/escape:/data:ro",
                      f"dir:{host.data}/escape/."):
            e = await refused(fs, wasm(grant))
            assert str(host.outside) not in e.message.replace(repr(grant), "")

    in_process(host, body)


def test_the_spearlets_data_key_config_and_cache_dirs_are_refused_inside_a_root(host):
    # the code cache holds every tenant's unpacked code and environments
    async def body(fs):
        for d in (host.spearlet, host.spearlet / "wasm-cache", host.keys, host.etc,
                  host.data / "to-keys", host.cache, host.cache / "code"):
            e = await refused(fs, wasm(f"dir:{d}:/data:ro"))
            assert "never granted" in e.message and f"{host.srv} (ro)" in e.message
        # the root holds them, so it cannot be granted whole either
        e = await refused(fs, wasm(f"dir:{host.srv}:/data:ro"))
        assert "contains" in e.message

    in_process(host, body)


def test_a_writable_grant_under_a_read_only_root_is_refused(host):
    async def body(fs):
        e = await refused(fs, wasm(f"dir:{host.data}:/data:rw", WRITEFILE))
        assert "read-only" in e.message and repr(f"dir:{host.data}:/data:rw") in e.message
        # limits.read_only makes the same grant read-only: then it is allowed
        ro = P.FunctionSpec(name="ro", runtime="wasm", artifact=READFILE,
                            grants=[f"dir:{host.data}:/data:rw"], limits=P.Limits(read_only=True))
        await fs.deploy(ro)
        assert await invoke(fs, "ro") == b"allowed data"

    in_process(host, body)


def test_a_process_workdir_outside_the_roots_is_refused(host):
    async def body(fs):
        for workdir in ("/", "/etc", str(host.outside), f"{host.srv}/../outside",
                        str(host.data / "escape"), str(host.spearlet), str(host.keys)):
            spec = P.FunctionSpec(name="p", runtime="process", command=["pwd"], workdir=workdir)
            e = await refused(fs, spec)
            assert f"workdir {workdir!r}" in e.message and f"{host.srv} (ro)" in e.message
        # inside a root: it runs there (in the resolved directory)
        await fs.deploy(P.FunctionSpec(name="p", runtime="process", command=["pwd"],
                                       workdir=f"{host.data}/../files"))
        assert (await invoke(fs, "p")).strip() == str(host.data).encode()

    in_process(host, body)


# ------------------------------------------------------------- allowed


def test_an_allowed_grant_reads_and_a_read_only_root_is_not_written(host):
    async def body(fs):
        await fs.deploy(wasm(f"dir:{host.data}:/data", name="read"))
        assert await invoke(fs, "read") == b"allowed data"
        # no mode is read-only: the guest cannot create a file there
        await fs.deploy(wasm(f"dir:{host.data}:/data", WRITEFILE, name="write-ro"))
        with pytest.raises(errors.FunctionError) as ei:
            await invoke(fs, "write-ro")
        assert ei.value.details["exit_code"] == 2
        assert not (host.data / "out.txt").exists()
        # a writable root takes an rw grant
        await fs.deploy(wasm(f"dir:{host.out}:/out:rw", WRITEFILE, name="write-rw"))
        await invoke(fs, "write-rw")
        assert (host.out / "out.txt").read_bytes() == b"written"

    in_process(host, body)


def test_the_granted_directory_is_the_one_checked_at_deploy(host):
    """Swapping a symlink to the outside in after the deploy reaches nothing."""
    async def body(fs):
        granted = host.srv / "files2"
        granted.mkdir()
        (granted / "secret.txt").write_bytes(b"checked")
        await fs.deploy(wasm(f"dir:{granted}:/data", name="read"))
        granted.rename(host.srv / "files3")
        granted.symlink_to(host.outside)
        assert await invoke(fs, "read") == b"checked"

    in_process(host, body)


def test_a_process_functions_scratch_directory_is_never_granted(host):
    # a wasm function runs inside the Spearlet: with a grant of another function's
    # scratch directory (its cwd, first on its sys.path) it could plant code there
    async def body(fs):
        await fs.deploy(P.FunctionSpec(name="py", runtime="process", command=["cat"]))
        d = fs.get("py")
        inst = await d.runtime.create_instance(d.prepared)
        try:
            scratch = Path(inst.handle.tmpdir)
            assert scratch.is_relative_to(host.cache)  # not the system's temporary directory
            e = await refused(fs, wasm(f"dir:{scratch}:/d:ro"))
            assert "code cache" in e.message
        finally:
            await d.runtime.destroy(inst)

    in_process(host, body)


# ------------------------------------------------------- a real Spearlet


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SMS + one Spearlet; its data and config directories lie inside its only root."""
    base = tmp_path_factory.mktemp("grants")
    files = base / "files"
    files.mkdir()
    (files / "secret.txt").write_bytes(b"allowed data")
    (base / "etc").mkdir()
    config = base / "etc" / "spearlet.toml"
    config.write_text("[runtimes.docker]\nenabled = false\n")
    c = Cluster(base / "cluster", spearlets=1, spearlet_config=str(config), host_roots=[str(base)],
                heartbeat_interval=0.2, heartbeat_timeout=2.0)
    try:
        c.start(wait=30)
        yield c, base
    finally:
        c.stop()


def test_a_real_spearlet_refuses_on_direct_deploy(cluster):
    c, base = cluster
    addr = c.spearlet_addrs[0]
    with Client(c.sms_addr, timeout=20) as cl:
        for grant in ("dir:/", "dir:/etc", f"dir:{base}/files/../..", f"dir:{base}",
                      f"dir:{base}/cluster/spearlet-1:/d:ro", f"dir:{base}/etc:/d:ro",
                      f"dir:{base}/files:/d:rw",
                      # the cluster's other directories: the SMS store, a sibling node's data
                      f"dir:{base}/cluster/sms:/d:ro", f"dir:{base}/cluster:/d:ro"):
            with pytest.raises(errors.PermissionDenied) as ei:
                cl.deploy(wasm(grant, name="bad"), node=addr)
            assert repr(grant) in ei.value.message and f"{base} (ro)" in ei.value.message
        cl.deploy(wasm(f"dir:{base}/files:/data", name="good"), node=addr)
        r = cl.invoke("good", node=addr)
        assert r.ok and r.output == b"allowed data", r.info.error


def test_a_real_spearlet_refuses_on_dispatch_from_the_sms(cluster):
    c, base = cluster
    with Client(c.sms_addr, timeout=20) as cl:
        cl.deploy(wasm("dir:/:/host", name="root-fs"))
        r = cl.invoke("root-fs", timeout=20)
        assert not r.ok and r.info.error.code == "PERMISSION_DENIED", r.info
        assert "dir:/:/host" in r.info.error.message
        cl.deploy(P.FunctionSpec(name="pwd", runtime="process", command=["pwd"], workdir="/etc"))
        r = cl.invoke("pwd", timeout=20)
        assert not r.ok and r.info.error.code == "PERMISSION_DENIED", r.info
        cl.deploy(wasm(f"dir:{base}/files:/data", name="ok-fs"))
        r = cl.invoke("ok-fs", timeout=20)
        assert r.ok and r.output == b"allowed data", r.info.error
