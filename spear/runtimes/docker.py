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

Limits (per-invocation ``limits`` first, then ``spec.limits``, then the
runtime defaults): memory (``mem_limit`` with an equal ``memswap_limit``: no
swap), CPUs (``nano_cpus``), pids, CPU seconds (``RLIMIT_CPU``), network off
(``network_mode="none"``) unless ``network`` is true, read-only root
filesystem when ``read_only``; ``no-new-privileges`` always. Pooled
containers get their limits when they are created. The timeout is counted
from the moment the container is started (one-shot) or the exec is created
(pooled); on expiry the container is killed and removed, the instance is not
reusable, and :class:`~spear.errors.DeadlineExceeded` is raised. An OOM kill
raises :class:`~spear.errors.ResourceExhausted`.

Usage (best effort): when the engine is local and uses the ``cgroupfs`` cgroup
driver, each container is placed under its own cgroup parent
``/spear/<container-name>`` whose hierarchical counters survive the
container: CPU time is ``cpuacct.usage`` (v1) or ``cpu.stat usage_usec`` (v2)
and peak memory is ``memory.max_usage_in_bytes`` (v1, reset before each exec
in pooled mode) or ``memory.peak`` (v2, since the container started). Peak
memory is the cgroup's charge, page cache included. Elsewhere both are 0.

Every container is labelled ``spear.managed=1`` and ``spear.owner=<owner>``
and named ``spear-<function>-<random>``; :meth:`DockerRuntime.close` removes
the containers of its owner, :func:`remove_leftovers` any of them.

All Docker SDK calls block, so they run on a private thread pool; the event
loop is never blocked.
"""

from __future__ import annotations

import asyncio
import contextvars
import glob
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import errors
from ..protocol import MAX_PAYLOAD, ExecUsage, FunctionSpec, Limits
from .base import Instance, LogSink, Outcome, Prepared, Runtime

try:  # the SDK is a hard dependency, but keep `available()` honest without it
    import docker
    import docker.errors as docker_errors
    import requests.exceptions as requests_errors
except ImportError:  # pragma: no cover - exercised only without the SDK
    docker = None  # type: ignore[assignment]
    docker_errors = None  # type: ignore[assignment]
    requests_errors = None  # type: ignore[assignment]

log = logging.getLogger("spear.runtimes.docker")

MANAGED_LABEL = "spear.managed"
OWNER_LABEL = "spear.owner"
FUNCTION_LABEL = "spear.function"
MODE_LABEL = "spear.mode"
NAME_PREFIX = "spear-"
DEFAULT_KEEPALIVE = ("sleep", "infinity")
DEFAULT_URL = "unix:///var/run/docker.sock"
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PARENT = "spear"
MiB = 1024 * 1024
#: inputs up to this size are written inline; larger ones by a writer thread
_INLINE_INPUT = 64 * 1024
#: how much of stderr is kept for error messages
_STDERR_TAIL = 2048


def _engine_url(base_url: str | None) -> str:
    return base_url or os.environ.get("DOCKER_HOST") or DEFAULT_URL


def _client_kwargs(base_url: str | None) -> dict:
    if base_url:
        return {"base_url": base_url}
    kwargs = docker.utils.kwargs_from_env()
    kwargs.setdefault("base_url", DEFAULT_URL)
    return kwargs


def _signal_name(num: int) -> str:
    try:
        import signal

        return signal.Signals(num).name
    except (ValueError, ImportError):
        return f"signal {num}"


def _tail(data: bytes) -> str:
    text = data[-_STDERR_TAIL:].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def remove_leftovers(base_url: str | None = None, owner: str | None = None) -> int:
    """Force-remove Spear's containers (all, or those of ``owner``); returns how many.

    Blocking; meant for tests, CI and operators.
    """
    api = docker.APIClient(version="auto", timeout=30, **_client_kwargs(base_url))
    try:
        labels = [f"{MANAGED_LABEL}=1"] + ([f"{OWNER_LABEL}={owner}"] if owner else [])
        found = api.containers(all=True, filters={"label": labels})
        for c in found:
            try:
                api.remove_container(c["Id"], force=True)
            except docker_errors.NotFound:
                pass
            for name in c.get("Names") or []:
                _Cgroup.rmdir_parent(name.lstrip("/"))
        return len(found)
    finally:
        api.close()


# ----------------------------------------------------------------- cgroups


class _Cgroup:
    """The cgroup parent ``/spear/<name>`` that holds exactly one container."""

    def __init__(self, version: int, name: str) -> None:
        self.version = version
        self.name = name

    @property
    def parent(self) -> str:
        return f"/{CGROUP_PARENT}/{self.name}"

    def _path(self, controller: str, *parts: str) -> str:
        if self.version == 2:
            return os.path.join(CGROUP_ROOT, CGROUP_PARENT, self.name, *parts)
        return os.path.join(CGROUP_ROOT, controller, CGROUP_PARENT, self.name, *parts)

    @staticmethod
    def _read(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return None

    @staticmethod
    def _field(text: str | None, key: str) -> int | None:
        for line in (text or "").splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                try:
                    return int(v)
                except ValueError:
                    return None
        return None

    def exists(self) -> bool:
        return os.path.isdir(self._path("memory"))

    def cpu_ns(self) -> int | None:
        if self.version == 2:
            usec = self._field(self._read(self._path("", "cpu.stat")), "usage_usec")
            return None if usec is None else usec * 1000
        text = self._read(self._path("cpuacct", "cpuacct.usage"))
        try:
            return int(text) if text else None
        except ValueError:
            return None

    def peak(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        text = self._read(self._path("memory", name))
        try:
            return int(text) if text else None
        except ValueError:
            return None

    def reset_peak(self) -> None:
        if self.version == 1:  # v2's memory.peak reset is per open file; not used
            try:
                with open(self._path("memory", "memory.max_usage_in_bytes"), "w") as f:
                    f.write("0")
            except OSError:
                pass

    def oom_kills(self, container_id: str) -> int | None:
        if self.version == 2:  # memory.events is hierarchical in v2
            return self._field(self._read(self._path("memory", "memory.events")), "oom_kill")
        text = self._read(self._path("memory", container_id, "memory.oom_control"))
        return self._field(text, "oom_kill")

    @staticmethod
    def rmdir_parent(name: str) -> None:
        paths = glob.glob(os.path.join(CGROUP_ROOT, "*", CGROUP_PARENT, name))
        paths.append(os.path.join(CGROUP_ROOT, CGROUP_PARENT, name))
        for path in paths:
            for _ in range(20):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the container's own cgroup is still being removed
                    time.sleep(0.01)

    def remove(self) -> None:
        self.rmdir_parent(self.name)


# ----------------------------------------------------------------- handles


@dataclass
class _Effective:
    timeout: float
    memory_mb: int
    cpus: float | None
    pids: int | None
    cpu_seconds: float | None
    network: bool
    read_only: bool


@dataclass
class _Image:
    """``Prepared.handle``: the resolved image and base argv."""

    image_id: str
    argv: list[str]


@dataclass
class _Container:
    id: str
    name: str
    cgroup: _Cgroup | None
    removed: bool = False
    killed: bool = False


@dataclass
class _OneShot:
    """``Instance.handle`` of a one-shot function: nothing runs between calls."""

    prepared: Prepared


@dataclass
class _Pooled:
    """``Instance.handle`` of a pooled function: one long-lived container."""

    prepared: Prepared
    container: _Container
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _RunResult:
    output: bytes
    exit_code: int | None
    stderr_tail: bytes
    too_big: bool
    cpu_ns: int | None = None
    peak: int | None = None
    oom_kills: int | None = None


# ----------------------------------------------------------------- streams


def _raw_socket(sock: Any) -> socket.socket:
    raw = getattr(sock, "_sock", sock)
    raw.settimeout(None)  # the deadline is enforced by killing the container
    return raw


def _send_input(raw: socket.socket, data: bytes) -> None:
    try:
        if data:
            raw.sendall(data)
    except OSError:  # the process exited without reading all of its input
        pass
    finally:
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _pump(
    sock: Any, data: bytes, on_stderr: Callable[[bytes], None], max_output: int
) -> tuple[bytes, bytes, bool]:
    """Feed ``data`` to a hijacked attach/exec stream and demultiplex its output.

    Returns ``(stdout, stderr_tail, too_big)``. Input bigger than a socket
    buffer is written by a helper thread so a process that writes before it
    has read everything cannot deadlock us.
    """
    raw = _raw_socket(sock)
    writer = None
    if len(data) <= _INLINE_INPUT:
        _send_input(raw, data)
    else:
        writer = threading.Thread(target=_send_input, args=(raw, data), daemon=True)
        writer.start()
    out = bytearray()
    tail = b""
    buf = bytearray()
    pos = 0
    too_big = False
    try:
        while True:
            chunk = raw.recv(256 * 1024)
            if not chunk:
                break
            buf += chunk
            while len(buf) - pos >= 8:
                kind = buf[pos]
                size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
                if len(buf) - pos - 8 < size:
                    break
                payload = bytes(buf[pos + 8 : pos + 8 + size])
                pos += 8 + size
                if kind == 2:
                    tail = (tail + payload)[-_STDERR_TAIL:]
                    on_stderr(payload)
                else:
                    out += payload
                    if len(out) > max_output:
                        too_big = True
                        return bytes(out[:max_output]), tail, True
            if pos > 1 << 20:
                del buf[:pos]
                pos = 0
    finally:
        for closer in (raw, sock, getattr(sock, "_response", None)):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # already closed through another wrapper
                pass
        if writer is not None:
            writer.join(timeout=5)
    return bytes(out), tail, too_big


# ----------------------------------------------------------------- runtime


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
        self.url = _engine_url(base_url)
        self.default_timeout = float(default_timeout)
        self.default_memory_mb = int(default_memory_mb)
        self.default_pids = default_pids
        #: labels this runtime's containers so close() removes only its own
        self.owner = owner or uuid.uuid4().hex[:16]
        self.keepalive = list(keepalive)
        self.max_output = int(max_output)
        self._want_usage = usage
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="spear-docker")
        self._api_lock = threading.Lock()
        self._api: Any = None
        self._cgroup_version: int | None = None  # None: usage not measured
        self._closed = False
        self._background: set = set()

    @property
    def measures_usage(self) -> bool:
        """True once connected if CPU time and peak memory are measured (cgroups)."""
        return self._cgroup_version is not None

    # ------------------------------------------------------------ engine

    def available(self) -> tuple[bool, str]:
        if docker is None:
            return False, "the 'docker' Python package is not installed"
        try:
            api = docker.APIClient(version="auto", timeout=3, **_client_kwargs(self.base_url))
        except Exception as exc:
            return False, f"cannot reach Docker Engine at {self.url}: {exc}"
        try:
            api.ping()
        except Exception as exc:
            return False, f"cannot reach Docker Engine at {self.url}: {exc}"
        finally:
            api.close()
        return True, ""

    def _client(self) -> Any:
        """The shared APIClient (created on first use, in a worker thread)."""
        if self._api is not None:
            return self._api
        with self._api_lock:
            if self._api is None:
                if docker is None:
                    raise errors.Unavailable("the 'docker' Python package is not installed")
                api = docker.APIClient(
                    version="auto", timeout=60, max_pool_size=64, **_client_kwargs(self.base_url)
                )
                self._cgroup_version = self._detect_cgroups(api)
                self._api = api
        return self._api

    def _detect_cgroups(self, api: Any) -> int | None:
        if not self._want_usage or not self.url.startswith("unix://"):
            return None
        try:
            info = api.info()
        except Exception:
            return None
        if info.get("CgroupDriver") != "cgroupfs":
            return None
        version = 2 if str(info.get("CgroupVersion", "1")) == "2" else 1
        probe = os.path.join(CGROUP_ROOT, "cgroup.controllers" if version == 2 else "memory")
        return version if os.path.exists(probe) else None

    def _map_error(self, exc: BaseException, what: str) -> errors.SpearError:
        if isinstance(exc, errors.SpearError):
            return exc
        if docker_errors is not None:
            if isinstance(exc, docker_errors.NotFound):
                return errors.NotFound(f"{what}: {exc.explanation or exc}")
            if isinstance(exc, docker_errors.APIError):
                return errors.Internal(f"{what}: Docker Engine error: {exc.explanation or exc}")
            if isinstance(exc, (requests_errors.ConnectionError, docker_errors.DockerException)):
                return errors.Unavailable(f"cannot reach Docker Engine at {self.url}: {exc}")
        if isinstance(exc, (ConnectionError, FileNotFoundError)):
            return errors.Unavailable(f"cannot reach Docker Engine at {self.url}: {exc}")
        return errors.Internal(f"{what}: {type(exc).__name__}: {exc}")

    def _submit(
        self, fn: Callable, *args: Any, _track: bool = False, **kwargs: Any
    ) -> asyncio.Future:
        """Run ``fn`` on the pool; ``_track``: settle() waits for it too."""
        ctx = contextvars.copy_context()
        cfut = self._pool.submit(ctx.run, fn, *args, **kwargs)
        if _track:
            self._background.add(cfut)
            cfut.add_done_callback(self._background.discard)
        return asyncio.wrap_future(cfut)

    async def _call(
        self, what: str, fn: Callable, *args: Any, _track: bool = False, **kwargs: Any
    ) -> Any:
        """Run a blocking engine call in the pool, mapping SDK errors to Spear's."""
        if self._closed:
            raise errors.Unavailable("docker runtime is closed")
        try:
            return await self._submit(fn, *args, _track=_track, **kwargs)
        except (asyncio.CancelledError, errors.SpearError):
            raise
        except Exception as exc:
            raise self._map_error(exc, what) from exc

    # ------------------------------------------------------------ helpers

    def _effective(self, spec: FunctionSpec, limits: Limits | None) -> _Effective:
        s = spec.limits
        l = limits or Limits()

        def pick(a: Any, b: Any, d: Any) -> Any:
            return a if a is not None else (b if b is not None else d)

        return _Effective(
            timeout=float(pick(l.timeout, s.timeout, self.default_timeout)),
            memory_mb=int(pick(l.memory_mb, s.memory_mb, self.default_memory_mb)),
            cpus=pick(l.cpus, s.cpus, None),
            pids=pick(l.pids, s.pids, self.default_pids),
            cpu_seconds=pick(l.cpu_seconds, s.cpu_seconds, None),
            network=bool(l.network or s.network),
            read_only=bool(l.read_only or s.read_only),
        )

    def _new_name(self, function: str) -> str:
        return f"{NAME_PREFIX}{function[:40]}-{uuid.uuid4().hex[:12]}"

    def _create_blocking(
        self, prepared: Prepared, argv: list[str] | None, eff: _Effective, mode: str
    ) -> _Container:
        api = self._client()
        spec = prepared.spec
        name = self._new_name(spec.name)
        cg = _Cgroup(self._cgroup_version, name) if self._cgroup_version else None
        ulimits = None
        if eff.cpu_seconds:
            secs = max(1, math.ceil(eff.cpu_seconds))
            ulimits = [docker.types.Ulimit(name="cpu", soft=secs, hard=secs + 1)]
        host_config = api.create_host_config(
            mem_limit=eff.memory_mb * MiB,
            memswap_limit=eff.memory_mb * MiB,
            nano_cpus=int(eff.cpus * 1e9) if eff.cpus else None,
            pids_limit=int(eff.pids) if eff.pids else None,
            network_mode=None if eff.network else "none",
            read_only=eff.read_only,
            security_opt=["no-new-privileges"],
            cgroup_parent=cg.parent if cg else None,
            ulimits=ulimits,
        )
        created = api.create_container(
            image=prepared.handle.image_id,
            command=argv,
            name=name,
            labels={
                MANAGED_LABEL: "1",
                OWNER_LABEL: self.owner,
                FUNCTION_LABEL: spec.name,
                MODE_LABEL: mode,
            },
            environment=dict(spec.env) or None,
            working_dir=spec.workdir or None,
            stdin_open=(mode == "oneshot"),  # with attach: StdinOnce, closed at EOF
            host_config=host_config,
        )
        return _Container(id=created["Id"], name=name, cgroup=cg)

    async def _create(
        self, prepared: Prepared, argv: list[str] | None, eff: _Effective, mode: str
    ) -> _Container:
        """Create a container; if the caller is cancelled meanwhile, it is removed.

        The hand-off happens under a lock in the worker thread, so a container
        is never created without an owner, even when the event loop is gone.
        """
        lock = threading.Lock()
        state: dict = {"abandoned": False, "ctr": None}

        def work() -> _Container:
            ctr = self._create_blocking(prepared, argv, eff, mode)
            with lock:
                if not state["abandoned"]:
                    state["ctr"] = ctr
                    return ctr
            self._remove_work(ctr)
            return ctr

        try:
            return await self._call(
                f"creating a container for {prepared.spec.name!r}", work, _track=True
            )
        except asyncio.CancelledError:
            with lock:
                state["abandoned"] = True
                ctr = state["ctr"]
            if ctr is not None:  # created just before the cancellation landed
                self._remove_later(ctr)
            raise

    def _remove_blocking(self, ctr: _Container) -> None:
        if ctr.removed:
            return
        api = self._client()
        try:
            api.remove_container(ctr.id, force=True)
        except docker_errors.NotFound:
            pass
        except docker_errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise
        ctr.removed = True

    def _kill_blocking(self, ctr: _Container) -> None:
        ctr.killed = True
        try:
            self._client().kill(ctr.id)
        except docker_errors.APIError:  # already stopped or gone
            pass

    def _remove_work(self, ctr: _Container) -> None:
        try:
            self._remove_blocking(ctr)
        except Exception as exc:  # never let cleanup hide the real outcome
            log.warning("could not remove container %s: %s", ctr.name, exc)
        if ctr.cgroup is not None:
            ctr.cgroup.remove()

    async def _remove(self, ctr: _Container) -> None:
        """Remove a container (and its cgroup parent), surviving cancellation."""
        # shielded (and tracked): a cancelled caller still gets it removed
        await asyncio.shield(self._submit(self._remove_work, ctr, _track=True))

    def _remove_later(self, ctr: _Container) -> None:
        """Remove an exited container in the background (off the reply path)."""
        ctr.removed = True  # nobody else touches it from now on
        ctr_copy = _Container(id=ctr.id, name=ctr.name, cgroup=ctr.cgroup)
        fut = self._pool.submit(self._remove_work, ctr_copy)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait until background removals of finished one-shot containers are done."""
        pending = list(self._background)
        if pending:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in pending), return_exceptions=True)

    async def _await_run(
        self, fut: asyncio.Future, ctr: _Container, timeout: float, function: str
    ) -> _RunResult:
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
            raise self._map_error(exc, f"running {function!r} in {ctr.name}") from exc
        try:
            await self._submit(self._kill_blocking, ctr)
        except Exception as exc:
            log.warning("could not kill container %s: %s", ctr.name, exc)
        try:
            await asyncio.wait_for(asyncio.shield(fut), 10)
        except BaseException:
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise errors.DeadlineExceeded(
            f"function {function!r} exceeded its timeout of {timeout:g} s; container killed"
        )

    @staticmethod
    def _log_sink(on_log: LogSink | None) -> Callable[[bytes], None]:
        if on_log is None:
            return lambda chunk: None
        loop = asyncio.get_running_loop()

        def sink(chunk: bytes) -> None:
            try:
                loop.call_soon_threadsafe(on_log, chunk)
            except RuntimeError:  # loop closed
                pass

        return sink

    def _usage(self, res: _RunResult) -> ExecUsage:
        return ExecUsage(cpu_time=(res.cpu_ns or 0) / 1e9, peak_memory=res.peak or 0)

    def _fail(
        self,
        res: _RunResult,
        spec: FunctionSpec,
        eff: _Effective,
        oom: bool,
    ) -> errors.SpearError:
        code = res.exit_code
        if oom:
            return errors.ResourceExhausted(
                f"OOM killed: memory limit {eff.memory_mb} MiB (function {spec.name!r})"
            )
        if code is not None and code > 128:
            sig = code - 128
            # RLIMIT_CPU sends SIGXCPU (24) at the soft limit, SIGKILL at the
            # hard one; a container's PID 1 ignores SIGXCPU, so it sees SIGKILL
            limit = eff.cpu_seconds
            if limit and (
                sig == 24 or (sig == 9 and (res.cpu_ns is None or res.cpu_ns >= 0.9e9 * limit))
            ):
                return errors.ResourceExhausted(
                    f"CPU time limit of {eff.cpu_seconds:g} s exceeded (function {spec.name!r})"
                )
            return errors.FunctionError(
                f"function {spec.name!r} was killed by {_signal_name(sig)} "
                f"(exit code {code}){_tail(res.stderr_tail)}"
            )
        return errors.FunctionError(
            f"function {spec.name!r} exited with code {code}{_tail(res.stderr_tail)}"
        )

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
                return self._client().inspect_image(spec.image)
            except docker_errors.ImageNotFound:
                raise errors.NotFound(
                    f"image {spec.image!r} is not present on this node's Docker Engine; "
                    "Spear never pulls images: build, load or import it first"
                ) from None

        info = await self._call(f"inspecting image {spec.image!r}", inspect)
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
        ctr = await self._create(prepared, self.keepalive, eff, "pooled")
        try:
            state = await self._call(
                f"starting container {ctr.name}", self._start_pooled_blocking, ctr
            )
        except BaseException:
            await self._remove(ctr)
            raise
        if not state.get("Running"):
            await self._remove(ctr)
            raise errors.FunctionError(
                f"pooled container for {spec.name!r} did not stay up running "
                f"{self.keepalive} (state {state.get('Status')}, exit code {state.get('ExitCode')})"
            )
        return Instance(function=spec.name, handle=_Pooled(prepared, ctr))

    def _start_pooled_blocking(self, ctr: _Container) -> dict:
        api = self._client()
        api.start(ctr.id)
        return api.inspect_container(ctr.id)["State"]

    async def invoke(
        self,
        instance: Instance,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None = None,
    ) -> Outcome:
        handle = instance.handle
        instance.invocations += 1
        data = bytes(data or b"")
        if isinstance(handle, _OneShot):
            return await self._invoke_oneshot(handle.prepared, data, args, limits, on_log)
        if isinstance(handle, _Pooled):
            try:
                return await self._invoke_pooled(instance, handle, data, args, limits, on_log)
            except BaseException:
                instance.reusable = False
                raise
        raise errors.InvalidArgument("instance was not created by the docker runtime")

    @staticmethod
    def _argv(base: list[str], args: list) -> list[str]:
        return list(base) + [str(a) for a in (args or [])]

    # one-shot ----------------------------------------------------------

    def _attach_start_blocking(self, ctr: _Container, function: str) -> Any:
        api = self._client()
        sock = api.attach_socket(
            ctr.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        )
        try:
            api.start(ctr.id)
        except BaseException as exc:
            try:
                sock.close()
            except Exception:
                pass
            if isinstance(exc, docker_errors.APIError) and not isinstance(
                exc, docker_errors.NotFound
            ):
                # the engine refuses to start what the spec asks for (no such
                # executable, bad workdir...): the function's fault
                raise errors.FunctionError(
                    f"function {function!r} could not start: {exc.explanation or exc}"
                ) from None
            raise
        return sock

    def _oneshot_body(
        self, ctr: _Container, sock: Any, data: bytes, sink: Callable[[bytes], None]
    ) -> _RunResult:
        out, tail, too_big = _pump(sock, data, sink, self.max_output)
        if too_big:
            return _RunResult(out, None, tail, True)
        status = self._client().wait(ctr.id)
        res = _RunResult(out, int(status.get("StatusCode", -1)), tail, False)
        if ctr.cgroup is not None:
            # every process has exited; the parent's hierarchical counters are final
            res.cpu_ns = ctr.cgroup.cpu_ns()
            res.peak = ctr.cgroup.peak()
        return res

    def _oom_killed_blocking(self, ctr: _Container) -> bool:
        try:
            return bool(self._client().inspect_container(ctr.id)["State"].get("OOMKilled"))
        except docker_errors.NotFound:
            return False

    async def _invoke_oneshot(
        self, prepared: Prepared, data: bytes, args: list, limits: Limits, on_log: LogSink | None
    ) -> Outcome:
        spec = prepared.spec
        eff = self._effective(spec, limits)
        argv = self._argv(prepared.handle.argv, args) or None
        sink = self._log_sink(on_log)
        ctr = await self._create(prepared, argv, eff, "oneshot")
        try:
            sock = await self._call(
                f"starting container {ctr.name}", self._attach_start_blocking, ctr, spec.name
            )
            fut = self._submit(self._oneshot_body, ctr, sock, data, sink)
            res = await self._await_run(fut, ctr, eff.timeout, spec.name)
            if res.too_big:
                raise errors.ResourceExhausted(
                    f"function {spec.name!r} wrote more than {self.max_output} bytes of output"
                )
            if res.exit_code != 0:
                oom = await self._call(
                    f"inspecting container {ctr.name}", self._oom_killed_blocking, ctr
                )
                raise self._fail(res, spec, eff, oom)
            self._remove_later(ctr)
            return Outcome(output=res.output, exit_code=res.exit_code, usage=self._usage(res))
        finally:
            if not ctr.removed:
                await self._remove(ctr)

    # pooled ------------------------------------------------------------

    def _exec_body(
        self,
        ctr: _Container,
        argv: list[str],
        spec: FunctionSpec,
        data: bytes,
        sink: Callable[[bytes], None],
    ) -> _RunResult:
        api = self._client()
        cg = ctr.cgroup
        cpu0 = oom0 = None
        if cg is not None:
            cpu0 = cg.cpu_ns()
            oom0 = cg.oom_kills(ctr.id)
            cg.reset_peak()
        try:
            exec_id = api.exec_create(
                ctr.id,
                argv,
                stdin=True,
                stdout=True,
                stderr=True,
                environment=dict(spec.env) or None,
                workdir=spec.workdir or None,
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except docker_errors.APIError as exc:
            if exc.status_code == 409 or "not running" in str(exc):
                raise errors.FunctionError(
                    f"pooled container {ctr.name} of {spec.name!r} is not running"
                ) from None
            raise
        out, tail, too_big = _pump(sock, data, sink, self.max_output)
        res = _RunResult(out, None, tail, too_big)
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

    def _oom_blocking(self, ctr: _Container, res: _RunResult) -> bool:
        if res.oom_kills:
            return True
        if res.exit_code != 137:
            return False
        return self._oom_killed_blocking(ctr)

    async def _invoke_pooled(
        self,
        instance: Instance,
        handle: _Pooled,
        data: bytes,
        args: list,
        limits: Limits,
        on_log: LogSink | None,
    ) -> Outcome:
        spec = handle.prepared.spec
        ctr = handle.container
        if ctr.removed or ctr.killed:
            raise errors.FunctionError(f"pooled container {ctr.name} of {spec.name!r} is gone")
        eff = self._effective(spec, limits)
        argv = self._argv(handle.prepared.handle.argv, args)
        sink = self._log_sink(on_log)
        async with handle.lock:  # one exec at a time: usage figures stay per call
            fut = self._submit(self._exec_body, ctr, argv, spec, data, sink)
            try:
                res = await self._await_run(fut, ctr, eff.timeout, spec.name)
            except errors.DeadlineExceeded:
                instance.reusable = False
                await self._remove(ctr)
                raise
            except asyncio.CancelledError:
                instance.reusable = False
                await self._remove(ctr)
                raise
        if res.too_big:
            instance.reusable = False
            raise errors.ResourceExhausted(
                f"function {spec.name!r} wrote more than {self.max_output} bytes of output"
            )
        if res.exit_code != 0:
            instance.reusable = False
            oom = await self._call("inspecting container", self._oom_blocking, ctr, res)
            raise self._fail(res, spec, eff, oom)
        return Outcome(output=res.output, exit_code=0, usage=self._usage(res))

    async def destroy(self, instance: Instance) -> None:
        handle = instance.handle
        instance.reusable = False
        if isinstance(handle, _Pooled) and not handle.container.removed:
            try:
                await self._remove(handle.container)
            except Exception as exc:  # must not raise
                log.warning("destroying %s: %s", handle.container.name, exc)

    async def close(self) -> None:
        if self._closed:
            return
        await self.settle()
        self._closed = True
        if self._api is not None:
            try:
                fut = asyncio.get_running_loop().run_in_executor(
                    self._pool, remove_leftovers, self.base_url, self.owner
                )
                n = await fut
                if n:
                    log.info("removed %d leftover container(s) of owner %s", n, self.owner)
            except Exception as exc:
                log.warning("could not remove leftover containers: %s", exc)
            try:
                self._api.close()
            except Exception:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
