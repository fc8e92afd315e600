"""Small compiled kernels and their pure-Python twins.

Each ``<name>.pyx`` has a ``<name>_py.py`` twin with the same API and the same
results; import them through :mod:`spear.fast`, which picks the compiled one
unless ``SPEAR_NO_EXTENSIONS=1`` or the extension is not built.
"""
