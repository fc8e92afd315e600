"""The wire protocol: round trips, strict decoding and error replies."""

from __future__ import annotations

import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spear import errors
from spear import protocol as P
from spear.mesh.router import request_id_of

# ------------------------------------------------------------- one of each

NODE = P.NodeInfo(
    node_id="node-1:7701",
    name="n1",
    address="tcp://127.0.0.1:7701",
    labels={"zone": "a"},
    runtimes=["wasm", "process"],
    unavailable={"docker": "no daemon"},
    capacity=P.Capacity(cores=4.0, memory=8 << 30, disk=100 << 30),
    usage=P.Usage(cpu_percent=12.5, memory_used=1 << 30, running=2, warm=1),
    state="unhealthy",
    registered_at=1000.0,
    last_seen=1001.5,
)
SPEC = P.FunctionSpec(
    name="fn.add-1",
    runtime="wasm",
    artifact=b"\x00asm\x01\x00\x00\x00",
    handler="add",
    limits=P.Limits(timeout=5.0, memory_mb=64, fuel=10_000, network=True),
    pool=P.PoolSettings(min_warm=1, max=4, idle_ttl=30.0),
    labels={"team": "x"},
    retries=2,
    idempotent=True,
    grants=["kv"],
)
FINFO = P.FunctionInfo(name="fn", runtime="wasm", digest="sha256:ab", warm=1, busy=2, hits=3)
EXEC = P.ExecutionInfo(
    execution_id="e-1",
    function="fn",
    status="failed",
    node_id="node-1",
    error=P.ErrorInfo(code="FUNCTION_ERROR", message="trap"),
    exit_code=1,
    timings=P.Timings(queue=0.1, cold_start=0.2, run=0.3, total=0.6),
    usage=P.ExecUsage(cpu_time=0.25, peak_memory=1024, fuel=99),
    trace_id="t-1",
    submitted_at=5.0,
    finished_at=6.0,
    cold=True,
    attempts=2,
    args=[1, 2.5],
)

SAMPLES: dict[type, P._Msg] = {
    P.ErrorReply: P.ErrorReply(id=1, code="NOT_FOUND", message="no", details={"k": "v"}),
    P.Ok: P.Ok(id=2),
    P.Ping: P.Ping(id=3),
    P.Pong: P.Pong(id=4, role="sms", node_id="n", version="0.1.0"),
    P.Register: P.Register(id=5, node=NODE),
    P.Heartbeat: P.Heartbeat(id=6, node_id="node-1", usage=P.Usage(cpu_percent=1.0)),
    P.Deregister: P.Deregister(id=7, node_id="node-1"),
    P.Welcome: P.Welcome(id=8, node_id="node-1", heartbeat_interval=1.0, heartbeat_timeout=5.0),
    P.HeartbeatAck: P.HeartbeatAck(id=9, known=False),
    P.ListNodes: P.ListNodes(id=10, state="ready"),
    P.GetNode: P.GetNode(id=11, node_id="n1"),
    P.NodeList: P.NodeList(id=12, nodes=[NODE, P.NodeInfo(node_id="b")]),
    P.NodeReply: P.NodeReply(id=13, node=NODE),
    P.DeployFunction: P.DeployFunction(id=14, spec=SPEC),
    P.RemoveFunction: P.RemoveFunction(id=15, name="fn"),
    P.ListFunctions: P.ListFunctions(id=16),
    P.Invoke: P.Invoke(id=17, function="fn", args=[1, 2.5], mode="stream", timeout=3.0,
                       trace_id="t", execution_id="e"),
    P.GetExecution: P.GetExecution(id=18, execution_id="e-1", wait=2.0),
    P.CancelExecution: P.CancelExecution(id=19, execution_id="e-1"),
    P.Deployed: P.Deployed(id=20, function=FINFO),
    P.FunctionList: P.FunctionList(id=21, functions=[FINFO]),
    P.Accepted: P.Accepted(id=22, execution_id="e-1"),
    P.LogChunk: P.LogChunk(id=23, execution_id="e-1", data=b"line\n\xff", seq=7),
    P.Result: P.Result(id=24, execution=EXEC),
    P.Dispatch: P.Dispatch(id=25, execution_id="e-2", function="fn", digest="sha256:ab",
                           args=[3, -1.5], timeout=2.0, trace_id="t", stream=True),
    P.FetchFunction: P.FetchFunction(id=26, name="fn"),
    P.FunctionReply: P.FunctionReply(id=27, spec=SPEC, digest="sha256:ab"),
    P.GetFunction: P.GetFunction(id=28, name="fn"),
    P.ListExecutions: P.ListExecutions(id=29, function="fn", status="running", node_id="n",
                                       limit=10, offset=20, since=1.5, until=2.5,
                                       prefix="0190ab", cursor="1.5/x"),
    P.ExecutionList: P.ExecutionList(id=30, executions=[EXEC], total=31, next_cursor="1.5/x"),
    P.Subscribe: P.Subscribe(id=31, since=12),
    P.Unsubscribe: P.Unsubscribe(id=32),
    P.Event: P.Event(id=33, seq=4, kind="node", key="node-1", state="ready", ts=5.5,
                     detail="registered"),
    P.Stats: P.Stats(id=34, window=600.0, slices=6, function="fn"),
    P.StatsReply: P.StatsReply(id=35, nodes_ready=2, cores_total=8.0, memory_total=1 << 34,
                               cores_reserved=1.5, memory_reserved=1 << 30,
                               executions_active=3, counts={"succeeded": 10},
                               functions=[P.FunctionStat(name="fn", total=P.StatSlice(
                                   start=1.0, calls=3, errors=1, cold=1, p50=0.1, p99=0.3),
                                   active=1, slices=[P.StatSlice(start=1.0, calls=3)])]),
    P.DrainNode: P.DrainNode(id=36, node_id="node-1", drain=False),
}


def test_samples_cover_the_whole_union():
    # a new message type must get a sample here so that it is round-tripped too
    missing = set(typing.get_args(P.Message)) - set(SAMPLES)
    assert not missing, f"add a sample for {sorted(c.__name__ for c in missing)}"
    assert set(SAMPLES) <= set(typing.get_args(P.Message))


@pytest.mark.parametrize("payload", [None, b"", b"\x00\xffpayload" * 100],
                         ids=["no-payload", "empty-payload", "payload"])
@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_every_message_round_trips(cls, payload):
    msg = SAMPLES[cls]
    frames = P.encode(msg, payload)
    assert frames[0] == P.PROTOCOL
    assert len(frames) == (2 if payload is None else 3)
    out, out_payload = P.decode(frames)
    assert type(out) is cls
    assert out == msg
    assert out_payload == payload


def test_defaults_round_trip_and_are_omitted():
    out, _ = P.decode(P.encode(P.Invoke(id=1, function="f")))
    assert out == P.Invoke(id=1, function="f")
    body = msgspec.msgpack.decode(P.encode(P.Invoke(id=1, function="f"))[1])
    assert body == {"t": "Invoke", "id": 1, "function": "f"}


def test_decode_accepts_memoryview_and_bytearray_frames():
    body = P.encode(P.Ping(id=5))[1]
    out, payload = P.decode([memoryview(P.PROTOCOL), bytearray(body), memoryview(b"xy")])
    assert out == P.Ping(id=5)
    assert bytes(payload) == b"xy"


# ------------------------------------------------------------- hypothesis

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _ident(extra: str) -> st.SearchStrategy[str]:
    return st.builds(lambda a, b: a + b, st.sampled_from(_ALNUM),
                     st.text(alphabet=_ALNUM + extra, max_size=127))


names = _ident("_.-")
node_ids = _ident("_.:-")
ids = st.integers(min_value=0, max_value=2**63 - 1)
u63 = st.integers(min_value=0, max_value=2**63 - 1)
finite = st.floats(allow_nan=False)
nonneg = st.floats(min_value=0.0, allow_nan=False)
small_text = st.text(max_size=40)

usages = st.builds(
    P.Usage,
    cpu_percent=nonneg, memory_used=u63, memory_total=u63, disk_used=u63, disk_total=u63,
    net_rx=u63, net_tx=u63, load1=nonneg, running=u63, warm=u63,
)
nodes = st.builds(
    P.NodeInfo,
    node_id=node_ids,
    name=small_text,
    address=small_text,
    labels=st.dictionaries(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-/]{0,20}\Z"),
                           st.from_regex(r"\A[A-Za-z0-9_.\-/:]{0,20}\Z"), max_size=5),
    runtimes=st.lists(st.text(max_size=20), max_size=4),
    unavailable=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=3),
    capacity=st.builds(P.Capacity, cores=st.floats(0, 1e6), memory=st.integers(0, 2**48),
                       disk=st.integers(0, 2**52), slots=st.integers(0, 10**6)),
    usage=usages,
    state=st.sampled_from(typing.get_args(P.NodeState)),
    registered_at=finite,
    last_seen=finite,
)
invokes = st.builds(
    P.Invoke,
    id=ids,
    function=names,
    args=st.lists(st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), finite),
                  max_size=8),
    mode=st.sampled_from(["sync", "async", "stream"]),
    timeout=st.none() | st.floats(min_value=0.0, max_value=86400.0, exclude_min=True),
    trace_id=st.from_regex(r"\A[A-Za-z0-9._:/+=\-]{0,128}\Z"),
    execution_id=small_text,
    idempotency_key=st.from_regex(r"\A[\x21-\x7e]{0,128}\Z"),
)
heartbeats = st.builds(P.Heartbeat, id=ids, node_id=node_ids, usage=usages)
registers = st.builds(P.Register, id=ids, node=nodes)


@settings(max_examples=200, deadline=None)
@given(msg=st.one_of(invokes, heartbeats, registers),
       payload=st.none() | st.binary(max_size=256))
def test_random_valid_messages_round_trip(msg, payload):
    out, out_payload = P.decode(P.encode(msg, payload))
    assert out == msg
    assert type(out) is type(msg)
    assert out_payload == payload


# ------------------------------------------------------------- strict decode

GOOD = P.encode(P.Ping(id=42))[1]


def _body(obj) -> bytes:
    return msgspec.msgpack.encode(obj)


BAD_FRAMES = {
    "wrong-version": [b"SPEAR/1", GOOD],  # the version before this one
    "empty-version": [b"", GOOD],
    "no-frames": [],
    "one-frame": [P.PROTOCOL],
    "four-frames": [P.PROTOCOL, GOOD, b"", b""],
    "truncated-body": [P.PROTOCOL, P.encode(SAMPLES[P.Register])[1][:-3]],
    "empty-body": [P.PROTOCOL, b""],
    "trailing-bytes": [P.PROTOCOL, GOOD + b"\x00"],
    # big frames are built by the test, not held for the whole session
    "oversized-body": lambda: [P.PROTOCOL, bytes(P.MAX_BODY + 1)],
    "oversized-payload": lambda: [P.PROTOCOL, GOOD, bytes(P.MAX_PAYLOAD + 1)],
    "id-as-string": [P.PROTOCOL, _body({"t": "Ping", "id": "42"})],
    "id-as-float": [P.PROTOCOL, _body({"t": "Ping", "id": 42.0})],
    "id-as-bool": [P.PROTOCOL, _body({"t": "Ping", "id": True})],
    "missing-id": [P.PROTOCOL, _body({"t": "Ping"})],
    "unknown-tag": [P.PROTOCOL, _body({"t": "Nope", "id": 42})],
    "missing-tag": [P.PROTOCOL, _body({"id": 42})],
    "not-a-map": [P.PROTOCOL, _body([1, 2, 3])],
    "garbage": [P.PROTOCOL, b"\xc1\xc1\xc1 not msgpack"],
    "bad-node-id": [P.PROTOCOL, _body({"t": "Deregister", "id": 1, "node_id": "-bad id"})],
    "bad-enum": [P.PROTOCOL, _body({"t": "ListNodes", "id": 1, "state": "sleeping"})],
    "negative-usage": [P.PROTOCOL, _body({"t": "Heartbeat", "id": 1, "node_id": "n",
                                          "usage": {"memory_used": -1}})],
    "timeout-out-of-range": [P.PROTOCOL, _body({"t": "Invoke", "id": 1, "function": "f",
                                                "timeout": 0})],
}


@pytest.mark.parametrize("frames", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_bad_frames_raise_protocol_error(frames):
    if callable(frames):
        frames = frames()
    with pytest.raises(errors.ProtocolError) as ei:
        P.decode(frames)
    assert ei.value.code == "INVALID_ARGUMENT"
    assert isinstance(ei.value, errors.InvalidArgument)


def test_body_at_the_limit_is_checked_by_the_decoder_not_the_size_cap():
    # exactly MAX_BODY bytes passes the size check and fails on content
    with pytest.raises(errors.ProtocolError, match="undecodable|invalid"):
        P.decode([P.PROTOCOL, b"\xc1" * P.MAX_BODY])


def test_payload_at_the_limit_is_accepted():
    payload = b"\x00" * P.MAX_PAYLOAD
    msg, out = P.decode([P.PROTOCOL, GOOD, payload])
    assert msg == P.Ping(id=42)
    assert len(out) == P.MAX_PAYLOAD


def test_error_messages_say_what_was_wrong():
    with pytest.raises(errors.ProtocolError, match="2 or 3 frames, got 4"):
        P.decode(BAD_FRAMES["four-frames"])
    with pytest.raises(errors.ProtocolError, match="SPEAR/1"):
        P.decode(BAD_FRAMES["wrong-version"])
    with pytest.raises(errors.ProtocolError, match=str(P.MAX_BODY)):
        P.decode(BAD_FRAMES["oversized-body"]())
    with pytest.raises(errors.ProtocolError, match=r"\$\.id"):
        P.decode(BAD_FRAMES["id-as-string"])


@pytest.mark.parametrize("obj", [
    {"t": "Invoke", "id": 1, "function": "fn\n"},
    {"t": "Deregister", "id": 1, "node_id": "node-1\n"},
], ids=["name", "node_id"])
def test_trailing_newline_in_identifiers_is_refused(obj):
    with pytest.raises(errors.ProtocolError):
        P.decode([P.PROTOCOL, _body(obj)])


# ------------------------------------------------------------- request ids


@pytest.mark.parametrize("frames, rid", [
    ([P.PROTOCOL, _body({"t": "GetNode", "id": 77, "node_id": 5})], 77),
    ([P.PROTOCOL, _body({"t": "Nope", "id": 78})], 78),
    ([b"SPEAR/9", _body({"t": "Ping", "id": 79})], 79),
    ([P.PROTOCOL, _body({"t": "Ping", "id": 80}), b"", b"", b""], 80),
    ([P.PROTOCOL, _body({"t": "Ping", "id": "81"})], 0),
    ([P.PROTOCOL, _body({"t": "GetNode", "id": -1, "node_id": 5})], 0),
    ([P.PROTOCOL, _body({"t": "GetNode", "id": 2**64 - 1, "node_id": 5})], 0),
    ([P.PROTOCOL, _body([1, 2])], 0),
    ([P.PROTOCOL, b"\xc1garbage"], 0),
    ([P.PROTOCOL], 0),
    ([], 0),
], ids=["wrong-field-type", "unknown-tag", "wrong-version", "five-frames", "id-string",
        "id-negative", "id-too-big", "not-a-map", "garbage", "one-frame", "no-frames"])
def test_request_id_of_recovers_the_id_when_it_can(frames, rid):
    assert request_id_of(frames) == rid
    with pytest.raises(errors.ProtocolError):
        P.decode(frames)


def test_request_id_of_bool_id_gives_a_decodable_error_reply():
    rid = request_id_of([P.PROTOCOL, _body({"t": "Ping", "id": True})])
    reply, _ = P.decode(P.encode(P.ErrorReply(id=rid, code="INVALID_ARGUMENT", message="x")))
    assert reply.id == 0


# ------------------------------------------------------------- error replies


@pytest.mark.parametrize("code", errors.CODES)
def test_error_reply_round_trips_every_code(code):
    cls = errors._BY_CODE[code]
    assert cls.code == code
    exc = cls("went wrong")
    reply = P.error_reply(99, exc)
    assert reply == P.ErrorReply(id=99, code=code, message="went wrong")
    wire, _ = P.decode(P.encode(reply))
    with pytest.raises(cls) as ei:
        P.raise_for(wire)
    assert type(ei.value) is cls
    assert ei.value.code == code
    assert ei.value.message == "went wrong"


def test_codes_are_unique_and_complete():
    assert len(set(errors.CODES)) == len(errors.CODES)
    assert set(errors.CODES) == {
        "NOT_FOUND", "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "INTERNAL",
        "FUNCTION_ERROR", "CANCELLED",
    }


def test_details_survive_the_round_trip():
    wire, _ = P.decode(P.encode(P.ErrorReply(id=1, code="NOT_FOUND", message="m",
                                             details={"node": "n1"})))
    with pytest.raises(errors.NotFound) as ei:
        P.raise_for(wire)
    assert ei.value.details == {"node": "n1"}


def test_subclass_errors_travel_as_their_parent_code():
    reply = P.error_reply(3, errors.ProtocolError("bad frame"))
    assert reply.code == "INVALID_ARGUMENT"
    with pytest.raises(errors.InvalidArgument, match="bad frame"):
        P.raise_for(reply)


def test_unexpected_exceptions_become_internal():
    reply = P.error_reply(4, KeyError("boom"))
    assert reply.code == "INTERNAL"
    assert "KeyError" in reply.message
    with pytest.raises(errors.Internal):
        P.raise_for(reply)


def test_unknown_code_is_rebuilt_as_internal():
    with pytest.raises(errors.Internal, match="from the future"):
        P.raise_for(P.ErrorReply(id=1, code="SOMETHING_NEW", message="from the future"))


@pytest.mark.parametrize("cls", [c for c in SAMPLES if c is not P.ErrorReply],
                         ids=lambda c: c.__name__)
def test_raise_for_ignores_normal_replies(cls):
    assert P.raise_for(SAMPLES[cls]) is None


@pytest.mark.parametrize("bad", ["a\r\nX-Injected: 1", "a b", "x" * 129, "é"])
def test_trace_ids_are_printable_tokens(bad):
    """Issue 13: a trace id with CR/LF (or spaces, or too long) is refused on decode."""
    with pytest.raises(errors.ProtocolError, match="trace_id"):
        P.decode([P.PROTOCOL, _body({"t": "Invoke", "id": 1, "function": "f", "trace_id": bad})])
