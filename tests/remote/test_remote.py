"""spear.function against a real one-node cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading

import pytest

import spear
from spear import errors

WAIT = 60


@spear.function
def add(a, b=0):
    return a + b


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@spear.function(memory="256MiB", timeout=30, retries=1)
def mirror(value):
    if isinstance(value, Point):
        return Point(value.y, value.x)
    return {"got": value, "type": type(value).__name__}


@spear.function
def square(n):
    return n * n


@spear.function
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)  # the global is the RemoteFunction


def fails(text):
    raise ValueError(text)  # the raising line


failing = spear.function(timeout=60)(fails)


def test_remote_with_args_and_kwargs(connection):
    assert add.remote(1, 2).result(WAIT) == 3
    assert add.remote(1, b=41).result(WAIT) == 42
    assert add.remote(a="x", b="y").result(WAIT) == "xy"


def test_a_function_that_calls_itself(connection):
    assert fib.remote(15).result(WAIT) == fib(15) == 610


def test_calling_it_directly_runs_it_here():
    assert add(2, 3) == 5 and failing.__name__ == "fails"


def test_non_plain_values_round_trip(connection):
    assert mirror.remote(Point(1, 2)).result(WAIT) == Point(2, 1)
    assert mirror.remote({3, 1}).result(WAIT) == {"got": {1, 3}, "type": "set"}
    assert mirror.remote((1, "a")).result(WAIT) == {"got": (1, "a"), "type": "tuple"}
    assert mirror.remote(b"\0raw").result(WAIT) == {"got": b"\0raw", "type": "bytes"}


def test_map_keeps_input_order(connection):
    assert list(square.map(range(200), max_in_flight=16, timeout=WAIT)) == [n * n for n in range(200)]


def test_threads_call_at_once(connection):
    barrier = threading.Barrier(8)

    def call(i):
        barrier.wait(WAIT)
        return add.remote(i, i).result(WAIT)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(8))) == [2 * i for i in range(8)]


def test_await_a_future(connection):
    async def main():
        return await asyncio.wait_for(asyncio.gather(add.remote(1, 1), add.remote(2, 2)), WAIT)

    assert asyncio.run(main()) == [2, 4]


def test_remote_exception_is_reraised_with_its_traceback(connection):
    future = failing.remote("bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        future.result(WAIT)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "raise ValueError(text)  # the raising line" in notes
    assert isinstance(info.value.__cause__, errors.FunctionError)
    assert "the raising line" in info.value.__cause__.details["traceback"]
    assert isinstance(future.exception(WAIT), ValueError) and future.done()


def test_unpicklable_exception_becomes_a_function_error(connection):
    @spear.function
    def raise_local():
        class Local(Exception):
            def __reduce__(self):
                raise TypeError("no pickling")

        raise Local("odd")

    with pytest.raises(errors.FunctionError, match="odd") as info:
        raise_local.remote().result(WAIT)
    assert "Local" in info.value.details["traceback"]


def test_get_and_wait(connection):
    futures = [add.remote(i, 1) for i in range(5)]
    done, not_done = spear.wait(futures, timeout=WAIT)
    assert len(done) == 5 and not not_done
    assert spear.get(futures, timeout=WAIT) == [1, 2, 3, 4, 5]
    assert spear.get(add.remote(7), timeout=WAIT) == 7
    called = threading.Event()
    f = add.remote(1, 1)
    f.add_done_callback(lambda _: called.set())
    assert spear.get(f, timeout=WAIT) == 2 and called.wait(WAIT)
    first, _ = spear.wait([add.remote(0, 0)], timeout=WAIT, return_when="FIRST_COMPLETED")
    assert len(first) == 1


def test_a_redefined_function_gets_a_new_deployment(connection):
    def version():
        return 1

    one = spear.function(version)

    def version():  # noqa: F811 - redefined on purpose
        return 2

    two = spear.function(version)
    assert one.deployment_name != two.deployment_name
    assert one.deployment_name.startswith("py-test_a_redefined_function_gets_a_new_deployment.version-")
    assert (one.remote().result(WAIT), two.remote().result(WAIT)) == (1, 2)
    assert spear.function(version).deployment_name == two.deployment_name  # content-addressed
    names = {f.name for f in connection._run(connection.client.functions()).result(WAIT)}
    assert {one.deployment_name, two.deployment_name} <= names


def test_a_future_names_its_execution(connection):
    futures = [add.remote(i) for i in range(3)]
    assert [f.result(WAIT) for f in futures] == [0, 1, 2]
    ids = [f.execution_id for f in futures]
    assert len(set(ids)) == 3 and all(ids)
    record = connection._run(connection.client.execution(ids[1])).result(WAIT)
    assert record.execution_id == ids[1] and record.status == "succeeded"
    failed = failing.remote("x")
    assert isinstance(failed.exception(WAIT), ValueError) and failed.execution_id


@spear.function
def traceparent():
    import os

    return os.environ.get("TRACEPARENT", "")


def test_a_traced_call_joins_the_callers_trace(connection):
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    seen = traceparent.traced(f"00-{tid}-00f067aa0ba902b7-01").remote().result(WAIT)
    assert seen.startswith(f"00-{tid}-")
    fresh = traceparent.traced("not-a-traceparent").remote().result(WAIT)
    assert fresh.startswith("00-") and tid not in fresh  # a new trace, the call not lost
