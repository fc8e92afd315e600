"""``spear logs`` against a real cluster: one execution (finished, or followed live while it
runs), a function's last executions, and following a function until Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from spear import Client, protocol as P
from spear.cluster import Cluster
from tests.helpers import FAST_HB, add_spec, spear_cli, wait_for

#: a process function that writes to stderr for a while, then answers
TICKS = "for i in $(seq 1 40); do echo tick$i >&2; sleep 0.25; done; echo done"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("logs") / "spear", spearlets=1, **FAST_HB)
    try:
        c.start(wait=30)
        with Client(c.sms_addr) as client:
            client.deploy(add_spec("add"))
            client.deploy(P.FunctionSpec(name="ticks", runtime="process",
                                         command=["sh", "-c", TICKS]))
            client.deploy(P.FunctionSpec(name="broken", runtime="process",
                                         command=["sh", "-c", "echo it broke >&2; exit 3"]))
        yield c
    finally:
        c.stop()


def cli(cluster, *args: str, timeout: float = 60.0):
    return spear_cli(*args, "--sms", cluster.sms_addr, timeout=timeout)


def test_a_finished_execution_shows_its_output_and_failure(cluster):
    with Client(cluster.sms_addr) as c:
        ok = c.submit("add", args=[20, 22])
        bad = c.submit("broken")
        assert c.wait(ok, timeout=20).ok and c.wait(bad, timeout=20).status == "failed"
    r = cli(cluster, "logs", ok)
    assert r.returncode == 0, r.stderr
    assert f"execution {ok}" in r.stdout and r.stdout.rstrip().endswith("--- output ---\n42")
    r = cli(cluster, "logs", bad)
    assert r.returncode == 1 and "--- stderr (tail) ---\nit broke" in r.stdout
    r = cli(cluster, "logs", ok, "--json")
    assert json.loads(r.stdout)["output"] == "42"


def test_unknown_ids_and_bad_usage_are_one_clear_line(cluster):
    r = cli(cluster, "logs", "ffffffff")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "spear executions" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli(cluster, "logs", "--function", "nosuch")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "Traceback" not in r.stderr
    for args in ((), ("ffffffff", "--function", "add"), ("ffffffff", "--follow")):
        r = cli(cluster, "logs", *args)
        assert r.returncode == 2 and "spear logs:" in r.stderr, args


def test_a_running_execution_is_followed_live_to_its_end(cluster):
    """Invoked in stream mode elsewhere: `spear logs` shows its stderr as it comes."""
    with Client(cluster.sms_addr, timeout=60) as c:
        items: list = []
        streamer = threading.Thread(target=lambda: items.extend(c.stream("ticks")), daemon=True)
        streamer.start()
        running = wait_for(lambda: [i for i in c.executions(function="ticks")[0]
                                    if i.status == "running"], 30, "the ticks to run")
        eid = running[0].execution_id
        r = cli(cluster, "logs", eid[:13])
        streamer.join(30)
    assert r.returncode == 0, r.stderr
    assert "following it" in r.stderr
    _, _, rest = r.stdout.partition("--- log (live) ---\n")
    assert "tick40" in rest.split(f"execution {eid}")[0], r.stdout  # seen live, before the record
    assert rest.rstrip().endswith("--- output ---\ndone")
    assert items and items[-1].output == b"done\n"


def test_a_functions_last_executions_oldest_first(cluster):
    with Client(cluster.sms_addr) as c:
        eids = [c.submit("add", args=[i, 100]) for i in range(3)]
        for eid in eids:
            c.wait(eid, timeout=20)
    r = cli(cluster, "logs", "--function", "add", "--last", "2")
    assert r.returncode == 0, r.stderr
    heads = [line for line in r.stdout.splitlines() if line.startswith("==> ")]
    assert [h.split()[1] for h in heads] == eids[1:]
    assert r.stdout.rstrip().endswith("102")
    r = cli(cluster, "logs", "--function", "add", "--last", "3", "--json")
    assert [json.loads(line)["output"] for line in r.stdout.splitlines()] == ["100", "101", "102"]


def test_following_a_function_prints_new_executions_until_ctrl_c(cluster):
    p = subprocess.Popen([sys.executable, "-m", "spear", "logs", "--function", "add", "--follow",
                          "--last", "1", "--sms", cluster.sms_addr],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Client(cluster.sms_addr) as c:
            first = c.submit("add", args=[1, 1])
            c.wait(first, timeout=20)
            # the listing may already hold it, or the event stream brings it: either way once
            line = wait_for(lambda: p.stdout.readline(), 30, "the first header")
            while first not in line:
                line = p.stdout.readline()
                assert line, "spear logs --follow exited"
            eid = c.submit("add", args=[5, 1000])
            c.wait(eid, timeout=20)
        line = p.stdout.readline()
        while eid not in line:
            line = p.stdout.readline()
            assert line, "spear logs --follow exited"
        assert "succeeded" in line and p.stdout.readline().strip() == "1005"
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 130
        assert "Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
