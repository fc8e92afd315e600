"""The ``process`` runtime: functions that are operating-system processes.

This package holds the runtime (:mod:`.runtime`), the parsing of a function
spec into a plan (:mod:`.spec`), the sandbox — user switch and network
namespace — (:mod:`.sandbox`), the limits and where they meet a process
(:mod:`.limits`), one spawned and reaped process (:mod:`.child`), what the
node gives every process (:mod:`.host`), one-shot runs (:mod:`.oneshot`),
pooled workers and their protocol (:mod:`.workers`), a worker's shared
region for big payloads (:mod:`.region`), pipes and output caps
(:mod:`.streams`), the typing of exits (:mod:`.exits`), execution cgroups
(:mod:`.cgroups` over :mod:`.cgroupfs`), the record of what was started
(:mod:`.leftovers`), the node's code cache of unpacked bundles
(:mod:`.codecache`), the Python environments of handlers with requirements
(:mod:`.pyenvs`) and the Python handler worker program (:mod:`.pyworker`,
run by path and importing nothing of Spear). It may import
:mod:`spear.errors`, :mod:`spear.protocol`, :mod:`spear.fsmodes`,
:mod:`spear.bundles` and the runtimes' :mod:`..base` and :mod:`..hostpaths`;
never the manager, another runtime, or anything above the runtimes.

See ``docs/sandbox.md`` for the sandbox, the limits, code bundles and
environments, and ``docs/worker-protocol.md`` for the pooled worker protocol.
"""

from __future__ import annotations

from .runtime import ProcessRuntime
from .streams import grow_pipe

__all__ = ["ProcessRuntime", "grow_pipe"]
