"""Tests of the scheduler and pool kernels, run on both twins.

Every behaviour test runs on the compiled module and on its pure-Python twin.
The compiled side fails (not skips) when the extension did not build, unless
SPEAR_NO_EXTENSIONS=1 explicitly asked for pure Python; hypothesis then checks
that the two twins agree on random clusters and random operation sequences.
"""

from __future__ import annotations

import importlib.machinery
import math
import os
import subprocess
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spear.fast as fast

NO_EXT = fast.NO_EXTENSIONS_REQUESTED
SKIP_REASON = "SPEAR_NO_EXTENSIONS=1 explicitly asked for the pure-Python twins"
BUILD_HINT = "run `python3 setup.py build_ext --inplace` (SPEAR_REQUIRE_EXTENSIONS=1 shows why)"


def _compiled(module, name):
    if NO_EXT:
        pytest.skip(SKIP_REASON)
    if module is None:
        pytest.fail(f"compiled spear._fast.{name} did not import; {BUILD_HINT}")
    return module


@pytest.fixture(scope="module", params=["compiled", "py"])
def sched(request):
    if request.param == "py":
        return fast.py_scheduler
    return _compiled(fast.compiled_scheduler, "scheduler")


@pytest.fixture(scope="module", params=["compiled", "py"])
def pool_mod(request):
    if request.param == "py":
        return fast.py_pool
    return _compiled(fast.compiled_pool, "pool")


@pytest.fixture(scope="module")
def both_schedulers():
    return _compiled(fast.compiled_scheduler, "scheduler"), fast.py_scheduler


@pytest.fixture(scope="module")
def both_pools():
    return _compiled(fast.compiled_pool, "pool"), fast.py_pool


# ---------------------------------------------------------------- selector


def _is_extension(module) -> bool:
    return module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_extensions_live_unless_disabled():
    if NO_EXT:
        assert fast.EXTENSIONS is False
        assert fast.compiled_scheduler is None and fast.compiled_pool is None
        assert fast.scheduler_impl is fast.py_scheduler
        assert fast.pool_impl is fast.py_pool
        assert fast.SlotPool is fast.py_pool.SlotPool
        assert fast.pick_node is fast.py_scheduler.pick_node
        return
    assert fast.compiled_scheduler is not None, f"scheduler extension missing; {BUILD_HINT}"
    assert fast.compiled_pool is not None, f"pool extension missing; {BUILD_HINT}"
    assert fast.EXTENSIONS is True
    assert _is_extension(fast.compiled_scheduler)
    assert _is_extension(fast.compiled_pool)
    assert fast.scheduler_impl is fast.compiled_scheduler
    assert fast.pool_impl is fast.compiled_pool
    assert fast.pick_node is fast.compiled_scheduler.pick_node
    assert fast.pick_nodes is fast.compiled_scheduler.pick_nodes
    assert fast.SlotPool is fast.compiled_pool.SlotPool


def _selector_in_subprocess(code: str, no_ext: bool) -> str:
    env = dict(os.environ)
    env.pop("SPEAR_NO_EXTENSIONS", None)
    if no_ext:
        env["SPEAR_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_selector_honours_no_extensions():
    code = ("import spear.fast as f; print(f.EXTENSIONS, f.scheduler_impl.__name__, "
            "f.pool_impl.__name__, f.compiled_scheduler, f.compiled_pool)")
    out = _selector_in_subprocess(code, no_ext=True)
    assert out == "False spear._fast.scheduler_py spear._fast.pool_py None None"


def test_selector_falls_back_when_import_fails():
    # A None entry in sys.modules makes the import raise ImportError.
    code = ("import sys; sys.modules['spear._fast.scheduler'] = None; "
            "import spear.fast as f; print(f.EXTENSIONS, f.scheduler_impl.__name__, "
            "f.compiled_scheduler)")
    out = _selector_in_subprocess(code, no_ext=False)
    assert out == "False spear._fast.scheduler_py None"


def test_twins_share_constants(both_schedulers):
    c, py = both_schedulers
    assert c.WEIGHTS == py.WEIGHTS
    assert c.EPS == py.EPS
    assert (c.BASELINE, c.FINISH) == (py.BASELINE, py.FINISH)


def test_pool_twins_share_state_codes(both_pools):
    c, py = both_pools
    assert (c.FREE, c.IDLE, c.BUSY) == (py.FREE, py.IDLE, py.BUSY)


# ---------------------------------------------------------------- scheduler

FIELDS = ("free_cpu", "free_mem", "cap_cpu", "cap_mem", "load", "eligible", "warm", "penalty")


def cluster(*nodes: dict) -> tuple:
    """Arrays for pick_node from per-node dicts; omitted figures get defaults."""
    default = {"free_cpu": 4.0, "free_mem": 4096.0, "cap_cpu": 8.0, "cap_mem": 8192.0,
               "load": 0.0, "eligible": 1, "warm": 0, "penalty": 0.0}
    rows = [{**default, **n} for n in nodes]
    return tuple(
        array("B" if f in ("eligible", "warm") else "d", [r[f] for r in rows]) for f in FIELDS
    )


def ref_score(c: tuple, i: int, need_cpu: float, need_mem: float) -> float | None:
    """The documented score, written out independently; None if not a candidate."""
    fc, fm, cc, cm, ld, el, wm, pen = (a[i] for a in c)
    if not el or not (fc >= need_cpu and fm >= need_mem):
        return None
    s = 0.4 * ((fc - need_cpu) / (cc if cc > 1e-9 else 1e-9))
    s = s + 0.4 * ((fm - need_mem) / (cm if cm > 1e-9 else 1e-9))
    s = s - 0.3 * ld
    if wm:
        s = s + 1.0
    s = s - pen
    return None if math.isnan(s) else s


def ref_finish_score(c: tuple, i: int, need_cpu: float, need_mem: float, duration: float,
                     cold: float, speed=None, slope: float = 1.0) -> float | None:
    """The documented finish-time score, written out independently."""
    fc, fm, cc, cm, ld, el, wm, pen = (a[i] for a in c)
    if not el or not (fc >= need_cpu and fm >= need_mem):
        return None
    sp = 1.0 if speed is None else speed[i]
    s = -(duration * sp * (1.0 + slope * ld))
    if not wm:
        s = s - cold
    s = s - pen
    return None if math.isnan(s) else s


def ref_order(c: tuple, need_cpu: float, need_mem: float, finish: tuple | None = None
              ) -> list[int]:
    """Candidates best first; ``finish``: (duration, cold[, speed, slope]) for the
    finish-time policy."""
    if finish is None:
        scored = [(ref_score(c, i, need_cpu, need_mem), i) for i in range(len(c[0]))]
    else:
        scored = [(ref_finish_score(c, i, need_cpu, need_mem, *finish), i)
                  for i in range(len(c[0]))]
    return [i for s, i in sorted((t for t in scored if t[0] is not None),
                                 key=lambda t: (-t[0], t[1]))]


def test_empty_cluster(sched):
    c = cluster()
    assert sched.pick_node(*c, 1.0, 1.0) == -1
    assert sched.pick_nodes(*c, 1.0, 1.0, 3) == []


def test_nothing_fits(sched):
    c = cluster({"free_cpu": 1.0}, {"free_mem": 100.0}, {"free_cpu": 0.0, "free_mem": 0.0})
    assert sched.pick_node(*c, 2.0, 512.0) == -1
    assert sched.pick_nodes(*c, 2.0, 512.0, 5) == []


def test_exact_fit_is_a_candidate(sched):
    c = cluster({"free_cpu": 1.0, "free_mem": 100.0}, {"free_cpu": 2.0, "free_mem": 512.0})
    assert sched.pick_node(*c, 2.0, 512.0) == 1


def test_prefers_more_headroom(sched):
    c = cluster({"free_cpu": 2.0}, {"free_cpu": 6.0}, {"free_cpu": 4.0})
    assert sched.pick_node(*c, 1.0, 128.0) == 1
    assert sched.pick_nodes(*c, 1.0, 128.0, 3) == [1, 2, 0]


def test_headroom_is_relative_to_capacity(sched):
    # 3 of 4 cores free beats 4 of 16 free.
    c = cluster({"free_cpu": 4.0, "cap_cpu": 16.0}, {"free_cpu": 3.0, "cap_cpu": 4.0})
    assert sched.pick_node(*c, 1.0, 128.0) == 1


def test_ineligible_node_never_chosen(sched):
    c = cluster({"free_cpu": 8.0, "eligible": 0}, {"free_cpu": 1.0})
    assert sched.pick_node(*c, 1.0, 128.0) == 1
    assert sched.pick_nodes(*c, 1.0, 128.0, 5) == [1]
    c = cluster({"eligible": 0}, {"eligible": 0})
    assert sched.pick_node(*c, 0.0, 0.0) == -1


def test_any_nonzero_byte_is_eligible(sched):
    c = cluster({"eligible": 0, "free_cpu": 8.0}, {"eligible": 255})
    assert sched.pick_node(*c, 1.0, 1.0) == 1


def test_warm_bonus_wins(sched):
    c = cluster({"free_cpu": 8.0, "free_mem": 8192.0}, {"free_cpu": 2.0, "free_mem": 1024.0, "warm": 1})
    assert sched.pick_node(*c, 1.0, 512.0) == 1


def test_load_counts_against(sched):
    c = cluster({"load": 0.9}, {"load": 0.1}, {"load": 0.5})
    assert sched.pick_nodes(*c, 1.0, 1.0, 3) == [1, 2, 0]


def test_penalty_demotes(sched):
    c = cluster({"free_cpu": 8.0, "penalty": 5.0}, {"free_cpu": 2.0})
    assert sched.pick_node(*c, 1.0, 1.0) == 1
    c = cluster({"warm": 1, "penalty": 2.0}, {})
    assert sched.pick_node(*c, 1.0, 1.0) == 1


def test_infinite_penalty_is_last_resort(sched):
    c = cluster({"penalty": math.inf})
    assert sched.pick_node(*c, 1.0, 1.0) == 0
    c = cluster({"penalty": math.inf}, {"free_cpu": 1.0, "load": 2.0})
    assert sched.pick_node(*c, 1.0, 1.0) == 1


def test_tie_breaks_to_lowest_index(sched):
    c = cluster({"free_cpu": 1.0}, {}, {}, {}, {"free_cpu": 1.0})
    assert sched.pick_node(*c, 1.0, 1.0) == 1
    assert sched.pick_nodes(*c, 1.0, 1.0, 10) == [1, 2, 3, 0, 4]
    assert sched.pick_nodes(*c, 1.0, 1.0, 2) == [1, 2]


def test_zero_capacity_does_not_divide_by_zero(sched):
    c = cluster({"cap_cpu": 0.0, "cap_mem": 0.0, "free_cpu": 0.0, "free_mem": 0.0})
    assert sched.pick_node(*c, 0.0, 0.0) == 0


def test_nan_figures_never_win(sched):
    c = cluster({"free_cpu": math.nan}, {"load": math.nan}, {"penalty": math.nan}, {"free_cpu": 1.0})
    assert sched.pick_node(*c, 1.0, 1.0) == 3
    assert sched.pick_nodes(*c, 1.0, 1.0, 4) == [3]
    assert sched.pick_node(*cluster({}), math.nan, 1.0) == -1


def test_accepts_other_buffers(sched):
    c = list(cluster({"free_cpu": 1.0}, {"free_cpu": 3.0}, {"free_cpu": 2.0, "eligible": 0}))
    c[5] = bytes(c[5])
    c[6] = bytearray(c[6])
    assert sched.pick_node(*c, 1.0, 1.0) == 1


def test_accepts_strided_and_typed_buffers(sched):
    c = list(cluster({"free_cpu": 1.0}, {"free_cpu": 3.0}, {"free_cpu": 2.0, "eligible": 0}))
    wide = array("d", [x for v in c[0] for x in (v, -1.0)])
    c[0] = memoryview(wide)[::2]  # every other double: not contiguous
    c[5] = array("B", c[5])
    c[6] = memoryview(bytearray(b"".join(bytes([v, 9]) for v in c[6])))[::2]
    assert sched.pick_node(*c, 1.0, 1.0) == 1
    assert sched.pick_nodes(*c, 1.0, 1.0, 3) == [1, 0]


@pytest.mark.parametrize("short", range(len(FIELDS)), ids=FIELDS)
def test_length_mismatch(sched, short):
    c = list(cluster({}, {}, {}))
    c[short] = c[short][:2]
    with pytest.raises(ValueError):
        sched.pick_node(*c, 1.0, 1.0)
    with pytest.raises(ValueError):
        sched.pick_nodes(*c, 1.0, 1.0, 2)


def test_pick_nodes_k_bounds(sched):
    c = cluster({}, {"free_cpu": 1.0})
    assert sched.pick_nodes(*c, 1.0, 1.0, 0) == []
    assert sched.pick_nodes(*c, 1.0, 1.0, 1) == [0]
    assert sched.pick_nodes(*c, 1.0, 1.0, 100) == [0, 1]
    with pytest.raises(ValueError):
        sched.pick_nodes(*c, 1.0, 1.0, -1)


def test_pick_nodes_matches_reference_order(sched):
    # 200 nodes with many equal scores; k on both sides of the insertion/sort switch.
    nodes = [{"free_cpu": float(i % 7), "free_mem": float(1024 * (i % 5)), "load": (i % 3) / 2,
              "warm": int(i % 11 == 0), "eligible": int(i % 13 != 0)} for i in range(200)]
    c = cluster(*nodes)
    want = ref_order(c, 1.0, 512.0)
    assert len(want) > 64
    for k in (1, 3, 32, 33, 64, len(want), 500):
        assert sched.pick_nodes(*c, 1.0, 512.0, k) == want[:k]
    assert sched.pick_node(*c, 1.0, 512.0) == want[0]


def test_scores_follow_documented_formula(sched):
    # Distinct nodes ordered by the reference score prove the formula, not just the winner.
    nodes = [{"free_cpu": 1.0 + i * 0.37 % 5, "free_mem": 512.0 + (i * 997) % 7000,
              "cap_cpu": (2.0, 4.0, 8.0)[i % 3], "cap_mem": 8192.0, "load": (i * 0.13) % 1.2,
              "warm": int(i % 4 == 0), "penalty": (i % 6) * 0.05} for i in range(50)]
    c = cluster(*nodes)
    assert sched.pick_nodes(*c, 0.5, 256.0, 50) == ref_order(c, 0.5, 256.0)


def test_finish_policy_prefers_idle_then_warm(sched):
    c = cluster({"load": 2.0, "warm": 1}, {"load": 0.0}, {"load": 0.0, "warm": 1})
    # 1 s runs, 0.5 s cold starts: the idle warm node, then the idle cold one
    assert sched.pick_nodes(*c, 0.5, 256.0, 3, sched.FINISH, 1.0, 0.5) == [2, 1, 0]
    # a long cold start: the busy warm node beats the idle cold one
    assert sched.pick_nodes(*c, 0.5, 256.0, 3, sched.FINISH, 1.0, 5.0) == [2, 0, 1]
    assert sched.pick_node(*c, 0.5, 256.0, sched.FINISH, 1.0, 5.0) == 2
    with pytest.raises(ValueError):
        sched.pick_nodes(*c, 0.5, 256.0, 3, 7, 1.0, 0.5)


def test_finish_policy_weighs_node_speed_and_load_slope(sched):
    c = cluster({"load": 0.0}, {"load": 0.5}, {"load": 1.0})
    slow_first = array("d", [2.0, 1.0, 1.0])
    # node 0 is idle but its type runs work twice as long: with the old fixed
    # slope 1 the half-loaded node wins, then node 0 ties the fully loaded one
    assert sched.pick_nodes(*c, 0.5, 256.0, 3, sched.FINISH, 1.0, 0.0, slow_first) == [1, 0, 2]
    # a learned slope of 0.25: load matters little, the slow type last
    assert sched.pick_nodes(*c, 0.5, 256.0, 3, sched.FINISH, 1.0, 0.0, slow_first, 0.25) == [
        1, 2, 0]
    # no speed column: every node the reference (the old score)
    assert sched.pick_nodes(*c, 0.5, 256.0, 3, sched.FINISH, 1.0, 0.0, None, 1.0) == [0, 1, 2]
    assert sched.pick_node(*c, 0.5, 256.0, sched.FINISH, 1.0, 0.0, slow_first, 0.25) == 1
    with pytest.raises(ValueError):  # a speed column of another length
        sched.pick_node(*c, 0.5, 256.0, sched.FINISH, 1.0, 0.0, array("d", [1.0]))


# ---------------------------------------------------------------- scheduler agreement

finite = st.floats(min_value=-4.0, max_value=64.0, allow_nan=False, allow_infinity=False)
# Few distinct values so that ties are common.
coarse = st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
figure = st.one_of(coarse, finite)
wild = st.one_of(figure, st.floats(allow_nan=True, allow_infinity=True))


def _cluster_strategy(value):
    node = st.tuples(value, value, value, value, value, st.integers(0, 1), st.integers(0, 1),
                     st.one_of(st.just(0.0), value))
    return st.lists(node, max_size=60).map(
        lambda rows: tuple(
            array("B" if f in ("eligible", "warm") else "d", [r[j] for r in rows])
            for j, f in enumerate(FIELDS)
        )
    )


@settings(max_examples=300, deadline=None)
@given(c=_cluster_strategy(figure), need_cpu=figure, need_mem=figure, k=st.integers(0, 70))
def test_twins_agree_on_random_clusters(both_schedulers, c, need_cpu, need_mem, k):
    comp, py = both_schedulers
    best = py.pick_node(*c, need_cpu, need_mem)
    assert comp.pick_node(*c, need_cpu, need_mem) == best
    top = py.pick_nodes(*c, need_cpu, need_mem, k)
    assert comp.pick_nodes(*c, need_cpu, need_mem, k) == top
    assert top == ref_order(c, need_cpu, need_mem)[:k]
    if k:
        assert top[:1] == ([best] if best >= 0 else [])


@settings(max_examples=200, deadline=None)
@given(c=_cluster_strategy(wild), need_cpu=wild, need_mem=wild, k=st.integers(0, 70))
def test_twins_agree_on_extreme_figures(both_schedulers, c, need_cpu, need_mem, k):
    comp, py = both_schedulers
    assert comp.pick_node(*c, need_cpu, need_mem) == py.pick_node(*c, need_cpu, need_mem)
    assert comp.pick_nodes(*c, need_cpu, need_mem, k) == py.pick_nodes(*c, need_cpu, need_mem, k)


@settings(max_examples=200, deadline=None)
@given(c=_cluster_strategy(figure), need_cpu=figure, need_mem=figure, k=st.integers(0, 70),
       duration=st.one_of(coarse, finite), cold=st.one_of(coarse, finite))
def test_twins_agree_on_finish_policy(both_schedulers, c, need_cpu, need_mem, k, duration,
                                      cold):
    comp, py = both_schedulers
    args = (need_cpu, need_mem, k, py.FINISH, duration, cold)
    top = py.pick_nodes(*c, *args)
    assert comp.pick_nodes(*c, *args) == top
    assert top == ref_order(c, need_cpu, need_mem, (duration, cold))[:k]
    best = py.pick_node(*c, need_cpu, need_mem, py.FINISH, duration, cold)
    assert comp.pick_node(*c, need_cpu, need_mem, py.FINISH, duration, cold) == best
    if k:
        assert top[:1] == ([best] if best >= 0 else [])


def _with_speed(value):
    """A cluster, and a speed column of its length."""
    return _cluster_strategy(value).flatmap(lambda c: st.tuples(
        st.just(c), st.lists(value, min_size=len(c[0]), max_size=len(c[0])).map(
            lambda xs: array("d", xs))))


@settings(max_examples=200, deadline=None)
@given(cs=_with_speed(figure), need_cpu=figure, need_mem=figure, k=st.integers(0, 70),
       duration=figure, cold=figure, slope=figure)
def test_twins_agree_on_finish_policy_with_speeds(both_schedulers, cs, need_cpu, need_mem, k,
                                                  duration, cold, slope):
    comp, py = both_schedulers
    c, speed = cs
    args = (need_cpu, need_mem, k, py.FINISH, duration, cold, speed, slope)
    top = py.pick_nodes(*c, *args)
    assert comp.pick_nodes(*c, *args) == top
    assert top == ref_order(c, need_cpu, need_mem, (duration, cold, speed, slope))[:k]
    one = (need_cpu, need_mem, py.FINISH, duration, cold, speed, slope)
    assert comp.pick_node(*c, *one) == py.pick_node(*c, *one)


@settings(max_examples=100, deadline=None)
@given(cs=_with_speed(wild), need_cpu=wild, need_mem=wild, k=st.integers(0, 70),
       duration=wild, cold=wild, slope=wild)
def test_twins_agree_on_finish_policy_with_extreme_speeds(both_schedulers, cs, need_cpu,
                                                          need_mem, k, duration, cold, slope):
    comp, py = both_schedulers
    c, speed = cs
    args = (need_cpu, need_mem, k, py.FINISH, duration, cold, speed, slope)
    assert comp.pick_nodes(*c, *args) == py.pick_nodes(*c, *args)


@settings(max_examples=100, deadline=None)
@given(c=_cluster_strategy(wild), need_cpu=wild, need_mem=wild, k=st.integers(0, 70),
       duration=wild, cold=wild)
def test_twins_agree_on_finish_policy_extremes(both_schedulers, c, need_cpu, need_mem, k,
                                               duration, cold):
    comp, py = both_schedulers
    args = (need_cpu, need_mem, k, py.FINISH, duration, cold)
    assert comp.pick_nodes(*c, *args) == py.pick_nodes(*c, *args)


# ---------------------------------------------------------------- pool


def test_fresh_pool(pool_mod):
    p = pool_mod.SlotPool(3)
    assert (p.capacity, p.size, p.idle, p.busy) == (3, 0, 0, 0)
    assert (p.hits, p.misses, p.evictions) == (0, 0, 0)
    assert [p.state(s) for s in range(3)] == [pool_mod.FREE] * 3
    assert p.idle_slots() == []


def test_bad_capacity(pool_mod):
    with pytest.raises(ValueError):
        pool_mod.SlotPool(-1)


def test_zero_capacity(pool_mod):
    p = pool_mod.SlotPool(0)
    assert p.reserve() == -1
    assert p.acquire() == -1
    assert p.evict(10.0, 0.0, 0) == []
    with pytest.raises(ValueError):
        p.release(0, 1.0)


def test_acquire_empty_is_a_miss(pool_mod):
    p = pool_mod.SlotPool(2)
    assert p.acquire() == -1
    assert p.acquire() == -1
    assert (p.hits, p.misses) == (0, 2)


def test_reserve_until_full(pool_mod):
    p = pool_mod.SlotPool(3)
    assert [p.reserve() for _ in range(3)] == [0, 1, 2]
    assert p.reserve() == -1
    assert (p.size, p.busy, p.idle) == (3, 3, 0)
    assert [p.state(s) for s in range(3)] == [pool_mod.BUSY] * 3
    # Reserving is not an acquire: no hit, no miss.
    assert (p.hits, p.misses) == (0, 0)


def test_full_pool_stays_full_when_idle(pool_mod):
    p = pool_mod.SlotPool(2)
    a, _ = p.reserve(), p.reserve()
    p.release(a, 1.0)
    assert p.reserve() == -1
    assert p.size == 2


def test_acquire_is_lifo(pool_mod):
    p = pool_mod.SlotPool(4)
    slots = [p.reserve() for _ in range(3)]
    for t, s in enumerate(slots):
        p.release(s, float(t))
    assert p.idle_slots() == [2, 1, 0]
    assert [p.acquire() for _ in range(3)] == [2, 1, 0]
    assert p.acquire() == -1
    assert (p.hits, p.misses, p.busy, p.idle) == (3, 1, 3, 0)


def test_hot_slot_is_reused(pool_mod):
    p = pool_mod.SlotPool(4)
    for s in [p.reserve() for _ in range(3)]:
        p.release(s, 0.0)
    for t in range(10):
        s = p.acquire()
        assert s == 2
        p.release(s, float(t))
    assert p.hits == 10
    assert p.last_used(2) == 9.0
    assert p.last_used(0) == 0.0


def test_release_errors(pool_mod):
    p = pool_mod.SlotPool(3)
    s = p.reserve()
    with pytest.raises(ValueError):
        p.release(1, 1.0)  # free
    p.release(s, 1.0)
    with pytest.raises(ValueError):
        p.release(s, 2.0)  # already idle
    for bad in (-1, 3, 1000):
        with pytest.raises(ValueError):
            p.release(bad, 1.0)
    assert (p.idle, p.busy) == (1, 0)
    assert p.last_used(s) == 1.0


def test_discard(pool_mod):
    p = pool_mod.SlotPool(4)
    a, b, c = p.reserve(), p.reserve(), p.reserve()
    p.release(a, 1.0)
    p.release(b, 2.0)
    p.release(c, 3.0)
    p.discard(b)  # idle, in the middle of the idle order
    assert p.idle_slots() == [c, a]
    assert p.state(b) == pool_mod.FREE
    assert p.acquire() == c
    p.discard(c)  # busy
    assert (p.size, p.idle, p.busy) == (1, 1, 0)
    assert p.acquire() == a
    assert p.acquire() == -1
    with pytest.raises(ValueError):
        p.discard(b)
    for bad in (-1, 4):
        with pytest.raises(ValueError):
            p.discard(bad)
    # Most recently freed slot comes back first.
    assert p.reserve() == c
    assert p.reserve() == b
    assert p.reserve() == 3
    assert p.reserve() == -1


def test_discard_head_and_tail_of_idle_list(pool_mod):
    p = pool_mod.SlotPool(3)
    for s in [p.reserve() for _ in range(3)]:
        p.release(s, float(s))
    p.discard(2)  # head
    p.discard(0)  # tail
    assert p.idle_slots() == [1]
    assert p.evict(100.0, 0.0, 0) == [1]
    assert p.idle_slots() == []
    assert p.size == 0


def test_evict_ttl_and_order(pool_mod):
    p = pool_mod.SlotPool(5)
    slots = [p.reserve() for _ in range(5)]
    for s, t in zip(slots, (1.0, 2.0, 3.0, 4.0, 5.0)):
        p.release(s, t)
    # At now=8 the ages are 7, 6, 5, 4, 3; ttl 5 is inclusive, so three expire.
    assert p.evict(8.0, 5.0, 0) == [0, 1, 2]
    assert p.evictions == 3
    assert p.idle_slots() == [4, 3]
    assert [p.state(s) for s in range(5)] == [pool_mod.FREE] * 3 + [pool_mod.IDLE] * 2
    assert p.evict(8.0, 5.0, 0) == []
    assert p.evictions == 3
    # Evicted slots are free again, most recently evicted first.
    assert p.reserve() == 2


def test_evict_never_below_min_keep(pool_mod):
    p = pool_mod.SlotPool(6)
    slots = [p.reserve() for _ in range(5)]
    for s in slots[:4]:
        p.release(s, float(s))
    # 5 live (4 idle + 1 busy), keep 3: only the two oldest go.
    assert p.evict(100.0, 1.0, 3) == [0, 1]
    assert (p.size, p.idle, p.busy, p.evictions) == (3, 2, 1, 2)
    assert p.evict(100.0, 1.0, 3) == []
    assert p.evict(100.0, 1.0, 10) == []
    # Busy instances count towards min_keep but are never evicted.
    assert p.evict(100.0, 0.0, 0) == [2, 3]
    assert (p.size, p.busy) == (1, 1)
    with pytest.raises(ValueError):
        p.evict(100.0, 0.0, -1)


def test_evict_skips_fresh_but_takes_older_ones(pool_mod):
    # Non-monotonic release times: eviction still takes only expired slots,
    # in release order.
    p = pool_mod.SlotPool(3)
    a, b, c = p.reserve(), p.reserve(), p.reserve()
    p.release(a, 9.0)
    p.release(b, 1.0)
    p.release(c, 2.0)
    assert p.evict(10.0, 5.0, 0) == [b, c]
    assert p.idle_slots() == [a]


def test_counters_are_read_only(pool_mod):
    p = pool_mod.SlotPool(1)
    for name in ("capacity", "size", "idle", "busy", "hits", "misses", "evictions"):
        with pytest.raises(AttributeError):
            setattr(p, name, 5)


def test_state_and_last_used_bounds(pool_mod):
    p = pool_mod.SlotPool(2)
    for bad in (-1, 2):
        with pytest.raises(ValueError):
            p.state(bad)
        with pytest.raises(ValueError):
            p.last_used(bad)


# ---------------------------------------------------------------- pool agreement

_slot = st.integers(-1, 8)
_time = st.floats(0.0, 100.0, allow_nan=False)
_op = st.one_of(
    st.tuples(st.just("acquire")),
    st.tuples(st.just("reserve")),
    st.tuples(st.just("release"), _slot, _time),
    st.tuples(st.just("discard"), _slot),
    st.tuples(st.just("evict"), _time, st.floats(0.0, 50.0, allow_nan=False), st.integers(0, 9)),
    st.tuples(st.just("state"), _slot),
)


def _run(pool, ops) -> list:
    trace = []
    for name, *args in ops:
        try:
            out = getattr(pool, name)(*args)
        except ValueError:
            out = "ValueError"
        trace.append((out, _snapshot(pool)))
        _check_invariants(pool)
    return trace


def _snapshot(pool) -> tuple:
    return (pool.capacity, pool.size, pool.idle, pool.busy, pool.hits, pool.misses,
            pool.evictions, tuple(pool.idle_slots()),
            tuple(pool.state(s) for s in range(pool.capacity)),
            tuple(pool.last_used(s) for s in range(pool.capacity)))


def _check_invariants(pool) -> None:
    states = [pool.state(s) for s in range(pool.capacity)]
    assert pool.idle == states.count(1) == len(pool.idle_slots())
    assert pool.busy == states.count(2)
    assert pool.size == pool.idle + pool.busy <= pool.capacity
    assert all(states[s] == 1 for s in pool.idle_slots())


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(0, 8), ops=st.lists(_op, max_size=80))
def test_pool_twins_agree_on_random_ops(both_pools, capacity, ops):
    comp, py = both_pools
    assert _run(comp.SlotPool(capacity), ops) == _run(py.SlotPool(capacity), ops)


@settings(max_examples=100, deadline=None)
@given(capacity=st.integers(1, 8), ops=st.lists(_op, max_size=80))
def test_pool_invariants(pool_mod, capacity, ops):
    _run(pool_mod.SlotPool(capacity), ops)
