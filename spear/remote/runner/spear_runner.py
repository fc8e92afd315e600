"""Generic handler of functions shipped by value, and the payloads it speaks.

Shipped in each function's code bundle as ``_spear_runner.py`` and deployed
as ``handler="_spear_runner:run"``. Stand-alone on purpose (standard library,
``cloudpickle`` and ``msgspec`` only): the worker's environment has no Spear.

Payloads (every value starts with a tag byte):

* a *value*: ``M`` + msgpack for plain data (None, bool, int, float, str,
  bytes, and lists / str-keyed dicts of those), else ``P`` + cloudpickle;
* a *call* (the invocation's input): u32 big-endian length of the pickled
  function, the pickled function, then the value ``[args, kwargs]``;
* a *reply* (the output): ``R`` + a value (the result), or ``E`` + msgpack of
  ``[type name, repr, traceback text, cloudpickle of the exception or nil]``
  (nil when the exception cannot be pickled).

A remote exception is an ordinary output, not a worker error reply, so the
caller gets the exception object itself and the whole traceback.
"""

from __future__ import annotations

import hashlib
import struct
import traceback

import cloudpickle
import msgspec

PLAIN, PICKLED = b"M", b"P"
RESULT, RAISED = b"R", b"E"
_U32 = struct.Struct(">I")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def is_plain(obj, depth: int = 0) -> bool:
    """Whether msgpack round-trips ``obj`` exactly (same types, same values)."""
    kind = type(obj)
    if obj is None or kind is bool or kind is float or kind is str or kind is bytes:
        return True
    if kind is int:
        return _INT_MIN <= obj <= _INT_MAX
    if depth > 32:  # deep nesting: let pickle deal with it
        return False
    if kind is list:
        return all(is_plain(x, depth + 1) for x in obj)
    if kind is dict:
        return all(type(k) is str and is_plain(v, depth + 1) for k, v in obj.items())
    return False


def dumps_value(obj) -> bytes:
    """A tagged value: msgpack for plain data, cloudpickle for anything else."""
    if is_plain(obj):
        return PLAIN + _encode(obj)
    return PICKLED + cloudpickle.dumps(obj)


def loads_value(data: bytes):
    """The inverse of :func:`dumps_value`."""
    tag, body = data[:1], memoryview(data)[1:]
    if tag == PLAIN:
        return _decode(body)
    if tag == PICKLED:
        return cloudpickle.loads(body)
    raise ValueError(f"unknown value tag {bytes(tag)!r}")


def dumps_call(fn_blob: bytes, args: tuple, kwargs: dict) -> bytes:
    """An invocation's input: the pickled function, then ``[args, kwargs]``."""
    return _U32.pack(len(fn_blob)) + fn_blob + dumps_value([list(args), kwargs])


def dumps_raised(exc: BaseException) -> bytes:
    """A reply carrying ``exc``, its repr and its traceback text (from the frame
    below :func:`run`'s, which the caller has no use for)."""
    tb = exc.__traceback__
    # the caller's traceback starts in its function, not in this runner
    text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb and tb.tb_next else tb))
    try:
        pickled = cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001 - any object may refuse to pickle
        pickled = None
    return RAISED + _encode([type(exc).__qualname__, _safe_repr(exc), text, pickled])


def _safe_repr(obj) -> str:
    try:
        return repr(obj)
    except Exception:  # noqa: BLE001 - a broken __repr__
        return f"<{type(obj).__qualname__} with a broken repr>"


#: the last function this worker unpickled: a pooled worker serves one function
_last: tuple[bytes, object] = (b"", None)


def _function(blob: bytes):
    global _last
    digest = hashlib.blake2b(blob, digest_size=16).digest()
    if _last[0] != digest:
        _last = (digest, cloudpickle.loads(blob))
    return _last[1]


def run(data: bytes) -> bytes:
    """The handler: call the shipped function, reply with its result or its exception."""
    try:
        (size,) = _U32.unpack_from(data)
        fn = _function(data[4 : 4 + size])
        args, kwargs = loads_value(data[4 + size :])
        return RESULT + dumps_value(fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - the caller gets it back
        if isinstance(exc, KeyboardInterrupt):
            raise
        return dumps_raised(exc)
