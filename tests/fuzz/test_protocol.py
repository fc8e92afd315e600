"""Frames the wire decoder (spear/protocol.py) must refuse, found by the wire fuzz.

Each test sends the smallest frames that showed one finding to an in-process
SMS (the ``tsms`` fixture): the protocol decides what decodes, the SMS's
router what is answered. All are fixed and stay as regression tests.
"""

from __future__ import annotations

import pytest

from spear import Client, protocol as P
from tests.helpers import ADD_WAT, dealer, request

from .strategies import UNDECODABLE

HUGE = "A" * (1 << 20)


@pytest.mark.parametrize("case", list(UNDECODABLE))
def test_undecodable_frame_is_answered(tsms, case):
    """spear/protocol.py decode() only catches msgspec.ValidationError/DecodeError.

    msgspec raises RecursionError for nesting deeper than the interpreter's
    recursion limit (here 5,000 arrays in an unknown field of a Ping) and a
    plain UnicodeDecodeError for a msgpack str of a known field that is not
    UTF-8 (here GetNode.node_id; any bit flip in such a string does it: the fuzz
    hits it within seconds). Neither is a
    ProtocolError, so RouterServer._on_frames (spear/mesh/router.py) lets it
    through to Endpoint._drain, which logs a traceback: no ErrorReply is sent.
    The same escape exists in DealerPeer._on_frames (the Spearlet's link) and
    the clients, which share DealerPeer (they raise instead of skipping).
    """
    s = dealer(tsms.address)
    try:
        reply = request(s, UNDECODABLE[case], timeout=1.0)
        assert isinstance(reply, P.ErrorReply) and reply.code == "INVALID_ARGUMENT", reply
    finally:
        s.close(0)


@pytest.mark.parametrize("case", list(UNDECODABLE))
def test_undecodable_frame_does_not_stop_the_sms(tsms, case):
    """Whatever the answer, the SMS keeps serving after such frames (passes today)."""
    s = dealer(tsms.address)
    try:
        for _ in range(50):
            s.send_multipart(UNDECODABLE[case])
        pong = request(s, P.Ping(id=77))
        while isinstance(pong, P.ErrorReply):
            pong = P.decode(s.recv_multipart())[0]
        assert isinstance(pong, P.Pong) and pong.id == 77
    finally:
        s.close(0)


@pytest.mark.parametrize("field", ["trace_id", "execution_id", "node.name", "node.labels"])
def test_huge_fields_are_refused(tsms, field):
    """spear/protocol.py: Invoke.trace_id and Invoke.execution_id, NodeInfo.name/address/
    public_key and NodeInfo.labels/unavailable (``dict[str, str]``, not LabelMap) have no
    length limit (FunctionSpec fields got theirs in b5c71f8).

    Each is accepted at 1 MiB (up to MAX_BODY, 4 MiB) and retained: execution
    records (up to max_executions=100,000 of them; execution_id also becomes a
    store key) and node records (persisted, sync write). Expected INVALID_ARGUMENT.
    """
    with Client(tsms.address, timeout=5.0) as cl:
        cl.deploy(P.FunctionSpec(name="add", runtime="wasm", handler="add", artifact=ADD_WAT))
    s = dealer(tsms.address, b"big-node" if field.startswith("node.") else None)
    try:
        if field in ("trace_id", "execution_id"):
            msg = P.Invoke(id=9, function="add", args=[1, 2], mode="async", **{field: HUGE})
        elif field == "node.name":
            msg = P.Register(id=9, node=P.NodeInfo(node_id="big-node", name=HUGE))
        else:
            msg = P.Register(id=9, node=P.NodeInfo(node_id="big-node", labels={"k": HUGE}))
        reply = request(s, msg)
        assert isinstance(reply, P.ErrorReply) and reply.code == "INVALID_ARGUMENT", \
            f"{type(reply).__name__} accepted a 1 MiB {field}"
    finally:
        s.close(0)
