"""Durability of the executions with a fake clock: what is on disk after a
"crash" (new executions recovered from the same store, without flush or close).

Real daemons, disks and signals: tests/integration/test_durability.py.
"""

from __future__ import annotations

import pytest

from spear import errors, protocol as P
from spear.protocol import TERMINAL
from spear.store.guarded import GuardedStore
from spear.store.memory import MemoryStore

from .test_tasks import CLIENT, OTHER, Cluster


class Breakable(MemoryStore):
    broken = False

    def write_batch(self, puts=(), deletes=(), *, sync=False):
        if self.broken:
            raise OSError(28, "No space left on device")
        super().write_batch(puts, deletes, sync=sync)

    def put(self, key, value, *, sync=False):
        if self.broken:
            raise OSError(28, "No space left on device")
        super().put(key, value, sync=sync)


def crash_and_restart(c: Cluster) -> Cluster:
    """What a restarted SMS loads: the store as it is now, nothing flushed."""
    return Cluster(c.store, now=c.now + 1)


def balanced(svc) -> bool:
    counts = svc.counts
    return counts["submitted"] == sum(counts[s] for s in TERMINAL) + svc.active()


def submit(c: Cluster, mode: str = "async", *, key: str = "", owner: str = "",
           client: bytes = CLIENT):
    msg = P.Invoke(id=c.rid(), function="f", mode=mode, idempotency_key=key)
    reply = c.svc.submit(client, msg, b"in", c.now, owner)
    if c.svc.unacked:
        c.svc.commit(c.now)
    acks = [m for m, _ in c.out.client_msgs(client) if getattr(m, "id", None) == msg.id]
    return reply or (acks[-1] if acks else None)


@pytest.fixture
def c():
    c = Cluster(GuardedStore(Breakable()))
    c.add_node("n1")
    c.deploy("f")
    return c


def test_counters_are_written_with_the_acknowledged_records(c):
    done = submit(c, "sync")  # finished: its record and counters are dirty, not written
    c.result("n1", c.out.dispatches()[-1][1].execution_id)
    acc = submit(c)  # the group commit writes them with the new record, synced
    assert isinstance(acc, P.Accepted)
    assert done is None
    r = crash_and_restart(c)
    assert r.svc.counts["submitted"] == 2 and r.svc.counts["succeeded"] == 1
    assert balanced(r.svc)
    assert r.svc.get(acc.execution_id).info.status not in TERMINAL
    # the one in flight ends once: the counts still add up
    r.add_node("n1")
    r.result("n1", acc.execution_id)
    assert r.svc.counts["succeeded"] == 2 and balanced(r.svc) and r.svc.active() == 0


def test_a_failed_commit_acknowledges_nothing_runs_nothing_and_counts_nothing(c):
    c.store.inner.broken = True
    sent = len(c.out.dispatches())
    reply = submit(c, key="K")
    assert isinstance(reply, P.ErrorReply) and reply.code == "UNAVAILABLE"
    assert len(c.out.dispatches()) == sent
    assert c.svc.counts["submitted"] == 0 and c.svc.counts["refused_unpersisted"] == 1
    assert balanced(c.svc) and not c.svc.by_idem
    # read-only now: refused before anything is made
    with pytest.raises(errors.Unavailable, match="storage is failing"):
        submit(c, "sync")
    c.store.inner.broken = False
    assert c.store.probe()
    retry = submit(c, key="K")  # the same key after recovery: a new, real execution
    assert isinstance(retry, P.Accepted)
    assert crash_and_restart(c).svc.get(retry.execution_id)


def test_idempotency_keys_are_per_caller_and_survive_a_crash(c):
    a = submit(c, key="K", owner="alice").execution_id
    assert submit(c, key="K", owner="alice").execution_id == a
    b = submit(c, key="K", owner="bob", client=OTHER).execution_id
    assert a != b
    r = crash_and_restart(c)
    r.add_node("n1")
    assert submit(r, key="K", owner="alice").execution_id == a
    assert submit(r, key="K", owner="bob", client=OTHER).execution_id == b
    assert r.svc.counts["submitted"] == 2 and balanced(r.svc)
    # a sync caller with a key used before gets the first execution's result
    r.result("n1", a)
    res = r.svc.submit(CLIENT, P.Invoke(id=r.rid(), function="f", mode="sync",
                                        idempotency_key="K"), b"", r.now, "alice")
    assert isinstance(res[0], P.Result) and res[0].execution.execution_id == a


def test_a_sync_repeat_of_a_running_key_waits_for_the_first_result(c):
    msg = P.Invoke(id=c.rid(), function="f", mode="sync", idempotency_key="S")
    assert c.svc.submit(CLIENT, msg, b"in", c.now, "alice") is None
    again = P.Invoke(id=c.rid(), function="f", mode="sync", idempotency_key="S")
    assert c.svc.submit(OTHER, again, b"in", c.now, "alice") is None  # waits: nothing new
    (eid,) = {m.execution_id for _, m, _ in c.out.dispatches()}
    c.result("n1", eid)
    for who, rid in ((CLIENT, msg.id), (OTHER, again.id)):
        (res, out), = [(m, p) for m, p in c.out.client_msgs(who, P.Result) if m.id == rid]
        assert res.execution.execution_id == eid and out == b"output"
    assert c.svc.counts["submitted"] == 1 and c.svc.counts["deduplicated"] == 1


def test_counts_balance_after_a_crash_with_a_sync_invocation_queued():
    """A queued sync invocation is counted in 'submitted' and its record is written
    in the same batch as the counters, so a crash meanwhile leaves them balanced."""
    c = Cluster(GuardedStore(Breakable()))
    c.deploy("f")  # no node yet (just restarted, say): work waits in the queue
    assert submit(c, "sync") is None
    assert isinstance(submit(c), P.Accepted)  # the group commit writes the counters
    assert c.svc.queued == 2
    r = crash_and_restart(c)
    assert balanced(r.svc), (dict(r.svc.counts), r.svc.active())
