"""A one-node cluster that runs spear.remote functions, and a connection to it.

Functions run as the sandbox user (``nobody`` when the Spearlet is root), in
an environment the node builds from their requirements: nothing of Spear or
of the tests is installed for that user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import spear
from spear.cluster import Cluster


def start_cluster(d):
    """A started one-node cluster under ``d`` and its code cache (the caller
    stops it and removes the cache: :func:`stop_cluster`)."""
    # the cache must be reachable by the sandbox user, which the pytest
    # directories (0700) are not; a directory of its own keeps runs apart
    cache = tempfile.mkdtemp(prefix="spear-remote-cache-")
    os.chmod(cache, 0o755)
    cfg = d / "spear.toml"
    cfg.write_text(
        "[spearlet]\nmax_concurrency = 16\ndrain_timeout = 10\n"
        f"[runtimes.process]\ncache_dir = \"{cache}\"\n"
        "[runtimes.docker]\nbase_url = \"unix:///nonexistent/docker.sock\"\n")
    c = Cluster(d / "cluster", spearlets=1, config=str(cfg), heartbeat_interval=0.2,
                heartbeat_timeout=1.0)
    c.code_cache = cache
    try:
        c.start(wait=30)
    except BaseException:
        stop_cluster(c)
        raise
    return c


def stop_cluster(c) -> None:
    """Stop ``c`` and remove its code cache (code bundles and environments)."""
    try:
        c.stop()
    finally:
        shutil.rmtree(c.code_cache, ignore_errors=True)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("remote"))
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture(scope="package")
def connection(cluster):
    conn = spear.connect(cluster.sms_addr, timeout=60)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="package")
def user_site(tmp_path_factory):
    """A directory with ``humanize`` installed: the user's machine has it, the
    Spearlet's interpreter and the sandbox user's system Python do not."""
    from spear.client.requirements import uv_binary

    site = tmp_path_factory.mktemp("user-site")
    subprocess.run([uv_binary(), "pip", "install", "--quiet", "--target", str(site), "humanize"],
                   check=True, timeout=300)
    return site


def run_driver(cwd, script, cluster, user_site, timeout=300):
    """Run ``script`` as a user would: this Python, in ``cwd``, SPEAR_SMS set,
    ``humanize`` importable from ``user_site`` (and Spear from this tree)."""
    path = os.pathsep.join(p for p in (str(user_site), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, SPEAR_SMS=cluster.sms_addr, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def humanize_importable(python: str) -> bool:
    """Whether ``python`` (run as the sandbox user would) can import humanize."""
    return subprocess.run([python, "-c", "import humanize"], capture_output=True).returncode == 0
