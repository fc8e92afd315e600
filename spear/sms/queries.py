"""The SMS's read-only views over its execution records: filters, cursors, statistics.

Pure functions, no I/O: :meth:`spear.sms.records.ExecutionRecords.list_executions`
pages with :func:`matcher` and the cursor helpers; :func:`function_stats`
answers a ``Stats`` request that names a window. Both read the executions
held whole in memory and the small index entries of archived ones
(:func:`index_entry`), never a record on disk, so a statistics request costs
one pass over the window and no store read.

Statistics are per function, over the executions *submitted* in the window
(the records are kept about in submission order - a long run is archived
when it ends - so the pass stops after :data:`SETTLED` records in a row older
than the window). A duration is submitted to finished, queue and cold start included:
what the caller waited.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable

from .. import protocol as P

#: execution states that count as errors in statistics (cancelled is the caller's doing)
ERRORS = frozenset({"failed", "timed_out", "lost"})
#: records in a row submitted before a statistics window after which the pass stops
SETTLED = 1024


def index_entry(info: P.ExecutionInfo, idem: str) -> tuple:
    """The in-memory index entry of an archived (finished) execution: what listing,
    filtering and statistics need without reading its record back."""
    return (info.submitted_at, info.function, info.status, info.node_id, idem,
            info.finished_at, info.cold)


# ---------------------------------------------------------------- listing


def matcher(msg: P.ListExecutions) -> Callable[[str, float, str, str, str], bool]:
    """``match(execution_id, submitted_at, function, status, node_id)`` for the
    filters of ``msg`` (the cursor and the page bounds aside)."""
    fn, status, node, since, until = msg.function, msg.status, msg.node_id, msg.since, msg.until
    prefix = msg.prefix.replace("-", "")

    def match(eid: str, ts: float, f: str, st: str, nd: str) -> bool:
        if (fn and f != fn) or (status and st != status) or (node and nd != node):
            return False
        if (since and ts < since) or (until and ts >= until):
            return False
        return not prefix or eid.replace("-", "").startswith(prefix)
    return match


def cursor_of(submitted_at: float, execution_id: str) -> str:
    """The cursor of the page whose last (oldest) record is this one."""
    return f"{submitted_at!r}/{execution_id}"


def parse_cursor(cursor: str) -> tuple[float, str] | None:
    """``(submitted_at, execution_id)`` of a cursor; None for none. A cursor that is
    not one of ours names nothing: every record is after it (INVALID_ARGUMENT
    would make a client's stale link fail where a fresh first page serves it)."""
    if not cursor:
        return None
    ts, _, eid = cursor.partition("/")
    try:
        return float(ts), eid
    except ValueError:
        return None


# ---------------------------------------------------------------- statistics


def _pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of sorted ``values`` (nearest rank); None when empty."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


class _Acc:
    """Running figures of one function (or one slice of it)."""

    __slots__ = ("calls", "errors", "cold", "active", "durations")

    def __init__(self) -> None:
        self.calls = self.errors = self.cold = self.active = 0
        self.durations: list[float] = []

    def add(self, status: str, cold: bool, submitted: float, finished: float) -> None:
        self.calls += 1
        self.errors += status in ERRORS
        self.cold += bool(cold)
        if status in P.TERMINAL:
            if finished >= submitted > 0:
                self.durations.append(finished - submitted)
        else:
            self.active += 1

    def slice(self, start: float) -> P.StatSlice:
        d = sorted(self.durations)
        p50, p99 = _pct(d, 0.5), _pct(d, 0.99)
        return P.StatSlice(start=start, calls=self.calls, errors=self.errors, cold=self.cold,
                           p50=None if p50 is None else round(p50, 6),
                           p99=None if p99 is None else round(p99, 6))


def function_stats(live: Iterable[P.ExecutionInfo], archived: Iterable[tuple], *, now: float,
                   window: float, slices: int, function: str = "") -> list[P.FunctionStat]:
    """Per-function figures of the executions submitted in ``[now - window, now]``.

    ``live``: records held whole, newest first; ``archived``: index entries
    (:func:`index_entry`), newest first. Both are read until the window's start.
    """
    start = now - window
    width = window / slices
    totals: dict[str, _Acc] = {}
    parts: dict[str, list[_Acc]] = {}
    rows = heapq.merge(
        ((i.submitted_at, i.function, i.status, i.cold, i.finished_at) for i in live),
        ((e[0], e[1], e[2], e[6], e[5]) for e in archived),
        key=lambda r: r[0], reverse=True)
    older = 0
    for ts, fn, status, cold, finished in rows:
        if ts < start:
            older += 1
            if older >= SETTLED:
                break
            continue
        older = 0
        if function and fn != function:
            continue
        acc = totals.get(fn)
        if acc is None:
            acc = totals[fn] = _Acc()
            parts[fn] = [_Acc() for _ in range(slices)]
        acc.add(status, cold, ts, finished)
        parts[fn][min(slices - 1, int((ts - start) / width))].add(status, cold, ts, finished)
    return [P.FunctionStat(name=fn, total=acc.slice(start), active=acc.active,
                           slices=[a.slice(start + k * width) for k, a in enumerate(parts[fn])])
            for fn, acc in sorted(totals.items())]
