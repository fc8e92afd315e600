"""Endpoint.keep_payloads: big payload frames arrive as the zmq.Frame that carried
them and are sent on without a copy; small ones and batches stay bytes."""

from __future__ import annotations

import asyncio

import zmq

from spear import protocol as P
from spear.mesh.endpoint import BATCH_PROTOCOL, ZERO_COPY_MIN, Endpoint, context


def test_router_keeps_big_payloads_as_frames_and_forwards_them():
    async def main():
        got: list = []
        router = Endpoint(zmq.ROUTER, got.append, name="t")
        router.keep_payloads = True
        router.batching = False
        port = router.sock.bind_to_random_port("tcp://127.0.0.1")
        router.start()
        peer = context().socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(f"tcp://127.0.0.1:{port}")
        big, small = b"b" * ZERO_COPY_MIN, b"s" * (ZERO_COPY_MIN - 1)
        sent = [[P.PROTOCOL, b"body", big], [P.PROTOCOL, b"body", small], [P.PROTOCOL, b"body"],
                [BATCH_PROTOCOL, b"\0" * 8, big], [b"other", b"body", big]]
        for frames in sent:
            peer.send_multipart(frames)
        for _ in range(200):
            if len(got) == len(sent):
                break
            await asyncio.sleep(0.01)
        assert len(got) == len(sent)
        kept = got[0][3]
        assert isinstance(kept, zmq.Frame) and kept.bytes == big
        assert [type(m[3]) for m in got[1:2] + got[3:]] == [bytes] * 3  # small, batch, not Spear
        assert got[2][1:] == [P.PROTOCOL, b"body"]
        # sent back as is: the peer gets the same bytes
        assert router.send([got[0][0], P.PROTOCOL, b"again", kept])
        frames = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
            None, peer.recv_multipart), 5)
        assert frames == [P.PROTOCOL, b"again", big]
        peer.close()
        router.close()

    asyncio.run(main())
