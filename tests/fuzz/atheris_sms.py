#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of the wire decoder and an in-process SMS.

Not collected by pytest (the file name does not start with ``test_``). Run from
the repository root::

    pip install atheris                       # manylinux wheels: no clang needed
    python3 tests/fuzz/atheris_sms.py -max_total_time=600 -artifact_prefix=/tmp/ /tmp/spear-corpus
    python3 tests/fuzz/atheris_sms.py -runs=200000 -rss_limit_mb=4096 /tmp/spear-corpus
    python3 tests/fuzz/atheris_sms.py /tmp/crash-...   # replay one input
    python3 bench/fuzz_long.py --seconds 0 --atheris 600   # the same via the wrapper

Any libFuzzer flag works (``-jobs``, ``-workers``, ``-dict``, ``-only_ascii``...).
The corpus directory is seeded with one valid message of every type (and a few
known-bad frames) when it is empty.

One input is a short conversation: up to 16 multipart messages separated by
``MSEP``, each one as a ROUTER sees it, frames separated by ``SEP``:
``ident SEP frame0 SEP frame1 [SEP payload ...]``. Every input gets a fresh SMS
(memory store, never started: its handlers are synchronous, its socket is
never bound and what it sends is captured), so a crash replays from its input
alone. Each message goes

1. through :func:`spear.protocol.decode`, which may only raise ProtocolError;
2. through :func:`spear.mesh.router.request_id_of`, which may not raise and must
   return an id in ``[0, 2**63)``;
3. into ``RouterServer._on_frames`` of the SMS, which may not raise; every
   message the SMS sends must encode and decode again;

then the SMS clock jumps ahead (``Tick``/``Upkeep`` events, timeouts and
retries fire) and its invariants are checked: reservations >= 0, executions
indexed under the node they run on, bounded subscriptions and queue.

Known findings (each with its own regression test in tests/fuzz/) would stop the
run at once; by default they are tolerated and counted, ``SPEAR_ATHERIS_STRICT=1`` makes them
crashes too. Counts are printed every 100,000 inputs and at exit.
"""

from __future__ import annotations

import asyncio
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
    from spear.mesh.router import request_id_of
    from spear.sms.daemon import SMS
    from spear.sms.events import Tick, Upkeep

import logging

import msgspec

# handler tracebacks of the known bugs would flood stderr and slow the run down
logging.disable(logging.CRITICAL)

SEP = b"|\xfe\xfe|"
MSEP = b"#\xfd\xfd#"
MAX_MESSAGES = 16
STRICT = os.environ.get("SPEAR_ATHERIS_STRICT") == "1"
#: exception types of known bugs, tolerated unless SPEAR_ATHERIS_STRICT=1
KNOWN = {
    # protocol.decode lets these out (test_undecodable_frame_is_answered)
    "decode": (RecursionError, UnicodeDecodeError),
    # the same through the router, and the Stats overflow on encode
    # (test_stats_survive_huge_node_capacity); ident.decode() in on_result and
    # on_log_chunk is caught by the router and becomes an INTERNAL reply
    "router": (RecursionError, UnicodeDecodeError, OverflowError),
}
counts: collections.Counter = collections.Counter()
CONFIG = load_config(env={}, overrides={"sms.listen": "tcp://127.0.0.1:0",
                                        "storage.backend": "memory",
                                        "sms.heartbeat_timeout": 5.0,
                                        "sms.cleanup_interval": 30.0})


def new_sms(sent: list) -> SMS:
    """A fresh SMS whose outgoing messages land in ``sent``."""
    sms = SMS(CONFIG)
    endpoint = sms.server.endpoint

    def capture(frames, *, copy=True):  # instead of the socket: keep what the SMS says
        sent.append(frames)
        endpoint.sent += 1
        return True

    endpoint.send = capture
    return sms


def check_invariants(sms: SMS) -> None:
    for node, (cpu, mem) in sms.table.reserved.items():
        assert cpu >= 0 and mem >= 0, f"negative reservation on {node}: {cpu}, {mem}"
    for node, ids in sms.tasks.by_node.items():
        for eid in ids:
            ex = sms.tasks.execs.get(eid)
            assert ex is None or ex.node == node, f"{eid} indexed under {node}, runs on {ex.node}"
    assert len(sms.events.subscribers) <= max(sms.events.max_subscribers, 1024)
    assert sms.tasks.queued <= sms.tasks.s.max_queue + 1


def one_message(sms: SMS, sent: list, raw: bytes) -> None:
    parts = raw.split(SEP)
    ident, frames = (parts[0] or b"\x00fz"), parts[1:] or [b""]
    counts["messages"] += 1

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
    rid = request_id_of(frames)
    assert type(rid) is int and 0 <= rid < 2**63, rid

    # 3. the SMS behind its router
    sent.clear()
    try:
        sms.server._on_frames([ident, *frames])
    except KNOWN["router"] as exc:
        counts[f"known: router raised {type(exc).__name__}"] += 1
        if STRICT:
            raise
    check_sent(sent)


def check_sent(sent: list) -> None:
    for out in sent:
        assert isinstance(out[0], bytes) and out[0], out[0]  # always addressed to a peer
        msg, _ = P.decode(out[1:])  # the SMS only ever sends what it can read back
        counts[f"sent {type(msg).__name__}"] += 1
        if isinstance(msg, P.ErrorReply) and msg.code == "INTERNAL":
            counts["INTERNAL replies"] += 1
            if STRICT or not msg.message.startswith("UnicodeDecodeError"):
                raise AssertionError(f"INTERNAL reply: {msg.message}")
    sent.clear()


#: one event loop for every input: handlers schedule commits (call_soon) and
#: coroutine replies (ensure_future), which need a running loop
LOOP = asyncio.new_event_loop()


def TestOneInput(data: bytes) -> None:
    counts["inputs"] += 1
    LOOP.run_until_complete(one_input(data))
    if counts["inputs"] % 100_000 == 0:
        report()


async def one_input(data: bytes) -> None:
    """Feed one input to a fresh SMS; what the handlers scheduled runs after each message."""
    sent: list = []
    sms = new_sms(sent)
    try:
        for raw in data.split(MSEP)[:MAX_MESSAGES]:
            one_message(sms, sent, raw)
            await settle()
            check_sent(sent)
            check_invariants(sms)
        # 4. let time pass: heartbeat timeouts, cleanup, queue timeouts, retries
        now = time.time()
        for later in (now + 6.0, now + 40.0):
            sms.feed(Tick(), later)
            sms.feed(Upkeep(), later)
            await settle()
            check_sent(sent)
            check_invariants(sms)
    finally:
        for task in list(sms.server.tasks):
            task.cancel()
        await settle()
        sms.server.close()
        sms.store.close()


async def settle(passes: int = 3) -> None:
    """Let the callbacks and tasks the SMS scheduled run (a few loop passes)."""
    for _ in range(passes):
        await asyncio.sleep(0)


def seeds() -> list[bytes]:
    """One valid message of every type, plus a few known-bad frames."""
    from hypothesis import HealthCheck, given, settings

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fuzz.strategies import ADD_WAT, MESSAGE_STRATEGIES, REF, UNDECODABLE  # noqa: E402

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

    def m(ident: bytes, msg, payload: bytes | None = None) -> bytes:
        return SEP.join([ident, *P.encode(msg, payload)])

    node = P.NodeInfo(node_id="fz-node", runtimes=["wasm"], capacity=P.Capacity(
        cores=4, memory=2**34, slots=2))
    fn = P.FunctionSpec(name="f", runtime="wasm", handler="add")
    info = P.ExecutionInfo(execution_id="e1", function="f", status="succeeded")
    # a node registers, a function is deployed and invoked, the node answers (or not)
    for ending in ([m(b"fz-node", P.Result(id=1, execution=info), b"3")],
                   [m(b"fz-node", P.LogChunk(id=1, execution_id="e1", data=b"x")),
                    m(b"fz-node", P.ErrorReply(id=1, code="RESOURCE_EXHAUSTED", message="x"))],
                   [m(b"fz-node", P.Heartbeat(id=5, node_id="fz-node", usage=P.Usage(),
                                              running_ids=["e1"]))],
                   [m(b"\x00cli", P.CancelExecution(id=6, execution_id="e1"))],
                   [m(b"fz-node", P.Deregister(id=7, node_id="fz-node"))],
                   [m(b"\x00cli", P.RemoveFunction(id=8, name="f"))],
                   [m(b"\x00cli", P.Stats(id=9)), m(b"\x00cli", P.Subscribe(id=10))]):
        out.append(MSEP.join([
            m(b"fz-node", P.Register(id=1, node=node)),
            m(b"\x00cli", P.DeployFunction(id=2, spec=fn), ADD_WAT),
            m(b"\x00cli", P.Invoke(id=3, function="f", args=[1, 2], execution_id="e1")),
            m(b"\x00cli", P.Invoke(id=4, function="f", args=[1, 2], mode="async")),
            *ending,
            m(b"\x00cli", P.GetExecution(id=11, execution_id="e1")),
            m(b"\x00cli", P.ListExecutions(id=12)),
        ]))
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
    atexit.register(report)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
