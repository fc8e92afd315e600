"""Assertions shared by the multi-host tests: terminal states, counts, reservations."""

from __future__ import annotations

import functools
import time

from spear import errors, protocol as P
from tests.helpers import wait_for

TERMINAL_COUNTS = ("succeeded", "failed", "cancelled", "timed_out", "lost")


#: what a client may see while a host is cut off or restarting: polls keep going
TRANSIENT = (errors.DeadlineExceeded, errors.Unavailable)
#: tests.helpers.wait_for that counts TRANSIENT errors as "not yet"
wait_for = functools.partial(wait_for, tolerate=TRANSIENT)


def slow_echo(name: str, seconds: float, *, retries: int = 0, **kw) -> P.FunctionSpec:
    """A one-shot process that sleeps then echoes its input (output == input)."""
    return P.FunctionSpec(name=name, runtime="process",
                          command=["sh", "-c", f"sleep {seconds}; cat"],
                          retries=retries, idempotent=retries > 0, **kw)


def placed_on(c, node_id: str, function: str = "") -> list[str]:
    """Ids of executions the SMS has dispatched to ``node_id`` and not finished
    (``scheduled``, or ``running`` once the node's heartbeat listed them)."""
    out = []
    for status in ("scheduled", "running"):
        items, _ = c.executions(node_id=node_id, status=status, function=function, limit=1000)
        out += [i.execution_id for i in items]
    return out


def settle(c, expected: dict[str, bytes], *, retryable: set[str], timeout: float = 45.0) -> dict:
    """Wait until every execution is terminal and check its outcome.

    ``expected``: execution id -> the output it must have if it succeeded.
    Retryable ones must succeed; the others succeed or end ``lost`` (their node
    died with them, at-most-once). Nothing may fail, time out or be cancelled.
    """
    deadline = time.monotonic() + timeout
    results = {}
    for eid, want in expected.items():
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"execution {eid} not terminal after {timeout}s: {c.execution(eid).info}"
            try:
                r = c.wait(eid, timeout=min(left, 5.0))
            except errors.DeadlineExceeded:
                continue
            if r.status in P.TERMINAL:
                break
        results[eid] = r
        if r.ok:
            assert r.output == want, (eid, r.output, want)
        elif eid in retryable:
            raise AssertionError(f"retryable execution {eid} ended {r.status}: {r.info}")
        else:
            assert r.status == "lost", r.info
            assert r.info.error is not None and r.info.error.code == "UNAVAILABLE", r.info
    return results


def assert_counted_once(c, submitted: int | None = None, *, lost_at_most: int | None = None):
    """The SMS counted every execution it accepted exactly once as terminal."""
    def balanced():
        st = c.stats()
        terminal = sum(st.counts.get(k, 0) for k in TERMINAL_COUNTS)
        return terminal == st.counts.get("submitted", 0) and st
    st = wait_for(balanced, 10, "terminal counts == submitted")
    if submitted is not None:
        assert st.counts.get("submitted", 0) == submitted, st.counts
    if lost_at_most is not None:
        assert st.counts.get("lost", 0) <= lost_at_most, st.counts
    return st


def assert_no_reservations(c, timeout: float = 10.0):
    def zero():
        st = c.stats()
        return (st.cores_reserved == 0 and st.memory_reserved == 0
                and st.executions_active == 0 and st)
    return wait_for(zero, timeout, "reservations and active executions back to zero")


def assert_node_works(c, mh, host: str, name: str = "pin") -> None:
    """``host`` is ready and takes work again: a function pinned to it runs there,
    through the SMS, and a direct invocation from the client reaches it."""
    fn = f"{name}-{host}"
    c.deploy(P.FunctionSpec(name=fn, runtime="process", command=["cat"],
                            labels={"host": host}))
    r = c.invoke(fn, f"hello {host}", timeout=20)
    assert r.ok and r.output == f"hello {host}".encode(), r.info
    assert r.info.node_id == mh.node_id(host)
    pong = c.ping(node=mh.addr(host))
    assert pong.node_id == mh.node_id(host)


def last_event_seq(c) -> int:
    """The SMS's newest event sequence number (0 if none)."""
    seq = 0
    for ev in c.events(since=0, until=time.monotonic() + 0.3):
        seq = max(seq, ev.seq)
    return seq


def wait_registered(c, node_id: str, since: int, timeout: float = 30.0) -> float:
    """Wait for the SMS event "node ``node_id`` ready (registered)" after seq ``since``:
    the node re-registered over its live connection. Returns the seconds it took."""
    t0 = time.monotonic()
    for ev in c.events(since=since, until=t0 + timeout):
        if ev.kind == "node" and ev.key == node_id and ev.state == "ready" \
                and ev.detail == "registered":
            return time.monotonic() - t0
    raise AssertionError(f"node {node_id} did not register again within {timeout}s")


class RawNode:
    """A node speaking the wire protocol by hand over one DEALER: for faults a
    real Spearlet cannot be made to show on cue. Like a Spearlet, each
    connection has a random routing id, and every connection of one node id
    registers with the same proof (the secret a Spearlet keeps in its data dir)."""

    def __init__(self, sms: str, node_id: str, *, labels: dict | None = None,
                 runtimes: tuple = ("process",)) -> None:
        import zmq

        from spear.mesh import context

        self.node_id = node_id
        self.labels = labels or {}
        self.runtimes = list(runtimes)
        self.sock = context().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        from spear.mesh.endpoint import random_routing_id

        self.sock.setsockopt(zmq.ROUTING_ID, random_routing_id())
        self.proof = "proof-of-" + node_id
        self.sock.connect(sms)
        self._ids = iter(range(1, 1 << 62))
        self.session = 0  # from the Welcome; every heartbeat carries it

    def send(self, msg, payload=None) -> None:
        self.sock.send_multipart(P.encode(msg, payload))

    def recv(self, timeout: float):
        """The next message (and payload), or (None, None) after ``timeout``."""
        if not self.sock.poll(int(timeout * 1000)):
            return None, None
        return P.decode(self.sock.recv_multipart())

    def recv_until(self, kind, timeout: float):
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg, payload = self.recv(left)
            if isinstance(msg, kind):
                return msg, payload
        return None, None

    def register(self, timeout: float = 5.0) -> P.Welcome:
        self.send(P.Register(id=next(self._ids), node=P.NodeInfo(
            node_id=self.node_id, name=self.node_id, address="",
            labels=self.labels, runtimes=self.runtimes,
            capacity=P.Capacity(cores=2.0, memory=2 << 30, slots=8)), proof=self.proof))
        welcome, _ = self.recv_until(P.Welcome, timeout)
        assert welcome is not None, f"{self.node_id}: no Welcome"
        self.session = welcome.session
        return welcome

    def heartbeat(self, running: list[str] = (), finished: list[str] = ()) -> int:
        """Send a heartbeat of this connection's session; returns its request id."""
        rid = next(self._ids)
        self.send(P.Heartbeat(id=rid, node_id=self.node_id, usage=P.Usage(),
                              running_ids=list(running), session=self.session,
                              finished=list(finished)))
        return rid

    def close(self) -> None:
        self.sock.close(linger=0)
