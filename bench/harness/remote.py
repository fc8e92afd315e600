"""``.remote`` through the Python decorator API, beside the bytes API's rows.

The same cluster and floors as ``latency``/``throughput``: a no-op Python
function (``@spear.function``) called with ``.remote(1, 2).result()`` one at
a time, and ``.map`` over many inputs (its default bound on calls in flight).
The bytes rows for a Python handler (``lat.b-noop.sms``) sit next to these,
so what pickling, the runner and the futures cost stays visible.
"""

from __future__ import annotations

import time

from .results import ms
from .session import Session

#: progress steps :func:`section_remote` announces
STEPS = 2


def add(a, b=0):
    """The measured function: shipped by value (this module is not installed)."""
    return a + b


def section_remote(s: Session) -> None:
    """``.remote`` latency and ``.map`` throughput via the SMS, as ratios to the 3-hop floor."""
    import spear

    raw = s.res.raw.setdefault("remote", {})
    conn = spear.connect(s.sms)
    try:
        fn = spear.function(add)
        s.prog.step("remote: .remote(1, 2).result(), one at a time")
        for _ in range(max(20, s.plan.lat_warm)):
            fn.remote(1, 2).result(60)
        ts = []
        perf = time.perf_counter
        for _ in range(s.plan.lat_n):
            t0 = perf()
            fn.remote(1, 2).result(60)
            ts.append(perf() - t0)
        raw["latency"] = lat = ms(ts)
        s.prog.step("remote: .map over many inputs")
        n = max(1000, s.plan.lat_n * 4)
        t0 = perf()
        out = list(fn.map(range(n), timeout=120))
        took = perf() - t0
        assert out[-1] == n - 1, "map returned wrong results"
        raw["map"] = {"n": n, "seconds": took, "rate": n / took}
    finally:
        conn.close()
    res = s.res
    res.add("remote", "remote.sms.p50", "warm .remote(1, 2).result() (Python decorator API), sms: p50",
            lat["p50"], "ms", floor_key="3hop.p50", note="bytes API beside it: lat.b-noop.sms.p50")
    res.add("remote", "remote.sms.p99", "warm .remote(1, 2).result(), sms: p99",
            lat["p99"], "ms", floor_key="3hop.p99")
    res.add("remote", "remote.map.rate", f".map over {n} inputs (<= 64 in flight), sms",
            raw["map"]["rate"], "/s", floor_key="3hop.rate",
            note="bytes API beside it: rate.sms (wasm add, 512 in flight)")
