"""The payloads of spear.remote and the bounded map, without a cluster."""

from __future__ import annotations

import pytest

from spear import errors
from spear.remote import RemoteFunction
from spear.remote.functions import memory_mb
from spear.remote.futures import read_reply
from spear.remote.runner import spear_runner as R


@pytest.mark.parametrize("value", [None, True, 1, -(1 << 63), (1 << 64) - 1, 1.5, "é", b"\0",
                                   [1, [2, {"a": b"x"}]], {"k": None}])
def test_plain_data_goes_as_msgpack(value):
    data = R.dumps_value(value)
    assert data[:1] == R.PLAIN and R.loads_value(data) == value
    assert type(R.loads_value(data)) is type(value)


@pytest.mark.parametrize("value", [(1, 2), {1, 2}, {1: "int key"}, 1 << 64, [(1,)],
                                   frozenset(), bytearray(b"x"), complex(1, 2)])
def test_anything_else_goes_pickled_and_keeps_its_type(value):
    data = R.dumps_value(value)
    assert data[:1] == R.PICKLED and R.loads_value(data) == value
    assert type(R.loads_value(data)) is type(value)


def test_run_round_trip_and_raised_exception():
    call = R.dumps_call(R.cloudpickle.dumps(lambda a, b=1: a * b), (6,), {"b": 7})
    assert read_reply(R.run(call)) == 42
    missing = lambda: {}["missing"]  # noqa: E731 - a lambda, as users pass them
    call = R.dumps_call(R.cloudpickle.dumps(missing), (), {})
    with pytest.raises(KeyError) as info:
        read_reply(R.run(call), missing)
    assert isinstance(info.value.__cause__, errors.FunctionError)
    assert '{}["missing"]' in info.value.__notes__[0]


def test_exception_that_cannot_be_unpickled_here():
    reply = R.RAISED + R._encode(["Gone", "Gone('x')", "Traceback ...\nGone: x\n", b"not a pickle"])
    with pytest.raises(errors.FunctionError, match="Gone") as info:
        read_reply(reply)
    assert info.value.details == {"type": "Gone", "repr": "Gone('x')",
                                  "traceback": "Traceback ...\nGone: x\n"}
    with pytest.raises(errors.ProtocolError):
        read_reply(b"?")


@pytest.mark.parametrize("given, mib", [(None, None), (300, 300), ("256MiB", 256), ("1GiB", 1024),
                                        ("512 MB", 488), ("64", 64)])
def test_memory_sizes(given, mib):
    assert memory_mb(given) == mib


def test_bad_memory_size():
    with pytest.raises(errors.InvalidArgument):
        memory_mb("lots")


class _Counting:
    """A connection that counts calls started but whose result was not read yet."""

    def __init__(self):
        self.started = self.read = self.most = 0

    def submit(self, fn, args, kwargs):
        self.started += 1
        self.most = max(self.most, self.started - self.read)
        conn, value = self, fn(*args, **kwargs)

        class Done:
            def result(self, timeout=None):
                conn.read += 1
                return value

        return Done()


def test_map_bounds_the_calls_in_flight():
    conn = _Counting()
    rf = RemoteFunction(lambda n: n + 1, connection=conn)
    assert list(rf.map(range(100), max_in_flight=5)) == list(range(1, 101))
    assert conn.most == 5 and conn.started == conn.read == 100
