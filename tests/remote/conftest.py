"""A one-node cluster that runs spear.remote functions, and a connection to it.

Functions run as the sandbox user (``nobody`` when the Spearlet is root), in
an environment the node builds from their requirements: nothing of Spear or
of the tests is installed for that user.
"""

from __future__ import annotations

import pytest

import spear
from spear.cluster import Cluster


def start_cluster(d):
    """A started one-node cluster under ``d`` (the caller stops it)."""
    cfg = d / "spear.toml"
    cfg.write_text(
        "[spearlet]\nmax_concurrency = 16\ndrain_timeout = 10\n"
        "[runtimes.docker]\nbase_url = \"unix:///nonexistent/docker.sock\"\n")
    c = Cluster(d / "cluster", spearlets=1, config=str(cfg), heartbeat_interval=0.2,
                heartbeat_timeout=1.0)
    try:
        c.start(wait=30)
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("remote"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="package")
def connection(cluster):
    conn = spear.connect(cluster.sms_addr, timeout=60)
    try:
        yield conn
    finally:
        conn.close()
