"""Microbenchmarks of what the mesh does with payload frames.

Not part of the test run; ``python -m pytest bench/test_frames.py
--benchmark-only``. One message is ``[PROTOCOL, body, payload]`` (an
``Invoke`` body and a 64 B, 64 KiB or 1 MiB payload), over a PAIR of sockets
on ``inproc`` (no kernel, libzmq hands message pointers across) and ``ipc``
(a Unix socket, as between processes on one node). Groups:

* ``hop <transport> <size>``: one message sent on one socket and received on
  the other, the send copying (``copy=True``: libzmq owns a copy) or not
  (``copy=False``: libzmq keeps a reference to the bytes until they are on
  the wire, at the cost of a release notification per frame), the receive
  copying into ``bytes`` or handing over ``zmq.Frame`` objects (``copy=False``).
  ``endpoint`` is :meth:`spear.mesh.endpoint.Endpoint.send`'s own choice
  (zero-copy at ``ZERO_COPY_MIN`` and above) with the copying receive its
  drain does. Compare it with the ``send=*`` rows with ``recv=copy`` at each
  size: that is how to check the threshold (it should match the better one).
* ``pack_batch`` / ``unbatch``: coalescing messages into one zmq message and
  splitting it again, for the two batches the endpoint actually builds: 256
  messages with a 64 B payload (``MAX_BATCH``), and 16 with a 64 KiB payload
  (a 1 MiB blob, ``MAX_BATCH_BYTES``). Divide by ``extra_info["messages"]``
  for the cost per message. A 1 MiB payload is never batched (over
  ``BATCH_PAYLOAD_LIMIT``): it only appears in the hop groups.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from contextlib import contextmanager

import pytest
import zmq

from bench.samples import SAMPLES
from spear import protocol as P
from spear.mesh import endpoint as E

SIZES = {"64B": 64, "64KiB": 64 * 1024, "1MiB": 1024 * 1024}
TRANSPORTS = ("inproc", "ipc")
BATCHES = {"256x64B": (256, 64), "16x64KiB": (16, 64 * 1024)}
TIMEOUT_MS = 5000  # a lost message fails the bench instead of hanging it
_BODY = P.encode(SAMPLES[P.Invoke]())[1]
_names = itertools.count()


def _frames(size: int) -> list:
    return [P.PROTOCOL, _BODY, os.urandom(size)]


@contextmanager
def _receiver(transport: str):
    """A bound PAIR socket and the address to connect to."""
    sock = E.context().socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    tmp = None
    if transport == "inproc":
        addr = f"inproc://bench-frames-{os.getpid()}-{next(_names)}"
    else:
        tmp = tempfile.mkdtemp(prefix="spear-bench-")
        addr = f"ipc://{tmp}/pair"
    try:
        sock.bind(addr)
        yield sock, addr
    finally:
        sock.close(linger=0)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _check(got: list, frames: list) -> None:
    assert len(got) == 3 and bytes(got[2]) == frames[2]


@pytest.mark.parametrize("recv_copy", [True, False], ids=["recv=copy", "recv=nocopy"])
@pytest.mark.parametrize("send_copy", [True, False], ids=["send=copy", "send=zerocopy"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hop(benchmark, transport, size, send_copy, recv_copy):
    frames = _frames(SIZES[size])
    with _receiver(transport) as (rx, addr):
        tx = E.context().socket(zmq.PAIR)
        tx.setsockopt(zmq.LINGER, 0)
        tx.setsockopt(zmq.SNDTIMEO, TIMEOUT_MS)
        try:
            tx.connect(addr)
            send, recv = tx.send_multipart, rx.recv_multipart

            def hop():
                send(frames, copy=send_copy)
                return recv(copy=recv_copy)

            benchmark.group = f"hop {transport} {size}"
            benchmark.extra_info["payload_bytes"] = SIZES[size]
            _check(benchmark(hop), frames)
        finally:
            tx.close(linger=0)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hop_endpoint(benchmark, transport, size):
    """``Endpoint.send`` (outside a loop, so not batched) and a copying receive."""
    frames = _frames(SIZES[size])
    with _receiver(transport) as (rx, addr):
        ep = E.Endpoint(zmq.PAIR, lambda f: None, name="bench-tx")
        try:
            ep.connect(addr)
            send, recv = ep.send, rx.recv_multipart

            def hop():
                if not send(frames):
                    raise AssertionError("Endpoint.send dropped the message")
                return recv()

            benchmark.group = f"hop {transport} {size}"
            benchmark.extra_info["payload_bytes"] = SIZES[size]
            benchmark.extra_info["zero_copy"] = SIZES[size] >= E.ZERO_COPY_MIN
            _check(benchmark(hop), frames)
        finally:
            ep.close()


def _batch_members(count: int, size: int) -> list:
    return [[_BODY, os.urandom(size)] for _ in range(count)]


@pytest.mark.parametrize("batch", list(BATCHES))
def test_pack_batch(benchmark, batch):
    count, size = BATCHES[batch]
    assert size <= E.BATCH_PAYLOAD_LIMIT and count <= E.MAX_BATCH
    msgs = _batch_members(count, size)
    benchmark.group = "pack_batch"
    benchmark.extra_info["messages"] = count
    frames = benchmark(E.pack_batch, msgs)
    assert frames[0] == E.BATCH_PROTOCOL and len(frames[1]) == 8 * count


@pytest.mark.parametrize("batch", list(BATCHES))
def test_unbatch(benchmark, batch):
    count, size = BATCHES[batch]
    msgs = _batch_members(count, size)
    frames = [bytes(f) for f in E.pack_batch(msgs)]  # as the copying drain receives them
    benchmark.group = "unbatch"
    benchmark.extra_info["messages"] = count
    out = benchmark(E.unbatch, frames, 0)
    assert out is not None and len(out) == count
    assert out[-1] == [P.PROTOCOL, *msgs[-1]]
