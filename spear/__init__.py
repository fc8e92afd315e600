"""Spear: a distributed serverless platform on a ZeroMQ mesh.

Public entry points: :class:`Client` (blocking), :class:`AsyncClient`, and
the exception tree in :mod:`spear.errors`.
"""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .client import AsyncClient, Client  # noqa: E402

__all__ = ["AsyncClient", "Client", "errors", "__version__"]
