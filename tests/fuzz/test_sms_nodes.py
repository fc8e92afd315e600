"""What a peer may say about nodes to the SMS (spear/sms/daemon.py, nodes), found by the wire fuzz.

Raw sockets against an in-process SMS (the ``tsms`` fixture): messages from a
routing id that is not UTF-8, Heartbeat and Deregister in another node's
name, capacities that overflowed Stats. All are fixed and stay as regression
tests.
"""

from __future__ import annotations

import pytest

from spear import Client, protocol as P
from tests.helpers import dealer, request

from .sms_thread import register_node
from .strategies import NON_UTF8_IDENT


@pytest.mark.parametrize("msg", [
    P.Result(id=5, execution=P.ExecutionInfo(execution_id="e", function="f", status="succeeded")),
    P.LogChunk(id=6, execution_id="e", data=b"x"),
], ids=["Result", "LogChunk"])
def test_node_messages_from_non_utf8_routing_id(tsms, msg):
    """spear/sms/daemon.py on_result: ``ident.decode()``; on_log_chunk: same.

    Expected: ignored like any result for an unknown execution (or a typed
    INVALID_ARGUMENT); observed: ErrorReply INTERNAL "UnicodeDecodeError ...".
    """
    s = dealer(tsms.address, NON_UTF8_IDENT)
    try:
        reply = request(s, msg, timeout=1.0)
        assert reply is None or (isinstance(reply, P.ErrorReply)
                                 and reply.code != "INTERNAL"), reply
    finally:
        s.close(0)


def test_spoofed_heartbeat_is_refused(tsms):
    """spear/sms/daemon.py on_heartbeat trusts ``msg.node_id``.

    on_register checks that the routing id equals the node id; on_heartbeat
    does not. A stranger's Heartbeat(node_id=<registered node>) is acked
    known=True, replaces the node's usage (load1=1e300 here) and its
    running_ids feed Executions.on_running, which marks the node's in-flight
    executions lost after report_grace.
    """
    node = register_node(tsms.address, "victim-1", runtimes=["wasm"], capacity=P.Capacity(cores=2))
    stranger = dealer(tsms.address)
    try:
        before = tsms.call(lambda: tsms.sms.registry.nodes["victim-1"].usage)
        ack = request(stranger, P.Heartbeat(id=2, node_id="victim-1",
                                            usage=P.Usage(load1=1e300, cpu_percent=1e300)))
        after = tsms.call(lambda: tsms.sms.registry.nodes["victim-1"].usage)
        assert after == before, f"usage overwritten by a stranger: {after}"
        assert not (isinstance(ack, P.HeartbeatAck) and ack.known), ack
    finally:
        node.close(0)
        stranger.close(0)


def test_spoofed_deregister_is_refused(tsms):
    """spear/sms/daemon.py on_deregister: ``self.registry.deregister(msg.node_id, ...)``.

    A stranger's Deregister(node_id=<registered node>) is answered Ok and the
    node is gone (its executions go through node_lost) until it heartbeats,
    gets known=False and registers again.
    """
    node = register_node(tsms.address, "victim-2", runtimes=["wasm"])
    stranger = dealer(tsms.address)
    try:
        reply = request(stranger, P.Deregister(id=3, node_id="victim-2"))
        present = tsms.call(lambda: "victim-2" in tsms.sms.registry.nodes)
        assert present, f"a stranger deregistered the node (reply {reply})"
    finally:
        node.close(0)
        stranger.close(0)


def test_stats_survive_huge_node_capacity(tsms):
    """spear/sms/daemon.py on_stats: ``memory_total=sum(n.capacity.memory ...)``.

    Capacity.memory is any uint64; two ready nodes (or one plus a real node)
    with large figures overflow msgpack's range. The OverflowError is raised by
    protocol.encode in RouterServer._send_out, outside the handler's try:
    Endpoint._drain logs it and the client times out. Every later Stats from
    anyone fails the same way while those nodes are registered.
    """
    # capacities beyond 256 TiB of memory are refused at decode now
    s = dealer(tsms.address, b"big-1")
    try:
        reply = request(s, P.Register(id=1, node=P.NodeInfo(
            node_id="big-1", capacity=P.Capacity(cores=1, memory=2**64 - 1))))
        assert isinstance(reply, P.ErrorReply) and reply.code == "INVALID_ARGUMENT", reply
    finally:
        s.close(0)
    # the largest accepted figures still sum and encode fine
    a = register_node(tsms.address, "big-2", capacity=P.Capacity(cores=1, memory=2**48))
    b = register_node(tsms.address, "big-3", capacity=P.Capacity(cores=1, memory=2**48))
    try:
        with Client(tsms.address, timeout=1.0) as cl:
            st_ = cl.stats()
            assert st_.nodes_ready >= 2 and st_.memory_total >= 2**49
    finally:
        a.close(0)
        b.close(0)
