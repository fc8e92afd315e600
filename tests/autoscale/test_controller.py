"""The controller against a fake SMS client and a fake provider: what it reads, what it does."""

from __future__ import annotations

import asyncio

from spear import errors, protocol as P
from spear.autoscale.controller import START_TIMEOUT, Controller
from spear.autoscale.providers.base import NodeHandle
from spear.config import AutoscalerConfig, NodeTypeConfig
from spear.schema import Capacity, NodeInfo, Usage


class FakeSMS:
    sms = "tcp://fake"

    def __init__(self) -> None:
        self.queued = 0
        self.nodes_: list[NodeInfo] = []
        self.execs: list[P.ExecutionInfo] = []
        self.drained: list[tuple[str, bool]] = []

    async def stats(self):
        return P.StatsReply(id=1, nodes_ready=0, cores_total=0, memory_total=0, cores_reserved=0,
                            memory_reserved=0, executions_active=0, queued=self.queued)

    async def nodes(self):
        return list(self.nodes_)

    async def execution_page(self, **kw):
        return P.ExecutionList(id=1, executions=list(self.execs))

    async def drain(self, node_id, drain=True):
        self.drained.append((node_id, drain))


class FakeProvider:
    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.running: dict[str, NodeHandle] = {}
        self.destroyed: list[str] = []

    async def create(self, node_type, name):
        if self.fail:
            raise errors.Unavailable("fake: out of machines")
        h = NodeHandle(provider="fake", node_type=node_type.name, ref=name, name=name, created_at=clock.t)
        self.running[name] = h
        return h

    async def destroy(self, handle):
        self.running.pop(handle.name, None)
        self.destroyed.append(handle.name)

    async def list(self):
        return list(self.running.values())


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


clock = Clock()


def node(name: str, *, state="ready", running=0, owned=True) -> NodeInfo:
    labels = {"spear.owner": "autoscaler", "spear.node-type": "default"} if owned else {}
    return NodeInfo(node_id=f"{name}-id", name=name, labels=labels, state=state,
                    capacity=Capacity(cores=1, slots=1), usage=Usage(running=running))


def sample(ctl: Controller, name: str, **labels) -> float | None:
    return ctl.metrics.registry.get_sample_value(name, labels)


def controller(sms, provider, **kw) -> Controller:
    cfg = AutoscalerConfig(min_nodes=1, max_nodes=3, up_ticks=1, up_cooldown=0, down_cooldown=0,
                           scale_down_idle_s=5, protect_idle_s=10, **kw)
    return Controller(cfg, sms, {"default": provider}, clock=clock)


def test_scale_up_to_min_then_for_the_queue_counting_nodes_still_starting():
    sms, prov = FakeSMS(), FakeProvider()
    ctl = controller(sms, prov)

    async def scenario():
        d = await ctl.tick()
        assert [x.action for x in d] == ["scale_up"] and len(prov.running) == 1
        assert await ctl.tick() == []  # starting: not started twice
        (name,) = prov.running
        sms.nodes_ = [node(name, running=1)]
        sms.queued = 2
        clock.t += 1
        await ctl.tick()
        assert len(prov.running) == 3  # max_nodes
        assert sample(ctl, "spear_autoscaler_decisions_total", action="scale_up") == 2
        assert sample(ctl, "spear_autoscaler_nodes", state="starting") == 2

    asyncio.run(scenario())


def test_idle_nodes_are_drained_through_the_sms_then_destroyed():
    sms, prov = FakeSMS(), FakeProvider()
    ctl = controller(sms, prov)

    async def scenario():
        await ctl.tick()
        await ctl.tick()
        prov.running["auto-x"] = NodeHandle(provider="fake", node_type="default", ref="x",
                                            name="auto-x", created_at=clock.t)
        ctl.handles["auto-x"] = prov.running["auto-x"]
        names = list(ctl.handles)
        sms.nodes_ = [node(n) for n in names]
        await ctl.tick()
        clock.t += 6
        d = await ctl.tick()
        assert [x.action for x in d] == ["drain"] and sms.drained == [(d[0].node_id, True)]
        drained = d[0].name
        sms.nodes_ = [node(n, state="draining" if n == drained else "ready") for n in names]
        clock.t += 3
        d = await ctl.tick()
        assert [x.action for x in d] == ["remove"] and prov.destroyed == [drained]
        assert drained not in ctl.handles

    asyncio.run(scenario())


def test_a_node_that_never_registers_is_destroyed_and_a_refusal_is_counted():
    sms, prov = FakeSMS(), FakeProvider()
    ctl = controller(sms, prov)

    async def scenario():
        await ctl.tick()
        (name,) = prov.running
        clock.t += START_TIMEOUT + 1
        prov.fail = True
        await ctl.tick()
        assert prov.destroyed == [name] and name not in ctl.handles
        assert sample(ctl, "spear_autoscaler_provider_errors_total", op="scale_up") == 1

    asyncio.run(scenario())


def test_nodes_of_an_earlier_run_are_taken_back_and_foreign_ones_left_alone():
    sms, prov = FakeSMS(), FakeProvider()
    prov.running["auto-old"] = NodeHandle(provider="fake", node_type="default", ref="o",
                                          name="auto-old", created_at=clock.t)
    sms.nodes_ = [node("auto-old"), node("spearlet-1", owned=False)]
    ctl = controller(sms, prov)

    async def scenario():
        assert await ctl.tick() == []
        assert set(ctl.handles) == {"auto-old"}
        clock.t += 60
        d = await ctl.tick()
        assert [(x.action, x.name) for x in d] == [("drain", "auto-old")]

    asyncio.run(scenario())


def test_run_outlives_a_tick_that_fails_and_stops_when_told():
    class Broken(FakeProvider):
        calls = 0

        async def list(self):
            Broken.calls += 1
            raise RuntimeError("sdk exploded")

    ctl = controller(FakeSMS(), Broken(), tick=0.05)

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.create_task(ctl.run(stop))
        async def three_ticks():
            while Broken.calls < 3:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(three_ticks(), 10)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_a_refused_node_type_falls_back_to_the_next_cheapest():
    sms, cheap, spare = FakeSMS(), FakeProvider(fail=True), FakeProvider()
    cfg = AutoscalerConfig(min_nodes=2, max_nodes=4, up_ticks=1, up_cooldown=0, types={
        "spot": NodeTypeConfig(provider="cloud", cost=1, max_nodes=4),
        "onprem": NodeTypeConfig(provider="local", cost=2, max_nodes=1)})
    ctl = Controller(cfg, sms, {"spot": cheap, "onprem": spare}, clock=clock)
    assert [t.name for t in ctl.policy.types] == ["spot", "onprem"]

    async def scenario():
        d = await ctl.tick()
        assert [(x.action, x.node_type, x.count) for x in d] == [("scale_up", "spot", 2)]
        # the cloud refused: one node on the fallback type (its max is 1), the other refused
        assert [h.node_type for h in spare.running.values()] == ["onprem"] and not cheap.running
        assert sample(ctl, "spear_autoscaler_provider_errors_total", op="scale_up") == 1
        assert sample(ctl, "spear_autoscaler_provider_errors_total", op="create") == 1
        cheap.fail = False
        clock.t += 1
        await ctl.tick()
        assert [h.node_type for h in cheap.running.values()] == ["spot"]
        (name,) = spare.running
        await ctl.shutdown()  # each node is destroyed by the provider that started it
        assert spare.destroyed == [name] and len(cheap.destroyed) == 1

    asyncio.run(scenario())


def test_node_types_come_from_autoscaler_types_tables_or_the_single_type_keys(tmp_path):
    from spear.autoscale.controller import node_types_of
    from spear.config import load_config
    from spear.errors import ConfigError

    f = tmp_path / "spear.toml"
    f.write_text('[autoscaler]\nprovider = "docker"\nnode_cores = 2\n')
    (one,) = node_types_of(load_config(f).autoscaler)
    assert (one.name, one.provider, one.cores) == ("default", "docker", 2)
    f.write_text('[autoscaler.types.aws]\nprovider = "cloud"\ncost = 1\noptions = { clouds = "aws" }\n'
                 '[autoscaler.types.home]\nprovider = "local"\ncost = 0.5\nmax_nodes = 2\n')
    types = {t.name: t for t in node_types_of(load_config(f).autoscaler)}
    assert types["aws"].options == {"clouds": "aws"} and types["home"].max_nodes == 2
    f.write_text('[autoscaler.types.aws]\nmin_nodes = 3\nmax_nodes = 1\n')
    try:
        load_config(f)
    except ConfigError as exc:
        assert "autoscaler.types.aws" in str(exc)
    else:
        raise AssertionError("min_nodes > max_nodes accepted")
    f.write_text('[autoscaler.types.aws]\nsize = "big"\n')
    try:
        load_config(f)
    except ConfigError:
        pass
    else:
        raise AssertionError("an unknown node type key accepted")
