"""AsyncClient's streams against a real SMS: event subscriptions and invocation streams."""

from __future__ import annotations

import asyncio
import json
import pytest

from spear import AsyncClient, errors, protocol as P
from spear.cluster import Cluster
from tests.helpers import EXAMPLES, add_spec
HB = dict(heartbeat_interval=0.2, heartbeat_timeout=2.0, cleanup_interval=60.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("client") / "cluster", spearlets=1, store="memory",
                host_roots=[str(EXAMPLES)], **HB)
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def take(stream, pred, limit: int = 1000) -> list[P.Event]:
    """Events from ``stream`` up to and including the first that satisfies ``pred``."""
    seen = []
    async for ev in stream:
        seen.append(ev)
        if pred(ev) or len(seen) >= limit:
            return seen
    return seen


def test_events_replay_then_follow_live_and_resume_from_a_seq(cluster):
    async def main():
        async with AsyncClient(cluster.sms_addr) as c:
            stream = c.events(0)
            # the replay holds the node that registered before we subscribed
            first = await take(stream, lambda ev: ev.kind == "node")
            assert first[-1].kind == "node"
            await c.deploy(add_spec("cl-live"))
            live = await take(stream, lambda ev: ev.kind == "function" and ev.key == "cl-live")
            await stream.aclose()
            seqs = [ev.seq for ev in first + live]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            mark = live[-1].seq
            # resuming from a seq gives only what came after it
            await c.remove("cl-live")
            resumed = c.events(mark)
            after = await take(resumed, lambda ev: ev.key == "cl-live")
            await resumed.aclose()
            assert all(ev.seq > mark for ev in after)
            assert after[-1].kind == "function" and after[-1].key == "cl-live"

    run(main())


def test_concurrent_subscriptions_each_get_every_event(cluster):
    async def main():
        async with AsyncClient(cluster.sms_addr) as c:
            a, b = c.events(0), c.events(0)
            await c.deploy(add_spec("cl-both"))
            got = await asyncio.gather(*(take(s, lambda ev: ev.key == "cl-both") for s in (a, b)))
            for s in (a, b):
                await s.aclose()
            assert [ev.seq for ev in got[0]] == [ev.seq for ev in got[1]]
            assert c._feed._queues == {}  # both unsubscribed

    run(main())


def test_a_subscriber_too_far_behind_gets_resource_exhausted_after_what_it_has(cluster):
    async def main():
        async with AsyncClient(cluster.sms_addr) as c:
            for i in range(3):
                await c.deploy(add_spec(f"cl-flood-{i}"))
            stream = c.events(0, queue_size=2)
            seen = [await stream.__anext__()]  # subscribed: the replay (>= 4 events) floods in
            await asyncio.sleep(0.5)
            with pytest.raises(errors.ResourceExhausted, match="subscribe again from seq"):
                async for ev in stream:
                    seen.append(ev)
            assert len(seen) <= 1 + 2  # what it had read, then what its queue held
            # resuming from the last seq seen picks up where it stopped
            resumed = c.events(seen[-1].seq)
            nxt = await resumed.__anext__()
            await resumed.aclose()
            assert nxt.seq > seen[-1].seq

    run(main())


def test_closing_the_client_ends_open_subscriptions_with_unavailable(cluster):
    async def main():
        c = AsyncClient(cluster.sms_addr)
        stream = c.events(0)
        await stream.__anext__()
        waiting = asyncio.ensure_future(take(stream, lambda ev: False))
        await asyncio.sleep(0.2)
        await c.close()
        with pytest.raises(errors.Unavailable):
            await waiting

    run(main())


def test_stream_yields_chunks_then_result_and_an_abandoned_one_is_forgotten(cluster):
    async def main():
        async with AsyncClient(cluster.sms_addr, timeout=20) as c:
            await c.deploy(P.FunctionSpec(name="cl-words", runtime="process",
                                          handler="handlers:wordcount", workdir=str(EXAMPLES)))
            items = [item async for item in c.stream("cl-words", b"a b a")]
            assert any(isinstance(i, bytes) and b"distinct words" in i for i in items[:-1])
            assert items[-1].ok and json.loads(items[-1].output) == {"a": 2, "b": 1}
            stream = c.stream("cl-words", b"x y")
            await stream.__anext__()
            await stream.aclose()  # the caller gave up before the result
            assert c._peers[None]._pending == {}

    run(main())


def test_follow_yields_a_running_streamed_executions_chunks_then_its_record(cluster):
    async def main():
        async with AsyncClient(cluster.sms_addr, timeout=20) as c:
            await c.deploy(P.FunctionSpec(name="cl-ticks", runtime="process", command=[
                "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo tick$i >&2; sleep 0.25; done; echo done"]))
            invoked = asyncio.ensure_future(_drain(c.stream("cl-ticks")))
            while True:  # bounded by run()'s timeout
                items, _ = await c.executions(function="cl-ticks")
                if items and items[0].status == "running":
                    break
                await asyncio.sleep(0.05)
            followed = [i async for i in c.follow(items[0].execution_id, wait=20)]
            assert b"tick8" in b"".join(i for i in followed if isinstance(i, bytes))
            assert followed[-1].ok and followed[-1].output == b"done\n"
            assert (await invoked)[-1].output == b"done\n"  # the invoker's stream is unchanged

    run(main())


async def _drain(stream) -> list:
    return [item async for item in stream]
