"""The ``docker`` runtime: functions packaged as container images.

A function is an image (already present on the node: Spear never pulls) plus a
command. Two modes:

* ``oneshot`` -- every invocation creates a container from the image running
  ``spec.command + args``; the input is written to its stdin (then closed),
  stdout is the output, stderr is streamed to ``on_log``; a non-zero exit is a
  :class:`~spear.errors.FunctionError`. The container is always removed:
  after a success in the background, off the reply path (:meth:`settle`
  waits for those removals; :meth:`close` does too), after a failure before
  the error is raised.
* ``pooled`` -- ``create_instance`` starts one long-lived container running a
  keep-alive command (``sleep infinity``); each invocation *execs*
  ``spec.command + args`` inside it with the same stdin/stdout/stderr
  contract. ``destroy`` force-removes the container.

Limits are in :mod:`.limits`, usage figures in :mod:`.usage`. The timeout is
counted from the moment the container is started (one-shot) or the exec is
created (pooled); on expiry the container is killed and removed, the
instance is not reusable, and :class:`~spear.errors.DeadlineExceeded` is
raised. An OOM kill raises :class:`~spear.errors.ResourceExhausted`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Callable

from ... import errors
from ...protocol import MAX_PAYLOAD, ExecUsage, FunctionSpec, Limits
from ...tracing import env as trace_env
from ..base import Instance, LogSink, Outcome, Prepared, Runtime
from .containers import Container, Containers, remove_leftovers
from .engine import Engine, ping, sdk
from .limits import Effective, RunResult, effective, failure

__all__ = ["DEFAULT_KEEPALIVE", "DockerRuntime"]

log = logging.getLogger("spear.runtimes.docker")

DEFAULT_KEEPALIVE = ("sleep", "infinity")


@dataclass
class _Image:
    """``Prepared.handle``: the resolved image and base argv."""

    image_id: str
    argv: list[str]


@dataclass
class _OneShot:
    """``Instance.handle`` of a one-shot function: nothing runs between calls."""

    prepared: Prepared


@dataclass
class _Pooled:
    """``Instance.handle`` of a pooled function: one long-lived container."""

    prepared: Prepared
    container: Container
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _argv(base: list[str], args: list) -> list[str]:
    return list(base) + [str(a) for a in (args or [])]


def _log_sink(on_log: LogSink | None) -> Callable[[bytes], None]:
    """``on_log`` made callable from an engine thread (it runs on the loop)."""
    if on_log is None:
        return lambda chunk: None
    loop = asyncio.get_running_loop()

    def sink(chunk: bytes) -> None:
        try:
            loop.call_soon_threadsafe(on_log, chunk)
        except RuntimeError:  # loop closed
            pass

    return sink


def _usage(res: RunResult) -> ExecUsage:
    return ExecUsage(cpu_time=(res.cpu_ns or 0) / 1e9, peak_memory=res.peak or 0)


def _said_leftovers(fut: asyncio.Future) -> None:
    """Log what :meth:`DockerRuntime.remove_leftovers_first` did (best effort: never raised)."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        log.warning("could not remove leftover containers: %s", exc)
    elif fut.result():
        log.info("removed %d container(s) left by an earlier run of this node", fut.result())


class DockerRuntime(Runtime):
    """Functions as container images, through the Docker Engine API."""

    name = "docker"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        default_timeout: float = 30.0,
        default_memory_mb: int = 256,
        default_pids: int | None = 256,
        owner: str | None = None,
        keepalive: list[str] | tuple[str, ...] = DEFAULT_KEEPALIVE,
        max_output: int = MAX_PAYLOAD,
        max_threads: int = 64,
        usage: bool = True,
    ) -> None:
        self.base_url = base_url
        self.default_timeout = float(default_timeout)
        self.default_memory_mb = int(default_memory_mb)
        self.default_pids = default_pids
        #: labels this runtime's containers so close() removes only its own
        self.owner = owner or uuid.uuid4().hex[:16]
        self.keepalive = list(keepalive)
        self.max_output = int(max_output)
        self._engine = Engine(base_url, max_threads, usage)
        self._containers = Containers(self._engine, self.owner, self.max_output)

    @property
    def url(self) -> str:
        """The address of the engine."""
        return self._engine.url

    @property
    def measures_usage(self) -> bool:
        """True once connected if CPU time and peak memory are measured (cgroups)."""
        return self._engine.cgroup_version is not None

    def available(self) -> tuple[bool, str]:
        return ping(self.base_url)

    def _effective(self, spec: FunctionSpec, limits: Limits | None) -> Effective:
        return effective(spec, limits, self.default_timeout, self.default_memory_mb, self.default_pids)

    def remove_leftovers_first(self) -> asyncio.Future:
        """Remove, in the background, the containers an earlier run of this
        owner left (a node killed before it could): nothing of this runtime
        reaches the engine before that has ended. Returns how many (a future)."""
        fut = self._engine.first(remove_leftovers, self.base_url, self.owner)
        fut.add_done_callback(_said_leftovers)
        return fut

    async def settle(self) -> None:
        """Wait until background removals of finished one-shot containers are done."""
        await self._engine.settle()

    # ------------------------------------------------------------ Runtime API

    async def prepare(self, spec: FunctionSpec) -> Prepared:
        if spec.runtime != "docker":
            raise errors.InvalidArgument(f"spec runtime is {spec.runtime!r}, not 'docker'")
        if not spec.image:
            raise errors.InvalidArgument(f"docker function {spec.name!r} needs an image")
        if spec.mode == "pooled" and not spec.command:
            raise errors.InvalidArgument(
                f"pooled docker function {spec.name!r} needs a command to exec in its container"
            )

        def inspect() -> dict:
            try:
                return self._engine.client().inspect_image(spec.image)
            except sdk().errors.ImageNotFound:
                raise errors.NotFound(
                    f"image {spec.image!r} is not present on this node's Docker Engine; "
                    "Spear never pulls images: build, load or import it first"
                ) from None

        info = await self._engine.call(f"inspecting image {spec.image!r}", inspect)
        argv = list(spec.command)
        config = info.get("Config") or {}
        if not argv and not (config.get("Cmd") or config.get("Entrypoint")):
            raise errors.InvalidArgument(
                f"docker function {spec.name!r} has no command and image {spec.image!r} has no CMD"
            )
        image_id = info["Id"]
        digest = hashlib.sha256(
            json.dumps([image_id, argv, spec.mode, spec.env, spec.workdir], sort_keys=True).encode()
        ).hexdigest()
        return Prepared(spec=spec, handle=_Image(image_id=image_id, argv=argv), digest=digest)

    async def create_instance(self, prepared: Prepared) -> Instance:
        spec = prepared.spec
        if spec.mode != "pooled":
            return Instance(function=spec.name, handle=_OneShot(prepared))
        eff = self._effective(spec, None)
        cs = self._containers
        ctr = await cs.create(prepared.handle.image_id, spec, self.keepalive, eff, "pooled")
        try:
            state = await self._engine.call(f"starting container {ctr.name}", cs.start_pooled_blocking, ctr)
        except BaseException:
            await cs.remove(ctr)
            raise
        if not state.get("Running"):
            await cs.remove(ctr)
            raise errors.FunctionError(
                f"pooled container for {spec.name!r} did not stay up running "
                f"{self.keepalive} (state {state.get('Status')}, exit code {state.get('ExitCode')})"
            )
        return Instance(function=spec.name, handle=_Pooled(prepared, ctr))

    async def invoke(
        self,
        instance: Instance,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None = None,
        *,
        traceparent: str = "",
        tracestate: str = "",
    ) -> Outcome:
        handle = instance.handle
        instance.invocations += 1
        data = bytes(data or b"")
        env = trace_env(traceparent, tracestate)
        if isinstance(handle, _OneShot):
            return await self._invoke_oneshot(handle.prepared, data, args, limits, on_log, env)
        if isinstance(handle, _Pooled):
            try:
                return await self._invoke_pooled(instance, handle, data, args, limits, on_log, env)
            except BaseException:
                instance.reusable = False
                raise
        raise errors.InvalidArgument("instance was not created by the docker runtime")

    async def _await_run(self, fut: asyncio.Future, ctr: Container, timeout: float,
                         function: str) -> RunResult:
        """Wait for a run under its deadline; on expiry kill and raise DeadlineExceeded."""
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:
            # the caller's finally removes the container, which ends the thread
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        except errors.SpearError:
            raise
        except Exception as exc:
            raise self._engine.map_error(exc, f"running {function!r} in {ctr.name}") from exc
        try:
            await self._engine.submit(self._containers.kill_blocking, ctr)
        except Exception as exc:
            log.warning("could not kill container %s: %s", ctr.name, exc)
        try:
            await asyncio.wait_for(asyncio.shield(fut), 10)
        except BaseException:
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise errors.DeadlineExceeded(
            f"function {function!r} exceeded its timeout of {timeout:g} s; container killed"
        )

    async def _invoke_oneshot(self, prepared: Prepared, data: bytes, args: list, limits: Limits,
                              on_log: LogSink | None, env: dict[str, str]) -> Outcome:
        spec = prepared.spec
        eff = self._effective(spec, limits)
        argv = _argv(prepared.handle.argv, args) or None
        sink = _log_sink(on_log)
        cs = self._containers
        engine = self._engine
        ctr = await cs.create(prepared.handle.image_id, spec, argv, eff, "oneshot", env)
        try:
            sock = await engine.call(f"starting container {ctr.name}", cs.attach_start_blocking, ctr, spec.name)
            fut = engine.submit(cs.run_oneshot, ctr, sock, data, sink)
            res = await self._await_run(fut, ctr, eff.timeout, spec.name)
            if res.too_big:
                raise errors.ResourceExhausted(
                    f"function {spec.name!r} wrote more than {self.max_output} bytes of output"
                )
            if res.exit_code != 0:
                oom = await engine.call(f"inspecting container {ctr.name}", cs.oom_killed_blocking, ctr)
                raise failure(res, spec, eff, oom)
            cs.remove_later(ctr)
            return Outcome(output=res.output, exit_code=res.exit_code, usage=_usage(res))
        finally:
            if not ctr.removed:
                await cs.remove(ctr)

    async def _invoke_pooled(self, instance: Instance, handle: _Pooled, data: bytes, args: list,
                             limits: Limits, on_log: LogSink | None,
                             env: dict[str, str]) -> Outcome:
        spec = handle.prepared.spec
        ctr = handle.container
        if ctr.removed or ctr.killed:
            raise errors.FunctionError(f"pooled container {ctr.name} of {spec.name!r} is gone")
        eff = self._effective(spec, limits)
        argv = _argv(handle.prepared.handle.argv, args)
        sink = _log_sink(on_log)
        cs = self._containers
        async with handle.lock:  # one exec at a time: usage figures stay per call
            fut = self._engine.submit(cs.run_exec, ctr, argv, spec, data, sink, env)
            try:
                res = await self._await_run(fut, ctr, eff.timeout, spec.name)
            except (errors.DeadlineExceeded, asyncio.CancelledError):
                instance.reusable = False
                await cs.remove(ctr)
                raise
        if res.too_big:
            instance.reusable = False
            raise errors.ResourceExhausted(
                f"function {spec.name!r} wrote more than {self.max_output} bytes of output"
            )
        if res.exit_code != 0:
            instance.reusable = False
            oom = await self._engine.call("inspecting container", cs.exec_oom_blocking, ctr, res)
            raise failure(res, spec, eff, oom)
        return Outcome(output=res.output, exit_code=0, usage=_usage(res))

    async def destroy(self, instance: Instance) -> None:
        handle = instance.handle
        instance.reusable = False
        if isinstance(handle, _Pooled) and not handle.container.removed:
            try:
                await self._containers.remove(handle.container)
            except Exception as exc:  # must not raise
                log.warning("destroying %s: %s", handle.container.name, exc)

    async def close(self) -> None:
        engine = self._engine
        if engine.closed:
            return
        await engine.settle()
        engine.closed = True
        if engine.connected:
            try:
                n = await engine.submit(remove_leftovers, self.base_url, self.owner)
                if n:
                    log.info("removed %d leftover container(s) of owner %s", n, self.owner)
            except Exception as exc:
                log.warning("could not remove leftover containers: %s", exc)
        engine.close()
