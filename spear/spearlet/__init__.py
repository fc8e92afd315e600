"""Spearlet: the execution node (runtimes, instance pools, direct invocation)."""
