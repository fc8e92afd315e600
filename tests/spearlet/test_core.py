"""SpearletCore: events in, instructions out, with a fake clock.

No daemon, no sockets, no sleep: every test feeds events to the core and
checks the instructions it returns and the state it keeps.
"""

from __future__ import annotations

import pytest

from spear import errors, protocol as P
from spear.spearlet import core as C, events as E

from .conftest import ADD, T0, dispatch, finish, invoke, only

# ---------------------------------------------------------------- admission


def test_an_admitted_dispatch_starts_on_the_runtime_with_the_function_limits(core):
    out = dispatch(core, "e1", timeout=3.0, args=[1, 2])
    start = only(out, E.Start)
    assert (start.execution_id, start.function, start.args) == ("e1", "add", [1, 2])
    assert start.limits == P.Limits(timeout=3.0)  # the dispatch's timeout over the spec's
    assert start.inline and not start.stream  # the version is current: may answer at once
    assert core.running == 1 and core.dispatched == {"e1"}


def test_an_admitted_invocation_starts_with_the_spec_limits(core):
    start = only(invoke(core, "sync"), E.Start)
    assert start.limits == ADD.limits and start.inline and start.data == b"in"
    assert core.running == 1


def test_async_invocation_is_accepted_then_started(core):
    accepted, start = invoke(core, "async")
    assert isinstance(accepted, E.Reply) and accepted.ident == b"cli"
    assert accepted.msg == P.Accepted(id=7, execution_id=start.execution_id)
    assert not start.inline
    assert core.info(start.execution_id).status == "running"


def test_stream_invocation_never_runs_inline(core):
    start = only(invoke(core, "stream"), E.Start)
    assert start.stream and not start.inline


def test_over_max_concurrency_both_paths_are_refused_resource_exhausted(core, metrics):
    invoke(core, "async")
    dispatch(core, "e1")
    assert core.running == 2  # the node's maximum
    reply = only(invoke(core, "sync"), E.Reply)
    assert reply.msg.code == "RESOURCE_EXHAUSTED" and reply.msg.id == 7
    sent = only(dispatch(core, "e2", id=11), E.ToSMS)
    assert sent.msg.code == "RESOURCE_EXHAUSTED" and sent.msg.id == 11
    assert metrics.refused == ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    assert core.running == 2 and "e2" not in core.executions and "e2" not in core.dispatched


def test_a_draining_node_refuses_unavailable_on_both_paths(core, metrics):
    assert core.handle(E.Drain(), T0) == []
    assert only(invoke(core), E.Reply).msg.code == "UNAVAILABLE"
    assert only(dispatch(core), E.ToSMS).msg.code == "UNAVAILABLE"
    assert metrics.refused == ["UNAVAILABLE", "UNAVAILABLE"] and core.running == 0


def test_a_timeout_above_the_node_maximum_is_refused_on_both_paths(core):
    reply = only(invoke(core, timeout=61.0), E.Reply)
    assert reply.msg.code == "INVALID_ARGUMENT" and "timeout = 61" in reply.msg.message
    sent = only(dispatch(core, timeout=61.0), E.ToSMS)
    assert sent.msg.code == "INVALID_ARGUMENT" and "maximum of 60s" in sent.msg.message
    assert core.running == 0
    only(invoke(core, timeout=60.0), E.Start)  # at the maximum: fine


@pytest.mark.parametrize("limits, field", [
    (P.Limits(timeout=61.0), "limits.timeout"),
    (P.Limits(memory_mb=513), "limits.memory_mb"),
    (P.Limits(cpus=2.5), "limits.cpus"),
    (P.Limits(max_output_mb=9), "limits.max_output_mb"),
])
def test_a_spec_above_the_node_maxima_is_refused(core, limits, field):
    spec = P.FunctionSpec(name="big", runtime="wasm", limits=limits)
    with pytest.raises(errors.InvalidArgument, match=field):
        core.check_spec(spec)


def test_a_spec_within_the_maxima_passes_and_other_spec_rules_hold(core):
    core.check_spec(P.FunctionSpec(name="ok", runtime="wasm", artifact=b"w", limits=P.Limits(
        timeout=60.0, memory_mb=512, cpus=2.0, max_output_mb=8)))
    with pytest.raises(errors.InvalidArgument, match="min_warm"):
        core.check_spec(P.FunctionSpec(name="p", runtime="wasm", artifact=b"w",
                                       pool=P.PoolSettings(min_warm=3, max=2)))
    with pytest.raises(errors.InvalidArgument, match="secret_env"):
        core.check_spec(P.FunctionSpec(name="s", runtime="wasm", artifact=b"w", secret_env=["KEY"]))


def test_a_node_without_maxima_grants_any_limits():
    c = C.SpearletCore("n")
    c.check_spec(P.FunctionSpec(name="big", runtime="wasm", artifact=b"w",
                                limits=P.Limits(timeout=86400, memory_mb=1 << 20, cpus=1024)))


def test_a_client_never_chooses_the_execution_id(core):
    """An id the SMS dispatched here: a client naming it would pose as that execution."""
    dispatch(core, "e1")
    finish(core, "e1", inline=False)
    before = core.info("e1")
    reply = only(invoke(core, "async", execution_id="e1"), E.Reply)
    assert reply.msg.code == "INVALID_ARGUMENT" and "execution ids" in reply.msg.message
    assert core.info("e1") == before and core.running == 0
    # a fresh id is refused too: the rule is about choosing, not about clashing
    assert only(invoke(core, execution_id="fresh"), E.Reply).msg.code == "INVALID_ARGUMENT"


def test_a_function_not_deployed_is_not_found_directly_but_fetched_for_the_sms(core):
    assert only(invoke(core, function="nope"), E.Reply).msg.code == "NOT_FOUND"
    ensure = only(dispatch(core, "e1", function="nope", digest="d9"), E.Ensure)
    assert (ensure.execution_id, ensure.function, ensure.digest) == ("e1", "nope", "d9")
    assert core.running == 1 and core.dispatched == {"e1"}


# ---------------------------------------------------------------- fetching a function


def test_a_dispatch_of_another_version_starts_once_it_is_ensured(core):
    only(dispatch(core, "e1", digest="d2", timeout=2.0), E.Ensure)
    assert core.handle(E.Deployed(ADD, "sha-add2", "d2"), T0) == []
    start = only(core.handle(E.Ensured("e1"), T0), E.Start)
    assert not start.inline and start.limits.timeout == 2.0 and start.data == b"in"
    assert core.handle(E.Ensured("e1"), T0) == []  # once


def test_a_failed_fetch_answers_the_sms_and_gives_the_slot_back(core, metrics):
    dispatch(core, "e1", digest="d2", id=12)
    sent = only(core.handle(E.Ensured("e1", errors.PermissionDenied("no grant")), T0), E.ToSMS)
    assert sent.msg == P.ErrorReply(id=12, code="PERMISSION_DENIED",
                                    message="deploy failed: no grant")
    assert core.running == 0 and not core.dispatched and "e1" not in core.executions
    assert not core.counts and not metrics.finished  # never ran: nothing accounted
    assert len(core.results) == 0


# ---------------------------------------------------------------- outcomes and results


def test_an_outcome_goes_to_the_sms_and_is_kept_until_acked(core):
    dispatch(core, "e1", id=9)
    sent = only(finish(core, "e1", now=T0 + 2, inline=True, run=0.5, total=0.5), E.ToSMS)
    assert isinstance(sent.msg, P.Result) and sent.msg.id == 9 and sent.payload == b"out"
    info = sent.msg.execution
    assert (info.execution_id, info.status, info.node_id) == ("e1", "succeeded", "n1")
    assert info.finished_at == T0 + 2 and info.submitted_at == T0 + 1.5  # from ``now`` only
    assert core.running == 0 and not core.dispatched
    assert "e1" not in core.executions  # answered inline: no record
    assert "e1" in core.results

    hb = only(core.handle(E.HeartbeatDue(41, P.Usage(running=0)), T0 + 3), E.SendHeartbeat)
    assert hb.msg.finished == ["e1"] and hb.msg.id == 41 and hb.msg.node_id == "n1"
    again = core.handle(E.HeartbeatAcked(P.HeartbeatAck(id=41, resend=["e1"]), hb.session,
                                         hb.seq), T0 + 3)
    assert [i.msg for i in again] == [sent.msg]  # the very same Result, sent again
    core.handle(E.HeartbeatAcked(P.HeartbeatAck(id=41, acked=["e1"]), hb.session, hb.seq),
                T0 + 4)
    assert len(core.results) == 0
    assert only(core.handle(E.HeartbeatDue(42, P.Usage()), T0 + 5),
                E.SendHeartbeat).msg.finished == []


def test_a_result_sent_after_the_heartbeat_is_not_resent_by_its_ack(core):
    hb = only(core.handle(E.HeartbeatDue(1, P.Usage()), T0), E.SendHeartbeat)
    dispatch(core, "late")
    finish(core, "late", inline=True)
    ack = P.HeartbeatAck(id=1, resend=["late"])
    assert core.handle(E.HeartbeatAcked(ack, hb.session, hb.seq), T0) == []


def test_heartbeats_carry_the_session_and_running_sms_executions(core):
    core.handle(E.Welcomed(101), T0)
    dispatch(core, "e1", digest="d2")  # still fetching: running here all the same
    hb = only(core.handle(E.HeartbeatDue(1, P.Usage()), T0), E.SendHeartbeat)
    assert hb.msg.session == hb.session == 101 and hb.msg.running_ids == ["e1"]
    # an ack of an earlier session changes nothing; an unknown session: register again
    assert core.handle(E.HeartbeatAcked(P.HeartbeatAck(id=1, known=False), 100, hb.seq),
                       T0) == []
    out = core.handle(E.HeartbeatAcked(P.HeartbeatAck(id=1, known=False), 101, hb.seq), T0)
    assert [type(i) for i in out] == [E.Reregister]


def test_a_repeated_dispatch_reports_what_the_node_has_and_never_runs_twice(core):
    dispatch(core, "e1")
    assert dispatch(core, "e1", id=10) == []  # still running: its Result will come
    finish(core, "e1", inline=False)
    sent = only(dispatch(core, "e1", id=11), E.ToSMS)
    assert sent.msg.id == 11 and sent.msg.execution.execution_id == "e1"
    assert sent.payload == b"out" and core.running == 0


def test_direct_sync_and_stream_answer_the_client_async_keeps_the_record(core):
    start = only(invoke(core, "sync", id=3), E.Start)
    reply = only(finish(core, start.execution_id, inline=True), E.Reply)
    assert reply.ident == b"cli" and reply.msg.id == 3 and reply.payload == b"out"
    assert start.execution_id not in core.executions

    _, start = invoke(core, "async")
    assert finish(core, start.execution_id) == []  # the client asks for it
    asked = core.handle(E.Asked(b"other", P.GetExecution(id=5, execution_id=start.execution_id)),
                        T0)
    assert only(asked, E.Reply).msg.execution.status == "succeeded"
    assert only(asked, E.Reply).payload == b"out"


def test_a_log_chunk_goes_to_whoever_runs_the_execution_in_order(core):
    start = only(invoke(core, "stream", id=4), E.Start)
    eid = start.execution_id
    chunks = [only(core.handle(E.Logged(eid, b"l%d" % i), T0), E.Reply).msg for i in (1, 2)]
    assert [(c.id, c.seq, c.data) for c in chunks] == [(4, 1, b"l1"), (4, 2, b"l2")]
    dispatch(core, "e1", stream=True, id=8)
    sent = only(core.handle(E.Logged("e1", b"x"), T0), E.ToSMS)
    assert (sent.msg.id, sent.msg.execution_id, sent.msg.seq) == (8, "e1", 1)
    finish(core, eid)
    assert core.handle(E.Logged(eid, b"late"), T0) == []


def test_get_execution_waits_for_a_running_one(core):
    _, start = invoke(core, "async")
    ask = E.Asked(b"c2", P.GetExecution(id=6, execution_id=start.execution_id, wait=2.0))
    wait = only(core.handle(ask, T0), E.Wait)
    assert wait.msg.wait == 2.0
    no_wait = P.GetExecution(id=6, execution_id=start.execution_id)
    assert only(core.handle(E.Asked(b"c2", no_wait), T0), E.Reply).msg.execution.status \
        == "running"
    missing = core.handle(E.Asked(b"c2", P.GetExecution(id=6, execution_id="nope")), T0)
    assert only(missing, E.Reply).msg.code == "NOT_FOUND"


# ---------------------------------------------------------------- cancel


def test_cancel_from_a_client(core):
    _, start = invoke(core, "async")
    eid = start.execution_id
    out = core.handle(E.CancelAsked(P.CancelExecution(id=2, execution_id=eid), b"c"), T0)
    assert out == [E.Cancel(eid), E.Reply(b"c", P.Ok(id=2))]
    finish(core, eid, "cancelled", output=b"")
    again = core.handle(E.CancelAsked(P.CancelExecution(id=3, execution_id=eid), b"c"), T0)
    assert only(again, E.Reply).msg.code == "INVALID_ARGUMENT"  # already finished
    unknown = core.handle(E.CancelAsked(P.CancelExecution(id=4, execution_id="x"), b"c"), T0)
    assert only(unknown, E.Reply).msg.code == "NOT_FOUND"


def test_cancel_from_the_sms_is_quiet(core):
    dispatch(core, "e1")
    assert core.handle(E.CancelAsked(P.CancelExecution(id=0, execution_id="e1")), T0) \
        == [E.Cancel("e1")]
    assert core.handle(E.CancelAsked(P.CancelExecution(id=0, execution_id="zz")), T0) == []


def test_an_sms_execution_cancelled_by_the_node_stopping_is_handed_back(core):
    dispatch(core, "e1", id=9)
    core.handle(E.Drain(), T0)
    sent = only(finish(core, "e1", "cancelled", output=b""), E.ToSMS)
    assert sent.msg == P.ErrorReply(id=9, code="UNAVAILABLE",
                                    message="node n1 stopped before it finished",
                                    details={"started": "1"})
    assert len(core.results) == 0  # not a result: the SMS runs it elsewhere


# ---------------------------------------------------------------- accounting


def test_every_end_is_accounted_once_whichever_path_it_took(core, metrics):
    start = only(invoke(core, "sync"), E.Start)
    finish(core, start.execution_id, inline=True, run=0.25, total=0.25)
    _, start2 = invoke(core, "async")
    finish(core, start2.execution_id, "failed",
           error=P.ErrorInfo(code="FUNCTION_ERROR", message="x"), queue=0.1, cold=0.2, run=0.3,
           total=0.6)
    dispatch(core, "e1")
    finish(core, "e1", "timed_out", inline=False)
    assert finish(core, "e1") == []  # a second end of the same execution changes nothing
    assert core.counts == {"succeeded": 1, "failed": 1, "timed_out": 1}
    assert core.functions["add"].invocations == 3
    assert core.running == 0
    assert [m[2] for m in metrics.finished] == ["succeeded", "failed", "timed_out"]
    assert metrics.finished[1] == ("add", "wasm", "failed", 0.1, 0.2, 0.3, 0.6, "FUNCTION_ERROR")
    info = core.info(start2.execution_id)
    assert info.cold and info.timings == P.Timings(queue=0.1, cold_start=0.2, run=0.3, total=0.6)


def test_records_are_bounded_but_a_running_one_is_never_forgotten(metrics):
    c = C.SpearletCore("n", max_concurrency=100, keep_executions=2)
    c.handle(E.Deployed(ADD, "sha"), T0)
    ids = [invoke(c, "async")[1].execution_id for _ in range(3)]
    assert list(c.executions) == ids  # all running: all kept
    for eid in ids:
        finish(c, eid)
    newest = invoke(c, "async")[1].execution_id
    assert list(c.executions) == [ids[2], newest]


# ---------------------------------------------------------------- functions


def test_remove(core):
    out = core.handle(E.RemoveAsked("add", b"c", 5), T0)
    assert out == [E.Remove("add", b"c", 5)] and "add" not in core.functions
    again = core.handle(E.RemoveAsked("add", b"c", 6), T0)
    assert only(again, E.Reply).msg.code == "NOT_FOUND"
    assert core.handle(E.RemoveAsked("add"), T0) == []  # from the SMS: quietly
    assert only(invoke(core), E.Reply).msg.code == "NOT_FOUND"


def test_a_redeploy_of_another_version_makes_dispatches_fetch(core):
    assert only(dispatch(core, "e1", digest="d1"), E.Start).inline
    core.handle(E.Deployed(ADD, "sha-local", ""), T0)  # a client deployed its own version
    only(dispatch(core, "e2", digest="d1"), E.Ensure)


# ---------------------------------------------------------------- ids by prefix

#: two ids made in the same millisecond (a shared 12-digit prefix), one later
SAME_MS = ("01900000-0000-7000-8000-00000000000a", "01900000-0000-7001-8000-00000000000b")
LATER = "01900001-0000-7000-8000-00000000000c"


@pytest.fixture
def three(core):
    """``core`` holding SAME_MS (the first finished) and LATER (running)."""
    dispatch(core, SAME_MS[0])
    dispatch(core, SAME_MS[1])
    finish(core, SAME_MS[0])
    finish(core, SAME_MS[1])
    dispatch(core, LATER)
    return core


def asked(core, eid: str, wait: float = 0.0) -> list:
    return core.handle(E.Asked(b"c", P.GetExecution(id=5, execution_id=eid, wait=wait)), T0 + 1)


def test_a_node_takes_whole_ids_only(three):
    """Nobody can list a node's direct executions, so their ids are capabilities:
    a prefix (its first digits are a time window) must not find one there."""
    assert only(asked(three, LATER), E.Reply).msg.execution.execution_id == LATER
    for prefix in ("01900001", "01900001-00", "0190000100", "01900000-0000-7001", "0190"):
        err = only(asked(three, prefix), E.Reply).msg
        assert err.code == "INVALID_ARGUMENT" and "whole execution ids" in err.message, prefix
    assert only(asked(three, "01900001-0000-7000-8000-0000000000ff"), E.Reply).msg.code == "NOT_FOUND"
    assert only(asked(three, "no-such-id"), E.Reply).msg.code == "NOT_FOUND"
    with pytest.raises(errors.InvalidArgument):
        three.info("01900001-0000")


def test_cancel_takes_whole_ids_only(three):
    out = three.handle(E.CancelAsked(P.CancelExecution(id=2, execution_id=LATER), b"c"), T0)
    assert out == [E.Cancel(LATER), E.Reply(b"c", P.Ok(id=2))]
    out = three.handle(E.CancelAsked(P.CancelExecution(id=3, execution_id="01900001"), b"c"), T0)
    assert only(out, E.Reply).msg.code == "INVALID_ARGUMENT"


def test_a_failed_execution_keeps_its_stderr_tail_and_traceback(core):
    start = only(invoke(core, "async"), E.Start)
    assert core.info(start.execution_id).status == "running"  # started: running, not pending
    err = P.ErrorInfo(code="FUNCTION_ERROR", message="ValueError: bad", stderr_tail="oops\n",
                      traceback='  File "h.py", line 2, in f\n    raise ValueError("bad")\n')
    finish(core, start.execution_id, "failed", error=err, output=b"")
    info = core.info(start.execution_id)
    assert info.status == "failed" and info.error == err
    dispatch(core, "e2", stream=True)  # the SMS path: the Result carries them too
    sent = only(finish(core, "e2", "failed", error=err, output=b""), E.ToSMS)
    assert sent.msg.execution.error == err



# ---------------------------------------------------------------- outputs kept

BIG = b"x" * (C.KEEP_OUTPUT + 1)


def test_a_delivered_big_output_is_not_kept_with_the_record(core):
    """Ten thousand records of 64 MiB outputs would hold the node's memory: once
    delivered (to the SMS, or to the client that waited), a big output goes."""
    dispatch(core, "e1")
    sent = only(finish(core, "e1", output=BIG), E.ToSMS)
    assert sent.payload == BIG  # the SMS gets it (and the result buffer keeps it until acked)
    assert core.executions["e1"].output == b""
    start = only(invoke(core, "sync", execution_id=""), E.Start)
    reply = only(finish(core, start.execution_id, output=BIG), E.Reply)
    assert reply.payload == BIG
    small = only(invoke(core, "sync"), E.Start)
    finish(core, small.execution_id, output=b"small")
    assert core.executions[small.execution_id].output == b"small"  # small ones stay readable


def test_an_unread_big_async_output_is_kept_until_read_within_a_byte_budget(core, monkeypatch):
    monkeypatch.setattr(C, "KEEP_UNREAD_BYTES", 2 * len(BIG))
    ids = []
    for _ in range(3):
        _, start = invoke(core, "async")
        finish(core, start.execution_id, output=BIG)
        ids.append(start.execution_id)
    # the oldest went over the budget: dropped; the two newest wait for their reader
    assert [core.executions[i].output == BIG for i in ids] == [False, True, True]
    asked = core.handle(E.Asked(b"cli", P.GetExecution(id=3, execution_id=ids[1])), T0 + 2)
    assert only(asked, E.Reply).payload == BIG
    assert core.executions[ids[1]].output == b""  # delivered now
    assert core.unread_bytes == len(BIG)
