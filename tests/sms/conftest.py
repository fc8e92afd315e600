"""Helpers of the SMS core tests: carry out the core's store requests on a real store."""

from __future__ import annotations

import inspect
from typing import Any

from spear import errors
from spear.sms.events import Load, Persist


def drive(gen: Any, store: Any, on_error=None) -> Any:
    """Run a core generator to its end as the daemon would: each ``Persist`` is
    written to ``store`` (its outcome: "" or why it failed, passed to
    ``on_error`` too), each ``Load`` read from it. Plain values pass through."""
    if not inspect.isgenerator(gen):
        return gen
    value: Any = None
    while True:
        try:
            req = gen.send(value)
        except StopIteration as stop:
            return stop.value
        if isinstance(req, Persist):
            try:
                store.write_batch(req.puts, req.deletes, sync=req.sync)
                value = ""
            except errors.SpearError as exc:
                value = getattr(store, "error", "") or exc.message
            except OSError as exc:
                value = str(exc)
            if value and on_error is not None:
                on_error(value)
        elif isinstance(req, Load):
            value = [store.get(k) for k in req.keys]
        else:
            raise AssertionError(f"unexpected request {req!r}")
