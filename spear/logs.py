"""Logging set-up (called only from the CLI's main()) and the execution log context.

Daemons log one JSON object per line unless stderr is a terminal (or the
config asks for text). A line logged while an execution is handled carries
its ``execution_id`` and ``trace_id`` (the fields one ``grep`` finds an
execution by, in every daemon's log): a caller passes them as ``extra``, or
the code that runs the execution calls :func:`bind` once in the task that
runs it, and :class:`ContextFilter` copies them onto the records that get
emitted there. Both cost nothing for a line the level hides: the filter runs
only on records that pass the level check.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

#: (execution_id, trace_id) of the execution the current task handles
_current: ContextVar[tuple[str, str] | None] = ContextVar("spear_execution", default=None)


def bind(execution_id: str, trace_id: str = "") -> None:
    """Tag the lines the current task (and the tasks it starts) logs from now on.

    Call it first thing in a task made for one execution: asyncio gives each
    task its own copy of the context, so nothing needs resetting.
    """
    _current.set((execution_id, trace_id or execution_id))


class ContextFilter(logging.Filter):
    """Adds ``execution_id`` and ``trace_id`` of the bound execution to a record without them."""

    def filter(self, record: logging.LogRecord) -> bool:
        cur = _current.get()
        if cur is not None:
            d = record.__dict__
            d.setdefault("execution_id", cur[0])
            d.setdefault("trace_id", cur[1])
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra fields such as trace_id are kept.

    ``color_message`` (uvicorn's copy of the message with terminal colour
    codes) is dropped: ``msg`` already holds the plain text.
    """

    _skip = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
        "message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in self._skip:
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup(level: str = "info", fmt: str = "auto", *, component: str = "") -> None:
    """Configure the root logger for a daemon or the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname).1s {component + ' ' if component else ''}%(name)s: %(message)s",
            "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    base, *parts = level.split(",")
    root.setLevel(base.upper())
    for part in parts:  # per-component levels: spear.mesh=debug
        name, _, lvl = part.partition("=")
        if name and lvl:
            logging.getLogger(name.strip()).setLevel(lvl.strip().upper())
    logging.Formatter.converter = time.gmtime
