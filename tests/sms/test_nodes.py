"""NodeRegistry, the SMS node core: driven by a fake clock, no I/O, no sleeps."""

from __future__ import annotations

import msgspec
import pytest

from spear import errors
from spear.protocol import NodeInfo, Usage
from spear.sms.nodes import PREFIX, NodeEvent, NodeRegistry
from spear.store import open_store

T0 = 1_000_000.0
TIMEOUT = 5.0
CLEANUP = 60.0


def make(store, now=T0, events=None) -> NodeRegistry:
    return NodeRegistry(store, heartbeat_timeout=TIMEOUT, cleanup_interval=CLEANUP, now=now,
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
    reg.tick(T0 + TIMEOUT + 1)
    assert stored(store, "n1").state == "unhealthy"


def test_heartbeat_resumes_to_ready(reg, store, events):
    reg.register(node(), T0)
    reg.tick(T0 + TIMEOUT + 1)
    events.clear()
    assert reg.heartbeat("n1", Usage(load1=0.5), T0 + TIMEOUT + 2)
    info = reg.get("n1")
    assert info.state == "ready"
    assert info.usage.load1 == 0.5
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
    assert stored(store, "n1") is not None
    evs = reg.tick(t_unhealthy + CLEANUP)
    assert [(e.node_id, e.old, e.new) for e in evs] == [("n1", "unhealthy", "gone")]
    assert reg.list() == []
    with pytest.raises(errors.NotFound):
        reg.get("n1")
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
    events.clear()
    info = reg.deregister("n1", T0 + 1)
    assert info.node_id == "n1"
    assert reg.list() == []
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
    make(store).register(node("n", "n"), T0)
    assert [n.node_id for n in make(store, now=T0).list()] == ["n"]
