"""Connection limits below the ASGI app: slow clients cannot starve the others.

uvicorn's own protocol gives a new connection all the time it likes to send
its headers, and counts it against ``limit_concurrency`` meanwhile, so a few
thousand connections that never finish a request make everyone else get
503. :func:`protocol_class` wraps uvicorn's httptools protocol with two rules:

* a connection has ``header_timeout`` seconds to deliver a request's headers,
  counted from when it opened or its previous response ended; then it is
  closed;
* at most ``max_pending`` connections may be in that state (waiting for
  headers, or idle between requests) at once. A new one beyond that closes
  the *oldest* such connection, so a flood evicts its own connections and a
  client that sends its request promptly is always served.

The request body has its own deadline (``body_timeout``), enforced where the
app reads it (:meth:`spear.gateway.http.Request.read_body`).
"""

from __future__ import annotations

import collections


def protocol_class(*, header_timeout: float, max_pending: int):
    """A uvicorn HTTP protocol class with the rules above (one pending set per class)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    # one set per server: every protocol instance of this class belongs to it
    pending: collections.OrderedDict = collections.OrderedDict()

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a header deadline and a pending cap."""

        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_request()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._await_request()  # a pipelined request's headers, before its turn

        def on_headers_complete(self) -> None:
            self._request_arrived()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._await_request()  # idle keep-alive: the next request's clock starts now

        def connection_lost(self, exc) -> None:
            self._request_arrived()
            super().connection_lost(exc)

        def _await_request(self) -> None:
            if self in pending:
                return
            pending[self] = None
            self._deadline = self.loop.call_later(header_timeout, self._too_slow)
            while len(pending) > max_pending:
                oldest, _ = pending.popitem(last=False)
                oldest._drop()

        def _request_arrived(self) -> None:
            pending.pop(self, None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self in pending:
                self._drop()

        def _drop(self) -> None:
            self._request_arrived()
            if not self.transport.is_closing():
                self.transport.close()

    GuardedHttpToolsProtocol.pending = pending
    return GuardedHttpToolsProtocol
