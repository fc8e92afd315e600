"""The HTTP gateway: REST + OpenAPI + Swagger UI + admin page, an ordinary SMS client.

It reaches the SMS and the Spearlets only through :class:`spear.client.AsyncClient`
and decides who may do what with :func:`spear.roles.allowed`, the table the
daemons apply to CURVE keys; it may import :mod:`spear.client`,
:mod:`spear.protocol`, :mod:`spear.errors`, :mod:`spear.config`,
:mod:`spear.roles`, :mod:`spear.metrics`, :mod:`spear.fsmodes`,
:mod:`spear.tracing`, :mod:`spear.logs` and :mod:`spear.mesh.security` (for its warning about an open
SMS link), never the SMS, the Spearlet or the runtimes. Layout:

* :mod:`.http` - a small ASGI toolkit (requests, responses, SSE, negotiation)
* :mod:`.models` - the HTTP types, built from :mod:`spear.protocol`'s Structs
* :mod:`.routes` - one declaration per route (the message it stands for, query,
  body, replies) + handlers
* :mod:`.openapi` - the OpenAPI 3.1 document generated from those declarations
* :mod:`.app` - :class:`Gateway`, the ASGI app: dispatch, bearer auth, errors, pages
* :mod:`.guard` - the front door (Host and cross-site checks) and the per-key
  stream limit; :mod:`.connections` - header deadlines and pending-connection caps
* :mod:`.live` - live figures, nodes' usage over time and captured logs
* :mod:`.settings` - the resolved settings; :mod:`.server` - uvicorn, threads,
  subprocesses (``spear gateway``
  is :mod:`spear.cli.gateway`)
* ``static/`` - the admin page (views chosen by the URL's hash; actions shown as
  ``/v1/whoami`` allows) and the Swagger UI initializer (Swagger UI itself
  comes from the ``swagger-ui-bundle-v2`` package: nothing is loaded from a CDN)
"""

from .app import Gateway
from .server import GatewayThread, command, serve, spawn, wait_healthy
from .settings import Settings, from_config

__all__ = ["Gateway", "GatewayThread", "Settings", "command", "from_config", "serve", "spawn",
           "wait_healthy"]
