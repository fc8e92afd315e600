"""Data at rest is private: data directories 0700, files and keys 0600 (SPEC §8).

Real daemons write their state with a umask that lets other users read
nothing; state left readable by an older version is fixed at start, loudly;
secret keys are written 0600 and fixed to 0600 when loaded; a function's own
process still starts with the usual umask 022.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spear import Client, fsmodes, protocol as P
from spear.cluster import Cluster, free_port
from spear.config import SecurityConfig, load_config
from spear.errors import ConfigError
from spear.store import open_store
from tests.helpers import EXAMPLES

OPEN = 0o077


def mode(p: Path | str) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def readable_by_others(root: Path) -> list[str]:
    """Every path at or under ``root`` with a group or other bit, as 'path 0NNN'."""
    out = []
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink() and mode(p) & OPEN:
            out.append(f"{p} {mode(p):04o}")
    return out


def umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line")


@pytest.fixture
def umask022():
    """Run as a usual shell would: umask 022, so anything private is Spear's doing."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def make_readable_store(path: Path) -> list[Path]:
    """A LevelDB store as an older Spear left it: 0755 directory, 0644 files."""
    s = open_store("leveldb", str(path))
    s.put(b"execution/x", b"an input someone else must not read", sync=True)
    s.close()
    (path / "lost+found").mkdir()
    files = [p for p in path.rglob("*")]
    for p in [path, *files]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return files


# ---------------------------------------------------------------- real daemons


def test_cluster_state_is_private_after_work(tmp_path, umask022):
    data = tmp_path / "cluster"
    c = Cluster(data, spearlets=1, store="leveldb", heartbeat_interval=0.2, heartbeat_timeout=1.0,
                gateway=f"127.0.0.1:{free_port()}")
    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(P.FunctionSpec(name="hello", runtime="wasm", env={"TOKEN": "s3cret"},
                                     artifact=(EXAMPLES / "hello.wat").read_bytes()))
            cl.deploy(P.FunctionSpec(name="mask", runtime="process", command=["sh", "-c", "umask"]))
            for i in range(20):
                r = cl.invoke("hello", f"input {i}".encode())
                assert r.ok, r
            r = cl.invoke("mask")
            assert r.ok, r
            # the function's own process is not bound by the daemon's umask
            assert r.output.strip() == b"0022"
        for proc in (c.sms, *c.spearlets, c.gateway_proc):
            assert umask_of(proc.pid) == 0o077
    finally:
        c.stop()
    store = data / "sms"
    assert any(p.suffix in (".log", ".ldb") for p in store.iterdir()), list(store.iterdir())
    node = data / "spearlet-1"
    assert (node / "node_id").is_file()
    assert readable_by_others(data) == []
    assert mode(store) == mode(node) == 0o700
    assert all(mode(p) == 0o600 for p in store.iterdir() if p.is_file())


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "spear", "--log-format", "json", *argv],
                                stdout=out, stderr=out, start_new_session=True)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = log.read_text(errors="replace")
        if text in body:
            return body
        assert proc.poll() is None, f"exited {proc.returncode}:\n{body}"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged in {timeout}s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_sms_fixes_a_world_readable_store_at_start(tmp_path, umask022):
    store = tmp_path / "sms"
    files = make_readable_store(store)
    log = tmp_path / "sms.log"
    proc = _start(["sms", "--listen", f"tcp://127.0.0.1:{free_port()}", "--data", str(store),
                   "--store", "leveldb"], log)
    try:
        body = _wait_for(log, "SMS listening", proc)
    finally:
        _stop(proc)
    assert readable_by_others(store) == []
    # loudly: a warning names the directory and its old mode, and files too
    warnings = [line for line in body.splitlines() if '"warning"' in line and "SECURITY" in line]
    assert any(str(store) in w and "0755" in w for w in warnings), body
    assert any("0644" in w for w in warnings), body
    assert all(mode(p) == 0o600 for p in files if p.is_file())


def test_spearlet_data_dir_is_private_at_start(tmp_path, umask022):
    data = tmp_path / "node"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "node_id").write_text("old-node-1\n")
    os.chmod(data / "node_id", 0o644)
    (data / "wasm-cache").mkdir()
    os.chmod(data / "wasm-cache", 0o755)
    fresh = tmp_path / "fresh" / "node"
    log, log2 = tmp_path / "spearlet.log", tmp_path / "spearlet2.log"
    sms = f"tcp://127.0.0.1:{free_port()}"  # nothing answers: the node keeps trying
    procs = [_start(["spearlet", "--sms", sms, "--listen", f"tcp://127.0.0.1:{free_port()}",
                     "--data", str(d)], lg) for d, lg in ((data, log), (fresh, log2))]
    try:
        body = _wait_for(log, "serving on", procs[0])
        _wait_for(log2, "serving on", procs[1])
    finally:
        for p in procs:
            _stop(p)
    assert (data / "node_id").read_text() == "old-node-1\n"
    assert readable_by_others(data) == []
    assert any("SECURITY" in line and str(data / "node_id") in line and "0644" in line
               for line in body.splitlines()), body
    # a new data directory and the directories made for it are 0700, its node_id 0600
    assert mode(fresh) == mode(fresh.parent) == 0o700
    assert mode(fresh / "node_id") == 0o600
    assert readable_by_others(fresh.parent) == []


def test_keygen_command_writes_private_keys(tmp_path, umask022):
    keys = tmp_path / "keys"
    p = subprocess.run([sys.executable, "-m", "spear", "keygen", "alice", "--dir", str(keys)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert mode(keys) == 0o700
    assert mode(keys / "alice.key_secret") == 0o600
    assert mode(keys / "alice.key") == 0o600
    assert sorted(x.name for x in keys.iterdir()) == ["alice.key", "alice.key_secret"]


# ---------------------------------------------------------------- in process


def test_store_backends_make_private_directories(tmp_path, umask022):
    for backend in ("leveldb", "rocksdb"):
        path = tmp_path / backend / "db"
        try:
            s = open_store(backend, str(path))
        except Exception as exc:  # noqa: BLE001 - rocksdb is an optional extra
            if backend == "rocksdb":
                pytest.skip(f"rocksdb: {exc}")
            raise
        s.close()
        assert mode(path) == mode(path.parent) == 0o700


def test_open_store_fixes_and_warns(tmp_path, umask022, caplog):
    store = tmp_path / "db"
    make_readable_store(store)
    os.umask(0o077)  # as the daemons run (restored by umask022)
    with caplog.at_level(logging.WARNING, logger="spear.fsmodes"):
        s = open_store("leveldb", str(store))
    try:
        assert s.get(b"execution/x") is not None
    finally:
        s.close()
    assert readable_by_others(store) == []
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(store) in text and "0755" in text and "0644" in text


def test_unfixable_store_is_refused_naming_the_path(tmp_path, umask022, monkeypatch):
    store = tmp_path / "db"
    make_readable_store(store)
    victim = next(p for p in store.iterdir() if p.name.startswith("CURRENT"))

    real_chmod = os.chmod

    def chmod(path, m, *a, **kw):
        if Path(path) == victim:
            raise PermissionError(1, "Operation not permitted")
        return real_chmod(path, m, *a, **kw)

    monkeypatch.setattr(os, "chmod", chmod)
    with pytest.raises(ConfigError) as ei:
        open_store("leveldb", str(store))
    assert str(victim) in str(ei.value) and "0644" in str(ei.value)


def test_symlinks_inside_are_not_followed(tmp_path, umask022):
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours to change")
    os.chmod(outside, 0o644)
    d = tmp_path / "data"
    d.mkdir()
    (d / "link").symlink_to(outside)
    fsmodes.private_dir(d)
    assert mode(outside) == 0o644
    assert mode(d) == 0o700


def test_shared_sticky_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(ConfigError) as ei:
        fsmodes.private_dir(shared, what="[storage] path")
    assert str(shared) in str(ei.value) and "sticky" in str(ei.value)
    assert mode(shared) == 0o1777


def test_node_id_file_is_private_whatever_the_umask(tmp_path, umask022):
    from spear.spearlet.daemon import _node_id

    cfg = load_config(env={}, overrides={"spearlet.data": str(tmp_path / "n")})
    fsmodes.private_dir(cfg.spearlet.data)
    node = _node_id(cfg)
    f = tmp_path / "n" / "node_id"
    assert f.read_text().strip() == node
    assert mode(f) == 0o600


def test_keygen_writes_private_keys_and_fixes_the_directory(tmp_path, umask022, caplog):
    from spear.mesh.security import keygen

    keys = tmp_path / "keys"
    keys.mkdir()
    os.chmod(keys, 0o755)
    with caplog.at_level(logging.WARNING, logger="spear.fsmodes"):
        public, secret, z85 = keygen(keys, "node-1")
    assert mode(keys) == 0o700
    assert mode(secret) == mode(public) == 0o600
    assert len(z85) == 40
    assert any(str(keys) in r.getMessage() and "0755" in r.getMessage() for r in caplog.records)


def test_readable_secret_key_is_fixed_when_loaded(tmp_path, umask022, caplog):
    from spear.mesh.security import Security, keygen

    _, secret, _ = keygen(tmp_path / "keys", "sms")
    os.chmod(secret, 0o644)
    with caplog.at_level(logging.WARNING, logger="spear.fsmodes"):
        sec = Security.from_config(SecurityConfig(key=str(secret)))
    assert sec.enabled
    assert mode(secret) == 0o600
    assert any(str(secret) in r.getMessage() and "0644" in r.getMessage() for r in caplog.records)


def test_unfixable_secret_key_is_refused(tmp_path, umask022, monkeypatch):
    from spear.mesh.security import Security, keygen

    _, secret, _ = keygen(tmp_path / "keys", "sms")
    os.chmod(secret, 0o640)

    def chmod(path, m, *a, **kw):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", chmod)
    with pytest.raises(ConfigError) as ei:
        Security.from_config(SecurityConfig(key=str(secret)))
    assert str(secret) in str(ei.value) and "0640" in str(ei.value)


def test_daemon_umask_only_tightens():
    old = os.umask(0o027)
    try:
        assert fsmodes.daemon_umask() == 0o027
        assert os.umask(0o022) == 0o077
        os.umask(0o177)
        fsmodes.daemon_umask()
        assert os.umask(0o022) == 0o177
    finally:
        os.umask(old)
