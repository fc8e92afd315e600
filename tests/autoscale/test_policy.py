"""The autoscaler's policy on a fake clock: bounds, cooldowns, hysteresis, drain before remove."""

from __future__ import annotations

import pytest

from spear.autoscale.policy import NodeView, Observation, Policy, Settings
from spear.autoscale.providers.base import NodeType

SMALL = NodeType(name="small", provider="local", min_nodes=0, max_nodes=5)


def node(i: int, *, running: int = 0, state: str = "ready", owned: bool = True, warm=(), slots: int = 2):
    return NodeView(node_id=f"n{i}", name=f"auto-{i}", node_type="small" if owned else "",
                    owned=owned, state=state, running=running, slots=slots, warm=frozenset(warm))


def policy(**kw) -> Policy:
    base = dict(min_nodes=1, max_nodes=4, scale_down_idle_s=10, up_cooldown=5, down_cooldown=20,
                up_ticks=2, protect_idle_s=100, settle_s=1)
    base.update(kw)
    return Policy(Settings(**base), [SMALL])


def actions(decisions):
    return [(d.action, d.node_type or d.node_id, d.count) for d in decisions]


def test_below_min_scales_up_at_once_and_counts_what_is_starting():
    p = policy(min_nodes=2)
    assert actions(p.tick(Observation(now=0))) == [("scale_up", "small", 2)]
    assert p.tick(Observation(now=1, starting={"small": 2})) == []
    assert p.tick(Observation(now=2, nodes=(node(1), node(2)))) == []


def test_type_min_is_kept_too():
    p = Policy(Settings(min_nodes=0, max_nodes=9), [NodeType(name="a", provider="local", min_nodes=1),
                                                      NodeType(name="b", provider="local", min_nodes=0)])
    assert actions(p.tick(Observation(now=0))) == [("scale_up", "a", 1)]


def test_a_one_tick_burst_starts_nothing_a_sustained_queue_does():
    p = policy()
    busy = (node(1, running=2),)
    assert p.tick(Observation(now=0, queued=5, nodes=busy)) == []
    assert p.tick(Observation(now=1, queued=0, nodes=busy)) == []
    assert p.tick(Observation(now=2, queued=5, nodes=busy)) == []
    # 5 queued, 2 slots a node: 3 more nodes, capped by max_nodes=4 (1 already)
    assert actions(p.tick(Observation(now=3, queued=5, nodes=busy))) == [("scale_up", "small", 3)]


def test_scale_up_respects_cooldown_and_max():
    p = policy(max_nodes=3)
    busy = (node(1, running=2),)
    p.tick(Observation(now=0, queued=2, nodes=busy))
    assert actions(p.tick(Observation(now=1, queued=2, nodes=busy))) == [("scale_up", "small", 1)]
    busy2 = busy + (node(2, running=2),)
    assert p.tick(Observation(now=3, queued=4, nodes=busy2)) == []  # cooldown
    assert actions(p.tick(Observation(now=7, queued=4, nodes=busy2))) == [("scale_up", "small", 1)]
    full = busy2 + (node(3, running=2),)
    assert p.tick(Observation(now=20, queued=9, nodes=full)) == []  # at max_nodes


def test_queued_cores_size_the_scale_up():
    p = Policy(Settings(min_nodes=0, max_nodes=10, up_ticks=1),
               [NodeType(name="small", provider="local", cores=2, max_nodes=10)])
    d = p.tick(Observation(now=0, queued=1, queued_cores=7.0))
    assert actions(d) == [("scale_up", "small", 4)]


def test_idle_nodes_are_drained_one_at_a_time_then_removed_when_idle():
    p = policy()
    nodes = (node(1), node(2), node(3))
    assert p.tick(Observation(now=0, nodes=nodes)) == []
    assert p.tick(Observation(now=9, nodes=nodes)) == []       # not idle long enough
    d = p.tick(Observation(now=30, nodes=nodes))
    assert actions(d) == [("drain", "n1", 0)]
    nodes = (node(1, state="draining"), node(2), node(3))
    d = p.tick(Observation(now=31, nodes=nodes))
    assert ("remove", "n1", 0) in actions(d)
    assert not any(a == "drain" for a, _, _ in actions(d))  # down cooldown since the drain
    d = p.tick(Observation(now=52, nodes=(node(2), node(3))))
    assert actions(d) == [("drain", "n2", 0)]
    # the last one stays: min_nodes=1
    assert p.tick(Observation(now=200, nodes=(node(3),))) == []


def test_a_draining_node_with_work_is_not_removed():
    p = policy()
    nodes = (node(1, state="draining", running=1), node(2))
    assert p.tick(Observation(now=0, nodes=nodes)) == []
    assert p.tick(Observation(now=50, nodes=nodes)) == []
    d = p.tick(Observation(now=51, nodes=(node(1, state="draining"), node(2))))
    assert d == []  # settle_s: idle for 0s yet
    d = p.tick(Observation(now=53, nodes=(node(1, state="draining"), node(2))))
    assert actions(d) == [("remove", "n1", 0)]


def test_no_scale_down_right_after_a_scale_up_nor_while_work_waits():
    p = policy(up_ticks=1)
    busy = (node(1, running=2),)
    assert actions(p.tick(Observation(now=100, queued=1, nodes=busy))) == [("scale_up", "small", 1)]
    nodes = (node(1), node(2))
    assert p.tick(Observation(now=101, nodes=nodes)) == []
    assert p.tick(Observation(now=115, nodes=nodes)) == []  # idle 14s but down_cooldown 20s
    assert actions(p.tick(Observation(now=121, nodes=nodes)))[0][0] == "drain"
    p2 = policy()
    assert p2.tick(Observation(now=0, nodes=nodes)) == []
    assert p2.tick(Observation(now=50, queued=1, nodes=nodes)) == []  # queued: nothing drained


def test_demand_resumes_a_draining_node_before_starting_one():
    p = policy(up_ticks=1)
    nodes = (node(1, running=2), node(2, state="draining"))
    assert actions(p.tick(Observation(now=0, queued=3, nodes=nodes))) == [("resume", "n2", 0)]


def test_foreign_nodes_count_but_are_never_drained():
    p = policy(min_nodes=1)
    nodes = (node(1, owned=False), node(2))
    p.tick(Observation(now=0, nodes=nodes))
    assert actions(p.tick(Observation(now=100, nodes=nodes))) == [("drain", "n2", 0)]
    p = policy(min_nodes=1)
    assert p.tick(Observation(now=0, nodes=(node(1, owned=False),))) == []
    assert p.tick(Observation(now=100, nodes=(node(1, owned=False),))) == []


def test_the_only_warm_node_of_a_busy_function_is_kept_until_idle_long_enough():
    p = policy(min_nodes=0)
    nodes = (node(1, warm={"f"}), node(2, warm={"g"}))
    busy = frozenset({"f"})
    p.tick(Observation(now=0, nodes=nodes, busy=busy))
    d = p.tick(Observation(now=50, nodes=nodes, busy=busy))
    assert actions(d) == [("drain", "n2", 0)]  # n1 holds f's only warm instance
    nodes = (node(1, warm={"f"}), node(2, state="draining"))
    assert all(a != "drain" for a, _, _ in actions(p.tick(Observation(now=80, nodes=nodes, busy=busy))))
    d = p.tick(Observation(now=101, nodes=(node(1, warm={"f"}),), busy=busy))
    assert actions(d) == [("drain", "n1", 0)]  # idle past protect_idle_s


def test_a_warm_function_held_twice_does_not_protect():
    p = policy(min_nodes=0)
    nodes = (node(1, warm={"f"}), node(2, warm={"f"}))
    busy = frozenset({"f"})
    p.tick(Observation(now=0, nodes=nodes, busy=busy))
    assert actions(p.tick(Observation(now=50, nodes=nodes, busy=busy))) == [("drain", "n1", 0)]


def test_never_flaps_under_a_steady_load():
    """A load the nodes hold, with short queues now and then, gives at most one scale up."""
    p = policy(up_ticks=2)
    ups = downs = 0
    nodes = (node(1, running=2), node(2, running=1))
    for t in range(200):
        queued = 1 if t % 7 == 0 else 0
        for d in p.tick(Observation(now=float(t), queued=queued, nodes=nodes)):
            ups += d.action == "scale_up"
            downs += d.action == "drain"
    assert ups == 0 and downs == 0


def test_no_node_types_is_an_error():
    with pytest.raises(ValueError):
        Policy(Settings(), [])


def test_short_calls_between_heartbeats_keep_a_node_busy():
    """``running`` is 0 at every look, but the SMS's records show it worked lately."""
    p = policy(min_nodes=0)
    p.tick(Observation(now=0, nodes=(node(1),)))
    for t in range(5, 60, 5):
        recent = NodeView(node_id="n1", name="auto-1", node_type="small", owned=True, slots=2,
                          last_active=t - 1.0)
        assert p.tick(Observation(now=float(t), nodes=(recent,))) == []
    assert actions(p.tick(Observation(now=100, nodes=(recent,)))) == [("drain", "n1", 0)]


def test_with_no_node_of_its_own_yet_a_scale_up_is_sized_by_the_other_nodes_slots():
    p = policy(max_nodes=10, up_ticks=1)
    foreign = (node(1, owned=False, running=4, slots=4),)
    assert actions(p.tick(Observation(now=0, queued=8, nodes=foreign))) == [("scale_up", "small", 2)]
