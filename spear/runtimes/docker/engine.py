"""The Docker Engine as the ``docker`` runtime reaches it.

Which engine (``base_url``, else ``DOCKER_HOST`` through
:func:`spear.config.docker_host`, else the local socket), whether it answers
(:func:`ping`), and :class:`Engine`: the one shared ``APIClient`` of a
runtime, created on first use, with the private thread pool that every
blocking SDK call runs on (the event loop is never blocked) and the Docker
SDK's errors mapped to Spear's.

The SDK is imported by :func:`sdk` on first use, never at import: a node
starts, pings a local engine and cleans up after a crash through
:mod:`.probe` without it.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import ModuleType
from typing import Any, Callable

from ... import errors
from ...config import docker_host
from . import probe
from .usage import detect_cgroups

__all__ = ["DEFAULT_URL", "Engine", "connect", "engine_url", "loaded_sdk", "ping", "sdk"]

DEFAULT_URL = "unix:///var/run/docker.sock"

_sdk: ModuleType | None = None


def sdk() -> ModuleType:
    """The Docker SDK (``docker``), imported now if it was not yet.

    Unavailable if it is not installed."""
    global _sdk
    if _sdk is None:
        try:
            import docker
            import docker.errors  # noqa: F401 - the names map_error and callers match on
        except ImportError as exc:
            raise errors.Unavailable("the 'docker' Python package is not installed") from exc
        _sdk = docker
    return _sdk


def loaded_sdk() -> ModuleType | None:
    """The Docker SDK if :func:`sdk` imported it already, else None (an error
    raised before then cannot be one of its own)."""
    return _sdk


def engine_url(base_url: str | None) -> str:
    """The address of the engine a runtime with this ``base_url`` talks to."""
    return base_url or docker_host() or DEFAULT_URL


def connect(base_url: str | None, timeout: float, **kwargs: Any) -> Any:
    """A new low-level ``APIClient``. Without ``base_url`` the SDK's own
    environment settings apply (``DOCKER_HOST``, and its TLS settings)."""
    docker = sdk()
    if base_url:
        where = {"base_url": base_url}
    else:
        where = docker.utils.kwargs_from_env()
        where.setdefault("base_url", DEFAULT_URL)
    return docker.APIClient(version="auto", timeout=timeout, **where, **kwargs)


def ping(base_url: str | None) -> tuple[bool, str]:
    """``(True, "")`` if the engine answers, else ``(False, why)`` (blocking).

    A local engine is asked over its socket directly (:mod:`.probe`); any
    other through the SDK, which knows its TLS settings."""
    if importlib.util.find_spec("docker") is None:  # found without importing it
        return False, "the 'docker' Python package is not installed"
    url = engine_url(base_url)
    path = probe.local_socket(url)
    try:
        if path is not None:
            probe.ping(path)
            return True, ""
        api = connect(base_url, 3)
    except errors.Unavailable as exc:  # no SDK
        return False, exc.message
    except Exception as exc:
        return False, f"cannot reach Docker Engine at {url}: {exc}"
    try:
        api.ping()
    except Exception as exc:
        return False, f"cannot reach Docker Engine at {url}: {exc}"
    finally:
        api.close()
    return True, ""


class Engine:
    """One runtime's connection to the engine: a shared ``APIClient`` and a
    pool of ``max_threads`` threads for the blocking calls.

    ``cgroup_version`` is known once connected: 1 or 2 when container usage
    is measured through cgroups (``usage`` asked for, a local engine with the
    ``cgroupfs`` driver), else None. Background work (container removals
    off the reply path) is tracked so that :meth:`settle` can wait for it.
    Work given to :meth:`first` ends before the client is made, so before
    any call of the runtime reaches the engine.
    """

    def __init__(self, base_url: str | None, max_threads: int, usage: bool) -> None:
        self.base_url = base_url
        self.url = engine_url(base_url)
        self.cgroup_version: int | None = None
        self.closed = False
        self._want_usage = usage
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="spear-docker")
        self._api_lock = threading.Lock()
        self._api: Any = None
        self._background: set[Future] = set()
        self._first: Future | None = None

    @property
    def connected(self) -> bool:
        """True once the shared client exists."""
        return self._api is not None

    def client(self) -> Any:
        """The shared APIClient (created on first use, in a worker thread)."""
        if self._api is not None:
            return self._api
        with self._api_lock:
            if self._api is None:
                if self._first is not None:  # its outcome is its own to report
                    wait([self._first])
                api = connect(self.base_url, 60, max_pool_size=64)
                if self._want_usage and self.url.startswith("unix://"):
                    self.cgroup_version = detect_cgroups(api)
                self._api = api
        return self._api

    def map_error(self, exc: BaseException, what: str) -> errors.SpearError:
        """The Spear error for an SDK or connection failure while doing ``what``."""
        if isinstance(exc, errors.SpearError):
            return exc
        docker = loaded_sdk()
        if docker is not None:
            from requests.exceptions import ConnectionError as RequestsConnectionError  # the SDK's transport

            if isinstance(exc, docker.errors.NotFound):
                return errors.NotFound(f"{what}: {exc.explanation or exc}")
            if isinstance(exc, docker.errors.APIError):
                return errors.Internal(f"{what}: Docker Engine error: {exc.explanation or exc}")
            if isinstance(exc, (RequestsConnectionError, docker.errors.DockerException)):
                return errors.Unavailable(f"cannot reach Docker Engine at {self.url}: {exc}")
        if isinstance(exc, (ConnectionError, FileNotFoundError)):
            return errors.Unavailable(f"cannot reach Docker Engine at {self.url}: {exc}")
        return errors.Internal(f"{what}: {type(exc).__name__}: {exc}")

    def submit(self, fn: Callable, *args: Any, track: bool = False) -> asyncio.Future:
        """Run ``fn(*args)`` on the pool; ``track``: :meth:`settle` waits for it too."""
        ctx = contextvars.copy_context()
        cfut = self._pool.submit(ctx.run, fn, *args)
        if track:
            self._track(cfut)
        return asyncio.wrap_future(cfut)

    def first(self, fn: Callable, *args: Any) -> asyncio.Future:
        """Run ``fn(*args)`` on the pool now, before the shared client is made:
        every engine call through :meth:`client` waits until it has ended
        (:meth:`settle` waits for it too)."""
        cfut = self._pool.submit(fn, *args)
        self._first = cfut
        self._track(cfut)
        return asyncio.wrap_future(cfut)

    def background(self, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` on the pool with nobody waiting (:meth:`settle` does)."""
        self._track(self._pool.submit(fn, *args))

    def _track(self, cfut: Future) -> None:
        self._background.add(cfut)
        cfut.add_done_callback(self._background.discard)

    async def call(self, what: str, fn: Callable, *args: Any, track: bool = False) -> Any:
        """Run a blocking engine call on the pool, mapping SDK errors to Spear's."""
        if self.closed:
            raise errors.Unavailable("docker runtime is closed")
        try:
            return await self.submit(fn, *args, track=track)
        except (asyncio.CancelledError, errors.SpearError):
            raise
        except Exception as exc:
            raise self.map_error(exc, what) from exc

    async def settle(self) -> None:
        """Wait until the tracked background work is done."""
        pending = list(self._background)
        if pending:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in pending), return_exceptions=True)

    def close(self) -> None:
        """Close the client and stop the pool (running calls finish on their own)."""
        self.closed = True
        if self._api is not None:
            try:
                self._api.close()
            except Exception:  # already closed
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
