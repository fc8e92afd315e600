"""A node's start with the docker runtime: no Docker SDK until a docker
function needs it, a missing engine said plainly, and the containers of a
killed earlier run removed before the first new one is created.

Only the last test needs the engine and the test images (skipped without
them, failed under ``CI=true``, like ``test_docker.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from spear import Client, protocol as P
from spear.cluster import Cluster
from spear.config import docker_host, load_config
from spear.runtimes import RuntimeManager
from spear.runtimes.docker import DEFAULT_URL, MANAGED_LABEL, OWNER_LABEL, DockerRuntime, probe
from spear.runtimes.docker import containers as containers_mod, engine as engine_mod
from tests.helpers import add_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sock_dir():
    """A short directory for UNIX sockets (their paths are limited in length)."""
    d = tempfile.mkdtemp(prefix="spear-dks-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_node_probes_docker_without_importing_the_sdk(tmp_path):
    """Importing the daemon and probing the engine (there or not) leave the SDK unimported."""
    code = (
        "import asyncio, json, sys\n"
        "import spear.spearlet.daemon\n"
        "from spear.config import load_config\n"
        "from spear.runtimes import RuntimeManager\n"
        "cfg = load_config(sys.argv[1], env={})\n"
        "async def main():\n"
        "    rm = RuntimeManager(cfg, cfg.spearlet.data, 'sdk-free-node')\n"
        "    await rm.probe()\n"
        "    if 'docker' in rm.runtimes:\n"
        "        await rm.runtimes['docker'].settle()  # the leftovers cleanup, done\n"
        "    out = {'runtimes': sorted(rm.runtimes), 'unavailable': rm.unavailable,\n"
        "           'loaded': sorted(m for m in ('docker', 'requests', 'urllib3') if m in sys.modules)}\n"
        "    await rm.close()\n"
        "    return out\n"
        "print(json.dumps(asyncio.run(main())))\n"
    )
    cfg = tmp_path / "spear.toml"
    cfg.write_text(f'[spearlet]\ndata = "{tmp_path / "node"}"\n'
                   "[runtimes.wasm]\nenabled = false\n[runtimes.process]\nenabled = false\n")
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["loaded"] == [], seen
    # whether the machine has an engine or not, the node said which
    assert seen["runtimes"] == ["docker"] or "Docker Engine" in seen["unavailable"]["docker"], seen


def test_a_node_without_an_engine_starts_and_says_why(tmp_path, sock_dir):
    url = f"unix://{sock_dir}/no-engine.sock"
    cfg = tmp_path / "spear.toml"
    cfg.write_text(f'[runtimes.docker]\nbase_url = "{url}"\n')
    with Cluster(tmp_path / "cluster", spearlets=1, config=str(cfg)) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=30) as cl:
            info = cl.nodes()[0]
            assert "docker" not in info.runtimes, info
            assert info.unavailable["docker"].startswith(f"cannot reach Docker Engine at {url}"), info
            cl.deploy(add_spec("add-no-engine"))  # ... and takes work of the other runtimes
            r = cl.invoke("add-no-engine", args=[2, 3])
            assert r.status == "succeeded" and r.output == b"5", r.info


def _serve_once(path: str, answer: bytes) -> threading.Thread:
    """A UNIX socket at ``path`` that answers one HTTP request with ``answer``."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_socket_that_is_not_an_engine_is_no_engine(sock_dir):
    path = os.path.join(sock_dir, "not-docker.sock")
    t = _serve_once(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found")
    ok, why = DockerRuntime(base_url=f"unix://{path}").available()
    t.join(5)
    assert not ok
    assert why.startswith(f"cannot reach Docker Engine at unix://{path}") and "HTTP 404" in why, why


def test_the_engine_client_is_made_only_after_the_work_given_first(monkeypatch):
    made: list[float] = []
    monkeypatch.setattr(engine_mod, "connect", lambda *a, **kw: made.append(time.monotonic()) or object())
    release = threading.Event()
    ended: list[float] = []

    def first() -> int:
        release.wait(10)
        ended.append(time.monotonic())
        return 0

    async def main() -> None:
        eng = engine_mod.Engine(None, 4, usage=False)
        try:
            done = eng.first(first)
            client = eng.submit(eng.client)
            await asyncio.sleep(0.2)
            assert not made and not client.done()  # still waiting for the first work
            release.set()
            await client
            await done
            assert len(made) == 1 and ended[0] <= made[0]
        finally:
            release.set()
            eng.close()

    asyncio.run(main())


# ---------------------------------------------------------------- with the engine


@pytest.mark.docker
def test_leftovers_of_a_killed_node_are_removed_before_its_first_container(tmp_path, monkeypatch):
    from .test_docker import BUSYBOX, _require_engine

    _require_engine()
    path = probe.local_socket(docker_host() or DEFAULT_URL)
    if path is None:
        pytest.skip("needs an engine on a UNIX socket")
    import docker

    node = f"killed-node-{os.getpid()}"
    labels = [f"{MANAGED_LABEL}=1", f"{OWNER_LABEL}={node}"]
    api = docker.APIClient(base_url=f"unix://{path}", version="auto", timeout=30)
    old = api.create_container(BUSYBOX, ["true"], labels={MANAGED_LABEL: "1", OWNER_LABEL: node})["Id"]

    # a slow removal: the first container must still wait for it
    remove = probe.remove_container

    def slow_remove(*a, **kw):
        time.sleep(0.5)
        return remove(*a, **kw)

    monkeypatch.setattr(probe, "remove_container", slow_remove)
    left_at_create: list[list[str]] = []
    create = containers_mod.Containers._create_blocking

    def watched_create(self, *a, **kw):
        left_at_create.append([c["Id"] for c in probe.containers(path, labels)])
        return create(self, *a, **kw)

    monkeypatch.setattr(containers_mod.Containers, "_create_blocking", watched_create)
    cfg = tmp_path / "spear.toml"
    cfg.write_text(f'[spearlet]\ndata = "{tmp_path / "node"}"\n'
                   "[runtimes.wasm]\nenabled = false\n[runtimes.process]\nenabled = false\n")
    config = load_config(cfg, env={})
    spec = P.FunctionSpec(name="echo", runtime="docker", image=BUSYBOX, command=["cat"])

    async def main() -> bytes:
        rm = RuntimeManager(config, config.spearlet.data, node)
        try:
            await rm.probe()
            rt = rm.get("docker")  # at once: the cleanup is still under way
            inst = await rt.create_instance(await rt.prepare(spec))
            out = await rt.invoke(inst, b"fresh", [], P.Limits(timeout=30))
            await rt.destroy(inst)
            await rt.settle()
            return out.output
        finally:
            await rm.close()

    try:
        assert asyncio.run(main()) == b"fresh"
        assert left_at_create == [[]], left_at_create  # the leftover was gone before
        with pytest.raises(docker.errors.NotFound):
            api.inspect_container(old)
    finally:
        containers_mod.remove_leftovers(owner=node)
        api.close()
