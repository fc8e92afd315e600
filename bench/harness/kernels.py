"""The compiled kernels (``spear.fast``) against their pure-Python twins."""

from __future__ import annotations

from typing import Any, Callable

from .plan import Plan
from .procs import Progress
from .results import Results


def best_time(fn: Callable[[], Any], repeat: int, min_time: float = 0.05) -> float:
    """Seconds per call of ``fn``: autoranged loops, best of ``repeat``."""
    import timeit

    t = timeit.Timer(fn)
    number, elapsed = t.autorange()
    if elapsed < min_time:
        number = max(number, int(number * min_time / max(elapsed, 1e-9)))
    return min(t.repeat(repeat=repeat, number=number)) / number


def cluster_arrays(n: int, seed: int = 42) -> tuple:
    """A plausible cluster: mixed node sizes, partly loaded, 5% warm, 90% eligible
    (shared with bench/test_kernels.py)."""
    import random
    from array import array

    rnd = random.Random(seed)
    cap_cpu = [float(rnd.choice((2, 4, 8, 16, 32))) for _ in range(n)]
    cap_mem = [c * 4096.0 for c in cap_cpu]
    return (
        array("d", [rnd.uniform(0.0, c) for c in cap_cpu]),
        array("d", [rnd.uniform(0.0, m) for m in cap_mem]),
        array("d", cap_cpu),
        array("d", cap_mem),
        array("d", [rnd.random() for _ in range(n)]),
        array("B", [rnd.random() < 0.9 for _ in range(n)]),
        array("B", [rnd.random() < 0.05 for _ in range(n)]),
        array("d", [rnd.choice((0.0, 0.0, 0.0, 0.25)) for _ in range(n)]),
    )


def measure_scheduler(res: Results, plan: Plan, prog: Progress) -> None:
    """One placement decision over 100, 1,000 and 10,000 nodes, compiled and twin."""
    import spear.fast as fast

    comp, twin = fast.compiled_scheduler, fast.py_scheduler
    raw = res.raw.setdefault("scheduler", {})
    for n in (100, 1_000, 10_000):
        prog.step(f"scheduler: one decision over {n:,} nodes")
        arrays = cluster_arrays(n)
        t_py = best_time(lambda: twin.pick_node(*arrays, 1.0, 2048.0), plan.kernel_repeat) * 1e6
        t_c = None
        if comp is not None:
            assert comp.pick_node(*arrays, 1.0, 2048.0) == twin.pick_node(*arrays, 1.0, 2048.0)
            t_c = best_time(lambda: comp.pick_node(*arrays, 1.0, 2048.0), plan.kernel_repeat) * 1e6
        raw[n] = {"compiled_us": t_c, "twin_us": t_py}
        big = n == 10_000
        note = "" if comp is not None else "compiled kernel not loaded"
        res.add("scheduler", f"sched.{n}.compiled", f"scheduler: decision over {n:,} nodes, compiled",
                t_c, "us", target=("<", 50.0) if big else None, note=note)
        res.add("scheduler", f"sched.{n}.twin", f"scheduler: decision over {n:,} nodes, Python twin",
                t_py, "us")
        res.add("scheduler", f"sched.{n}.speedup", f"scheduler: compiled speedup at {n:,} nodes",
                (t_py / t_c) if t_c else None, "x", target=(">=", 20.0) if big else None)
    # the learned "finish" policy scores by expected finish time: the same loop, three
    # scalars more (duration, cold start, load slope) and the function's speed column
    prog.step("scheduler: one finish-policy decision over 10,000 nodes")
    import random
    from array import array

    arrays = cluster_arrays(10_000)
    rnd = random.Random(7)
    speed = array("d", [rnd.choice((1.0, 1.0, 1.6, 0.8)) for _ in range(10_000)])
    args = (*arrays, 1.0, 2048.0, twin.FINISH, 0.5, 0.2, speed, 0.6)
    t_c = None
    if comp is not None:
        assert comp.pick_node(*args) == twin.pick_node(*args)
        t_c = best_time(lambda: comp.pick_node(*args), plan.kernel_repeat) * 1e6
    raw["10000.finish"] = {"compiled_us": t_c}
    res.add("scheduler", "sched.10000.finish.compiled",
            "scheduler: finish-policy decision over 10,000 nodes (with a speed column), "
            "compiled", t_c, "us",
            target=("<", 50.0), note="" if comp is not None else "compiled kernel not loaded")


def measure_pool(res: Results, plan: Plan, prog: Progress) -> None:
    """Acquire + release pairs of the warm-instance slot pool, compiled and twin."""
    import spear.fast as fast

    prog.step("pool: acquire+release pairs")
    pairs = 1000
    out = {}
    for kind, mod in (("compiled", fast.compiled_pool), ("twin", fast.py_pool)):
        if mod is None:
            out[kind] = None
            continue
        pool = mod.SlotPool(16)
        for _ in range(4):
            pool.release(pool.reserve(), 0.0)
        acquire, release = pool.acquire, pool.release

        def loop():
            for _ in range(pairs):
                release(acquire(), 1.0)

        out[kind] = best_time(loop, plan.kernel_repeat) / pairs * 1e9
    res.raw["pool"] = out
    res.add("pool", "pool.compiled", "pool: acquire+release pair, compiled", out["compiled"], "ns",
            note="" if out["compiled"] is not None else "compiled kernel not loaded")
    res.add("pool", "pool.twin", "pool: acquire+release pair, Python twin", out["twin"], "ns")
    res.add("pool", "pool.speedup", "pool: compiled speedup",
            out["twin"] / out["compiled"] if out["compiled"] else None, "x",
            note="loop of 1000 pairs per call; includes the Python loop")
