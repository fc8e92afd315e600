"""/metrics scraped from real daemons during a run shows the counters moving."""

from __future__ import annotations

import re
import urllib.request

from spear import Client, protocol as P
from spear.cluster import Cluster
from tests.helpers import add_spec, free_port, wait_for


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def total(text: str, name: str, **labels) -> float:
    out = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            out += float(line.rsplit(" ", 1)[1])
    return out


def test_metrics_move_during_a_run(tmp_path):
    sms_port, node_port = free_port(), free_port()
    sms_cfg = tmp_path / "sms.toml"
    sms_cfg.write_text(f"[sms]\nmetrics_port = {sms_port}\n")
    node_cfg = tmp_path / "node.toml"
    node_cfg.write_text(f"[spearlet]\nmetrics_port = {node_port}\n")
    with Cluster(tmp_path / "c", spearlets=1, config=str(sms_cfg),
                 spearlet_config=str(node_cfg)) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(add_spec())
            cl.invoke("add", args=[1, 1])
            before_sms = total(scrape(sms_port), "spear_sms_executions_total")
            before_node = total(scrape(node_port), "spear_spearlet_executions_total",
                                function="add")
            for i in range(20):
                assert cl.invoke("add", args=[i, 1]).ok
            cl.deploy(P.FunctionSpec(name="bad", runtime="process", command=["false"]))
            assert cl.invoke("bad").status == "failed"
            # the reply can overtake the counter update by a hair: poll (bounded)
            wait_for(lambda: total(scrape(sms_port), "spear_sms_executions_total")
                     >= before_sms + 21, 5, "21 more executions counted by the SMS")
            node_text = scrape(node_port)
    assert total(node_text, "spear_spearlet_executions_total", function="add") >= before_node + 20
    assert total(node_text, "spear_spearlet_executions_total", function="bad",
                 status="failed") >= 1
    assert re.search(r"^spear_spearlet_execution_end_to_end_seconds_count", node_text, re.M)
