"""Learned cost models: per function, how long an execution runs and how much memory it peaks at.

Online and cheap. Per function, a weighted least-squares fit of
``log(duration)`` on ``log(1 + input_size)`` kept as five exponentially
decayed sums (older observations weigh less, so a function that changes is
followed), and a high quantile of peak memory over a small window of recent
observations. :meth:`CostModels.observe` runs when a result arrives (off the
dispatch path) and is O(1) (the window is of fixed size);
:meth:`CostModels.predict` runs at dispatch: a dict lookup and a few float
operations.

A model is only trusted when it has been right: every observation is first
compared with what the model would have predicted, and while the median
error over the last :data:`HEALTH_WINDOW` predictions is larger than a factor
:data:`HEALTH_FACTOR` (duration either way, memory when under-predicted)
:meth:`predict` returns None and the caller falls back to the request.
``fallbacks`` counts why predictions were not given (``history``: too few
observations; ``unhealthy``: the model has been wrong).
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple

#: weight kept by older observations at each new one (about the last 50 count)
DECAY = 0.98
#: recent errors looked at to judge a model's health
HEALTH_WINDOW = 20
#: a model whose median error is more than this factor is not used
HEALTH_FACTOR = 3.0
#: recent peak-memory observations the quantile is taken over
MEMORY_WINDOW = 32
#: the quantile of peak memory predicted (before the margin)
MEMORY_QUANTILE = 0.95
#: cold starts weigh this much in their running mean (exponentially weighted)
COLD_ALPHA = 0.2

_LOG_FACTOR = math.log(HEALTH_FACTOR)


class Prediction(NamedTuple):
    """What one execution of a function is expected to cost."""

    duration_s: float
    #: peak memory in bytes, the safety margin included
    memory: int


class _Model:
    """One function's fit, memory window and health."""

    __slots__ = ("n", "sw", "sx", "sy", "sxx", "sxy", "a", "b", "mem", "mem_q", "errors",
                 "bad", "cold")

    def __init__(self) -> None:
        self.n = 0
        self.sw = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.a = self.b = 0.0  # log(duration) = a + b * log1p(size)
        self.mem: collections.deque[int] = collections.deque(maxlen=MEMORY_WINDOW)
        self.mem_q = 0.0
        self.errors: collections.deque[float] = collections.deque(maxlen=HEALTH_WINDOW)
        self.bad = False
        self.cold = 0.0

    def duration(self, x: float) -> float:
        return math.exp(self.a + self.b * x)

    def fit(self, x: float, y: float) -> None:
        """Add (x, y) to the decayed sums and solve the 2x2 normal equations."""
        d = DECAY
        self.sw = self.sw * d + 1.0
        self.sx = self.sx * d + x
        self.sy = self.sy * d + y
        self.sxx = self.sxx * d + x * x
        self.sxy = self.sxy * d + x * y
        det = self.sw * self.sxx - self.sx * self.sx
        if det > 1e-9 * self.sw * self.sw:
            self.b = (self.sw * self.sxy - self.sx * self.sy) / det
            self.a = (self.sy - self.b * self.sx) / self.sw
        else:  # every input the same size so far: the (weighted) mean
            self.b = 0.0
            self.a = self.sy / self.sw

    def remember_memory(self, peak: int) -> None:
        self.mem.append(peak)
        ordered = sorted(self.mem)
        self.mem_q = float(ordered[min(len(ordered) - 1, int(MEMORY_QUANTILE * len(ordered)))])


class CostModels:
    """Every function's cost model; see the module docstring.

    ``min_samples``: observations before a function's model predicts;
    ``margin``: factor on the predicted memory; ``max_functions``: models kept
    (the least recently observed is dropped first).
    """

    def __init__(self, *, min_samples: int = 5, margin: float = 1.25,
                 max_functions: int = 10000) -> None:
        if min_samples < 1 or margin < 1.0 or max_functions < 1:
            raise ValueError("min_samples and max_functions must be >= 1, margin >= 1")
        self.min_samples = min_samples
        self.margin = margin
        self.max_functions = max_functions
        self._models: collections.OrderedDict[str, _Model] = collections.OrderedDict()
        #: predictions not given, by reason (``history``, ``unhealthy``)
        self.fallbacks: collections.Counter = collections.Counter()

    def __len__(self) -> int:
        return len(self._models)

    def observe(self, function: str, input_size: int, duration_s: float,
                peak_memory: int) -> None:
        """Learn from one finished execution (its run time and peak memory)."""
        m = self._models.get(function)
        if m is None:
            m = self._models[function] = _Model()
            if len(self._models) > self.max_functions:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(function)
        x = math.log1p(max(0, input_size))
        y = math.log(max(duration_s, 1e-6))
        if m.n >= self.min_samples:  # judge what it would have said before learning this
            err = abs(y - (m.a + m.b * x))
            if peak_memory > 0 and m.mem_q > 0:
                err = max(err, math.log(max(1.0, peak_memory / (m.mem_q * self.margin))))
            m.errors.append(err)
            m.bad = (len(m.errors) >= (HEALTH_WINDOW + 1) // 2
                     and sorted(m.errors)[len(m.errors) // 2] > _LOG_FACTOR)
        m.n += 1
        m.fit(x, y)
        if peak_memory > 0:
            m.remember_memory(peak_memory)

    def observe_cold_start(self, function: str, seconds: float) -> None:
        """Learn one cold start of ``function`` (its running mean, for the finish policy)."""
        m = self._models.get(function)
        if m is not None:
            m.cold = seconds if m.cold == 0.0 else m.cold + COLD_ALPHA * (seconds - m.cold)

    def cold_start(self, function: str) -> float:
        """The mean cold start of ``function`` seen so far, seconds (0: none seen)."""
        m = self._models.get(function)
        return m.cold if m is not None else 0.0

    def predict(self, function: str, input_size: int) -> Prediction | None:
        """Expected cost of one execution; None when the model is not to be trusted."""
        m = self._models.get(function)
        if m is None or m.n < self.min_samples:
            self.fallbacks["history"] += 1
            return None
        if m.bad:
            self.fallbacks["unhealthy"] += 1
            return None
        x = math.log1p(input_size) if input_size > 0 else 0.0
        return Prediction(m.duration(x), int(m.mem_q * self.margin))

    def health(self, function: str) -> float:
        """The median factor by which ``function``'s recent predictions were off
        (1.0: exact, or nothing judged yet); above :data:`HEALTH_FACTOR` it is not used."""
        m = self._models.get(function)
        if m is None or not m.errors:
            return 1.0
        return math.exp(sorted(m.errors)[len(m.errors) // 2])

    def healthy(self, function: str) -> bool:
        """False while ``function``'s model has been wrong by more than the allowed factor."""
        m = self._models.get(function)
        return m is not None and not m.bad

    def forget(self, function: str) -> None:
        """Drop ``function``'s model (it was removed or redeployed)."""
        self._models.pop(function, None)
