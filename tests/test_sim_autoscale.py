"""bench.sim with the autoscaler's real policy as its node model (``--autoscale``)."""

from __future__ import annotations

import json

from bench.sim import __main__ as sim, policies
from bench.sim.cluster import Shape, Simulator
from bench.sim.workloads import Call, Trace


def _burst() -> Trace:
    """A background call every 5 s, and 40 calls of 256 MB for 60 s each at t=10."""
    calls = [Call(float(t), "tick", 0.1, 64) for t in range(0, 1200, 5)]
    calls += [Call(10.0 + i / 100, f"burst-{i % 4}", 60.0, 256) for i in range(40)]
    return Trace("burst", sorted(calls, key=lambda c: c.t), 1200.0)


def test_the_autoscaler_policy_absorbs_a_burst_then_gives_its_nodes_back():
    shape = Shape(nodes=1, node_mb=1024, cold_s=0.5)
    fixed = Simulator(_burst(), "none", shape).run()
    model = policies.AutoscaledNodes(1, 1024, own=1, max_nodes=10, start_s=30.0)
    scaled = Simulator(_burst(), "none", shape, nodes=model).run()
    assert fixed.calls == scaled.calls == 280
    # 40 x 256 MB on one 1 GB node: nine rounds of 60 s; the added nodes join after ~35 s
    assert fixed.max_wait_s > 400
    assert 30 < scaled.max_wait_s < 120
    assert model.peak > 2 and not model.added  # scaled up, then drained and removed
    assert 1200 / 3600 < model.node_hours(1200) < model.peak * 1200 / 3600


def test_the_fixed_cluster_is_the_default_and_the_flag_adds_autoscaled_rows(tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert sim.main(["--trace", "azure_sample", "--warming", "fixed", "--autoscale",
                     "--nodes", "2", "--min-nodes", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["autoscale"] for r in rows] == [False, True]
    fixed, scaled = rows
    assert fixed["cluster_node_hours"] == 2 * fixed["node_hours"] and fixed["peak_nodes"] == 2
    assert scaled["peak_nodes"] >= 1 and scaled["cluster_node_hours"] < fixed["cluster_node_hours"]
    assert "autoscale" in capsys.readouterr().out
