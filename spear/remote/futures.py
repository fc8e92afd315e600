"""Futures of remote calls, and turning a reply back into a value or an exception."""

from __future__ import annotations

import asyncio
import concurrent.futures
import linecache
import os
import re
import sys
import types

from .. import errors
from .runner.spear_runner import RAISED, RESULT, cloudpickle, loads_value, msgspec


class RemoteFuture(concurrent.futures.Future):
    """The result of ``fn.remote(...)``: a :class:`concurrent.futures.Future`
    (``result(timeout)``, ``exception()``, ``done()``, ``add_done_callback``)
    that can also be awaited from any event loop (``await fut``).

    ``execution_id`` names the execution (``spear executions show ID``) once
    the SMS has answered, at the latest when the future is done; None before.
    """

    execution_id: str | None = None

    def __await__(self):
        return asyncio.wrap_future(self).__await__()


def read_reply(output: bytes, fn=None, code=None):
    """The value a reply carries; raises the remote exception it carries instead.

    The exception is the one the function raised (same type, unpickled), with
    the remote traceback as a note and, as its ``__cause__``, a
    :class:`spear.errors.FunctionError` holding the same text. One that cannot
    be unpickled here becomes a ``FunctionError`` with its repr and traceback.
    ``fn`` and ``code`` (the :class:`~.shipping.CodeBundle` it ran from) let
    the traceback name this machine's files (:func:`with_local_source`).
    """
    tag, body = output[:1], output[1:]
    if tag == RESULT:
        return loads_value(body)
    if tag == RAISED:
        name, text_repr, text, pickled = msgspec.msgpack.decode(body)
        text = with_local_source(text, fn, code)
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


_DYNAMIC = re.compile(r'^(\s*)File "<dynamic-code>", line (\d+), in (\S+)$')


def _codes(fn) -> dict[str, str]:
    """co_name -> co_filename of ``fn``, the functions of its module and the code nested in them."""
    out: dict[str, str] = {}
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    roots = [fn] + [v for v in vars(module).values() if callable(v)] if module else [fn]
    todo = [getattr(getattr(r, "__wrapped__", r), "__code__", None) for r in roots]
    while todo:
        code = todo.pop()
        if isinstance(code, types.CodeType):
            out.setdefault(code.co_name, code.co_filename)
            todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return out


def with_local_source(text: str, fn, code=None) -> str:
    """The remote traceback with this machine's file names and source lines.

    cloudpickle ships a function's code with the file name ``<dynamic-code>``
    (its payload must not depend on where it was defined), and the node has no
    source anyway. The caller does: each such frame of a function it knows by
    name gets its file back and, from it, the line that ran. A frame of a
    file of the working directory names the node's copy of the bundle: it
    gets the local path of that file instead.
    """
    if code is not None and code.root and code.sha256 in text:
        text = re.sub(rf'File "[^"\n]*/{code.sha256}/', lambda m: f'File "{code.root}{os.sep}', text)
    if fn is None or "<dynamic-code>" not in text:
        return text
    codes = _codes(fn)
    out = []
    for line in text.splitlines():
        m = _DYNAMIC.match(line)
        filename = codes.get(m.group(3)) if m else None
        if m is None or filename is None:
            out.append(line)
            continue
        indent, lineno, name = m.groups()
        out.append(f'{indent}File "{filename}", line {lineno}, in {name}')
        source = linecache.getline(filename, int(lineno)).strip()
        if source:
            out.append(f"{indent}  {source}")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _with_traceback(exc: BaseException, text: str) -> BaseException:
    note = "Remote traceback:\n" + text.rstrip()
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    exc.__cause__ = errors.FunctionError(note, details={"traceback": text})
    return exc
