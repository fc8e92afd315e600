"""The ``cloud`` provider: machines from one or more clouds over Apache Libcloud.

Several clouds may be configured at once, each with a ``cost``; a node is
asked from the cheapest cloud first, and a refusal (libcloud raises on a
quota, an outage, a bad size) moves on to the next. Each machine boots a
Spearlet through cloud-init user data (``ex_userdata``, or ``ex_customdata``
on Azure) that installs spear and joins the SMS with a CURVE key pair made
for that node alone: its secret key travels only in the user data, its
public key is written to ``keys_dir``, which the SMS's ``[security]
node_keys_dir`` names so a running SMS admits it (or, with ``node_key``,
every machine shares one key the SMS already lists).

The clouds are given as a list (``clouds=``) or, from ``[autoscaler]
options``, as ``clouds_file``: a TOML file of ``[[clouds]]`` tables. A cloud
has ``name``, ``driver`` (a libcloud provider name such as
``ec2`` or ``dummy``, or ``module:Class`` for a driver of your own), ``key``,
``secret``, ``cost`` (lower first), ``args`` (more driver constructor
arguments, e.g. ``region``) and ``create_args`` (more ``create_node``
arguments, e.g. Azure's ``ex_resource_group``).

Provider options: ``cluster`` (default ``spear``), ``sms`` (the SMS address
the machines dial, default the autoscaler's), ``clouds_file``,
``sms_key`` (the SMS's public key file; empty: CURVE off), ``keys_dir``
(default ``<workdir>/node-keys``) and ``node_key`` (see above).
Node type options: ``size``, ``image``, ``location`` (id or name; a
``CLOUD.size`` key overrides for one cloud), ``clouds`` (a comma-separated
subset to use), ``install`` (the pip requirement, default ``spear``).
Machines are named ``<cluster>--<node type>--<node name>``, which is how
:meth:`list` finds them after a restart (drivers that choose their own names,
like libcloud's dummy, make machines :meth:`list` cannot claim).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ... import errors
from ...config import DEFAULT_SMS
from .base import NodeHandle, NodeType

log = logging.getLogger("spear.autoscale.cloud")
SEP = "--"


def _driver_class(driver: str):
    """A libcloud compute driver class by provider name or ``module:Class``."""
    try:
        from libcloud.compute.providers import get_driver
    except ImportError:
        raise errors.ConfigError("the cloud provider needs Apache Libcloud "
                                 "(pip install 'spear[autoscale]')") from None
    if ":" in driver:
        mod, _, attr = driver.partition(":")
        return getattr(importlib.import_module(mod), attr)
    try:
        return get_driver(driver)
    except AttributeError:
        raise errors.ConfigError(f"cloud provider: libcloud has no driver {driver!r}") from None


def node_keys(name: str) -> tuple[str, str]:
    """A fresh CURVE key pair for node ``name``: (public, secret) certificate file texts."""
    import zmq.auth

    with tempfile.TemporaryDirectory() as d:
        public_file, secret_file = zmq.auth.create_certificates(d, name)
        return Path(public_file).read_text(), Path(secret_file).read_text()


def user_data(*, sms: str, name: str, node_type: str, secret_cert: str, sms_cert: str,
              install: str = "spear") -> str:
    """The cloud-init document that installs spear and starts the Spearlet as ``name``."""
    labels = {"spear.owner": "autoscaler", "spear.node-type": node_type}
    # JSON strings are valid TOML basic strings: values need no quoting rules of our own
    toml = (f"[spearlet]\nsms = {json.dumps(sms)}\nname = {json.dumps(name)}\n"
            'listen = "tcp://0.0.0.0:7701"\nlabels = { '
            + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in labels.items()) + " }\n")
    files = []
    if secret_cert:
        toml += ('[security]\nkey = "/etc/spear/keys/node.key_secret"\n'
                 'sms_key = "/etc/spear/keys/sms.key"\n')
        files += [("/etc/spear/keys/node.key_secret", "0600", secret_cert),
                  ("/etc/spear/keys/sms.key", "0644", sms_cert)]
    files.append(("/etc/spear/spear.toml", "0644", toml))
    lines = ["#cloud-config", "write_files:"]
    for path, mode, content in files:
        # JSON strings are valid YAML scalars: no escaping rules of our own
        lines += [f"  - path: {path}", f"    permissions: '{mode}'",
                  f"    content: {json.dumps(content)}"]
    lines += ["runcmd:",
              f"  - [python3, -m, pip, install, --break-system-packages, {json.dumps(install)}]",
              "  - [systemd-run, --unit=spearlet, --property=Restart=always, --working-directory=/var/lib,"
              " spear, spearlet, --config, /etc/spear/spear.toml]"]
    return "\n".join(lines) + "\n"


def _clouds_file(path: str) -> list[dict[str, Any]]:
    """The ``[[clouds]]`` tables of a TOML file ([] for no file)."""
    if not path:
        return []
    import tomllib

    try:
        with open(path, "rb") as f:
            return list(tomllib.load(f).get("clouds", []))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise errors.ConfigError(f"cloud provider: cannot read clouds_file {path}: {exc}") from None


def _read(path: str, what: str) -> str:
    """A key file's text ("" for no path)."""
    try:
        return Path(path).read_text() if path else ""
    except OSError as exc:
        raise errors.ConfigError(f"cloud provider: cannot read {what} {path}: {exc}") from None


def _pick(items: list, wanted: str, what: str, cloud: str):
    for item in items:
        if wanted in (str(item.id), item.name):
            return item
    raise errors.InvalidArgument(f"cloud {cloud}: no {what} {wanted!r}")


class _Cloud:
    """One configured cloud: its driver (built on first use) and settings."""

    def __init__(self, spec: dict[str, Any]) -> None:
        try:
            self.name = str(spec["name"])
            self.driver_name = str(spec["driver"])
        except KeyError as exc:
            raise errors.ConfigError(f"cloud provider: a cloud needs {exc.args[0]!r}") from None
        self.key = spec.get("key", "")
        self.secret = spec.get("secret", "")
        self.cost = float(spec.get("cost", 1.0))
        self.args = dict(spec.get("args", {}))
        self.create_args = dict(spec.get("create_args", {}))
        self._driver = None

    @property
    def driver(self):
        if self._driver is None:
            cls = _driver_class(self.driver_name)
            creds = (self.key, self.secret) if self.secret else (self.key,)
            self._driver = cls(*creds, **self.args)
        return self._driver


class CloudProvider:
    """Machines from the cheapest cloud that accepts; see the module docstring."""

    name = "cloud"

    def __init__(self, *, sms: str = DEFAULT_SMS, workdir: str = "",
                 options: dict[str, str] | None = None,
                 clouds: list[dict[str, Any]] | None = None) -> None:
        opts = dict(options or {})
        self.cluster = opts.pop("cluster", "spear")
        clouds = clouds or _clouds_file(opts.pop("clouds_file", ""))
        if not clouds:
            raise errors.ConfigError("cloud provider: no clouds configured (options.clouds_file)")
        sms_key, node_key = opts.pop("sms_key", ""), opts.pop("node_key", "")
        keys_dir = opts.pop("keys_dir", "") or (str(Path(workdir) / "node-keys") if workdir else "")
        # the address the machines dial: the autoscaler's own is often loopback
        self.sms = opts.pop("sms", "") or sms
        self.clouds = sorted((_Cloud(c) for c in clouds), key=lambda c: c.cost)
        #: the SMS's public key file, copied into each node (empty: CURVE off)
        self.sms_cert = _read(sms_key, "sms_key")
        self.keys_dir = Path(keys_dir) if keys_dir else None
        #: one secret key file every machine shares (a key the SMS already lists),
        #: instead of a key pair per node
        self.node_key = _read(node_key, "node_key")
        if self.node_key and not self.sms_cert:
            raise errors.ConfigError("cloud provider: node_key needs sms_key (the SMS's public key)")
        self.defaults = opts

    def _candidates(self, opts: dict[str, str]) -> list[_Cloud]:
        wanted = [c.strip() for c in opts.get("clouds", "").split(",") if c.strip()]
        return [c for c in self.clouds if not wanted or c.name in wanted]

    def _create_on(self, cloud: _Cloud, name: str, opts: dict[str, str], data: str):
        """Ask ``cloud`` for one machine; whatever the driver raises is its refusal."""
        def opt(key: str) -> str:
            return opts.get(f"{cloud.name}.{key}", opts.get(key, ""))

        d = cloud.driver
        kwargs: dict[str, Any] = dict(cloud.create_args)
        kwargs["name"] = name
        kwargs["size"] = _pick(d.list_sizes(), opt("size"), "size", cloud.name)
        kwargs["image"] = _pick(d.list_images(), opt("image"), "image", cloud.name)
        params = inspect.signature(d.create_node).parameters
        if opt("location"):
            kwargs["location"] = _pick(d.list_locations(), opt("location"), "location", cloud.name)
        for key in ("ex_userdata", "ex_customdata"):
            if key in params:
                kwargs[key] = data
                break
        else:
            log.warning("cloud %s (%s) takes no user data: node %s will not start a Spearlet "
                        "by itself", cloud.name, cloud.driver_name, name)
        accepted = {k: v for k, v in kwargs.items() if k in params or _takes_any(params)}
        return d.create_node(**accepted)

    def _create(self, node_type: NodeType, name: str) -> NodeHandle:
        opts = {**self.defaults, **node_type.options}
        if self.node_key or not self.sms_cert:
            public, secret = "", self.node_key
        else:
            public, secret = node_keys(name)
        data = user_data(sms=self.sms, name=name, node_type=node_type.name, secret_cert=secret,
                         sms_cert=self.sms_cert, install=opts.get("install", "spear"))
        machine = SEP.join((self.cluster, node_type.name, name))
        refusals = []
        for cloud in self._candidates(opts):
            try:
                node = self._create_on(cloud, machine, opts, data)
            except errors.SpearError as exc:
                refusals.append(f"{cloud.name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - libcloud raises many types for a refusal
                refusals.append(f"{cloud.name}: {type(exc).__name__}: {exc}")
            else:
                if public and self.keys_dir is not None:
                    self._keep_public(name, public)
                return NodeHandle(provider=self.name, node_type=node_type.name,
                                  ref=f"{cloud.name}/{node.id}", name=name, created_at=time.time())
            log.warning("cloud %s refused node %s: %s", cloud.name, name, refusals[-1])
        raise errors.Unavailable(f"cloud provider: every cloud refused node {name}: "
                                 + "; ".join(refusals or ["no cloud matches"]))

    def _keep_public(self, name: str, public_cert: str) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        path = self.keys_dir / f"{name}.key"
        path.write_text(public_cert)
        os.chmod(path, 0o644)

    async def create(self, node_type: NodeType, name: str) -> NodeHandle:
        """Start a machine on the cheapest cloud that accepts it."""
        return await asyncio.to_thread(self._create, node_type, name)

    def _cloud(self, name: str) -> _Cloud:
        for cloud in self.clouds:
            if cloud.name == name:
                return cloud
        raise errors.NotFound(f"cloud provider: no cloud {name!r} configured")

    def _destroy(self, handle: NodeHandle) -> None:
        cloud_name, _, node_id = handle.ref.partition("/")
        driver = self._cloud(cloud_name).driver
        for node in driver.list_nodes():
            if str(node.id) == node_id:
                driver.destroy_node(node)
        if self.keys_dir is not None:
            (self.keys_dir / f"{handle.name}.key").unlink(missing_ok=True)

    async def destroy(self, handle: NodeHandle) -> None:
        """Destroy the machine (nothing happens if it is gone) and forget its key."""
        await asyncio.to_thread(self._destroy, handle)

    def _list(self) -> list[NodeHandle]:
        prefix = f"{self.cluster}{SEP}"
        out = []
        for cloud in self.clouds:
            try:
                nodes = cloud.driver.list_nodes()
            except Exception as exc:  # noqa: BLE001 - one cloud's outage hides only its nodes
                log.warning("cloud %s: cannot list nodes: %s", cloud.name, exc)
                continue
            for node in nodes:
                type_name, sep, name = node.name[len(prefix):].partition(SEP)
                if node.name.startswith(prefix) and sep and str(node.state).lower() != "terminated":
                    created = node.created_at.timestamp() if node.created_at else 0.0
                    out.append(NodeHandle(provider=self.name, node_type=type_name, name=name,
                                          ref=f"{cloud.name}/{node.id}", created_at=created))
        return out

    async def list(self) -> list[NodeHandle]:
        """This cluster's machines on every cloud that answers."""
        return await asyncio.to_thread(self._list)


def _takes_any(params) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
