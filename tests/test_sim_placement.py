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




def test_node_types_tenants_and_inputs_reach_the_sms():
    """The simulated nodes differ in speed and load (heartbeats say so), the
    sized trace carries inputs: the SMS's models learn all three."""
    w = jobs.sized(span=120.0)
    work = jobs.Work("sized", w.jobs, w.request_mb, w.span)
    assert any(j.size for j in work.jobs)
    setup = placing.Setup(nodes=6, failures=0, seed=2)
    sim = placing.PlacementSim(work, 0.8, setup, placing.POLICIES["finish"])
    r = placing.row("sized", "finish", 0.8, setup, sim.run())
    assert r["succeeded"] + r["failed"] == r["submitted"]
    models, table = sim.core.tasks.models, sim.core.table
    big = table.type_of[table.slot_of["n02"]]  # 8 cores, 1.6x slower per core
    medium = table.type_of[table.slot_of["n01"]]
    assert models.speed_factor(big) > 1.1 * models.speed_factor(medium)  # (tenants blur it)
    tenanted = [f"n{i:02d}" for i in setup.tenanted()]
    assert tenanted and any(sim.core.registry.nodes[n].usage.load1 > 0 for n in tenanted)
    fn = max(work.request_mb, key=lambda f: sum(j.func == f for j in work.jobs))
    assert models._models[fn].b > 0.3  # run time grows with the input's size


def test_a_run_repeats_with_its_seed():
    work = _small()
    setup = placing.Setup(nodes=6, failures=1, seed=5)
    assert placing.simulate(work, "finish", 0.8, setup) == placing.simulate(
        work, "finish", 0.8, setup)
