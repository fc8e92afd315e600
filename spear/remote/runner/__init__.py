"""The node side of ``spear.remote``: one stand-alone module, ``spear_runner``.

Its source travels in every function's code bundle as ``_spear_runner.py``
(see :mod:`spear.remote.shipping`); the pooled Python worker on the node
imports it from the unpacked bundle, in an environment built from the
function's requirements, never through the ``spear`` package, which the
node's environment does not have. ``spear_runner`` needs only the standard
library, ``cloudpickle`` and ``msgspec``; the client imports its codec from
here too, so both ends share one definition of the payloads.
"""
