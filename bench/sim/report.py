"""One row per (trace, warming policy): the table printed and the JSON written."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .cluster import Shape, Stats


@dataclass(frozen=True)
class Row:
    """The figures of one run. ``cold_start_rate``: cold starts per call;
    ``warm_mb_s``: MB x seconds instances sat idle; ``node_hours``: nodes the
    memory in use needs, integrated; ``burst_absorb_s``: the longest a call
    waited for memory (with a node model that scales, the time to absorb a
    burst)."""

    trace: str
    warming: str
    calls: int
    functions: int
    cold_starts: int
    cold_start_rate: float
    warm_mb_s: float
    node_hours: float
    prewarms: int
    evictions: int
    pressure_evictions: int
    queued: int
    burst_absorb_s: float
    learned_functions: int
    nodes: int
    node_mb: int
    keep_alive_s: float
    #: the nodes came from the autoscaler's policy (``--autoscale``), not a fixed cluster
    autoscale: bool = False
    #: nodes paid for, integrated: a fixed cluster's all the time, else those the autoscaler ran
    cluster_node_hours: float = 0.0
    #: most nodes at once
    peak_nodes: int = 0


def row(trace: str, warming: str, stats: Stats, shape: Shape, keep_alive: float) -> Row:
    """The row of one run."""
    return Row(trace, warming, stats.calls, stats.functions, stats.cold_starts,
               round(stats.cold_starts / stats.calls, 6) if stats.calls else 0.0,
               round(stats.warm_mb_s, 1), round(stats.node_hours, 4), stats.prewarms,
               stats.evictions, stats.pressure_evictions, stats.queued,
               round(stats.max_wait_s, 3), stats.learned_functions, shape.nodes,
               shape.node_mb, keep_alive)


COLUMNS = ("trace", "warming", "calls", "cold_starts", "cold_start_rate", "warm_mb_s",
           "node_hours", "prewarms", "burst_absorb_s", "autoscale", "cluster_node_hours", "peak_nodes")


def table(rows: list[Row]) -> str:
    """The rows as an aligned text table."""
    cells = [COLUMNS] + [tuple(_fmt(getattr(r, c)) for c in COLUMNS) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths))) for line in cells)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if v < 10 else f"{v:,.1f}"
    return str(v)


def write_json(rows: list[Row], path: str | Path) -> None:
    """``{"rows": [...]}``, one object per row."""
    Path(path).write_text(json.dumps({"rows": [asdict(r) for r in rows]}, indent=1) + "\n")


PLACEMENT_COLUMNS = ("trace", "policy", "load", "p50_s", "p99_s", "queue_p50_s", "queue_p99_s",
                     "utilization", "mem_utilization", "cold_starts", "failed", "failed_memory")


def placement_table(rows: list[dict]) -> str:
    """Placement rows (dicts) as an aligned text table."""
    cells = [PLACEMENT_COLUMNS] + [tuple(_fmt(r[c]) for c in PLACEMENT_COLUMNS) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(PLACEMENT_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths))) for line in cells)
