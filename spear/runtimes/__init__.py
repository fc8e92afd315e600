"""Runtimes: one interface (base.py), one module per runtime.

:class:`RuntimeManager` builds the runtimes a node offers from its config,
probes which ones actually work here (a node without a Docker engine says
why) and hands each FunctionSpec to the runtime it names. Runtime modules
are imported lazily so a missing optional dependency only disables that
runtime.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from .. import errors
from ..config import Config
from .base import Instance, Outcome, Prepared, Runtime
from .hostpaths import HostPaths

log = logging.getLogger("spear.runtimes")

__all__ = ["HostPaths", "Instance", "Outcome", "Prepared", "Runtime", "RuntimeManager", "scrubbed_env"]

#: variables a function may inherit; everything else (keys, tokens) stays out
_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


def scrubbed_env() -> dict[str, str]:
    """The base environment of functions: no secrets from the Spearlet's own."""
    env = {k: os.environ[k] for k in _SAFE_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = "/tmp"
    return env


class RuntimeManager:
    """The runtimes of one node, probed at start.

    Every runtime that can reach a host directory gets the same
    :class:`HostPaths`: ``[spearlet] host_roots``, with ``data_dir``, the key
    directories, the SMS store and the directory of ``config_file`` (the TOML
    file ``config`` came from, if any) never granted.
    """

    def __init__(self, config: Config, data_dir: str | Path, node_id: str = "", *,
                 config_file: str = "") -> None:
        self.config = config
        self.node_id = node_id
        self.data_dir = Path(data_dir)
        self.host_paths = HostPaths.from_config(config, data_dir=data_dir, config_file=config_file)
        self.runtimes: dict[str, Runtime] = {}
        self.unavailable: dict[str, str] = {}

    async def probe(self) -> None:
        """Create every enabled runtime and keep those that work here."""
        rc = self.config.runtimes
        builders = {
            "wasm": (rc.wasm.enabled, self._wasm),
            "process": (rc.process.enabled, self._process),
            "docker": (rc.docker.enabled, self._docker),
        }
        for name, (enabled, build) in builders.items():
            if not enabled:
                self.unavailable[name] = "disabled in configuration"
                continue
            try:
                rt = build()
                ok, why = await asyncio.wait_for(asyncio.to_thread(rt.available), 5.0)
            except asyncio.TimeoutError:
                ok, why = False, "availability check timed out"
            except Exception as exc:  # noqa: BLE001 - a runtime that can't load is unavailable
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                self.runtimes[name] = rt
                if name == "docker" and self.node_id:
                    await self._clean_docker_leftovers()
            else:
                self.unavailable[name] = why
                log.warning("runtime %s unavailable: %s", name, why)

    async def _clean_docker_leftovers(self) -> None:
        from .docker import remove_leftovers

        try:
            n = await asyncio.to_thread(remove_leftovers, self.config.runtimes.docker.base_url or None,
                                        self.node_id)
            if n:
                log.info("removed %d container(s) left by an earlier run of this node", n)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            log.warning("could not remove leftover containers: %s", exc)

    def _wasm(self) -> Runtime:
        from .wasm import WasmRuntime

        c = self.config.runtimes.wasm
        return WasmRuntime(self.data_dir / "wasm-cache", default_memory_mb=c.memory_mb,
                           default_fuel=c.fuel, default_timeout=c.timeout,
                           max_workers=c.threads or None, max_queue=c.max_queue,
                           queue_timeout=c.queue_timeout, host_paths=self.host_paths)

    def _process(self) -> Runtime:
        from .process import ProcessRuntime

        c = self.config.runtimes.process
        return ProcessRuntime(default_timeout=c.timeout, default_memory_mb=c.memory_mb,
                              python=sys.executable, base_env=scrubbed_env(),
                              user=c.user or None, strict_network=c.strict_network,
                              host_paths=self.host_paths)

    def _docker(self) -> Runtime:
        from .docker import DockerRuntime

        c = self.config.runtimes.docker
        # owner = node id: a restarted Spearlet removes containers its crashed self left
        return DockerRuntime(base_url=c.base_url or None, default_timeout=c.timeout,
                             default_memory_mb=c.memory_mb, default_pids=c.pids,
                             owner=self.node_id or None)

    def get(self, name: str) -> Runtime:
        """The runtime called ``name``; UNAVAILABLE with the reason if not here."""
        rt = self.runtimes.get(name)
        if rt is None:
            why = self.unavailable.get(name, "unknown runtime")
            raise errors.Unavailable(f"runtime {name!r} is not available on this node: {why}")
        return rt

    async def close(self) -> None:
        for rt in self.runtimes.values():
            try:
                await rt.close()
            except Exception:  # noqa: BLE001
                log.exception("closing runtime %s failed", rt.name)
