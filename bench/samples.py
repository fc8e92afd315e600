"""One representative instance of every wire message, for the codec benchmarks.

``SAMPLES`` maps each member of :data:`spear.protocol.Message` to a builder of
a plausible instance: the sizes a busy cluster sends (a heartbeat with a few
running executions, a page of 100 executions, a node list of 16 nodes, a
4 KiB wasm artifact), not the smallest valid message. It is an explicit table
rather than one generated from the Struct fields so that each entry looks like
real traffic; ``tests/test_bench_samples.py`` fails when a ``Message`` type has
no entry (or an entry no longer encodes and decodes), so the table keeps up
with the protocol. ``PAYLOAD_CARRIERS`` are the messages whose payload frame
(input or output) is on the hot path.
"""

from __future__ import annotations

from typing import Callable, get_args

from spear import protocol as P

_EID = "5f0e8c4b9a7d4e2f8b1c3d5e7f9a0b1c"
_TRACE = "0123456789abcdef"
#: the W3C context every Dispatch carries (the SMS's dispatch span)
_TRACEPARENT = "00-5f0e8c4b9a7d4e2f8b1c3d5e7f9a0b1c-8b1c3d5e7f9a0b1c-00"
_DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
_NODE = "spearlet-1-78e3fe61"
_NOW = 1.7e9


def _usage() -> P.Usage:
    return P.Usage(cpu_percent=37.5, memory_used=6 << 30, memory_total=16 << 30,
                   disk_used=40 << 30, disk_total=256 << 30, net_rx=123_456_789,
                   net_tx=98_765_432, load1=1.25, running=3, warm=12)


def _node(i: int = 1) -> P.NodeInfo:
    return P.NodeInfo(
        node_id=f"spearlet-{i}-78e3fe61", name=f"node-{i}", address=f"tcp://10.0.0.{i}:5601",
        labels={"zone": "eu-west-1a", "tier": "general"},
        runtimes=["wasm", "process", "docker"], unavailable={},
        capacity=P.Capacity(cores=8.0, memory=16 << 30, disk=256 << 30, slots=64),
        usage=_usage(), state="ready", registered_at=_NOW, last_seen=_NOW + 12.5)


def _spec() -> P.FunctionSpec:
    return P.FunctionSpec(
        name="add-wasm", runtime="wasm", artifact=bytes(range(256)) * 16, handler="add",
        limits=P.Limits(timeout=30.0, memory_mb=128, fuel=10_000_000),
        pool=P.PoolSettings(min_warm=1, max=8, idle_ttl=300.0),
        labels={"team": "payments"}, retries=1, idempotent=True)


def _execution(i: int = 7) -> P.ExecutionInfo:
    return P.ExecutionInfo(
        execution_id=f"{i:032x}", function="add-wasm", status="succeeded", node_id=_NODE,
        timings=P.Timings(queue=1.1e-5, cold_start=0.0, run=2.5e-5, total=2.8e-5),
        usage=P.ExecUsage(cpu_time=2.1e-5, peak_memory=65536, fuel=12),
        trace_id=_TRACE, submitted_at=_NOW, finished_at=_NOW + 3e-5, args=[2, 40])


def _function_info(i: int = 1) -> P.FunctionInfo:
    return P.FunctionInfo(name=f"fn-{i}", runtime="wasm", digest=_DIGEST, warm=2, busy=1,
                          hits=1000, misses=3, evictions=1)


SAMPLES: dict[type, Callable[[], P._Msg]] = {
    P.ErrorReply: lambda: P.ErrorReply(id=7, code="NOT_FOUND", message="no function 'add-wasm'",
                                       details={"function": "add-wasm"}),
    P.Ok: lambda: P.Ok(id=7),
    P.Ping: lambda: P.Ping(id=7),
    P.Pong: lambda: P.Pong(id=7, role="spearlet", node_id=_NODE, version="0.1.0"),
    P.Register: lambda: P.Register(id=7, node=_node(), proof="k" * 43),
    P.Heartbeat: lambda: P.Heartbeat(id=7, node_id=_NODE, usage=_usage(),
                                     running_ids=[f"{i:032x}" for i in range(8)], session=42,
                                     finished=[f"{i:032x}" for i in range(8, 10)]),
    P.Deregister: lambda: P.Deregister(id=7, node_id=_NODE),
    P.Welcome: lambda: P.Welcome(id=7, node_id=_NODE, heartbeat_interval=1.0,
                                 heartbeat_timeout=5.0, session=42),
    P.HeartbeatAck: lambda: P.HeartbeatAck(id=7, acked=[f"{i:032x}" for i in range(8, 10)]),
    P.ListNodes: lambda: P.ListNodes(id=7, state="ready"),
    P.GetNode: lambda: P.GetNode(id=7, node_id=_NODE),
    P.NodeList: lambda: P.NodeList(id=7, nodes=[_node(i) for i in range(16)]),
    P.NodeReply: lambda: P.NodeReply(id=7, node=_node()),
    P.DeployFunction: lambda: P.DeployFunction(id=7, spec=_spec()),
    P.RemoveFunction: lambda: P.RemoveFunction(id=7, name="add-wasm"),
    P.ListFunctions: lambda: P.ListFunctions(id=7),
    P.Invoke: lambda: P.Invoke(id=7, function="add-wasm", args=[2, 40], trace_id=_TRACE),
    P.GetExecution: lambda: P.GetExecution(id=7, execution_id=_EID, wait=5.0),
    P.CancelExecution: lambda: P.CancelExecution(id=7, execution_id=_EID),
    P.Deployed: lambda: P.Deployed(id=7, function=_function_info()),
    P.FunctionList: lambda: P.FunctionList(id=7, functions=[_function_info(i) for i in range(10)]),
    P.Accepted: lambda: P.Accepted(id=7, execution_id=_EID),
    P.LogChunk: lambda: P.LogChunk(id=7, execution_id=_EID, data=b"step 3 of 10 done\n" * 8, seq=3),
    P.Result: lambda: P.Result(id=7, execution=_execution()),
    P.Dispatch: lambda: P.Dispatch(id=7, execution_id=_EID, function="add-wasm", digest=_DIGEST,
                                   args=[2, 40], timeout=30.0, trace_id=_TRACE,
                                   traceparent=_TRACEPARENT),
    P.FetchFunction: lambda: P.FetchFunction(id=7, name="add-wasm"),
    P.FunctionReply: lambda: P.FunctionReply(id=7, spec=_spec(), digest=_DIGEST),
    P.GetFunction: lambda: P.GetFunction(id=7, name="add-wasm"),
    P.ListExecutions: lambda: P.ListExecutions(id=7, function="add-wasm", status="succeeded"),
    P.ExecutionList: lambda: P.ExecutionList(id=7, executions=[_execution(i) for i in range(100)],
                                             total=12_345),
    P.Subscribe: lambda: P.Subscribe(id=7, since=1000),
    P.Unsubscribe: lambda: P.Unsubscribe(id=7),
    P.Event: lambda: P.Event(id=7, seq=1001, kind="execution", key=_EID, state="succeeded",
                             ts=_NOW, detail=_NODE),
    P.Stats: lambda: P.Stats(id=7),
    P.StatsReply: lambda: P.StatsReply(id=7, nodes_ready=16, cores_total=128.0,
                                       memory_total=256 << 30, cores_reserved=12.5,
                                       memory_reserved=24 << 30, executions_active=40,
                                       counts={"succeeded": 10_000, "failed": 12, "running": 40}),
    P.DrainNode: lambda: P.DrainNode(id=7, node_id=_NODE),
}

#: messages followed by a payload frame on the hot path: input of a call, output of a result
PAYLOAD_CARRIERS: tuple[type, ...] = (P.Invoke, P.Dispatch, P.Result)


def message_types() -> tuple[type, ...]:
    """Every member of the ``Message`` union, in declaration order."""
    return get_args(P.Message)
