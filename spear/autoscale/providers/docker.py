"""The ``docker`` provider: each node is a Spearlet container on a Docker Engine.

The image runs ``spear`` as its entrypoint (deploy/docker/Dockerfile builds
one from this checkout); the provider adds ``spearlet --sms ... --name ...``.
Every container carries the label ``spear.autoscaler=<cluster>``, so a new
provider object (after the autoscaler restarts) finds the nodes the old one
started; the Spearlet gets the node labels ``spear.owner=autoscaler`` and
``spear.node-type=<type>``, as with every provider. The docker SDK is imported when the provider is built, and its
blocking calls run in a worker thread.

Provider options: ``cluster`` (default ``spear``), ``sms`` (the SMS address
the containers dial, default the autoscaler's) and ``base_url`` (the engine;
default ``DOCKER_HOST``, else the local socket). Node type options
(``NodeType.options``, over the provider's own):

``image``     the Spearlet image (default ``spear/spearlet:latest``)
``network``   a Docker network, or ``host`` to share the host's (loopback SMS)
``env``       ``K=V,K2=V2`` for the container
``volumes``   ``HOST:CONTAINER[:ro|rw],...`` bind mounts
``listen``    the Spearlet's ROUTER address (default: a free port on the host
              network, ``tcp://0.0.0.0:7701`` on any other)
"""

from __future__ import annotations

import asyncio
import socket
import time

from ... import errors
from ...config import DEFAULT_SMS, docker_host
from .base import NodeHandle, NodeType

LABEL = "spear.autoscaler"
OWNER_LABEL = "spear.owner"
TYPE_LABEL = "spear.node-type"
NAME_LABEL = "spear.node-name"
DEFAULT_IMAGE = "spear/spearlet:latest"


def _pairs(text: str) -> dict[str, str]:
    """``K=V,K2=V2`` as a dict (empty items ignored)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise errors.ConfigError(f"docker provider: {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def _volumes(text: str) -> dict[str, dict[str, str]]:
    """``HOST:CONTAINER[:MODE],...`` in the docker SDK's ``volumes`` form."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[-1] not in ("ro", "rw")):
            raise errors.ConfigError(f"docker provider: bad volume {item!r} (HOST:CONTAINER[:ro|rw])")
        out[parts[0]] = {"bind": parts[1], "mode": parts[2] if len(parts) == 3 else "rw"}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DockerProvider:
    """Starts Spearlets as labelled containers; see the module docstring for options."""

    name = "docker"

    def __init__(self, *, sms: str = DEFAULT_SMS, workdir: str = "",
                 options: dict[str, str] | None = None) -> None:
        """``workdir`` is unused (the engine keeps the state); kept so every provider
        is built with the same arguments."""
        try:
            import docker
        except ImportError:
            raise errors.ConfigError("the docker provider needs the docker SDK "
                                     "(pip install docker)") from None
        self.defaults = dict(options or {})
        self.cluster = self.defaults.pop("cluster", "spear")
        # the address the containers dial: on a Docker network, not the host's loopback
        self.sms = self.defaults.pop("sms", "") or sms
        self._docker = docker
        base_url = self.defaults.pop("base_url", "") or docker_host() or None
        try:
            self._api = docker.DockerClient(base_url=base_url, timeout=60)
        except docker.errors.DockerException as exc:  # no engine at that address
            raise errors.Unavailable(f"docker provider: engine unreachable: {exc}") from None

    def _run(self, node_type: NodeType, name: str):
        opts = {**self.defaults, **node_type.options}
        network = opts.get("network", "")
        listen = opts.get("listen") or (f"tcp://127.0.0.1:{_free_port()}" if network == "host"
                                        else "tcp://0.0.0.0:7701")
        command = ["spearlet", "--sms", self.sms, "--name", name, "--listen", listen,
                   "--labels", f"{OWNER_LABEL}=autoscaler,{TYPE_LABEL}={node_type.name}"]
        if network != "host":
            # other nodes and clients reach the container by its name on that network
            command += ["--advertise", listen.replace("0.0.0.0", name)]
        kwargs = dict(
            image=opts.get("image", DEFAULT_IMAGE), command=command, name=name, hostname=name,
            detach=True, environment=_pairs(opts.get("env", "")),
            volumes=_volumes(opts.get("volumes", "")),
            labels={LABEL: self.cluster, TYPE_LABEL: node_type.name, NAME_LABEL: name},
            nano_cpus=int(node_type.cores * 1e9), mem_limit=f"{node_type.memory_mb}m")
        if network:
            kwargs["network_mode" if network == "host" else "network"] = network
        try:
            return self._api.containers.run(**kwargs)
        except self._docker.errors.ImageNotFound as exc:
            raise errors.Unavailable(f"docker provider: image missing: {exc}") from None
        except self._docker.errors.APIError as exc:
            raise errors.Unavailable(f"docker provider: cannot start {name}: {exc}") from None
        except OSError as exc:  # the engine's socket is gone
            raise errors.Unavailable(f"docker provider: engine unreachable: {exc}") from None

    async def create(self, node_type: NodeType, name: str) -> NodeHandle:
        """Start a container whose Spearlet joins the SMS as ``name``."""
        container = await asyncio.to_thread(self._run, node_type, name)
        return NodeHandle(provider=self.name, node_type=node_type.name, ref=container.id,
                          name=name, created_at=time.time())

    def _remove(self, ref: str) -> None:
        try:
            container = self._api.containers.get(ref)
            # SIGTERM first so the Spearlet leaves the SMS cleanly
            container.stop(timeout=10)
            container.remove(force=True)
        except self._docker.errors.NotFound:
            pass

    async def destroy(self, handle: NodeHandle) -> None:
        """Stop and remove the container; nothing happens if it is already gone."""
        await asyncio.to_thread(self._remove, handle.ref)

    def _list(self) -> list[NodeHandle]:
        found = self._api.containers.list(filters={"label": f"{LABEL}={self.cluster}"})
        out = []
        for c in found:
            labels = c.labels
            out.append(NodeHandle(provider=self.name, node_type=labels.get(TYPE_LABEL, ""),
                                  ref=c.id, name=labels.get(NAME_LABEL, c.name),
                                  created_at=_created(c.attrs.get("Created", ""))))
        return out

    async def list(self) -> list[NodeHandle]:
        """The running containers labelled with this cluster's name."""
        return await asyncio.to_thread(self._list)


def _created(stamp: str) -> float:
    """Docker's RFC 3339 ``Created`` (nanosecond digits) as a Unix time; 0.0 if unreadable."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0
