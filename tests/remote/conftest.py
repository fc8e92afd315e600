"""A one-node cluster that may run spear.remote functions, and a connection to it."""

from __future__ import annotations

import pytest

import spear
from spear.cluster import Cluster
from spear.remote.functions import RUNNER_DIR


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote")
    cfg = d / "spear.toml"
    # Functions run as the Spearlet's own user: its interpreter has cloudpickle
    # and msgspec, which the runner needs (a system python3 for `nobody` may not).
    cfg.write_text(
        "[spearlet]\nmax_concurrency = 8\ndrain_timeout = 10\n"
        "[runtimes.process]\nuser = \"\"\n"
        "[runtimes.docker]\nbase_url = \"unix:///nonexistent/docker.sock\"\n")
    c = Cluster(d / "cluster", spearlets=1, config=str(cfg), heartbeat_interval=0.2,
                heartbeat_timeout=1.0, host_roots=[RUNNER_DIR])
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="package")
def connection(cluster):
    conn = spear.connect(cluster.sms_addr, timeout=30)
    try:
        yield conn
    finally:
        conn.close()
