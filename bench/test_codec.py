"""Microbenchmarks of the wire codec: ``protocol.encode`` / ``protocol.decode``.

Not part of the test run (``testpaths`` is ``tests``); run with
``python -m pytest bench/test_codec.py --benchmark-only``. Groups:

* ``encode`` / ``decode``: every member of ``protocol.Message``, one
  representative instance each (``bench/samples.py``), without a payload.
  Compare a message with itself across runs; across messages the figures
  mostly follow the body size (``extra_info["body_bytes"]``).
* ``encode <Type> payload`` / ``decode <Type> payload``: the messages that carry
  a payload frame on the hot path (``Invoke``, ``Dispatch``, ``Result``) with
  an empty, a 64 B and a 1 MiB payload. The payload is a raw frame that is
  never re-encoded, so 1 MiB should cost about what 64 B does; if it doesn't,
  something copies the payload.
* ``encode+decode 64B``: one hot-path message and a 64 B payload through both,
  the codec's share of a hop.
"""

from __future__ import annotations

import os

import pytest

from bench.samples import PAYLOAD_CARRIERS, SAMPLES, message_types
from spear import protocol as P

PAYLOADS = {"none": None, "64B": os.urandom(64), "1MiB": os.urandom(1024 * 1024)}
TYPES = {t.__name__: t for t in message_types()}
CARRIERS = [t.__name__ for t in PAYLOAD_CARRIERS]


def _sample(name: str) -> P._Msg:
    builder = SAMPLES.get(TYPES[name])
    if builder is None:  # tests/test_bench_samples.py fails too: add the entry
        pytest.fail(f"bench/samples.py has no sample of {name}")
    return builder()


def _wire(msg: P._Msg, payload) -> list:
    """What a socket hands the decoder: bytes frames (``recv`` with copy=True)."""
    return [bytes(f) for f in P.encode(msg, payload)]


@pytest.mark.parametrize("kind", list(TYPES))
def test_encode(benchmark, kind):
    msg = _sample(kind)
    benchmark.group = "encode"
    benchmark.extra_info["body_bytes"] = len(P.encode(msg)[1])
    frames = benchmark(P.encode, msg)
    assert frames[0] == P.PROTOCOL


@pytest.mark.parametrize("kind", list(TYPES))
def test_decode(benchmark, kind):
    msg = _sample(kind)
    frames = _wire(msg, None)
    benchmark.group = "decode"
    benchmark.extra_info["body_bytes"] = len(frames[1])
    got, payload = benchmark(P.decode, frames)
    assert got == msg and payload is None


@pytest.mark.parametrize("size", list(PAYLOADS))
@pytest.mark.parametrize("kind", CARRIERS)
def test_encode_payload(benchmark, kind, size):
    msg, payload = _sample(kind), PAYLOADS[size]
    benchmark.group = f"encode {kind} payload"
    frames = benchmark(P.encode, msg, payload)
    if payload is not None:
        assert frames[2] is payload  # the payload frame travels as is


@pytest.mark.parametrize("size", list(PAYLOADS))
@pytest.mark.parametrize("kind", CARRIERS)
def test_decode_payload(benchmark, kind, size):
    msg, payload = _sample(kind), PAYLOADS[size]
    frames = _wire(msg, payload)
    benchmark.group = f"decode {kind} payload"
    got, got_payload = benchmark(P.decode, frames)
    assert got == msg
    if payload is not None:
        assert got_payload is frames[2]  # handed on, not copied


@pytest.mark.parametrize("kind", CARRIERS)
def test_roundtrip_small(benchmark, kind):
    """encode + decode of one message with a 64 B payload: the codec's share of a hop."""
    msg, payload = _sample(kind), PAYLOADS["64B"]
    encode, decode = P.encode, P.decode
    benchmark.group = "encode+decode 64B"
    got, _ = benchmark(lambda: decode(encode(msg, payload)))
    assert got == msg
