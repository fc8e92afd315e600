"""The node <-> SMS link: sessions, results kept until confirmed, batched node records.

* a real in-process Spearlet against a fake SMS (a ROUTER socket in the test)
  that loses results, asks for them again, confirms them and ends sessions;
* a real in-process SMS against raw node sockets: Welcome with a session,
  stale sessions refused, ``finished`` answered with ``acked``/``resend``,
  a resent result counted once, node records flushed at shutdown.

Loopback only, random ports, every wait bounded.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import zmq

from spear import protocol as P
from spear.config import load_config
from spear.sms.daemon import SMS
from spear.sms.events import Received
from spear.sms.nodes import PREFIX
from spear.spearlet.daemon import Spearlet
from spear.store import open_store
from tests.helpers import EXAMPLES

from .test_router import recv, recv_or_none, running_sms

WAIT = 5.0  # generous: only a broken daemon ever waits this long


# ---------------------------------------------------------------- a Spearlet, a fake SMS


class FakeSMS:
    """A ROUTER playing the SMS for one Spearlet: answers Register (sessions from
    ``sessions``), FetchFunction (the wasm ``add``) and Heartbeat (``on_heartbeat``);
    everything received is kept in ``seen`` and announced on ``arrived``."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.sessions = iter(range(101, 10_000))
        self.session = 0
        self.ident = b""
        self.seen: list[tuple] = []
        self.arrived = asyncio.Event()
        self.on_heartbeat = lambda hb: P.HeartbeatAck(id=hb.id)
        self.registers = 0
        self._task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        spec = P.FunctionSpec(name="add", runtime="wasm", handler="add")
        art = (EXAMPLES / "add.wat").read_bytes()
        while True:
            frames = await self.sock.recv_multipart()
            ident, (msg, payload) = frames[0], P.decode(frames[1:])
            self.ident = ident
            self.seen.append((time.monotonic(), msg, payload))
            self.arrived.set()
            if isinstance(msg, P.Register):
                self.registers += 1
                self.session = next(self.sessions)
                await self.send(P.Welcome(id=msg.id, node_id=msg.node.node_id,
                                          heartbeat_interval=0.05, heartbeat_timeout=5.0,
                                          session=self.session))
            elif isinstance(msg, P.FetchFunction):
                await self.send(P.FunctionReply(id=msg.id, spec=spec, digest="d1"), art)
            elif isinstance(msg, P.Heartbeat):
                reply = self.on_heartbeat(msg)
                if reply is not None:
                    await self.send(reply)

    async def send(self, msg, payload=None) -> None:
        await self.sock.send_multipart([self.ident, *P.encode(msg, payload)])

    async def wait_for(self, pred, what: str, timeout: float = WAIT, since: int = 0):
        """The first message (index >= since) that satisfies ``pred``, and its index."""
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.seen):
                _, msg, payload = self.seen[i]
                i += 1
                if pred(msg):
                    return msg, payload, i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; seen "
                                     f"{[type(m).__name__ for _, m, _ in self.seen[since:]]}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        self._task.cancel()


def fake_router(zsocket, port: int):
    router = zsocket(zmq.ROUTER, aio=True)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # as the SMS: a reconnecting node takes over
    router.bind(f"tcp://127.0.0.1:{port}")
    return router


def spearlet_config(tmp_path, sms_port: int, node_port: int):
    return load_config(env={}, overrides={
        "spearlet.sms": f"tcp://127.0.0.1:{sms_port}",
        "spearlet.listen": f"tcp://127.0.0.1:{node_port}",
        "spearlet.data": str(tmp_path / "node"),
        "spearlet.node_id": "link-node",
        "spearlet.reconnect_min": 0.05,
        "spearlet.reconnect_max": 0.2,
        "spearlet.drain_timeout": 0.0,
        "runtimes.docker.enabled": False,
        "runtimes.process.enabled": False,
    })


def is_hb(m) -> bool:
    return isinstance(m, P.Heartbeat)


def test_spearlet_keeps_results_until_the_sms_confirms_them(arun, tmp_path, free_port,
                                                            zsocket):
    sms_port, node_port = free_port(), free_port()

    async def main():
        router = fake_router(zsocket, sms_port)
        fake = FakeSMS(router)
        node = Spearlet(spearlet_config(tmp_path, sms_port, node_port))
        try:
            await node.start()
            await asyncio.wait_for(node.registered.wait(), WAIT)
            hb, _, i = await fake.wait_for(is_hb, "a heartbeat")
            assert hb.session == fake.session and hb.finished == []

            # an execution finishes; its Result "gets lost" on the way
            await fake.send(P.Dispatch(id=77, execution_id="e1", function="add", digest="d1",
                                       args=[2, 3]), b"")
            res, out, i = await fake.wait_for(lambda m: isinstance(m, P.Result), "the result",
                                              since=i)
            assert (res.id, res.execution.execution_id, out) == (77, "e1", b"5")
            # the next heartbeats list it as finished-but-unconfirmed
            hb, _, i = await fake.wait_for(lambda m: is_hb(m) and m.finished, "finished",
                                           since=i)
            assert hb.finished == ["e1"]

            # the SMS lacks it: sent again, once per ack that asks
            asked = []

            def ask_once(h):
                if h.finished and not asked:
                    asked.append(h.id)
                    return P.HeartbeatAck(id=h.id, resend=list(h.finished))
                return P.HeartbeatAck(id=h.id)

            fake.on_heartbeat = ask_once
            res, out, i = await fake.wait_for(lambda m: isinstance(m, P.Result), "a resend",
                                              since=i)
            assert (res.execution.execution_id, out) == ("e1", b"5")
            await asyncio.sleep(0.3)  # several more heartbeats, none asking
            assert [m for _, m, _ in fake.seen[i:] if isinstance(m, P.Result)] == []
            assert len(node.results) == 1

            # confirmed: forgotten, no longer listed
            fake.on_heartbeat = lambda h: P.HeartbeatAck(id=h.id, acked=list(h.finished))
            await fake.wait_for(lambda m: is_hb(m) and not m.finished and len(node.results) == 0,
                                "an empty finished list", since=i)
            assert len(node.results) == 0 and node.results.dropped == 0
        finally:
            await node.close(deregister=False)
            fake.close()

    arun(main())


def test_spearlet_reregisters_over_the_same_link_and_lists_what_is_unconfirmed(
        arun, tmp_path, free_port, zsocket):
    """known=False (its session ended: it turned unhealthy, or the SMS restarted):
    the node registers again without resetting the link, carries the new session,
    and its first heartbeat of the new session lists the results still unconfirmed."""
    sms_port, node_port = free_port(), free_port()

    async def main():
        router = fake_router(zsocket, sms_port)
        fake = FakeSMS(router)
        node = Spearlet(spearlet_config(tmp_path, sms_port, node_port))
        try:
            await node.start()
            _, _, i = await fake.wait_for(is_hb, "a heartbeat")
            first = fake.session
            await fake.send(P.Dispatch(id=5, execution_id="e2", function="add", digest="d1",
                                       args=[1, 1]), b"")
            _, _, i = await fake.wait_for(lambda m: isinstance(m, P.Result), "the result",
                                          since=i)
            fake.on_heartbeat = lambda h: P.HeartbeatAck(id=h.id, known=False)
            _, _, i = await fake.wait_for(lambda m: isinstance(m, P.Register), "a new Register",
                                          since=i)
            fake.on_heartbeat = lambda h: P.HeartbeatAck(id=h.id)
            hb, _, i = await fake.wait_for(is_hb, "a heartbeat of the new session", since=i)
            assert fake.session != first and hb.session == fake.session
            assert hb.finished == ["e2"]
            assert node.reconnects == 0  # the link was kept
            await asyncio.sleep(0.2)
            assert fake.registers == 2  # and it registered once, not in a loop
        finally:
            await node.close(deregister=False)
            fake.close()

    arun(main())


def test_spearlet_keeps_results_across_a_link_reset(arun, tmp_path, free_port, zsocket):
    """The SMS falls silent: the node resets its link (results queued in the old
    socket die with it) and lists them again once registered."""
    sms_port, node_port = free_port(), free_port()

    async def main():
        router = fake_router(zsocket, sms_port)
        fake = FakeSMS(router)
        node = Spearlet(spearlet_config(tmp_path, sms_port, node_port))
        try:
            await node.start()
            _, _, i = await fake.wait_for(is_hb, "a heartbeat")
            node.heartbeat_timeout = 0.3  # notice the silence quickly
            await fake.send(P.Dispatch(id=6, execution_id="e3", function="add", digest="d1",
                                       args=[4, 4]), b"")
            _, _, i = await fake.wait_for(lambda m: isinstance(m, P.Result), "the result",
                                          since=i)
            fake.on_heartbeat = lambda h: None  # silent SMS
            _, _, i = await fake.wait_for(lambda m: isinstance(m, P.Register), "a new Register",
                                          since=i)
            fake.on_heartbeat = lambda h: P.HeartbeatAck(id=h.id, resend=list(h.finished))
            res, out, i = await fake.wait_for(lambda m: isinstance(m, P.Result),
                                              "the result again", since=i)
            assert (res.execution.execution_id, out) == ("e3", b"8")
            assert node.reconnects == 1
        finally:
            await node.close(deregister=False)
            fake.close()

    arun(main())


# ---------------------------------------------------------------- a real SMS, raw nodes


async def raw_node(zsocket, sms, node_id: str, **info):
    sock = zsocket(zmq.DEALER, aio=True)
    sock.setsockopt(zmq.ROUTING_ID, node_id.encode())
    sock.connect(sms.address)
    await sock.send_multipart(P.encode(P.Register(id=1, node=P.NodeInfo(
        node_id=node_id, name=node_id, **info))))
    welcome, _ = await recv(sock)
    assert isinstance(welcome, P.Welcome), welcome
    return sock, welcome


async def heartbeat(sock, node_id, rid, session, **kw) -> P.HeartbeatAck:
    await sock.send_multipart(P.encode(P.Heartbeat(id=rid, node_id=node_id, usage=P.Usage(),
                                                   session=session, **kw)))
    while True:
        msg, _ = await recv(sock)
        if isinstance(msg, P.HeartbeatAck) and msg.id == rid:
            return msg


def test_sms_sessions_over_the_wire(arun, free_port, zsocket):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            sock, w1 = await raw_node(zsocket, sms, "node-s")
            assert w1.session == sms.registry.session_of("node-s") != 0
            ack = await heartbeat(sock, "node-s", 2, w1.session)
            assert ack == P.HeartbeatAck(id=2, known=True)
            # a made-up (or old) session: refused, nothing changes
            seen = sms.registry.nodes["node-s"].last_seen
            ack = await heartbeat(sock, "node-s", 3, w1.session + 1)
            assert ack == P.HeartbeatAck(id=3, known=False)
            assert sms.registry.nodes["node-s"].last_seen == seen
            # registered again: the first session is over
            await sock.send_multipart(P.encode(P.Register(id=4, node=P.NodeInfo(
                node_id="node-s", name="node-s"))))
            w2, _ = await recv(sock)
            assert w2.session not in (0, w1.session)
            assert (await heartbeat(sock, "node-s", 5, w1.session)).known is False
            assert (await heartbeat(sock, "node-s", 6, w2.session)).known is True
            # a session ended by "unhealthy": refused though it was the current one
            sms.registry.tick(time.time() + sms.config.sms.heartbeat_timeout + 1)
            assert sms.registry.nodes["node-s"].state == "unhealthy"
            assert (await heartbeat(sock, "node-s", 7, w2.session)).known is False
            assert sms.registry.nodes["node-s"].state == "unhealthy"
            sock.close(linger=0)

    arun(main())


#: what the raw nodes below offer: enough for the wasm function "add"
WASM_NODE = dict(runtimes=["wasm"], capacity=P.Capacity(cores=4, memory=1 << 32))


async def add_and_a_node(client, zsocket, sms, node_id: str):
    """Deploy "add" and register a raw wasm node ``node_id``; its socket."""
    await client.deploy(P.FunctionSpec(name="add", runtime="wasm", handler="add",
                                       artifact=(EXAMPLES / "add.wat").read_bytes()))
    node, _ = await raw_node(zsocket, sms, node_id, **WASM_NODE)
    return node


async def welcome_then_the_work(node, sms, node_id: str, eid: str) -> None:
    """``node`` registers again: its Welcome (and the session it starts) comes before
    the Dispatch of ``eid``, which waited for it. Closes ``node``."""
    await node.send_multipart(P.encode(P.Register(id=2, node=P.NodeInfo(
        node_id=node_id, **WASM_NODE))))
    first, _ = await recv(node)
    second, _ = await recv(node)
    assert isinstance(first, P.Welcome), (first, second)
    assert first.session == sms.registry.session_of(node_id)
    assert isinstance(second, P.Dispatch) and second.execution_id == eid
    node.close(linger=0)


def test_sms_sends_welcome_before_the_work_that_waited(arun, free_port, zsocket):
    """A node that registers again (after it turned unhealthy) gets its Welcome -
    and the session it starts - before the execution that waited for it."""
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            from spear import AsyncClient

            async with AsyncClient(sms.address, timeout=WAIT) as c:
                node = await add_and_a_node(c, zsocket, sms, "node-w")
                sms.registry.tick(time.time() + sms.config.sms.heartbeat_timeout + 1)
                assert sms.registry.nodes["node-w"].state == "unhealthy"
                eid = await c.submit("add", args=[1, 2])
                assert (await c.execution(eid)).status == "pending"  # waits for its node
                await welcome_then_the_work(node, sms, "node-w", eid)

    arun(main())


def test_sms_acks_finished_results_and_counts_a_resend_once(arun, free_port, zsocket):
    """The node lists a result the SMS never got: it is asked for it again and,
    meanwhile, not declared lost though its node does not list it as running;
    the resent result ends the execution; a further copy is only a late result."""
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            from spear import AsyncClient

            sms.tasks.s.report_grace = 0.05
            async with AsyncClient(sms.address, timeout=WAIT) as c:
                await c.deploy(P.FunctionSpec(name="add", runtime="wasm", handler="add",
                                              artifact=(EXAMPLES / "add.wat").read_bytes()))
                sock, w = await raw_node(zsocket, sms, "node-r", runtimes=["wasm"],
                                         capacity=P.Capacity(cores=4, memory=1 << 32))
                eid = await c.submit("add", args=[2, 2])
                d, _ = await recv(sock)
                assert isinstance(d, P.Dispatch) and d.execution_id == eid
                await asyncio.sleep(0.1)  # past report_grace
                ack = await heartbeat(sock, "node-r", 10, w.session, finished=[eid, "unknown"])
                assert (ack.acked, ack.resend) == (["unknown"], [eid])
                assert (await c.execution(eid)).status in ("scheduled", "running")  # not lost meanwhile
                res = P.Result(id=d.id, execution=P.ExecutionInfo(
                    execution_id=eid, function="add", status="succeeded"))
                await sock.send_multipart(P.encode(res, b"4"))
                # acked only once its record is on disk (the next 20 ms flush): until
                # then it is in neither list and the node keeps it
                ack = await heartbeat(sock, "node-r", 11, w.session, finished=[eid])
                assert eid not in ack.resend
                await asyncio.sleep(0.1)
                ack = await heartbeat(sock, "node-r", 13, w.session, finished=[eid])
                assert (ack.acked, ack.resend) == ([eid], [])
                r = await c.execution(eid)
                assert r.status == "succeeded" and r.output == b"4"
                await sock.send_multipart(P.encode(res, b"4"))  # one copy too many
                await heartbeat(sock, "node-r", 12, w.session)
                st = await c.stats()
                assert st.counts.get("succeeded") == 1 and st.counts.get("late_results") == 1
                assert st.counts.get("lost", 0) == 0
                assert (st.cores_reserved, st.memory_reserved, st.executions_active) == (0, 0, 0)
                sock.close(linger=0)

    arun(main())


def test_sms_flushes_node_records_at_shutdown(arun, tmp_path, free_port):
    """Node records are written in batches by the SMS's periodic tick; one that
    never ran (stopped at once) must still leave them on disk, and a Deregister
    must end up deleted."""
    path = str(tmp_path / "sms")

    def config():
        return load_config(env={}, overrides={
            "sms.listen": f"tcp://127.0.0.1:{free_port()}",
            "storage.backend": "leveldb", "storage.path": path})

    def stored() -> dict:
        s = open_store("leveldb", path)
        try:
            return {k[len(PREFIX):].decode(): msgspec.msgpack.decode(v, type=P.NodeInfo)
                    for k, v in s.scan(PREFIX)}
        finally:
            s.close()

    async def main():
        sms = SMS(config())  # never started: no periodic flush runs
        for nid in ("n1", "n2"):
            sms.feed(Received(nid.encode(), "", "", P.Register(id=1, node=P.NodeInfo(node_id=nid))))
        assert sms.registry.dirty == {"n1", "n2"}
        await sms.close()
        assert set(stored()) == {"n1", "n2"}

        sms = SMS(config())
        # an open SMS knows a node by the connection it registered on
        sms.feed(Received(b"n1", "", "", P.Register(id=1, node=P.NodeInfo(node_id="n1"))))
        sms.feed(Received(b"n1", "", "", P.Deregister(id=2, node_id="n1")))
        await sms.close()
        assert set(stored()) == {"n2"}

    arun(main())


def test_the_first_message_after_a_stall_finds_the_stall_reported(arun, free_port, zsocket):
    """After a stall (SIGSTOP, swap) the nodes may have reset their links: work must
    wait until each node is heard again. The first message handled after the stall
    may come before any timer's task has run (libuv's order): it must find the stall
    known already, not dispatch to the old link."""
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            from spear import AsyncClient

            async with AsyncClient(sms.address, timeout=WAIT) as c:
                node = await add_and_a_node(c, zsocket, sms, "node-z")
                # the loop ran nothing of ours for longer than half the heartbeat timeout
                sms._awake -= sms.config.sms.heartbeat_timeout
                eid = await c.submit("add", args=[1, 2])
                assert "node-z" in sms.core.unconfirmed  # the stall was known first
                assert (await c.execution(eid)).status == "pending"  # waits for its node
                assert await recv_or_none(node, 0.3) is None  # nothing to the old link
                await welcome_then_the_work(node, sms, "node-z", eid)

    arun(main())
