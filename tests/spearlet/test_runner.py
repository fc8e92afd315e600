"""Runner: the asyncio driver of the core, over a fake runtime (no sockets, no processes).

What goes out is collected from the Runner's ``reply`` and ``to_sms``; the
runtime answers inline, or holds a call until the test releases it.
"""

from __future__ import annotations

import asyncio

import pytest

from spear import errors, protocol as P
from spear.runtimes import Instance, Outcome, Prepared, Runtime
from spear.spearlet import events as E
from spear.spearlet.core import Maxima, SpearletCore
from spear.spearlet.runner import Runner, _failure

SPEC = P.FunctionSpec(name="echo", runtime="fake", pool=P.PoolSettings(min_warm=1, max=2))


class FakeRuntime(Runtime):
    """Echoes its input; inline unless ``hold`` is set (then it waits for ``go``)."""

    name = "fake"

    def __init__(self) -> None:
        self.hold = False
        self.go = asyncio.Event()  # lets held calls finish
        self.calls = 0

    async def prepare(self, spec):
        return Prepared(spec)

    async def create_instance(self, prepared):
        return Instance(prepared.spec.name, object())

    def invoke_now(self, instance, data, args, limits, **trace):
        if self.hold:
            return None
        self.calls += 1
        return Outcome(bytes(data))

    async def invoke(self, instance, data, args, limits, on_log=None, **trace):
        self.calls += 1
        if on_log is not None:
            on_log(b"log")
        if self.hold:
            await self.go.wait()
        return Outcome(bytes(data).upper())

    async def destroy(self, instance):
        pass


class FakeManager:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def ready(self, name: str) -> Runtime:
        return self.runtime


async def runner(**kw) -> tuple[Runner, FakeRuntime, list, list]:
    rt = FakeRuntime()
    r = Runner(FakeManager(rt), SpearletCore("n1", **kw))
    replies: list = []
    sent: list = []
    r.reply = lambda ident, msg, payload=None: replies.append((ident, msg, payload))
    r.to_sms = lambda msg, payload=None: sent.append((msg, payload))
    await r.deploy(SPEC)
    return r, rt, replies, sent


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_sync_call_on_a_warm_instance_is_answered_before_the_handler_returns(arun):
    async def main():
        r, rt, replies, _ = await runner()
        r.handlers()[P.Invoke](b"c", P.Invoke(id=1, function="echo"), b"hi")
        assert [(m.id, m.execution.status, p) for _, m, p in replies] == [(1, "succeeded", b"hi")]
        assert not r.tasks and not r.core.executions and r.core.running == 0
        await r.close()

    arun(main())


def test_an_async_call_runs_as_a_task_and_can_be_cancelled(arun):
    async def main():
        r, rt, replies, _ = await runner()
        rt.hold = True
        r.handlers()[P.Invoke](b"c", P.Invoke(id=1, function="echo", mode="async"), b"x")
        (_, accepted, _), = replies
        eid = accepted.execution_id
        await settle()
        assert rt.calls == 1 and r.core.info(eid).status == "running"
        r.handlers()[P.CancelExecution](b"c", P.CancelExecution(id=2, execution_id=eid), None)
        await settle()
        assert isinstance(replies[-1][1], P.Ok)
        assert r.core.info(eid).status == "cancelled" and r.core.running == 0
        assert not r.tasks
        await r.close()

    arun(main())


def test_a_task_cancelled_before_its_first_step_still_ends(arun):
    """The Cancel arrives in the same batch as the Start: the end is still fed once."""
    async def main():
        r, rt, replies, _ = await runner()
        rt.hold = True
        r.feed(E.Invoked(b"c", P.Invoke(id=1, function="echo", mode="async"), b"x"))
        eid = replies[0][1].execution_id
        r.feed(E.CancelAsked(P.CancelExecution(id=2, execution_id=eid), b"c"))
        await settle()
        assert rt.calls == 0 and r.core.running == 0
        assert r.core.info(eid).status == "cancelled"
        assert r.core.counts == {"cancelled": 1}
        await r.close()

    arun(main())


def test_a_fallback_cancelled_before_its_first_step_gives_its_instance_back(arun):
    async def main():
        r, rt, _, sent = await runner()
        r.feed(E.Deployed(SPEC, "x", "d1"))
        rt.hold = True  # the warm instance is taken inline, then the call falls back
        r.feed(E.Dispatched(P.Dispatch(id=5, execution_id="e1", function="echo", digest="d1")))
        assert r.deployments["echo"].pool.busy == 1
        r.feed(E.CancelAsked(P.CancelExecution(id=0, execution_id="e1")))
        await settle()
        assert r.deployments["echo"].pool.busy == 0
        assert sent[-1][0].execution.status == "cancelled"
        await r.close()

    arun(main())


def test_a_dispatch_falls_back_to_a_task_streams_its_log_and_reports_to_the_sms(arun):
    async def main():
        r, rt, _, sent = await runner()
        r.feed(E.Deployed(SPEC, "x", "d1"))
        rt.hold = True
        r.feed(E.Dispatched(P.Dispatch(id=5, execution_id="e1", function="echo", digest="d1",
                                       stream=True), b"ab"))
        await settle()
        assert [type(m) for m, _ in sent] == [P.LogChunk]
        rt.go.set()
        await settle()
        result, payload = sent[-1]
        assert isinstance(result, P.Result) and result.id == 5 and payload == b"AB"
        assert "e1" in r.core.results and not r.core.dispatched
        await r.close()

    arun(main())


def test_a_dispatch_of_an_unknown_version_is_fetched_deployed_then_run(arun):
    async def main():
        r, rt, _, sent = await runner()
        fetched = []

        async def fetch(name):
            fetched.append(name)
            return SPEC, "d7"

        r.fetch = fetch
        r.feed(E.Dispatched(P.Dispatch(id=5, execution_id="e1", function="echo", digest="d7"),
                            b"z"))
        await settle()
        assert fetched == ["echo"] and r.core.functions["echo"].sms_digest == "d7"
        assert [(m.execution.status, p) for m, p in sent] == [("succeeded", b"Z")]  # via invoke
        await r.close()

    arun(main())


def test_a_failed_fetch_is_reported_and_gives_the_slot_back(arun):
    async def main():
        r, rt, _, sent = await runner()

        async def fetch(name):
            raise errors.NotFound("no such function")

        r.fetch = fetch
        r.feed(E.Dispatched(P.Dispatch(id=5, execution_id="e1", function="nope", digest="d7")))
        await settle()
        (reply, _), = sent
        assert reply == P.ErrorReply(id=5, code="NOT_FOUND",
                                     message="deploy failed: no such function")
        assert r.core.running == 0 and not r.core.dispatched and not r.tasks
        await r.close()

    arun(main())


def test_get_execution_waits_for_the_end(arun):
    async def main():
        r, rt, replies, _ = await runner()
        rt.hold = True
        r.feed(E.Invoked(b"c", P.Invoke(id=1, function="echo", mode="async"), b"w"))
        eid = replies[0][1].execution_id
        r.feed(E.Asked(b"c2", P.GetExecution(id=3, execution_id=eid, wait=30.0)))
        await settle()
        assert len(replies) == 1  # still waiting
        rt.go.set()
        await settle()
        ident, msg, payload = replies[-1]
        assert ident == b"c2" and msg.id == 3 and msg.execution.status == "succeeded"
        assert payload == b"W"
        await r.close()

    arun(main())


def test_execute_runs_one_execution_for_in_process_callers(arun):
    async def main():
        r, rt, _, _ = await runner()
        info = await r.execute("echo", b"q")
        assert info.status == "succeeded" and r.core.executions[info.execution_id].output == b"Q"  # never inline
        await r.close()

    arun(main())


def test_a_spec_above_the_maxima_is_never_deployed(arun):
    async def main():
        r, rt, _, _ = await runner(maxima=Maxima(memory_mb=64))
        big = P.FunctionSpec(name="big", runtime="fake", limits=P.Limits(memory_mb=65))
        with pytest.raises(errors.InvalidArgument, match="memory_mb"):
            await r.deploy(big)
        assert "big" not in r.deployments and "big" not in r.core.functions
        await r.close()

    arun(main())


class Recycling(FakeRuntime):
    """Records what the Runner hands back: releases (with the instances alive
    then), collections, and refuses to warm up when ``broken``."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = 0
        self.released: list[tuple[str, int]] = []
        self.collected = 0
        self.broken = False

    async def prepare(self, spec):
        return Prepared(spec, handle=spec.env.get("v", ""))

    async def create_instance(self, prepared):
        if self.broken:
            raise errors.Unavailable("cannot warm up")
        self.alive += 1
        return await super().create_instance(prepared)

    async def destroy(self, instance):
        self.alive -= 1

    async def release(self, prepared):
        self.released.append((prepared.handle, self.alive))

    def collect(self):
        self.collected += 1


def test_a_replaced_removed_or_failed_deployment_is_released_after_its_instances(arun):
    async def main():
        rt = Recycling()
        manager = FakeManager(rt)
        manager.runtimes = {"fake": rt}
        r = Runner(manager, SpearletCore("n1"))
        replies: list = []
        r.reply = lambda ident, msg, payload=None: replies.append(msg)
        await r.deploy(P.FunctionSpec(name="echo", runtime="fake", env={"v": "1"},
                                      pool=P.PoolSettings(min_warm=1)))
        await r.deploy(P.FunctionSpec(name="echo", runtime="fake", env={"v": "2"},
                                      pool=P.PoolSettings(min_warm=1)))
        assert rt.released == [("1", 1)]  # v1's instance gone, v2's alive
        rt.broken = True
        with pytest.raises(errors.Unavailable):
            await r.deploy(P.FunctionSpec(name="echo", runtime="fake", env={"v": "3"},
                                          pool=P.PoolSettings(min_warm=1)))
        assert rt.released[-1] == ("3", 1) and r.deployments["echo"].prepared.handle == "2"
        r.handlers()[P.RemoveFunction](b"c", P.RemoveFunction(id=1, name="echo"), None)
        await settle()
        assert rt.released[-1] == ("2", 0) and isinstance(replies[-1], P.Ok)
        loop = asyncio.ensure_future(r.evict_loop(period=0.01))
        while not rt.collected:
            await asyncio.sleep(0.01)
        loop.cancel()
        await r.close()

    arun(main())


def test_a_runtime_error_becomes_a_bounded_error_info():
    exc = errors.FunctionError("boom", details={
        "exit_code": 1, "stderr": "a" * 10_000 + "END", "traceback": "t" * 20_000 + "RAISE"})
    info = _failure("e1", exc).error
    assert info.stderr_tail.endswith("END") and len(info.stderr_tail) == 4096
    assert info.traceback.endswith("RAISE") and len(info.traceback) == 8192
    P.decode(P.encode(P.Result(id=1, execution=P.ExecutionInfo(
        execution_id="e1", function="f", status="failed", error=info))))  # valid on the wire
