"""Learned cost models (spear.sms.learned) on fixed data, and the placement policies."""

from __future__ import annotations

import math
import os

import pytest

from spear.sms.learned import (DEFAULT_SLOPE, HEALTH_WINDOW, LOAD_MIN_SAMPLES,
                               PAIR_MIN_SAMPLES, TYPE_MIN_SAMPLES, CostModels, Prediction)

MiB = 1 << 20


def test_no_prediction_before_min_samples():
    m = CostModels(min_samples=5)
    for _ in range(4):
        m.observe("f", 100, 0.5, 10 * MiB)
    assert m.predict("f", 100) is None
    assert m.fallbacks["history"] == 1
    m.observe("f", 100, 0.5, 10 * MiB)
    p = m.predict("f", 100)
    assert isinstance(p, Prediction)
    assert p.duration_s == pytest.approx(0.5)
    assert p.memory == int(10 * MiB * 1.25)


def test_duration_follows_input_size_power_law():
    m = CostModels(min_samples=3)
    # duration = 0.001 * (1 + size): a slope of 1 in log-log
    for size in (10, 100, 1000, 10_000, 100_000) * 4:
        m.observe("f", size, 0.001 * (1 + size), 4 * MiB)
    for size in (50, 5000, 1_000_000):
        assert m.predict("f", size).duration_s == pytest.approx(0.001 * (1 + size), rel=1e-6)


def test_memory_is_a_high_quantile_with_margin():
    m = CostModels(min_samples=1, margin=1.5)
    for i in range(1, 21):
        m.observe("f", 0, 0.1, i * MiB)
    p = m.predict("f", 0)
    assert p.memory == int(20 * MiB * 1.5)
    assert m.predict("g", 0) is None


def test_wrong_model_falls_back_and_recovers():
    m = CostModels(min_samples=5)
    for _ in range(10):
        m.observe("f", 0, 1.0, MiB)
    assert m.predict("f", 0) is not None and m.healthy("f")
    # the function changes: 10x slower, erratic (alternating) so the fit keeps being wrong
    for i in range(HEALTH_WINDOW):
        m.observe("f", 0, 10.0 if i % 2 else 0.1, MiB)
    assert not m.healthy("f")
    assert m.health("f") > 3.0
    assert m.predict("f", 0) is None
    assert m.fallbacks["unhealthy"] == 1
    for _ in range(3 * HEALTH_WINDOW):  # steady again: the model follows and is trusted
        m.observe("f", 0, 10.0, MiB)
    assert m.healthy("f")
    assert m.predict("f", 0).duration_s == pytest.approx(10.0, rel=0.5)


def test_memory_under_prediction_counts_as_error():
    m = CostModels(min_samples=5)
    for _ in range(10):
        m.observe("f", 0, 1.0, MiB)
    m.observe("f", 0, 1.0, 40 * MiB)  # one larger peak: the high quantile takes it at once
    assert m.health("f") == 1.0  # (one error is not a median)
    assert m.predict("f", 0).memory == int(40 * MiB * 1.25)


def test_forget_and_max_functions():
    m = CostModels(min_samples=1, max_functions=2)
    for name in ("a", "b", "c"):
        m.observe(name, 0, 1.0, MiB)
    assert len(m) == 2 and m.predict("a", 0) is None and m.predict("c", 0) is not None
    m.forget("c")
    assert m.predict("c", 0) is None


def test_cold_start_mean():
    m = CostModels()
    m.observe("f", 0, 1.0, MiB)
    assert m.cold_start("f") == 0.0
    m.observe_cold_start("f", 2.0)
    assert m.cold_start("f") == 2.0
    m.observe_cold_start("f", 4.0)
    assert m.cold_start("f") == pytest.approx(2.4)


def test_bad_arguments():
    with pytest.raises(ValueError):
        CostModels(margin=0.5)
    m = CostModels(min_samples=1)
    m.observe("f", -5, 0.0, 0)  # nonsense figures are clamped, not fatal
    assert math.isfinite(m.predict("f", 0).duration_s)


# ---------------------------------------------------------------- node types and load


def _two_types(m: CostModels, n: int = 40, function: str = "f", base: float = 1.0) -> None:
    """``function`` runs ``base`` s on "fast" nodes and 1.6 x that on "slow" ones."""
    for i in range(n):
        slow = i % 2 == 1
        m.observe(function, 0, base * (1.6 if slow else 1.0), MiB, "slow" if slow else "fast")


def test_a_function_on_two_node_types_is_predicted_per_type():
    m = CostModels()
    _two_types(m)
    assert m.speed_factor("slow") / m.speed_factor("fast") == pytest.approx(1.6, rel=0.02)
    assert m.expected("f", 0, "fast") == pytest.approx(1.0, rel=0.02)
    assert m.expected("f", 0, "slow") == pytest.approx(1.6, rel=0.02)
    assert m.speed_factor("unknown") == 1.0  # a type never seen: the reference
    assert m.speed_factors() and m.version > 0


def test_a_type_factor_needs_history():
    m = CostModels()
    for _ in range(TYPE_MIN_SAMPLES - 1):
        m.observe("f", 0, 1.0, MiB, "fast")
    for _ in range(TYPE_MIN_SAMPLES + 10):
        m.observe("f", 0, 2.0, MiB, "slow")
    assert m.speed_factor("fast") == 1.0  # judged only after its first results
    assert m.speed_factor("slow") > 1.0


def test_a_new_function_inherits_the_node_type_factors():
    m = CostModels()
    _two_types(m)
    for _ in range(5):  # g has only ever run on slow nodes
        m.observe("g", 0, 3.2, MiB, "slow")
    assert m.expected("g", 0, "slow") == pytest.approx(3.2, rel=0.03)
    assert m.expected("g", 0, "fast") == pytest.approx(2.0, rel=0.03)


def test_the_load_slope_is_learned():
    m = CostModels()
    assert m.load_slope == DEFAULT_SLOPE  # nothing seen: the fixed duration x (1 + load)
    for i in range(LOAD_MIN_SAMPLES + 20):
        load = (i % 5) * 0.5  # 0 .. 2 per core
        m.observe("f", 0, 2.0 * (1 + 0.25 * load), MiB, "t", load)
    assert m.load_slope == pytest.approx(0.25, rel=0.05)
    assert m.expected("f", 0, "t", 2.0) == pytest.approx(3.0, rel=0.05)
    assert m.expected("f", 0, "t", 0.0) == pytest.approx(2.0, rel=0.05)
    same = CostModels()
    for _ in range(2 * LOAD_MIN_SAMPLES):  # every load the same: no slope to learn
        same.observe("f", 0, 1.0, MiB, "t", 0.5)
    assert same.load_slope == DEFAULT_SLOPE


def test_a_wrong_node_type_factor_is_set_aside_and_counted():
    m = CostModels()
    for i in range(60):  # three types, the same speed
        m.observe("f", 0, 1.0, MiB, ("a", "b", "c")[i % 3])
    assert m.speed_factor("b") == pytest.approx(1.0)
    # type b turns erratic (10x either way): f's own model stays right on a and c
    for i in range(3 * HEALTH_WINDOW):
        k = i % 3
        m.observe("f", 0, (10.0 if i % 2 else 0.1) if k == 1 else 1.0, MiB, "abc"[k])
    assert m.healthy("f")
    assert m.fallbacks["node_type"] == 1
    assert m.speed_factor("b") == 1.0 and m.speed_factors()["b"] == 1.0
    for i in range(15 * HEALTH_WINDOW):  # b settles (2x slower): trusted again
        m.observe("f", 0, 2.0 if i % 3 == 1 else 1.0, MiB, "abc"[i % 3])
    assert m.speed_factor("b") / m.speed_factor("a") == pytest.approx(2.0, rel=0.1)


def _opposite(m: CostModels, rounds: int) -> None:
    """f runs 2x longer on "mem" boxes than on "cpu" boxes; g the other way round."""
    for _ in range(rounds):
        m.observe("f", 0, 1.0, MiB, "cpu")
        m.observe("f", 0, 2.0, MiB, "mem")
        m.observe("g", 0, 2.0, MiB, "cpu")
        m.observe("g", 0, 1.0, MiB, "mem")


def test_functions_that_rank_node_types_oppositely_get_opposite_predictions():
    m = CostModels()
    _opposite(m, 40)
    # pooled over both functions the two types look alike
    assert m.speed_factor("cpu") == pytest.approx(m.speed_factor("mem"), rel=0.05)
    assert m.factor("f", "mem") / m.factor("f", "cpu") == pytest.approx(2.0, rel=0.05)
    assert m.factor("g", "cpu") / m.factor("g", "mem") == pytest.approx(2.0, rel=0.05)
    assert m.expected("f", 0, "cpu") == pytest.approx(1.0, rel=0.05)
    assert m.expected("f", 0, "mem") == pytest.approx(2.0, rel=0.05)
    assert m.expected("g", 0, "cpu") == pytest.approx(2.0, rel=0.05)
    assert m.expected("g", 0, "mem") == pytest.approx(1.0, rel=0.05)
    version, own = m.function_factors("f")
    assert own["mem"] / own["cpu"] == pytest.approx(2.0, rel=0.1)
    assert m.function_factors("f")[0] == version  # unchanged: the same version
    assert m.function_factors("nobody") is None


def test_below_its_history_a_pair_uses_the_pooled_factor():
    m = CostModels(min_samples=5)
    _two_types(m)
    for _ in range(5 + PAIR_MIN_SAMPLES - 1):  # g: 5 to fit, then one short of a pair factor
        m.observe("g", 0, 1.0, MiB, "fast")
    assert m.factor("g", "fast") == m.speed_factor("fast")
    assert m.function_factors("g") is None
    m.observe("g", 0, 1.0, MiB, "fast")
    assert m.function_factors("g") is not None
    assert m.factor("g", "slow") == m.speed_factor("slow")  # no history there: pooled


def test_the_pairs_are_capped_least_recently_observed_first():
    m = CostModels(min_samples=1, max_pairs=3)
    for kind in ("a", "b", "c", "d"):
        for _ in range(2 + PAIR_MIN_SAMPLES):
            m.observe("f", 0, 1.0, MiB, kind)
    assert len(m._pairs) == 3
    assert set(m.function_factors("f")[1]) == {"b", "c", "d"}  # a was dropped
    m.forget("f")
    assert len(m._pairs) == 0


def test_a_wrong_pair_factor_is_set_aside_and_counted():
    m = CostModels()
    for i in range(60):  # f and g on three types, every pair the same speed
        for fn in ("f", "g"):
            m.observe(fn, 0, 1.0, MiB, "abc"[i % 3])
    assert m.factor("f", "b") == pytest.approx(1.0, rel=0.01)
    # f on b turns erratic (10x either way); f stays right on a and c, g everywhere
    for i in range(6 * HEALTH_WINDOW):
        kind = "abc"[i % 3]
        m.observe("f", 0, (10.0 if i % 2 else 0.1) if kind == "b" else 1.0, MiB, kind)
        m.observe("g", 0, 1.0, MiB, kind)
    assert m.healthy("f")
    assert m.fallbacks["function_node_type"] == 1
    assert "b" not in m.function_factors("f")[1]  # the column falls back to the pooled
    assert m.factor("f", "b") == m.speed_factor("b")


def test_a_function_speed_column_is_cached_and_rebuilt_when_it_moved():
    from spear.sms.scheduler import NodeTable

    table = NodeTable()
    for nid, mem in (("n1", 1 << 30), ("n2", 2 << 30), ("n3", 1 << 30)):
        table.upsert(P.NodeInfo(node_id=nid, state="ready", runtimes=["process"],
                                capacity=Capacity(cores=2.0, memory=mem)))
    table.set_speeds({"2c/2048MiB": 1.5}, 1)
    assert table.function_speed("f", None) is table.speed
    col = table.function_speed("f", (7, {"2c/1024MiB": 3.0}))
    assert list(col) == [3.0, 1.5, 3.0]
    assert table.function_speed("f", (7, {"2c/1024MiB": 3.0})) is col  # cached
    assert list(table.function_speed("f", (8, {"2c/1024MiB": 2.0}))) == [2.0, 1.5, 2.0]
    table.upsert(P.NodeInfo(node_id="n4", state="ready", runtimes=["process"],
                            capacity=Capacity(cores=2.0, memory=1 << 30)))
    assert list(table.function_speed("f", (8, {"2c/1024MiB": 2.0}))) == [2.0, 1.5, 2.0, 2.0]
    table.set_speeds({"2c/2048MiB": 1.25}, 2)
    assert list(table.function_speed("f", (8, {"2c/1024MiB": 2.0}))) == [2.0, 1.25, 2.0, 2.0]


# ---------------------------------------------------------------- policies in the SMS core

from spear import protocol as P  # noqa: E402
from spear.protocol import Capacity  # noqa: E402

from .test_core import Harness, only  # noqa: E402


def _finish(h: Harness, d: P.Dispatch, ident: bytes, *, run: float, peak: int,
            cold: float = 0.0) -> None:
    h.send(P.Result(id=d.id, execution=P.ExecutionInfo(
        execution_id=d.execution_id, function=d.function, status="succeeded",
        timings=P.Timings(run=run, cold_start=cold), cold=cold > 0,
        usage=P.ExecUsage(peak_memory=peak))), ident=ident)


def _train(h: Harness, n: int, *, run: float, peak: int, cold: float = 0.0) -> None:
    for _ in range(n):
        (d,) = only(h.invoke(), P.Dispatch)
        _finish(h, d.msg, d.ident, run=run, peak=peak, cold=cold)


def _policy_harness(placement: str, memory_mb: int = 512, nodes: int = 1) -> Harness:
    h = Harness(placement=placement)
    for i in range(1, nodes + 1):
        h.register(f"n{i}", capacity=Capacity(cores=4.0, memory=1 << 30))
    h.deploy("f", limits=P.Limits(memory_mb=memory_mb))
    return h


@pytest.mark.parametrize("policy", ["finish", "pack"])
def test_results_feed_the_models_and_redeploy_forgets(policy):
    h = _policy_harness(policy)
    _train(h, 5, run=0.2, peak=3 * MiB)
    p = h.core.tasks.models.predict("f", 2)
    assert p.duration_s == pytest.approx(0.2) and p.memory == int(3 * MiB * 1.25)
    h.deploy("f", limits=P.Limits(memory_mb=256))
    assert h.core.tasks.models.predict("f", 2) is None


def test_the_baseline_learns_nothing():
    # nothing reads the models under the baseline: learning would only cost each result
    h = _policy_harness("baseline")
    _train(h, 5, run=0.2, peak=3 * MiB)
    assert not h.core.tasks.models.fallbacks  # never asked either
    assert h.core.tasks.models.predict("f", 2) is None


def test_baseline_reserves_the_request():
    h = _policy_harness("baseline")
    _train(h, 5, run=0.2, peak=3 * MiB)
    h.invoke()
    assert h.core.table.reserved["n1"][1] == 512 * MiB


def test_pack_reserves_the_prediction_and_never_more_than_the_request():
    h = _policy_harness("pack")
    h.invoke()  # no history yet: the request
    assert h.core.tasks.execs[next(reversed(h.core.tasks.execs))].reserved[1] == 512 * MiB
    h = _policy_harness("pack")
    _train(h, 5, run=0.2, peak=8 * MiB)
    h.invoke()
    assert h.core.table.reserved["n1"][1] == int(8 * MiB * 1.25)
    h = _policy_harness("pack", memory_mb=4)
    _train(h, 5, run=0.2, peak=8 * MiB)  # it peaks above its request: the request caps it
    h.invoke()
    assert h.core.table.reserved["n1"][1] == 4 * MiB


def test_pack_fits_more_executions_on_a_node():
    base = _policy_harness("baseline", memory_mb=256)
    pack = _policy_harness("pack", memory_mb=256)
    for h in (base, pack):
        _train(h, 5, run=0.2, peak=8 * MiB)
        for _ in range(10):
            h.invoke()
    assert len(base.core.tasks.by_node["n1"]) == 4  # 1 GiB / 256 MiB
    assert len(pack.core.tasks.by_node["n1"]) == 10


def test_finish_prefers_the_node_that_finishes_first():
    h = _policy_harness("finish", nodes=2)
    _train(h, 5, run=1.0, peak=MiB, cold=5.0)  # everything ran on one node: warm there
    warm = next(n for n in ("n1", "n2") if "f" in h.core.table.functions[h.core.table.slot_of[n]])
    # a 5 s cold start elsewhere outweighs waiting behind a running one
    (d,) = only(h.invoke(), P.Dispatch)
    (d2,) = only(h.invoke(), P.Dispatch)
    assert d.ident.decode() == warm and d2.ident.decode() == warm


def test_finish_learns_node_types_from_results_and_prefers_the_faster():
    """Two node shapes (so two types); f runs 1.6x longer on the big one.

    Results carry only run times; the SMS remembers where each ran and the
    load there, learns the big type's factor, writes it into the scheduler's
    column, and then sends f to the small node (both are warm by then).
    """
    h = Harness(placement="finish")
    h.register("small", capacity=Capacity(cores=2.0, memory=1 << 30))
    h.register("big", capacity=Capacity(cores=2.0, memory=2 << 30))
    h.deploy("f", limits=P.Limits(memory_mb=256, cpus=1.0))
    for _ in range(8):  # four at a time: both nodes get work
        ds = [d for _ in range(4) for d in only(h.invoke(), P.Dispatch)]
        assert {d.ident for d in ds} == {b"small", b"big"}
        for d in ds:
            _finish(h, d.msg, d.ident, run=1.6 if d.ident == b"big" else 1.0, peak=MiB)
    table, models = h.core.table, h.core.tasks.models
    big, small = table.type_of[table.slot_of["big"]], table.type_of[table.slot_of["small"]]
    assert big == "2c/2048MiB" and small == "2c/1024MiB"
    # 32 results: near the truth, still converging
    assert models.speed_factor(big) / models.speed_factor(small) == pytest.approx(1.6, rel=0.1)
    assert table.speed[table.slot_of["big"]] == pytest.approx(models.speed_factor(big), rel=0.06)
    assert table.speed[table.slot_of["big"]] > table.speed[table.slot_of["small"]]
    for _ in range(3):
        (d,) = only(h.invoke(), P.Dispatch)
        assert d.ident == b"small"
        _finish(h, d.msg, d.ident, run=1.0, peak=MiB)


def test_a_wrong_model_never_fails_an_execution():
    """The model says 1 MiB; the function really peaks at its whole 256 MiB request.

    "pack" overcommits the SMS's bookkeeping on the strength of it (ten run
    at once where four fit by request), but what the node runs is the
    function as deployed (its limit stays the request), so every execution
    succeeds; the bookkeeping returns to zero and the model, having seen the
    real peaks, predicts them (capped by the request) from then on.
    """
    h = _policy_harness("pack", memory_mb=256)
    _train(h, 5, run=0.2, peak=MiB)
    dispatched = [d for _ in range(10) for d in only(h.invoke(), P.Dispatch)]
    assert len(dispatched) == 10 and h.core.tasks.queued == 0
    for d in dispatched:
        assert h.core.fns.functions[d.msg.function].spec.limits.memory_mb == 256
        _finish(h, d.msg, d.ident, run=0.2, peak=256 * MiB)
    statuses = {h.core.tasks.execs[d.msg.execution_id].info.status for d in dispatched}
    assert statuses == {"succeeded"}
    assert h.core.tasks.counts["failed"] == 0
    assert h.core.table.reserved["n1"] == [0.0, 0.0]
    assert h.core.tasks.models.predict("f", 2).memory >= 256 * MiB
    h.invoke()
    assert h.core.table.reserved["n1"][1] == 256 * MiB  # the request again


# functions run as an unprivileged user: a system interpreter it can reach
PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"needs {PYTHON}")
def test_a_wrong_model_fails_no_execution_on_a_real_node(tmp_path):
    """End to end: "pack" learns a small peak, then the function allocates 96 MiB.

    The node still runs it under its 256 MiB limit (RLIMIT_AS), so it succeeds.
    """
    from spear import Client
    from spear.cluster import Cluster

    cfg = tmp_path / "spear.toml"
    cfg.write_text('[sms]\nplacement = "pack"\n'
                   '[runtimes.docker]\nbase_url = "unix:///nonexistent/docker.sock"\n')
    code = "import sys; b = bytearray(int(sys.stdin.read()) << 20); print(len(b) >> 20)"
    with Cluster(tmp_path / "cluster", spearlets=1, config=str(cfg), heartbeat_interval=0.2,
                 heartbeat_timeout=1.0) as c:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=30) as cl:
            cl.deploy(P.FunctionSpec(name="grow", runtime="process",
                                     command=[PYTHON, "-c", code],
                                     limits=P.Limits(memory_mb=256)))
            for _ in range(6):
                r = cl.invoke("grow", b"1", timeout=30)
                assert r.ok, r.info
                # so the model predicts (and "pack" reserves) far less than what follows
                assert 0 < r.info.usage.peak_memory * 1.25 < 96 * MiB
            r = cl.invoke("grow", b"96", timeout=30)
            assert r.ok, r.info
            assert r.output.strip() == b"96"
            assert r.info.usage.peak_memory > 96 * MiB


def test_finish_sends_each_function_to_the_type_it_runs_faster_on():
    """f is slow on the big box, g on the small one; both warm on both.

    Pooled, the two types look alike; per function the SMS learns each pair's
    factor and sends f to the small node and g to the big one.
    """
    h = Harness(placement="finish")
    h.register("small", capacity=Capacity(cores=2.0, memory=1 << 30))
    h.register("big", capacity=Capacity(cores=2.0, memory=2 << 30))
    slow = {"f": b"big", "g": b"small"}
    for fn in ("f", "g"):
        h.deploy(fn, limits=P.Limits(memory_mb=256, cpus=1.0))

    def invoke(fn):
        return only(h.send(P.Invoke(id=h.next_id(), function=fn, mode="async"),
                           payload=b"in"), P.Dispatch)

    for _ in range(12):  # two at a time per function: both nodes get work
        ds = [d for fn in ("f", "g") for _ in range(2) for d in invoke(fn)]
        for d in ds:
            _finish(h, d.msg, d.ident, run=2.0 if d.ident == slow[d.msg.function] else 1.0,
                    peak=MiB)
    models = h.core.tasks.models
    assert models.function_factors("f") is not None and models.function_factors("g") is not None
    for fn, fast in (("f", b"small"), ("g", b"big")):
        for _ in range(2):
            (d,) = invoke(fn)
            assert d.ident == fast
            _finish(h, d.msg, d.ident, run=1.0, peak=MiB)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import spear.fast as fast  # noqa: E402

_KINDS = ("a", "b", "c", "d")


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("node"), st.integers(0, 11), st.sampled_from(_KINDS)),
    st.tuples(st.just("pooled"), st.dictionaries(st.sampled_from(_KINDS),
                                                 st.floats(0.125, 8.0))),
    st.tuples(st.just("own"), st.dictionaries(st.sampled_from(_KINDS),
                                              st.floats(0.125, 8.0)))), max_size=30))
def test_a_function_column_is_always_its_factors_over_the_pooled_ones(steps):
    """Whatever joins, changes type or moves in between, the cached column is the
    function's factor where it has one, else the pooled one; and the compiled
    kernel and its twin pick the same nodes with it."""
    from spear.sms.scheduler import FINISH, NodeTable

    table = NodeTable()
    pooled: dict[str, float] = {}
    own: dict[str, float] = {}
    version = 0
    for step in steps + [("own", {"a": 2.0})]:
        if step[0] == "node":
            table.upsert(P.NodeInfo(node_id=f"n{step[1]}", state="ready", runtimes=["process"],
                                    labels={"type": step[2]},
                                    capacity=Capacity(cores=4.0, memory=1 << 30)))
        elif step[0] == "pooled":
            pooled = step[1]
            version += 1
            table.set_speeds(pooled, version)
        else:
            own = step[1]
            version += 1
        col = table.function_speed("f", (version, own) if own else None)
        want = [own.get(t, pooled.get(t, 1.0)) for t in table.type_of]
        assert list(col) == want
    if fast.compiled_scheduler is not None and len(table):
        args = (table.free_cpu, table.free_mem, table.cap_cpu, table.cap_mem, table.load,
                table.ready, bytearray(len(table.ready)), table.penalty, 1.0, 1 << 20, 3,
                FINISH, 1.0, 0.5, col, 1.0)
        assert (fast.compiled_scheduler.pick_nodes(*args)
                == fast.py_scheduler.pick_nodes(*args))
