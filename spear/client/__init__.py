"""Client library: :class:`AsyncClient` (asyncio) and :class:`Client` (blocking).

Both speak the same protocol and share every public method through
:class:`~spear.client.api.Api` (``api``); ``aio`` holds the asyncio transport,
``blocking`` the blocking one, whose calls borrow sockets from a pool so
that threads may share one client. Every call has a timeout and raises a typed
:mod:`spear.errors` exception; ``node=ADDR`` on a call talks to that Spearlet
directly instead of going through the SMS. It may import ``errors``,
``protocol``, ``config``, ``tracing`` (checking a caller's W3C context) and ``mesh``, never
a service.
"""

from .aio import AsyncClient
from .api import ExecutionResult
from .blocking import Client

__all__ = ["AsyncClient", "Client", "ExecutionResult"]
