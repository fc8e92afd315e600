"""The bench harness's rate and echo rows run end to end: every payload size through the
floor (2-hop, 3-hop, a bare child's pipes) and through a real cluster (SMS and
direct, both public clients), each row resolved against its own size's floor.

One sample of each, and no assertion on a time: the figures belong to
``python -m bench`` (docs/performance.md); this only proves the code paths run
and name their rows as the JSON promises.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.harness import floor  # noqa: E402
from bench.harness.main import count_steps  # noqa: E402
from bench.harness.plan import PAYLOADS, ROW_PREFIX, Plan  # noqa: E402
from bench.harness.procs import Progress  # noqa: E402
from bench.harness.session import Session  # noqa: E402
from bench.harness.throughput import RATE_FUNCS, echo_rows, rate_rows  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _tiny_plan() -> Plan:
    plan = Plan.make(quick=True)
    plan.floor_lat_n = 5
    plan.echo_n = {tag: 1 for tag, _, _ in PAYLOADS}
    return plan


def test_every_payload_size_has_a_quick_count():
    for quick in (True, False):
        plan = Plan.make(quick)
        assert set(plan.echo_n) == {tag for tag, _, _ in PAYLOADS} == set(ROW_PREFIX)
        assert all(n >= 1 for n in plan.echo_n.values())
    # the largest payload takes fewer samples, so --quick stays short
    quick = Plan.make(True).echo_n
    assert quick["16mib"] < quick["1mib"]


def test_echo_rows_beside_their_floors(tmp_path):
    plan = _tiny_plan()
    steps = count_steps(["floor", "throughput"], plan, profile=False)
    prog = Progress(steps, enabled=False)
    s = Session(plan, ["floor", "throughput"], prog, profile=None, keep=False, data=str(tmp_path))
    fl = floor.Floor()
    try:
        fl.start()
        floor.latency_pass(fl, s.res, plan, prog)
        s.start_cluster()
        with s.client() as c:
            s.ensure(c, "b-echo", sms=True, direct=True)
        raw: dict = {}
        echo_rows(s, raw)
    finally:
        s.stop_cluster()
        fl.stop()
    floor.floor_figures(s.res)
    s.res.finalize()

    by_key = {f.key: f for f in s.res.figures}
    for tag, _, label in PAYLOADS:
        for hop in ("2hop", "3hop", "pipe"):
            assert by_key[f"floor.{hop}.{tag}.p50"].value > 0
        for path, hop in (("sms", "3hop"), ("direct", "2hop")):
            row = by_key[f"{ROW_PREFIX[tag]}.{path}.p50"]
            assert row.figure.startswith(f"{label} echo")
            assert row.floor_key == f"{hop}.{tag}.p50"
            assert row.value > 0 and row.ratio is not None
            assert set(raw[f"{tag}.{path}"]) == {"blocking", "async"}
            assert "ratio" in row.as_json()
    # the 1 MiB rows keep the keys earlier results files used
    assert {"mib.sms.p50", "mib.direct.p50"} <= set(by_key)


def test_rate_rows_for_wasm_and_python_beside_their_floors(tmp_path):
    plan = _tiny_plan()
    plan.rate_n, plan.window, plan.rate_trials = 20, 4, 1
    plan.floor_rate_n, plan.floor_window = 50, 4
    prog = Progress(count_steps(["floor", "throughput"], plan, profile=False), enabled=False)
    s = Session(plan, ["floor", "throughput"], prog, profile=None, keep=False, data=str(tmp_path))
    s.floor = floor.Floor()
    try:
        s.floor.start()
        s.start_cluster()
        with s.client() as c:
            for name, _, _ in RATE_FUNCS:
                s.ensure(c, name, sms=True, direct=True)
        raw: dict = {}
        rate_rows(s, raw)
    finally:
        s.stop_cluster()
        s.floor.stop()
    floor.floor_figures(s.res)
    s.res.finalize()

    by_key = {f.key: f for f in s.res.figures}
    for path, hop in (("sms", "3hop"), ("direct", "2hop")):
        for key in (f"rate.{path}", f"rate.{path}.python"):
            row = by_key[key]
            assert row.floor_key == f"{hop}.rate"
            assert row.value > 0 and row.ratio is not None
            assert len(raw[f"{key[5:]}_trials"]) == 1 and raw[f"{key[5:]}_trials"][0]["failed"] == 0
    assert "Python handler" in by_key["rate.sms.python"].figure
    assert by_key["rate.sms.python"].check == ("ratio>=", 0.4)
    assert by_key["rate.sms"].check == ("ratio>=", 0.6)
