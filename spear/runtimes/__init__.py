"""Runtimes: where functions run (wasm, process, docker) behind one interface.

This package holds the interface every runtime provides (:mod:`.base`), the
manager that builds, probes and hands out a node's runtimes, importing each
implementation lazily by name (:mod:`.manager`), the host-path capabilities
shared by the runtimes (:mod:`.hostpaths`) and one module or package per
runtime (:mod:`.wasm`, :mod:`.process`, :mod:`.docker`). It may import
:mod:`spear.protocol`, :mod:`spear.errors`, :mod:`spear.config`,
:mod:`spear.ids`, :mod:`spear.fsmodes`, :mod:`spear.bundles`,
:mod:`spear.tracing` (the TRACEPARENT variables) and :mod:`spear.fast`; never
:mod:`spear.sms`, :mod:`spear.spearlet`, :mod:`spear.gateway`,
:mod:`spear.cli` or ``bench``. Importing it loads no runtime implementation.
"""

from __future__ import annotations

from .base import Instance, Outcome, Prepared, Runtime
from .hostpaths import HostPaths
from .manager import RuntimeManager, scrubbed_env

__all__ = ["HostPaths", "Instance", "Outcome", "Prepared", "Runtime", "RuntimeManager", "scrubbed_env"]
