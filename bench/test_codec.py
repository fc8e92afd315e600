"""Microbenchmarks of the wire codec: ``protocol.encode`` / ``protocol.decode``.

Run with ``python3 -m pytest bench/test_codec.py`` (not part of the test run).
Each bench encodes or decodes one ``Invoke`` (client -> daemon) or one
``Result`` (daemon -> client) with an empty, a small (64 B) or a 1 MiB
payload. The payload is a raw frame that is never re-encoded, so the 1 MiB
cases should cost about what the small ones do; if they don't, something
copies the payload. Compare within a group: machines are shared and noisy.
"""

from __future__ import annotations

import os

import pytest

from spear import protocol as P

PAYLOADS = {"empty": None, "64B": os.urandom(64), "1MiB": os.urandom(1024 * 1024)}


def _invoke(i: int = 7) -> P.Invoke:
    return P.Invoke(id=i, function="add-wasm", args=[2, 40], trace_id="0123456789abcdef")


def _result(i: int = 7) -> P.Result:
    return P.Result(id=i, execution=P.ExecutionInfo(
        execution_id="5f0e8c4b9a7d4e2f8b1c3d5e7f9a0b1c", function="add-wasm", status="succeeded",
        node_id="spearlet-1-78e3fe61", exit_code=None,
        timings=P.Timings(queue=1.1e-5, cold_start=0.0, run=2.5e-5, total=2.8e-5),
        usage=P.ExecUsage(cpu_time=2.1e-5, peak_memory=65536, fuel=12),
        trace_id="5f0e8c4b9a7d4e2f8b1c3d5e7f9a0b1c", submitted_at=1.7e9, finished_at=1.7e9 + 3e-5,
        args=[2, 40]))


MESSAGES = {"Invoke": _invoke, "Result": _result}


@pytest.mark.parametrize("size", list(PAYLOADS))
@pytest.mark.parametrize("kind", list(MESSAGES))
def test_encode(benchmark, kind, size):
    msg, payload = MESSAGES[kind](), PAYLOADS[size]
    benchmark.group = f"encode {kind}"
    frames = benchmark(P.encode, msg, payload)
    assert frames[0] == P.PROTOCOL
    if payload is not None:
        assert frames[2] is payload  # the payload frame travels as is


@pytest.mark.parametrize("size", list(PAYLOADS))
@pytest.mark.parametrize("kind", list(MESSAGES))
def test_decode(benchmark, kind, size):
    msg, payload = MESSAGES[kind](), PAYLOADS[size]
    # what a socket hands over: bytes frames (recv_multipart with copy=True)
    frames = [bytes(f) for f in P.encode(msg, payload)]
    benchmark.group = f"decode {kind}"
    got, got_payload = benchmark(P.decode, frames)
    assert got == msg
    assert (got_payload is None) == (payload is None)


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_roundtrip_small(benchmark, kind):
    """encode + decode of one message with a 64-byte payload: the codec's share of a hop."""
    msg, payload = MESSAGES[kind](), PAYLOADS["64B"]
    encode, decode = P.encode, P.decode
    benchmark.group = "encode+decode 64B"
    got, _ = benchmark(lambda: decode(encode(msg, payload)))
    assert got == msg
