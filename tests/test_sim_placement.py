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
    # every function CPU-bound: the big boxes are slower for all (pooled, a clear factor)
    setup = placing.Setup(nodes=6, failures=0, seed=2, memory_bound=0.0)
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


def test_functions_are_cpu_or_memory_bound_and_node_types_slow_at_one():
    """Half the functions (seeded per name) are memory-bound: slow on the medium
    boxes, fine on the big ones; CPU-bound ones the other way round."""
    work = _small()
    setup = placing.Setup(nodes=6, failures=0, seed=3)
    fns = sorted(work.request_mb)
    mem = setup.memory_bound_functions(fns)
    assert 0 < len(mem) < len(fns)
    assert mem == setup.memory_bound_functions(reversed(fns))  # per name, not per order
    assert placing.Setup(memory_bound=0.0).memory_bound_functions(fns) == set()
    assert setup.slowness(1, 1.0) > setup.slowness(2, 1.0)  # medium: slow memory
    assert setup.slowness(1, 0.0) < setup.slowness(2, 0.0)  # large: slow cores
    sim = placing.PlacementSim(work, 0.8, setup, placing.POLICIES["learned"])
    out = sim.run()
    runs = {}  # what each (kind, size) was reported to take against its reference
    for eid, job in sim.job_of.items():
        ex = sim.core.tasks.execs.get(eid)
        if ex is not None and ex.info.status == "succeeded":
            size = int(ex.info.node_id[1:]) % 3
            runs.setdefault((job.func in mem, size), []).append(ex.info.timings.run / job.run)
    assert min(runs[(True, 1)]) >= 1.6 - 1e-9 and min(runs[(False, 2)]) >= 1.6 - 1e-9
    assert min(runs[(True, 2)]) >= 1.0 - 1e-9 and min(runs[(False, 1)]) >= 1.0 - 1e-9
    assert out.succeeded + out.failed == out.submitted and out.failed == out.failed_memory
    models, table = sim.core.tasks.models, sim.core.table
    medium, big = table.type_of[table.slot_of["n01"]], table.type_of[table.slot_of["n02"]]
    learned = 0
    for fn in fns:  # where a function has its own factors on both, they rank them right
        own = models.function_factors(fn)
        if own is not None and medium in own[1] and big in own[1]:
            learned += 1
            assert (own[1][medium] > own[1][big]) == (fn in mem), fn
    assert learned >= 2
