"""Spear Management Service: node registry, resources, functions, scheduling."""
