"""ZeroMQ transport: loop-driven endpoints, the ROUTER server, the DEALER peer, CURVE/ZAP.

:mod:`.endpoint` owns a socket on the event loop (framing, batching, send
limits); :mod:`.router` decodes, authorizes (:func:`spear.roles.allowed`) and
dispatches requests; :mod:`.dealer` matches replies to requests;
:mod:`.security` holds the CURVE keys and the ZAP handler. The mesh knows
messages, not services: it may import :mod:`spear.protocol`,
:mod:`spear.errors`, :mod:`spear.config`, :mod:`spear.ids`, :mod:`spear.roles`
and :mod:`spear.fsmodes`, never the SMS, the Spearlet, the gateway, the CLI,
the runtimes or the store.
"""

from .dealer import DealerPeer
from .endpoint import Endpoint, context
from .router import RouterServer

__all__ = ["DealerPeer", "Endpoint", "RouterServer", "context"]
