"""Small compiled kernels and their pure-Python twins.

This package holds the scheduler's scoring loop and the instance pool's slot
kernel; it imports nothing of Spear (the kernels take flat typed arrays).
Each ``<name>.pyx`` has a ``<name>_py.py`` twin with the same API and the same
results; import them through :mod:`spear.fast`, which picks the compiled one
unless ``SPEAR_NO_EXTENSIONS=1`` or the extension is not built.
"""
