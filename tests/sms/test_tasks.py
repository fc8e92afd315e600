"""Executions and functions of the SMS core: a fake outbox and a fake clock, no sleeps.

The store requests the core yields (``Persist``, ``Load``) are carried out on a
real in-memory or LevelDB store, as the daemon does (see conftest.drive).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest

from spear import errors
from spear import protocol as P
from spear.protocol import TERMINAL, Capacity, NodeInfo
from spear.sms import recovery
from spear.sms.executions import Executions
from spear.sms.functions import FunctionRegistry
from spear.sms.records import MiB, TaskSettings
from spear.sms.recovery import ART_PREFIX, EX_PREFIX, FN_PREFIX
from spear.sms.scheduler import NodeTable
from spear.store import open_store
from spear.store.memory import MemoryStore

from .conftest import drive

GiB = 1 << 30
T0 = 1_000_000.0
CLIENT = b"client-1"
OTHER = b"client-2"


# ---------------------------------------------------------------- fakes and helpers


class FakeOutbox:
    """Records every message as (kind, target, msg, payload); ``down`` nodes refuse sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any, bytes | None]] = []
        self.down: set[str] = set()

    def to_node(self, node_id: str, msg: Any, payload: bytes | None = None) -> bool:
        self.sent.append(("node", node_id, msg, payload))
        return node_id not in self.down

    def to_client(self, ident: bytes, msg: Any, payload: bytes | None = None) -> bool:
        self.sent.append(("client", ident, msg, payload))
        return True

    def node_msgs(self, kind=None, node=None) -> list[tuple[str, Any, bytes | None]]:
        return [(t, m, p) for k, t, m, p in self.sent
                if k == "node" and (kind is None or isinstance(m, kind))
                and (node is None or t == node)]

    def client_msgs(self, ident=None, kind=None) -> list[tuple[Any, bytes | None]]:
        return [(m, p) for k, t, m, p in self.sent
                if k == "client" and (ident is None or t == ident)
                and (kind is None or isinstance(m, kind))]

    def dispatches(self, eid=None) -> list[tuple[str, P.Dispatch, bytes | None]]:
        return [(t, m, p) for t, m, p in self.node_msgs(P.Dispatch)
                if eid is None or m.execution_id == eid]


def node(node_id: str, *, cores: float = 4.0, memory: int = 4 * GiB, slots: int = 0,
         runtimes=("process",), labels=None, state: str = "ready") -> NodeInfo:
    return NodeInfo(node_id=node_id, runtimes=list(runtimes), labels=dict(labels or {}),
                    capacity=Capacity(cores=cores, memory=memory, slots=slots), state=state)


def fspec(name: str = "f", *, runtime: str = "process", cpus: float | None = 1.0,
          memory_mb: int | None = 64, timeout: float | None = None, **kw) -> P.FunctionSpec:
    kw.setdefault("command", ["cat"])
    return P.FunctionSpec(name=name, runtime=runtime,
                          limits=P.Limits(cpus=cpus, memory_mb=memory_mb, timeout=timeout), **kw)


class Driven:
    """The executions and the function registry as one object whose store requests
    are carried out at once (what the core and its daemon do together)."""

    #: old names of the function registry's calls
    FUNCTIONS = {"register_function": "register", "remove_function": "remove",
                 "get_function": "get", "list_functions": "list", "full_spec": "full_spec"}

    def __init__(self, cluster: "Cluster", execs: Executions, fns: FunctionRegistry) -> None:
        object.__setattr__(self, "_c", cluster)
        object.__setattr__(self, "_execs", execs)
        object.__setattr__(self, "_fns", fns)

    def __getattr__(self, name: str):
        if name in self.FUNCTIONS:
            attr = getattr(self._fns, self.FUNCTIONS[name])
        else:
            attr = getattr(self._execs, name)
        if not callable(attr):
            return attr

        def call(*args, **kw):
            self._c.probed()
            return self._c.run(attr(*args, **kw))
        return call


class Cluster:
    """Executions over a NodeTable, a fake outbox, a fake clock and a real store."""

    def __init__(self, store, *, settings: TaskSettings | None = None, now: float = T0):
        self.store = store
        self.table = NodeTable()
        self.out = FakeOutbox()
        self.now = now
        self.events: list[tuple] = []
        self.settings = settings
        self.check_invariants = True
        rec = recovery.read(store)
        on_event = lambda *a: self.events.append(a)  # noqa: E731
        self.fns = FunctionRegistry(self.table, rec.functions, on_event=on_event)
        self.execs = Executions(self.table, self.fns, self.out, now=now, settings=settings,
                                on_event=on_event, records=rec.executions, counts=rec.counts)
        self.svc = Driven(self, self.execs, self.fns)
        self._rid = 100

    def probed(self) -> None:
        """A store that is healthy again (probed) makes the executions writable,
        as the daemon's ticks report it."""
        self.execs.store_error = getattr(self.store, "error", "")

    def run(self, gen):
        """Carry out a core call's store requests; a failed write makes the
        executions read-only."""
        def failed(error: str) -> None:
            self.execs.store_error = error
        return drive(gen, self.store, failed)

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    def add_node(self, node_id: str, **kw) -> None:
        self.table.upsert(node(node_id, **kw))

    def deploy(self, name: str = "f", **kw) -> P.FunctionInfo:
        return self.svc.register_function(fspec(name, **kw), self.now)

    def submit(self, eid: str, fn: str = "f", *, payload: bytes | None = b"input",
               mode: str = "sync", client: bytes = CLIENT, rid: int | None = None, **kw):
        msg = P.Invoke(id=rid if rid is not None else self.rid(), function=fn, mode=mode, **kw)
        reply = self.svc.submit(client, msg, payload, self.now, eid=eid)
        if mode == "async" and reply is None and self.svc.unacked:
            # the daemon commits after each loop pass: persist, acknowledge, dispatch
            self.svc.commit(self.now)
            acks = [m for m, _ in self.out.client_msgs(client)
                    if getattr(m, "id", None) == msg.id]
            return acks[-1] if acks else None
        return reply

    def ex(self, eid: str):
        return self.svc.get(eid)

    def status(self, eid: str) -> str:
        return self.svc.get(eid).info.status

    def last_dispatch(self, eid: str) -> tuple[str, P.Dispatch, bytes | None]:
        ds = self.out.dispatches(eid)
        assert ds, f"{eid} was never dispatched"
        return ds[-1]

    def result(self, node_id: str, eid: str, status: str = "succeeded",
               payload: bytes | None = b"output", error: P.ErrorInfo | None = None) -> None:
        ds = [m for t, m, _ in self.out.dispatches(eid) if t == node_id]
        did = ds[-1].id if ds else 0
        info = P.ExecutionInfo(execution_id=eid, function=self.ex(eid).info.function
                               if eid in self.svc.execs else "f",
                               status=status, node_id=node_id, error=error, exit_code=0)
        self.svc.on_result(node_id, P.Result(id=did, execution=info), payload, self.now)

    def refuse(self, node_id: str, eid: str, code: str = "RESOURCE_EXHAUSTED",
               message: str = "full") -> None:
        ds = [m for t, m, _ in self.out.dispatches(eid) if t == node_id]
        self.svc.on_dispatch_error(node_id, P.ErrorReply(id=ds[-1].id, code=code,
                                                         message=message), self.now)

    def tick(self, now: float) -> None:
        self.now = now
        self.svc.tick(now)

    def results_for(self, client: bytes = CLIENT) -> list[tuple[P.Result, bytes | None]]:
        return self.out.client_msgs(client, P.Result)

    def stored_record(self, eid: str):
        raw = self.store.get(EX_PREFIX + eid.encode())
        return None if raw is None else msgspec.msgpack.decode(raw)

    def assert_invariants(self) -> None:
        svc, table = self.svc, self.table
        for n, eids in svc.by_node.items():
            for eid in eids:
                ex = svc.execs.get(eid)
                assert ex is not None, f"{eid} in by_node[{n}] but unknown"
                assert ex.info.status not in TERMINAL, f"terminal {eid} still on {n}"
                assert ex.node == n
        # what the table holds is exactly what the live executions reserved
        held: dict[str, list[float]] = {}
        for ex in svc.execs.values():
            if ex.node:
                assert ex.info.status not in TERMINAL
                h = held.setdefault(ex.node, [0.0, 0.0])
                h[0] += ex.reserved[0]
                h[1] += ex.reserved[1]
        for n, (cpu, mem) in table.reserved.items():
            assert cpu == pytest.approx(held.get(n, [0.0, 0.0])[0], abs=1e-6), n
            assert mem == pytest.approx(held.get(n, [0.0, 0.0])[1], abs=1e-2), n
        if all(ex.info.status in TERMINAL for ex in svc.execs.values()):
            assert table.total_reserved() == (0.0, 0.0)
            assert all(v == 0 for v in table.running.values()), table.running
            assert not any(svc.by_node.values())


@pytest.fixture
def make():
    """``make(store=None, **settings)`` builds a Cluster; invariants are checked at teardown."""
    made: list[Cluster] = []

    def build(store=None, now: float = T0, **settings) -> Cluster:
        # no start-up grace unless a test asks: most tests want "no node" to fail at once
        settings.setdefault("startup_grace", 0.0)
        c = Cluster(store if store is not None else MemoryStore(),
                    settings=TaskSettings(**settings), now=now)
        made.append(c)
        return c

    yield build
    for c in made:
        if c.check_invariants:
            c.assert_invariants()


@pytest.fixture
def c(make) -> Cluster:
    """One node n1 (4 cores, 4 GiB) and function f (1 core, 64 MiB)."""
    cl = make()
    cl.add_node("n1")
    cl.deploy("f")
    return cl


def reopen(path):
    return open_store("leveldb", str(path))


# ---------------------------------------------------------------- functions


def test_artifact_is_stored_once_by_sha256(make):
    cl = make()
    art = b"\0asm fake module bytes" * 100
    a = cl.svc.register_function(fspec("a", runtime="wasm", artifact=art, command=[]), T0)
    b = cl.svc.register_function(fspec("b", runtime="wasm", artifact=art, command=[]), T0)
    keys = [k for k, _ in cl.store.scan(ART_PREFIX)]
    assert keys == [ART_PREFIX + hashlib.sha256(art).hexdigest().encode()]
    assert cl.store.get(keys[0]) == art
    fa, fb = cl.svc.get_function("a"), cl.svc.get_function("b")
    assert fa.artifact_digest == fb.artifact_digest == hashlib.sha256(art).hexdigest()
    # the function records do not carry the bytes
    assert fa.spec.artifact is None and fb.spec.artifact is None
    for k, raw in cl.store.scan(FN_PREFIX):
        assert art not in raw
    assert a.digest != b.digest  # names differ, so whole specs differ
    assert [f.name for f in cl.svc.list_functions()] == ["a", "b"]


def test_update_changes_digest_and_keeps_created_at(make):
    cl = make()
    d1 = cl.svc.register_function(fspec("f", handler="a"), T0).digest
    assert cl.svc.register_function(fspec("f", handler="a"), T0 + 1).digest == d1  # idempotent
    d2 = cl.svc.register_function(fspec("f", handler="b"), T0 + 2).digest
    assert d2 != d1
    fn = cl.svc.get_function("f")
    assert fn.digest == d2
    assert fn.created_at == T0 and fn.updated_at == T0 + 2
    d3 = cl.svc.register_function(fspec("f", handler="b", artifact=b"v2"), T0 + 3).digest
    assert d3 not in (d1, d2)
    d4 = cl.svc.register_function(fspec("f", handler="b", artifact=b"v3"), T0 + 4).digest
    assert d4 != d3  # the artifact's content is part of the digest
    # v2 is used by no function any more: deleted in the same write
    assert [v for _, v in cl.store.scan(ART_PREFIX)] == [b"v3"]


def test_an_artifact_is_stored_once_and_deleted_with_its_last_function(make):
    cl = make()
    sha = hashlib.sha256(b"code").hexdigest()
    cl.svc.register_function(fspec("a", handler="m:f", artifact=b"code"), T0)
    cl.svc.register_function(fspec("b", handler="m:f", artifact=b"code"), T0)
    assert [v for _, v in cl.store.scan(ART_PREFIX)] == [b"code"]
    assert cl.fns.get("a").spec.artifact_sha256 == sha  # stored specs name their artifact
    cl.svc.remove_function("a", T0 + 1)
    assert len(list(cl.store.scan(ART_PREFIX))) == 1  # b still uses it
    cl.svc.remove_function("b", T0 + 2)
    assert list(cl.store.scan(ART_PREFIX)) == [] and cl.fns.artifacts == {}


def test_a_deploy_may_name_a_stored_artifact_by_its_sha256_alone(make):
    cl = make()
    sha = hashlib.sha256(b"bundle").hexdigest()
    by_ref = fspec("b", handler="m:f", artifact_sha256=sha)
    with pytest.raises(errors.NotFound, match=sha):
        cl.svc.register_function(by_ref, T0)
    cl.svc.register_function(fspec("a", handler="m:f", artifact=b"bundle"), T0)
    info = cl.svc.register_function(by_ref, T0 + 1)
    assert cl.fns.get("b").artifact_digest == sha and cl.fns.get("b").artifact_size == 6
    assert info.digest == cl.fns.get("b").digest
    wrong = fspec("c", handler="m:f", artifact=b"bundle", artifact_sha256="0" * 64)
    with pytest.raises(errors.InvalidArgument, match="SHA-256"):
        cl.svc.register_function(wrong, T0)


def test_the_artifact_budget_refuses_new_bytes_and_frees_with_removal(make):
    cl = make()
    cl.fns.artifacts_max = 10
    cl.svc.register_function(fspec("a", handler="m:f", artifact=b"x" * 8), T0)
    with pytest.raises(errors.ResourceExhausted, match="artifacts_max_mb"):
        cl.svc.register_function(fspec("b", handler="m:f", artifact=b"y" * 8), T0)
    cl.svc.register_function(fspec("c", handler="m:f", artifact=b"x" * 8), T0)  # stored already
    cl.svc.remove_function("a", T0)
    cl.svc.remove_function("c", T0)
    cl.svc.register_function(fspec("b", handler="m:f", artifact=b"y" * 8), T0)
    assert [v for _, v in cl.store.scan(ART_PREFIX)] == [b"y" * 8]


def test_update_forgets_warm_nodes_of_the_old_version(c):
    slot = c.table.slot_of["n1"]
    c.table.mark_warm("n1", "f")
    c.svc.register_function(fspec("f"), T0)  # same digest: still warm
    assert "f" in c.table.functions[slot]
    c.svc.register_function(fspec("f", handler="new"), T0)
    assert "f" not in c.table.functions[slot]


def test_remove_function(c):
    c.svc.remove_function("f", T0)
    with pytest.raises(errors.NotFound):
        c.svc.get_function("f")
    with pytest.raises(errors.NotFound):
        c.svc.full_spec("f")
    with pytest.raises(errors.NotFound):
        c.svc.remove_function("f", T0)
    with pytest.raises(errors.NotFound):
        c.submit("e1")
    assert c.store.get(FN_PREFIX + b"f") is None
    assert c.svc.list_functions() == []


def test_full_spec_returns_the_artifact_bytes(make):
    cl = make()
    art = bytes(range(256)) * 4
    info = cl.svc.register_function(fspec("w", runtime="wasm", artifact=art, command=[],
                                          handler="run"), T0)
    spec, digest = cl.svc.full_spec("w")
    assert spec.artifact == art
    assert spec.handler == "run"
    assert digest == info.digest == cl.svc.get_function("w").digest
    cl.deploy("plain")
    plain, _ = cl.svc.full_spec("plain")
    assert plain.artifact is None


def test_full_spec_with_a_missing_artifact_is_internal(make):
    cl = make()
    cl.svc.register_function(fspec("w", artifact=b"bytes"), T0)
    cl.store.delete(ART_PREFIX + hashlib.sha256(b"bytes").hexdigest().encode())
    with pytest.raises(errors.Internal):
        cl.svc.full_spec("w")


def test_function_events(c):
    c.svc.remove_function("f", T0 + 1)
    kinds = [(e[0], e[1], e[2]) for e in c.events]
    assert kinds == [("function", "f", "registered"), ("function", "f", "removed")]


# ---------------------------------------------------------------- submit and result


def test_submit_sync_dispatches_payload_and_digest(c):
    assert c.submit("e1", payload=b"hello", args=[1, 2.5], timeout=9.0) is None
    [(target, d, payload)] = c.out.dispatches()
    assert target == "n1"
    assert payload == b"hello"
    assert d.execution_id == "e1" and d.function == "f"
    assert d.digest == c.svc.get_function("f").digest
    assert d.args == [1, 2.5] and d.timeout == 9.0 and not d.stream
    assert c.out.client_msgs() == []  # no immediate reply for sync
    info = c.ex("e1").info
    assert info.status == "scheduled" and info.node_id == "n1" and info.attempts == 1
    assert c.table.total_reserved() == (1.0, 64 * MiB)
    assert c.table.running["n1"] == 1
    assert c.svc.active() == 1


def test_result_is_delivered_to_the_waiting_client(c):
    c.submit("e1", rid=42)
    c.now = T0 + 2
    c.result("n1", "e1", payload=b"the output")
    [(res, payload)] = c.results_for(CLIENT)
    assert isinstance(res, P.Result) and res.id == 42
    assert res.execution.status == "succeeded" and res.execution.execution_id == "e1"
    assert res.execution.finished_at == T0 + 2
    assert payload == b"the output"
    assert c.status("e1") == "succeeded"
    assert c.ex("e1").output == b"the output"
    assert c.table.total_reserved() == (0, 0)
    assert c.table.running["n1"] == 0
    assert c.svc.counts["succeeded"] == 1
    assert "f" in c.table.functions[c.table.slot_of["n1"]]  # the node is now warm
    assert "e1" in c.svc.dirty
    assert c.svc.active() == 0


def test_failed_result_keeps_the_error(c):
    c.submit("e1")
    c.result("n1", "e1", status="failed", payload=b"",
             error=P.ErrorInfo(code="FUNCTION_ERROR", message="boom"))
    [(res, _)] = c.results_for()
    assert res.execution.status == "failed"
    assert res.execution.error == P.ErrorInfo(code="FUNCTION_ERROR", message="boom")


def test_non_terminal_status_in_a_result_counts_as_failed(c):
    c.submit("e1")
    c.result("n1", "e1", status="running")
    assert c.status("e1") == "failed"


def test_submit_async_replies_accepted_and_marks_dirty(c):
    reply = c.svc.submit(CLIENT, P.Invoke(id=7, function="f", mode="async"), b"in", c.now, eid="e1")
    assert reply is None and c.store.get(b"ex/e1") is None  # nothing said, nothing sent yet
    assert not c.out.dispatches("e1")
    c.svc.commit(c.now)
    # written (synced) before the Accepted that confirms it, and dispatched after
    assert c.store.get(b"ex/e1") is not None
    assert c.out.client_msgs(CLIENT)[-1][0] == P.Accepted(id=7, execution_id="e1")
    assert c.out.dispatches("e1")
    c.svc.flush()
    assert not c.svc.dirty
    assert c.stored_record("e1") is not None
    n = len(c.out.client_msgs())
    c.result("n1", "e1")
    assert len(c.out.client_msgs()) == n  # nobody waits on an async execution
    assert c.status("e1") == "succeeded"


def test_submit_without_an_id_gets_a_fresh_one(c):
    a = c.submit("", mode="async")
    b = c.submit("", mode="async")
    assert a.execution_id and b.execution_id and a.execution_id != b.execution_id
    for eid in (a.execution_id, b.execution_id):
        c.result("n1", eid)


def test_duplicate_execution_id_is_refused(c):
    c.submit("e1", mode="async")
    with pytest.raises(errors.InvalidArgument):
        c.submit("e1", mode="async")
    c.result("n1", "e1")


def test_unknown_function_is_not_found(c):
    with pytest.raises(errors.NotFound):
        c.submit("e1", fn="nope")
    assert "e1" not in c.svc.execs
    with pytest.raises(errors.NotFound):
        c.svc.get("nope")


def test_wait_registers_a_waiter_answered_at_its_deadline(c):
    c.submit("e1", mode="async")
    assert c.svc.wait(OTHER, P.GetExecution(id=9, execution_id="e1", wait=5.0), T0) is None
    c.tick(T0 + 4.9)
    assert c.out.client_msgs(OTHER) == []
    c.tick(T0 + 5.0)
    [(res, _)] = c.out.client_msgs(OTHER)
    assert res.id == 9 and res.execution.status == "scheduled"
    c.result("n1", "e1")
    assert len(c.out.client_msgs(OTHER)) == 1  # the expired waiter is gone


def test_wait_is_answered_by_the_result_before_its_deadline(c):
    c.submit("e1", mode="async")
    c.svc.wait(OTHER, P.GetExecution(id=9, execution_id="e1", wait=30.0), T0)
    c.result("n1", "e1", payload=b"out")
    [(res, payload)] = c.out.client_msgs(OTHER)
    assert res.execution.status == "succeeded" and payload == b"out"
    c.tick(T0 + 60)
    assert len(c.out.client_msgs(OTHER)) == 1
    assert "e1" not in c.svc.watch


def test_wait_on_a_finished_or_without_wait_replies_at_once(c):
    c.submit("e1", mode="async")
    res, _ = c.svc.wait(OTHER, P.GetExecution(id=1, execution_id="e1"), T0)
    assert res.execution.status == "scheduled"
    c.result("n1", "e1", payload=b"out")
    res, payload = c.svc.wait(OTHER, P.GetExecution(id=2, execution_id="e1", wait=10), T0)
    assert res.id == 2 and res.execution.status == "succeeded" and payload == b"out"
    with pytest.raises(errors.NotFound):
        c.svc.wait(OTHER, P.GetExecution(id=3, execution_id="nope", wait=1), T0)


def test_no_node_offers_the_runtime_fails_at_once(make):
    cl = make()
    cl.add_node("n1", runtimes=["wasm"])
    cl.deploy("f", runtime="process")
    assert cl.submit("e1") is None
    assert cl.out.dispatches() == []
    [(res, _)] = cl.results_for()
    assert res.execution.status == "failed"
    assert res.execution.error.code == "UNAVAILABLE"
    assert "process" in res.execution.error.message
    assert not cl.svc.queue
    assert cl.svc.counts["failed"] == 1


def test_no_nodes_at_all_fails_at_once(make):
    cl = make()
    cl.deploy("f")
    cl.submit("e1")
    assert cl.status("e1") == "failed"
    assert cl.ex("e1").info.error.code == "UNAVAILABLE"


def test_too_large_for_every_node_fails_at_once(c):
    c.deploy("big", cpus=64.0)
    c.submit("e1", fn="big")
    assert c.status("e1") == "failed"
    assert "large enough" in c.ex("e1").info.error.message


def test_labels_route_to_the_matching_node(make):
    cl = make()
    cl.add_node("eu", labels={"zone": "eu"})
    cl.add_node("us", labels={"zone": "us"})
    cl.deploy("f", labels={"zone": "us"})
    cl.submit("e1")
    assert cl.last_dispatch("e1")[0] == "us"
    cl.result("us", "e1")


def test_busy_nodes_queue_then_dispatch_when_capacity_frees(make):
    cl = make(queue_timeout=30.0)
    cl.add_node("n1", cores=1.0)
    cl.deploy("f", cpus=1.0)
    cl.submit("e1")
    cl.submit("e2")
    assert cl.status("e2") == "pending"
    assert list(cl.svc.queue) == ["e2"]
    assert cl.out.dispatches("e2") == []
    assert cl.results_for() == []  # queued, not failed
    cl.tick(T0 + 1)  # still no room
    assert cl.out.dispatches("e2") == []
    assert list(cl.svc.queue) == ["e2"]
    cl.now = T0 + 2
    cl.result("n1", "e1")
    cl.tick(T0 + 2)
    assert cl.last_dispatch("e2")[0] == "n1"
    assert cl.status("e2") == "scheduled"
    assert not cl.svc.queue
    cl.result("n1", "e2")
    assert cl.status("e2") == "succeeded"


def test_queued_execution_fails_after_queue_timeout(make):
    cl = make(queue_timeout=30.0)
    cl.add_node("n1", cores=1.0)
    cl.deploy("f", cpus=1.0)
    cl.submit("e1")
    cl.submit("e2", client=OTHER)
    cl.tick(T0 + 29.0)
    assert cl.status("e2") == "pending"
    cl.tick(T0 + 30.5)
    assert cl.status("e2") == "failed"
    assert cl.ex("e2").info.error.code == "RESOURCE_EXHAUSTED"
    [(res, _)] = cl.results_for(OTHER)
    assert res.execution.status == "failed"
    assert not cl.svc.queue
    cl.result("n1", "e1")


def test_queued_execution_goes_to_a_node_that_joins(make):
    cl = make()
    cl.add_node("n1", cores=1.0)
    cl.deploy("f", cpus=1.0)
    cl.submit("e1")
    cl.submit("e2")
    cl.add_node("n2", cores=2.0)
    cl.svc.retry_queue(T0 + 1)
    assert cl.last_dispatch("e2")[0] == "n2"
    cl.result("n1", "e1")
    cl.result("n2", "e2")


def test_queue_full_refuses_submissions(make):
    cl = make(max_queue=1)
    cl.add_node("n1", cores=1.0)
    cl.deploy("f", cpus=1.0)
    cl.submit("e1")
    cl.submit("e2")
    with pytest.raises(errors.ResourceExhausted):
        cl.submit("e3")
    assert "e3" not in cl.svc.execs
    cl.result("n1", "e1")
    cl.tick(T0 + 1)
    cl.result("n1", "e2")


def test_concurrency_slots_queue_executions(make):
    cl = make()
    cl.add_node("n1", slots=1)
    cl.deploy("f", cpus=0.1)
    cl.submit("e1")
    cl.submit("e2")
    assert cl.status("e2") == "pending"
    cl.result("n1", "e1")
    cl.tick(T0 + 1)
    assert cl.status("e2") == "scheduled"
    cl.result("n1", "e2")


def test_default_limits_are_reserved(make):
    cl = make(default_cpu=0.25, default_memory_mb=32)
    cl.add_node("n1")
    cl.deploy("f", cpus=None, memory_mb=None)
    cl.submit("e1")
    assert cl.table.total_reserved() == (0.25, 32 * MiB)
    cl.result("n1", "e1")


# ---------------------------------------------------------------- spillback


@pytest.fixture
def three(make) -> Cluster:
    cl = make(max_spills=1)
    for n in ("n1", "n2", "n3"):
        cl.add_node(n)
    cl.deploy("f")
    return cl


def test_refused_dispatch_spills_to_another_node(three):
    c = three
    c.submit("e1", payload=b"data")
    first, d1, _ = c.last_dispatch("e1")
    c.refuse(first, "e1")
    second, d2, payload = c.last_dispatch("e1")
    assert second != first
    assert payload == b"data" and d2.id != d1.id
    assert c.table.penalty[c.table.slot_of[first]] > 0
    assert c.table.reserved[first] == [0.0, 0.0]
    assert c.table.running[first] == 0
    assert c.table.total_reserved() == (1.0, 64 * MiB)
    info = c.ex("e1").info
    assert info.status == "scheduled" and info.node_id == second and info.attempts == 2
    assert "e1" not in c.svc.by_node[first]
    c.result(second, "e1")
    assert c.status("e1") == "succeeded"


def test_after_max_spills_the_execution_fails(three):
    c = three
    c.submit("e1")
    c.refuse(c.last_dispatch("e1")[0], "e1")
    c.refuse(c.last_dispatch("e1")[0], "e1", code="UNAVAILABLE", message="draining")
    assert len(c.out.dispatches("e1")) == 2
    assert c.status("e1") == "failed"
    err = c.ex("e1").info.error
    assert err.code == "RESOURCE_EXHAUSTED" and "draining" in err.message
    [(res, _)] = c.results_for()
    assert res.execution.status == "failed"


def test_dispatch_error_with_another_code_fails_the_execution(three):
    c = three
    c.submit("e1")
    c.refuse(c.last_dispatch("e1")[0], "e1", code="INVALID_ARGUMENT", message="bad args")
    assert len(c.out.dispatches("e1")) == 1
    assert c.ex("e1").info.error == P.ErrorInfo(code="INVALID_ARGUMENT", message="bad args")
    assert c.status("e1") == "failed"


def test_dispatch_error_for_an_unknown_dispatch_is_ignored(c):
    c.submit("e1")
    c.svc.on_dispatch_error("n1", P.ErrorReply(id=12345, code="RESOURCE_EXHAUSTED",
                                               message="?"), T0)
    c.svc.on_dispatch_error("n9", P.ErrorReply(id=1, code="RESOURCE_EXHAUSTED",
                                               message="?"), T0)
    assert c.status("e1") == "scheduled" and len(c.out.dispatches()) == 1
    c.result("n1", "e1")


def test_send_failure_spills_to_another_node(make):
    cl = make()
    cl.add_node("n1")
    cl.add_node("n2")
    cl.deploy("f")
    cl.out.down.add("n1")
    cl.submit("e1")
    assert [t for t, _, _ in cl.out.dispatches("e1")] == ["n1", "n2"]
    assert cl.ex("e1").info.node_id == "n2"
    cl.result("n2", "e1")


def test_the_only_node_refusing_queues_then_retries_it(c):
    c.submit("e1")
    c.refuse("n1", "e1")
    assert c.status("e1") == "pending"
    assert list(c.svc.queue) == ["e1"]
    assert c.table.total_reserved() == (0.0, 0.0)
    c.tick(T0 + 1)
    assert [t for t, _, _ in c.out.dispatches("e1")] == ["n1", "n1"]
    c.result("n1", "e1")


def test_a_stale_refusal_of_an_earlier_dispatch_is_ignored(c):
    c.submit("e1")
    _, first, _ = c.last_dispatch("e1")
    c.refuse("n1", "e1")
    c.tick(T0 + 1)  # dispatched to n1 again, with a new dispatch id
    _, second, _ = c.last_dispatch("e1")
    assert second.id != first.id
    c.svc.on_dispatch_error("n1", P.ErrorReply(id=first.id, code="RESOURCE_EXHAUSTED",
                                               message="dup"), T0 + 1)
    assert c.status("e1") == "scheduled" and len(c.out.dispatches("e1")) == 2
    c.result("n1", "e1")


def test_function_removed_while_queued_fails_the_execution(make):
    cl = make()
    cl.add_node("n1", cores=1.0)
    cl.deploy("f", cpus=1.0)
    cl.submit("e1")
    cl.submit("e2", client=OTHER)
    cl.svc.remove_function("f", T0)
    cl.result("n1", "e1")
    cl.tick(T0 + 1)
    assert cl.status("e2") == "failed"
    assert cl.ex("e2").info.error.code == "NOT_FOUND"
    [(res, _)] = cl.results_for(OTHER)
    assert res.execution.status == "failed"


# ---------------------------------------------------------------- node loss


@pytest.fixture
def two(make) -> Cluster:
    cl = make()
    cl.add_node("n1")
    cl.add_node("n2")
    return cl


def test_node_lost_with_retries_redispatches_elsewhere(two):
    c = two
    c.deploy("f", retries=1)
    c.submit("e1", payload=b"data")
    assert c.last_dispatch("e1")[0] == "n1"
    c.table.set_state("n1", "unhealthy")
    c.svc.node_lost("n1", T0 + 1, "missed heartbeats")
    node_id, _, payload = c.last_dispatch("e1")
    assert node_id == "n2" and payload == b"data"
    info = c.ex("e1").info
    assert info.attempts == 2 and info.status == "scheduled"
    assert c.svc.counts["retried"] == 1
    assert c.table.reserved["n1"] == [0.0, 0.0]
    c.result("n2", "e1", payload=b"out")
    assert c.status("e1") == "succeeded"
    [(res, payload)] = c.results_for()
    assert res.execution.node_id == "n2" and payload == b"out"


def test_node_lost_without_retries_is_lost_with_reason(two):
    c = two
    c.deploy("f", retries=0)
    c.submit("e1")
    c.svc.node_lost("n1", T0 + 1, "missed heartbeats")
    assert c.status("e1") == "lost"
    err = c.ex("e1").info.error
    assert err.code == "UNAVAILABLE" and "n1" in err.message and "missed heartbeats" in err.message
    [(res, _)] = c.results_for()
    assert res.execution.status == "lost"
    assert c.svc.counts["lost"] == 1
    assert len(c.out.dispatches("e1")) == 1


def test_retries_are_bounded(two):
    c = two
    c.deploy("f", retries=1)
    c.submit("e1")
    c.svc.node_lost("n1", T0 + 1, "gone")
    c.svc.node_lost("n2", T0 + 2, "gone")
    assert c.status("e1") == "lost"
    assert c.ex("e1").info.attempts == 2


def test_late_result_from_the_lost_node_is_ignored_and_counted(two):
    c = two
    c.deploy("f", retries=1)
    c.submit("e1")
    c.svc.node_lost("n1", T0 + 1, "missed heartbeats")
    c.result("n2", "e1", payload=b"from n2")
    c.result("n1", "e1", payload=b"from n1")  # the lost node was alive after all
    assert c.svc.counts["late_results"] == 1
    assert c.svc.counts["succeeded"] == 1
    assert c.ex("e1").output == b"from n2" and c.ex("e1").info.node_id == "n2"
    assert len(c.results_for()) == 1
    c.result("n9", "nope")  # unknown execution
    assert c.svc.counts["late_results"] == 2


def test_early_result_from_the_lost_node_wins_and_cancels_the_retry(two):
    c = two
    c.deploy("f", retries=1)
    c.submit("e1")
    c.svc.node_lost("n1", T0 + 1, "missed heartbeats")
    c.result("n1", "e1", payload=b"from n1")
    assert c.status("e1") == "succeeded"
    assert c.ex("e1").output == b"from n1"
    [(target, cancel, _)] = c.out.node_msgs(P.CancelExecution)
    assert target == "n2" and cancel.execution_id == "e1"
    c.result("n2", "e1", status="cancelled")
    assert c.svc.counts["late_results"] == 1
    assert c.svc.counts["succeeded"] == 1 and c.svc.counts["cancelled"] == 0
    assert len(c.results_for()) == 1


def test_lost_node_with_nowhere_else_queues_the_retry(c):
    c.deploy("f", retries=1)
    c.submit("e1")
    c.table.set_state("n1", "unhealthy")
    c.svc.node_lost("n1", T0 + 1, "missed heartbeats")
    assert c.status("e1") == "pending"
    assert list(c.svc.queue) == ["e1"]
    c.table.set_state("n1", "ready")
    c.tick(T0 + 2)
    assert c.status("e1") == "scheduled"
    c.result("n1", "e1")


def test_node_lost_with_nothing_there_is_harmless(c):
    c.svc.node_lost("n1", T0, "left")
    c.svc.node_lost("unknown", T0, "left")


# ---------------------------------------------------------------- reconciliation


def test_running_ids_reconcile_only_after_the_grace(make):
    cl = make(report_grace=3.0)
    cl.add_node("n1")
    cl.deploy("f", retries=1)
    cl.deploy("g", retries=0)
    cl.submit("e1", fn="f")
    cl.submit("e2", fn="g")
    cl.add_node("n2")
    assert cl.ex("e1").info.node_id == cl.ex("e2").info.node_id == "n1"
    cl.svc.on_running("n1", [], T0 + 1.0)  # just dispatched: not reported yet
    cl.svc.on_running("n1", [], T0 + 3.0)  # still within the grace
    assert cl.status("e1") == cl.status("e2") == "scheduled"
    cl.svc.on_running("n1", ["e1", "e2"], T0 + 10.0)  # reported: fine
    assert cl.status("e1") == cl.status("e2") == "running"
    cl.svc.on_running("n1", ["e2"], T0 + 10.5)  # e1 no longer reported
    assert cl.ex("e1").info.node_id == "n2" and cl.ex("e1").info.attempts == 2
    assert cl.status("e1") == "scheduled" and cl.status("e2") == "running"
    assert cl.svc.counts["retried"] == 1
    cl.svc.on_running("n1", [], T0 + 11.0)
    assert cl.status("e2") == "lost"
    assert "no longer reports" in cl.ex("e2").info.error.message
    # the retry just dispatched to n2 gets its own grace
    cl.svc.on_running("n2", [], T0 + 12.0)
    assert cl.status("e1") == "scheduled"
    cl.result("n2", "e1")


def test_running_ids_of_another_node_do_not_matter(two):
    c = two
    c.deploy("f")
    c.submit("e1")
    c.svc.on_running("n2", [], T0 + 100)
    assert c.status("e1") == "scheduled"
    c.svc.on_running("n2", ["e1"], T0 + 100)  # only its own node makes it running
    assert c.status("e1") == "scheduled"
    c.svc.on_running("n1", ["e1", "unknown"], T0 + 100)
    assert c.status("e1") == "running"
    c.result("n1", "e1")


# ---------------------------------------------------------------- cancel


def test_cancel_a_dispatched_execution(c):
    c.deploy("f", retries=3)
    c.submit("e1")
    c.svc.cancel("e1", T0 + 1)
    [(target, msg, _)] = c.out.node_msgs(P.CancelExecution)
    assert target == "n1" and msg.execution_id == "e1"
    assert c.status("e1") == "scheduled"  # until the node confirms
    assert c.results_for() == []
    c.result("n1", "e1", status="cancelled", payload=b"")
    assert c.status("e1") == "cancelled"
    [(res, _)] = c.results_for()
    assert res.execution.status == "cancelled"
    assert c.table.total_reserved() == (0.0, 0.0)


def test_cancelled_execution_is_not_retried_when_its_node_dies(two):
    c = two
    c.deploy("f", retries=3)
    c.submit("e1")
    c.svc.cancel("e1", T0 + 1)
    c.svc.node_lost("n1", T0 + 2, "gone")
    ex = c.ex("e1")
    assert ex.info.status == "cancelled" and ex.info.error.code == "CANCELLED"
    assert "gone" in ex.info.error.message
    assert len(c.out.dispatches("e1")) == 1
    assert c.table.total_reserved() == (0.0, 0.0)


def test_cancel_the_node_never_confirms_ends_after_a_grace(c):
    c.submit("e1")
    c.svc.cancel("e1", T0)
    c.tick(T0 + 5)
    assert c.status("e1") == "scheduled"
    c.tick(T0 + 11)
    assert c.status("e1") == "cancelled"
    assert c.ex("e1").info.error.code == "CANCELLED"
    c.result("n1", "e1", status="cancelled")
    assert c.svc.counts["late_results"] == 1


def test_cancel_a_queued_execution_ends_it_at_once(make):
    cl = make()
    cl.add_node("n1", cores=1.0)
    cl.deploy("f", cpus=1.0)
    cl.submit("e1")
    cl.submit("e2", client=OTHER)
    cl.svc.cancel("e2", T0 + 1)
    assert cl.status("e2") == "cancelled"
    assert cl.ex("e2").info.error.code == "CANCELLED"
    [(res, _)] = cl.results_for(OTHER)
    assert res.execution.status == "cancelled"
    cl.result("n1", "e1")
    cl.tick(T0 + 2)
    assert cl.out.dispatches("e2") == []
    assert cl.status("e2") == "cancelled"
    assert not cl.svc.queue


def test_cancel_a_finished_execution_is_invalid(c):
    c.submit("e1")
    c.result("n1", "e1")
    with pytest.raises(errors.InvalidArgument):
        c.svc.cancel("e1", T0)
    with pytest.raises(errors.NotFound):
        c.svc.cancel("nope", T0)


# ---------------------------------------------------------------- listing


def test_list_executions_filters_and_pages(make):
    cl = make()
    cl.add_node("n1")
    cl.add_node("n2", labels={"zone": "b"})
    cl.deploy("f")
    cl.deploy("g", labels={"zone": "b"})
    for i in range(6):
        cl.now = T0 + i
        cl.submit(f"e{i}", fn="f" if i % 2 == 0 else "g", mode="async")
    for i in (0, 1, 2):
        cl.result(cl.ex(f"e{i}").info.node_id, f"e{i}")

    def ls(**kw):
        items, total, _ = cl.svc.list_executions(P.ListExecutions(id=1, **kw))
        return [i.execution_id for i in items], total

    assert ls() == (["e5", "e4", "e3", "e2", "e1", "e0"], 6)  # newest first
    assert ls(function="f") == (["e4", "e2", "e0"], 3)
    assert ls(function="g", status="succeeded") == (["e1"], 1)
    assert ls(status="scheduled") == (["e5", "e4", "e3"], 3)
    assert ls(node_id="n2") == (["e5", "e3", "e1"], 3)
    assert ls(function="nope") == ([], 0)
    assert ls(limit=2) == (["e5", "e4"], 6)
    assert ls(limit=2, offset=2) == (["e3", "e2"], 6)
    assert ls(limit=2, offset=5) == (["e0"], 6)
    assert ls(limit=2, offset=10) == ([], 6)
    for i in (3, 4, 5):
        cl.result(cl.ex(f"e{i}").info.node_id, f"e{i}")


# ---------------------------------------------------------------- retention


def test_retention_prunes_old_terminal_records(make):
    cl = make(max_executions=3)
    cl.add_node("n1")
    cl.deploy("f")
    for i in range(3):
        cl.submit(f"e{i}", mode="async")
        cl.result("n1", f"e{i}")
    cl.svc.flush()
    assert cl.stored_record("e0") is not None
    cl.submit("e3", mode="async")
    assert "e0" not in cl.svc.execs
    assert cl.svc.pruned == [EX_PREFIX + b"e0"]  # deleted with the next batch, not at once
    cl.svc.flush()
    assert cl.stored_record("e0") is None and not cl.svc.pruned
    assert list(cl.svc.execs) == ["e1", "e2", "e3"]
    cl.submit("e4", mode="async")
    assert list(cl.svc.execs) == ["e2", "e3", "e4"]
    cl.svc.flush()
    assert {k for k, _ in cl.store.scan(EX_PREFIX)} == {EX_PREFIX + e.encode()
                                                       for e in ("e2", "e3", "e4")}
    for e in ("e3", "e4"):
        cl.result("n1", e)


def test_retention_never_prunes_running_executions(make):
    cl = make(max_executions=2)
    cl.add_node("n1", cores=64.0)
    cl.deploy("f")
    for i in range(4):
        cl.submit(f"e{i}", mode="async")
    assert list(cl.svc.execs) == ["e0", "e1", "e2", "e3"]  # all in flight, none pruned
    cl.result("n1", "e1")
    cl.submit("e4", mode="async")
    # over by three, but only the one finished record may go
    assert list(cl.svc.execs) == ["e0", "e2", "e3", "e4"]
    for e in ("e0", "e2", "e3", "e4"):
        cl.result("n1", e)


def test_pruned_before_flush_is_never_written(make):
    cl = make(max_executions=1)
    cl.add_node("n1")
    cl.deploy("f")
    cl.submit("e0", mode="async")
    cl.result("n1", "e0")
    cl.submit("e1", mode="async")
    cl.svc.flush()
    assert cl.stored_record("e0") is None
    assert cl.stored_record("e1") is not None
    cl.result("n1", "e1")


# ---------------------------------------------------------------- persistence


def test_recovery_restores_functions_and_records(make, tmp_path):
    store = reopen(tmp_path / "db")
    a = make(store)
    a.add_node("n1", cores=1.0)
    art = b"artifact bytes"
    fn = a.deploy("f", cpus=1.0, artifact=art)
    a.deploy("g")
    a.submit("done", mode="async")
    a.result("n1", "done", payload=b"kept output")
    a.now = T0 + 1
    a.submit("running", mode="async", payload=b"x")  # scheduled on n1
    a.now = T0 + 2
    a.submit("waiting", mode="async")  # no room: pending in the queue
    assert a.status("running") == "scheduled" and a.status("waiting") == "pending"
    a.svc.flush()
    a.check_invariants = False  # this instance "dies" with work in flight
    store.close()

    store = reopen(tmp_path / "db")
    b = make(store, now=T0 + 100)
    assert sorted(f.name for f in b.svc.list_functions()) == ["f", "g"]
    assert b.svc.get_function("f").digest == fn.digest
    spec, digest = b.svc.full_spec("f")
    assert spec.artifact == art and digest == fn.digest
    assert b.status("done") == "succeeded" and b.ex("done").output == b"kept output"
    # a scheduled one may still run on its node: kept in flight
    assert b.status("running") == "scheduled"
    assert "running" in b.svc.by_node["n1"]
    # a pending one kept its input: it waits in the queue for the nodes to come back
    assert b.status("waiting") == "pending"
    assert b.ex("waiting").data == b"input"
    # in flight in memory, oldest first; finished ones as index entries (records on disk)
    assert list(b.svc.execs) == ["running", "waiting"] and list(b.svc.archive) == ["done"]
    # the node comes back and reports the result late
    b.add_node("n1", cores=1.0)
    b.now = T0 + 101
    b.result("n1", "running", payload=b"late but welcome")
    assert b.status("running") == "succeeded"
    assert b.ex("running").output == b"late but welcome"
    # the capacity it frees goes to the queued one, with its original input
    assert b.status("waiting") == "scheduled"
    sent = [m for kind, target, m, p in b.out.sent if isinstance(m, P.Dispatch)
            and m.execution_id == "waiting"]
    assert sent and [p for kind, target, m, p in b.out.sent
                     if isinstance(m, P.Dispatch) and m.execution_id == "waiting"][-1] == b"input"
    b.result("n1", "waiting")
    assert b.status("waiting") == "succeeded"
    assert b.svc.counts["late_results"] == 0
    b.svc.flush()
    store.close()

    store = reopen(tmp_path / "db")
    c = make(store, now=T0 + 200)
    assert {e: c.status(e) for e in [*c.svc.execs, *c.svc.archive]} == {
        "done": "succeeded", "running": "succeeded", "waiting": "succeeded"}
    assert c.ex("running").output == b"late but welcome"
    store.close()


def test_recovered_in_flight_execution_is_reconciled_by_heartbeats(make, tmp_path):
    store = reopen(tmp_path / "db")
    a = make(store)
    a.add_node("n1")
    a.deploy("f", retries=0)
    a.submit("e1", mode="async")
    a.svc.flush()
    a.check_invariants = False
    store.close()

    store = reopen(tmp_path / "db")
    b = make(store, now=T0 + 100, report_grace=3.0)
    b.add_node("n1")
    b.svc.on_running("n1", [], T0 + 102)  # within the grace after the restart
    assert b.status("e1") == "scheduled"
    b.svc.on_running("n1", [], T0 + 104)
    assert b.status("e1") == "lost"
    b.svc.flush()
    store.close()


def test_large_output_is_not_persisted(make, tmp_path):
    store = reopen(tmp_path / "db")
    a = make(store, keep_output=10)
    a.add_node("n1")
    a.deploy("f")
    a.submit("small", mode="async")
    a.result("n1", "small", payload=b"tiny")
    a.submit("large", mode="async")
    a.result("n1", "large", payload=b"x" * 100)
    a.svc.flush()
    store.close()
    store = reopen(tmp_path / "db")
    b = make(store)
    assert b.ex("small").output == b"tiny"
    assert b.ex("large").output == b""
    assert b.status("large") == "succeeded"
    store.close()


def test_corrupt_records_are_skipped(make):
    store = MemoryStore()
    store.put(FN_PREFIX + b"bad", b"\xc1 not msgpack")
    store.put(EX_PREFIX + b"bad", b"\xc1 not msgpack")
    cl = make(store)
    assert cl.svc.list_functions() == [] and not cl.svc.execs


# ---------------------------------------------------------------- streaming


def test_stream_relays_log_chunks_with_the_client_request_id(c):
    c.submit("e1", mode="stream", rid=55)
    _, d, _ = c.last_dispatch("e1")
    assert d.stream
    c.svc.wait(OTHER, P.GetExecution(id=3, execution_id="e1", wait=60), T0)
    c.svc.on_log("n1", P.LogChunk(id=d.id, execution_id="e1", data=b"line 1\n", seq=0))
    c.svc.on_log("n1", P.LogChunk(id=d.id, execution_id="e1", data=b"line 2\n", seq=1))
    c.svc.on_log("n1", P.LogChunk(id=d.id, execution_id="nope", data=b"?", seq=0))
    chunks = [m for m, _ in c.out.client_msgs(CLIENT, P.LogChunk)]
    assert chunks == [P.LogChunk(id=55, execution_id="e1", data=b"line 1\n", seq=0),
                      P.LogChunk(id=55, execution_id="e1", data=b"line 2\n", seq=1)]
    assert c.out.client_msgs(OTHER, P.LogChunk) == []  # a plain waiter gets no logs
    c.result("n1", "e1")
    [(res, _)] = c.results_for(CLIENT)
    assert res.id == 55 and res.execution.status == "succeeded"


def test_a_following_waiter_gets_the_log_chunks_then_the_result(c):
    c.submit("e1", mode="stream", rid=55)
    _, d, _ = c.last_dispatch("e1")
    c.svc.wait(OTHER, P.GetExecution(id=3, execution_id="e1", wait=60, follow=True), T0)
    c.svc.on_log("n1", P.LogChunk(id=d.id, execution_id="e1", data=b"line\n", seq=0))
    assert [m for m, _ in c.out.client_msgs(OTHER, P.LogChunk)] == [
        P.LogChunk(id=3, execution_id="e1", data=b"line\n", seq=0)]
    c.result("n1", "e1")
    [(res, _)] = c.results_for(OTHER)
    assert res.id == 3 and res.execution.status == "succeeded"


def test_sync_submission_gets_no_log_chunks(c):
    c.submit("e1")
    c.svc.on_log("n1", P.LogChunk(id=1, execution_id="e1", data=b"x"))
    assert c.out.client_msgs(kind=P.LogChunk) == []
    assert not c.last_dispatch("e1")[1].stream
    c.result("n1", "e1")


# ---------------------------------------------------------------- events and counts


def test_execution_events_and_counts(c):
    c.submit("e1")
    c.result("n1", "e1")
    assert ("execution", "e1", "succeeded") in [(e[0], e[1], e[2]) for e in c.events]
    assert c.svc.counts["submitted"] == 1 and c.svc.counts["succeeded"] == 1


# ---------------------------------------------------------------- bugs found


def test_sync_execution_in_flight_survives_restart(make, tmp_path):
    store = reopen(tmp_path / "db")
    a = make(store)
    a.add_node("n1")
    a.deploy("f")
    a.submit("e1")  # sync: a client is waiting
    a.tick(T0 + 1)  # the daemon flushes on every tick
    a.check_invariants = False
    store.close()
    store = reopen(tmp_path / "db")
    try:
        b = make(store, now=T0 + 100)
        b.check_invariants = False
        assert "e1" in b.svc.execs  # the record is gone today
        assert b.status("e1") == "scheduled"
        b.add_node("n1")
        b.result("n1", "e1")
        assert b.status("e1") == "succeeded"
    finally:
        store.close()


def test_execution_dispatched_from_the_queue_survives_restart(make, tmp_path):
    store = reopen(tmp_path / "db")
    a = make(store)
    a.add_node("n1", cores=1.0)
    a.deploy("f", cpus=1.0)
    a.submit("e1", mode="async")
    a.submit("e2", mode="async")  # queued
    a.tick(T0 + 1)
    a.result("n1", "e1")
    a.tick(T0 + 2)  # e2 dispatched to n1 and everything flushed
    assert a.status("e2") == "scheduled"
    a.check_invariants = False
    store.close()
    store = reopen(tmp_path / "db")
    try:
        b = make(store, now=T0 + 100)
        b.check_invariants = False
        assert b.status("e2") == "scheduled"  # 'lost' today
        b.add_node("n1", cores=1.0)
        b.result("n1", "e2")
        assert b.status("e2") == "succeeded"
    finally:
        store.close()


def test_recovered_execution_is_not_retried_with_an_empty_input(make, tmp_path):
    store = reopen(tmp_path / "db")
    a = make(store)
    a.add_node("n1")
    a.deploy("f", retries=2)
    a.submit("e1", mode="async", payload=b"precious input")
    a.svc.flush()
    a.check_invariants = False
    store.close()
    store = reopen(tmp_path / "db")
    try:
        b = make(store, now=T0 + 100)
        b.add_node("n1")
        b.add_node("n2")
        b.svc.node_lost("n1", T0 + 101, "missed heartbeats")
        wrong = [(t, p) for t, _, p in b.out.dispatches("e1") if p != b"precious input"]
        # either re-dispatch with the real input, or give up (lost): never run on b""
        assert wrong == []
    finally:
        store.close()


def test_recovered_execution_does_not_free_a_slot_it_never_took(make, tmp_path):
    store = reopen(tmp_path / "db")
    a = make(store)
    a.add_node("n1", slots=1)
    a.deploy("f", cpus=0.1)
    a.submit("old", mode="async")
    a.svc.flush()
    a.check_invariants = False
    store.close()
    store = reopen(tmp_path / "db")
    try:
        b = make(store, now=T0 + 100)
        b.check_invariants = False
        b.add_node("n1", slots=1)
        b.submit("new1", mode="async")  # the node accepts one at a time
        b.result("n1", "old")  # the recovered one finishes
        b.submit("new2", mode="async")
        # new1 is still running and n1 has one slot: new2 must wait
        assert b.status("new2") == "pending"
    finally:
        store.close()


def test_spillback_refusals_do_not_use_up_retries(make):
    cl = make()
    for n in ("n1", "n2", "n3"):
        cl.add_node(n)
    cl.deploy("f", retries=1)
    cl.submit("e1")
    cl.refuse("n1", "e1")  # refused: it never ran on n1
    assert cl.ex("e1").info.node_id == "n2"
    cl.svc.node_lost("n2", T0 + 1, "missed heartbeats")  # first real failure
    assert cl.status("e1") == "scheduled"  # retries=1 allows this retry; 'lost' today
    cl.result("n3", "e1")


# ---------------------------------------------------------------- per-function queues


def test_a_full_node_does_not_hold_back_another_functions_execution(make):
    """Executions waiting for one full node never delay work another node can run."""
    cl = make(queue_timeout=30.0)
    cl.add_node("busy", cores=1.0, labels={"zone": "x"})
    cl.add_node("free", cores=4.0, labels={"zone": "y"})
    cl.deploy("f", cpus=1.0, labels={"zone": "x"})
    cl.deploy("g", cpus=1.0, labels={"zone": "y"})
    cl.submit("f1", fn="f")
    for i in range(2, 22):
        cl.submit(f"f{i}", fn="f")
    assert cl.svc.queued == 20 and cl.status("f2") == "pending"
    cl.submit("g1", fn="g")
    assert cl.last_dispatch("g1")[0] == "free"  # at once, not behind f2..f21
    cl.tick(T0 + 1)  # the full pass too leaves g alone and f in order
    assert cl.svc.queue == [f"f{i}" for i in range(2, 22)]
    cl.result("busy", "f1")
    assert cl.last_dispatch("f2")[0] == "busy"  # FIFO within a function
    assert cl.out.dispatches("f3") == []
    assert cl.svc.queued == 19
    cl.result("free", "g1")


def test_freed_capacity_reaches_the_head_of_every_waiting_function(make):
    cl = make(queue_timeout=30.0)
    cl.add_node("n1", cores=2.0)
    cl.deploy("f", cpus=1.0)
    cl.deploy("g", cpus=1.0)
    cl.submit("f1", fn="f")
    cl.submit("g1", fn="g")
    cl.submit("f2", fn="f")
    cl.submit("g2", fn="g")
    assert sorted(cl.svc.queues) == ["f", "g"] and cl.svc.queued == 2
    cl.result("n1", "f1")
    cl.result("n1", "g1")
    assert cl.status("f2") == cl.status("g2") == "scheduled"
    assert cl.svc.queued == 0 and not cl.svc.queues
    cl.result("n1", "f2")
    cl.result("n1", "g2")


def test_queue_bound_counts_every_function(make):
    cl = make(max_queue=3)
    cl.add_node("n1", cores=1.0)
    cl.deploy("f", cpus=1.0)
    cl.deploy("g", cpus=1.0)
    cl.submit("f1", fn="f")
    cl.submit("f2", fn="f")
    cl.submit("g1", fn="g")
    cl.submit("g2", fn="g")
    with pytest.raises(errors.ResourceExhausted):
        cl.submit("f3", fn="f")
    cl.svc.cancel("g2", cl.now)
    cl.tick(T0 + 1)  # the cancelled entry leaves the queue at the next pass
    assert cl.svc.queued == 2
    cl.submit("f3", fn="f")
    assert cl.svc.queue == ["f2", "f3", "g1"]
    for _ in range(4):  # one at a time on the single core
        (running,) = [e for e in ("f1", "f2", "f3", "g1") if cl.status(e) == "scheduled"]
        cl.result("n1", running)
    assert all(cl.status(e) in TERMINAL for e in ("f1", "f2", "f3", "g1", "g2"))


# ---------------------------------------------------------------- SMS-side deadlines


def test_node_that_keeps_reporting_an_execution_past_its_deadline_loses_it(make):
    cl = make(deadline_grace=2.0)
    cl.add_node("n1")
    cl.deploy("f", retries=3)
    cl.submit("e1", timeout=1.0)
    cl.svc.on_running("n1", ["e1"], T0 + 2.9)  # timeout + grace not over yet
    assert cl.status("e1") == "running"  # listed by its node
    cl.svc.on_running("n1", ["e1"], T0 + 3.1)
    ex = cl.ex("e1")
    assert ex.info.status == "timed_out" and ex.info.error.code == "DEADLINE_EXCEEDED"
    assert "n1" in ex.info.error.message
    assert [m.execution_id for _, m, _ in cl.out.node_msgs(P.CancelExecution, "n1")] == ["e1"]
    assert cl.table.total_reserved() == (0.0, 0.0)
    assert cl.out.dispatches("e1")[-1][0] == "n1" and len(cl.out.dispatches("e1")) == 1
    (res, _), = cl.out.client_msgs(CLIENT, P.Result)
    assert res.execution.status == "timed_out"
    assert cl.svc.counts["overdue"] == 1
    cl.result("n1", "e1")  # the node finishes after all: a late result, counted once
    assert cl.status("e1") == "timed_out" and cl.svc.counts["late_results"] == 1


def test_deadline_uses_the_function_timeout_then_the_default(make):
    cl = make(deadline_grace=1.0, default_run_timeout=10.0)
    cl.add_node("n1")
    cl.deploy("f")
    cl.deploy("slow", timeout=5.0)
    cl.submit("e1", fn="f")
    cl.submit("e2", fn="slow")
    cl.svc.on_running("n1", ["e1", "e2"], T0 + 5.5)
    assert cl.status("e1") == cl.status("e2") == "running"
    cl.svc.on_running("n1", ["e1", "e2"], T0 + 6.5)
    assert cl.status("e2") == "timed_out" and cl.status("e1") == "running"
    cl.svc.on_running("n1", ["e1"], T0 + 11.5)
    assert cl.status("e1") == "timed_out"


def test_a_retry_gets_a_fresh_deadline(make):
    cl = make(deadline_grace=1.0, report_grace=0.5)
    cl.add_node("n1")
    cl.add_node("n2")
    cl.deploy("f", retries=1, timeout=2.0)
    cl.submit("e1")
    first = cl.last_dispatch("e1")[0]
    other = "n2" if first == "n1" else "n1"
    cl.now = T0 + 2.5
    cl.svc.node_lost(first, cl.now, "went unhealthy")
    assert cl.last_dispatch("e1")[0] == other
    cl.svc.on_running(other, ["e1"], T0 + 4.0)  # 3.5 s after the first dispatch, 1.5 s after this
    assert cl.status("e1") == "running"
    cl.svc.on_running(other, ["e1"], T0 + 5.6)
    assert cl.status("e1") == "timed_out"


def test_a_result_being_resent_is_neither_lost_nor_overdue(make):
    """After a link reset the node lists finished executions whose result it sends again."""
    cl = make(deadline_grace=1.0, report_grace=0.5)
    cl.add_node("n1")
    cl.deploy("f", timeout=1.0)
    cl.submit("e1")
    cl.svc.on_running("n1", [], T0 + 2.5, finished=["e1"])  # past report grace and deadline
    assert cl.status("e1") == "scheduled"
    cl.result("n1", "e1")
    assert cl.status("e1") == "succeeded" and cl.svc.counts["late_results"] == 0


def test_a_result_that_never_arrives_is_not_exempt_from_the_deadline(make):
    """A node resending a result that never gets through (too large, say)
    must not keep the execution scheduled for good: it ends failed, UNAVAILABLE,
    once the deadline plus one more grace has passed."""
    cl = make(deadline_grace=1.0, report_grace=0.5)
    cl.add_node("n1")
    cl.deploy("f", timeout=1.0)
    cl.submit("e1")
    for t in (1.0, 2.0, 2.9):  # deadline T0+2; still inside the grace for resending
        cl.svc.on_running("n1", [], T0 + t, finished=["e1"])
        assert cl.status("e1") == "scheduled"
    cl.svc.on_running("n1", [], T0 + 3.1, finished=["e1"])
    assert cl.status("e1") == "failed"
    assert cl.ex("e1").info.error.code == "UNAVAILABLE" and "never reached" in cl.ex("e1").info.error.message


def test_finished_executions_leave_memory_but_stay_readable(make, tmp_path):
    """Only ``cache_executions`` finished executions are held whole; older ones are an
    index entry whose record is read back from the store (get, wait, list, idempotency)."""
    store = reopen(tmp_path / "db")
    c = make(store, cache_executions=5, max_executions=100)
    c.add_node("n1", cores=64.0)
    c.deploy("f")
    for i in range(30):
        c.svc.submit(CLIENT, P.Invoke(id=i + 1, function="f", idempotency_key=f"k{i}"),
                     b"in", c.now, eid=f"e{i:02d}")
        c.result("n1", f"e{i:02d}", payload=b"out%d" % i)
        c.now += 1
    c.svc.flush()
    assert len(c.svc.execs) <= 5 and len(c.svc.archive) >= 25
    old = c.svc.get("e00")
    assert old.info.status == "succeeded" and old.output == b"out0"
    res, payload = c.svc.wait(OTHER, P.GetExecution(id=900, execution_id="e03", wait=5), c.now)
    assert res.execution.execution_id == "e03" and payload == b"out3"
    page, total, _ = c.svc.list_executions(P.ListExecutions(id=901, limit=4, offset=26))
    assert total == 30 and [i.execution_id for i in page] == ["e03", "e02", "e01", "e00"]
    # the same idempotency key still answers with the archived execution
    res, payload = c.svc.submit(CLIENT, P.Invoke(id=902, function="f", idempotency_key="k1"),
                                b"in", c.now)
    assert res.execution.execution_id == "e01" and payload == b"out1"
    assert c.svc.counts["submitted"] == 30


def test_retention_by_count_and_age(make, tmp_path):
    store = reopen(tmp_path / "db")
    c = make(store, cache_executions=2, max_executions=100, retention_age=3600.0)
    c.add_node("n1", cores=64.0)
    c.deploy("f")
    for i in range(120):
        c.submit(f"e{i:03d}")
        c.result("n1", f"e{i:03d}")
        c.now += 1
    c.svc.flush()
    assert len(c.svc.execs) + len(c.svc.archive) == 100
    assert "e000" not in c.svc.archive and "e119" in {*c.svc.execs, *c.svc.archive}
    assert store.get(b"ex/e000") is None and store.get(b"ex/e119") is not None
    c.now += 3600 - 60  # e000..e059 are older than an hour now
    c.svc.tick(c.now)
    kept = {*c.svc.execs, *c.svc.archive}
    assert min(kept) >= "e060" and "e119" in kept
    assert store.get(b"ex/e030") is None
