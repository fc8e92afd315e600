"""The Docker Engine as the ``docker`` runtime reaches it.

Which engine (``base_url``, else ``DOCKER_HOST`` through
:func:`spear.config.docker_host`, else the local socket), whether it answers
(:func:`ping`), and :class:`Engine`: the one shared ``APIClient`` of a
runtime, created on first use, with the private thread pool that every
blocking SDK call runs on (the event loop is never blocked) and the Docker
SDK's errors mapped to Spear's.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from ... import errors
from ...config import docker_host
from .usage import detect_cgroups

try:  # the SDK is a hard dependency, but keep `available()` honest without it
    import docker
    import docker.errors as docker_errors
    import requests.exceptions as requests_errors
except ImportError:  # pragma: no cover - exercised only without the SDK
    docker = None  # type: ignore[assignment]
    docker_errors = None  # type: ignore[assignment]
    requests_errors = None  # type: ignore[assignment]

__all__ = ["DEFAULT_URL", "Engine", "connect", "docker", "docker_errors", "engine_url", "ping"]

DEFAULT_URL = "unix:///var/run/docker.sock"


def engine_url(base_url: str | None) -> str:
    """The address of the engine a runtime with this ``base_url`` talks to."""
    return base_url or docker_host() or DEFAULT_URL


def connect(base_url: str | None, timeout: float, **kwargs: Any) -> Any:
    """A new low-level ``APIClient``. Without ``base_url`` the SDK's own
    environment settings apply (``DOCKER_HOST``, and its TLS settings)."""
    if docker is None:
        raise errors.Unavailable("the 'docker' Python package is not installed")
    if base_url:
        where = {"base_url": base_url}
    else:
        where = docker.utils.kwargs_from_env()
        where.setdefault("base_url", DEFAULT_URL)
    return docker.APIClient(version="auto", timeout=timeout, **where, **kwargs)


def ping(base_url: str | None) -> tuple[bool, str]:
    """``(True, "")`` if the engine answers, else ``(False, why)`` (blocking)."""
    if docker is None:
        return False, "the 'docker' Python package is not installed"
    url = engine_url(base_url)
    try:
        api = connect(base_url, 3)
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
                api = connect(self.base_url, 60, max_pool_size=64)
                if self._want_usage and self.url.startswith("unix://"):
                    self.cgroup_version = detect_cgroups(api)
                self._api = api
        return self._api

    def map_error(self, exc: BaseException, what: str) -> errors.SpearError:
        """The Spear error for an SDK or connection failure while doing ``what``."""
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

    def submit(self, fn: Callable, *args: Any, track: bool = False) -> asyncio.Future:
        """Run ``fn(*args)`` on the pool; ``track``: :meth:`settle` waits for it too."""
        ctx = contextvars.copy_context()
        cfut = self._pool.submit(ctx.run, fn, *args)
        if track:
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
