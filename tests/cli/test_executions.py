"""``spear executions``, ``logs`` and ``cancel`` against a real cluster: whole ids
shown, any unique prefix taken."""

from __future__ import annotations

import json

import pytest

from spear import Client, protocol as P
from spear.cluster import Cluster
from tests.helpers import FAST_HB, add_spec, spear_cli, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ids") / "spear", spearlets=1, **FAST_HB)
    try:
        c.start(wait=30)
        with Client(c.sms_addr) as client:
            client.deploy(add_spec("add"))
            client.deploy(P.FunctionSpec(name="nap", runtime="process", command=["sleep", "30"]))
        yield c
    finally:
        c.stop()


def cli(cluster, *args: str):
    return spear_cli(*args, "--sms", cluster.sms_addr)


def test_the_list_shows_whole_distinct_ids_and_a_prefix_names_one(cluster):
    with Client(cluster.sms_addr) as c:
        eids = [c.submit("add", args=[i, 1]) for i in range(3)]
        for eid in eids:
            assert c.wait(eid, timeout=20).info.status == "succeeded"
    r = cli(cluster, "executions", "--function", "add")
    assert r.returncode == 0, r.stderr
    for eid in eids:  # made within a few ms: only whole ids tell them apart at a glance
        assert eid in r.stdout
    listed = json.loads(cli(cluster, "executions", "--function", "add", "--json").stdout)
    assert {e["execution_id"] for e in listed["executions"]} >= set(eids)

    prefix = eids[1][:-3]
    shown = json.loads(cli(cluster, "executions", prefix, "--json").stdout)
    assert shown["execution_id"] == eids[1] and shown["output"] == "2"
    logs = cli(cluster, "logs", prefix.upper())
    assert logs.returncode == 0 and f"execution {eids[1]}" in logs.stdout


def test_bad_prefixes_are_refused_clearly(cluster):
    short = cli(cluster, "executions", "0190")
    assert short.returncode != 0 and "at least 8 hex digits" in short.stderr
    assert "Traceback" not in short.stderr
    unknown = cli(cluster, "executions", "ffffffff")
    assert unknown.returncode != 0 and "NOT_FOUND" in unknown.stderr + unknown.stdout


def test_cancel_by_prefix(cluster):
    with Client(cluster.sms_addr) as c:
        eid = c.submit("nap")
        wait_for(lambda: c.execution(eid).info.status in ("scheduled", "running"), 20,
                 "the nap to be placed")
        r = cli(cluster, "cancel", eid[:-4])
        assert r.returncode == 0, r.stderr
        assert c.wait(eid, timeout=20).info.status == "cancelled"
