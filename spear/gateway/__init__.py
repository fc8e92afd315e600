"""The HTTP gateway: REST + OpenAPI + Swagger UI + admin page, an ordinary SMS client.

Layout:

* :mod:`.http` - a small ASGI toolkit (requests, responses, SSE, negotiation)
* :mod:`.models` - the HTTP types, built from :mod:`spear.protocol`'s Structs
* :mod:`.routes` - one declaration per route (auth op, query, body, replies) + handlers
* :mod:`.openapi` - the OpenAPI 3.1 document generated from those declarations
* :mod:`.app` - :class:`Gateway`, the ASGI app: dispatch, bearer auth, errors, pages
* :mod:`.events` / :mod:`.live` - SMS event subscriptions; live figures and captured logs
* :mod:`.server` / :mod:`.cli` - uvicorn, threads, subprocesses; ``spear gateway``
* ``static/`` - the admin page and the Swagger UI initializer (Swagger UI itself
  comes from the ``swagger-ui-bundle-v2`` package: nothing is loaded from a CDN)
"""

from .app import Gateway
from .server import GatewayThread, command, serve, spawn, wait_healthy
from .settings import GatewayConfig, Settings, from_config

__all__ = ["Gateway", "GatewayConfig", "GatewayThread", "Settings", "command", "from_config",
           "serve", "spawn", "wait_healthy"]
