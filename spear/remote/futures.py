"""Futures of remote calls, and turning a reply back into a value or an exception."""

from __future__ import annotations

import asyncio
import concurrent.futures

from .. import errors
from .runner.spear_runner import RAISED, RESULT, cloudpickle, loads_value, msgspec


class RemoteFuture(concurrent.futures.Future):
    """The result of ``fn.remote(...)``: a :class:`concurrent.futures.Future`
    (``result(timeout)``, ``exception()``, ``done()``, ``add_done_callback``)
    that can also be awaited from any event loop (``await fut``)."""

    def __await__(self):
        return asyncio.wrap_future(self).__await__()


def read_reply(output: bytes):
    """The value a reply carries; raises the remote exception it carries instead.

    The exception is the one the function raised (same type, unpickled), with
    the remote traceback as a note and, as its ``__cause__``, a
    :class:`spear.errors.FunctionError` holding the same text. One that cannot
    be unpickled here becomes a ``FunctionError`` with its repr and traceback.
    """
    tag, body = output[:1], output[1:]
    if tag == RESULT:
        return loads_value(body)
    if tag == RAISED:
        name, text_repr, text, pickled = msgspec.msgpack.decode(body)
        why = "it cannot be pickled"
        if pickled is not None:
            try:
                exc = cloudpickle.loads(pickled)
            except Exception as exc_why:  # noqa: BLE001 - a class missing here, a broken __setstate__
                why = f"it cannot be unpickled here: {exc_why!r}"
            else:
                raise _with_traceback(exc, text)
        raise errors.FunctionError(
            f"the function raised {text_repr} ({name}; {why}); remote traceback:\n{text}",
            details={"type": name, "repr": text_repr, "traceback": text})
    raise errors.ProtocolError(f"not a spear.remote reply (tag {tag!r}): is the function deployed "
                               "by another client?")


def _with_traceback(exc: BaseException, text: str) -> BaseException:
    note = "Remote traceback:\n" + text.rstrip()
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    exc.__cause__ = errors.FunctionError(note, details={"traceback": text})
    return exc
