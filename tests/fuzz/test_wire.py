"""Fuzz a real SMS and a real Spearlet over the wire: decoding, routing and handlers.

``test_fuzz_sms_and_spearlet`` starts an SMS and one Spearlet as subprocesses
(the ``fuzz_cluster`` fixture, leveldb store in ``tmp_path``) and throws
frames at both from raw zmq DEALER sockets while a valid client keeps using
the cluster from a background thread.

What is sent (hypothesis draws the structure, a seeded ``random.Random``
multiplies every drawn message into mutated copies; strategies.py):

* valid messages of every type of :data:`spear.protocol.Message`, built from
  the msgspec type annotations (``msgspec.inspect``) with field-aware
  strategies (node ids, execution ids and function names come from pools that
  include the real ones);
* mutations of those: extreme ints (2**63, 2**64-1, negative ids), wrong
  types per field, dropped/unknown fields, swapped tags, strings/bytes/lists of
  up to a few MB, deeply nested msgpack, bit flips, truncation, splices,
  wrong or missing version frame, duplicated/extra/empty frames, payloads;
* raw random frames;
* node traffic from sockets whose routing id is a node id registered by the
  fuzzer ("fake nodes"): Register, Heartbeat, Result/LogChunk for unknown and
  finished executions, ErrorReply floods, and a small "brain" that answers the
  Dispatches the SMS sends to fake nodes at random (result of any status,
  refusal, logs, silence).

Sockets (harness.py): anonymous DEALERs, DEALERs with random routing ids (one of them not
UTF-8), three fake-node DEALERs, and two *oracle* DEALERs. Frames whose
outcome is known from local decoding (garbage, types a daemon does not
accept, read-only queries) go through the oracles, followed by a sentinel
Ping, and every answer is checked: garbage gets ``ErrorReply`` with
INVALID_ARGUMENT and the recoverable request id, unaccepted types get
INVALID_ARGUMENT, queries get their reply or a typed non-INTERNAL error, and
messages that must not be answered are not (oracle.py).

Properties, during the run (a prober subprocess, every ~0.25 s: prober.py)
and after it:

* both daemons stay alive and answer ping, nodes(), invoke of ``add`` through
  the SMS and directly on the Spearlet (``[1, 2] -> b"3"``), each within the
  probe's client timeout (the latencies are reported, not asserted: timings
  belong in bench/fuzz_long.py);
* the real node stays ``ready``; ``add`` stays listed on the SMS and on the
  node; execution records taken before the fuzz are unchanged after it;
  reservations and active executions return to zero; no execution stays
  non-terminal once the fake nodes fall silent;
* RSS of both daemons after the run is within ``RSS_BOUND`` of before;
* the daemons never send an undecodable frame nor an INTERNAL error (except
  the known findings, which are counted and have their own tests here).

What is deliberately *not* sent in the main run (counted as "withheld" in the
summary; each has its own test in this folder): messages that are destructive by design
without CURVE/roles (deploying over or removing the probe function, a socket
taking the real node's routing id), and inputs behind the findings the other
tests here reproduce (test_protocol.py, test_sms_*.py, test_spearlet.py,
test_mesh_router.py): spoofed Heartbeat/Deregister for the real node, execution
ids the Spearlet already has, valid state-creating messages over 64 KiB and
Result payloads over 64 KiB (kept by the SMS). A fake node's Register capacity
is normalized to "nothing" or "plenty" (a busy node triggers the queue's
head-of-line blocking, a capacity near 2**64 the Stats overflow).

Default: fixed seeds and a fixed number of examples (16 rounds of 150, about
45 s of fuzzing here; capped at 60 s on a slow machine). ``SPEAR_FUZZ_SECONDS=600``
runs random seeds for that long instead (the seed is printed; a failure names
its round's seed for ``SPEAR_FUZZ_SEED``); see also bench/fuzz_long.py.
``SPEAR_FUZZ_SHRINK=1`` lets hypothesis shrink a failing example. The summary
(frames, rates, latencies, RSS timeline, oracle checks, withheld inputs, known
bugs seen) is printed (``-s``) and written to ``fuzz-summary.json`` in the
cluster's data dir. tests/fuzz/atheris_sms.py is the coverage-guided
counterpart (in-process decoder + SMS, not run by pytest).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import pytest

from spear import Client
from tests.helpers import wait_for

from .harness import (CI_EXAMPLES_PER_ROUND, CI_ROUNDS, CI_TIME_CAP, HB_TIMEOUT, LONG_SECONDS,
                      N_FAKE, RSS_BOUND, SEED, Harness, cover_missing_tags, rss, run_rounds)
from .prober import PROBE_TIMEOUT, Prober
from .strategies import ALL_TAGS


def _slope(timeline: list[tuple]) -> dict:
    if len(timeline) < 3:
        return {}
    (f0, s0, n0), (f1, s1, n1) = timeline[len(timeline) // 2], timeline[-1]
    per = 10_000 / max(f1 - f0, 1) * 1024
    return {"sms": round((s1 - s0) * per, 1), "node": round((n1 - n0) * per, 1)}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@pytest.mark.timeout(LONG_SECONDS + 300 if LONG_SECONDS else 300)
def test_fuzz_sms_and_spearlet(fuzz_cluster):
    c = fuzz_cluster
    addr = c.spearlet_addrs[0]
    procs = {"sms": c.sms, "node": c.spearlets[0]}
    with Client(c.sms_addr, timeout=20) as cl:
        # state to compare after the fuzz
        r_sms = cl.invoke("add", args=[40, 2])
        # an async execution keeps a record on the node (warm sync calls answer inline)
        r_node = cl.wait(cl.submit("add", args=[20, 22], node=addr), timeout=10, node=addr)
        assert r_sms.output == b"42" and r_node.output == b"42"
        for _ in range(100):  # warm both daemons up before the RSS baseline
            cl.invoke("add", args=[1, 2])
            cl.invoke("add", args=[1, 2], node=addr)
        before = {
            "sms": cl.execution(r_sms.execution_id),
            "node": cl.execution(r_node.execution_id, node=addr),
        }
        fn_before = {f.name: f.digest for f in cl.functions()}
        node_fn_before = {f.name: f.digest for f in cl.functions(node=addr)}
        rss0 = {k: rss(p.pid) for k, p in procs.items()}

    h = Harness(c, c.real_id, {r_sms.execution_id}, {r_node.execution_id})
    rnd = random.Random(SEED)
    for i in range(N_FAKE):  # fake nodes register first, so they exist from the start
        h.node_op(i, "register", 0, rnd)
    prober = Prober(c, c.real_id)
    t0 = time.monotonic()
    failure: BaseException | None = None
    topped: dict = {}
    try:
        if LONG_SECONDS:
            print(f"\nfuzz: long run of {LONG_SECONDS:g}s, seeds from {SEED}")
            seeds_done = run_rounds(h, t0 + LONG_SECONDS, (SEED + i for i in range(10**9)), 300)
        else:
            seeds_done = run_rounds(h, t0 + CI_TIME_CAP, (SEED + i for i in range(CI_ROUNDS)),
                                    CI_EXAMPLES_PER_ROUND)
            topped = cover_missing_tags(h, SEED)
        h.drain()
    except BaseException as exc:  # reported after the summary
        failure = exc
        seeds_done = []
    finally:
        fuzz_seconds = time.monotonic() - t0
        prober.stop()

    # ---------------------------------------------------------------- after the fuzz
    problems: list[str] = []
    stats = None
    fakes: list[str] = []
    rss1 = {k: 0 for k in procs}
    try:
        for key, p in procs.items():
            if p.poll() is not None:
                problems.append(f"{key} exited with {p.returncode} (logs in {c.data})")
        if not problems:
            with Client(c.sms_addr, timeout=PROBE_TIMEOUT) as cl:
                problems += check_after(c, cl, h, before, fn_before, node_fn_before)
                stats = cl.stats()
                fakes = [n.node_id for n in cl.nodes() if n.node_id != c.real_id]
                time.sleep(1.0)
                rss1 = {k: rss(p.pid) for k, p in procs.items()}
    finally:
        h.close()

    # ---------------------------------------------------------------- figures
    total = sum(h.sent.values())
    summary = {
        "seeds": seeds_done,
        "examples": h.examples,
        "fuzz_seconds": round(fuzz_seconds, 1),
        "frames_sent": dict(h.sent),
        "frames_total": total,
        "frames_per_second": round(total / max(fuzz_seconds, 1e-9)),
        "mbytes_sent": {k: round(v / 2**20, 1) for k, v in h.bytes.items()},
        "send_dropped_hwm": h.dropped,
        "valid_types_sent": {k: len(v) for k, v in h.valid_tags.items()},
        "valid_types_topped_up": topped,
        "withheld": dict(h.withheld),
        "replies": dict(h.replies.most_common()),
        "error_codes": dict(h.codes),
        "known_bugs_seen": dict(h.known),
        "oracle_checks": dict(h.oracle_checks),
        "oracle_rtt_ms_p50_p99": [round(1e3 * _pct(h.oracle_rtt, 0.5), 2),
                                  round(1e3 * _pct(h.oracle_rtt, 0.99), 2)],
        "probe_rounds": prober.rounds,
        "probe_latency_ms_median_max": {
            k: [round(1e3 * statistics.median(v), 2), round(1e3 * max(v), 1)]
            for k, v in prober.latency.items() if v},
        "rss_mb_before": {k: round(v / 2**20, 1) for k, v in rss0.items()},
        "rss_mb_peak": {k: round(v / 2**20, 1) for k, v in prober.rss_peak.items()},
        "rss_mb_after": {k: round(v / 2**20, 1) for k, v in rss1.items()},
        "rss_timeline_frames_sms_node": h.rss_timeline,
        "rss_kb_growth_per_10k_frames": {
            k: round((rss1[k] - rss0[k]) / 1024 / max(h.sent[k], 1) * 10_000, 1) for k in rss0},
        # slope over the second half of the rounds (past the warm-up)
        "rss_kb_per_10k_frames_steady": _slope(h.rss_timeline),
        "fake_nodes_left": fakes,
        "fuzz_functions_registered": len(h.fuzz_fns),
        "stats_after": None if stats is None else {"counts": dict(stats.counts),
                                                   "nodes_ready": stats.nodes_ready},
        "problems": problems,
        "anomalies": h.anomalies[:20],
        "probe_failures": prober.failures[:20],
    }
    text = json.dumps(summary, indent=1, default=str)
    (Path(c.data) / "fuzz-summary.json").write_text(text)
    print("\nfuzz summary:", text)

    # ---------------------------------------------------------------- properties
    if failure is not None:
        raise failure
    assert not problems, problems
    assert not prober.failures, f"valid client failed during the fuzz: {prober.failures[:10]}"
    assert prober.rounds >= 10, f"only {prober.rounds} probe rounds ran"
    assert not h.anomalies, f"daemons misbehaved: {h.anomalies[:10]}"
    for key in rss0:
        assert rss1[key] - rss0[key] < RSS_BOUND, (
            f"{key} RSS grew {(rss1[key] - rss0[key]) / 2**20:.1f} MB over the fuzz")
    if not LONG_SECONDS and fuzz_seconds < CI_TIME_CAP:
        # every message type reached both daemons in valid form at least once
        for target in ("sms", "node"):
            missing = set(ALL_TAGS) - set(h.valid_tags[target])
            assert not missing, f"{target} never got a valid {sorted(missing)}"
        assert h.oracle_checks["garbage"] > 100 and h.oracle_checks["query"] > 100


def check_after(c, cl: Client, h: Harness, before: dict, fn_before: dict,
                node_fn_before: dict) -> list[str]:
    """State checks once the fuzz is over; returns what is wrong."""
    problems = []
    addr = c.spearlet_addrs[0]

    # fake nodes are silent now: what they held must end (lost) within the heartbeat
    # timeout, and every reservation must be returned
    def settled():
        h.drain()
        s = cl.stats()
        return s if (s.cores_reserved == 0 and s.memory_reserved == 0
                     and s.executions_active == 0) else None
    try:
        wait_for(settled, 3 * HB_TIMEOUT + 10, "reservations back to zero")
    except AssertionError as exc:
        problems.append(f"{exc}; stats {cl.stats()}")
    h.drain()
    stuck = []
    for status in ("pending", "scheduled", "running"):
        items, _ = cl.executions(status=status, limit=20)
        stuck += [(i.execution_id, i.function, i.status, i.node_id, i.attempts) for i in items]
    if stuck:
        problems.append(f"executions left non-terminal after the fuzz: {stuck}")
    real = [n for n in cl.nodes() if n.node_id == c.real_id]
    if not real or real[0].state != "ready":
        problems.append(f"real node not ready after the fuzz: {real}")
    after = {"sms": cl.execution(before["sms"].execution_id),
             "node": cl.execution(before["node"].execution_id, node=addr)}
    for k in before:
        if after[k].info != before[k].info or after[k].output != before[k].output:
            problems.append(f"{k} record changed by the fuzz: {before[k].info} -> {after[k].info}")
    fn_after = {f.name: f.digest for f in cl.functions()}
    node_fn_after = {f.name: f.digest for f in cl.functions(node=addr)}
    if fn_after.get("add") != fn_before["add"] or node_fn_after.get("add") != node_fn_before["add"]:
        problems.append("the probe function changed on the SMS or the node")
    for kw in ({}, {"node": addr}):
        r = cl.invoke("add", args=[1, 2], **kw)
        if r.output != b"3":
            problems.append(f"invoke {kw} after the fuzz: {r.info}")
    return problems
