"""The calls a simulation replays: :class:`Call` lists, sorted by start time.

Generated traces have fixed seeds, so a name always means the same calls.
Function popularity is heavy-tailed (Zipf) in all of them; as in the Azure
traces, a share of functions are timers (called on a period, with a little
jitter) and the rest arrive at random (Poisson).
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

HOUR = 3600.0
MEMORY_MB = (128, 256, 512)
AZURE_HEADER = ["app", "func", "end_timestamp", "duration"]
#: memory of a function in an Azure trace (the 2021 trace has none)
AZURE_MB = 256


@dataclass(frozen=True, slots=True)
class Call:
    """One invocation: start time (s), function, run time (s), memory (MB)."""

    t: float
    func: str
    duration: float
    mem_mb: int


@dataclass(frozen=True)
class Trace:
    """A named list of calls over ``span`` seconds."""

    name: str
    calls: list[Call]
    span: float


def _functions(rng: random.Random, n: int, total_rate: float, timers: float):
    """``n`` functions: (name, mean gap, is a timer, median run time, memory)."""
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(n)]
    scale = total_rate / sum(weights)
    for i, w in enumerate(weights):
        yield (f"f{i:04d}", 1.0 / (w * scale), rng.random() < timers,
               math.exp(rng.gauss(math.log(0.5), 1.0)), rng.choice(MEMORY_MB))


def _arrivals(rng: random.Random, gap: float, timer: bool, span: float, rate_at=None):
    """Start times of one function over ``span`` (``rate_at(t)``: a 0..1 rate
    multiplier for Poisson arrivals, by thinning)."""
    t = rng.uniform(0, gap) if timer else 0.0
    while True:
        t += gap * (1 + rng.uniform(-0.02, 0.02)) if timer else rng.expovariate(1.0 / gap)
        if t >= span:
            return
        if rate_at is None or timer or rng.random() < rate_at(t):
            yield t


def zipf(seed: int = 1, n: int = 200, span: float = 6 * HOUR, rate: float = 4.0,
         timers: float = 0.4, rate_at=None, name: str = "zipf") -> Trace:
    """Heavy-tailed popularity: ``rate`` calls/s in all over ``n`` functions."""
    rng = random.Random(seed)
    calls = []
    for fn, gap, timer, run, mem in _functions(rng, n, rate, timers):
        for t in _arrivals(rng, gap, timer, span, rate_at):
            calls.append(Call(t, fn, min(run * rng.uniform(0.8, 1.2), 600.0), mem))
    calls.sort(key=lambda c: c.t)
    return Trace(name, calls, span)


def bursts(seed: int = 2, span: float = 6 * HOUR, every: float = HOUR, size: int = 400) -> Trace:
    """The zipf background plus, every ``every`` seconds, ``size`` calls of a
    few functions within ten seconds (a fan-out)."""
    base = zipf(seed, span=span, rate=2.0)
    rng = random.Random(seed + 100)
    calls = list(base.calls)
    t = every / 2
    while t < span:
        for _ in range(size):
            calls.append(Call(t + rng.uniform(0, 10.0), f"burst{rng.randrange(4)}",
                              rng.uniform(1.0, 3.0), 256))
        t += every
    calls.sort(key=lambda c: c.t)
    return Trace("bursts", calls, span)


def diurnal(seed: int = 3, span: float = 24 * HOUR) -> Trace:
    """The zipf mix over a day; random arrivals follow a day/night cycle
    (peak at noon, a tenth of it at midnight)."""
    def rate_at(t: float) -> float:
        return 0.55 - 0.45 * math.cos(2 * math.pi * t / (24 * HOUR))
    return zipf(seed, n=150, span=span, rate=2.0, rate_at=rate_at, name="diurnal")


GENERATED = {"zipf": zipf, "bursts": bursts, "diurnal": diurnal}


def azure(path: str | Path) -> Trace:
    """A trace in the Azure Functions Invocation Trace 2021 format: CSV with
    ``app,func,end_timestamp,duration`` (seconds); a call starts at its end
    less its duration. Times are shifted to start at 0."""
    path = Path(path)
    raw = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        if header[:4] != AZURE_HEADER:
            raise ValueError(f"{path}: expected the header {','.join(AZURE_HEADER)}")
        for row in reader:
            if not row:
                continue
            end, run = float(row[2]), max(0.0, float(row[3]))
            raw.append((end - run, f"{row[0]}/{row[1]}", run))
    if not raw:
        raise ValueError(f"{path}: no calls")
    t0 = min(t for t, _, _ in raw)
    calls = sorted((Call(t - t0, fn, run, AZURE_MB) for t, fn, run in raw), key=lambda c: c.t)
    span = max(c.t + c.duration for c in calls)
    return Trace(path.stem, calls, span)


#: Azure-format samples shipped with the simulator, by file stem
SAMPLES = Path(__file__).parent / "traces"


def load(name_or_file: str) -> Trace:
    """A generated trace by name, an Azure-format CSV file by path, or a
    sample of ``bench/sim/traces/`` by its stem."""
    if name_or_file in GENERATED:
        return GENERATED[name_or_file]()
    if Path(name_or_file).is_file():
        return azure(name_or_file)
    if (SAMPLES / f"{name_or_file}.csv").is_file():
        return azure(SAMPLES / f"{name_or_file}.csv")
    raise ValueError(f"no trace {name_or_file!r}: a file, or one of {', '.join(GENERATED)}")
