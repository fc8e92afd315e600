"""Limits of a ``docker`` call, as the engine applies them, and what an
unsuccessful exit means.

Per-invocation ``limits`` first, then ``spec.limits``, then the runtime
defaults: memory (``mem_limit`` with an equal ``memswap_limit``: no swap),
CPUs (``nano_cpus``), pids, CPU seconds (``RLIMIT_CPU``), network off
(``network_mode="none"``) unless ``network`` is true, read-only root
filesystem when ``read_only``; ``no-new-privileges`` always. Pooled
containers get their limits when they are created.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Any

from ... import errors
from ...protocol import FunctionSpec, Limits
from .engine import sdk
from ..base import tail_text

__all__ = ["Effective", "RunResult", "effective", "failure", "host_config"]

MiB = 1024 * 1024
_SIGXCPU = 24
_SIGKILL = 9


@dataclass
class Effective:
    """The limits of one container or exec, resolved."""

    timeout: float
    memory_mb: int
    cpus: float | None
    pids: int | None
    cpu_seconds: float | None
    network: bool
    read_only: bool


@dataclass
class RunResult:
    """What a container process left behind: its output, exit and usage."""

    output: bytes
    exit_code: int | None
    stderr_tail: bytes
    too_big: bool
    cpu_ns: int | None = None
    peak: int | None = None
    oom_kills: int | None = None


def effective(spec: FunctionSpec, limits: Limits | None, default_timeout: float,
              default_memory_mb: int, default_pids: int | None) -> Effective:
    """The limits of a call: ``limits``, then the spec's, then the defaults."""
    s = spec.limits
    l = limits or Limits()

    def pick(a: Any, b: Any, d: Any) -> Any:
        return a if a is not None else (b if b is not None else d)

    return Effective(
        timeout=float(pick(l.timeout, s.timeout, default_timeout)),
        memory_mb=int(pick(l.memory_mb, s.memory_mb, default_memory_mb)),
        cpus=pick(l.cpus, s.cpus, None),
        pids=pick(l.pids, s.pids, default_pids),
        cpu_seconds=pick(l.cpu_seconds, s.cpu_seconds, None),
        network=bool(l.network or s.network),
        read_only=bool(l.read_only or s.read_only),
    )


def host_config(api: Any, eff: Effective, cgroup_parent: str | None) -> dict:
    """The engine's ``HostConfig`` for a container under ``eff``."""
    ulimits = None
    if eff.cpu_seconds:
        secs = max(1, math.ceil(eff.cpu_seconds))
        ulimits = [sdk().types.Ulimit(name="cpu", soft=secs, hard=secs + 1)]
    return api.create_host_config(
        mem_limit=eff.memory_mb * MiB,
        memswap_limit=eff.memory_mb * MiB,
        nano_cpus=int(eff.cpus * 1e9) if eff.cpus else None,
        pids_limit=int(eff.pids) if eff.pids else None,
        network_mode=None if eff.network else "none",
        read_only=eff.read_only,
        security_opt=["no-new-privileges"],
        cgroup_parent=cgroup_parent,
        ulimits=ulimits,
    )


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _tail(text: str) -> str:
    text = text[-2048:].strip()  # the message keeps a short tail; details the whole
    return f": {text}" if text else ""


def failure(res: RunResult, spec: FunctionSpec, eff: Effective, oom: bool) -> errors.SpearError:
    """The error of a run that did not exit 0: an OOM kill or a CPU-time
    limit is ResourceExhausted, anything else the function's own failure."""
    code = res.exit_code
    stderr = tail_text(res.stderr_tail)
    details = {"exit_code": code, "stderr": stderr}
    if oom:
        return errors.ResourceExhausted(
            f"OOM killed: memory limit {eff.memory_mb} MiB (function {spec.name!r})", details=details
        )
    if code is not None and code > 128:
        sig = code - 128
        # RLIMIT_CPU sends SIGXCPU at the soft limit, SIGKILL at the hard
        # one; a container's PID 1 ignores SIGXCPU, so it sees SIGKILL
        limit = eff.cpu_seconds
        if limit and (
            sig == _SIGXCPU or (sig == _SIGKILL and (res.cpu_ns is None or res.cpu_ns >= 0.9e9 * limit))
        ):
            return errors.ResourceExhausted(
                f"CPU time limit of {eff.cpu_seconds:g} s exceeded (function {spec.name!r})",
                details=details)
        return errors.FunctionError(
            f"function {spec.name!r} was killed by {_signal_name(sig)} "
            f"(exit code {code}){_tail(stderr)}", details=details)
    return errors.FunctionError(
        f"function {spec.name!r} exited with code {code}{_tail(stderr)}", details=details)
