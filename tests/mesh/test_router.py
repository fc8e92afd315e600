"""The ROUTER server under garbage, and the clients against a real in-process SMS.

Each test starts an SMS on loopback inside its own event loop (asyncio and
uvloop, through the ``arun`` fixture), throws frames at it from a raw DEALER,
and checks that it answers or drops them and keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest
import zmq

from spear import AsyncClient, Client, errors
from spear import protocol as P
from spear.config import load_config
from spear.sms.daemon import SMS

REPLY_TIMEOUT = 5.0  # generous: only a broken daemon ever waits this long


def sms_config(port: int):
    return load_config(env={}, overrides={
        "sms.listen": f"tcp://127.0.0.1:{port}",
        "storage.backend": "memory",
    })


@contextlib.asynccontextmanager
async def running_sms(port: int):
    sms = SMS(sms_config(port))
    await sms.start()
    try:
        yield sms
    finally:
        await sms.close()


async def recv(sock, timeout: float = REPLY_TIMEOUT):
    """The next message on ``sock``, decoded; fails the test on a timeout."""
    frames = await asyncio.wait_for(sock.recv_multipart(), timeout)
    return P.decode(frames)


async def recv_or_none(sock, timeout: float):
    if not await sock.poll(int(timeout * 1000)):
        return None
    return P.decode(await sock.recv_multipart())


def body(obj) -> bytes:
    return msgspec.msgpack.encode(obj)


def enc(msg) -> bytes:
    return P.encode(msg)[1]


# (frames, id expected in the ErrorReply, or None when no reply may be sent)
GARBAGE = {
    "wrong-version": ([b"SPEAR/0", enc(P.Ping(id=101))], 101),
    "empty-frames": ([b"", b""], 0),
    "truncated-msgpack": ([P.PROTOCOL, enc(P.GetNode(id=102, node_id="abc"))[:-2]], 0),
    "one-frame": ([P.PROTOCOL], 0),
    "five-frames": ([P.PROTOCOL, enc(P.Ping(id=103)), b"a", b"b", b"c"], 103),
    "ping-id-as-string": ([P.PROTOCOL, body({"t": "Ping", "id": "104"})], 0),
    "getnode-wrong-field-type": ([P.PROTOCOL, body({"t": "GetNode", "id": 105, "node_id": 5})],
                                 105),
    "unknown-tag": ([P.PROTOCOL, body({"t": "Bogus", "id": 106})], 106),
    "not-accepted-welcome": ([P.PROTOCOL, enc(P.Welcome(id=107, node_id="x",
                                                        heartbeat_interval=1.0,
                                                        heartbeat_timeout=5.0))], 107),
    "not-accepted-pong": ([P.PROTOCOL, enc(P.Pong(id=110, role="x"))], 110),
    "error-reply": ([P.PROTOCOL, enc(P.ErrorReply(id=108, code="INTERNAL", message="x"))], None),
    "non-msgpack": ([P.PROTOCOL, b"\xc1\xc1\xc1 garbage"], 0),
    "oversized-body": (lambda: [P.PROTOCOL, bytes(P.MAX_BODY + 1)], 0),
    # over MAX_PAYLOAD but under the socket's MAXMSGSIZE: reaches the decoder
    "oversized-payload": (lambda: [P.PROTOCOL, enc(P.Ping(id=109)), bytes(P.MAX_PAYLOAD + 1)],
                          109),
}


async def ping_on(sock, rid: int) -> P.Pong:
    await sock.send_multipart(P.encode(P.Ping(id=rid)))
    msg, _ = await recv(sock)
    assert isinstance(msg, P.Pong), msg
    assert msg.id == rid
    return msg


async def send_garbage(sock, frames, rid) -> None:
    """Send one bad message and check the answer (or its absence)."""
    if callable(frames):
        frames = frames()
    await sock.send_multipart(frames, copy=False)
    if rid is None:
        # nothing may come back: the next thing on this connection is our Pong
        await ping_on(sock, 999_999)
        return
    msg, payload = await recv(sock)
    assert isinstance(msg, P.ErrorReply), msg
    assert msg.code == "INVALID_ARGUMENT"
    assert msg.id == rid
    assert msg.message
    assert payload is None


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_is_answered_or_dropped(case, arun, free_port, zsocket):
    frames, rid = GARBAGE[case]
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            sock = zsocket(zmq.DEALER, aio=True)
            try:
                sock.connect(sms.address)
                await send_garbage(sock, frames, rid)
                # the same connection keeps working
                pong = await ping_on(sock, 7)
                assert pong.role == "sms"
                assert sms.server.protocol_errors == 1
                assert sms.server.endpoint.handler_errors == 0
            finally:
                sock.close(linger=0)

    arun(main())


def test_not_accepted_message_is_named_in_the_error(arun, free_port, zsocket):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            sock = zsocket(zmq.DEALER, aio=True)
            try:
                sock.connect(sms.address)
                await sock.send_multipart(P.encode(P.HeartbeatAck(id=5)))
                msg, _ = await recv(sock)
                assert isinstance(msg, P.ErrorReply)
                assert "HeartbeatAck" in msg.message
            finally:
                sock.close(linger=0)

    arun(main())


def test_sms_survives_all_garbage_then_serves_clients(arun, free_port, zsocket):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            sock = zsocket(zmq.DEALER, aio=True)
            try:
                sock.connect(sms.address)
                for frames, rid in GARBAGE.values():
                    await send_garbage(sock, frames, rid)
                assert sms.server.protocol_errors == len(GARBAGE)
            finally:
                sock.close(linger=0)
            async with AsyncClient(sms.address, timeout=REPLY_TIMEOUT) as client:
                pong = await client.ping()
                assert (pong.role, pong.version) == ("sms", __import__("spear").__version__)
                assert await client.nodes() == []
                assert await client.nodes("ready") == []
            assert sms.server.protocol_errors == len(GARBAGE)
            assert sms.server.endpoint.handler_errors == 0

    arun(main())


def test_frame_over_max_msg_size_drops_only_that_peer(arun, free_port, zsocket):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            big = zsocket(zmq.DEALER, aio=True)
            other = zsocket(zmq.DEALER, aio=True)
            try:
                big.connect(sms.address)
                other.connect(sms.address)
                await ping_on(big, 1)
                await ping_on(other, 2)
                huge = bytes(P.MAX_PAYLOAD + 64 * 1024)  # over the socket's MAXMSGSIZE
                await big.send_multipart([P.PROTOCOL, enc(P.Ping(id=3)), huge], copy=False)
                del huge
                # other peers keep being served while (and after) libzmq drops `big`
                for rid in range(10, 20):
                    await ping_on(other, rid)
                async with AsyncClient(sms.address, timeout=REPLY_TIMEOUT) as client:
                    assert (await client.ping()).role == "sms"
                    assert await client.nodes() == []
                # the huge message was dropped (libzmq cut the connection before it
                # reached Python) or refused, never served
                reply = await recv_or_none(big, 0.5)
                if reply is None:
                    assert sms.server.protocol_errors == 0
                else:
                    assert isinstance(reply[0], P.ErrorReply), reply
                    assert (reply[0].id, reply[0].code) == (3, "INVALID_ARGUMENT")
                assert sms.server.endpoint.handler_errors == 0
                # the dropped peer reconnects by itself and is served again
                for rid in range(100, 105):
                    await big.send_multipart(P.encode(P.Ping(id=rid)))
                    got = await recv_or_none(big, 1.0)
                    if got is not None:
                        assert isinstance(got[0], P.Pong) and 100 <= got[0].id <= rid, got
                        break
                else:
                    pytest.fail("the dropped peer was never served again")
            finally:
                big.close(linger=0)
                other.close(linger=0)

    arun(main())


# ---------------------------------------------------------------- handlers through the wire


def test_register_then_query_through_the_client(arun, free_port, zsocket):
    port = free_port()
    node = P.NodeInfo(node_id="node-a", name="alpha", runtimes=["wasm"])

    async def main():
        async with running_sms(port) as sms:
            spearlet = zsocket(zmq.DEALER, aio=True)
            try:
                spearlet.setsockopt(zmq.ROUTING_ID, b"node-a")
                spearlet.connect(sms.address)
                await spearlet.send_multipart(P.encode(P.Register(id=1, node=node)))
                welcome, _ = await recv(spearlet)
                assert isinstance(welcome, P.Welcome)
                assert (welcome.id, welcome.node_id) == (1, "node-a")
                assert welcome.heartbeat_interval == sms.config.sms.heartbeat_interval
                assert welcome.heartbeat_timeout == sms.config.sms.heartbeat_timeout
                await spearlet.send_multipart(P.encode(P.Heartbeat(
                    id=2, node_id="node-a", usage=P.Usage(running=4))))
                ack, _ = await recv(spearlet)
                assert ack == P.HeartbeatAck(id=2, known=True)
                # a node speaks only for itself
                await spearlet.send_multipart(P.encode(P.Heartbeat(
                    id=3, node_id="stranger", usage=P.Usage())))
                ack, _ = await recv(spearlet)
                assert isinstance(ack, P.ErrorReply) and ack.code == "PERMISSION_DENIED"
                assert ack.id == 3

                async with AsyncClient(sms.address, timeout=REPLY_TIMEOUT) as client:
                    [info] = await client.nodes()
                    assert (info.node_id, info.state, info.usage.running) == ("node-a", "ready", 4)
                    assert (await client.node("alpha")).node_id == "node-a"
                    with pytest.raises(errors.NotFound):
                        await client.node("missing")

                await spearlet.send_multipart(P.encode(P.Deregister(id=4, node_id="node-a")))
                ok, _ = await recv(spearlet)
                assert ok == P.Ok(id=4)
                await spearlet.send_multipart(P.encode(P.Deregister(id=5, node_id="node-a")))
                err, _ = await recv(spearlet)
                assert isinstance(err, P.ErrorReply)
                assert (err.id, err.code) == (5, "NOT_FOUND")
                assert sms.registry.list() == []
                assert sms.server.protocol_errors == 0
            finally:
                spearlet.close(linger=0)

    arun(main())


def test_open_sms_knows_a_node_by_the_connection_it_registered_on(arun, free_port, zsocket):
    """Without keys a node is the connection it registered on: another connection
    may not heartbeat or deregister for it (it is told to register), and a routing
    id equal to the node id gives no route to the node's messages."""
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            node = zsocket(zmq.DEALER, aio=True)
            other = zsocket(zmq.DEALER, aio=True)
            try:
                node.connect(sms.address)
                await node.send_multipart(P.encode(P.Register(id=9, node=P.NodeInfo(node_id="node-a"))))
                assert isinstance((await recv(node))[0], P.Welcome)
                other.setsockopt(zmq.ROUTING_ID, b"node-a")
                other.connect(sms.address)
                await other.send_multipart(P.encode(P.Heartbeat(id=10, node_id="node-a", usage=P.Usage())))
                ack, _ = await recv(other)
                assert ack == P.HeartbeatAck(id=10, known=False)
                await other.send_multipart(P.encode(P.Deregister(id=11, node_id="node-a")))
                err, _ = await recv(other)
                assert isinstance(err, P.ErrorReply) and (err.id, err.code) == (11, "PERMISSION_DENIED")
                assert [n.node_id for n in sms.registry.list("ready")] == ["node-a"]
                # the SMS reaches the node where it registered, not at b"node-a"
                assert sms.to_node("node-a", P.Ping(id=12))
                msg, _ = await recv(node)
                assert msg == P.Ping(id=12)
            finally:
                node.close(linger=0)
                other.close(linger=0)

    arun(main())


# ---------------------------------------------------------------- clients


def test_async_client_times_out_where_nothing_listens(arun, free_port):
    addr = f"tcp://127.0.0.1:{free_port()}"

    async def main():
        async with AsyncClient(addr, timeout=0.2) as client:
            with pytest.raises(errors.DeadlineExceeded, match="within 0.2s"):
                await client.ping()
            with pytest.raises(errors.DeadlineExceeded):
                await client.nodes(timeout=0.1)
            assert client._peers[None]._pending == {}

    arun(main())


def test_blocking_client_times_out_where_nothing_listens(free_port):
    addr = f"tcp://127.0.0.1:{free_port()}"
    with Client(addr, timeout=0.2) as client:
        with pytest.raises(errors.DeadlineExceeded, match="within 0.2s"):
            client.ping()
        # the timed-out socket was closed, not pooled: a late reply cannot answer the next call
        assert client._idle == {}
        with pytest.raises(errors.DeadlineExceeded):
            client.nodes(timeout=0.1)


def test_blocking_client_rebuilds_not_found(arun, free_port):
    port = free_port()

    def blocking_calls(addr):
        with Client(addr, timeout=REPLY_TIMEOUT) as client:
            with pytest.raises(errors.NotFound, match="missing") as ei:
                client.node("missing")
            assert type(ei.value) is errors.NotFound
            assert ei.value.code == "NOT_FOUND"
            assert client.ping().role == "sms"
            assert client.nodes() == []

    async def main():
        async with running_sms(port) as sms:
            # the blocking client must not block the loop the SMS runs on
            await asyncio.to_thread(blocking_calls, sms.address)

    arun(main())


def test_async_client_rebuilds_not_found(arun, free_port):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            async with AsyncClient(sms.address, timeout=REPLY_TIMEOUT) as client:
                with pytest.raises(errors.NotFound) as ei:
                    await client.node("missing")
                assert type(ei.value) is errors.NotFound

    arun(main())


def test_a_routing_id_in_use_cannot_be_taken_over(arun, free_port, zsocket):
    """No ROUTER_HANDOVER: a second connection that claims a live peer's exact
    routing id is refused by the ROUTER, and the first keeps its messages."""
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            node = zsocket(zmq.DEALER, aio=True)
            thief = zsocket(zmq.DEALER, aio=True)
            try:
                rid = b"r" + bytes(range(16))
                node.setsockopt(zmq.ROUTING_ID, rid)
                node.connect(sms.address)
                await node.send_multipart(P.encode(P.Register(id=1, node=P.NodeInfo(node_id="node-a"))))
                assert isinstance((await recv(node))[0], P.Welcome)
                thief.setsockopt(zmq.ROUTING_ID, rid)
                thief.connect(sms.address)
                await thief.send_multipart(P.encode(P.Ping(id=2)))
                assert not await thief.poll(500)  # refused: never heard, never answered
                for i in range(3):
                    assert sms.to_node("node-a", P.Ping(id=10 + i))
                    msg, _ = await recv(node)
                    assert msg == P.Ping(id=10 + i)
                assert not await thief.poll(100)
            finally:
                node.close(linger=0)
                thief.close(linger=0)

    arun(main())


def test_open_sms_binds_a_node_id_to_the_nodes_proof(arun, free_port, zsocket):
    """Without CURVE a node id is bound to the secret proof its Spearlet keeps:
    another peer cannot re-register under it; the node itself (restarted, on a
    new connection) can, and its work follows it there."""
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            first, thief, again = (zsocket(zmq.DEALER, aio=True) for _ in range(3))
            try:
                for s in (first, thief, again):
                    s.connect(sms.address)
                node = P.NodeInfo(node_id="node-p")
                await first.send_multipart(P.encode(P.Register(id=1, node=node, proof="s3")))
                assert isinstance((await recv(first))[0], P.Welcome)
                for proof in ("", "guess"):
                    await thief.send_multipart(P.encode(P.Register(id=2, node=node, proof=proof)))
                    err, _ = await recv(thief)
                    assert isinstance(err, P.ErrorReply) and err.code == "PERMISSION_DENIED", err
                await again.send_multipart(P.encode(P.Register(id=3, node=node, proof="s3")))
                assert isinstance((await recv(again))[0], P.Welcome)
                assert sms.to_node("node-p", P.Ping(id=4))
                assert (await recv(again))[0] == P.Ping(id=4)
                assert not await thief.poll(100) and not await first.poll(100)
            finally:
                for s in (first, thief, again):
                    s.close(linger=0)

    arun(main())
