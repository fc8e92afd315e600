"""SMSCore driven with events and a fake clock: the instructions it answers, no daemon.

Each test hands the core events and looks at the instructions; the store
requests are either answered by hand (to show the order: write, then
acknowledge) or carried out on an in-memory store by :class:`Harness`.
"""

from __future__ import annotations

from typing import Any

import pytest

from spear import protocol as P
from spear.config import SMSConfig
from spear.protocol import Capacity, NodeInfo, Usage
from spear.sms import recovery
from spear.sms.core import SMSCore
from spear.sms.events import (Commit, CommitSoon, Dropped, Load, Loaded, Persist, Persisted,
                              Received, Send, Stopping, Tick, Undelivered, Upkeep)
from spear.sms.recovery import EX_PREFIX, NODEKEY_PREFIX
from spear.store.memory import MemoryStore

T0 = 1_000_000.0
CLIENT = b"client"
KEY_A, KEY_B = "A" * 40, "B" * 40


class Harness:
    """An SMSCore over an in-memory store, carried out as the daemon does it."""

    def __init__(self, *, keyed: bool = False, store: MemoryStore | None = None,
                 now: float = T0, **config: Any) -> None:
        config.setdefault("heartbeat_timeout", 5.0)
        config.setdefault("cleanup_interval", 60.0)
        self.store = store if store is not None else MemoryStore()
        self.now = now
        self.core = SMSCore(SMSConfig(**config), recovery.read(self.store), now=now, keyed=keyed)
        self.fail_writes = ""
        self.rid = 0

    def step(self, event) -> list:
        """One event, its instructions as they are (nothing carried out)."""
        return self.core.handle(event, self.now)

    def run(self, event) -> list[Send]:
        """One event and everything it leads to; the messages sent."""
        sent: list[Send] = []
        later: list = []
        pending = [event]
        while pending or later:
            if not pending:
                pending.append(later.pop(0))
            for ins in self.core.handle(pending.pop(0), self.now):
                match ins:
                    case Persist():
                        if not self.fail_writes:
                            self.store.write_batch(ins.puts, ins.deletes, sync=ins.sync)
                        pending.append(Persisted(ins.token, self.fail_writes))
                    case Load():
                        pending.append(Loaded(ins.token, [self.store.get(k) for k in ins.keys]))
                    case CommitSoon():
                        later.append(Commit())  # after the messages of this pass
                    case Send():
                        sent.append(ins)
        return sent

    def send(self, msg, *, ident: bytes = CLIENT, key: str = "", role: str = "",
             payload: bytes | None = None) -> list[Send]:
        return self.run(Received(ident, key, role, msg, payload))

    def next_id(self) -> int:
        self.rid += 1
        return self.rid

    def register(self, node_id: str, *, ident: bytes | None = None, key: str = "",
                 proof: str = "p", **kw) -> list[Send]:
        kw.setdefault("runtimes", ["process"])
        kw.setdefault("capacity", Capacity(cores=4.0, memory=1 << 30))
        info = NodeInfo(node_id=node_id, name=kw.pop("name", node_id), **kw)
        return self.send(P.Register(id=self.next_id(), node=info, proof=proof),
                         ident=ident or node_id.encode(), key=key)

    def deploy(self, name: str = "f", **kw) -> list[Send]:
        kw.setdefault("command", ["cat"])
        return self.send(P.DeployFunction(id=self.next_id(), spec=P.FunctionSpec(
            name=name, runtime=kw.pop("runtime", "process"), **kw)))

    def invoke(self, mode: str = "async", *, key: str = "", ident: bytes = CLIENT,
               **kw) -> list[Send]:
        return self.send(P.Invoke(id=self.next_id(), function="f", mode=mode, **kw),
                         ident=ident, key=key, payload=b"in")


def only(sent: list[Send], kind: type) -> list:
    return [s for s in sent if isinstance(s.msg, kind)]


def dispatch(sent: list[Send]) -> tuple[bytes, P.Dispatch]:
    (d,) = only(sent, P.Dispatch)
    return d.ident, d.msg


@pytest.fixture
def h() -> Harness:
    """An open SMS with node n1 and function f."""
    h = Harness()
    h.register("n1")
    h.deploy("f")
    return h


# ---------------------------------------------------------------- nodes and identity


def test_register_persists_the_binding_synced_before_the_welcome():
    h = Harness(keyed=True)
    out = h.step(Received(b"r1", KEY_A, "node", P.Register(id=1, node=NodeInfo(node_id="n1"))))
    (persist,) = out  # nothing is said before the binding is on disk
    assert isinstance(persist, Persist) and persist.sync and persist.token
    assert persist.puts == ((NODEKEY_PREFIX + b"n1", KEY_A.encode()),)
    out = h.step(Persisted(persist.token))
    welcome = only(out, P.Welcome)
    assert [s.ident for s in welcome] == [b"r1"] and welcome[0].msg.session != 0
    # a node whose binding is known registers without a write
    out = h.step(Received(b"r2", KEY_A, "node", P.Register(id=2, node=NodeInfo(node_id="n1"))))
    assert not [i for i in out if isinstance(i, Persist)] and only(out, P.Welcome)


def test_a_failed_binding_write_answers_unavailable_and_admits_nobody():
    h = Harness(keyed=True)
    (persist,) = h.step(Received(b"r1", KEY_A, "node", P.Register(id=1, node=NodeInfo(node_id="n1"))))
    (reply,) = h.step(Persisted(persist.token, "OSError: disk full"))
    assert reply.msg.code == "UNAVAILABLE" and "disk full" in reply.msg.message
    assert "n1" not in h.core.registry.nodes and "n1" not in h.core.identity.key_of


def test_a_node_id_bound_to_one_key_refuses_another():
    h = Harness(keyed=True)
    h.register("n1", ident=b"r1", key=KEY_A)
    (reply,) = h.register("n1", ident=b"r2", key=KEY_B)
    assert reply.msg.code == "PERMISSION_DENIED"
    (reply,) = h.register("n2", ident=b"r1", key=KEY_A)  # one key, one node id
    assert reply.msg.code == "PERMISSION_DENIED"
    assert h.core.identity.refused == 2


def test_the_binding_survives_a_restart():
    h = Harness(keyed=True)
    h.register("n1", ident=b"r1", key=KEY_A)
    again = Harness(keyed=True, store=h.store, now=T0 + 10)
    (reply,) = again.register("n1", ident=b"r9", key=KEY_B)
    assert reply.msg.code == "PERMISSION_DENIED"


def test_open_nodes_are_bound_to_their_proof():
    h = Harness()
    assert only(h.register("n1", ident=b"r1", proof="secret"), P.Welcome)
    (reply,) = h.register("n1", ident=b"r2", proof="guess")
    assert reply.msg.code == "PERMISSION_DENIED"


def test_a_live_nodes_name_is_not_another_nodes_to_take():
    h = Harness()
    h.register("n1", name="alpha")
    (reply,) = h.register("n2", name="alpha", proof="q")
    assert reply.msg.code == "PERMISSION_DENIED" and "alpha" in reply.msg.message


def test_curve_nodes_advertise_the_key_they_spoke_with():
    h = Harness(keyed=True)
    h.send(P.Register(id=1, node=NodeInfo(node_id="n1", public_key="forged")),
           ident=b"r1", key=KEY_A)
    assert h.core.registry.nodes["n1"].public_key == KEY_A


def test_heartbeat_timeout_turns_the_node_unhealthy_and_retries_its_work():
    h = Harness()
    h.register("n1")
    h.register("n2", proof="q")
    h.deploy("f", retries=1)
    node, d = dispatch(h.invoke())
    survivor = b"n2" if node == b"n1" else b"n1"
    h.now = T0 + 2
    h.send(P.Heartbeat(id=1, node_id=survivor.decode(), usage=Usage(), running_ids=[]),
           ident=survivor)
    h.now = T0 + 6  # the other node has been silent for more than the timeout
    sent = h.run(Tick())
    assert h.core.registry.nodes[node.decode()].state == "unhealthy"
    ident, again = dispatch(sent)
    assert ident == survivor and again.execution_id == d.execution_id


def test_a_node_gone_without_retries_loses_its_executions(h):
    h.deploy("f", retries=0)
    _, d = dispatch(h.invoke())
    h.now = T0 + 6
    h.run(Tick())
    h.now = T0 + 70
    h.run(Tick())
    assert "n1" not in h.core.registry.nodes
    assert h.core.tasks.execs[d.execution_id].info.status == "lost"


def test_a_stall_unconfirms_routes_until_the_node_is_heard_again(h):
    h.now = T0 + 4
    h.run(Tick(lag=4.0))  # the SMS itself did not run for 4 s (over half the timeout)
    assert h.core.unconfirmed == {"n1": T0 + 9}
    assert h.invoke() and not h.core.tasks.by_node.get("n1")  # work waits in the queue
    assert h.core.tasks.queued == 1
    sent = h.register("n1")  # what a node that reset its link sends
    assert not h.core.unconfirmed
    assert only(sent, P.Welcome) and only(sent, P.Dispatch)


def test_a_stall_does_not_count_against_the_nodes(h):
    h.now = T0 + 8
    h.run(Tick(lag=7.0))
    assert h.core.registry.nodes["n1"].state == "ready"


def test_deregister_speaks_only_for_itself(h):
    h.register("n2", proof="q")
    (reply,) = h.send(P.Deregister(id=5, node_id="n2"), ident=b"n1")
    assert reply.msg.code == "PERMISSION_DENIED"
    (reply,) = h.send(P.Deregister(id=6, node_id="n2"), ident=b"n2")
    assert isinstance(reply.msg, P.Ok) and "n2" not in h.core.registry.nodes


# ---------------------------------------------------------------- executions


def test_async_invoke_is_acknowledged_only_after_its_synced_write(h):
    out = h.step(Received(CLIENT, "", "", P.Invoke(id=7, function="f", mode="async"), b"in"))
    assert out == [CommitSoon()]  # nothing said, nothing dispatched yet
    (persist,) = h.step(Commit())
    assert persist.sync and any(k.startswith(EX_PREFIX) for k, _ in persist.puts)
    out = h.step(Persisted(persist.token))
    (acc,) = only(out, P.Accepted)
    assert acc.ident == CLIENT and acc.msg.id == 7
    assert out.index(acc) < out.index(only(out, P.Dispatch)[0])  # acknowledged, then run


def test_one_commit_for_every_submission_of_a_pass(h):
    outs = [h.step(Received(CLIENT, "", "", P.Invoke(id=i, function="f", mode="async"), b""))
            for i in (1, 2, 3)]
    assert outs == [[CommitSoon()], [], []]
    (persist,) = h.step(Commit())
    assert len(only(h.step(Persisted(persist.token)), P.Accepted)) == 3


def test_a_failed_write_refuses_with_unavailable_and_turns_read_only(h):
    h.step(Received(CLIENT, "", "", P.Invoke(id=7, function="f", mode="async"), b"in"))
    (persist,) = h.step(Commit())
    out = h.step(Persisted(persist.token, "OSError: No space left on device"))
    (err,) = out
    assert err.msg.code == "UNAVAILABLE" and not only(out, P.Dispatch)
    assert h.core.store_error and h.core.tasks.counts["submitted"] == 0
    (err,) = h.invoke("sync")  # read-only: refused before anything is made
    assert err.msg.code == "UNAVAILABLE" and "storage is failing" in err.msg.message
    h.run(Tick(store_error=""))  # the daemon's probe write succeeded
    assert not h.core.store_error
    assert only(h.invoke(), P.Accepted)


def test_what_waited_in_memory_is_written_when_the_store_recovers(h):
    _, d = dispatch(h.invoke("sync"))
    h.fail_writes = "OSError: EIO"
    h.run(Upkeep())  # the record's write fails: kept dirty
    assert h.core.store_error and d.execution_id in h.core.tasks.dirty
    h.fail_writes = ""
    out = h.step(Tick(store_error=""))
    (persist,) = [i for i in out if isinstance(i, Persist)]
    assert persist.sync  # what was kept in memory meanwhile, synced


def test_a_forged_result_from_another_node_is_dropped(h):
    h.register("n2", proof="q")
    node, d = dispatch(h.invoke())
    other = b"n2" if node == b"n1" else b"n1"
    forged = P.Result(id=d.id, execution=P.ExecutionInfo(
        execution_id=d.execution_id, function="f", status="succeeded"))
    assert h.send(forged, ident=other) == []
    assert h.core.tasks.execs[d.execution_id].info.status == "scheduled"
    assert h.core.tasks.counts["forged_reports"] == 1
    h.send(forged, ident=node)
    assert h.core.tasks.execs[d.execution_id].info.status == "succeeded"


def test_a_result_from_no_registered_node_is_a_protocol_error(h):
    msg = P.Result(id=1, execution=P.ExecutionInfo(execution_id="x", function="f",
                                                   status="succeeded"))
    assert h.step(Received(b"stranger", "", "", msg, None)) == [Dropped()]


def test_sync_invoke_gets_the_result_with_its_output(h):
    node, d = dispatch(h.invoke("sync"))
    sent = h.send(P.Result(id=d.id, execution=P.ExecutionInfo(
        execution_id=d.execution_id, function="f", status="succeeded")),
        ident=node, payload=b"out")
    (res,) = only(sent, P.Result)
    assert res.ident == CLIENT and res.payload == b"out"


def test_an_undelivered_dispatch_spills_to_another_node(h):
    h.register("n2", proof="q")
    node, d = dispatch(h.invoke())
    ident, again = dispatch(h.run(Undelivered(d)))
    assert ident != node and again.execution_id == d.execution_id


def test_idempotency_keys_are_scoped_to_the_callers_key():
    h = Harness(keyed=True)
    h.register("n1", ident=b"r1", key=KEY_A)
    h.deploy("f")
    (a,) = only(h.invoke(key="alice", idempotency_key="K"), P.Accepted)
    (a2,) = only(h.invoke(key="alice", idempotency_key="K"), P.Accepted)
    (b,) = only(h.invoke(key="bob", idempotency_key="K"), P.Accepted)
    assert a.msg.execution_id == a2.msg.execution_id != b.msg.execution_id


def test_clients_do_not_choose_execution_ids(h):
    (err,) = h.invoke(execution_id="mine")
    assert err.msg.code == "INVALID_ARGUMENT"


def test_an_archived_execution_is_loaded_from_its_record():
    h = Harness(cache_executions=0)
    h.register("n1")
    h.deploy("f")
    node, d = dispatch(h.invoke())
    h.send(P.Result(id=d.id, execution=P.ExecutionInfo(
        execution_id=d.execution_id, function="f", status="succeeded")), ident=node,
        payload=b"kept")
    h.run(Upkeep())
    assert d.execution_id in h.core.tasks.archive
    out = h.step(Received(CLIENT, "", "", P.GetExecution(id=3, execution_id=d.execution_id), None))
    (load,) = out
    assert load.keys == (EX_PREFIX + d.execution_id.encode(),)
    (res,) = h.step(Loaded(load.token, [h.store.get(load.keys[0])]))
    assert res.msg.execution.status == "succeeded" and res.payload == b"kept"


# ---------------------------------------------------------------- functions


def test_deploy_answers_only_after_the_synced_write(h):
    spec = P.FunctionSpec(name="g", runtime="process", command=["cat"])
    (persist,) = h.step(Received(CLIENT, "", "", P.DeployFunction(id=4, spec=spec), b"art"))
    assert persist.sync and len(persist.puts) == 2  # the artifact and the spec
    assert "g" not in h.core.fns.functions
    (reply,) = h.step(Persisted(persist.token))
    assert isinstance(reply.msg, P.Deployed) and "g" in h.core.fns.functions


def test_fetch_function_is_for_registered_nodes_only(h):
    h.deploy("w", runtime="wasm", artifact=b"\0asm")
    (err,) = h.send(P.FetchFunction(id=3, name="w"), ident=b"stranger")
    assert err.msg.code == "PERMISSION_DENIED"
    (reply,) = h.send(P.FetchFunction(id=4, name="w"), ident=b"n1")
    assert reply.payload == b"\0asm" and reply.msg.spec.artifact is None


def test_get_function_redacts_env_by_role():
    h = Harness(keyed=True)
    h.deploy("f", env={"A": "1"})
    (viewer,) = h.send(P.GetFunction(id=1, name="f"), key=KEY_A, role="viewer")
    (deployer,) = h.send(P.GetFunction(id=2, name="f"), key=KEY_A, role="deployer")
    assert viewer.msg.spec.env != {"A": "1"} and deployer.msg.spec.env == {"A": "1"}


def test_stopping_writes_what_is_in_memory(h):
    dispatch(h.invoke("sync"))
    out = h.step(Stopping())
    assert [i for i in out if isinstance(i, Persist)]


def test_recovery_at_start_keeps_work_in_flight(h):
    node, d = dispatch(h.invoke())
    h.run(Stopping())
    again = Harness(store=h.store, now=T0 + 10)
    assert again.core.tasks.execs[d.execution_id].info.status == "scheduled"
    assert "n1" in again.core.registry.nodes and "f" in again.core.fns.functions


def test_an_idempotency_key_whose_execution_is_archived_is_read_back():
    h = Harness(cache_executions=0)
    h.register("n1")
    h.deploy("f")
    (acc,) = only(h.invoke(idempotency_key="K"), P.Accepted)
    eid = acc.msg.execution_id
    ex = h.core.tasks.execs[eid]
    h.send(P.Result(id=ex.dispatch_id, execution=P.ExecutionInfo(
        execution_id=eid, function="f", status="succeeded")), ident=b"n1")
    h.run(Upkeep())
    assert eid in h.core.tasks.archive
    out = h.step(Received(CLIENT, "", "", P.Invoke(id=99, function="f", mode="async",
                                                   idempotency_key="K"), b"in"))
    (load,) = out  # the first execution's record, read back
    assert isinstance(load, Load) and load.keys == (EX_PREFIX + eid.encode(),)
    (again,) = h.step(Loaded(load.token, [h.store.get(load.keys[0])]))
    assert again.msg == P.Accepted(id=99, execution_id=eid)
    assert h.core.tasks.counts["deduplicated"] == 1


# ---------------------------------------------------------------- ids by prefix

#: two ids made in the same millisecond (a shared 12-digit prefix), one later
SAME_MS = ("01900000-0000-7000-8000-00000000000a", "01900000-0000-7001-8000-00000000000b")
LATER = "01900001-0000-7000-8000-00000000000c"


@pytest.fixture
def three(h, monkeypatch):
    """``h`` with three executions of known ids: SAME_MS, then LATER."""
    monkeypatch.setattr("spear.sms.executions.new_id", iter((*SAME_MS, LATER)).__next__)
    for _ in range(3):
        h.invoke()
    assert set(h.core.tasks.execs) == {*SAME_MS, LATER}
    return h


def ask(h: Harness, eid: str) -> Send:
    (reply,) = h.send(P.GetExecution(id=h.next_id(), execution_id=eid))
    return reply


@pytest.mark.parametrize("prefix", ["01900001", "01900001-0", "0190000100", "01900001-0000-7"])
def test_a_unique_prefix_names_its_execution(three, prefix):
    assert ask(three, prefix).msg.execution.execution_id == LATER
    assert ask(three, prefix.upper()).msg.execution.execution_id == LATER


def test_a_prefix_of_several_executions_asks_for_more_characters(three):
    err = ask(three, "01900000-0000").msg
    assert err.code == "INVALID_ARGUMENT"
    assert "matches 2 executions" in err.message and "more characters" in err.message
    assert ask(three, "01900000-0000-7001").msg.execution.execution_id == SAME_MS[1]


def test_a_prefix_too_short_is_refused_and_an_unknown_one_is_not_found(three):
    err = ask(three, "0190").msg
    assert err.code == "INVALID_ARGUMENT" and "at least 8 hex digits" in err.message
    assert ask(three, "0190ffff").msg.code == "NOT_FOUND"
    assert ask(three, "01900002-0000-7000-8000-00000000000c").msg.code == "NOT_FOUND"


def test_cancel_by_prefix_cancels_the_whole_id_on_its_node(three):
    sent = three.send(P.CancelExecution(id=99, execution_id="01900001"))
    assert only(sent, P.Ok)[0].msg.id == 99
    (told,) = only(sent, P.CancelExecution)  # its node is told, under the whole id
    assert told.ident == b"n1" and told.msg.execution_id == LATER
    assert three.core.tasks.execs[LATER].cancel_at == T0
    (refused,) = three.send(P.CancelExecution(id=98, execution_id="0190000"))  # too short
    assert refused.msg.code == "INVALID_ARGUMENT"


def test_a_prefix_names_an_archived_execution_too(monkeypatch):
    h = Harness(cache_executions=0)
    h.register("n1")
    h.deploy("f")
    monkeypatch.setattr("spear.sms.executions.new_id", iter(SAME_MS).__next__)
    node, d = dispatch(h.invoke())
    h.send(P.Result(id=d.id, execution=P.ExecutionInfo(
        execution_id=d.execution_id, function="f", status="succeeded")), ident=node,
        payload=b"kept")
    h.run(Upkeep())
    assert list(h.core.tasks.archive) == [SAME_MS[0]]
    res = ask(h, "01900000-0000-7000")
    assert res.msg.execution.execution_id == SAME_MS[0] and res.payload == b"kept"
    h.invoke()  # the second, in memory: the prefix they share is now ambiguous
    assert ask(h, "01900000").msg.code == "INVALID_ARGUMENT"


# ---------------------------------------------------------------- running, and what a failure keeps


def test_a_scheduled_execution_runs_once_its_node_lists_it():
    h = Harness(cache_executions=0)
    (welcome,) = only(h.register("n1"), P.Welcome)
    h.deploy("f")
    events: list = []
    h.core.tasks.on_event = lambda *ev: events.append(ev)
    node, d = dispatch(h.invoke())
    ex = h.core.tasks.execs[d.execution_id]
    assert ex.info.status == "scheduled"
    h.now = T0 + 1
    beat = P.Heartbeat(id=1, node_id="n1", usage=Usage(), running_ids=[d.execution_id],
                       session=welcome.msg.session)
    h.send(beat, ident=node)
    assert ex.info.status == "running"
    assert ("execution", d.execution_id, "running") in [e[:3] for e in events]
    h.run(Upkeep())
    stored = h.store.get(EX_PREFIX + d.execution_id.encode())
    assert b"running" in stored  # persisted: a restarted SMS knows it runs there
    h.send(beat, ident=node)  # listed again: still running, no second event
    assert [e[2] for e in events].count("running") == 1


def test_a_failure_keeps_its_stderr_tail_and_traceback_across_the_store(h):
    node, d = dispatch(h.invoke())
    err = P.ErrorInfo(code="FUNCTION_ERROR", message="ValueError: bad input",
                      stderr_tail="x" * 100 + "boom\n",
                      traceback='  File "h.py", line 3, in f\n    raise ValueError\n')
    h.send(P.Result(id=d.id, execution=P.ExecutionInfo(
        execution_id=d.execution_id, function="f", status="failed", error=err)), ident=node)
    h.run(Upkeep())
    again = Harness(store=h.store)
    (res,) = again.step(Received(CLIENT, "", "", P.GetExecution(id=3, execution_id=d.execution_id),
                                 None))
    if isinstance(res, Load):
        (res,) = again.step(Loaded(res.token, [again.store.get(k) for k in res.keys]))
    assert res.msg.execution.status == "failed" and res.msg.execution.error == err


def test_a_node_cannot_bloat_a_record_with_a_huge_stderr_tail():
    err = {"code": "FUNCTION_ERROR", "message": "m", "stderr_tail": "x" * 5000}
    body = P.msgspec.msgpack.encode({"t": "Result", "id": 1, "execution": {
        "execution_id": "e", "function": "f", "status": "failed", "error": err}})
    with pytest.raises(P.errors.ProtocolError):
        P.decode([P.PROTOCOL, body])
