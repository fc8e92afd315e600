"""Real daemons as subprocesses on random loopback ports (issue: walking skeleton)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from spear import Client, errors
from spear.cluster import Cluster
from tests.helpers import FAST_HB, free_port, spear_cli, wait_for



@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "spear", spearlets=2, labels=["zone=a", "zone=b"], **FAST_HB)
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


def test_nodes_json_lists_both_ready_with_usage(cluster):
    r = spear_cli("nodes", "--json", "--sms", cluster.sms_addr)
    assert r.returncode == 0, r.stderr
    nodes = json.loads(r.stdout)
    assert len(nodes) == 2
    assert {n["state"] for n in nodes} == {"ready"}
    assert sorted(n["labels"]["zone"] for n in nodes) == ["a", "b"]
    assert sorted(n["address"] for n in nodes) == sorted(cluster.spearlet_addrs)
    for n in nodes:
        assert n["capacity"]["cores"] >= 1 and n["capacity"]["memory"] > 0
        assert n["usage"]["memory_total"] > 0 and n["usage"]["disk_total"] > 0
    # the table form works too, and `nodes NAME` finds one node
    r = spear_cli("nodes", "--sms", cluster.sms_addr)
    assert r.returncode == 0 and "spearlet-1" in r.stdout
    r = spear_cli("nodes", "spearlet-2", "--json", "--sms", cluster.sms_addr)
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "spearlet-2"
    r = spear_cli("nodes", "nope", "--sms", cluster.sms_addr)
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr


def test_heartbeats_update_usage(cluster):
    with Client(cluster.sms_addr) as c:
        first = {n.node_id: n.last_seen for n in c.nodes()}
        wait_for(lambda: all(n.last_seen > first[n.node_id] for n in c.nodes()), 5.0,
                 "a later heartbeat from every node")


def test_killed_spearlet_turns_unhealthy(cluster):
    # when (heartbeat_timeout after the last heartbeat, not before) is the registry's
    # rule, checked on a fake clock in tests/sms/test_nodes.py; here: that it happens
    victim = cluster.spearlets[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(5)
    with Client(cluster.sms_addr) as c:
        unhealthy = wait_for(lambda: [n for n in c.nodes() if n.state == "unhealthy"], 5.0,
                             "a node to turn unhealthy")
        assert [n.name for n in unhealthy] == ["spearlet-1"]
        assert c.node("spearlet-2").state == "ready"
        # restarting it with the same data dir (same node id) brings it back to ready
        cluster.start_spearlet(0)
        wait_for(lambda: c.node("spearlet-1").state == "ready", 10.0, "spearlet-1 ready again")


def test_sms_restart_on_same_leveldb_reattaches_spearlets(cluster):
    with Client(cluster.sms_addr) as c:
        before = {n.node_id for n in c.nodes()}
    assert cluster.stop_process(cluster.sms) == 0  # graceful: exit code 0
    time.sleep(0.5)
    cluster.start_sms()
    with Client(cluster.sms_addr, timeout=2.0) as c:
        def both_ready():
            try:
                nodes = c.nodes()
            except errors.DeadlineExceeded:
                return False
            return {n.node_id for n in nodes if n.state == "ready"} == before and nodes
        wait_for(both_ready, 15.0, "both spearlets ready after SMS restart")
    # the spearlets were never restarted
    assert all(p.poll() is None for p in cluster.spearlets)


def test_sms_killed_hard_and_restarted(cluster):
    os.kill(cluster.sms.pid, signal.SIGKILL)
    cluster.sms.wait(5)
    cluster.start_sms()
    with Client(cluster.sms_addr, timeout=2.0) as c:
        wait_for(lambda: len([n for n in c.nodes() if n.state == "ready"]) == 2, 15.0,
                 "both ready after SMS SIGKILL")


def test_spearlet_sigterm_deregisters_and_exits_zero(cluster):
    p = cluster.spearlets[1]
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    with Client(cluster.sms_addr) as c:
        names = [n.name for n in c.nodes()]
    assert names == ["spearlet-1"]


def test_python_m_spear_sms_behaves_like_spear_sms(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spear.sms", "--help"], capture_output=True, text=True)
    r2 = spear_cli("sms", "--help")
    assert r.returncode == r2.returncode == 0
    assert "--listen" in r.stdout and r.stdout.split("options:")[1] == r2.stdout.split("options:")[1]


def test_client_commands_fail_cleanly_without_sms():
    r = spear_cli("nodes", "--sms", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.3")
    assert r.returncode == 3
    assert "DEADLINE_EXCEEDED" in r.stderr


def test_bad_config_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sms]\nheartbeat_timeout = -3\n")
    r = spear_cli("sms", "--config", str(bad))
    assert r.returncode == 2
    assert "heartbeat_timeout" in r.stderr and str(bad) in r.stderr


def test_spear_up_starts_and_stops_cleanly(tmp_path):
    port = free_port()
    http = f"127.0.0.1:{free_port()}"
    p = subprocess.Popen([sys.executable, "-m", "spear", "up", "-n", "2", "--port", str(port),
                          "--http", http, "--data", str(tmp_path / "d")], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = wait_for(lambda: p.stdout.readline(), 30, "spear up banner")
        while "ready" not in line:
            line = p.stdout.readline()
            assert line, "spear up exited early"
        with Client(f"tcp://127.0.0.1:{port}") as c:
            assert len(c.nodes("ready")) == 2
        # spear up also serves the HTTP gateway
        import urllib.request
        line = p.stdout.readline()
        assert "admin http://" in line, line
        with urllib.request.urlopen(f"http://{http}/v1/nodes", timeout=5) as r:
            assert r.status == 200 and b"spearlet-1" in r.read()
        assert (tmp_path / "d" / "sms").is_dir()  # LevelDB lives under the data dir
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_a_cluster_that_fails_to_start_leaves_nothing_running(tmp_path):
    # nodes cannot be ready within a millisecond: start() raises, and must stop what it started
    c = Cluster(tmp_path / "c", spearlets=1, **FAST_HB)
    with pytest.raises(errors.SpearError):
        c.start(wait=0.001)
    procs = [c.sms, *c.spearlets]
    assert procs[0] is not None and all(p.poll() is not None for p in procs), \
        [p.pid for p in procs if p.poll() is None]
