"""Batches on the mesh: many messages to one peer in one zmq message.

The envelope is split by spear/mesh/endpoint.py ``unbatch`` (unit-tested
here on every malformed shape) and produced by ``Endpoint.send``; the live
tests run a real in-process SMS on loopback and talk to it from raw DEALER
sockets and from the AsyncClient.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import zmq

from spear import AsyncClient
from spear import protocol as P
from spear.config import load_config
import struct

from spear.mesh.endpoint import BATCH_PROTOCOL, MAX_BATCH, pack_batch, unbatch
from spear.sms.daemon import SMS

TIMEOUT = 5.0


def body(msg) -> bytes:
    return P.encode(msg)[1]


# ------------------------------------------------------------------ the envelope


def test_a_batch_is_three_frames_and_splits_back():
    msgs = [[b"b1"], [b"b2", b"p2"], [b"b3"], [b"", b""]]
    frames = pack_batch(msgs)
    assert len(frames) == 3 and frames[0] == BATCH_PROTOCOL
    assert struct.unpack("<8I", frames[1]) == (2, 0, 2, 3, 2, 0, 0, 1)
    assert frames[2] == b"b1b2p2b3"
    assert unbatch(frames, 0) == [[P.PROTOCOL, b"b1"], [P.PROTOCOL, b"b2", b"p2"],
                                  [P.PROTOCOL, b"b3"], [P.PROTOCOL, b"", b""]]


def test_unbatch_keeps_the_routing_identity():
    frames = [b"peer", *pack_batch([[b"x"], [b"y"]])]
    assert unbatch(frames, 1) == [[b"peer", P.PROTOCOL, b"x"], [b"peer", P.PROTOCOL, b"y"]]


def _index(*lens) -> bytes:
    return struct.pack(f"<{len(lens)}I", *lens)


@pytest.mark.parametrize("frames", [
    [BATCH_PROTOCOL, _index(1, 0)],                           # no blob frame
    [BATCH_PROTOCOL, _index(1, 0), b"x", b"extra"],           # a frame too many
    [BATCH_PROTOCOL, b"", b"x"],                              # empty index
    [BATCH_PROTOCOL, b"\x01\x00\x00", b"x"],                   # index not whole u32 pairs
    [BATCH_PROTOCOL, _index(2, 0), b"x"],                     # body past the blob
    [BATCH_PROTOCOL, _index(1, 3), b"xy"],                    # payload past the blob
    [BATCH_PROTOCOL, _index(1, 0), b"xy"],                    # bytes left over
    [BATCH_PROTOCOL, _index(0xFFFFFFFF, 0), b"x"],            # huge length
    [BATCH_PROTOCOL, _index(*([1, 0] * (MAX_BATCH + 1))), b"x" * (MAX_BATCH + 1)],
], ids=["no-blob", "extra-frame", "empty-index", "ragged-index", "short-body",
        "short-payload", "left-over", "huge-length", "too-many"])
def test_unbatch_refuses_malformed_envelopes(frames):
    assert unbatch(frames, 0) is None


# ------------------------------------------------------------------ live, against an SMS


@contextlib.asynccontextmanager
async def running_sms(port: int):
    sms = SMS(load_config(env={}, overrides={"sms.listen": f"tcp://127.0.0.1:{port}",
                                             "storage.backend": "memory"}))
    await sms.start()
    try:
        yield sms
    finally:
        await sms.close()


async def recv_all(sock, want: int) -> tuple[list, int]:
    """Messages until ``want`` arrived: (decoded messages, zmq messages that carried them)."""
    out, carriers = [], 0
    while len(out) < want:
        frames = await asyncio.wait_for(sock.recv_multipart(), TIMEOUT)
        carriers += 1
        if frames[0] == BATCH_PROTOCOL:
            parts = unbatch(frames, 0)
            assert parts is not None, f"malformed batch from the SMS: {frames[:3]}"
        else:
            parts = [frames]
        out.extend(P.decode(p)[0] for p in parts)
    return out, carriers


def test_a_peer_that_sends_a_batch_gets_every_answer(arun, free_port, zsocket):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            sock = zsocket(zmq.DEALER, aio=True)
            sock.connect(sms.address)
            n = 200
            await sock.send_multipart(pack_batch([[body(P.Ping(id=i))]
                                                  for i in range(1, n + 1)]))
            msgs, carriers = await recv_all(sock, n)
            assert sorted(m.id for m in msgs) == list(range(1, n + 1))
            assert all(isinstance(m, P.Pong) for m in msgs)
            # answers to one batch leave together, as a batch
            assert carriers < n
            ep = sms.server.endpoint
            assert ep.batches_received == 1 and ep.batches_sent >= 1
            assert sms.server.protocol_errors == 0

    arun(main())


def test_a_plain_peer_never_gets_a_batch(arun, free_port, zsocket):
    """Scripts, other languages and the blocking client speak one message at a time."""
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            sock = zsocket(zmq.DEALER, aio=True)
            sock.connect(sms.address)
            n = 300
            for i in range(1, n + 1):  # many requests in flight: replies could be coalesced
                await sock.send_multipart(P.encode(P.Ping(id=i)))
            got = []
            for _ in range(n):
                frames = await asyncio.wait_for(sock.recv_multipart(), TIMEOUT)
                assert frames[0] == P.PROTOCOL, f"a plain peer got {frames[0]!r}"
                got.append(P.decode(frames)[0].id)
            assert sorted(got) == list(range(1, n + 1))
            assert sms.server.endpoint.batches_sent == 0

    arun(main())


@pytest.mark.parametrize("frames,rid", [
    ([BATCH_PROTOCOL, _index(5, 0), body(P.Ping(id=5))], 0),           # lengths disagree
    ([BATCH_PROTOCOL, b"\x07", body(P.Ping(id=5))], 0),                # ragged index
])
def test_a_malformed_batch_is_a_protocol_error(frames, rid, arun, free_port, zsocket):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            sock = zsocket(zmq.DEALER, aio=True)
            sock.connect(sms.address)
            await sock.send_multipart(frames)
            (err,), _ = await recv_all(sock, 1)
            assert isinstance(err, P.ErrorReply) and err.code == "INVALID_ARGUMENT"
            assert "protocol" in err.message
            await sock.send_multipart(P.encode(P.Ping(id=9)))
            (pong,), _ = await recv_all(sock, 1)
            assert isinstance(pong, P.Pong) and pong.id == 9
            assert sms.server.protocol_errors == 1
            assert sms.server.endpoint.handler_errors == 0

    arun(main())


def test_bad_messages_inside_a_batch_are_answered_one_by_one(arun, free_port, zsocket):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            sock = zsocket(zmq.DEALER, aio=True)
            sock.connect(sms.address)
            parts = [body(P.Ping(id=1)), b"\xc1garbage", body(P.GetNode(id=3, node_id="nope")),
                     body(P.Ping(id=4))]
            await sock.send_multipart(pack_batch([[p] for p in parts]))
            msgs, _ = await recv_all(sock, 4)
            by_kind = sorted((type(m).__name__, m.id) for m in msgs)
            assert by_kind == [("ErrorReply", 0), ("ErrorReply", 3), ("Pong", 1), ("Pong", 4)]

    arun(main())


def test_async_client_pipelines_in_batches_both_ways(arun, free_port):
    port = free_port()

    async def main():
        async with running_sms(port) as sms:
            async with AsyncClient(sms.address, timeout=TIMEOUT) as cl:
                pongs = await asyncio.gather(*[cl.ping() for _ in range(500)])
                assert len(pongs) == 500 and all(p.role == "sms" for p in pongs)
                ep = sms.server.endpoint
                assert ep.batches_received >= 1, "the client sent no batch"
                assert ep.batches_sent >= 1, "the SMS answered a batching client one by one"
                assert ep.received < 500  # fewer zmq messages than requests
                # one at a time still works (a batch of one is sent plain)
                assert (await cl.ping()).role == "sms"

    arun(main())


# ------------------------------------------------------------------ random envelopes

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALID = [body(P.Ping(id=1)), body(P.ListNodes(id=2)), body(P.GetNode(id=3, node_id="x")),
          body(P.Stats(id=4)), body(P.ListFunctions(id=5))]
_part = st.one_of(st.sampled_from(_VALID), st.binary(max_size=64))
_envelope = st.one_of(
    # a well-formed envelope over random or valid bodies (and payloads)
    st.lists(st.tuples(_part, st.none() | st.binary(max_size=32)), min_size=1, max_size=40).map(
        lambda ms: pack_batch([[b] if p is None else [b, p] for b, p in ms])),
    # a random index over a random blob
    st.tuples(st.lists(st.integers(0, 70), min_size=2, max_size=12).filter(lambda x: len(x) % 2 == 0),
              st.binary(max_size=200)).map(lambda t: [BATCH_PROTOCOL, _index(*t[0]), t[1]]),
    # anything after the marker
    st.lists(st.binary(max_size=48), min_size=0, max_size=8).map(lambda fs: [BATCH_PROTOCOL, *fs]),
)


def test_random_batches_never_hurt_the_sms(free_port):
    """Random envelopes at a live SMS (in a thread): every answer decodes, it keeps serving."""
    import threading

    import uvloop

    port = free_port()
    ready = threading.Event()
    box: dict = {}

    def serve():
        loop = uvloop.new_event_loop()
        box["loop"] = loop

        async def start():
            sms = SMS(load_config(env={}, overrides={"sms.listen": f"tcp://127.0.0.1:{port}",
                                                     "storage.backend": "memory"}))
            await sms.start()
            box["sms"] = sms
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(box["sms"].close())
        loop.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    seen = {"answers": 0}

    def answers_until_pong(rid: int) -> None:
        """Drain answers (each must decode) until the Pong to ``rid``."""
        while True:
            assert sock.poll(int(TIMEOUT * 1000)), "the SMS stopped answering"
            frames = sock.recv_multipart()
            parts = unbatch(frames, 0) if frames[0] == BATCH_PROTOCOL else [frames]
            assert parts is not None, f"malformed batch from the SMS: {frames[:3]}"
            for p in parts:
                msg, _ = P.decode(p)
                seen["answers"] += 1
                if isinstance(msg, P.Pong) and msg.id == rid:
                    return

    try:
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(frames=_envelope)
        def fuzz(frames):
            sock.send_multipart(frames)
            rid = 10**9 + seen["answers"]
            sock.send_multipart(P.encode(P.Ping(id=rid)))
            answers_until_pong(rid)

        fuzz()
        sms = box["sms"]
        assert sms.server.endpoint.handler_errors == 0
        assert seen["answers"] > 150
    finally:
        sock.close(0)
        box["loop"].call_soon_threadsafe(box["loop"].stop)
        t.join(10)
