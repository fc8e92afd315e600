"""The node side of ``spear.remote``: one stand-alone module, ``spear_runner``.

This directory is the working directory of every function deployed through
:func:`spear.function`; the pooled Python worker imports ``spear_runner``
from it by file path (never through the ``spear`` package, which the
worker's interpreter need not have). ``spear_runner`` needs only the
standard library, ``cloudpickle`` and ``msgspec``; the client imports its
codec from here too, so both ends share one definition of the payloads.
"""
