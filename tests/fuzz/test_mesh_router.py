"""Routes of the SMS's ROUTER socket (spear/mesh/router.py) against a peer that picks its routing id.

Runs on a real cluster (the ``fuzz_cluster`` fixture: SMS and Spearlet as
subprocesses, ``add`` deployed through the SMS for the real node only).
"""

from __future__ import annotations

import contextlib
import time

from spear import Client, errors, protocol as P
from tests.helpers import dealer, wait_for

from .harness import HB_TIMEOUT


def test_routing_id_hijack_is_survived(fuzz_cluster):
    """A peer that connects to the SMS with a routing id named after the real
    node (node ids are public) gets none of its Dispatches: routing ids are
    random per connection and there is no ROUTER handover (issue 13). The
    invocation succeeds on the real node.
    """
    c = fuzz_cluster
    with Client(c.sms_addr, timeout=10) as cl:
        thief = dealer(c.sms_addr, c.real_id.encode())
        try:
            time.sleep(0.3)
            r = cl.invoke("add", b"secret input", args=[1, 2], timeout=2.0)
            stolen = []
            while thief.poll(200):
                with contextlib.suppress(errors.ProtocolError):
                    stolen.append(P.decode(thief.recv_multipart()))
        finally:
            thief.close(0)
        assert r.ok and r.output == b"3", r.info
        assert not any(isinstance(m, P.Dispatch) for m, _ in stolen), stolen
        wait_for(lambda: cl.invoke("add", args=[1, 2], timeout=2.0).output == b"3",
                 3 * HB_TIMEOUT + 5, "the real node serving again")
        real = [n for n in cl.nodes() if n.node_id == c.real_id]
        assert real and real[0].state == "ready"
