"""The Spearlet's direct path (spear/spearlet/core.py admit) against a raw peer, found by the wire fuzz.

Runs on a real cluster (the ``fuzz_cluster`` fixture: SMS and Spearlet as
subprocesses, ``add`` deployed on the node).
"""

from __future__ import annotations

from spear import Client, protocol as P
from tests.helpers import dealer, request


def test_spearlet_refuses_a_reused_execution_id(fuzz_cluster):
    """spear/spearlet/core.py admit: the direct path refuses a client-chosen execution id.

    The wire fuzz found the direct path taking a client's execution id:
    Invoke(execution_id=<finished execution>) replaced that record and its
    output (and an id the SMS had dispatched could be overwritten the same
    way). Clients never choose ids now; the record must stay as it was.
    """
    addr = fuzz_cluster.spearlet_addrs[0]
    with Client(fuzz_cluster.sms_addr, timeout=10) as cl:
        eid = cl.submit("add", args=[1, 1], node=addr)
        assert cl.wait(eid, timeout=10, node=addr).output == b"2"
        s = dealer(addr)
        try:
            reply = request(s, P.Invoke(id=3, function="add", args=[5, 5], mode="async",
                                        execution_id=eid))
        finally:
            s.close(0)
        again = cl.wait(eid, timeout=10, node=addr)
        assert again.output == b"2", f"record overwritten: output now {again.output!r}"
        assert isinstance(reply, P.ErrorReply) and reply.code == "INVALID_ARGUMENT", reply
