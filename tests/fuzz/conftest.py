"""Fixtures of the fuzz tests: an in-process SMS and a real cluster under fuzz.

``tsms`` is a fresh :class:`~fuzz.sms_thread.ThreadSMS` per test (memory
store, fast heartbeats). ``fuzz_cluster`` is an SMS and one Spearlet as
subprocesses (leveldb store) with ``add`` deployed through the SMS (only the
real node may run it: :data:`~fuzz.harness.PROBE_LABEL`) and directly on the
node; one per test module, as the wire fuzz leaves it in a state no other
test should inherit.
"""

from __future__ import annotations

import pytest

from spear import Client, protocol as P
from spear.cluster import Cluster
from tests.helpers import ADD_WAT

from .harness import CLEANUP, DAEMON_ENV, HB_INTERVAL, HB_TIMEOUT, PROBE_LABEL
from .sms_thread import ThreadSMS


@pytest.fixture
def tsms():
    """An in-process SMS (memory store, heartbeats every 0.2 s), closed after the test."""
    s = ThreadSMS(**{"sms.heartbeat_interval": 0.2, "sms.heartbeat_timeout": 1.0,
                     "sms.cleanup_interval": 60.0, "sms.deadline_grace": 1.0})
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory):
    """A real SMS and Spearlet with ``add`` deployed; ``real_id`` is the node's id."""
    d = tmp_path_factory.mktemp("fuzz")
    cfg = d / "spear.toml"
    # The fuzzer deploys random specs: keep it to the wasm sandbox (no commands run,
    # no image pulls). Everything else about the daemons is default.
    # Executions a fake node held and gave back (node lost, retries left) wait in
    # their function's queue for an eligible node; the fake nodes never return,
    # so they end when [sms] queue_timeout expires: short here, so that the
    # after-fuzz check (every reservation returned within 3 heartbeat timeouts
    # + 10 s) covers it.
    cfg.write_text("[sms]\nqueue_timeout = 5.0\n"
                   "[runtimes.process]\nenabled = false\n[runtimes.docker]\nenabled = false\n")
    c = Cluster(d / "cluster", spearlets=1, store="leveldb", config=str(cfg),
                heartbeat_interval=HB_INTERVAL, heartbeat_timeout=HB_TIMEOUT,
                cleanup_interval=CLEANUP, labels=["=".join(PROBE_LABEL)], env=DAEMON_ENV)
    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            node = cl.nodes("ready")[0]
            addr = c.spearlet_addrs[0]
            cl.deploy(P.FunctionSpec(name="add", runtime="wasm", handler="add", artifact=ADD_WAT,
                                     labels=dict([PROBE_LABEL])))
            cl.deploy(P.FunctionSpec(name="add", runtime="wasm", handler="add", artifact=ADD_WAT),
                      node=addr)
        c.real_id = node.node_id
        yield c
    finally:
        c.stop()
