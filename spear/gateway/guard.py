"""The gateway's front door: the one check every HTTP request passes first.

:meth:`Guard.check` looks at a request's headers before anything else
happens (no route, no body, no SMS call) and refuses:

* a ``Host`` that is not one of ``[gateway] allowed_hosts`` (any port): a page
  on ``evil.example`` that re-points its name at 127.0.0.1 (DNS rebinding)
  still sends ``Host: evil.example``, so it gets 400;
* a write (any method but GET, HEAD, OPTIONS) that a browser says comes from
  another site: an ``Origin`` other than the gateway's own or one of
  ``[gateway] allowed_origins``, or ``Sec-Fetch-Site`` ``cross-site`` /
  ``same-site`` without such an origin. That gets 403, so a page the user
  visits cannot deploy or run functions through a gateway on loopback.

Requests without ``Origin`` and ``Sec-Fetch-Site`` are not from a browser
page (curl, the CLI, scripts): browsers send one or both on every write and
pages cannot forge them.

:class:`SubscriberLimit` bounds the open streams (events and live figures)
per key: a bearer token, or the client's address on an open gateway, so one
viewer cannot hold every slot.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from .. import errors
from .http import HTTPError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Sec-Fetch-Site values that say the request is the gateway's own page or typed by the user
_SAME = frozenset({"same-origin", "none"})


def split_host(value: str) -> tuple[str, str] | None:
    """``name[:port]`` or ``[v6][:port]`` -> (lower-case name, port); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        name, sep, port = value.rpartition(":")
        if not sep:
            name, port = value, ""
        elif not port:
            return None
    if port and not (port.isdigit() and len(port) <= 5):
        return None
    if not name or any(c in name for c in " \t/\\@?#,"):
        return None
    return name, port


class Guard:
    """Host and cross-site-write checks; :meth:`check` is the only entry."""

    def __init__(self, allowed_hosts: Iterable[str], allowed_origins: Iterable[str] = ()) -> None:
        hosts = [h.lower() for h in allowed_hosts]
        self.any_host = "*" in hosts
        self.hosts = frozenset(h for h in hosts if not h.startswith("*"))
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))
        self.origins = frozenset(o.lower().rstrip("/") for o in allowed_origins)

    def host_allowed(self, name: str) -> bool:
        return self.any_host or name in self.hosts or (
            bool(self.suffixes) and name.endswith(self.suffixes))

    def check(self, method: str, headers: Iterable[tuple[bytes, bytes]]) -> HTTPError | None:
        """The refusal for this request, or None when it may go on."""
        host = origin = site = None
        for k, v in headers:
            if k == b"host":
                if host is not None:
                    return HTTPError(400, "INVALID_ARGUMENT", "more than one Host header")
                host = v.decode("latin-1")
            elif k == b"origin":
                origin = v.decode("latin-1").strip().lower()
            elif k == b"sec-fetch-site":
                site = v.decode("latin-1").strip().lower()
        parsed = split_host(host) if host is not None else None
        if parsed is None or not self.host_allowed(parsed[0]):
            shown = "no Host header" if host is None else f"Host {host[:80]!r}"
            return HTTPError(400, "INVALID_ARGUMENT",
                             f"{shown} is not one this gateway serves (see [gateway] allowed_hosts)")
        if method in SAFE_METHODS:
            return None
        if origin is not None:
            if origin in self.origins or _same_origin(origin, host):
                return None
            return HTTPError(403, "PERMISSION_DENIED",
                             f"cross-site write refused: Origin {origin[:80]!r} is not this gateway's "
                             "(see [gateway] allowed_origins)")
        if site is not None and site not in _SAME:
            return HTTPError(403, "PERMISSION_DENIED",
                             f"cross-site write refused (Sec-Fetch-Site: {site[:40]}) without an allowed "
                             "Origin")
        return None


def _same_origin(origin: str, host: str) -> bool:
    """Is ``origin`` (scheme://authority) the gateway as the request addressed it?"""
    scheme, sep, authority = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and authority == host.strip().lower()


class SubscriberLimit:
    """Open streams per key, at most ``per_key`` each; :meth:`take` is the only way in."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: dict[str, int] = {}

    @staticmethod
    def key_of(token: str, client: str) -> str:
        """A bearer token's key (hashed: keys are logged and kept), else the client address."""
        if token:
            return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        return "client:" + client

    def count(self, key: str) -> int:
        return self._open.get(key, 0)

    def take(self, key: str):
        """A release callable for one more stream of ``key``; ResourceExhausted when full."""
        n = self._open.get(key, 0)
        if n >= self.per_key:
            raise errors.ResourceExhausted(
                f"this client already has {n} open event streams (the limit per bearer token or "
                "client, [gateway] max_subscriptions_per_key); close one first")
        self._open[key] = n + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._open.get(key, 1) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)
        return release
