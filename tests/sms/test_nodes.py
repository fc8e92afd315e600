"""NodeRegistry, the node part of the SMS core: driven by a fake clock, no sleeps.

Its records are read from a store at start and its flushes written to it at
once, as the core and the daemon do together (see conftest.drive).
"""

from __future__ import annotations

import msgspec
import pytest

from spear import errors
from spear.protocol import NodeInfo, Usage
from spear.sms.nodes import PREFIX, NodeEvent, NodeRegistry
from spear.store import open_store

from .conftest import drive

T0 = 1_000_000.0
TIMEOUT = 5.0
CLEANUP = 60.0


class StoredRegistry(NodeRegistry):
    """A NodeRegistry over ``store``: recovered from it, flushed into it."""

    def __init__(self, store, **kw) -> None:
        super().__init__(list(store.scan(PREFIX)), **kw)
        self.store = store

    def flush(self) -> int:
        return drive(super().flush(), self.store)


def make(store, now=T0, events=None) -> NodeRegistry:
    return StoredRegistry(store, heartbeat_timeout=TIMEOUT, cleanup_interval=CLEANUP, now=now,
                          on_event=None if events is None else events.append)


def node(node_id="n1", name="alpha", **kw) -> NodeInfo:
    kw.setdefault("address", f"tcp://127.0.0.1:7701/{node_id}")
    return NodeInfo(node_id=node_id, name=name, **kw)


def stored(store, node_id) -> NodeInfo | None:
    raw = store.get(PREFIX + node_id.encode())
    return None if raw is None else msgspec.msgpack.decode(raw, type=NodeInfo)


@pytest.fixture
def events():
    return []


@pytest.fixture
def reg(store, events) -> NodeRegistry:
    return make(store, events=events)


# ---------------------------------------------------------------- register


def test_register_makes_the_node_ready(reg, store, events):
    info = reg.register(node(state="gone", registered_at=1.0, last_seen=2.0), T0)
    assert info.state == "ready"
    assert info.registered_at == T0
    assert info.last_seen == T0
    assert reg.get("n1") == info
    reg.flush()
    assert stored(store, "n1") == info
    assert events == [NodeEvent("n1", "", "ready", "registered")]


def test_reregister_keeps_registered_at(reg):
    reg.register(node(), T0)
    again = reg.register(node(address="tcp://elsewhere:1"), T0 + 3)
    assert again.registered_at == T0
    assert again.last_seen == T0 + 3
    assert reg.get("n1").address == "tcp://elsewhere:1"
    assert len(reg.list()) == 1


# ---------------------------------------------------------------- heartbeats


def test_heartbeat_updates_usage_and_last_seen(reg):
    reg.register(node(), T0)
    usage = Usage(cpu_percent=42.0, memory_used=123, running=3)
    assert reg.heartbeat("n1", usage, T0 + 1.5) is True
    info = reg.get("n1")
    assert info.usage == usage
    assert info.last_seen == T0 + 1.5
    assert info.state == "ready"


def test_heartbeat_from_unknown_node_is_false(reg):
    assert reg.heartbeat("ghost", Usage(), T0) is False
    assert reg.list() == []


def test_no_heartbeat_for_timeout_makes_unhealthy_not_before(reg, events):
    reg.register(node(), T0)
    events.clear()
    assert reg.tick(T0 + TIMEOUT - 0.001) == []
    assert reg.get("n1").state == "ready"
    assert reg.tick(T0 + TIMEOUT + 0.001) == [
        NodeEvent("n1", "ready", "unhealthy", "no heartbeat for 5.0s")]
    assert reg.get("n1").state == "unhealthy"
    assert events == [NodeEvent("n1", "ready", "unhealthy", "no heartbeat for 5.0s")]


def test_heartbeats_keep_a_node_ready(reg):
    reg.register(node(), T0)
    for i in range(1, 20):
        now = T0 + i * (TIMEOUT - 1)
        assert reg.heartbeat("n1", Usage(), now)
        assert reg.tick(now + TIMEOUT - 0.01) == []
    assert reg.get("n1").state == "ready"


def test_unhealthy_state_is_persisted(reg, store):
    reg.register(node(), T0)
    reg.flush()
    reg.tick(T0 + TIMEOUT + 1)
    assert stored(store, "n1").state == "ready"  # not before the next flush
    reg.flush()
    assert stored(store, "n1").state == "unhealthy"


def test_legacy_heartbeat_without_session_resumes_to_ready(reg, store, events):
    """A heartbeat without a session token (session=0: a peer older than sessions,
    or an in-process caller) is checked by node id only, as before sessions."""
    reg.register(node(), T0)
    reg.tick(T0 + TIMEOUT + 1)
    events.clear()
    assert reg.heartbeat("n1", Usage(load1=0.5), T0 + TIMEOUT + 2)
    info = reg.get("n1")
    assert info.state == "ready"
    assert info.usage.load1 == 0.5
    reg.flush()
    assert stored(store, "n1").state == "ready"
    assert events == [NodeEvent("n1", "unhealthy", "ready", "heartbeat resumed")]
    # and it is no longer on the way out: kept alive, it outlives the cleanup deadline
    t_cleanup = T0 + TIMEOUT + 1 + CLEANUP
    assert reg.heartbeat("n1", Usage(), t_cleanup - 1)
    assert reg.tick(t_cleanup + 0.5) == []
    assert reg.get("n1").state == "ready"


def test_unhealthy_for_cleanup_interval_is_gone_and_removed(reg, store):
    reg.register(node(), T0)
    t_unhealthy = T0 + TIMEOUT + 1
    reg.tick(t_unhealthy)
    assert reg.tick(t_unhealthy + CLEANUP - 0.001) == []
    assert reg.get("n1").state == "unhealthy"
    reg.flush()
    assert stored(store, "n1") is not None
    evs = reg.tick(t_unhealthy + CLEANUP)
    assert [(e.node_id, e.old, e.new) for e in evs] == [("n1", "unhealthy", "gone")]
    assert reg.list() == []
    with pytest.raises(errors.NotFound):
        reg.get("n1")
    reg.flush()
    assert stored(store, "n1") is None
    assert list(store.scan(PREFIX)) == []
    assert reg.heartbeat("n1", Usage(), t_unhealthy + CLEANUP + 1) is False


def test_one_long_tick_goes_ready_to_unhealthy_then_waits_for_cleanup(reg):
    reg.register(node(), T0)
    # a tick far in the future marks it unhealthy now; removal waits a full cleanup_interval
    far = T0 + 10 * CLEANUP
    assert [e.new for e in reg.tick(far)] == ["unhealthy"]
    assert [e.new for e in reg.tick(far + CLEANUP)] == ["gone"]


def test_reregistration_after_removal_is_ready(reg, store):
    reg.register(node(), T0)
    reg.tick(T0 + TIMEOUT + 1)
    reg.tick(T0 + TIMEOUT + 1 + CLEANUP)
    t = T0 + 1000
    info = reg.register(node(), t)
    assert info.state == "ready"
    assert info.registered_at == t
    reg.flush()
    assert stored(store, "n1").state == "ready"


def test_reregistration_while_unhealthy_is_ready_and_cancels_cleanup(reg):
    reg.register(node(), T0)
    reg.tick(T0 + TIMEOUT + 1)
    reg.register(node(), T0 + TIMEOUT + 2)
    assert reg.get("n1").state == "ready"
    t_cleanup = T0 + TIMEOUT + 1 + CLEANUP
    assert reg.heartbeat("n1", Usage(), t_cleanup - 1)
    assert reg.tick(t_cleanup) == []
    assert reg.get("n1").state == "ready"


def test_tick_only_touches_stale_nodes(reg):
    reg.register(node("a", "a"), T0)
    reg.register(node("b", "b"), T0 + 4)
    evs = reg.tick(T0 + TIMEOUT + 1)
    assert [(e.node_id, e.new) for e in evs] == [("a", "unhealthy")]
    assert reg.get("b").state == "ready"


def test_on_event_sees_what_tick_returns(store):
    seen = []
    reg = make(store, events=seen)
    reg.register(node(), T0)
    seen.clear()
    out = reg.tick(T0 + TIMEOUT + 1) + reg.tick(T0 + TIMEOUT + 1 + CLEANUP)
    assert seen == out
    assert [e.new for e in out] == ["unhealthy", "gone"]


# ---------------------------------------------------------------- deregister


def test_deregister_removes(reg, store, events):
    reg.register(node(), T0)
    reg.flush()
    events.clear()
    info = reg.deregister("n1", T0 + 1)
    assert info.node_id == "n1"
    assert reg.list() == []
    reg.flush()
    assert stored(store, "n1") is None
    assert events == [NodeEvent("n1", "ready", "gone", "deregistered")]


def test_deregister_unknown_is_not_found(reg):
    with pytest.raises(errors.NotFound, match="ghost"):
        reg.deregister("ghost", T0)


def test_deregister_of_unhealthy_node_stops_its_cleanup(reg):
    reg.register(node(), T0)
    reg.tick(T0 + TIMEOUT + 1)
    reg.deregister("n1", T0 + TIMEOUT + 2)
    assert reg.tick(T0 + TIMEOUT + 1 + CLEANUP) == []


# ---------------------------------------------------------------- queries


def test_get_by_id_or_name(reg):
    reg.register(node("id-1", "alpha"), T0)
    reg.register(node("id-2", "beta"), T0)
    assert reg.get("id-1").name == "alpha"
    assert reg.get("beta").node_id == "id-2"
    with pytest.raises(errors.NotFound):
        reg.get("gamma")


def test_id_wins_over_name(reg):
    reg.register(node("alpha", "x"), T0)
    reg.register(node("id-2", "alpha"), T0)
    assert reg.get("alpha").node_id == "alpha"


def test_list_sorted_and_filtered_by_state(reg):
    reg.register(node("c", "zeta"), T0)
    reg.register(node("a", "beta"), T0 + 4)
    reg.register(node("b", "alpha"), T0 + 4)
    reg.tick(T0 + TIMEOUT + 1)  # only "c" is stale
    assert [n.name for n in reg.list()] == ["alpha", "beta", "zeta"]
    assert [n.node_id for n in reg.list("ready")] == ["b", "a"]
    assert [n.node_id for n in reg.list("unhealthy")] == ["c"]
    assert reg.list("draining") == []


# ---------------------------------------------------------------- persistence


@pytest.fixture
def ldb_path(tmp_path):
    return str(tmp_path / "sms")


def test_restart_loads_nodes_unhealthy_then_ready_on_heartbeat(ldb_path):
    s = open_store("leveldb", ldb_path)
    try:
        reg = make(s)
        reg.register(node("a", "alpha", labels={"zone": "1"}), T0)
        reg.register(node("b", "beta"), T0)
        reg.heartbeat("a", Usage(running=1), T0 + 1)
        reg.flush()
    finally:
        s.close()

    t1 = T0 + 500
    s = open_store("leveldb", ldb_path)
    try:
        reg = make(s, now=t1)
        nodes = {n.node_id: n for n in reg.list()}
        assert set(nodes) == {"a", "b"}
        for n in nodes.values():
            assert n.state == "unhealthy"
            assert n.last_seen == t1
            assert n.registered_at == T0
        assert nodes["a"].labels == {"zone": "1"}
        assert reg.heartbeat("a", Usage(), t1 + 1)
        assert reg.get("a").state == "ready"
        # the one that never comes back is removed a cleanup_interval after load
        assert reg.heartbeat("a", Usage(), t1 + CLEANUP - 1)
        evs = reg.tick(t1 + CLEANUP)
        assert [(e.node_id, e.new) for e in evs] == [("b", "gone")]
        assert [n.node_id for n in reg.list()] == ["a"]
        reg.flush()
    finally:
        s.close()

    s = open_store("leveldb", ldb_path)
    try:
        assert [n.node_id for n in make(s, now=t1 + 100).list()] == ["a"]
    finally:
        s.close()


@pytest.mark.parametrize("raw", [
    b"\xc1\xc1 not msgpack",
    msgspec.msgpack.encode({"node_id": 5}),
    msgspec.msgpack.encode({"name": "no id"}),
    msgspec.msgpack.encode([1, 2, 3]),
    b"",
], ids=["garbage", "wrong-type", "missing-id", "not-a-map", "empty"])
def test_corrupt_record_is_skipped_not_fatal(store, raw, caplog):
    good = make(store)
    good.register(node("ok", "fine"), T0)
    good.flush()
    store.put(PREFIX + b"bad", raw)
    reg = make(store, now=T0 + 10)
    assert [n.node_id for n in reg.list()] == ["ok"]
    assert reg.get("ok").state == "unhealthy"
    assert "corrupt" in caplog.text
    # the registry still works normally afterwards
    assert reg.heartbeat("ok", Usage(), T0 + 11)
    assert reg.get("ok").state == "ready"
    assert reg.tick(T0 + 12) == []


def test_only_node_prefix_is_loaded(store):
    store.put(b"fn/x", b"\xc1")
    store.put(b"node0", b"\xc1")
    reg = make(store)
    reg.register(node("n", "n"), T0)
    reg.flush()
    assert [n.node_id for n in make(store, now=T0).list()] == ["n"]


# ---------------------------------------------------------------- sessions


def test_each_registration_starts_a_new_session(reg):
    reg.register(node(), T0)
    first = reg.session_of("n1")
    assert first > 0
    reg.register(node(), T0 + 1)
    second = reg.session_of("n1")
    assert second > 0 and second != first
    assert reg.session_of("ghost") == 0


def test_heartbeat_of_the_current_session_is_taken(reg):
    reg.register(node(), T0)
    s = reg.session_of("n1")
    assert reg.heartbeat("n1", Usage(running=2), T0 + 1, s) is True
    info = reg.get("n1")
    assert (info.last_seen, info.usage.running, info.state) == (T0 + 1, 2, "ready")
    assert reg.stale_heartbeats == 0


def test_heartbeat_of_an_older_session_changes_nothing(reg, events):
    """The node registered again (a new connection): what its old connection still
    delivers is refused and leaves last_seen, usage and state alone."""
    reg.register(node(), T0)
    old = reg.session_of("n1")
    reg.register(node(), T0 + 1)
    events.clear()
    before = reg.get("n1")
    assert reg.heartbeat("n1", Usage(running=7), T0 + 2, old) is False
    assert reg.get("n1") == before
    assert reg.stale_heartbeats == 1
    assert events == []
    # and it does not keep the node alive: it turns unhealthy on time
    assert [e.new for e in reg.tick(T0 + 1 + TIMEOUT + 0.1)] == ["unhealthy"]


def test_made_up_session_is_refused(reg):
    reg.register(node(), T0)
    s = reg.session_of("n1")
    assert reg.heartbeat("n1", Usage(), T0 + 1, s ^ 1) is False
    assert reg.get("n1").last_seen == T0


def test_unhealthy_ends_the_session_only_register_revives(reg, store, events):
    """The stale-connection bug: after a partition heals, the node's old (dead)
    connection delivers a heartbeat of its then current session. It must not turn
    the node ready (the SMS would dispatch into that connection): only the node's
    registration over its new connection does."""
    reg.register(node(), T0)
    s = reg.session_of("n1")
    reg.tick(T0 + TIMEOUT + 1)
    assert reg.get("n1").state == "unhealthy"
    assert reg.session_of("n1") == 0
    events.clear()
    assert reg.heartbeat("n1", Usage(running=3), T0 + TIMEOUT + 2, s) is False
    info = reg.get("n1")
    assert info.state == "unhealthy"
    assert info.usage.running == 0 and info.last_seen == T0
    assert events == []
    # refused heartbeats do not hold off the cleanup either
    evs = reg.tick(T0 + TIMEOUT + 1 + CLEANUP)
    assert [(e.node_id, e.new) for e in evs] == [("n1", "gone")]


def test_register_after_unhealthy_is_ready_with_a_new_session(reg, events):
    reg.register(node(), T0)
    s = reg.session_of("n1")
    reg.tick(T0 + TIMEOUT + 1)
    events.clear()
    reg.register(node(), T0 + TIMEOUT + 2)
    s2 = reg.session_of("n1")
    assert s2 not in (0, s)
    assert reg.get("n1").state == "ready"
    assert events == [NodeEvent("n1", "unhealthy", "ready", "registered")]
    assert reg.heartbeat("n1", Usage(), T0 + TIMEOUT + 3, s) is False
    assert reg.heartbeat("n1", Usage(), T0 + TIMEOUT + 3, s2) is True
    assert reg.get("n1").last_seen == T0 + TIMEOUT + 3


def test_deregister_and_removal_end_the_session(reg):
    reg.register(node("a", "a"), T0)
    reg.register(node("b", "b"), T0)
    sa = reg.session_of("a")
    reg.deregister("a", T0 + 1)
    assert reg.session_of("a") == 0
    assert reg.heartbeat("a", Usage(), T0 + 2, sa) is False
    reg.tick(T0 + TIMEOUT + 1)
    reg.tick(T0 + TIMEOUT + 1 + CLEANUP)
    assert reg.sessions == {}


def test_after_a_restart_nodes_must_register_again(store):
    """Sessions are not persisted: a heartbeat that carries one (from before the
    restart) is refused, so the node registers again and is ready."""
    reg = make(store)
    reg.register(node(), T0)
    s = reg.session_of("n1")
    reg.flush()
    again = make(store, now=T0 + 10)
    assert again.get("n1").state == "unhealthy"
    assert again.heartbeat("n1", Usage(), T0 + 11, s) is False
    assert again.get("n1").state == "unhealthy"
    again.register(node(), T0 + 12)
    assert again.heartbeat("n1", Usage(), T0 + 13, again.session_of("n1")) is True
    assert again.get("n1").state == "ready"


def test_session_factory_is_injectable(store):
    tokens = iter([11, 22])
    reg = StoredRegistry(store, heartbeat_timeout=TIMEOUT, cleanup_interval=CLEANUP, now=T0,
                       session_factory=lambda: next(tokens))
    reg.register(node(), T0)
    assert reg.session_of("n1") == 11
    reg.register(node(), T0)
    assert reg.session_of("n1") == 22


# ---------------------------------------------------------------- batched writes


class CountingStore:
    """A store wrapper that records every write call (and can be made to fail)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple] = []
        self.fail = False

    def get(self, key):
        return self.inner.get(key)

    def scan(self, prefix=b""):
        return self.inner.scan(prefix)

    def put(self, key, value, *, sync=False):
        self.calls.append(("put", key, sync))
        self.inner.put(key, value, sync=sync)

    def delete(self, key, *, sync=False):
        self.calls.append(("delete", key, sync))
        self.inner.delete(key, sync=sync)

    def write_batch(self, puts=(), deletes=(), *, sync=False):
        puts, deletes = list(puts), list(deletes)
        if self.fail:
            raise OSError("disk full")
        self.calls.append(("batch", sorted(k for k, _ in puts), sorted(deletes), sync))
        self.inner.write_batch(puts, deletes, sync=sync)


@pytest.fixture
def counted(store):
    return CountingStore(store)


def test_registration_storm_is_one_unsynced_batch(counted):
    reg = make(counted)
    for i in range(1000):
        reg.register(node(f"n{i:04d}", f"n{i}"), T0 + i * 0.001)
    assert counted.calls == []  # nothing written on the way
    assert reg.flush() == 1000
    assert len(counted.calls) == 1
    kind, keys, deletes, sync = counted.calls[0]
    assert (kind, len(keys), deletes, sync) == ("batch", 1000, [], False)
    assert len(list(counted.scan(PREFIX))) == 1000
    # nothing dirty: no write at all
    assert reg.flush() == 0
    assert len(counted.calls) == 1


def test_state_flips_are_batched_and_carry_the_latest_record(counted):
    reg = make(counted)
    for i in range(50):
        reg.register(node(f"n{i:02d}", f"n{i}"), T0)
    reg.flush()
    counted.calls.clear()
    reg.heartbeat("n00", Usage(running=5), T0 + 1, reg.session_of("n00"))
    assert reg.flush() == 0  # a heartbeat alone is soft state: not written
    reg.tick(T0 + TIMEOUT + 0.5)  # n01..n49 turn unhealthy
    reg.tick(T0 + TIMEOUT + 0.6)
    assert counted.calls == []
    assert reg.flush() == 49
    assert [c[0] for c in counted.calls] == ["batch"]
    assert all(stored(counted, f"n{i:02d}").state == "unhealthy" for i in range(1, 50))
    assert stored(counted, "n00").state == "ready"


def test_deregister_is_deleted_at_the_next_flush_synced(counted):
    reg = make(counted)
    reg.register(node("a", "a"), T0)
    reg.register(node("b", "b"), T0)
    reg.flush()
    counted.calls.clear()
    reg.deregister("a", T0 + 1)
    assert stored(counted, "a") is not None  # still there until the flush
    assert reg.flush() == 1
    assert counted.calls == [("batch", [], [PREFIX + b"a"], True)]
    assert stored(counted, "a") is None
    assert stored(counted, "b") is not None


def test_cleanup_removal_is_deleted_at_the_next_flush(counted):
    reg = make(counted)
    reg.register(node(), T0)
    reg.flush()
    reg.tick(T0 + TIMEOUT + 1)
    reg.tick(T0 + TIMEOUT + 1 + CLEANUP)
    counted.calls.clear()
    reg.flush()
    assert counted.calls == [("batch", [], [PREFIX + b"n1"], True)]
    assert list(counted.scan(PREFIX)) == []


def test_register_then_deregister_before_a_flush_leaves_no_record(counted):
    reg = make(counted)
    reg.register(node(), T0)
    reg.deregister("n1", T0 + 0.001)
    reg.flush()
    assert counted.calls == [("batch", [], [PREFIX + b"n1"], True)]
    assert stored(counted, "n1") is None


def test_deregister_then_register_before_a_flush_keeps_the_record(counted):
    reg = make(counted)
    reg.register(node(), T0)
    reg.flush()
    counted.calls.clear()
    reg.deregister("n1", T0 + 1)
    reg.register(node(address="tcp://back:1"), T0 + 1.001)
    reg.flush()
    assert counted.calls == [("batch", [PREFIX + b"n1"], [], False)]
    assert stored(counted, "n1").address == "tcp://back:1"


def test_failed_flush_keeps_everything_for_the_next(counted):
    reg = make(counted)
    reg.register(node("a", "a"), T0)
    reg.register(node("b", "b"), T0)
    reg.flush()
    reg.register(node("c", "c"), T0 + 1)
    reg.deregister("a", T0 + 1)
    counted.fail = True
    assert reg.flush() == 0  # not written: nothing forgotten either
    assert stored(counted, "c") is None and stored(counted, "a") is not None
    counted.fail = False
    assert reg.flush() == 2
    assert stored(counted, "c") is not None and stored(counted, "a") is None


def test_unflushed_changes_are_lost_in_a_crash_and_nodes_reregister(ldb_path):
    """What batching gives up: a crash loses the changes since the last flush
    (here a registration); the node is unknown, gets known=False and registers."""
    s = open_store("leveldb", ldb_path)
    try:
        reg = make(s)
        reg.register(node("kept", "kept"), T0)
        reg.flush()
        reg.register(node("late", "late"), T0 + 0.01)  # never flushed: the SMS "crashes"
    finally:
        s.close()
    s = open_store("leveldb", ldb_path)
    try:
        reg = make(s, now=T0 + 5)
        assert [n.node_id for n in reg.list()] == ["kept"]
        assert reg.heartbeat("late", Usage(), T0 + 6, 12345) is False
    finally:
        s.close()
