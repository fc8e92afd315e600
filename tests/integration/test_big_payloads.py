"""Echoes of every payload size class through a Python handler: via the SMS and direct.

Sizes straddle the 64 KiB line where payloads stop being copied (the SMS keeps
the received frame; the worker's region replaces its pipes); every echo must
come back byte-exact, in both twins' modes (CI runs this file with
SPEAR_NO_EXTENSIONS=1 too).
"""

from __future__ import annotations

import os

import pytest

from spear import Client, protocol as P
from spear.cluster import Cluster
from tests.helpers import EXAMPLES

KIB, MIB = 1 << 10, 1 << 20
SIZES = [0, 1, 64 * KIB - 1, 64 * KIB, MIB, 16 * MIB]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    c = Cluster(d / "cluster", spearlets=1, store="leveldb", host_roots=[str(EXAMPLES)])
    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=60) as cl:
            cl.deploy(P.FunctionSpec(name="echo", runtime="process", handler="handlers:echo",
                                     workdir=str(EXAMPLES), pool=P.PoolSettings(min_warm=1)))
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("path", ["sms", "direct"])
def test_echo_is_byte_exact(cluster, path, size):
    blob = os.urandom(size)
    with Client(cluster.sms_addr, timeout=60) as cl:
        node = cluster.spearlet_addrs[0] if path == "direct" else None
        for _ in range(2):  # the second call reuses the warm worker and its region
            r = cl.invoke("echo", blob, node=node)
            assert r.ok, r.error
            assert len(r.output) == size and r.output == blob
            assert type(r.output) is bytes and r.status == "succeeded"


def test_big_async_result_reaches_a_waiting_client(cluster):
    blob = os.urandom(2 * MIB)
    with Client(cluster.sms_addr, timeout=60) as cl:
        eid = cl.submit("echo", blob)
        r = cl.wait(eid)
        assert r.ok and r.output == blob
