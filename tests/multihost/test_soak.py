"""Soak in CI: sustained load through the SMS while Spearlets are killed and
restarted (bench/soak.py). ``SPEAR_SOAK_SECONDS`` makes it longer (default 50).

Runs on loopback (no namespaces needed). What it proves: no retryable
execution is lost or fails, every execution reaches a terminal state with the
right output, the SMS counts each one once, reservations return to zero,
every node is ready at the end, and the SMS's RSS stops growing once its
execution retention is full.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.soak import Soak, check, parse_args  # noqa: E402

SECONDS = float(os.environ.get("SPEAR_SOAK_SECONDS", "50"))
RSS_BOUND_MB = 48.0

pytestmark = pytest.mark.timeout(SECONDS + 240)


def test_soak_with_spearlets_killed_and_restarted(tmp_path):
    args = parse_args(["--seconds", str(SECONDS), "--rate", "300", "--chaos-every", "6",
                       "--seed", "7", "--data", str(tmp_path)])
    r = Soak(args, log=lambda m: None).run()
    summary = {k: r[k] for k in ("submitted", "succeeded", "failed", "lost", "unresolved",
                                 "lost_retryable", "wrong_output", "once_ran_twice",
                                 "throughput_per_s", "latency_p50_ms", "latency_p99_ms",
                                 "sms_rss_growth_mb", "loadavg")}
    print(f"\nsoak {SECONDS:g}s: {summary}\n  kills: {r['chaos']}\n  rss: {r['rss']}")
    assert len(r["chaos"]) >= 3 and any(c["signal"] == "SIGKILL" for c in r["chaos"]), r["chaos"]
    # enough work to fill the SMS's retention, so that the RSS bound is about a full one
    # (how many per second is bench/soak.py's figure, not a test's)
    assert r["submitted"] > args.max_executions, (r["submitted"], r["submit_errors"])
    assert check(r, RSS_BOUND_MB) == []
    # at-most-once: a retries=0 execution may be lost with its node, never run twice
    # (an execution a stopping node hands back after it started is a node failure)
    assert r["lost"] == r["by_function"].get("soak-once", {}).get("lost", 0)
