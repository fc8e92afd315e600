"""Holes a hostile review found after the trust work (issues 13-15), each attacked
on real daemons: a client naming an execution id on a Spearlet's direct path,
a node registering with another live node's name or address, a non-node
fetching a function's full spec (secret env values), a per-call timeout
above the node's maximum sent through the SMS, unbounded logs in the gateway."""

from __future__ import annotations

import pytest
import zmq

from spear import Client, errors, protocol as P, roles
from spear.cluster import Cluster
from spear.mesh import context


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    d = tmp_path_factory.mktemp("review")
    cfg = d / "spear.toml"
    cfg.write_text("[spearlet]\nmax_timeout = 5.0\n"
                   "[runtimes.docker]\nbase_url = \"unix:///nonexistent/docker.sock\"\n")
    cl = Cluster(d / "c", spearlets=1, config=str(cfg), heartbeat_interval=0.2,
                 heartbeat_timeout=1.0)
    try:
        cl.start(wait=30)
        with Client(cl.sms_addr, timeout=20) as client:
            client.deploy(P.FunctionSpec(name="echo", runtime="process", command=["cat"]))
            client.deploy(P.FunctionSpec(name="sec", runtime="process", command=["true"],
                                         env={"TOKEN": "tok-review-1"}, secret_env=["TOKEN"]))
        yield cl
    finally:
        cl.stop()


def _raw(addr: str, msg, payload=None, timeout=5.0):
    s = context().socket(zmq.DEALER)
    s.linger = 0
    try:
        s.connect(addr)
        s.send_multipart(P.encode(msg, payload))
        assert s.poll(int(timeout * 1000)), "no reply"
        return P.decode(s.recv_multipart())[0]
    finally:
        s.close(0)


def test_a_client_cannot_name_an_execution_on_the_direct_path(c):
    r = _raw(c.spearlet_addrs[0], P.Invoke(id=1, function="echo", mode="async",
                                           execution_id="01a2b3c4-0000-7000-8000-000000000000"))
    assert isinstance(r, P.ErrorReply) and r.code == "INVALID_ARGUMENT", r
    with Client(c.sms_addr, timeout=20) as cl:  # without one it runs, with an id of the node's
        cl.deploy(P.FunctionSpec(name="echo", runtime="process", command=["cat"]),
                  node=c.spearlet_addrs[0])
        eid = cl.submit("echo", b"x", node=c.spearlet_addrs[0])
        assert cl.wait(eid, timeout=10, node=c.spearlet_addrs[0]).output == b"x"


def test_a_node_cannot_take_a_live_nodes_name_or_address(c):
    with Client(c.sms_addr, timeout=20) as cl:
        [real] = cl.nodes("ready")
    for field in ({"name": real.name}, {"address": real.address}):
        r = _raw(c.sms_addr, P.Register(id=2, node=P.NodeInfo(node_id="impostor", **field),
                                        proof="p"))
        assert isinstance(r, P.ErrorReply) and r.code == "PERMISSION_DENIED", (field, r)
    with Client(c.sms_addr, timeout=20) as cl:
        assert [n.node_id for n in cl.nodes()] == [real.node_id]
        assert cl.node(real.name).node_id == real.node_id


def test_only_registered_nodes_fetch_a_functions_full_spec(c):
    r = _raw(c.sms_addr, P.FetchFunction(id=3, name="sec"))
    assert isinstance(r, P.ErrorReply) and r.code == "PERMISSION_DENIED", r
    with Client(c.sms_addr, timeout=20) as cl:
        assert cl.function("sec").env == {"TOKEN": roles.SECRET}
        assert cl.invoke("sec").ok  # the node itself still fetches it whole


def test_a_per_call_timeout_above_the_nodes_maximum_is_refused_via_the_sms(c):
    with Client(c.sms_addr, timeout=20) as cl:
        r = cl.invoke("echo", b"x", timeout=60.0)
        assert r.status == "failed" and r.info.error.code == "INVALID_ARGUMENT", r.info
        assert "max" in r.info.error.message
        assert cl.invoke("echo", b"y", timeout=4.0).output == b"y"
        with pytest.raises(errors.InvalidArgument):
            cl.invoke("echo", b"z", timeout=60.0, node=c.spearlet_addrs[0])
