"""Task management through the SMS with real daemons (issue: task management)."""

from __future__ import annotations

import collections
import json
import os
import signal
import time

import pytest

from spear import Client, errors, protocol as P
from spear.cluster import Cluster
from tests.helpers import EXAMPLES, FAST_HB, add_spec, spear_cli, wait_for



def sleep_spec(name="nap", seconds=1.0, **kw):
    return P.FunctionSpec(name=name, runtime="process", command=["sleep", str(seconds)], **kw)


def assert_no_reservations(c: Client, timeout=5.0):
    def zero():
        st = c.stats()
        return st.cores_reserved == 0 and st.memory_reserved == 0 and st.executions_active == 0 and st
    wait_for(zero, timeout, "reservations back to zero")


@pytest.fixture
def cluster3(tmp_path):
    c = Cluster(tmp_path / "c", spearlets=3, labels=["zone=a", "zone=b", "zone=c"], **FAST_HB)
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


def test_deploy_once_invoke_by_name_everywhere(cluster3):
    with Client(cluster3.sms_addr, timeout=20) as c:
        info = c.deploy(add_spec())
        assert info.digest
        assert [f.name for f in c.functions()] == ["add"]
        spec = c.function("add")
        assert spec.artifact is None and spec.handler == "add"
        assert c.invoke("add", args=[20, 22]).output == b"42"
        # the node that ran it fetched the function from the SMS; the others did not
        ran = c.invoke("add", args=[1, 0]).info.node_id
        addr_of = {n.node_id: n.address for n in c.nodes()}
        for nid, addr in addr_of.items():
            names = [f.name for f in c.functions(node=addr)]
            assert names == (["add"] if nid == ran else [])
        # warm placement: repeated calls stay on the node that has it warm
        assert {c.invoke("add", args=[i, 0]).info.node_id for i in range(10)} == {ran}
        with pytest.raises(errors.NotFound):
            c.invoke("missing")
        r = spear_cli("invoke", "add", "--args", "1,2", "--sms", cluster3.sms_addr, text=False,
                      timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == b"3"


def test_placement_respects_labels_and_resources(cluster3):
    with Client(cluster3.sms_addr, timeout=20) as c:
        by_name = {n.node_id: n.name for n in c.nodes()}
        c.deploy(add_spec(name="add-b", labels={"zone": "b"}))
        placed = {by_name[c.invoke("add-b", args=[1, 1]).info.node_id] for _ in range(10)}
        assert placed == {"spearlet-2"}
        c.deploy(add_spec(name="add-x", labels={"zone": "x"}))
        r = c.invoke("add-x", args=[1, 1])
        assert r.status == "failed" and r.info.error.code == "UNAVAILABLE"
        assert "labels" in r.info.error.message
        cores = c.nodes()[0].capacity.cores
        c.deploy(add_spec(name="add-huge", limits=P.Limits(cpus=cores * 10)))
        r = c.invoke("add-huge", args=[1, 1])
        assert r.status == "failed" and "large enough" in r.info.error.message
        # each execution reserves most of a node: three run at once, one per node
        c.deploy(sleep_spec("big", 1.0, limits=P.Limits(cpus=cores * 0.75)))
        ids = [c.submit("big") for _ in range(3)]
        results = [c.wait(e, timeout=20) for e in ids]
        assert all(r.ok for r in results), [r.info.error for r in results]
        assert len({r.info.node_id for r in results}) == 3
        # a fourth would not fit anywhere at the same time: it queues and runs after
        ids = [c.submit("big") for _ in range(4)]
        results = [c.wait(e, timeout=30) for e in ids]
        assert all(r.ok for r in results)
        assert max(r.info.submitted_at for r in results) <= min(r.info.finished_at for r in results)
        assert_no_reservations(c)


def test_thousand_async_executions_succeed_and_spread(cluster3):
    import asyncio

    from spear import AsyncClient

    async def submit_all():
        async with AsyncClient(cluster3.sms_addr, timeout=30) as ac:
            return await asyncio.gather(*(ac.submit("add", args=[i, 1]) for i in range(1000)))

    with Client(cluster3.sms_addr, timeout=30) as c:
        c.deploy(add_spec())
        # submitted concurrently: the SMS sees them all at once and spreads the load
        ids = asyncio.run(submit_all())
        nodes = collections.Counter()
        for i, eid in enumerate(ids):
            r = c.wait(eid, timeout=30)
            assert r.ok and r.output == str(i + 1).encode()
            nodes[r.info.node_id] += 1
        assert len(nodes) == 3 and min(nodes.values()) >= 50, nodes
        items, total = c.executions(function="add", status="succeeded", limit=10)
        assert total >= 1000 and len(items) == 10
        page2, _ = c.executions(function="add", status="succeeded", limit=10, offset=10)
        assert not {i.execution_id for i in items} & {i.execution_id for i in page2}
        assert_no_reservations(c)


def test_kill_spearlet_mid_flight_retries_or_loses(cluster3):
    with Client(cluster3.sms_addr, timeout=30) as c:
        c.deploy(sleep_spec("retry-nap", 2.0, retries=2, idempotent=True))
        c.deploy(sleep_spec("once-nap", 2.0, retries=0))
        ids = [c.submit("retry-nap") for _ in range(6)] + [c.submit("once-nap") for _ in range(6)]
        time.sleep(0.5)
        victim_name = "spearlet-1"
        victim_id = c.node(victim_name).node_id
        os.kill(cluster3.spearlets[0].pid, signal.SIGKILL)
        results = [c.wait(e, timeout=30) for e in ids]
        assert all(r.status in P.TERMINAL for r in results)
        for r in results[:6]:
            assert r.ok, r.info
            if r.info.attempts > 1:
                assert r.info.node_id != victim_id
        lost = [r for r in results[6:] if r.status == "lost"]
        assert all(r.info.error.code == "UNAVAILABLE" for r in lost)
        # the once-nap executions that ran on the victim are lost, the others succeeded
        assert all(r.ok or r.status == "lost" for r in results[6:])
        assert any(r.info.attempts > 1 for r in results[:6]) or not lost
        st = c.stats()
        assert st.counts.get("succeeded", 0) + st.counts.get("lost", 0) == 12
        assert_no_reservations(c)


def test_sms_restart_keeps_functions_and_records(cluster3):
    with Client(cluster3.sms_addr, timeout=20) as c:
        c.deploy(add_spec())
        done = [c.invoke("add", args=[i, i]) for i in range(5)]
        eid = c.submit("add", args=[7, 7])
        c.wait(eid, timeout=10)
    time.sleep(0.1)  # let the SMS flush its batch
    assert cluster3.stop_process(cluster3.sms) == 0
    cluster3.start_sms()
    with Client(cluster3.sms_addr, timeout=5) as c:
        wait_for(lambda: _ready(c) == 3, 20, "spearlets reattached")
        assert [f.name for f in c.functions()] == ["add"]
        r = c.execution(eid)
        assert r.ok and r.output == b"14"
        for d in done:
            assert c.execution(d.execution_id).ok
        assert c.invoke("add", args=[2, 3]).output == b"5"


def _ready(c):
    try:
        return len(c.nodes("ready"))
    except errors.DeadlineExceeded:
        return 0


def test_cancel_stops_a_running_execution(cluster3):
    with Client(cluster3.sms_addr, timeout=20) as c:
        c.deploy(sleep_spec("long", 30))
        eid = c.submit("long")
        wait_for(lambda: c.execution(eid).status in ("scheduled", "running"), 5, "dispatch")
        time.sleep(0.3)
        c.cancel(eid)
        r = c.wait(eid, timeout=10)
        assert r.status == "cancelled"
        with pytest.raises(errors.InvalidArgument):
            c.cancel(eid)
        assert_no_reservations(c)


def test_an_execution_is_running_then_its_failure_shows_its_stderr_tail(cluster3):
    with Client(cluster3.sms_addr, timeout=20) as c:
        c.deploy(P.FunctionSpec(name="grumble", runtime="process", command=[
            "sh", "-c", "echo started >&2; sleep 3; head -c 1048576 /dev/zero | tr '\\0' x >&2; "
                        "echo 'it broke' >&2; exit 3"]))
        eid = c.submit("grumble")
        wait_for(lambda: c.execution(eid).status == "running", 10, "the node to report it running")
        res = c.wait(eid, timeout=20)
        assert res.status == "failed" and res.info.exit_code == 3
        tail = res.info.error.stderr_tail
        assert tail.endswith("xxxit broke\n") and len(tail) == 4096  # 1 MiB written, 4 KiB kept
        shown = spear_cli("executions", eid, "--sms", cluster3.sms_addr, timeout=30)
        assert shown.returncode != 0 and "--- stderr (tail) ---" in shown.stderr
        assert shown.stderr.rstrip().endswith("it broke")
        as_json = spear_cli("executions", eid, "--json", "--sms", cluster3.sms_addr, timeout=30)
        assert json.loads(as_json.stdout)["error"]["stderr_tail"] == tail
        logs = spear_cli("logs", eid, "--sms", cluster3.sms_addr, timeout=30)
        assert "--- stderr (tail) ---" in logs.stdout and "it broke" in logs.stdout


def test_stream_through_sms(cluster3):
    with Client(cluster3.sms_addr, timeout=20) as c:
        c.deploy(P.FunctionSpec(name="hello", runtime="wasm",
                                artifact=(EXAMPLES / "hello.wat").read_bytes()))
        items = list(c.stream("hello", b"relay"))
        assert any(isinstance(i, bytes) for i in items[:-1])
        assert items[-1].output == b"hello, relay"


def test_events_resume_from_sequence(cluster3):
    with Client(cluster3.sms_addr, timeout=20) as c:
        c.deploy(add_spec())
        c.invoke("add", args=[1, 1])
        first = list(c.events(since=0, until=time.monotonic() + 1.0))
        assert any(e.kind == "node" and e.state == "ready" for e in first)
        assert any(e.kind == "execution" and e.state == "succeeded" for e in first)
        last = first[-1].seq
        c.invoke("add", args=[2, 2])
        more = list(c.events(since=last, until=time.monotonic() + 1.0))
        assert more and all(e.seq > last for e in more)
        assert [e.seq for e in more] == sorted(e.seq for e in more)


def test_trace_id_in_sms_and_spearlet_logs(cluster3):
    import json as _json

    with Client(cluster3.sms_addr, timeout=20) as c:
        c.deploy(P.FunctionSpec(name="boom", runtime="process",
                                command=["sh", "-c", "echo broken >&2; exit 7"]))
        r = c.invoke("boom", trace_id="trace-abc-123")
        assert r.status == "failed" and r.info.trace_id == "trace-abc-123"
        node_name = {n.node_id: n.name for n in c.nodes()}[r.info.node_id]

    def lines_with_trace(path):
        out = []
        for line in path.read_text().splitlines():
            try:
                rec = _json.loads(line)
            except ValueError:
                continue
            if rec.get("trace_id") == "trace-abc-123":
                out.append(rec)
        return out

    wait_for(lambda: lines_with_trace(cluster3.data / "sms.log"), 5, "SMS log line")
    wait_for(lambda: lines_with_trace(cluster3.data / f"{node_name}.log"), 5, "spearlet log line")
    rec = lines_with_trace(cluster3.data / "sms.log")[0]
    assert rec["execution_id"] == r.execution_id and rec["status"] == "failed"
