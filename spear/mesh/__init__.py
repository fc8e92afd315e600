"""ZeroMQ transport: loop-driven endpoints, the ROUTER server and the DEALER peer."""

from .dealer import DealerPeer
from .endpoint import Endpoint, context
from .router import RouterServer

__all__ = ["DealerPeer", "Endpoint", "RouterServer", "context"]
