"""Pure-Python twin of ``scheduler.pyx``: score nodes, pick the best.

Both twins must evaluate the score with the same operations in the same order
so that they agree to the last bit; change one, change the other.

Score of node ``i`` for a request (higher is better)::

    s  = 0.4 * (free_cpu - need_cpu) / max(cap_cpu, EPS)
    s += 0.4 * (free_mem - need_mem) / max(cap_mem, EPS)
    s -= 0.3 * load
    s += 1.0 if warm
    s -= penalty

With ``policy`` :data:`FINISH` (a predicted ``duration`` in seconds on a
reference node at no load, and the function's mean ``cold`` start) the score
is instead the negated expected finish time: the node's type runs it
``speed[i]`` times as long as the reference (a column; 1.0 for every node
when ``speed`` is None), and its load per core makes it ``slope`` times
longer per unit of load::

    s  = -(duration * speed * (1.0 + slope * load))
    s -= cold if not warm
    s -= penalty

A node is a candidate when ``eligible[i] != 0``, it has room for the request,
and its score is not NaN (corrupt figures never win). Ties go to the lowest
index.
"""

from __future__ import annotations

import heapq
import itertools

__all__ = ["BASELINE", "EPS", "FINISH", "WEIGHTS", "pick_node", "pick_nodes"]

EPS = 1e-9
#: (cpu headroom, memory headroom, load, warm bonus); mirrored in scheduler.pyx.
WEIGHTS = (0.4, 0.4, 0.3, 1.0)

_W_CPU, _W_MEM, _W_LOAD, _W_WARM = WEIGHTS

#: scoring policies (``policy`` argument); mirrored in scheduler.pyx
BASELINE = 0
FINISH = 1


def _check_lengths(arrays) -> int:
    n = len(arrays[0])
    for a in arrays[1:]:
        if len(a) != n:
            raise ValueError(f"node arrays differ in length: {[len(x) for x in arrays]}")
    return n


def _candidates(free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty,
                need_cpu, need_mem, policy, duration, cold, speed, slope):
    """Yield (score, index) for every candidate node, in index order."""
    need_cpu = float(need_cpu)
    need_mem = float(need_mem)
    duration = float(duration)
    cold = float(cold)
    slope = float(slope)
    finish = policy == FINISH
    if speed is None:
        speed = itertools.repeat(1.0)
    i = -1
    for fc, fm, cc, cm, ld, el, wm, pen, sp in zip(
        free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty, speed
    ):
        i += 1
        if el == 0 or not (fc >= need_cpu and fm >= need_mem):
            continue
        if finish:
            s = -(duration * sp * (1.0 + slope * ld))
            if wm == 0:
                s = s - cold
        else:
            s = _W_CPU * ((fc - need_cpu) / (cc if cc > EPS else EPS))
            s = s + _W_MEM * ((fm - need_mem) / (cm if cm > EPS else EPS))
            s = s - _W_LOAD * ld
            if wm != 0:
                s = s + _W_WARM
        s = s - pen
        if s == s:  # NaN never compares equal to itself
            yield s, i


def _check_policy(policy: int) -> None:
    if policy != BASELINE and policy != FINISH:
        raise ValueError(f"unknown scoring policy {policy!r}")


def _columns(cols: tuple, speed) -> tuple:
    return cols if speed is None else cols + (speed,)


def pick_node(free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty,
              need_cpu: float, need_mem: float, policy: int = BASELINE, duration: float = 0.0,
              cold: float = 0.0, speed=None, slope: float = 1.0) -> int:
    """Return the index of the best-scoring candidate node, or -1 if none fits.

    All arrays have one entry per node: doubles for the figures (and the
    optional ``speed`` column), bytes (0/1) for ``eligible`` and ``warm``.
    ``policy``, ``duration``, ``cold``, ``speed``, ``slope``: see the module
    docstring. Raises ValueError if their lengths differ or the policy is
    unknown.
    """
    _check_policy(policy)
    _check_lengths(_columns((free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm,
                             penalty), speed))
    best = -1
    best_s = 0.0
    for s, i in _candidates(free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm,
                            penalty, need_cpu, need_mem, policy, duration, cold, speed, slope):
        if best < 0 or s > best_s:
            best = i
            best_s = s
    return best


def pick_nodes(free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty,
               need_cpu: float, need_mem: float, k: int, policy: int = BASELINE,
               duration: float = 0.0, cold: float = 0.0, speed=None,
               slope: float = 1.0) -> list[int]:
    """Return up to ``k`` candidate indices, best first (ties: lower index first).

    Used for spillback: when the first choice refuses, try the next. Raises
    ValueError if the arrays differ in length, ``k`` is negative or the
    policy is unknown.
    """
    _check_policy(policy)
    _check_lengths(_columns((free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm,
                             penalty), speed))
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    cands = _candidates(free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty,
                        need_cpu, need_mem, policy, duration, cold, speed, slope)
    # No NaN scores reach here, so (-score, index) is a total order.
    return [i for _, i in heapq.nsmallest(k, cands, key=lambda t: (-t[0], t[1]))]
