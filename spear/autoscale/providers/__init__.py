"""Providers: where the autoscaler's nodes come from (``local`` processes,
``docker`` containers, ``kubernetes`` replicas, ``cloud`` machines over Apache
Libcloud). Each implements :class:`.base.Provider`; :func:`.base.load` picks
one by name. Imports only :mod:`spear.errors` and the standard library at
module level; each provider imports its SDK lazily.
"""
