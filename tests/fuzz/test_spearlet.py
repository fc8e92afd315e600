"""The Spearlet's direct path (spear/spearlet/functions.py) against a raw peer, found by the wire fuzz.

Runs on a real cluster (the ``fuzz_cluster`` fixture: SMS and Spearlet as
subprocesses, ``add`` deployed on the node).
"""

from __future__ import annotations

from spear import Client, protocol as P
from tests.helpers import dealer, request


def test_spearlet_refuses_a_reused_execution_id(fuzz_cluster):
    """spear/spearlet/functions.py on_invoke -> new_execution: ``self.executions[eid] = ex``.

    The SMS refuses a duplicate execution id (tasks.py submit); the Spearlet's
    direct path does not: Invoke(execution_id=<finished execution>) replaces
    its record and output. An id the SMS dispatched to this node can be
    overwritten the same way (and CancelExecution from the SMS then cancels the
    impostor).
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
