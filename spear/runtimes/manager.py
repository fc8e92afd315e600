"""The runtimes of one node: built from its config, probed, handed out by name.

:class:`RuntimeManager` builds the runtimes a node offers from its config,
probes which ones actually work here (a node without a Docker engine says
why) and hands each FunctionSpec to the runtime it names. Runtime modules
are imported by name from :data:`RUNTIMES` only when enabled, so a missing
optional dependency only disables that runtime, with a reason that names it.
A runtime that depends on something outside the node (the Docker engine) is
checked again while the node runs: every ``check_interval`` and on use when
its last check is older than that, so an engine that comes up late, goes
away or restarts is noticed without restarting the node.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .. import errors
from ..config import Config, child_env, inherited_env
from .base import Runtime
from .hostpaths import HostPaths

log = logging.getLogger("spear.runtimes")

#: the runtimes a node may offer, each imported only when enabled: name -> "module:class"
RUNTIMES = {
    "wasm": "spear.runtimes.wasm:WasmRuntime",
    "process": "spear.runtimes.process:ProcessRuntime",
    "docker": "spear.runtimes.docker:DockerRuntime",
}
#: runtimes whose availability can change while the node runs (an engine that
#: starts, stops or restarts); the others are decided once, at start
RECHECKED = ("docker",)


def scrubbed_env() -> dict[str, str]:
    """The base environment of functions: no secrets from the Spearlet's own."""
    env = inherited_env()
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = "/tmp"
    return env


def load(target: str) -> Any:
    """What ``"module:name"`` names, imported now.

    A module whose optional dependency is not installed raises
    ``Unavailable`` naming that dependency.
    """
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if not exc.name or exc.name.split(".")[0] == "spear":
            raise
        raise errors.Unavailable(
            f"{module} needs the Python package {exc.name!r}, which is not installed") from exc
    return getattr(mod, attr)


class RuntimeManager:
    """The runtimes of one node, probed at start and, for :data:`RECHECKED`
    ones, again while it runs (:meth:`refresh`, :meth:`ready`, :meth:`watch`).

    ``runtimes`` holds the available ones, ``unavailable`` the others with
    the reason. ``on_change`` (set by the Spearlet) is called after a check
    turned a runtime on or off, so the node can tell the SMS.

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
        self.on_change: Callable[[], None] | None = None
        #: how long a check of a RECHECKED runtime is trusted
        self.check_interval = config.runtimes.docker.check_interval
        self._built: dict[str, Runtime] = {}  # every runtime that could be made
        self._checked: dict[str, float] = {}  # name -> monotonic time of its last check
        self._checking: dict[str, asyncio.Future] = {}
        self._cleaned = False

    async def probe(self) -> None:
        """Create every enabled runtime and keep those that work here.

        Each runtime's checks start as soon as it is built, and run while
        the next one is imported: they wait on the engine or the disk, the
        imports on the CPU. The docker runtime comes first, its engine ping
        being the longest wait.
        """
        rc = self.config.runtimes
        builders = {
            "docker": (rc.docker.enabled, self._docker),
            "process": (rc.process.enabled, self._process),
            "wasm": (rc.wasm.enabled, self._wasm),
        }
        checks = []
        for name, (enabled, build) in builders.items():
            if not enabled:
                self.unavailable[name] = "disabled in configuration"
                continue
            try:
                rt = build(load(RUNTIMES[name]))
            except errors.Unavailable as exc:  # an optional dependency is missing
                self.unavailable[name] = exc.message
                log.warning("runtime %s unavailable: %s", name, exc.message)
                continue
            except Exception as exc:  # noqa: BLE001 - a runtime that can't load is unavailable
                self.unavailable[name] = f"{type(exc).__name__}: {exc}"
                log.warning("runtime %s unavailable: %s", name, self.unavailable[name])
                continue
            self._built[name] = rt
            checks.append(asyncio.ensure_future(self._first_check(name, rt)))
            await asyncio.sleep(0)  # let it reach its thread before the next import
        await asyncio.gather(*checks)

    async def _first_check(self, name: str, rt: Runtime) -> None:
        if name == "process":
            await self._clean_process_leftovers(rt)
        await self.check(name)

    async def check(self, name: str) -> bool:
        """Check now whether the runtime ``name`` works here; move it between
        ``runtimes`` and ``unavailable``. Returns True if it turned on or off.
        Concurrent checks of one runtime share one probe."""
        pending = self._checking.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        fut = asyncio.get_running_loop().create_future()
        self._checking[name] = fut
        try:
            changed = await self._check(name)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: only the waiters re-raise it
            raise
        finally:
            self._checking.pop(name, None)
        fut.set_result(changed)
        return changed

    async def _check(self, name: str) -> bool:
        rt = self._built[name]
        try:
            ok, why = await asyncio.wait_for(asyncio.to_thread(rt.available), 5.0)
        except asyncio.TimeoutError:
            ok, why = False, "availability check timed out"
        except Exception as exc:  # noqa: BLE001 - a runtime that fails its check is unavailable
            ok, why = False, f"{type(exc).__name__}: {exc}"
        first = name not in self._checked
        self._checked[name] = time.monotonic()
        was = name in self.runtimes
        if ok:
            self.unavailable.pop(name, None)
            self.runtimes[name] = rt
            if name == "docker" and self.node_id and not self._cleaned:
                # only before this process ever used the engine: later, the
                # containers of this node's owner label are its live instances.
                # In the background: the runtime's first engine call waits for it
                self._cleaned = True
                rt.remove_leftovers_first()
            if not was and not first:
                log.warning("runtime %s is available again", name)
        else:
            self.runtimes.pop(name, None)
            self.unavailable[name] = why
            if was or first:
                log.warning("runtime %s unavailable: %s", name, why)
        # only a turn counts: a reason worded differently is not worth telling the SMS
        return was != ok and not first

    def _stale(self, name: str) -> bool:
        return (name in RECHECKED and name in self._built
                and time.monotonic() - self._checked.get(name, 0.0) >= self.check_interval)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def refresh(self) -> bool:
        """Check again every RECHECKED runtime whose last check is older than
        ``check_interval``; True (and ``on_change``) if one turned on or off."""
        changed = False
        for name in RECHECKED:
            if self._stale(name):
                changed |= await self.check(name)
        if changed:
            self._changed()
        return changed

    async def watch(self) -> None:
        """Refresh forever, every ``check_interval`` (a task of the Spearlet)."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("checking the runtimes failed")

    async def ready(self, name: str) -> Runtime:
        """:meth:`get`, after checking ``name`` again if it is a RECHECKED
        runtime whose last check is older than ``check_interval`` (on use)."""
        if self._stale(name) and await self.check(name):
            self._changed()
        return self.get(name)

    async def _clean_process_leftovers(self, rt: Runtime) -> None:
        """End the processes that a killed earlier run of this node left running."""
        try:
            n = await asyncio.to_thread(rt.reap_leftovers)
            if n:
                log.warning("ended %d process(es) left running by an earlier run of this node", n)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort, but said
            log.warning("could not end the processes an earlier run left: %s", exc)

    # builders: the runtime class (from RUNTIMES) made from this node's config
    def _wasm(self, cls: type[Runtime]) -> Runtime:
        c = self.config.runtimes.wasm
        return cls(self.data_dir / "wasm-cache", default_memory_mb=c.memory_mb,
                   default_fuel=c.fuel, default_timeout=c.timeout,
                   max_workers=c.threads or None, max_queue=c.max_queue,
                   queue_timeout=c.queue_timeout, host_paths=self.host_paths)

    def _process(self, cls: type[Runtime]) -> Runtime:
        c = self.config.runtimes.process
        return cls(default_timeout=c.timeout, default_memory_mb=c.memory_mb,
                   python=sys.executable, base_env=scrubbed_env(),
                   user=c.user or None, strict_network=c.strict_network,
                   host_paths=self.host_paths, max_output_mb=c.max_output_mb,
                   default_pids=c.pids, cgroups=c.cgroups,
                   # what it starts is recorded here (see _clean_process_leftovers)
                   state_dir=self.data_dir / "process",
                   data_dir=self.data_dir, cache_dir=c.cache_dir or None,
                   installer=c.installer, index_url=c.index_url,
                   env_build_timeout=c.env_build_timeout, env_ttl=c.env_ttl,
                   envs_max_mb=c.envs_max_mb, envs_min_free_mb=c.envs_min_free_mb,
                   installer_env=child_env(), node=self.node_id)

    def _docker(self, cls: type[Runtime]) -> Runtime:
        c = self.config.runtimes.docker
        # owner = node id: a restarted Spearlet removes containers its crashed self left
        return cls(base_url=c.base_url or None, default_timeout=c.timeout,
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
        """Close every runtime that was built (at Spearlet stop)."""
        for rt in self._built.values():
            try:
                await rt.close()
            except Exception:  # noqa: BLE001
                log.exception("closing runtime %s failed", rt.name)
