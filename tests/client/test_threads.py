"""The blocking Client shared between threads, against a real embedded cluster.

Every wait here is bounded (a join with a timeout, pytest-timeout on top):
a client that hangs fails the test instead of stalling the run.
"""

from __future__ import annotations

import threading

import pytest

from spear import Client, errors
from spear.cluster import Cluster
from tests.helpers import FAST_HB, add_spec, wait_for

pytestmark = pytest.mark.timeout(120)

THREADS = 8
CALLS = 50


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("threads") / "cluster", spearlets=1, store="memory",
                **FAST_HB)
    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(add_spec("th-add"))
        yield c
    finally:
        c.stop()


def run_threads(target, n: int = THREADS, join: float = 90.0) -> list:
    """Run ``target(i)`` in ``n`` threads; the failures (or hung threads) they left."""
    failures: list = []

    def body(i):
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append((i, exc))

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join)
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"threads still running after {join:g}s: {hung}"
    return failures


def test_eight_threads_share_one_client_and_each_gets_its_own_replies(cluster):
    with Client(cluster.sms_addr, timeout=20) as c:
        def work(i):
            for k in range(CALLS):
                r = c.invoke("th-add", args=[i, k])
                assert r.ok, r
                assert r.output == f"{i + k}".encode(), (i, k, r.output)
            for k in range(5):
                eid = c.submit("th-add", args=[i, 1000 + k])
                r = c.wait(eid, timeout=20)
                assert r.output == f"{i + 1000 + k}".encode(), (i, k, r.output)
        assert run_threads(work) == []


def test_close_from_another_thread_wakes_every_waiter(cluster):
    c = Client(cluster.sms_addr, timeout=30)
    c.ping()
    started = threading.Barrier(THREADS + 1)
    seen: list = []

    def waiter(i):
        started.wait(10)
        try:
            # a long wait on an execution id that never finishes
            c.execution("no-such-execution-" + str(i), wait=25)
        except errors.SpearError as exc:
            seen.append(exc)

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    started.wait(10)
    c.close()
    for t in threads:
        t.join(10)
    assert not [t for t in threads if t.is_alive()], "a waiter was not woken by close()"
    assert len(seen) == THREADS
    with pytest.raises(errors.Unavailable, match="closed"):
        c.ping()


def test_close_ends_an_event_subscription_and_a_stream_iterated_in_other_threads(cluster):
    c = Client(cluster.sms_addr, timeout=30)
    assert c.invoke("th-add", args=[2, 3]).output == b"5"
    got: dict = {}

    def follow():
        try:
            for _ in c.events(0):
                got["event"] = True
        except errors.Unavailable as exc:
            got["events"] = exc

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    # the replay holds the node's registration: the subscription is live once it came
    wait_for(lambda: got.get("event"), 10.0, "the first replayed event")
    c.close()
    t.join(10)
    assert not t.is_alive(), "events() was not woken by close()"
    assert "closed" in str(got["events"])
    with pytest.raises(errors.Unavailable, match="closed"):
        list(c.stream("th-add", args=[1, 1]))


def test_streams_from_many_threads_get_their_own_chunks_and_results(cluster):
    with Client(cluster.sms_addr, timeout=20) as c:
        def work(i):
            for k in range(10):
                items = list(c.stream("th-add", args=[i, k]))
                assert items[-1].output == f"{i + k}".encode(), (i, k, items[-1])
        assert run_threads(work) == []
