"""Spear: a distributed serverless platform on a ZeroMQ mesh.

This package's face holds the public entry points, :class:`Client`
(blocking) and :class:`AsyncClient`, and the exception tree
:mod:`spear.errors`; it imports the client lazily, so importing any part of
Spear (``spear.fast``, ``spear.protocol``) does not pay for the client's
mesh. Below it, lowest floor first: ``errors``; ``protocol``, ``config``,
``ids``; ``roles`` and the small shared modules; the parts ``mesh``,
``store``, ``runtimes``, ``_fast``/``fast``, ``metrics``; the services
``sms``, ``spearlet`` and ``client``, ``gateway``; ``cli`` on top. An import
only goes down a floor (``tests/test_layout.py`` checks it).
"""

__version__ = "0.1.0"

from . import errors  # noqa: E402

__all__ = ["AsyncClient", "Client", "errors", "__version__"]


def __getattr__(name: str):
    # the client pulls in pyzmq and the mesh: only when it is asked for
    if name in ("AsyncClient", "Client"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'spear' has no attribute {name!r}")
