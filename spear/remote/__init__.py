"""Call Spear functions like Python: ``@spear.function``, futures, ``map``.

The client side of running plain Python functions on a cluster: ``api``
(:func:`connect`, :func:`function`, :func:`get`, :func:`wait`),
``functions`` (:class:`RemoteFunction`: pickling the function and naming
its deployment), ``shipping`` (the code bundle and requirements every
function ships with), ``futures`` (:class:`RemoteFuture` and reading the
replies), ``connection`` (one background asyncio loop driving an
:class:`~spear.client.AsyncClient`). ``runner/`` is the node side, a
stand-alone module shipped in every bundle. It may import ``errors``,
``protocol``, ``config``, ``bundles``, ``specs`` and ``client``, never a
service.
"""

from .api import connect, function, get, wait
from .functions import RemoteFunction
from .futures import RemoteFuture

__all__ = ["RemoteFunction", "RemoteFuture", "connect", "function", "get", "wait"]
