"""deploy/prometheus/alerts.yml: well-formed rules over metrics Spear really exposes,
each unit-tested by deploy/prometheus/alerts_test.yml under ``promtool test rules``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.promql import TARGET_LABELS, exposed, labels_of, parse_expr

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = RULES.with_name("alerts_test.yml")


def load_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    assert isinstance(doc, dict) and doc.get("groups"), "no rule groups"
    rules = []
    for group in doc["groups"]:
        assert group.get("name") and group.get("rules"), group
        rules.extend(group["rules"])
    return rules


RULE_LIST = load_rules()


def test_the_parser_finds_names_labels_and_grouping():
    names, selectors, grouping = parse_expr(
        'sum by (job, function) (rate(spear_x_total{status=~"a|b", code!="c"}[5m])) '
        '/ on (job) group_left max(up{job="x"}) > 0.5')
    assert names == {"spear_x_total", "up"}
    assert ("spear_x_total", {"status", "code"}) in selectors
    assert grouping == {"job", "function"}


def test_there_are_rules_for_each_concern():
    alerts = {r["alert"] for r in RULE_LIST}
    text = " ".join(r["expr"] for r in RULE_LIST)
    assert len(alerts) == len(RULE_LIST), "alert names must be unique"
    for must in ('up{job="spear-sms"} == 0',  # SMS unreachable
                 "spear_sms_node_up",  # node down / unhealthy
                 'status=~"failed',  # error rate
                 'code="RESOURCE_EXHAUSTED"',  # pool exhaustion / refusals
                 "spear_spearlet_pool_waiting"):
        assert must in text, must


@pytest.mark.parametrize("rule", RULE_LIST, ids=[r.get("alert", "?") for r in RULE_LIST])
def test_rule_is_complete(rule):
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
    assert isinstance(rule["expr"], str) and rule["expr"].strip()
    assert re.fullmatch(r"\d+[smhd]", str(rule["for"])), rule["for"]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    ann = rule["annotations"]
    assert ann.get("summary") and ann.get("description")
    assert rule["expr"].count("(") == rule["expr"].count(")")


@pytest.mark.parametrize("rule", RULE_LIST, ids=[r.get("alert", "?") for r in RULE_LIST])
def test_rule_uses_only_exposed_metrics_and_their_labels(rule):
    known = exposed()
    names, selectors, grouping = parse_expr(rule["expr"])
    assert names, "no metric in the expression"
    unknown = names - known
    assert not unknown, f"{rule['alert']}: not exposed by spear.metrics: {sorted(unknown)}"
    for metric, labels in selectors:
        allowed = labels_of(metric) | TARGET_LABELS
        assert labels <= allowed, f"{rule['alert']}: {metric} has no label {labels - allowed}"
    usable = set().union(*(labels_of(n) for n in names)) | TARGET_LABELS
    assert grouping <= usable, f"{rule['alert']}: grouping by unknown {grouping - usable}"
    for ann in rule["annotations"].values():
        for lab in re.findall(r"\$labels\.(\w+)", ann):
            assert lab in usable, f"{rule['alert']}: annotation uses unknown label {lab}"


def test_every_alert_has_a_rule_test_that_fires_it_and_one_that_does_not():
    doc = yaml.safe_load(RULE_TESTS.read_text())
    assert doc["rule_files"] == [RULES.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in doc["tests"]:
        for t in group["alert_rule_test"]:
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    alerts = {r["alert"] for r in RULE_LIST}
    assert fires == alerts, f"no firing test: {sorted(alerts - fires)}; unknown: {sorted(fires - alerts)}"
    assert quiet == alerts, f"no quiet test: {sorted(alerts - quiet)}"


def test_promtool_passes_the_rule_tests():
    """The rules do what alerts_test.yml says (promtool: Debian's ``prometheus`` package)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        why = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    r = subprocess.run([promtool, "check", "rules", RULES.name], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
