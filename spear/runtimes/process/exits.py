"""How a process that ended on its own is reported: the typed error of its exit.

A death by a limit (the memory cgroup's OOM killer, SIGXCPU past
``cpu_seconds``, out-of-memory signs in the stderr tail, a SIGKILL that was
not ours) is ``ResourceExhausted``; anything else is ``FunctionError``.
"""

from __future__ import annotations

import re
import signal

from ... import errors
from ..base import tail_text

_OOM_SIGNS = re.compile(
    rb"MemoryError|Cannot allocate memory|out of memory|bad_alloc|ENOMEM|"
    rb"memory allocation failed|failed to allocate|allocation failed",
    re.IGNORECASE,
)


def describe_exit(code: int | None) -> str:
    """Say how a process ended, from its exit code (negative: the signal)."""
    if code is None:
        return "exited (status unknown)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def failure(
    code: int | None,
    tail: bytes,
    *,
    memory_limited: bool,
    cpu_limited: bool,
    killed_by_us: bool,
    prefix: str = "process failed",
    oom: bool = False,
) -> errors.SpearError:
    """Type a process that died on its own (not by our timeout).

    ``oom``: the execution's memory cgroup reports an OOM kill.
    """
    text = tail_text(tail)
    details = {"exit_code": code, "stderr": text}
    what = describe_exit(code)
    sig = -code if code is not None and code < 0 else 0
    if oom:
        return errors.ResourceExhausted(f"memory limit ({what}: the memory cgroup's OOM killer)",
                                        details=details)
    if cpu_limited and sig in (signal.SIGXCPU, signal.SIGKILL) and not killed_by_us:
        return errors.ResourceExhausted(f"cpu limit ({what})", details=details)
    if memory_limited and _OOM_SIGNS.search(tail):
        return errors.ResourceExhausted(f"memory limit ({what})", details=details)
    if sig == signal.SIGKILL and not killed_by_us:
        return errors.ResourceExhausted(f"{what} (out of memory?)", details=details)
    return errors.FunctionError(f"{prefix}: {what}", details=details)
