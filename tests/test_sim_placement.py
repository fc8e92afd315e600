"""``python -m bench.sim --policies``: a small trace through the real SMS core;
the JSON's shape and its invariants (no timing: the clock is simulated)."""

from __future__ import annotations

import json

from bench.sim import __main__ as sim, jobs, placing

FIELDS = {"trace", "policy", "load", "p50_s", "p99_s", "queue_p50_s", "queue_p99_s",
          "utilization", "cold_starts", "failed", "failed_memory", "submitted", "succeeded"}


def _small() -> jobs.Work:
    w = jobs.skewed(span=120.0, rate=6.0)
    return jobs.Work("small", w.jobs, w.request_mb, w.span)


def test_every_execution_is_accounted_for_under_each_policy():
    work = _small()
    setup = placing.Setup(nodes=6, failures=1, seed=3)
    for policy in placing.POLICIES:
        for load in (0.5, 0.95):
            r = placing.simulate(work, policy, load, setup)
            assert FIELDS <= set(r)
            assert r["submitted"] == len(work.jobs)
            assert r["succeeded"] + r["failed"] == r["submitted"]
            assert r["succeeded"] >= 0.9 * r["submitted"]  # the core really placed them
            assert r["failed_memory"] <= r["failed"]
            assert 0.0 <= r["utilization"] <= 1.0 and 0.0 <= r["mem_utilization"] <= 1.0
            assert 0 <= r["p50_s"] <= r["p99_s"]
            assert 0 <= r["queue_p50_s"] <= r["queue_p99_s"]
            assert 0 < r["cold_starts"] <= r["submitted"] + r["retried"]


def test_packing_by_prediction_fails_no_more_than_the_baseline():
    w = jobs.padded(span=60.0)
    work = jobs.Work("padded", w.jobs, w.request_mb, w.span)
    setup = placing.Setup(nodes=6, failures=0)
    base = placing.simulate(work, "baseline", 0.8, setup)
    pack = placing.simulate(work, "pack", 0.8, setup)
    assert base["succeeded"] == base["submitted"] and pack["failed"] <= base["failed"]
    assert pack["succeeded"] + pack["failed"] == pack["submitted"]


def test_a_failed_node_work_is_retried_by_the_sms():
    r = placing.simulate(_small(), "baseline", 0.8, placing.Setup(nodes=4, failures=2, seed=1))
    assert r["retried"] > 0
    assert r["succeeded"] + r["failed"] == r["submitted"]


def test_the_cli_writes_one_row_per_trace_policy_and_load(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert sim.main(["--trace", "azure_sample", "--policies", "baseline", "--load", "0.5,0.9",
                     "--nodes", "4", "--seed", "1", "--json", str(out)]) == 0
    assert "p99_s" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [(r["trace"], r["policy"], r["load"]) for r in rows] == [
        ("azure_sample", "baseline", 0.5), ("azure_sample", "baseline", 0.9)]
    for r in rows:
        assert r["succeeded"] + r["failed"] == r["submitted"] > 0


def test_azure_calls_get_seeded_memory():
    a = jobs.load("azure_sample", seed=1)
    b = jobs.load("azure_sample", seed=1)
    assert a.request_mb == b.request_mb and set(a.request_mb.values()) <= set(jobs.REQUEST_MB)
    assert [j.peak_mb for j in a.jobs] == [j.peak_mb for j in b.jobs]


