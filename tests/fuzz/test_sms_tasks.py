"""Executions at the SMS (spear/sms/tasks.py) when the nodes misbehave, found by the wire fuzz.

Fake nodes (raw sockets registered at an in-process SMS, the ``tsms``
fixture) that return huge outputs, sit at their slot limit, stay silent,
answer nonsense or refuse everything, or hold an execution forever: every
execution still ends, in the state its case calls for, and gives back its
reservation; other functions are not held up. All are fixed and stay as
regression tests.
"""

from __future__ import annotations

import time

import pytest

from spear import Client, protocol as P
from tests.helpers import ADD_WAT, wait_for

from .sms_thread import register_node


def test_sms_keeps_bounded_outputs(tsms):
    """spear/sms/placement.py _end: ``ex.output = output`` (the whole payload).

    flush() persists ``ex.output`` only if it is <= keep_output (64 KiB), but the
    in-memory record keeps all of it, for up to max_executions (100,000) records:
    a node (or anything registered as one) returning 8 MiB outputs grows the
    SMS by 8 MiB per execution. Found by the fuzz as steady SMS RSS growth from
    mutated Result frames carrying MB payloads.
    """
    fake = register_node(tsms.address, "fake-o", runtimes=["wasm"],
                     capacity=P.Capacity(cores=4, memory=2**34))
    try:
        with Client(tsms.address, timeout=5.0) as cl:
            cl.deploy(P.FunctionSpec(name="f", runtime="wasm", handler="add", artifact=ADD_WAT))
            eid = cl.submit("f", args=[1, 2])
            assert fake.poll(5000)
            d, _ = P.decode(fake.recv_multipart())
            assert isinstance(d, P.Dispatch), d
            fake.send_multipart(P.encode(P.Result(id=d.id, execution=P.ExecutionInfo(
                execution_id=d.execution_id, function="f", status="succeeded")), bytes(8 << 20)))
            assert cl.wait(eid, timeout=5).status == "succeeded"
        kept = tsms.call(lambda: len(tsms.sms.tasks.execs[eid].output))
        limit = tsms.call(lambda: tsms.sms.tasks.s.keep_output)
        assert kept <= limit, f"{kept} bytes of output kept in memory (keep_output {limit})"
    finally:
        fake.close(0)


def test_queue_does_not_block_other_nodes(tsms):
    """Found by the fuzz as a 6.5 s probe invoke: a single SMS queue let 20
    executions for a node at its slot limit (capacity.slots=1, the first one
    still running) hold back an execution of another function whose only
    eligible node was idle, until they failed with queue_timeout. Each function
    now waits in its own queue (spear/sms/tasks.py).
    """
    busy = register_node(tsms.address, "busy-node", runtimes=["wasm"], labels={"zone": "x"},
                     capacity=P.Capacity(cores=4, memory=2**34, slots=1))
    free = register_node(tsms.address, "free-node", runtimes=["wasm"], labels={"zone": "y"},
                     capacity=P.Capacity(cores=4, memory=2**34, slots=8))
    try:
        with Client(tsms.address, timeout=5.0) as cl:
            for name, zone in (("busy", "x"), ("probe", "y")):
                cl.deploy(P.FunctionSpec(name=name, runtime="wasm", handler="add",
                                         artifact=ADD_WAT, labels={"zone": zone}))
            held = [cl.submit("busy", args=[1, 2]) for _ in range(20)]
            t0 = time.monotonic()
            cl.submit("probe", args=[1, 2])
            dispatched = None
            while dispatched is None and time.monotonic() - t0 < 2.0:
                busy.send_multipart(P.encode(P.Heartbeat(id=2, node_id="busy-node",
                                                         usage=P.Usage(), running_ids=held[:1])))
                free.send_multipart(P.encode(P.Heartbeat(id=2, node_id="free-node",
                                                         usage=P.Usage())))
                for sock in (busy, free):
                    while sock.poll(50):
                        m, _ = P.decode(sock.recv_multipart())
                        if isinstance(m, P.Dispatch) and m.function == "probe":
                            dispatched = time.monotonic() - t0
            assert dispatched is not None, "probe still queued 2 s later behind another node's work"
    finally:
        busy.close(0)
        free.close(0)


@pytest.mark.parametrize("behaviour", ["silent", "bogus-result", "refuses"])
def test_fake_node_that_gets_work_still_ends_it(tsms, behaviour):
    """A registered peer that claims a runtime can be chosen; its executions must end.

    * silent: never answers nor heartbeats -> unhealthy -> ``lost``;
    * bogus-result: answers with a non-terminal status -> ``failed``;
    * refuses: RESOURCE_EXHAUSTED every time -> spilled back, then ``failed``.
    Reservations return to zero in every case.
    """
    fake = register_node(tsms.address, "fake-w", runtimes=["wasm"], labels={"zone": "fake"},
                     capacity=P.Capacity(cores=64, memory=2**40))
    try:
        with Client(tsms.address, timeout=5.0) as cl:
            cl.deploy(P.FunctionSpec(name="f", runtime="wasm", handler="add", artifact=ADD_WAT,
                                     labels={"zone": "fake"}))
            eid = cl.submit("f", args=[1, 2], timeout=1.0)
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                if fake.poll(100):
                    msg, _ = P.decode(fake.recv_multipart())
                    if isinstance(msg, P.Dispatch) and behaviour == "bogus-result":
                        fake.send_multipart(P.encode(P.Result(id=msg.id, execution=P.ExecutionInfo(
                            execution_id=msg.execution_id, function="f", status="running"))))
                    elif isinstance(msg, P.Dispatch) and behaviour == "refuses":
                        fake.send_multipart(P.encode(P.ErrorReply(
                            id=msg.id, code="RESOURCE_EXHAUSTED", message="full")))
                        fake.send_multipart(P.encode(P.Heartbeat(id=1, node_id="fake-w",
                                                                 usage=P.Usage())))
                info = cl.execution(eid).info
                if info.status in P.TERMINAL:
                    break
            assert info.status in P.TERMINAL, info
            expected = {"silent": "lost", "bogus-result": "failed", "refuses": "failed"}[behaviour]
            assert info.status == expected, info
            s = wait_for(lambda: (lambda x: x if x.cores_reserved == 0 and x.memory_reserved == 0
                                  and x.executions_active == 0 else None)(cl.stats()),
                         5.0, "reservations back to zero")
            assert s.counts.get(expected, 0) >= 1
    finally:
        fake.close(0)


def test_fake_node_that_never_finishes_is_timed_out(tsms):
    """A node that keeps listing an execution as running in its heartbeats held it
    (and its reservation) forever; the SMS now ends it ``timed_out`` at its
    timeout + [sms] deadline_grace (1 s here) and tells the node to cancel it.
    """
    fake = register_node(tsms.address, "fake-h", runtimes=["wasm"], labels={"zone": "hold"},
                     capacity=P.Capacity(cores=64, memory=2**40))
    try:
        with Client(tsms.address, timeout=5.0) as cl:
            cl.deploy(P.FunctionSpec(name="h", runtime="wasm", handler="add", artifact=ADD_WAT,
                                     labels={"zone": "hold"}))
            eid = cl.submit("h", args=[1, 2], timeout=0.5)
            deadline = time.monotonic() + 6.0
            cancels = []
            info = cl.execution(eid).info
            while time.monotonic() < deadline and not (cancels and info.status in P.TERMINAL):
                while fake.poll(0):
                    m, _ = P.decode(fake.recv_multipart())
                    if isinstance(m, P.CancelExecution):
                        cancels.append(m.execution_id)
                fake.send_multipart(P.encode(P.Heartbeat(id=1, node_id="fake-h", usage=P.Usage(),
                                                         running_ids=[eid])))
                time.sleep(0.1)
                info = cl.execution(eid).info
            assert info.status == "timed_out", f"still {info.status} 6 s after a 0.5 s timeout"
            assert info.error.code == "DEADLINE_EXCEEDED"
            assert cancels == [eid], "the node was not told to stop it"
            s = cl.stats()
            assert (s.cores_reserved, s.memory_reserved) == (0, 0)
    finally:
        fake.close(0)
