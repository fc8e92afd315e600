"""Figures, floors, ratios and pass/fail of one run, and how they are formatted."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass
class Figure:
    """One row of the table (and of the JSON)."""

    section: str
    key: str
    figure: str
    value: float | None
    unit: str
    floor: float | None = None
    floor_key: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""
    check: tuple[str, float] | None = None

    @property
    def ratio(self) -> float | None:
        """The value over its floor (None without a floor)."""
        if self.value is None or not self.floor:
            return None
        return self.value / self.floor

    def as_json(self) -> dict:
        """The figure as written to the JSON file."""
        return {"section": self.section, "key": self.key, "figure": self.figure,
                "value": self.value, "unit": self.unit, "floor": self.floor,
                "floor_key": self.floor_key, "ratio": self.ratio, "target": self.target,
                "pass": self.passed, "note": self.note}


#: floor figures where lower is better (latencies); every other floor is a rate
_LOWER_IS_BETTER = (".p50", ".p99")


class Results:
    """Figures, raw samples and skip reasons of one run.

    Floors are collected as samples (several passes or trials) and the best
    one counts: the lowest latency, the highest rate. Ratios and pass/fail
    are resolved by :meth:`finalize` once every sample is in.
    """

    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.raw: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.floor_samples: dict[str, list[float]] = {}
        self.floor_notes: dict[str, str] = {}
        self.floor: dict[str, float] = {}

    def floor_sample(self, key: str, value: float, note: str = "") -> None:
        """One more sample of floor ``key`` (its note is kept if it is the best so far)."""
        self.floor_samples.setdefault(key, []).append(value)
        best = self.best_floor(key)
        if note and value == best:
            self.floor_notes[key] = note

    def best_floor(self, key: str) -> float | None:
        """The best sample of floor ``key``: the lowest latency or the highest rate."""
        xs = self.floor_samples.get(key)
        if not xs:
            return None
        return min(xs) if key.endswith(_LOWER_IS_BETTER) else max(xs)

    def add(self, section: str, key: str, figure: str, value: float | None, unit: str, *,
            floor_key: str = "", target: tuple[str, float] | None = None, note: str = "") -> Figure:
        """Record a figure; ``target`` is ``(kind, bound)`` with kind one of
        ``ratio<=``, ``ratio>=``, ``<``, ``<=``, ``>=``."""
        f = Figure(section, key, figure, value, unit, floor_key=floor_key, note=note, check=target)
        self.figures.append(f)
        return f

    def finalize(self) -> None:
        """Best floors, then every figure's ratio and pass/fail."""
        self.floor = {k: self.best_floor(k) for k in self.floor_samples}
        for f in self.figures:
            if f.floor_key:
                f.floor = self.floor.get(f.floor_key)
            if f.check is not None:
                f.target, f.passed = _check(f.check[0], f.check[1], f, f.unit)


def _check(kind: str, bound: float, f: Figure, unit: str) -> tuple[str, bool | None]:
    """The target's text and whether the figure meets it (None: cannot tell)."""
    if kind == "ratio<=":
        r = f.ratio
        return f"<= {bound:g}x floor", (None if r is None else r <= bound)
    if kind == "ratio>=":
        r = f.ratio
        return f">= {bound:g}x floor", (None if r is None else r >= bound)
    if f.value is None:
        return f"{kind} {fmt(bound, unit)}", None
    if kind == "<":
        return f"< {fmt(bound, unit)}", f.value < bound
    if kind == "<=":
        return f"<= {fmt(bound, unit)}", f.value <= bound
    if kind == ">=":
        return f">= {fmt(bound, unit)}", f.value >= bound
    raise ValueError(kind)


def fmt(v: float | None, unit: str) -> str:
    """A value with its unit, to a sensible precision."""
    if v is None:
        return "-"
    if unit == "/s":
        return f"{v:,.0f}/s"
    if unit == "x":
        return f"{v:,.1f}x"
    if unit == "%":
        return f"{v * 100:.1f}%"
    if unit == "MB":
        return f"{v:.1f} MB"
    if unit == "ns":
        return f"{v:,.0f} ns"
    if unit in ("ms", "us", "s"):
        shown = "µs" if unit == "us" else unit
        if v >= 100:
            return f"{v:,.0f} {shown}"
        if v >= 10:
            return f"{v:.1f} {shown}"
        return f"{v:.3g} {shown}" if v >= 1 else f"{v:.3f} {shown}"
    return f"{v:g} {unit}"


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def ms(xs: list[float]) -> dict:
    """p50/p99/mean/min of seconds, in ms."""
    return {"n": len(xs), "p50": pct(xs, 50) * 1e3, "p99": pct(xs, 99) * 1e3,
            "mean": statistics.fmean(xs) * 1e3, "min": min(xs) * 1e3}
