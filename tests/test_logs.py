"""spear.logs: JSON lines, the execution context on them, and one grep across daemons."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request

import pytest

from spear import Client, logs
from spear.cluster import Cluster
from tests.helpers import add_spec, free_port


@pytest.fixture
def captured():
    """A logger whose lines land, as JSON, in the returned buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    lg = logging.getLogger("spear.test_logs")
    lg.handlers[:] = [handler]
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    yield lg, buf
    lg.handlers.clear()


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(s) for s in buf.getvalue().splitlines()]


def test_uvicorns_color_message_is_dropped(captured):
    lg, buf = captured
    lg.info("%s - %s", "127.0.0.1", "GET /", extra={"color_message": "\x1b[1m%s\x1b[0m - %s"})
    (line,) = lines(buf)
    assert line["msg"] == "127.0.0.1 - GET /"
    assert "color_message" not in line


def test_a_bound_execution_tags_its_tasks_lines_only(captured):
    lg, buf = captured

    async def run(eid: str, tid: str) -> None:
        logs.bind(eid, tid)
        await asyncio.sleep(0)
        lg.warning("inside %s", eid)

    async def main() -> None:
        await asyncio.gather(run("e1", "t1"), run("e2", ""))
        lg.warning("outside")

    asyncio.run(main())
    got = {d["msg"]: (d.get("execution_id"), d.get("trace_id")) for d in lines(buf)}
    # a missing trace id is the execution id, as the daemons record it
    assert got == {"inside e1": ("e1", "t1"), "inside e2": ("e2", "e2"), "outside": (None, None)}


def test_explicit_ids_win_over_the_bound_ones(captured):
    lg, buf = captured

    async def run() -> None:
        logs.bind("bound", "bound-trace")
        lg.info("x", extra={"execution_id": "given", "trace_id": "given-trace"})

    asyncio.run(run())
    (line,) = lines(buf)
    assert (line["execution_id"], line["trace_id"]) == ("given", "given-trace")


def test_one_grep_finds_an_execution_in_every_daemons_log(tmp_path):
    """JSON logs of a real cluster: every line is JSON (the gateway's uvicorn lines too),
    and the SMS's and the Spearlet's lines about an execution carry its ids."""
    trace = "grep-me-0123456789"
    http = f"127.0.0.1:{free_port()}"
    with Cluster(tmp_path / "c", spearlets=1, log_level="debug", log_format="json",
                 gateway=http) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(add_spec())
            eid = cl.submit("add", args=[2, 3], trace_id=trace)
            assert cl.wait(eid, timeout=20).ok
        with urllib.request.urlopen(f"http://{http}/v1/nodes", timeout=10) as r:
            assert r.status == 200
    found = {}
    for name in ("sms", "spearlet-1", "gateway"):
        text = (tmp_path / "c" / f"{name}.log").read_text()
        records = [json.loads(s) for s in text.splitlines() if s.strip()]  # all JSON
        assert not [r for r in records if "color_message" in r], name
        found[name] = [r for r in records if r.get("execution_id") == eid]
    for name in ("sms", "spearlet-1"):
        assert found[name], f"no {name} line carries execution {eid}"
        assert all(r.get("trace_id") == trace for r in found[name]), found[name]
