"""``python -m bench.sim`` on small traces: the JSON's shape and the figures'
invariants (no timing: the simulator's clock is the trace's)."""

from __future__ import annotations

import json

import pytest

from bench.sim import __main__ as sim, workloads
from bench.sim.cluster import Shape, Simulator

FIELDS = {"trace", "warming", "calls", "cold_starts", "cold_start_rate", "warm_mb_s",
          "node_hours", "prewarms", "burst_absorb_s"}


def test_the_sample_trace_under_every_policy(tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert sim.main(["--trace", "azure_sample", "--warming", "none,fixed,learned",
                     "--json", str(out)]) == 0
    assert "cold_start_rate" in capsys.readouterr().out
    rows = {r["warming"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"none", "fixed", "learned"}
    calls = len(workloads.load("azure_sample").calls)
    for r in rows.values():
        assert FIELDS <= set(r) and r["trace"] == "azure_sample"
        assert r["calls"] == calls
        assert 0 < r["cold_starts"] <= calls
        assert r["cold_start_rate"] == pytest.approx(r["cold_starts"] / calls, abs=1e-6)
        assert r["warm_mb_s"] >= 0 and r["node_hours"] >= 0
    assert rows["none"]["cold_starts"] == calls and rows["none"]["warm_mb_s"] == 0
    assert rows["fixed"]["prewarms"] == 0
    # on this data the learned policy meets its goal: fewer cold starts than the
    # fixed keep-alive, at no more warm memory
    assert rows["learned"]["cold_starts"] < rows["fixed"]["cold_starts"]
    assert rows["learned"]["warm_mb_s"] <= rows["fixed"]["warm_mb_s"]
    assert rows["learned"]["learned_functions"] >= 1


def test_a_small_generated_trace_on_a_tight_cluster():
    trace = workloads.zipf(seed=5, n=30, span=3600.0, rate=1.0)
    shape = Shape(nodes=2, node_mb=1024)
    for kind in ("fixed", "learned"):
        s = Simulator(trace, kind, shape).run()
        assert s.calls == len(trace.calls)
        assert s.cold_starts <= s.calls
        assert s.functions == len({c.func for c in trace.calls})
        assert s.node_hours <= shape.nodes * 1.0 + 1e-9  # never more memory than the nodes have


def test_an_azure_file_needs_its_header(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="header"):
        workloads.load(str(bad))
    assert sim.main(["--trace", "no-such-trace"]) == 2
