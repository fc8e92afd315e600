"""Learned cost models (spear.sms.learned) on fixed data, and the placement policies."""

from __future__ import annotations

import math

import pytest

from spear.sms.learned import HEALTH_WINDOW, CostModels, Prediction

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
