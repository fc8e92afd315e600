"""deploy/grafana/spear.json: a dashboard Grafana can import, over metrics Spear really exposes.

The names its PromQL uses are checked twice: against the metric registries'
definitions and against the ``/metrics`` pages of a live SMS and Spearlet
(whose declared families must match those definitions, so neither drifts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from spear import Client
from spear.cluster import Cluster
from tests.helpers import add_spec, free_port
from tests.promql import TARGET_LABELS, exposed, labels_of, parse_expr, scraped_names

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "spear.json"
RULES = DASHBOARD.parents[1] / "prometheus" / "alerts.yml"

DOC = json.loads(DASHBOARD.read_text())
PANELS = DOC["panels"]
GRAPHS = [p for p in PANELS if p["type"] != "row"]
EXPRS = [(p["title"], t["expr"]) for p in GRAPHS for t in p["targets"]]
VARIABLES = {v["name"]: v for v in DOC["templating"]["list"]}
#: variables Grafana itself defines
BUILTIN = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*,\s*(\w+)\s*\)")


def test_the_dashboard_has_the_shape_grafana_imports():
    assert DOC["title"] and re.fullmatch(r"[\w-]{1,40}", DOC["uid"])
    assert isinstance(DOC["schemaVersion"], int) and DOC["schemaVersion"] >= 36
    assert DOC["id"] is None  # an import gets its own id
    ids = [p["id"] for p in PANELS]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in PANELS:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")), p["title"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["type"] in {"row", "stat", "timeseries"}, p["type"]
    for p in GRAPHS:
        assert p["title"] and p.get("description"), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
    assert VARIABLES["datasource"]["type"] == "datasource"
    assert VARIABLES["datasource"]["query"] == "prometheus"


def test_the_rows_are_cluster_functions_nodes_and_panels_do_not_overlap():
    assert [p["title"] for p in PANELS if p["type"] == "row"] == ["Cluster", "Functions", "Nodes"]
    taken: set[tuple[int, int]] = set()
    for p in PANELS:
        g = p["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells
    first_row_y = {p["title"]: p["gridPos"]["y"] for p in PANELS if p["type"] == "row"}
    assert first_row_y["Cluster"] < first_row_y["Functions"] < first_row_y["Nodes"]


def test_every_variable_used_is_defined():
    texts = [e for _, e in EXPRS] + [v.get("query", "") for v in VARIABLES.values()]
    used = {m.group(1) or m.group(2) for t in texts for m in re.finditer(r"\$\{(\w+)\}|\$(\w+)", t)}
    assert used - BUILTIN <= set(VARIABLES), used - BUILTIN - set(VARIABLES)


@pytest.mark.parametrize("title,expr", EXPRS, ids=[f"{t}:{i}" for i, (t, _) in enumerate(EXPRS)])
def test_each_expression_uses_exposed_metrics_and_their_labels(title, expr):
    known = exposed()
    names, selectors, grouping = parse_expr(expr)
    assert names, f"{title}: no metric in {expr}"
    assert names <= known, f"{title}: not exposed by spear.metrics: {sorted(names - known)}"
    for metric, labels in selectors:
        allowed = labels_of(metric) | TARGET_LABELS
        assert labels <= allowed, f"{title}: {metric} has no label {labels - allowed}"
    usable = set().union(*(labels_of(n) for n in names)) | TARGET_LABELS
    assert grouping <= usable, f"{title}: grouping by unknown {grouping - usable}"


def test_variable_queries_name_exposed_metrics_and_labels():
    for v in VARIABLES.values():
        if v["type"] != "query":
            continue
        m = _LABEL_VALUES.fullmatch(v["query"])
        assert m, v["query"]
        metric, _, label = m.groups()
        assert metric in exposed() and label in labels_of(metric) | TARGET_LABELS, v["query"]


def test_promtool_parses_every_expression(tmp_path):
    """Each expression, its variables given values, is valid PromQL (as a recording rule)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        why = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    values = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "datasource": "x"}

    def concrete(expr: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), ".+"), expr)

    rules = [{"record": f"spear:dashboard_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(EXPRS)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def dashboard_names() -> set[str]:
    names = set().union(*(parse_expr(e)[0] for _, e in EXPRS))
    return names | {_LABEL_VALUES.fullmatch(v["query"]).group(1)
                    for v in VARIABLES.values() if v["type"] == "query"}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_a_live_cluster_exposes_every_metric_the_dashboard_and_the_alerts_use(tmp_path):
    from tests.test_alerts import RULE_LIST

    sms_port, node_port = free_port(), free_port()
    (tmp_path / "sms.toml").write_text(f"[sms]\nmetrics_port = {sms_port}\n")
    (tmp_path / "node.toml").write_text(f"[spearlet]\nmetrics_port = {node_port}\n")
    with Cluster(tmp_path / "c", spearlets=1, config=str(tmp_path / "sms.toml"),
                 spearlet_config=str(tmp_path / "node.toml")) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(add_spec())
            assert cl.invoke("add", args=[1, 2]).ok
        live = scraped_names(scrape(sms_port)) | scraped_names(scrape(node_port))
    spear_live = {n for n in live if n.startswith("spear_")}
    assert spear_live == {n for n in exposed() if n.startswith("spear_")}, (
        "the live /metrics and the registries' definitions disagree")
    used = dashboard_names() | set().union(*(parse_expr(r["expr"])[0] for r in RULE_LIST))
    missing = {n for n in used if n != "up"} - live
    assert not missing, f"not on a live /metrics page: {sorted(missing)}"
