"""Learned cost models: per function, how long an execution runs and how much memory it peaks at.

Online and cheap. Per function, a weighted least-squares fit of
``log(duration)`` on ``log(1 + input_size)`` kept as five exponentially
decayed sums (older observations weigh less, so a function that changes is
followed), and a high quantile of peak memory over a small window of recent
observations. :meth:`CostModels.observe` runs when a result arrives (off the
dispatch path) and is O(1) (the window is of fixed size);
:meth:`CostModels.predict` runs at dispatch: a dict lookup and a few float
operations.

Where an execution ran is a feature too. Per node type (what the SMS knows
of a node: its type label, else its shape) a *speed factor*: the decayed
mean residual of ``log(duration)`` against the function's prediction,
pooled over every function (a new function benefits at once) and centred
on the mean residual of all results (so the factors and the functions' fits
cannot drift against each other). And one *load slope*: how the run time
grows with the node's load per core at dispatch, ``duration x (1 + slope x
load)``, a decayed least-squares fit of the residual ratio on the load.
The functions' fits learn on durations with both effects taken out, so a
prediction is for a reference node at no load; the scheduler multiplies in
the node's factor and load per node.

Hardware does not slow every function alike (slow memory hurts a
memory-bound function, slow cores a CPU-bound one), so once a (function,
node type) pair has :data:`PAIR_MIN_SAMPLES` results it gets its own factor:
the decayed mean residual of that pair, centred on the function's own mean
residual over every type, learned in O(1) per result. Below that the pooled
type factor is used. At most :data:`MAX_PAIRS` pairs are kept (the least
recently observed is dropped first); :meth:`CostModels.function_factors`
publishes a function's pair factors with a version that moves only when one
of them moved by more than :data:`PUBLISH_STEP`, so the scheduler rebuilds
that function's speed column only then.

A model is only trusted when it has been right: every observation is first
compared with what the model would have predicted, and while the median
error over the last :data:`HEALTH_WINDOW` predictions is larger than a factor
:data:`HEALTH_FACTOR` (duration either way, memory when under-predicted)
:meth:`predict` returns None and the caller falls back to the request.
A node type's factor, and a pair's, is judged the same way (on results of
healthy functions) and set aside while it is wrong (a type's: 1.0; a pair's:
the pooled type factor). ``fallbacks`` counts why predictions were not given
(``history``: too few observations; ``unhealthy``: the model has been wrong)
and factors found wrong (``node_type``, ``function_node_type``).
"""

from __future__ import annotations

import collections
import itertools
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

#: results of a node type (and of load) before its factor (the slope) is used
TYPE_MIN_SAMPLES = 10
LOAD_MIN_SAMPLES = 30
LOAD_MIN_VARIANCE = 0.01
#: node types given a factor (more: the reference; a cluster has a few)
MAX_TYPES = 1024
#: a node type's speed factor stays within these bounds
FACTOR_BOUNDS = (0.125, 8.0)
#: the load slope stays within these bounds; before it is learned, DEFAULT_SLOPE
SLOPE_BOUNDS = (0.0, 4.0)
DEFAULT_SLOPE = 1.0
#: results of a (function, node type) pair before its own factor is used
PAIR_MIN_SAMPLES = 5
#: (function, node type) pairs given a factor (the least recently observed dropped)
MAX_PAIRS = 65536
#: the published factors change (the scheduler's column is refreshed) when one
#: moves by more than this (log scale: about 5%)
PUBLISH_STEP = 0.05

_LOG_FACTOR = math.log(HEALTH_FACTOR)
_LOG_BOUNDS = (math.log(FACTOR_BOUNDS[0]), math.log(FACTOR_BOUNDS[1]))


class Prediction(NamedTuple):
    """What one execution of a function is expected to cost."""

    duration_s: float
    #: peak memory in bytes, the safety margin included
    memory: int


class _Model:
    """One function's fit, memory window and health."""

    __slots__ = ("n", "sw", "sx", "sy", "sxx", "sxy", "a", "b", "mem", "mem_q", "errors",
                 "bad", "cold", "pairs", "gw", "gr", "published", "pversion")

    def __init__(self) -> None:
        self.n = 0
        self.sw = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.a = self.b = 0.0  # log(duration) = a + b * log1p(size)
        self.mem: collections.deque[int] = collections.deque(maxlen=MEMORY_WINDOW)
        self.mem_q = 0.0
        self.errors: collections.deque[float] = collections.deque(maxlen=HEALTH_WINDOW)
        self.bad = False
        self.cold = 0.0
        #: node type -> this function's factor there (:class:`_NodeType` sums)
        self.pairs: dict[str, _NodeType] = {}
        self.gw = self.gr = 0.0  # decayed mean residual over every type (the pairs' centre)
        self.published: dict[str, float] = {}
        self.pversion = 0

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


def _wrong(errors: collections.deque, error: float) -> bool:
    """Note one ``error`` (log) in ``errors``; whether the median of the recent ones
    is over :data:`HEALTH_FACTOR` (judged once half the window is full)."""
    errors.append(error)
    return (len(errors) >= (HEALTH_WINDOW + 1) // 2
            and sorted(errors)[len(errors) // 2] > _LOG_FACTOR)


class _NodeType:
    """One node type's (or one function's on a type) decayed mean residual and health."""

    __slots__ = ("n", "sw", "sr", "errors", "bad")

    def __init__(self) -> None:
        self.n = 0
        self.sw = self.sr = 0.0
        self.errors: collections.deque[float] = collections.deque(maxlen=HEALTH_WINDOW)
        self.bad = False

    def judge(self, error: float) -> bool:
        """Note an error of the factor learned so far; True when it has just turned
        wrong (it is set aside while wrong, and trusted again once it is right)."""
        bad = _wrong(self.errors, error)
        turned, self.bad = bad and not self.bad, bad
        return turned

    def add(self, r: float) -> None:
        """Learn one residual ``r`` (log)."""
        self.n += 1
        self.sw = self.sw * DECAY + 1.0
        self.sr = self.sr * DECAY + r


class _Load:
    """The decayed least-squares fit of the residual ratio q on the load per core."""

    __slots__ = ("n", "sw", "sl", "sq", "sll", "slq", "slope", "fitted")

    def __init__(self) -> None:
        self.n = 0
        self.sw = self.sl = self.sq = self.sll = self.slq = 0.0
        self.slope = 0.0
        self.fitted = False  # the loads seen spread enough for a slope

    def fit(self, load: float, q: float) -> None:
        d = DECAY
        self.n += 1
        self.sw = self.sw * d + 1.0
        self.sl = self.sl * d + load
        self.sq = self.sq * d + q
        self.sll = self.sll * d + load * load
        self.slq = self.slq * d + load * q
        det = self.sw * self.sll - self.sl * self.sl
        # fit only once the loads seen differ (variance above LOAD_MIN_VARIANCE)
        if det > LOAD_MIN_VARIANCE * self.sw * self.sw:
            self.fitted = True
            b = (self.sw * self.slq - self.sl * self.sq) / det
            a = (self.sq - b * self.sl) / self.sw
            # relative growth (q = a (1 + slope load)): the noise's mean cancels
            if a > 0:
                self.slope = min(max(b / a, SLOPE_BOUNDS[0]), SLOPE_BOUNDS[1])


class CostModels:
    """Every function's cost model; see the module docstring.

    ``min_samples``: observations before a function's model predicts;
    ``margin``: factor on the predicted memory; ``max_functions``: models kept,
    ``max_pairs``: (function, node type) factors kept (for both, the least
    recently observed is dropped first).
    """

    def __init__(self, *, min_samples: int = 5, margin: float = 1.25,
                 max_functions: int = 10000, max_pairs: int = MAX_PAIRS) -> None:
        if min_samples < 1 or margin < 1.0 or max_functions < 1 or max_pairs < 1:
            raise ValueError("min_samples, max_functions and max_pairs must be >= 1, "
                             "margin >= 1")
        self.min_samples = min_samples
        self.margin = margin
        self.max_functions = max_functions
        self.max_pairs = max_pairs
        self._models: collections.OrderedDict[str, _Model] = collections.OrderedDict()
        #: (function, node type) pairs with a factor, least recently observed first
        self._pairs: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._pair_versions = itertools.count(1)
        #: predictions not given, by reason (``history``, ``unhealthy``); factors
        #: found wrong (``node_type``, ``function_node_type``)
        self.fallbacks: collections.Counter = collections.Counter()
        self._types: dict[str, _NodeType] = {}
        self._gw = self._gr = 0.0  # decayed mean residual of every result (the centre)
        self._load = _Load()
        self._published: dict[str, float] = {}
        #: bumped whenever :meth:`speed_factors` changes (the scheduler refreshes its column)
        self.version = 0

    def __len__(self) -> int:
        return len(self._models)

    def observe(self, function: str, input_size: int, duration_s: float,
                peak_memory: int, node_type: str = "", load: float = 0.0) -> None:
        """Learn from one finished execution: its run time and peak memory, and
        (when known) the type of the node it ran on and that node's load per
        core when it was dispatched."""
        m = self._models.get(function)
        if m is None:
            m = self._models[function] = _Model()
            if len(self._models) > self.max_functions:
                self._drop_pairs(*self._models.popitem(last=False))
        else:
            self._models.move_to_end(function)
        x = math.log1p(max(0, input_size))
        y = math.log(max(duration_s, 1e-6))
        load = max(0.0, load)
        t = self._types.get(node_type) if node_type else None
        if node_type and t is None and len(self._types) < MAX_TYPES:
            t = self._types[node_type] = _NodeType()
        lt = math.log1p(self._load.slope * load)
        own = m.a + m.b * x  # the function's reference prediction (log)
        pair = m.pairs.get(node_type) if node_type else None
        s = self._log_speed(t, m, pair)
        if m.n >= self.min_samples:  # judge what it would have said before learning this
            err = abs(y - (own + s + lt))
            if peak_memory > 0 and m.mem_q > 0:
                err = max(err, math.log(max(1.0, peak_memory / (m.mem_q * self.margin))))
            m.bad = _wrong(m.errors, err)
            if t is not None and not m.bad:
                self._learn_type(node_type, t, y - own - lt)
            if node_type and not m.bad:
                self._learn_pair(function, m, node_type, pair, y - own - lt)
            if not m.bad:
                self._load.fit(load, math.exp(y - own - s))
        m.n += 1
        m.fit(x, y - s - lt)
        if peak_memory > 0:
            m.remember_memory(peak_memory)

    def _learn_type(self, name: str, t: _NodeType, r: float) -> None:
        """A residual ``r`` (log) of a result on type ``t``: judge the factor learned
        so far (used or set aside: it is trusted again once it is right again),
        then learn."""
        if t.n >= TYPE_MIN_SAMPLES and t.judge(abs(r - self._learned(t))):
            self.fallbacks["node_type"] += 1
        t.add(r)
        self._gw = self._gw * DECAY + 1.0
        self._gr = self._gr * DECAY + r
        self._publish(name, t)

    def _learned(self, t: _NodeType) -> float:
        """The log speed factor learned for ``t`` (centred, bounded)."""
        s = t.sr / t.sw - self._gr / self._gw if t.sw > 0.0 and self._gw > 0.0 else 0.0
        return min(max(s, _LOG_BOUNDS[0]), _LOG_BOUNDS[1])

    def _log_factor(self, t: _NodeType | None) -> float:
        """The log speed factor of type ``t`` as used (0: unknown, too new or wrong)."""
        if t is None or t.n < TYPE_MIN_SAMPLES or t.bad:
            return 0.0
        return self._learned(t)

    def _learn_pair(self, function: str, m: _Model, name: str, p: _NodeType | None,
                    r: float) -> None:
        """A residual ``r`` (log) of ``function`` on type ``name``: judge the pair's
        factor (set aside while wrong), learn it, and publish it if it moved."""
        key = (function, name)
        if p is None:
            p = m.pairs[name] = _NodeType()
            self._pairs[key] = None
            if len(self._pairs) > self.max_pairs:
                old_fn, old_type = self._pairs.popitem(last=False)[0]
                old = self._models.get(old_fn)
                if old is not None:
                    old.pairs.pop(old_type, None)
                    if old.published.pop(old_type, None) is not None:
                        old.pversion = next(self._pair_versions)
        else:
            self._pairs.move_to_end(key)
        if p.n >= PAIR_MIN_SAMPLES and p.judge(abs(r - self._pair_learned(m, p))):
            self.fallbacks["function_node_type"] += 1
        p.add(r)
        m.gw = m.gw * DECAY + 1.0
        m.gr = m.gr * DECAY + r
        old_f = m.published.get(name)
        if p.n < PAIR_MIN_SAMPLES or p.bad:
            if old_f is not None:  # the column falls back to the pooled factor
                del m.published[name]
                m.pversion = next(self._pair_versions)
            return
        f = math.exp(self._pair_learned(m, p))
        if old_f is None or abs(math.log(f / old_f)) > PUBLISH_STEP:
            m.published[name] = f
            m.pversion = next(self._pair_versions)

    def _pair_learned(self, m: _Model, p: _NodeType) -> float:
        """The log factor learned for one of ``m``'s pairs (centred on ``m``, bounded)."""
        s = p.sr / p.sw - m.gr / m.gw if p.sw > 0.0 and m.gw > 0.0 else 0.0
        return min(max(s, _LOG_BOUNDS[0]), _LOG_BOUNDS[1])

    def _log_speed(self, t: _NodeType | None, m: _Model | None, p: _NodeType | None) -> float:
        """The log factor used for a function ``m`` on type ``t``: its pair's ``p``
        when that has enough history and is trusted, else the pooled one."""
        if m is not None and p is not None and p.n >= PAIR_MIN_SAMPLES and not p.bad:
            return self._pair_learned(m, p)
        return self._log_factor(t)

    def _drop_pairs(self, function: str, m: _Model) -> None:
        for name in m.pairs:
            self._pairs.pop((function, name), None)

    def _publish(self, name: str, t: _NodeType) -> None:
        f = math.exp(self._log_factor(t))
        old = self._published.get(name)
        if old is None or abs(math.log(f / old)) > PUBLISH_STEP:
            self._published[name] = f
            self.version += 1

    def speed_factor(self, node_type: str) -> float:
        """How much longer than the reference an execution runs on ``node_type``
        (1.0: unknown, too little history, or set aside as wrong)."""
        return math.exp(self._log_factor(self._types.get(node_type)))

    def factor(self, function: str, node_type: str) -> float:
        """How much longer than the reference ``function`` runs on ``node_type``:
        its own factor there once learned and trusted, else the pooled one."""
        m = self._models.get(function)
        pair = m.pairs.get(node_type) if m is not None else None
        return math.exp(self._log_speed(self._types.get(node_type), m, pair))

    def function_factors(self, function: str) -> tuple[int, dict[str, float]] | None:
        """``function``'s own factors per node type as last published, and their
        version (unique over every function; it moves only when a factor moved
        by more than :data:`PUBLISH_STEP`); None when it has none. The dict is
        the model's own: read it, do not keep or change it."""
        m = self._models.get(function)
        if m is None or not m.published:
            return None
        return m.pversion, m.published

    def speed_factors(self) -> dict[str, float]:
        """Every node type's factor as last published (changes bump :attr:`version`)."""
        return dict(self._published)

    @property
    def load_slope(self) -> float:
        """How run time grows with the node's load per core: ``x (1 + slope x load)``
        (:data:`DEFAULT_SLOPE` until enough results at different loads were seen)."""
        ld = self._load
        return ld.slope if ld.n >= LOAD_MIN_SAMPLES and ld.fitted else DEFAULT_SLOPE

    def expected(self, function: str, input_size: int, node_type: str = "",
                 load: float = 0.0) -> float | None:
        """Expected run time of ``function`` on a node of ``node_type`` at ``load``
        (what the finish policy computes per node); None without a trusted model."""
        p = self.predict(function, input_size)
        if p is None:
            return None
        return p.duration_s * self.factor(function, node_type) * (1.0 + self.load_slope * load)

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
        m = self._models.pop(function, None)
        if m is not None:
            self._drop_pairs(function, m)
