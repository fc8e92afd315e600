"""The process runtime's sandbox, with real processes (docs/sandbox.md).

When the Spearlet runs as root, functions run as ``nobody`` (no supplementary
groups) and, unless ``limits.network`` is true, in a new, empty network
namespace. These tests need root: without it they skip, except in CI
(``CI=true``), where skipping would hide a broken sandbox, so they fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

import psutil
import pytest

from spear import errors
from spear.protocol import FunctionSpec, Limits
from spear.runtimes.hostpaths import HostPaths
from spear.runtimes.process import ProcessRuntime, spec as process_spec
from spear.runtimes.process.sandbox import SYSTEM_PATH, probe_isolation, resolve_user

from .test_process import descendants, gone

HELPERS = Path(__file__).resolve().parent / "helpers"
#: a workdir is a host path: the handlers' shared directory and tmp_path are under this root
TMP = HostPaths([tempfile.gettempdir()])
PY_CODE_CONNECT = (
    "import socket, sys\n"
    "socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5).close()\n"
    "print('connected')\n"
)


def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the sandbox tests must run as root in CI (CI=true): they would prove nothing")
        pytest.skip("the process sandbox (user switch, network namespace) needs root")


@pytest.fixture(autouse=True)
def as_root():
    _need_root()


def nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def spec(name: str = "f", **kw) -> FunctionSpec:
    return FunctionSpec(name=name, runtime="process", **kw)


async def start(rt: ProcessRuntime, s: FunctionSpec):
    return await rt.create_instance(await rt.prepare(s))



def new_descendants(before: set[int]) -> list[psutil.Process]:
    return [p for p in descendants() if p.pid not in before]


@pytest.fixture(autouse=True)
def no_leftovers():
    """Every process a test starts is gone at its end (others' leftovers are not ours)."""
    before = {p.pid for p in descendants()}
    yield before
    assert gone([p.pid for p in new_descendants(before)]), new_descendants(before)


@pytest.fixture
def shared():
    """A world-readable directory holding the test handlers (the checkout may not be)."""
    d = tempfile.mkdtemp(prefix="spear-sandbox-test-")
    os.chmod(d, 0o755)
    for name, mode in (("sandboxhandlers.py", 0o644), ("upper_worker.sh", 0o755)):
        shutil.copy(HELPERS / name, d)
        os.chmod(os.path.join(d, name), mode)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def secret_file():
    """A key file like the Spearlet's CURVE secret: root-owned, mode 0600, in a readable dir."""
    d = tempfile.mkdtemp(prefix="spear-keys-")
    os.chmod(d, 0o755)
    value = "SECRET-" + secrets.token_hex(16)
    path = os.path.join(d, "node.key_secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, value.encode())
    os.close(fd)
    assert os.stat(path).st_uid == 0 and os.stat(path).st_mode & 0o777 == 0o600
    yield path, value
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1; ``accepted()`` says whether anyone connected."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    conns: list[socket.socket] = []

    def accepted() -> int:
        while True:
            try:
                conn, _ = srv.accept()
            except BlockingIOError:
                return len(conns)
            conns.append(conn)

    yield srv.getsockname()[1], accepted
    for c in conns:
        c.close()
    srv.close()


def handler(name: str, shared: str, **kw) -> FunctionSpec:
    return spec(name.replace(":", "-"), handler=name, workdir=shared, **kw)


def python3() -> list[str]:
    """``python3`` as the functions' PATH finds it: the test's own interpreter may be
    somewhere nobody cannot reach (a pyenv under /root)."""
    return ["python3"]


# ----------------------------------------------------------------- secrets


def test_functions_cannot_read_the_spearlets_key_file(secret_file, shared):
    path, value = secret_file

    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        cat = await start(rt, spec(command=["cat", path]))
        with pytest.raises(errors.FunctionError) as info:
            await rt.invoke(cat, b"", [], Limits())
        assert "Permission denied" in info.value.details["stderr"]
        assert value not in json.dumps(info.value.details) and value not in info.value.message
        reader = await start(rt, handler("sandboxhandlers:read", shared))
        logs: list[bytes] = []
        with pytest.raises(errors.FunctionError) as info:
            await rt.invoke(reader, path.encode(), [], Limits(), logs.append)
        assert info.value.details["type"] == "PermissionError"
        assert value not in info.value.message and value.encode() not in b"".join(logs)
        assert reader.reusable  # a handler error is not a crash
        # the Spearlet's own environment and memory are out of reach too
        environ = await start(rt, spec(command=["cat", f"/proc/{os.getpid()}/environ"]))
        with pytest.raises(errors.FunctionError):
            await rt.invoke(environ, b"", [], Limits())
        signal = await start(rt, spec(command=["kill", "-0", str(os.getpid())]))
        with pytest.raises(errors.FunctionError):
            await rt.invoke(signal, b"", [], Limits())
        # a file the function may read is fine: the failure above is the sandbox
        ok = await start(rt, spec(command=["cat", os.path.join(shared, "sandboxhandlers.py")]))
        assert b"def read" in (await rt.invoke(ok, b"", [], Limits())).output
        await rt.close()

    run(main())


def test_the_spearlets_environment_never_reaches_functions(monkeypatch):
    monkeypatch.setenv("SPEAR_TEST_SECRET", "hunter2")

    async def main():
        rt = ProcessRuntime()
        env = await start(rt, spec(command=["env"]))
        out = (await rt.invoke(env, b"", [], Limits())).output.decode()
        assert "hunter2" not in out and "SPEAR_TEST_SECRET" not in out
        await rt.close()

    run(main())


def test_loader_variables_never_reach_the_root_run_wrapper():
    """LD_PRELOAD & co. in spec.env must act only after the switch to nobody.

    The dynamic loader writes LD_DEBUG_OUTPUT files as whoever it runs as: a
    file owned by root would mean the root-run unshare honoured the function's
    loader variables (and LD_PRELOAD would have run the function's code as root).
    """
    out_dir = tempfile.mkdtemp(prefix="spear-ld-")
    try:
        os.chmod(out_dir, 0o1777)
        env = {"LD_DEBUG": "libs", "LD_DEBUG_OUTPUT": os.path.join(out_dir, "ld"), "KEEP": "me"}

        async def main():
            rt = ProcessRuntime()
            inst = await start(rt, spec(command=["sh", "-c", "echo $LD_DEBUG $KEEP"], env=env))
            assert (await rt.invoke(inst, b"", [], Limits())).output == b"libs me\n"
            await rt.close()

        run(main())
        made = os.listdir(out_dir)
        assert made, "the loader saw no LD_DEBUG at all"
        owners = {os.stat(os.path.join(out_dir, f)).st_uid for f in made}
        assert owners == {nobody()[0]}, owners
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


# ----------------------------------------------------------------- identity


def test_functions_run_as_nobody_without_groups(shared):
    uid, gid = nobody()

    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        assert rt.sandbox_user is not None and rt.sandbox_user.uid == uid
        ident = await start(rt, spec(command=["id", "-u"]))
        assert (await rt.invoke(ident, b"", [], Limits())).output.strip() == str(uid).encode()
        groups = await start(rt, spec(command=["sh", "-c", "id -g; grep '^Groups:' /proc/self/status"]))
        out = (await rt.invoke(groups, b"", [], Limits())).output.decode().split("\n")
        assert out[0] == str(gid) and out[1].split(":")[1].strip() == ""
        who = await start(rt, handler("sandboxhandlers:whoami", shared))
        me = json.loads((await rt.invoke(who, b"", [], Limits())).output)
        assert me["uid"] == me["euid"] == uid and me["gid"] == gid
        assert set(me["groups"]) <= {gid}
        # network=true changes the namespace, not the user
        net = await start(rt, spec(command=["id", "-u"], limits=Limits(network=True)))
        assert (await rt.invoke(net, b"", [], Limits())).output.strip() == str(uid).encode()
        await rt.close()

    run(main())


def test_temporary_workdir_belongs_to_the_function(shared):
    uid, _ = nobody()

    async def main():
        rt = ProcessRuntime()
        inst = await start(rt, handler("sandboxhandlers:touch", "", env={"PYTHONPATH": shared}))
        made = json.loads((await rt.invoke(inst, b"", [], Limits())).output)
        assert made["owner"] == uid
        where = os.path.dirname(made["path"])
        assert os.stat(where).st_uid == uid and os.stat(where).st_mode & 0o777 == 0o700
        await rt.destroy(inst)
        assert not os.path.exists(where)
        await rt.close()

    run(main())


def test_explicit_user_and_no_user(shared):
    async def main():
        named = ProcessRuntime(user="nobody")
        inst = await start(named, spec(command=["id", "-un"]))
        assert (await named.invoke(inst, b"", [], Limits())).output.strip() == b"nobody"
        await named.close()
        # user=None: functions run as the Spearlet's user, but still without network
        same = ProcessRuntime(user=None)
        assert same.sandbox_user is None
        inst = await start(same, spec(command=["id", "-u"]))
        assert (await same.invoke(inst, b"", [], Limits())).output.strip() == b"0"
        lo = await start(same, spec(command=["cat", "/proc/net/dev"]))
        out = (await same.invoke(lo, b"", [], Limits())).output.decode()
        assert [line.split(":")[0].strip() for line in out.splitlines()[2:]] == ["lo"]
        await same.close()

    run(main())
    with pytest.raises(ValueError, match="not root"):
        resolve_user("nobody", 1000)
    with pytest.raises(ValueError, match="no such user"):
        resolve_user("no-such-user-here", 0)
    assert resolve_user("auto", 1000) is None and resolve_user("", 0) is None
    with pytest.raises(ValueError, match="needs a Spearlet running as root"):
        resolve_user("per-function", 1000)  # never silently the Spearlet's own user


# ----------------------------------------------------------------- network


def test_no_network_unless_the_function_says_so(listener, shared):
    port, accepted = listener

    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        denied = await start(rt, spec(command=[*python3(), "-c", PY_CODE_CONNECT, str(port)]))
        with pytest.raises(errors.FunctionError) as info:
            await rt.invoke(denied, b"", [], Limits())
        assert "Network is unreachable" in info.value.details["stderr"]
        h = await start(rt, handler("sandboxhandlers:connect", shared))
        with pytest.raises(errors.FunctionError) as info:
            await rt.invoke(h, f"127.0.0.1:{port}".encode(), [], Limits())
        assert "unreachable" in info.value.message
        assert accepted() == 0
        # limits.network = true: the same function reaches the listener
        allowed = await start(
            rt, spec(command=[*python3(), "-c", PY_CODE_CONNECT, str(port)], limits=Limits(network=True))
        )
        assert (await rt.invoke(allowed, b"", [], Limits())).output == b"connected\n"
        h2 = await start(rt, handler("sandboxhandlers:connect", shared, limits=Limits(network=True)))
        assert (await rt.invoke(h2, f"127.0.0.1:{port}".encode(), [], Limits())).output == b"connected"
        await asyncio.sleep(0.05)
        assert accepted() == 2
        await rt.close()

    run(main())


def test_each_function_gets_an_empty_namespace():
    async def main():
        rt = ProcessRuntime()
        # the three live at once (a namespace's inode number is reused once it is
        # freed): each says it is up on stderr, then waits for the go file
        gate = tempfile.mkdtemp(prefix="spear-ns-")
        os.chmod(gate, 0o755)
        go = os.path.join(gate, "go")
        show = ["sh", "-c", "readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1; "
                f"echo up >&2; until [ -e {go} ]; do sleep 0.02; done"]
        a = await start(rt, spec(command=show))
        b = await start(rt, spec(command=show))
        ups: list[bytes] = []
        calls = asyncio.gather(*(rt.invoke(i, b"", [], Limits(timeout=20), ups.append)
                                 for i in (a, a, b)))
        while b"".join(ups).count(b"up") < 3:
            await asyncio.sleep(0.02)
        open(go, "w").close()
        first, again, other = (o.output.decode().split() for o in await calls)
        shutil.rmtree(gate, ignore_errors=True)
        mine = os.readlink("/proc/self/ns/net")
        assert first[1:] == ["lo"] and len({first[0], again[0], other[0], mine}) == 4
        ip = shutil.which("ip")
        if ip:  # the loopback is down, so not even the namespace's own 127.0.0.1 works
            link = await start(rt, spec(command=[ip, "-o", "link", "show", "lo"]))
            assert b"state DOWN" in (await rt.invoke(link, b"", [], Limits())).output
        await rt.close()

    run(main())


def test_without_isolation_functions_denied_network_are_refused(caplog):
    async def main():
        strict = ProcessRuntime()
        strict.sandbox.unshare = None  # as on a host where no namespace can be made
        with pytest.raises(errors.Unavailable, match="limits.network=true"):
            await strict.prepare(spec(command=["true"]))
        ok, why = await strict.network_isolation()
        assert not ok and "unshare" in why
        # a function that asks for network is still fine (run through subprocess's user=)
        inst = await start(strict, spec(command=["id", "-u"], limits=Limits(network=True)))
        out = (await strict.invoke(inst, b"", [], Limits())).output.strip()
        assert out == str(nobody()[0]).encode()
        await strict.close()
        lenient = ProcessRuntime(strict_network=False)
        lenient.sandbox.unshare = None
        with caplog.at_level(logging.WARNING, logger="spear.runtimes.process"):
            for _ in range(2):
                inst = await start(lenient, spec(command=["cat", "/proc/net/dev"]))
                out = (await lenient.invoke(inst, b"", [], Limits())).output.decode()
                assert len(out.splitlines()) >= 3  # the host's interfaces: network allowed
        warnings = [r for r in caplog.records if "HAVE network" in r.getMessage()]
        assert len(warnings) == 1
        await lenient.close()

    run(main())


def test_isolation_probe_with_user_namespaces():
    """The unprivileged variant (user namespace) works on this kernel, as root too."""
    unshare = shutil.which("unshare", path=SYSTEM_PATH)
    assert unshare, "util-linux unshare is needed for the sandbox"
    prefix, why = probe_isolation(unshare, root=False)
    assert prefix is not None and "--user" in prefix, why
    assert probe_isolation(None, root=True)[0] is None


# ------------------------------------------------------- what it may reach


def test_workdir_and_command_must_be_reachable_by_the_sandbox_user(tmp_path):
    private = tmp_path / "private"  # pytest's tmp_path is under a 0700 directory
    private.mkdir()
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    hidden_dir = tempfile.mkdtemp(prefix="spear-hidden-")
    try:
        os.chmod(hidden_dir, 0o755)
        unreadable = os.path.join(hidden_dir, "run.sh")
        with open(unreadable, "w") as f:
            f.write("#!/bin/sh\necho hi\n")
        os.chmod(unreadable, 0o711)  # executable but not readable: a script cannot run

        async def main():
            rt = ProcessRuntime(host_paths=TMP)
            with pytest.raises(errors.InvalidArgument, match="not accessible to nobody"):
                await rt.prepare(spec(command=["pwd"], workdir=str(private)))
            for cmd in (str(script), unreadable):
                with pytest.raises(errors.InvalidArgument, match="cannot be run by nobody"):
                    await rt.prepare(spec(command=[cmd]))
            # the same specs are fine when functions run as root
            root = ProcessRuntime(user=None, host_paths=TMP)
            inst = await start(root, spec(command=["pwd"], workdir=str(private)))
            assert (await root.invoke(inst, b"", [], Limits())).output.strip() == str(private).encode()
            await root.close()
            await rt.close()

        run(main())
    finally:
        shutil.rmtree(hidden_dir, ignore_errors=True)


def test_pyworker_is_copied_where_the_sandbox_user_can_read_it(monkeypatch, shared):
    hidden = tempfile.mkdtemp(prefix="spear-hidden-")  # mode 0700
    try:
        copy = os.path.join(hidden, "pyworker.py")
        shutil.copy(process_spec.PYWORKER, copy)
        monkeypatch.setattr(process_spec, "PYWORKER", copy)

        async def main():
            rt = ProcessRuntime(host_paths=TMP)
            inst = await start(rt, handler("sandboxhandlers:whoami", shared))
            assert json.loads((await rt.invoke(inst, b"", [], Limits())).output)["uid"] == nobody()[0]
            used = inst.handle.plan.argv[inst.handle.plan.argv.index("--") + 2]
            assert used != copy and os.path.isfile(used)
            await rt.close()
            assert not os.path.exists(used)

        run(main())
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


# -------------------------------------------------------- pooled workers


def test_pooled_workers_are_reused_under_the_sandbox(shared, listener):
    port, accepted = listener
    uid = nobody()[0]

    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        inst = await start(rt, handler("sandboxhandlers:whoami", shared))
        pid = inst.handle.pid
        for _ in range(5):
            out = await rt.invoke(inst, b"", [], Limits())
            me = json.loads(out.output)
            assert me["pid"] == pid and me["uid"] == uid
            assert inst.reusable and out.usage.peak_memory > 0
        assert psutil.Process(pid).uids().real == uid
        conn = await start(rt, handler("sandboxhandlers:connect", shared))
        for _ in range(2):  # an error reply keeps the worker
            with pytest.raises(errors.FunctionError):
                await rt.invoke(conn, f"127.0.0.1:{port}".encode(), [], Limits())
            assert conn.reusable
        assert accepted() == 0
        # a bash worker speaking the framed protocol, sandboxed the same way
        bash = await start(rt, spec(command=[os.path.join(shared, "upper_worker.sh")], mode="pooled"))
        first = (await rt.invoke(bash, b"pid", [], Limits())).output
        assert (await rt.invoke(bash, b"pid", [], Limits())).output == first
        assert int(first) == bash.handle.pid and psutil.Process(int(first)).uids().real == uid
        assert (await rt.invoke(bash, b"hi", [], Limits())).output == b"HI"
        # limits still apply: a timeout kills the sandboxed worker, which is not reused
        sleeper = await start(rt, handler("sandboxhandlers:sleep", shared))
        with pytest.raises(errors.DeadlineExceeded):
            await rt.invoke(sleeper, b"30", [], Limits(timeout=0.5))
        assert not sleeper.reusable
        await rt.close()

    run(main())


def test_a_function_cannot_read_another_functions_worker(shared):
    # both run as nobody: without more, one reads the other's environment (its
    # secrets), memory map and descriptors through /proc
    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        victim = await start(rt, handler("sandboxhandlers:whoami", shared,
                                         env={"API_TOKEN": "s3cr3t"}))
        thief = await start(rt, handler("sandboxhandlers:peek", shared))
        try:
            await rt.invoke(victim, b"", [], Limits())
            seen = json.loads((await rt.invoke(thief, str(victim.handle.pid).encode(), [],
                                               Limits())).output)
            mine = json.loads((await rt.invoke(thief, str(thief.handle.pid).encode(), [],
                                               Limits())).output)
        finally:
            await rt.close()
        return seen, mine

    seen, mine = run(main())
    assert seen == {"environ": "PermissionError", "maps": "PermissionError",
                    "fd": "PermissionError"}, seen
    # its own map and descriptors it still reads (its /proc/self/environ is root's now:
    # os.environ is where a handler reads its variables)
    assert mine["maps"] > 0 and mine["fd"] > 0, mine


def test_nothing_is_left_behind(shared, no_leftovers):
    before = no_leftovers

    async def main():
        rt = ProcessRuntime(host_paths=TMP)
        insts = [await start(rt, handler("sandboxhandlers:whoami", shared)) for _ in range(3)]
        sleepy = await start(rt, spec(command=["sh", "-c", "sleep 30 & sleep 30"]))
        task = asyncio.create_task(rt.invoke(sleepy, b"", [], Limits()))
        await asyncio.sleep(0.3)
        pids = [i.handle.pid for i in insts] + [p.pid for p in new_descendants(before)]
        assert len(pids) >= 5  # three workers, sh and its background sleep
        timed = await start(rt, spec(command=["sleep", "30"]))
        with pytest.raises(errors.DeadlineExceeded):
            await rt.invoke(timed, b"", [], Limits(timeout=0.3))
        await rt.close()
        with pytest.raises((errors.SpearError, asyncio.CancelledError)):
            await task
        assert gone(pids), pids
        assert gone([p.pid for p in new_descendants(before)], wait=0)

    run(main())


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def test_per_function_users_keep_functions_apart(shared):
    # with one sandbox user for all (the default), a function may signal any other
    # function's processes and read a command's environment (its secrets); with a
    # user of its own per function ([runtimes.process] user = "per-function") neither
    async def main():
        out = {}
        for mode in ("auto", "per-function"):
            rt = ProcessRuntime(host_paths=TMP, user=mode)
            victim = await start(rt, spec("victim", mode="pooled", env={"API_TOKEN": "s3cr3t"},
                                          command=[os.path.join(shared, "upper_worker.sh")]))
            thief = await start(rt, handler("sandboxhandlers:probe", shared))
            toucher = await start(rt, handler("sandboxhandlers:touch", "", env={"PYTHONPATH": shared}))
            try:
                assert (await rt.invoke(victim, b"x", [], Limits())).output == b"X"
                pid = victim.handle.pid
                seen = json.loads((await rt.invoke(thief, str(pid).encode(), [], Limits())).output)
                seen["victim_uid"] = _uid_of(pid)
                seen["touched"] = json.loads((await rt.invoke(toucher, b"", [], Limits())).output)
                seen["toucher_uid"] = _uid_of(toucher.handle.pid)
                again = await start(rt, handler("sandboxhandlers:probe", shared))
                seen["again_uid"] = _uid_of(again.handle.pid)
            finally:
                await rt.close()
            out[mode] = seen
        return out

    out = run(main())
    shared_user, own = out["auto"], out["per-function"]
    assert shared_user["signal"] == "ok" and isinstance(shared_user["environ"], int), shared_user
    assert shared_user["uid"] == shared_user["victim_uid"] == nobody()[0]
    assert own["signal"] == "PermissionError" and own["environ"] == "PermissionError", own
    uids = {own["uid"], own["victim_uid"], own["toucher_uid"]}
    assert len(uids) == 3 and nobody()[0] not in uids and 0 not in uids, own
    assert own["again_uid"] == own["uid"]  # one user per function, not per instance
    assert own["gid"] == own["uid"]
    # no passwd entry: USER and LOGNAME name it (getpass.getuser() reads them first)
    assert own["user"] == f"spear-{own['uid']}" and shared_user["user"] == "nobody"
    # its scratch directory and what it makes there are its own
    assert own["touched"]["owner"] == own["toucher_uid"]


def _colliding_names() -> tuple[str, str]:
    """Two function names drawn to the same per-function uid (a birthday search: ~2^14 names)."""
    from spear.runtimes.process.sandbox import function_uid

    seen: dict[int, str] = {}
    i = 0
    while True:
        name = f"f{i}"
        uid = function_uid(name)
        if uid in seen:
            return seen[uid], name
        seen[uid] = name
        i += 1


def test_per_function_uids_do_not_change_hands(tmp_path):
    # two names drawn to the same uid: whichever comes first must not decide who owns
    # it, or after a restart (or on a second Spearlet sharing this host's cache) the
    # other function runs as the uid that owns the first one's files in a host grant
    from spear.runtimes.process.sandbox import Sandbox, User

    a, b = _colliding_names()
    nobody_ = User("nobody", *nobody())
    owners: dict[int, set[str]] = {}
    for order in ((a, b), (b, a)):  # a first, then b first after a "restart"
        sb = Sandbox(nobody_, per_function=True)
        sb.claims = str(tmp_path / "uids")
        for name in order:
            try:
                owners.setdefault(sb.user_for(name).uid, set()).add(name)
            except errors.InvalidArgument as exc:
                assert "uid" in str(exc)
    assert all(len(names) == 1 for names in owners.values()), owners
    # the runtime keeps the record with its cache (a default cache: in their shared parent)
    rt = ProcessRuntime(host_paths=TMP, user="per-function", cache_dir=str(tmp_path / "c"))
    try:
        assert rt.sandbox.claims == str(tmp_path / "c" / "uids")
    finally:
        asyncio.run(rt.close())


def test_per_function_users_cannot_list_the_code_cache():
    # every tenant's bundle is unpacked under <cache>/code/<sha256> and readable by all
    # (bundles are shared by digest): with a user per function, the digests must not
    # be listable, or any function reads any other's code
    rt = ProcessRuntime(host_paths=TMP, user="per-function")
    try:
        rt._caches()
        mode = os.stat(os.path.join(rt.cache_dir, "code")).st_mode & 0o777
        assert mode == 0o711, oct(mode)
    finally:
        asyncio.run(rt.close())


def test_per_function_users_do_not_share_a_home():
    # HOME is where Python (user site-packages: usercustomize, .pth files), pip, git and
    # most tools read code or settings from: a HOME shared by all functions lets one
    # function run code as any other function's user
    home = tempfile.mkdtemp(prefix="spear-home-")
    os.chmod(home, 0o1777)  # as /tmp, the default HOME of functions
    plant = ("import os, site; d = site.getusersitepackages(); os.makedirs(d, exist_ok=True); "
             "open(os.path.join(d, 'usercustomize.py'), 'w').write('print(\"PLANTED\")')")

    async def main():
        rt = ProcessRuntime(host_paths=TMP, user="per-function",
                            base_env={**process_spec.DEFAULT_ENV, "HOME": home})
        try:
            planter = await start(rt, spec("planter", command=[*python3(), "-c", plant]))
            await rt.invoke(planter, b"", [], Limits())
            victim = await start(rt, spec("victim", command=[*python3(), "-c", "print('mine')"]))
            return (await rt.invoke(victim, b"", [], Limits())).output
        finally:
            await rt.close()

    try:
        assert run(main()).strip() == b"mine"
    finally:
        shutil.rmtree(home, ignore_errors=True)
