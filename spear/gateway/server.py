"""Running the gateway: serving in the foreground, a thread or a subprocess.

* :func:`serve` - the ``spear gateway`` daemon (uvicorn on uvloop + httptools).
* :class:`GatewayThread` - in-process, for embedding and tests.
* :func:`spawn` + :func:`wait_healthy` - a ``python -m spear.gateway``
  subprocess, the way :class:`spear.cluster.Cluster` starts its daemons.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


from .. import errors
from .settings import Settings


def _uvicorn_config(app, settings: Settings):
    try:
        import uvicorn
    except ImportError:  # pragma: no cover
        raise errors.Unavailable("the gateway needs uvicorn: pip install uvicorn httptools") from None
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover
        raise errors.Unavailable("the gateway needs httptools: pip install httptools") from None
    from .connections import protocol_class

    g = settings.gateway
    # header deadline and a cap on connections that have not sent a request
    http = protocol_class(header_timeout=g.header_timeout, max_pending=g.max_pending)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, loop=loop, http=http, lifespan="on",
        log_config=None,  # logging is the CLI's (spear.logs)
        access_log=False, server_header=False, proxy_headers=False,
        timeout_graceful_shutdown=2,  # SSE streams never end by themselves
        limit_concurrency=g.max_connections, backlog=1024, ws="none",
    )


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its signal capture: :func:`serve` owns the signals, so a
        SIGTERM ends the daemon with 0 like the SMS and spearlets (uvicorn re-raises
        the signal, which exits 143)."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Server


async def _serve(server) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if server.should_exit:  # a second signal: stop waiting for open streams
            server.force_exit = True
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
            pass
    await server.serve()


def serve(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; returns an exit code (3: could not start)."""
    from .app import Gateway

    server = _server_class()(_uvicorn_config(Gateway(settings), settings))
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_serve(server))
    else:
        uvloop.run(_serve(server))
    return 0 if server.started else 3


class GatewayThread:
    """The gateway served from a background thread of this process.

    ``port=0`` in the settings picks a free port; :attr:`url` tells which.
    """

    def __init__(self, settings: Settings) -> None:
        from .app import Gateway

        self.app = Gateway(settings)
        self.server = _server_class()(_uvicorn_config(self.app, settings))
        self.thread = threading.Thread(target=self._run, name="spear-gateway", daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self, timeout: float = 10.0) -> "GatewayThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise errors.Unavailable("the gateway thread did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> "GatewayThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def command(sms: str, http: str, *, config: str | None = None, log_level: str | None = None,
            extra: list[str] | None = None) -> list[str]:
    """The argv of a gateway daemon (``python -m spear.gateway``)."""
    cmd = [sys.executable, "-m", "spear.gateway"]
    if log_level:
        cmd += ["--log-level", log_level]
    cmd += ["--sms", sms, "--http", http]
    if config:
        cmd += ["--config", config]
    return cmd + list(extra or ())


def spawn(sms: str, http: str, *, config: str | None = None, log_level: str | None = None,
          extra: list[str] | None = None, env: dict | None = None, stdout=None,
          stderr=None) -> subprocess.Popen:
    """Start a gateway daemon in its own session (kill it with its process group)."""
    return subprocess.Popen(command(sms, http, config=config, log_level=log_level, extra=extra),
                            env=env, stdout=stdout, stderr=stderr, start_new_session=True)


def wait_healthy(url: str, *, timeout: float = 20.0, proc: subprocess.Popen | None = None,
                 need_sms: bool = True) -> None:
    """Poll ``url``/healthz until it answers 200 (or 503 when ``need_sms`` is False)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise errors.Unavailable(f"gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            if exc.code == 503 and not need_sms:
                return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise errors.DeadlineExceeded(f"gateway at {url} not healthy after {timeout:g}s ({last})")
