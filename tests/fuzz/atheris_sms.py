#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of the wire decoder and an in-process SMS.

Not collected by pytest (the file name does not start with ``test_``). Run from
the repository root::

    pip install atheris                       # manylinux wheels: no clang needed
    python3 tests/fuzz/atheris_sms.py -max_total_time=600 /tmp/spear-corpus
    python3 tests/fuzz/atheris_sms.py -runs=200000 -rss_limit_mb=4096 /tmp/spear-corpus

Any libFuzzer flag works (``-jobs``, ``-workers``, ``-dict``, ``-only_ascii``...).
The corpus directory is seeded with one valid message of every type (and a few
known-bad frames) when it is empty.

One input is a multipart message as a ROUTER sees it, frames separated by
``SEP``: ``ident SEP frame0 SEP frame1 [SEP payload ...]``. Each input goes

1. through :func:`spear.protocol.decode`, which may only raise ProtocolError;
2. through :func:`spear.protocol.request_id_of`, which may not raise and must
   return an id in ``[0, 2**63)``;
3. into ``RouterServer._on_frames`` of a real :class:`spear.sms.daemon.SMS`
   (memory store, never started: its handlers are synchronous, its ROUTER is
   unbound so replies go nowhere), which may not raise; every message the SMS
   sends must encode and decode again;
4. and then the SMS's invariants are checked (reservations >= 0, executions
   indexed by node exist, bounded subscriptions). Every 64 inputs the SMS
   clock advances (``registry.tick``/``tasks.tick``); every 20,000 inputs the
   SMS is rebuilt so its state (and RSS) stays bounded.

Known bugs (see the strict xfails in test_fuzz.py) would stop the run at once;
by default they are tolerated and counted, ``SPEAR_ATHERIS_STRICT=1`` makes them
crashes too. Counts are printed every 100,000 inputs and at exit.
"""

from __future__ import annotations

import atexit
import collections
import os
import sys
import time
from pathlib import Path

try:
    import atheris
except ImportError:  # pragma: no cover - optional tool
    sys.exit("atheris is not installed: pip install atheris")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["spear"]):
    from spear import errors, protocol as P
    from spear.config import load_config
    from spear.sms.daemon import SMS

import logging

import msgspec

# handler tracebacks of the known bugs would flood stderr and slow the run down
logging.disable(logging.CRITICAL)

SEP = b"|\xfe\xfe|"
STRICT = os.environ.get("SPEAR_ATHERIS_STRICT") == "1"
#: exception types of known bugs, tolerated unless SPEAR_ATHERIS_STRICT=1
KNOWN = {
    # protocol.decode lets these out (test_undecodable_frame_is_answered)
    "decode": (RecursionError, UnicodeDecodeError),
    # the same, through the router; ident.decode() in on_result/on_log_chunk is caught
    # by the router itself; Stats overflow (test_stats_survive_huge_node_capacity)
    "router": (RecursionError, UnicodeDecodeError, OverflowError),
}
counts: collections.Counter = collections.Counter()
_state = {"sms": None, "n": 0, "sent": []}


def new_sms() -> SMS:
    old = _state["sms"]
    if old is not None:
        old.server.close()
        old.store.close()
    cfg = load_config(env={}, overrides={"sms.listen": "tcp://127.0.0.1:0",
                                          "storage.backend": "memory",
                                          "sms.heartbeat_timeout": 5.0,
                                          "sms.cleanup_interval": 30.0})
    sms = SMS(cfg)
    endpoint = sms.server.endpoint
    sent = _state["sent"]

    def capture(frames, *, copy=True):  # replaces the socket send: keep what the SMS says
        sent.append(frames)
        endpoint.sent += 1
        return True

    endpoint.send = capture
    _state["sms"] = sms
    return sms


def check_invariants(sms: SMS) -> None:
    for node, (cpu, mem) in sms.table.reserved.items():
        assert cpu >= 0 and mem >= 0, f"negative reservation on {node}: {cpu}, {mem}"
    for node, ids in sms.tasks.by_node.items():
        for eid in ids:
            ex = sms.tasks.execs.get(eid)
            assert ex is None or ex.node == node, f"{eid} indexed under {node}, runs on {ex.node}"
    assert len(sms.events.subscribers) <= max(sms.events.max_subscribers, 1024)
    assert len(sms.tasks.queue) <= sms.tasks.s.max_queue + 1


def TestOneInput(data: bytes) -> None:
    parts = data.split(SEP)
    ident, frames = (parts[0] or b"\x00fz"), parts[1:] or [b""]
    counts["inputs"] += 1

    # 1. the decoder alone
    try:
        P.decode(frames)
        counts["decoded"] += 1
    except errors.ProtocolError:
        counts["protocol_error"] += 1
    except KNOWN["decode"] as exc:
        counts[f"known: decode raised {type(exc).__name__}"] += 1
        if STRICT:
            raise

    # 2. the best-effort id of a bad frame
    rid = P.request_id_of(frames)
    assert type(rid) is int and 0 <= rid < 2**63, rid

    # 3. the SMS behind its router
    sms = _state["sms"]
    sent = _state["sent"]
    sent.clear()
    try:
        sms.server._on_frames([ident, *frames])
    except KNOWN["router"] as exc:
        counts[f"known: router raised {type(exc).__name__}"] += 1
        if STRICT:
            raise
    for out in sent:
        assert isinstance(out[0], bytes) and out[0], out[0]  # always addressed to a peer
        msg, _ = P.decode(out[1:])  # the SMS only ever sends what it can read back
        counts[f"sent {type(msg).__name__}"] += 1
        if isinstance(msg, P.ErrorReply) and msg.code == "INTERNAL":
            counts["INTERNAL replies"] += 1
            if STRICT and not msg.message.startswith("UnicodeDecodeError"):
                raise AssertionError(f"INTERNAL reply: {msg.message}")

    # 4. state
    n = _state["n"] = _state["n"] + 1
    if n % 64 == 0:
        now = time.time() + (n // 64) * 0.5  # the SMS's clock runs faster than ours
        sms.registry.tick(now)
        sms.tasks.tick(now)
    check_invariants(sms)
    if n % 20_000 == 0:
        new_sms()
    if n % 100_000 == 0:
        report()


def seeds() -> list[bytes]:
    """One valid message of every type, plus a few known-bad frames."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fuzz.test_fuzz import ADD_WAT, MESSAGE_STRATEGIES, REF, UNDECODABLE  # noqa: E402

    def plain(obj):
        if isinstance(obj, str) and obj.startswith(REF):
            return {"art:wat": ADD_WAT}.get(obj[len(REF):], "add")
        if isinstance(obj, dict):
            return {plain(k): plain(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [plain(v) for v in obj]
        return obj

    out = []
    for tag, strategy in sorted(MESSAGE_STRATEGIES.items()):
        found = []

        @settings(max_examples=20, database=None, suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(obj):
            found.append(plain(obj))

        collect()
        for obj in found[:3]:
            ident = b"fz-node" if tag == "Register" else b"\x00cli"
            if tag == "Register":
                obj["node"]["node_id"] = "fz-node"
            out.append(SEP.join([ident, P.PROTOCOL, msgspec.msgpack.encode(obj)]))
    out += [SEP.join([b"\x00cli", *frames]) for frames in UNDECODABLE.values()]
    out.append(SEP.join([b"\x00cli", P.PROTOCOL]))
    return out


def report() -> None:
    print(f"\n[atheris_sms] {dict(sorted(counts.items()))}", file=sys.stderr, flush=True)


def main() -> None:
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        corpus = Path(dirs[0])
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for i, s in enumerate(seeds()):
                (corpus / f"seed-{i:03d}").write_bytes(s)
    new_sms()
    atexit.register(report)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
