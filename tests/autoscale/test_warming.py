"""The warming policies on fixed data (no clock: times are plain numbers)."""

import pytest

from spear import errors
from spear.autoscale.warming import FixedKeepAlive, HybridHistogram, Windows, make
from spear.config import load_config


def _feed(policy, idles, start=1000.0, run=1.0):
    """Calls of ``run`` seconds separated by the given idle times; returns the last end."""
    t = start
    policy.arrive(t)
    t += run
    policy.leave(t)
    for idle in idles:
        t += idle
        policy.arrive(t)
        t += run
        policy.leave(t)
    return t


def test_fixed_keeps_one_for_the_keep_alive():
    p = FixedKeepAlive(600)
    assert p.wanted(0) == 0  # before the first call: nothing
    end = _feed(p, [])
    assert p.windows() == Windows(0.0, 600.0)
    assert p.wanted(end) == 1 and p.wanted(end + 599) == 1
    assert p.wanted(end + 600) == 0
    assert p.next_change(end) == end + 600 and p.next_change(end + 600) is None


def test_none_keeps_nothing():
    p = make("none", 600)
    end = _feed(p, [30, 30])
    assert p.wanted(end) == 0


def test_busy_function_wants_no_idle_instance():
    p = FixedKeepAlive(600)
    p.arrive(0)
    assert p.wanted(1) == 0 and p.next_change(1) is None


def test_learned_falls_back_with_too_few_samples():
    p = HybridHistogram(600, min_samples=10)
    _feed(p, [1800] * 9)
    assert p.windows() == Windows(0.0, 600.0, learned=False)


def test_learned_falls_back_when_most_idle_times_are_out_of_range():
    p = HybridHistogram(600, range_s=3600, min_samples=5)
    _feed(p, [60] * 5 + [7200] * 6)
    assert not p.representative()
    assert p.windows().keep_alive == 600.0


def test_learned_periodic_function_prewarms_before_the_next_call():
    # called every 30 minutes: unload after each call, warm again just before the next
    p = HybridHistogram(600)
    end = _feed(p, [1800.0] * 20)
    w = p.windows()
    assert w.learned
    assert w.prewarm == pytest.approx(30 * 60 * 0.9)
    assert w.prewarm < 1800 < w.prewarm + w.keep_alive
    assert w.keep_alive == pytest.approx((31 * 60 - w.prewarm) * 1.1)
    assert p.wanted(end + 60) == 0  # nothing warm right after the call
    assert p.wanted(end + 1799) == 1  # warm when the next call comes
    assert p.next_change(end) == pytest.approx(end + w.prewarm)


def test_learned_short_idle_times_keep_alive_less_than_fixed():
    # calls every minute or two: no pre-warm window, a keep-alive of a few minutes
    p = HybridHistogram(600)
    _feed(p, [20, 50, 70, 90, 110] * 4)
    w = p.windows()
    assert w.learned and w.prewarm == 0.0
    assert w.keep_alive == pytest.approx(2 * 60 * 1.1)


def test_concurrent_calls_record_no_idle_time():
    p = HybridHistogram(600)
    p.arrive(0)
    p.arrive(1)  # the function was busy: not an idle time
    p.leave(2)
    p.leave(3)
    assert p.in_range == 0 and p.last_end == 3
    p.arrive(63)
    assert p.bins[1] == 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        make("sometimes", 600)
    with pytest.raises(ValueError):
        HybridHistogram(600, head=50, tail=10)


def test_eviction_ages_each_instance_without_a_prewarm_window():
    p = FixedKeepAlive(600)
    _feed(p, [10])
    assert p.eviction(5000) == (600.0, 0)


def test_eviction_follows_the_window_with_one():
    p = HybridHistogram(600)
    end = _feed(p, [1800.0] * 20)
    assert p.eviction(end + 1) == (0.0, 0)  # unload right after the call
    assert p.eviction(end + 1790) == (0.0, 1)  # keep the pre-warmed one
    p.arrive(end + 1800)
    assert p.eviction(end + 1801) == (p.windows().keep_alive, 0)  # busy: age each


def test_the_spearlet_config_key(tmp_path):
    assert load_config(env={}).spearlet.warming == "fixed"
    assert load_config(env={"SPEAR_SPEARLET_WARMING": "learned"}).spearlet.warming == "learned"
    toml = tmp_path / "spear.toml"
    toml.write_text('[spearlet]\nwarming = "sometimes"\n')
    with pytest.raises(errors.ConfigError):
        load_config(toml, env={})
