"""Spear's containers: made, run, killed and removed.

Every container is labelled ``spear.managed=1`` and ``spear.owner=<owner>``
and named ``spear-<function>-<random>``; :func:`remove_leftovers` removes
those of an owner (or all). A **one-shot** container runs the function's
command with its stdin attached (:meth:`Containers.run_oneshot`); a
**pooled** one runs a keep-alive command and each call is an exec inside it
(:meth:`Containers.run_exec`). Methods named ``*_blocking`` and ``run_*``
run on the engine's threads; the others are coroutines.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ... import errors
from ...protocol import FunctionSpec
from . import probe
from .engine import Engine, connect, engine_url, sdk
from .limits import Effective, RunResult, host_config
from .streams import pump
from .usage import Cgroup

__all__ = [
    "FUNCTION_LABEL", "MANAGED_LABEL", "MODE_LABEL", "NAME_PREFIX", "OWNER_LABEL",
    "Container", "Containers", "remove_leftovers",
]

log = logging.getLogger("spear.runtimes.docker")

MANAGED_LABEL = "spear.managed"
OWNER_LABEL = "spear.owner"
FUNCTION_LABEL = "spear.function"
MODE_LABEL = "spear.mode"
NAME_PREFIX = "spear-"


def remove_leftovers(base_url: str | None = None, owner: str | None = None) -> int:
    """Force-remove Spear's containers (all, or those of ``owner``); returns how many.

    Blocking; a node calls it (through :meth:`Engine.first`) before it uses
    an engine the first time, and tests, CI and operators may too. A local
    engine is asked over its socket, without the SDK (:mod:`.probe`).
    """
    labels = [f"{MANAGED_LABEL}=1"] + ([f"{OWNER_LABEL}={owner}"] if owner else [])
    path = probe.local_socket(engine_url(base_url))
    if path is not None:
        found = probe.containers(path, labels)
        for c in found:
            probe.remove_container(path, c["Id"])
            _remove_cgroup_parents(c)
        return len(found)
    api = connect(base_url, 30)
    try:
        found = api.containers(all=True, filters={"label": labels})
        for c in found:
            try:
                api.remove_container(c["Id"], force=True)
            except sdk().errors.NotFound:
                pass
            _remove_cgroup_parents(c)
        return len(found)
    finally:
        api.close()


def _remove_cgroup_parents(listed: dict) -> None:
    """Remove the cgroup parent of a removed container (as the engine listed it)."""
    for name in listed.get("Names") or []:
        Cgroup.rmdir_parent(name.lstrip("/"))


@dataclass
class Container:
    """One container of this runtime (``cgroup``: where its usage is read)."""

    id: str
    name: str
    cgroup: Cgroup | None
    removed: bool = False
    killed: bool = False


class Containers:
    """The containers of one runtime (``owner``) on one :class:`Engine`."""

    def __init__(self, engine: Engine, owner: str, max_output: int) -> None:
        self.engine = engine
        self.owner = owner
        self.max_output = max_output

    # -- lifecycle -------------------------------------------------------------

    def _create_blocking(self, image_id: str, spec: FunctionSpec, argv: list[str] | None,
                         eff: Effective, mode: str, env: dict[str, str] | None) -> Container:
        api = self.engine.client()
        name = f"{NAME_PREFIX}{spec.name[:40]}-{uuid.uuid4().hex[:12]}"
        version = self.engine.cgroup_version
        cg = Cgroup(version, name) if version else None
        created = api.create_container(
            image=image_id,
            command=argv,
            name=name,
            labels={
                MANAGED_LABEL: "1",
                OWNER_LABEL: self.owner,
                FUNCTION_LABEL: spec.name,
                MODE_LABEL: mode,
            },
            environment={**spec.env, **(env or {})} or None,
            working_dir=spec.workdir or None,
            stdin_open=(mode == "oneshot"),  # with attach: StdinOnce, closed at EOF
            host_config=host_config(api, eff, cg.parent if cg else None),
        )
        return Container(id=created["Id"], name=name, cgroup=cg)

    async def create(self, image_id: str, spec: FunctionSpec, argv: list[str] | None,
                     eff: Effective, mode: str, env: dict[str, str] | None = None) -> Container:
        """Create a container (``env``: variables over the spec's, e.g. TRACEPARENT);
        if the caller is cancelled meanwhile, it is removed.

        The hand-off happens under a lock in the worker thread, so a container
        is never created without an owner, even when the event loop is gone.
        """
        lock = threading.Lock()
        state: dict = {"abandoned": False, "ctr": None}

        def work() -> Container:
            ctr = self._create_blocking(image_id, spec, argv, eff, mode, env)
            with lock:
                if not state["abandoned"]:
                    state["ctr"] = ctr
                    return ctr
            self._remove_work(ctr)
            return ctr

        try:
            return await self.engine.call(f"creating a container for {spec.name!r}", work, track=True)
        except asyncio.CancelledError:
            with lock:
                state["abandoned"] = True
                ctr = state["ctr"]
            if ctr is not None:  # created just before the cancellation landed
                self.remove_later(ctr)
            raise

    def start_pooled_blocking(self, ctr: Container) -> dict:
        """Start a pooled container; returns its ``State`` just after."""
        api = self.engine.client()
        api.start(ctr.id)
        return api.inspect_container(ctr.id)["State"]

    def kill_blocking(self, ctr: Container) -> None:
        """Kill the container's processes (it is not removed)."""
        ctr.killed = True
        try:
            self.engine.client().kill(ctr.id)
        except sdk().errors.APIError:  # already stopped or gone
            pass

    def _remove_blocking(self, ctr: Container) -> None:
        if ctr.removed:
            return
        api = self.engine.client()
        try:
            api.remove_container(ctr.id, force=True)
        except sdk().errors.NotFound:
            pass
        except sdk().errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise
        ctr.removed = True

    def _remove_work(self, ctr: Container) -> None:
        try:
            self._remove_blocking(ctr)
        except Exception as exc:  # never let cleanup hide the real outcome
            log.warning("could not remove container %s: %s", ctr.name, exc)
        if ctr.cgroup is not None:
            ctr.cgroup.remove()

    async def remove(self, ctr: Container) -> None:
        """Remove a container (and its cgroup parent), surviving cancellation."""
        # shielded (and tracked): a cancelled caller still gets it removed
        await asyncio.shield(self.engine.submit(self._remove_work, ctr, track=True))

    def remove_later(self, ctr: Container) -> None:
        """Remove an exited container in the background (off the reply path)."""
        ctr.removed = True  # nobody else touches it from now on
        self.engine.background(self._remove_work, Container(id=ctr.id, name=ctr.name, cgroup=ctr.cgroup))

    def oom_killed_blocking(self, ctr: Container) -> bool:
        """True if the engine says the container was OOM killed."""
        try:
            return bool(self.engine.client().inspect_container(ctr.id)["State"].get("OOMKilled"))
        except sdk().errors.NotFound:
            return False

    def exec_oom_blocking(self, ctr: Container, res: RunResult) -> bool:
        """True if an exec that failed with ``res`` was OOM killed."""
        if res.oom_kills:
            return True
        if res.exit_code != 137:
            return False
        return self.oom_killed_blocking(ctr)

    # -- runs ------------------------------------------------------------------

    def attach_start_blocking(self, ctr: Container, function: str) -> Any:
        """Attach to a one-shot container's stdio, then start it; returns the socket."""
        api = self.engine.client()
        sock = api.attach_socket(ctr.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        try:
            api.start(ctr.id)
        except BaseException as exc:
            try:
                sock.close()
            except Exception:
                pass
            if isinstance(exc, sdk().errors.APIError) and not isinstance(exc, sdk().errors.NotFound):
                # the engine refuses to start what the spec asks for (no such
                # executable, bad workdir...): the function's fault
                raise errors.FunctionError(
                    f"function {function!r} could not start: {exc.explanation or exc}"
                ) from None
            raise
        return sock

    def run_oneshot(self, ctr: Container, sock: Any, data: bytes, sink: Callable[[bytes], None]) -> RunResult:
        """Feed ``data`` to a started one-shot container and wait for its exit."""
        out, tail, too_big = pump(sock, data, sink, self.max_output)
        if too_big:
            return RunResult(out, None, tail, True)
        status = self.engine.client().wait(ctr.id)
        res = RunResult(out, int(status.get("StatusCode", -1)), tail, False)
        if ctr.cgroup is not None:
            # every process has exited; the parent's hierarchical counters are final
            res.cpu_ns = ctr.cgroup.cpu_ns()
            res.peak = ctr.cgroup.peak()
        return res

    def run_exec(self, ctr: Container, argv: list[str], spec: FunctionSpec, data: bytes,
                 sink: Callable[[bytes], None], env: dict[str, str] | None = None) -> RunResult:
        """Run ``argv`` inside a pooled container with ``data`` as its stdin and
        ``env`` over the spec's environment; usage figures are the cgroup's,
        taken before and after."""
        api = self.engine.client()
        cg = ctr.cgroup
        cpu0 = oom0 = None
        if cg is not None:
            cpu0 = cg.cpu_ns()
            oom0 = cg.oom_kills(ctr.id)
            cg.reset_peak()
        try:
            exec_id = api.exec_create(
                ctr.id, argv, stdin=True, stdout=True, stderr=True,
                environment={**spec.env, **(env or {})} or None, workdir=spec.workdir or None,
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except sdk().errors.APIError as exc:
            if exc.status_code == 409 or "not running" in str(exc):
                raise errors.FunctionError(
                    f"pooled container {ctr.name} of {spec.name!r} is not running"
                ) from None
            raise
        out, tail, too_big = pump(sock, data, sink, self.max_output)
        res = RunResult(out, None, tail, too_big)
        if too_big:
            return res
        for _ in range(200):  # the exit code lands a moment after EOF
            info = api.exec_inspect(exec_id)
            if not info.get("Running"):
                res.exit_code = info.get("ExitCode")
                break
            time.sleep(0.01)
        if cg is not None:
            cpu1 = cg.cpu_ns()
            if cpu0 is not None and cpu1 is not None:
                res.cpu_ns = max(0, cpu1 - cpu0)
            res.peak = cg.peak()
            oom1 = cg.oom_kills(ctr.id)
            if oom0 is not None and oom1 is not None:
                res.oom_kills = oom1 - oom0
        return res
