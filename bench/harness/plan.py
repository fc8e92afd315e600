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

KiB = 1024
MiB = 1024 * KiB

#: the echo payloads, as (tag, bytes, label): the tag names their floor keys
#: (``2hop.<tag>.p50``, ``3hop.<tag>.p50``, ``pipe.<tag>.p50``) and their raw samples
PAYLOADS = (("64kib", 64 * KiB, "64 KiB"), ("1mib", MiB, "1 MiB"), ("16mib", 16 * MiB, "16 MiB"))
#: the key prefix of each size's Spear rows (``<prefix>.sms.p50``); 1 MiB keeps its historic ``mib``
ROW_PREFIX = {"64kib": "kib64", "1mib": "mib", "16mib": "mib16"}


@dataclass
class Plan:
    """How much to measure."""

    quick: bool
    floor_lat_n: int  # sequential round trips per floor latency pass
    floor_rate_n: int  # round trips per pipelined floor trial
    floor_window: int
    echo_n: dict[str, int]  # timed echoes per payload tag (see PAYLOADS)
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
            return cls(quick=True, floor_lat_n=1000, floor_rate_n=10_000, floor_window=1000,
                       echo_n={"64kib": 30, "1mib": 30, "16mib": 5}, lat_n=300, lat_warm=30,
                       oneshot_n=20, rate_n=4000, rate_trials=2, window=512,
                       cold_reps=1, kernel_repeat=3, fib_arg=27, fib_n=6 * cpus,
                       docker_oneshot_n=2, docker_pooled_n=5, refloor=False)
        return cls(quick=False, floor_lat_n=5000, floor_rate_n=20_000, floor_window=1000,
                   echo_n={"64kib": 100, "1mib": 100, "16mib": 20}, lat_n=1000, lat_warm=100,
                   oneshot_n=50, rate_n=10_000, rate_trials=3, window=512,
                   cold_reps=3, kernel_repeat=7, fib_arg=27, fib_n=10 * cpus,
                   docker_oneshot_n=5, docker_pooled_n=20, refloor=True)


def echo_warm(size: int) -> int:
    """Untimed echoes before the timed ones: fewer for the largest payloads, which cost the most."""
    return 1 if size >= 16 * MiB else 3


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
