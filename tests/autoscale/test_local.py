"""The autoscaler with the real ``local`` provider on loopback: Spearlet processes
started and stopped for a load ramp, a drain under load, ``spear nodes --json``."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import psutil
import pytest

from spear import Client, protocol as P
from spear.autoscale.controller import Controller
from spear.autoscale.providers.base import NodeType
from spear.autoscale.providers.local import LocalProvider
from spear.client import AsyncClient
from spear.cluster import Cluster
from spear.config import AutoscalerConfig
from tests.helpers import FAST_HB, spear_cli, wait_for

ONE_SLOT = "[spearlet]\nmax_concurrency = 1\n"


@pytest.fixture
def one_slot(tmp_path):
    path = tmp_path / "spearlet.toml"
    path.write_text(ONE_SLOT)
    return str(path)


@pytest.fixture
def cluster(tmp_path, one_slot):
    c = Cluster(tmp_path / "c", spearlets=1, spearlet_config=one_slot, **FAST_HB)
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


class Running:
    """A controller ticking in a thread of its own (its own event loop) until stopped."""

    def __init__(self, cfg: AutoscalerConfig, sms: str) -> None:
        self.cfg, self.sms = cfg, sms
        self.decisions: list = []
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self._ready.set()
        async with AsyncClient(self.sms, timeout=5) as client:
            self.ctl = Controller(self.cfg, client)
            try:
                while not self.stop_event.is_set():
                    self.decisions += await self.ctl.tick()
                    try:
                        await asyncio.wait_for(self.stop_event.wait(), self.cfg.tick)
                    except asyncio.TimeoutError:
                        pass
            finally:
                await self.ctl.shutdown()

    def __enter__(self) -> "Running":
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "controller did not stop"
        if self.error is not None and exc[0] is None:
            raise self.error


def _settings(tmp_path, one_slot, **kw) -> AutoscalerConfig:
    base = dict(provider="local", min_nodes=1, max_nodes=3, tick=0.2, up_ticks=2, up_cooldown=1.0,
                down_cooldown=2.0, scale_down_idle_s=2.0, protect_idle_s=4.0,
                data=str(tmp_path / "autoscaler"), options={"config": one_slot})
    base.update(kw)
    return AutoscalerConfig(**base)


def _owned(c: Client, states=("ready", "draining", "unhealthy")) -> list:
    return [n for n in c.nodes() if n.labels.get("spear.owner") == "autoscaler" and n.state in states]


def _spearlet_pids(workdir) -> set[int]:
    out = set()
    for rec in workdir.glob("*/node.json"):
        out.add(json.loads(rec.read_text())["pid"])
    return out


def test_local_provider_creates_lists_after_restart_and_destroys(tmp_path, cluster, one_slot):
    workdir = tmp_path / "local"
    kind = NodeType(name="small", provider="local", options={"config": one_slot})

    async def scenario():
        first = LocalProvider(sms=cluster.sms_addr, workdir=workdir, stop_timeout=10)
        handle = await first.create(kind, "auto-test1")
        assert handle.name == "auto-test1" and handle.node_type == "small"
        with Client(cluster.sms_addr, timeout=5) as c:
            node = await asyncio.to_thread(wait_for, lambda: next(
                (n for n in c.nodes("ready") if n.name == "auto-test1"), None), 30, "node registered")
        assert node.labels["spear.owner"] == "autoscaler" and node.labels["spear.node-type"] == "small"
        assert node.capacity.slots == 1
        again = LocalProvider(sms=cluster.sms_addr, workdir=workdir)  # as after a restart
        assert [h.name for h in await again.list()] == ["auto-test1"]
        pid = int(handle.ref)
        await again.destroy(handle)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert await again.list() == [] and await first.list() == []
        await again.destroy(handle)  # idempotent
        first._reap(pid, wait=True)

    asyncio.run(scenario())


def test_a_load_ramp_grows_the_cluster_then_it_shrinks_back_to_min(tmp_path, cluster, one_slot):
    cfg = _settings(tmp_path, one_slot)
    with Client(cluster.sms_addr, timeout=30) as c:
        c.deploy(P.FunctionSpec(name="nap", runtime="process", command=["sleep", "1.5"]))
        foreign = c.nodes("ready")[0]
        with Running(cfg, cluster.sms_addr) as run:
            ids = [c.submit("nap") for _ in range(10)]
            # one node with one slot: the queue grows, so the autoscaler adds nodes up to max
            wait_for(lambda: len(_owned(c, ("ready",))) == 2, 45, "two autoscaled nodes ready")
            nodes = json.loads(spear_cli("nodes", "--json", "--sms", cluster.sms_addr).stdout)
            owners = sorted(n["owner"] for n in nodes if n["state"] == "ready")
            assert owners == ["", "autoscaler", "autoscaler"]
            # a drain in the middle of the load: the node's running work finishes, nothing is lost
            c.drain(foreign.node_id)
            results = [c.wait(eid, timeout=60) for eid in ids]
            assert [r.status for r in results] == ["succeeded"] * len(ids)
            assert len({r.info.node_id for r in results}) >= 2
            c.drain(foreign.node_id, False)
            # idle: every autoscaled node drained and removed; the cluster's own one remains
            wait_for(lambda: not _owned(c), 60, "autoscaled nodes removed")
            assert [n.node_id for n in c.nodes("ready")] == [foreign.node_id]
            wait_for(lambda: not run.ctl.handles, 10, "handles released")

            def settled():
                done = [d.action for d in run.decisions]
                return done.count("drain") == done.count("remove") and done

            actions = wait_for(settled, 10, "every drain followed by its remove")
            ups = sum(d.count for d in run.decisions if d.action == "scale_up")
            # one more node may start while the cluster's own node drains (it serves no more)
            assert 2 <= ups <= 3 and actions.count("remove") == ups, actions
            assert "resume" not in actions  # it never flapped back
        assert not any(psutil.pid_exists(p) for p in _spearlet_pids(tmp_path / "autoscaler" / "local"))


def test_spear_up_with_an_autoscaler_section_starts_it_beside_the_sms(tmp_path):
    """``spear up --config FILE`` with ``[autoscaler]`` keeps min_nodes (its own node
    counting) and stops the nodes it started when it stops."""
    import signal
    import subprocess
    import sys

    from spear.cluster import free_port

    conf = tmp_path / "spear.toml"
    conf.write_text("[autoscaler]\nmin_nodes = 2\nmax_nodes = 2\ntick = 0.2\n")
    port = free_port()
    sms = f"tcp://127.0.0.1:{port}"
    data = tmp_path / "up"
    up = subprocess.Popen([sys.executable, "-m", "spear", "up", "-n", "1", "--no-gateway", "--store",
                           "memory", "--port", str(port), "--data", str(data), "--config", str(conf)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def two_nodes():
            r = spear_cli("nodes", "--json", "--state", "ready", "--sms", sms, "--timeout", "2")
            nodes = json.loads(r.stdout) if r.returncode == 0 else []
            return len(nodes) == 2 and nodes

        nodes = wait_for(two_nodes, 60, "the autoscaler's node ready")
        assert sorted(n["owner"] for n in nodes) == ["", "autoscaler"]
        pids = _spearlet_pids(data / "autoscaler" / "local")
        assert len(pids) == 1
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
    assert up.returncode == 0
    assert not any(psutil.pid_exists(p) for p in pids)


def _autoscaler(sms: str, conf, data, *extra: str):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "spear", "autoscaler", "--sms", sms, "--config",
                             str(conf), "--data", str(data), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc) -> int:
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def test_spear_autoscaler_keeps_its_nodes_with_keep_nodes_and_takes_them_back(tmp_path, cluster):
    conf = tmp_path / "as.toml"
    conf.write_text("[autoscaler]\nmin_nodes = 2\nmax_nodes = 2\ntick = 0.2\n")
    data = tmp_path / "as"
    with Client(cluster.sms_addr, timeout=10) as c:
        first = _autoscaler(cluster.sms_addr, conf, data, "--keep-nodes")
        try:
            wait_for(lambda: len(_owned(c, ("ready",))) == 1, 45, "one autoscaled node")
        finally:
            assert _stop(first) == 0
        pids = _spearlet_pids(data / "local")
        assert len(pids) == 1 and all(psutil.pid_exists(p) for p in pids)
        name = _owned(c, ("ready",))[0].name
        second = _autoscaler(cluster.sms_addr, conf, data)
        try:
            # it takes the node back instead of starting another
            for _ in range(15):
                assert [n.name for n in _owned(c, ("ready",))] == [name]
                assert _spearlet_pids(data / "local") == pids
                time.sleep(0.2)
        finally:
            assert _stop(second) == 0
        wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 20, "its node stopped")
        assert not _owned(c, ("ready",))


def test_a_cloud_that_refuses_falls_back_to_local_nodes(tmp_path, cluster, one_slot):
    """Two node types on two providers: the cheap cloud refuses (over quota), so the
    autoscaler starts its node as the local type; its nodes carry that type's label."""
    pytest.importorskip("libcloud")
    from spear.config import NodeTypeConfig

    clouds = tmp_path / "clouds.toml"
    clouds.write_text('[[clouds]]\nname = "full"\n'
                      'driver = "tests.autoscale.test_provider_cloud:QuotaCloud"\nkey = "k"\n')
    types = {"spot": NodeTypeConfig(provider="cloud", cost=1, options={
                 "clouds_file": str(clouds), "size": "Small", "image": "1"}),
             "home": NodeTypeConfig(provider="local", cost=2, max_nodes=1,
                                    options={"config": one_slot})}
    cfg = _settings(tmp_path, one_slot, min_nodes=2, types=types)
    with Client(cluster.sms_addr, timeout=30) as c, Running(cfg, cluster.sms_addr) as run:
        [node] = wait_for(lambda: _owned(c, ("ready",)), 45, "a fallback node ready")
        assert node.labels["spear.node-type"] == "home"
        wait_for(lambda: run.ctl.metrics.registry.get_sample_value(
            "spear_autoscaler_provider_errors_total", {"op": "create"}), 10, "the refusal counted")
        assert [h.node_type for h in run.ctl.handles.values()] == ["home"]
    assert not any(psutil.pid_exists(p) for p in _spearlet_pids(tmp_path / "autoscaler" / "local"))
