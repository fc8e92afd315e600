"""The SMS's admin queries: execution filters and cursors, function statistics, drain."""

from __future__ import annotations

from spear import protocol as P
from spear.sms import queries
from spear.sms.events import Stopping

from .test_core import T0, Harness, dispatch, h, only  # noqa: F401 - h is a fixture


def _listing(h: Harness, **kw) -> P.ExecutionList:
    (reply,) = only(h.send(P.ListExecutions(id=h.next_id(), **kw)), P.ExecutionList)
    return reply.msg


def _submit(h: Harness, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        h.now += 1.0
        (acc,) = only(h.invoke(), P.Accepted)
        ids.append(acc.msg.execution_id)
    return ids


def test_a_cursor_pages_through_without_gaps_or_repeats(h):
    ids = _submit(h, 7)
    seen, cursor, pages = [], "", 0
    while True:
        page = _listing(h, limit=3, cursor=cursor)
        assert page.total == (7 if pages == 0 else 9)  # all that match, the cursor aside
        seen += [i.execution_id for i in page.executions]
        pages += 1
        if pages == 1:
            _submit(h, 2)  # newer executions do not shift the pages being read
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == ids[::-1] and pages == 3


def test_time_range_and_id_prefix_filter(h):
    ids = _submit(h, 5)  # submitted at T0+1 .. T0+5
    page = _listing(h, since=T0 + 2, until=T0 + 4)
    assert [i.execution_id for i in page.executions] == [ids[2], ids[1]]
    whole = ids[3]
    # ids made in the same millisecond share their first 13 digits: a longer prefix
    for prefix in (whole[:28], whole.replace("-", "")[:24], whole):
        page = _listing(h, prefix=prefix)
        assert [i.execution_id for i in page.executions] == [whole], prefix
    assert _listing(h, prefix="ffffffff").total == 0


def _info(eid: str, fn: str, status: str, submitted: float, took: float = 0.0,
          cold: bool = False) -> P.ExecutionInfo:
    return P.ExecutionInfo(execution_id=eid, function=fn, status=status, submitted_at=submitted,
                           finished_at=submitted + took if status in P.TERMINAL else 0.0,
                           cold=cold)


def test_function_stats_count_slice_and_rank_durations():
    now = 1000.0
    live = [_info("a4", "f", "running", 995.0), _info("a3", "f", "failed", 990.0, 2.0),
            _info("a2", "g", "succeeded", 970.0, 0.5, cold=True)]
    archived = [queries.index_entry(_info(f"b{k}", "f", "succeeded", 950.0 - k, 1.0 + k,
                                          cold=k == 0), "") for k in range(10)]
    archived.append(queries.index_entry(_info("old", "f", "succeeded", 100.0, 1.0), ""))
    stats = queries.function_stats(live, archived, now=now, window=60.0, slices=6)
    f, g = stats
    assert (f.name, g.name) == ("f", "g")
    assert (f.total.calls, f.total.errors, f.total.cold, f.active) == (12, 1, 1, 1)
    assert f.total.p50 == 5.0 and f.total.p99 == 10.0  # "old" is outside the window
    assert [s.calls for s in f.slices] == [9, 1, 0, 0, 0, 2]
    assert f.slices[0].start == 940.0 and f.slices[-1].start == 990.0
    assert (g.total.calls, g.total.cold, g.total.p50) == (1, 1, 0.5)
    only_g = queries.function_stats(live, archived, now=now, window=60.0, slices=6, function="g")
    assert [s.name for s in only_g] == ["g"]


def test_function_stats_look_past_a_long_run_archived_late():
    # a run submitted before the window, archived after newer ones: the pass goes on
    long = queries.index_entry(_info("long", "f", "succeeded", 100.0, 900.0), "")
    archived = [long] + [queries.index_entry(_info(f"n{k}", "f", "succeeded", 990.0 - k, 1.0), "")
                         for k in range(3)]
    (f,) = queries.function_stats([], archived, now=1000.0, window=60.0, slices=2)
    assert f.total.calls == 3


def test_stats_with_a_window_answers_per_function_figures(h):
    _submit(h, 3)
    (reply,) = only(h.send(P.Stats(id=h.next_id())), P.StatsReply)
    assert reply.msg.functions == []  # no window asked: no pass over the records
    (reply,) = only(h.send(P.Stats(id=h.next_id(), window=60.0, slices=3)), P.StatsReply)
    (f,) = reply.msg.functions
    assert f.name == "f" and f.total.calls == 3 and len(f.slices) == 3


def test_a_drained_node_gets_no_new_work_until_undone_even_after_it_registers_again(h):
    (reply,) = only(h.send(P.DrainNode(id=h.next_id(), node_id="n1")), P.NodeReply)
    assert reply.msg.node.state == "draining"
    sent = h.invoke()
    assert not only(sent, P.Dispatch)  # it waits in the queue
    h.register("n1")
    assert h.core.registry.nodes["n1"].state == "draining"
    (reply,) = only(h.send(P.DrainNode(id=h.next_id(), node_id="n1", drain=False)), P.NodeReply)
    assert reply.msg.node.state == "ready"
    assert h.core.tasks.queued == 0  # the waiting execution went to n1 when the drain ended


def test_draining_an_unknown_node_is_not_found(h):
    (err,) = only(h.send(P.DrainNode(id=h.next_id(), node_id="nope")), P.ErrorReply)
    assert err.msg.code == "NOT_FOUND"


def test_the_drain_is_kept_with_the_node_record(h):
    h.send(P.DrainNode(id=h.next_id(), node_id="n1"))
    h.run(Stopping())  # the final flush writes the node records
    again = Harness(store=h.store)
    assert "n1" in again.core.registry.drained
    again.register("n1")
    assert again.core.registry.nodes["n1"].state == "draining"


def test_dispatch_resumes_on_undrain(h):
    h.send(P.DrainNode(id=h.next_id(), node_id="n1"))
    h.invoke()
    sent = h.send(P.DrainNode(id=h.next_id(), node_id="n1", drain=False))
    ident, d = dispatch(sent)
    assert ident == b"n1" and d.function == "f"
