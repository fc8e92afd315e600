"""The provider interface every autoscaler backend implements."""

from __future__ import annotations

import importlib
from typing import Protocol

import msgspec


class NodeType(msgspec.Struct, frozen=True, kw_only=True):
    """A kind of node a provider can start, as configured."""

    name: str                      # e.g. "small"
    provider: str                  # local | docker | kubernetes | cloud (or a named cloud)
    cores: float = 1.0
    memory_mb: int = 1024
    min_nodes: int = 0
    max_nodes: int = 4
    cost: float = 1.0              # preference order across providers: lower first
    options: dict[str, str] = {}   # provider-specific (image, size, region, ...)


class NodeHandle(msgspec.Struct, frozen=True, kw_only=True):
    """One node a provider started: enough to find it in the SMS and to destroy it."""

    provider: str
    node_type: str
    ref: str                       # the provider's own id (pid, container id, pod name, machine id)
    name: str                      # the Spearlet's --name, which its SMS node id starts with
    created_at: float = 0.0


class Provider(Protocol):
    """Starts and stops Spearlets. Refusals (quota, outage, bad config) raise
    :class:`spear.errors.Unavailable` or :class:`spear.errors.ResourceExhausted`
    with the provider named, so the controller can fall back to the next one."""

    name: str

    async def create(self, node_type: NodeType, name: str) -> NodeHandle:
        """Start one node of ``node_type`` whose Spearlet joins the SMS as ``name``."""
        ...

    async def destroy(self, handle: NodeHandle) -> None:
        """Stop the node (after the controller drained it); idempotent."""
        ...

    async def list(self) -> list[NodeHandle]:
        """The nodes this provider started and still runs (after a restart too)."""
        ...


PROVIDERS = {
    "local": "spear.autoscale.providers.local:LocalProvider",
    "docker": "spear.autoscale.providers.docker:DockerProvider",
    "kubernetes": "spear.autoscale.providers.kubernetes:KubernetesProvider",
    "cloud": "spear.autoscale.providers.cloud:CloudProvider",
}


def load(kind: str):
    """The provider class for ``kind`` (imported only now)."""
    try:
        target = PROVIDERS[kind]
    except KeyError:
        raise ValueError(f"unknown autoscaler provider {kind!r}; one of {', '.join(PROVIDERS)}") from None
    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)
