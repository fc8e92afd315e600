"""What a node asks a local engine before any function needs it: is it up,
and which containers did an earlier run of this node leave.

Plain HTTP/1.1 over the engine's UNIX socket with the standard library, so
a node can start, offer (or refuse) the ``docker`` runtime and clean up
after a crash without importing the Docker SDK, which costs a fifth of a
second and several megabytes; the SDK is imported when a docker function
is first deployed. An engine reached any other way (TCP, TLS settings from
the environment) is asked through the SDK: :func:`local_socket` says which.
"""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote

__all__ = ["EngineHTTPError", "containers", "local_socket", "ping", "remove_container"]

#: the answer of an engine that is up (``GET /_ping``)
_PING_OK = b"OK"


class EngineHTTPError(OSError):
    """The engine answered with an unexpected HTTP status."""

    def __init__(self, status: int, body: bytes, what: str) -> None:
        text = body[:200].decode(errors="replace").strip()
        try:  # the engine's errors are {"message": "..."}
            text = json.loads(body).get("message", text)
        except (ValueError, AttributeError):
            pass
        super().__init__(f"{what}: HTTP {status}: {text}")
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP connection whose transport is a UNIX stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def local_socket(url: str) -> str | None:
    """The socket path of a ``unix://`` engine URL, else None (ask the SDK)."""
    if url.startswith("unix://"):
        return url[len("unix://"):] or None
    return None


def _request(path: str, method: str, target: str, timeout: float) -> tuple[int, bytes]:
    conn = _UnixConnection(path, timeout)
    try:
        conn.request(method, target, headers={"Host": "docker"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ping(path: str, timeout: float = 3.0) -> None:
    """Return if the engine on socket ``path`` answers ``GET /_ping``; raise OSError otherwise."""
    status, body = _request(path, "GET", "/_ping", timeout)
    if status != 200 or body.strip() != _PING_OK:
        raise EngineHTTPError(status, body, "GET /_ping")


def containers(path: str, labels: list[str], timeout: float = 30.0) -> list[dict]:
    """Every container (running or not) that carries all of ``labels`` (``k=v``)."""
    filters = quote(json.dumps({"label": labels}))
    status, body = _request(path, "GET", f"/containers/json?all=1&filters={filters}", timeout)
    if status != 200:
        raise EngineHTTPError(status, body, "listing containers")
    return json.loads(body)


def remove_container(path: str, cid: str, timeout: float = 30.0) -> None:
    """Force-remove container ``cid``; one that is already gone is fine."""
    status, body = _request(path, "DELETE", f"/containers/{quote(cid)}?force=1", timeout)
    if status not in (200, 204, 404) and b"already in progress" not in body:
        raise EngineHTTPError(status, body, f"removing container {cid[:12]}")
