"""The ``docker`` runtime: functions packaged as container images.

This package holds :class:`DockerRuntime` (``runtime.py``, which ties the
rest together: deploy, one-shot and pooled calls, deadlines) and its parts,
each in its own module: the engine connection and the threads its blocking
calls run on (``engine.py``), what a node asks a local engine before it
needs the SDK (``probe.py``: ping, an earlier run's containers), Spear's
labelled containers and their lifecycle (``containers.py``), limits as the
engine applies them and what a failed exit means (``limits.py``), usage
read from cgroups (``usage.py``) and a container's stdio over the engine's
socket (``streams.py``). It may import :mod:`spear.errors`,
:mod:`spear.protocol`, :mod:`spear.config`, :mod:`spear.runtimes.base` and
the Docker SDK, the SDK only through :func:`.engine.sdk`, on first use: a
node that never runs a container never imports it.
"""

from .containers import FUNCTION_LABEL, MANAGED_LABEL, MODE_LABEL, OWNER_LABEL, remove_leftovers
from .engine import DEFAULT_URL
from .runtime import DockerRuntime

__all__ = [
    "DEFAULT_URL", "FUNCTION_LABEL", "MANAGED_LABEL", "MODE_LABEL", "OWNER_LABEL",
    "DockerRuntime", "remove_leftovers",
]
