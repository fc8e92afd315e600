"""Helpers for driving a SpearletCore with events and a fake clock (no daemon, no sockets)."""

from __future__ import annotations

import pytest

from spear import protocol as P
from spear.spearlet import core as C, events as E

#: the wall clock the tests hand the core; each test moves it by hand
T0 = 1_000_000.0

ADD = P.FunctionSpec(name="add", runtime="wasm", handler="add", limits=P.Limits(timeout=5.0))


class FakeMetrics:
    """Records what the core reports (SpearletMetrics' two hooks)."""

    def __init__(self) -> None:
        self.finished: list[tuple] = []
        self.refused: list[str] = []

    def execution_finished(self, *args) -> None:
        self.finished.append(args)

    def rejected(self, code: str) -> None:
        self.refused.append(code)


@pytest.fixture
def metrics() -> FakeMetrics:
    return FakeMetrics()


@pytest.fixture
def core(metrics) -> C.SpearletCore:
    """A node "n1" (at most 2 executions, node maxima set) with ``add``
    deployed at the SMS's version ``d1``."""
    c = C.SpearletCore("n1", max_concurrency=2, metrics=metrics,
                       maxima=C.Maxima(memory_mb=512, timeout=60.0, cpus=2.0, output_mb=8))
    assert c.handle(E.Deployed(ADD, "sha-add", "d1"), T0) == []
    return c


def invoke(core: C.SpearletCore, mode: str = "sync", now: float = T0, ident: bytes = b"cli",
           **kw) -> list:
    """A client's Invoke of ``add`` (fields in ``kw``)."""
    kw.setdefault("function", "add")
    return core.handle(E.Invoked(ident, P.Invoke(id=kw.pop("id", 7), mode=mode, **kw), b"in"),
                       now)


def dispatch(core: C.SpearletCore, eid: str = "e1", now: float = T0, **kw) -> list:
    """The SMS's Dispatch of ``add`` at version ``d1`` (fields in ``kw``)."""
    kw.setdefault("function", "add")
    kw.setdefault("digest", "d1")
    return core.handle(E.Dispatched(P.Dispatch(id=kw.pop("id", 9), execution_id=eid, **kw),
                                    b"in"), now)


def finish(core: C.SpearletCore, eid: str, status: str = "succeeded", now: float = T0 + 1,
           **kw) -> list:
    """The runtime outcome of ``eid``."""
    kw.setdefault("output", b"out")
    return core.handle(E.Finished(eid, status, **kw), now)


def only(instructions: list, kind: type):
    """The one instruction of ``kind`` (and check there is exactly one)."""
    found = [i for i in instructions if isinstance(i, kind)]
    assert len(found) == 1, instructions
    return found[0]
