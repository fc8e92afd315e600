"""NodeTable, the scheduler's flat-array view of the cluster: no I/O, fake clock."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spear.fast
import spear.sms.scheduler as scheduler_mod
from spear.protocol import Capacity, NodeInfo, Usage
from spear.sms.scheduler import PENALTY, PENALTY_HALF_LIFE, NodeTable

GiB = 1 << 30
MiB = 1 << 20
T0 = 1_000_000.0


def node(node_id: str, *, cores: float = 4.0, memory: int = 4 * GiB, slots: int = 0,
         runtimes=("process",), labels=None, state: str = "ready", load1: float = 0.0,
         unavailable=None) -> NodeInfo:
    return NodeInfo(node_id=node_id, runtimes=list(runtimes), labels=dict(labels or {}),
                    capacity=Capacity(cores=cores, memory=memory, slots=slots),
                    usage=Usage(load1=load1), state=state,
                    unavailable=dict(unavailable or {}))


def pick(table: NodeTable, *, runtime="process", labels=None, function="f", cpu=1.0,
         mem=64 * MiB, k=3, exclude=None) -> list[str]:
    return table.candidates(runtime=runtime, labels=labels or {}, function=function, cpu=cpu,
                            mem=mem, k=k, exclude=exclude)


def why(table: NodeTable, *, runtime="process", labels=None, cpu=1.0, mem=64 * MiB):
    return table.why_not(runtime=runtime, labels=labels or {}, cpu=cpu, mem=mem)


@pytest.fixture
def table() -> NodeTable:
    return NodeTable()


# ---------------------------------------------------------------- eligibility


def test_empty_table_has_no_candidates(table):
    assert pick(table) == []
    assert len(table) == 0


def test_picks_only_nodes_with_the_runtime(table):
    table.upsert(node("wasm-only", runtimes=["wasm"]))
    table.upsert(node("proc", runtimes=["process", "docker"]))
    assert pick(table, runtime="process") == ["proc"]
    assert pick(table, runtime="wasm") == ["wasm-only"]
    assert pick(table, runtime="docker") == ["proc"]


def test_labels_must_all_match(table):
    table.upsert(node("a", labels={"zone": "eu", "gpu": "no"}))
    table.upsert(node("b", labels={"zone": "us", "gpu": "yes"}))
    table.upsert(node("c", labels={"zone": "eu", "gpu": "yes"}))
    assert pick(table, labels={"zone": "eu"}) == ["a", "c"]
    assert pick(table, labels={"zone": "eu", "gpu": "yes"}) == ["c"]
    assert pick(table, labels={"zone": "asia"}) == []
    # a label the request does not name does not matter
    assert sorted(pick(table)) == ["a", "b", "c"]


def test_label_change_on_upsert_is_seen(table):
    table.upsert(node("a", labels={"zone": "eu"}))
    assert pick(table, labels={"zone": "eu"}) == ["a"]  # fills the eligibility cache
    table.upsert(node("a", labels={"zone": "us"}))
    assert pick(table, labels={"zone": "eu"}) == []
    assert pick(table, labels={"zone": "us"}) == ["a"]


def test_exclude_skips_nodes(table):
    table.upsert(node("a"))
    table.upsert(node("b"))
    assert pick(table, exclude={"a"}) == ["b"]
    assert pick(table, exclude={"a", "b"}) == []
    assert pick(table, exclude={"unknown"}) == ["a", "b"]
    # excluding does not poison the cached mask
    assert pick(table) == ["a", "b"]


def test_k_limits_the_number_of_candidates(table):
    for i in range(5):
        table.upsert(node(f"n{i}"))
    assert len(pick(table, k=3)) == 3
    assert len(pick(table, k=1)) == 1
    assert pick(table, k=0) == []
    assert len(pick(table, k=10)) == 5


# ---------------------------------------------------------------- resources


def test_request_larger_than_free_capacity_is_not_placed(table):
    table.upsert(node("small", cores=2.0, memory=1 * GiB))
    assert pick(table, cpu=3.0) == []
    assert pick(table, mem=2 * GiB) == []
    assert pick(table, cpu=2.0, mem=1 * GiB) == ["small"]  # an exact fit fits


def test_reservations_reduce_free_capacity_and_release_restores_it(table):
    slot = table.upsert(node("a", cores=2.0, memory=1 * GiB))
    table.take("a", 1.5, 512 * MiB)
    assert table.running["a"] == 1
    assert table.free_cpu[slot] == pytest.approx(0.5)
    assert table.free_mem[slot] == pytest.approx(512 * MiB)
    assert table.total_reserved() == (1.5, 512 * MiB)
    assert pick(table, cpu=1.0) == []
    assert pick(table, cpu=0.5, mem=600 * MiB) == []
    assert pick(table, cpu=0.5, mem=512 * MiB) == ["a"]
    table.give("a", 1.5, 512 * MiB)
    assert table.total_reserved() == (0, 0)
    assert table.running["a"] == 0
    assert table.free_cpu[slot] == 2.0
    assert table.free_mem[slot] == float(1 * GiB)
    assert pick(table, cpu=2.0) == ["a"]


def test_many_small_reservations_release_back_to_exactly_zero(table):
    table.upsert(node("a", cores=8.0))
    for _ in range(1000):
        table.take("a", 0.01, 16 * MiB)
    for _ in range(1000):
        table.give("a", 0.01, 16 * MiB)
    assert table.total_reserved() == (0.0, 0.0)
    assert table.running["a"] == 0


def test_release_never_goes_negative(table):
    slot = table.upsert(node("a", cores=2.0))
    table.give("a", 1.0, 1.0)  # an end with no dispatch before it
    assert table.total_reserved() == (0.0, 0.0)
    assert table.running["a"] == 0
    assert table.free_cpu[slot] == 2.0
    table.give("unknown", 1.0, 1.0)  # no error


def test_more_headroom_is_preferred(table):
    table.upsert(node("a", cores=4.0))
    # b's heartbeat load matches the one execution a runs: only headroom differs
    table.upsert(node("b", cores=4.0, load1=1.0))
    table.take("a", 2.0, 0)
    assert table.load[table.slot_of["a"]] == table.load[table.slot_of["b"]]
    assert pick(table) == ["b", "a"]


def test_load_is_penalised(table):
    table.upsert(node("a", load1=3.0))
    table.upsert(node("b", load1=0.0))
    assert pick(table) == ["b", "a"]


def test_ties_go_to_the_lower_slot(table):
    table.upsert(node("z"))
    table.upsert(node("a"))
    assert pick(table) == ["z", "a"]


# ---------------------------------------------------------------- warmth and penalties


def test_warm_bonus_prefers_a_node_with_the_function(table):
    table.upsert(node("a"))
    table.upsert(node("b"))
    assert pick(table, function="f") == ["a", "b"]
    table.mark_warm("b", "f")
    assert pick(table, function="f") == ["b", "a"]
    assert pick(table, function="g") == ["a", "b"]  # warmth is per function
    table.mark_warm("unknown", "f")  # no error


def test_warm_bonus_outweighs_modest_headroom(table):
    # a's heartbeat load matches the one execution b runs: only headroom and warmth differ
    table.upsert(node("a", cores=4.0, load1=1.0))
    table.upsert(node("b", cores=4.0))
    table.take("b", 1.0, 0)
    assert table.load[table.slot_of["a"]] == table.load[table.slot_of["b"]]
    table.mark_warm("b", "f")
    assert pick(table, function="f")[0] == "b"
    table.give("b", 1.0, 0)


def test_mark_warm_before_the_mask_exists_is_seen(table):
    table.upsert(node("a"))
    table.upsert(node("b"))
    table.mark_warm("b", "f")  # no cached mask for f yet
    assert pick(table, function="f") == ["b", "a"]


def test_forget_function_drops_the_warm_bonus(table):
    table.upsert(node("a"))
    table.upsert(node("b"))
    table.mark_warm("b", "f")
    assert pick(table, function="f")[0] == "b"
    table.forget_function("f")
    assert pick(table, function="f") == ["a", "b"]


def test_penalise_makes_a_node_less_preferred_and_decays(table):
    sa = table.upsert(node("a"))
    table.upsert(node("b"))
    assert pick(table) == ["a", "b"]
    table.penalise("a", T0)
    assert table.penalty[sa] == PENALTY
    assert pick(table) == ["b", "a"]
    table.decay_penalties(T0 + PENALTY_HALF_LIFE)
    assert table.penalty[sa] == pytest.approx(PENALTY / 2)
    assert pick(table) == ["b", "a"]
    table.decay_penalties(T0 + 20 * PENALTY_HALF_LIFE)
    assert table.penalty[sa] == 0.0
    assert pick(table) == ["a", "b"]


def test_penalties_accumulate_with_decay(table):
    sa = table.upsert(node("a"))
    table.penalise("a", T0)
    table.penalise("a", T0 + PENALTY_HALF_LIFE)
    assert table.penalty[sa] == pytest.approx(PENALTY / 2 + PENALTY)
    table.penalise("unknown", T0)  # no error


# ---------------------------------------------------------------- membership


def test_remove_and_upsert_reuse_the_slot(table):
    sa = table.upsert(node("a"))
    sb = table.upsert(node("b"))
    table.mark_warm("a", "f")
    table.penalise("a", T0)
    table.take("a", 1.0, 0)
    assert pick(table, function="f")  # builds caches that must be cleaned
    table.remove("a")
    assert len(table) == 1
    assert "a" not in table.slot_of
    assert pick(table, function="f") == ["b"]
    assert table.total_reserved() == (0.0, 0.0)
    assert "a" not in table.running
    sc = table.upsert(node("c"))
    assert sc == sa
    assert table.node_at[sc] == "c"
    assert len(table.node_at) == 2  # no new slot
    # nothing of the old node carries over to the new one
    assert table.penalty[sc] == 0.0
    assert table.functions[sc] == set()
    assert pick(table, function="f") == ["c", "b"]
    assert table.slot_of == {"b": sb, "c": sc}
    table.remove("a")  # removing twice is harmless


def test_removed_node_is_never_picked_even_with_cached_masks(table):
    table.upsert(node("a", labels={"x": "1"}))
    assert pick(table, labels={"x": "1"}) == ["a"]
    table.remove("a")
    assert pick(table, labels={"x": "1"}) == []


def test_upsert_refreshes_capacity(table):
    slot = table.upsert(node("a", cores=1.0))
    assert pick(table, cpu=2.0) == []
    table.take("a", 0.5, 0)
    assert table.upsert(node("a", cores=4.0)) == slot
    assert table.free_cpu[slot] == 3.5  # reservations survive a refresh
    assert pick(table, cpu=2.0) == ["a"]
    table.give("a", 0.5, 0)


def test_unhealthy_node_is_excluded(table):
    table.upsert(node("a"))
    table.upsert(node("b"))
    assert pick(table) == ["a", "b"]
    table.set_state("a", "unhealthy")
    assert pick(table) == ["b"]
    table.set_state("a", "draining")
    assert pick(table) == ["b"]
    table.set_state("a", "ready")
    assert pick(table) == ["a", "b"]
    table.set_state("unknown", "unhealthy")  # no error


def test_node_registered_not_ready_is_excluded(table):
    table.upsert(node("a", state="unhealthy"))
    assert pick(table) == []
    table.upsert(node("a", state="ready"))
    assert pick(table) == ["a"]


def test_slots_limit_concurrency(table):
    # dispatches that reserve nothing: only the count of executions matters
    table.upsert(node("a", slots=2))
    table.take("a", 0.0, 0)
    assert pick(table) == ["a"]
    table.take("a", 0.0, 0)
    assert pick(table) == []
    assert pick(table, cpu=0.0, mem=0.0) == []  # at its limit it fits nothing
    assert why(table)[1] is True  # busy, not absent
    table.give("a", 0.0, 0)
    assert pick(table) == ["a"]
    for _ in range(5):  # more ends than dispatches: the count stops at zero
        table.give("a", 0.0, 0)
    assert table.running["a"] == 0


def test_slots_zero_means_no_limit(table):
    table.upsert(node("a", slots=0))
    for _ in range(50):
        table.take("a", 0.0, 0)
    assert pick(table, cpu=0.01) == ["a"]


# ---------------------------------------------------------------- why_not


def test_why_not_no_ready_nodes(table):
    assert why(table) == ("no ready nodes", False)
    table.upsert(node("a", state="unhealthy"))
    assert why(table) == ("no ready nodes", False)


def test_why_not_no_runtime(table):
    table.upsert(node("a", runtimes=["wasm"], unavailable={"docker": "daemon not running"}))
    reason, transient = why(table, runtime="docker")
    assert not transient
    assert "docker" in reason and "daemon not running" in reason
    reason, transient = why(table, runtime="process")
    assert not transient
    assert "not offered" in reason


def test_why_not_labels_mismatch(table):
    table.upsert(node("a", labels={"zone": "eu"}))
    reason, transient = why(table, labels={"zone": "us"})
    assert not transient
    assert "labels" in reason


def test_why_not_too_large(table):
    table.upsert(node("a", cores=2.0, memory=1 * GiB))
    reason, transient = why(table, cpu=4.0)
    assert not transient
    assert "large enough" in reason
    reason, transient = why(table, mem=2 * GiB)
    assert not transient


def test_why_not_busy_is_transient(table):
    table.upsert(node("a", cores=2.0))
    table.take("a", 2.0, 0)
    assert pick(table, cpu=1.0) == []
    reason, transient = why(table, cpu=1.0)
    assert transient
    assert "busy" in reason
    table.give("a", 2.0, 0)


# ---------------------------------------------------------------- both kernels agree

IMPLS = {"py": spear.fast.py_scheduler, "live": spear.fast.scheduler_impl}
if spear.fast.compiled_scheduler is not None:
    IMPLS["compiled"] = spear.fast.compiled_scheduler

LABEL_KEYS = ("zone", "disk")
LABEL_VALUES = ("a", "b")
RUNTIMES = ("wasm", "process", "docker")

node_strategy = st.fixed_dictionaries({
    "cores": st.sampled_from([4.0, 0.0, 0.5, 1.0, 2.0, 16.0]) | st.floats(0.0, 64.0),
    "memory": st.sampled_from([8 * GiB, 0, 64 * MiB, 1 * GiB]) | st.integers(0, 16 * GiB),
    "slots": st.sampled_from([0, 0, 1, 2, 4]),
    "labels": st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES)),
    "runtimes": st.just({"process", "wasm"}) | st.sets(st.sampled_from(RUNTIMES)),
    "state": st.sampled_from(["ready"] * 6 + ["unhealthy", "draining"]),
    "load1": st.sampled_from([0.0, 0.5, 2.0]) | st.floats(0.0, 32.0),
    # executions dispatched there, each with what it reserves (cpu, memory)
    "dispatched": st.lists(st.tuples(
        st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0]) | st.floats(0.0, 64.0),
        st.sampled_from([0, 0, 0, 1 * GiB]) | st.integers(0, 16 * GiB)), max_size=5),
    "warm": st.booleans(),
    "penalty_at": st.none() | st.floats(0.0, 30.0),
    "removed": st.integers(0, 9),  # 0: the node is removed again (slot freed/reused)
})

request_strategy = st.fixed_dictionaries({
    "runtime": st.sampled_from(("process", "process", "wasm", "docker")),
    "labels": st.just({}) | st.dictionaries(st.sampled_from(LABEL_KEYS),
                                            st.sampled_from(LABEL_VALUES), max_size=2),
    "cpu": st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 4.0]) | st.floats(0.0, 32.0),
    "mem": st.sampled_from([0.0, 16 * MiB, 256 * MiB, 1 * GiB]) | st.floats(0.0, 8 * GiB),
    "k": st.integers(1, 8),
    "exclude": st.sets(st.integers(0, 60), max_size=3),
})


def build(specs) -> NodeTable:
    table = NodeTable()
    for i, s in enumerate(specs):
        nid = f"n{i}"
        table.upsert(node(nid, cores=s["cores"], memory=s["memory"], slots=s["slots"],
                          labels=s["labels"], runtimes=sorted(s["runtimes"]), state=s["state"],
                          load1=s["load1"]))
        for cpu, mem in s["dispatched"]:
            table.take(nid, cpu, float(mem))
        if s["warm"]:
            table.mark_warm(nid, "f")
        if s["penalty_at"] is not None:
            table.penalise(nid, s["penalty_at"])
        if s["removed"] == 0:
            table.remove(nid)
    table.decay_penalties(30.0)
    return table


#: clusters of 1..50 nodes, the size drawn uniformly (plain lists stay small)
clusters = st.integers(1, 50).flatmap(
    lambda n: st.lists(node_strategy, min_size=n, max_size=n))


def fits(table: NodeTable, nid: str, req) -> bool:
    slot = table.slot_of[nid]
    info = table.info[slot]
    return (table.node_at[slot] == nid and table.ready[slot] == 1 and info.state == "ready"
            and req["runtime"] in info.runtimes
            and all(info.labels.get(k) == v for k, v in req["labels"].items())
            and table.free_cpu[slot] >= req["cpu"] and table.free_mem[slot] >= req["mem"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=clusters, req=request_strategy)
def test_kernels_agree_and_choices_fit(specs, req):
    table = build(specs)
    exclude = {f"n{i}" for i in req["exclude"]}
    results = {}
    for name, impl in IMPLS.items():
        with mock.patch.object(scheduler_mod, "pick_nodes", impl.pick_nodes):
            results[name] = table.candidates(runtime=req["runtime"], labels=req["labels"],
                                             function="f", cpu=req["cpu"], mem=req["mem"],
                                             k=req["k"], exclude=exclude)
    first = results["py"]
    assert all(r == first for r in results.values()), results
    assert len(set(first)) == len(first)
    for nid in first:
        assert nid not in exclude
        assert fits(table, nid, req), nid
    fitting = [nid for nid in table.slot_of if nid not in exclude and fits(table, nid, req)]
    # every fitting node is a candidate up to k, and nothing else is
    assert len(first) == min(req["k"], len(fitting))
    if not first:
        reason, transient = table.why_not(runtime=req["runtime"], labels=req["labels"],
                                          cpu=req["cpu"], mem=req["mem"])
        assert reason
        if not exclude and not fitting and not transient:
            # not transient: no ready node could ever take it, whatever is freed
            assert not [
                nid for nid, slot in table.slot_of.items()
                if table.ready[slot] and req["runtime"] in table.info[slot].runtimes
                and all(table.info[slot].labels.get(k) == v for k, v in req["labels"].items())
                and table.cap_cpu[slot] >= req["cpu"] and table.cap_mem[slot] >= req["mem"]
            ]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=clusters, req=request_strategy)
def test_full_release_restores_capacity(specs, req):
    table = build(specs)
    for nid, slot in table.slot_of.items():
        for cpu, mem in specs[int(nid[1:])]["dispatched"]:  # every execution there ends
            table.give(nid, cpu, float(mem))
        assert table.running.get(nid, 0) == 0
        assert table.free_cpu[slot] == table.cap_cpu[slot]
        assert table.free_mem[slot] == table.cap_mem[slot]
    assert table.total_reserved() == (0.0, 0.0)
