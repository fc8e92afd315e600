"""What one run measures: the sections, and how much of each (``--quick`` shrinks every count)."""

from __future__ import annotations

import os
from dataclasses import dataclass

SECTIONS = ("floor", "latency", "throughput", "remote", "cold", "scheduler", "pool", "rss",
            "parallel", "docker")
#: sections that need the embedded cluster
CLUSTER_SECTIONS = {"latency", "throughput", "remote", "cold", "rss", "parallel", "docker"}
#: sections whose figures are ratios to the floor
FLOOR_SECTIONS = {"latency", "throughput", "remote"}

MiB = 1024 * 1024


@dataclass
class Plan:
    """How much to measure."""

    quick: bool
    floor_lat_n: int  # sequential round trips per floor latency pass
    floor_rate_n: int  # round trips per pipelined floor trial
    floor_window: int
    mib_n: int
    lat_n: int
    lat_warm: int
    oneshot_n: int
    rate_n: int  # invocations per pipelined Spear trial
    rate_trials: int  # interleaved floor/Spear trials; the best of each counts
    window: int
    cold_reps: int
    kernel_repeat: int
    fib_arg: int
    fib_n: int
    docker_oneshot_n: int
    docker_pooled_n: int
    spearlets: int = 1
    refloor: bool = True

    @classmethod
    def make(cls, quick: bool) -> "Plan":
        """The full plan, or the quick one."""
        cpus = os.cpu_count() or 1
        if quick:
            return cls(quick=True, floor_lat_n=1000, floor_rate_n=10_000, floor_window=1000, mib_n=30,
                       lat_n=300, lat_warm=30, oneshot_n=20, rate_n=4000, rate_trials=2, window=512,
                       cold_reps=1, kernel_repeat=3, fib_arg=27, fib_n=6 * cpus,
                       docker_oneshot_n=2, docker_pooled_n=5, refloor=False)
        return cls(quick=False, floor_lat_n=5000, floor_rate_n=20_000, floor_window=1000, mib_n=100,
                   lat_n=1000, lat_warm=100, oneshot_n=50, rate_n=10_000, rate_trials=3, window=512,
                   cold_reps=3, kernel_repeat=7, fib_arg=27, fib_n=10 * cpus,
                   docker_oneshot_n=5, docker_pooled_n=20, refloor=True)


def select_sections(only: str) -> list[str]:
    """The sections ``--only a,b`` asks for, in run order (``floor`` added when needed)."""
    if not only:
        return list(SECTIONS)
    want = [s.strip() for s in only.split(",") if s.strip()]
    bad = [s for s in want if s not in SECTIONS]
    if bad:
        raise SystemExit(f"bench: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    if FLOOR_SECTIONS & set(want) and "floor" not in want:
        want.insert(0, "floor")
    return [s for s in SECTIONS if s in want]
