"""A Docker Engine that comes up after the node, or goes away.

The node is pointed at a UNIX socket where nothing listens at first; the test
then opens that socket as a proxy to the machine's real engine (never
stopping the real one: other tests use it), and closes it again. Needs the
engine and the test images, like ``test_docker.py``: skips without them,
fails under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import docker
import msgspec
import pytest

from spear import Client, errors, protocol as P
from spear.cluster import Cluster
from spear.config import docker_host, load_config
from spear.runtimes import RuntimeManager
from spear.runtimes.docker import DEFAULT_URL, MANAGED_LABEL, OWNER_LABEL, remove_leftovers
from spear.spearlet.runner import Runner
from tests.helpers import wait_for

from .test_docker import BUSYBOX, _require_engine

pytestmark = pytest.mark.docker

UPPER = P.FunctionSpec(name="upper", runtime="docker", image=BUSYBOX, command=["tr", "a-z", "A-Z"],
                       limits=P.Limits(timeout=30))


def _engine_socket() -> str:
    url = docker_host() or DEFAULT_URL
    if not url.startswith("unix://"):
        pytest.skip(f"the proxy needs an engine on a UNIX socket, not {url}")
    return url[len("unix://"):]


class EngineProxy:
    """A UNIX socket at ``path`` that forwards each connection to the engine
    at ``target``, half-closes included (a container's stdin EOF)."""

    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self.target = target
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.path)
        srv.listen(64)
        self._server = srv
        t = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # stopped
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                upstream.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Close the socket and every connection through it: the engine is gone."""
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@pytest.fixture
def late_engine():
    """``(url, proxy)``: a socket path nothing listens on until ``proxy.start()``."""
    _require_engine()
    target = _engine_socket()
    d = tempfile.mkdtemp(prefix="spear-dk-", dir="/tmp")  # short: UNIX socket paths are limited
    proxy = EngineProxy(os.path.join(d, "docker.sock"), target)
    try:
        yield f"unix://{proxy.path}", proxy
    finally:
        proxy.stop()
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- RuntimeManager


def _leftover(api, owner: str) -> str:
    """A container as a crashed earlier run of node ``owner`` would leave it."""
    return api.create_container(BUSYBOX, ["true"], labels={MANAGED_LABEL: "1", OWNER_LABEL: owner})["Id"]


def _exists(api, cid: str) -> bool:
    try:
        api.inspect_container(cid)
    except docker.errors.NotFound:
        return False
    return True


def test_runtime_manager_follows_the_engine_on_use_and_by_watching(tmp_path, late_engine):
    url, proxy = late_engine
    api = docker.APIClient(base_url=f"unix://{proxy.target}", version="auto", timeout=30)
    old = _leftover(api, "late-node")
    cfg = tmp_path / "spear.toml"
    cfg.write_text(f'[spearlet]\ndata = "{tmp_path / "node"}"\n'
                   f'[runtimes.docker]\nbase_url = "{url}"\ncheck_interval = 0.1\n')
    config = load_config(cfg, env={})

    async def main():
        rm = RuntimeManager(config, config.spearlet.data, "late-node")
        changes: list[set] = []
        rm.on_change = lambda: changes.append(set(rm.runtimes))
        fs = Runner(rm, "late-node")
        try:
            await rm.probe()
            assert "docker" not in rm.runtimes
            assert url in rm.unavailable["docker"], rm.unavailable
            with pytest.raises(errors.Unavailable, match="docker"):
                await fs.deploy(UPPER)
            # the engine comes up: the next use past the cache checks again
            proxy.start()
            await asyncio.sleep(rm.check_interval)
            await fs.deploy(UPPER)
            assert "docker" in rm.runtimes and "docker" not in rm.unavailable
            assert len(changes) == 1 and "docker" in changes[0]  # on_change: tell the SMS
            assert not _exists(api, old)  # the first reach of an engine cleans up
            d = fs.get("upper")
            inst = await d.runtime.create_instance(d.prepared)
            try:
                out = await d.runtime.invoke(inst, b"late", [], P.Limits())
            finally:
                await d.runtime.destroy(inst)
            assert out.output == b"LATE"
            await d.runtime.settle()  # the one-shot container is removed (in the background)
            # the engine goes away: the watcher notices without any use
            proxy.stop()
            watcher = asyncio.ensure_future(rm.watch())
            try:
                end = time.monotonic() + 20
                while "docker" in rm.runtimes:
                    assert time.monotonic() < end, "the watcher never noticed the engine leave"
                    await asyncio.sleep(0.05)
            finally:
                watcher.cancel()
            assert url in rm.unavailable["docker"] and len(changes) == 2
            with pytest.raises(errors.Unavailable, match="docker"):
                await fs.deploy(msgspec.structs.replace(UPPER, name="upper2"))
            # a function deployed before stays; its calls fail UNAVAILABLE
            inst = await d.runtime.create_instance(d.prepared)
            try:
                with pytest.raises(errors.Unavailable, match="cannot reach Docker Engine"):
                    await d.runtime.invoke(inst, b"gone", [], P.Limits())
            finally:
                await d.runtime.destroy(inst)
            # back again: offered again, and this node's live containers are not
            # taken for leftovers (only the first reach of an engine cleans up)
            live = _leftover(api, "late-node")
            proxy.start()
            await asyncio.sleep(rm.check_interval)
            await fs.deploy(msgspec.structs.replace(UPPER, name="upper3"))
            assert "docker" in rm.runtimes and len(changes) == 3
            assert _exists(api, live)
        finally:
            await fs.close()
            await rm.close()

    try:
        asyncio.run(main())
    finally:
        remove_leftovers(owner="late-node")  # through the real engine
        api.close()


# ---------------------------------------------------------------- through the SMS


def _spear_nodes(sms: str) -> str:
    out = subprocess.run([sys.executable, "-m", "spear", "nodes", "--sms", sms],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_engine_that_comes_up_late_is_offered_without_a_restart(tmp_path, late_engine):
    url, proxy = late_engine
    cfg = tmp_path / "spear.toml"
    cfg.write_text(f'[runtimes.docker]\nbase_url = "{url}"\ncheck_interval = 0.2\n'
                   '[sms]\nqueue_timeout = 60\n')
    c = Cluster(tmp_path / "cluster", spearlets=1, config=str(cfg), heartbeat_interval=0.2,
                heartbeat_timeout=2.0)
    node_id = ""
    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=30) as cl:
            info = cl.nodes()[0]
            node_id = info.node_id
            assert "docker" not in info.runtimes and url in info.unavailable["docker"], info
            shown = _spear_nodes(c.sms_addr)
            assert "docker: no" in shown and f"docker: cannot reach Docker Engine at {url}" in shown
            cl.deploy(UPPER)  # registered with the SMS; no node can run it yet
            r = cl.invoke("upper", b"early")
            assert r.status == "failed" and "no ready node offers runtime 'docker'" in r.info.error.message, r.info

            proxy.start()  # the engine comes up; the node is not restarted
            info = wait_for(lambda: next((n for n in cl.nodes() if "docker" in n.runtimes), None),
                            20.0, "the node offers docker")
            assert info.node_id == node_id and "docker" not in info.unavailable
            shown = _spear_nodes(c.sms_addr)
            assert "docker: yes" in shown and "docker: no" not in shown
            r = cl.invoke("upper", b"late")
            assert r.status == "succeeded" and r.output == b"LATE", r.info
            assert r.info.node_id == node_id

            proxy.stop()  # ... and goes away again: the node stops offering it
            info = wait_for(lambda: next((n for n in cl.nodes() if "docker" not in n.runtimes), None),
                            20.0, "the node withdraws docker")
            assert url in info.unavailable["docker"]
    finally:
        c.stop()
        if node_id:
            remove_leftovers(owner=node_id)  # through the real engine
