"""The work a placement simulation replays: :class:`Job` lists with per-call
run time and peak memory, and per-function memory requests.

Generated traces (fixed seeds; names in :data:`TRACES`):

* ``skewed`` — Zipf popularity over 60 functions, Poisson arrivals;
* ``bursty`` — the same background plus fan-outs of a few functions;
* ``mixed`` — fewer, longer and bigger functions next to many small ones;
* ``padded`` — the skewed mix with generous requests (2, 4 or 8 GiB) of
  which a function really uses 5..30%: memory requests, not cores, fill the
  nodes (the case packing by predicted memory is for);
* ``sized`` — the skewed mix where each call carries an input (per function
  a median of 1 KiB..256 KiB, per call lognormal around it, sigma 1.5,
  capped at 4 MiB) and runs ``(size / median) ** e`` times the function's
  median (``e`` per function 0.5..1): most of a call's run time is
  explained by its input size.

Per function: median run time lognormal (median 0.5 s, sigma 1), per call
lognormal around it (sigma 0.5), capped at 120 s. Memory: the user's
request is one of 256..4096 MiB; the true peak is a per-function fraction
of it (uniform 0.2..0.9) with a per-call lognormal jitter (sigma 0.1); a
call whose peak passes its request is killed by its hard limit. Calls of
an Azure-format file (no memory figures) get a request and a fraction drawn
the same way, seeded by the run's seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from . import workloads

REQUEST_MB = (256, 512, 1024, 2048, 4096)
MAX_RUN_S = 120.0
MAX_INPUT = 4 << 20


@dataclass(frozen=True, slots=True)
class Job:
    """One call: arrival (s, before load scaling), function, run time (s, on a
    reference core with nothing else running), peak memory (MiB), input (bytes)."""

    t: float
    func: str
    run: float
    peak_mb: float
    size: int = 0


@dataclass(frozen=True)
class Work:
    """A named trace: its jobs by arrival, each function's memory request (MiB), its span."""

    name: str
    jobs: list[Job]
    request_mb: dict[str, int]
    span: float


class _Fn:
    """A generated function: name, weight, median run, request, true peak fraction."""

    def __init__(self, rng: random.Random, i: int, weight: float, run_scale: float = 1.0,
                 requests: tuple[int, ...] = REQUEST_MB, used: tuple[float, float] = (0.2, 0.9)) -> None:
        self.name = f"f{i:03d}"
        self.weight = weight
        self.run = math.exp(rng.gauss(math.log(0.5 * run_scale), 1.0))
        self.request = rng.choice(requests)
        self.frac = rng.uniform(*used)

        self.size = 0  # median input in bytes (0: calls carry none)
        self.exponent = 0.0

    def sized(self, rng: random.Random) -> _Fn:
        """Calls of this function carry inputs their run time grows with."""
        self.size = int(math.exp(rng.uniform(math.log(1024), math.log(256 * 1024))))
        self.exponent = rng.uniform(0.5, 1.0)
        return self

    def job(self, rng: random.Random, t: float) -> Job:
        if not self.size:
            run = min(self.run * math.exp(rng.gauss(0.0, 0.5)), MAX_RUN_S)
            return Job(t, self.name, run, self._peak(rng))
        size = max(1, min(int(self.size * math.exp(rng.gauss(0.0, 1.5))), MAX_INPUT))
        run = self.run * (size / self.size) ** self.exponent * math.exp(rng.gauss(0.0, 0.2))
        return Job(t, self.name, min(run, MAX_RUN_S), self._peak(rng), size)

    def _peak(self, rng: random.Random) -> float:
        return self.request * self.frac * math.exp(rng.gauss(0.0, 0.1))


def _poisson(rng: random.Random, fns: list[_Fn], rate: float, span: float) -> list[Job]:
    total = sum(f.weight for f in fns)
    jobs = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= span:
            return jobs
        fn = rng.choices(fns, weights=[f.weight / total for f in fns])[0]
        jobs.append(fn.job(rng, t))


def _zipf_fns(rng: random.Random, n: int, **kw) -> list[_Fn]:
    return [_Fn(rng, i, 1.0 / (i + 1) ** 1.1, **kw) for i in range(n)]


def skewed(seed: int = 11, span: float = 600.0, rate: float = 8.0) -> Work:
    """Zipf popularity over 60 functions, Poisson arrivals at ``rate`` per second."""
    rng = random.Random(seed)
    fns = _zipf_fns(rng, 60)
    return _work("skewed", _poisson(rng, fns, rate, span), fns, span)


def bursty(seed: int = 12, span: float = 600.0, every: float = 120.0, size: int = 300) -> Work:
    """The skewed background at half the rate, plus every ``every`` seconds
    ``size`` calls of three functions within five seconds (a fan-out)."""
    rng = random.Random(seed)
    fns = _zipf_fns(rng, 60)
    jobs = _poisson(rng, fns, 4.0, span)
    fan = [_Fn(rng, 100 + i, 0.0) for i in range(3)]
    t = every / 2
    while t < span:
        for _ in range(size):
            jobs.append(rng.choice(fan).job(rng, t + rng.uniform(0.0, 5.0)))
        t += every
    jobs.sort(key=lambda j: j.t)
    return _work("bursty", jobs, fns + fan, span)


def mixed(seed: int = 13, span: float = 600.0) -> Work:
    """Forty small functions and eight rare, long (10x) ones."""
    rng = random.Random(seed)
    fns = _zipf_fns(rng, 40) + [
        _Fn(rng, 200 + i, 0.05, run_scale=10.0) for i in range(8)]
    return _work("mixed", _poisson(rng, fns, 6.0, span), fns, span)


def padded(seed: int = 14, span: float = 600.0) -> Work:
    """Sixty functions asking for 2-8 GiB and peaking at 5-30% of it."""
    rng = random.Random(seed)
    fns = _zipf_fns(rng, 60, requests=(2048, 4096, 8192), used=(0.05, 0.3))
    return _work("padded", _poisson(rng, fns, 8.0, span), fns, span)


def sized(seed: int = 15, span: float = 600.0) -> Work:
    """Sixty functions whose calls' run times follow their input sizes."""
    rng = random.Random(seed)
    fns = [f.sized(rng) for f in _zipf_fns(rng, 60)]
    return _work("sized", _poisson(rng, fns, 8.0, span), fns, span)


def _work(name: str, jobs: list[Job], fns: list[_Fn], span: float) -> Work:
    return Work(name, jobs, {f.name: f.request for f in fns}, span)


TRACES = {"skewed": skewed, "bursty": bursty, "mixed": mixed, "padded": padded,
          "sized": sized}


def from_calls(trace: workloads.Trace, seed: int) -> Work:
    """An Azure-format (or warming) trace as placement work: each function's
    request and peak fraction drawn as for the generated ones, with ``seed``."""
    rng = random.Random(seed)
    fns: dict[str, tuple[int, float]] = {}
    jobs = []
    for c in trace.calls:
        if c.func not in fns:
            fns[c.func] = (rng.choice(REQUEST_MB), rng.uniform(0.2, 0.9))
        req, frac = fns[c.func]
        jobs.append(Job(c.t, c.func, min(max(c.duration, 0.001), MAX_RUN_S),
                        req * frac * math.exp(rng.gauss(0.0, 0.1))))
    return Work(trace.name, jobs, {f: r for f, (r, _) in fns.items()}, trace.span)


def load(name_or_file: str, seed: int = 1) -> Work:
    """A generated placement trace by name, else what :func:`workloads.load` reads."""
    if name_or_file in TRACES:
        return TRACES[name_or_file]()
    return from_calls(workloads.load(name_or_file), seed)
