"""The records a node and a function are made of: what a Spearlet registers
(:class:`NodeInfo`) and what a deploy carries (:class:`FunctionSpec`).

Part of the wire protocol (:mod:`spear.protocol` imports every name here and
is where callers find them), kept apart so the protocol module holds the
messages; the SMS stores these records as they are. The same evolution rule
holds: new fields get defaults; a field's type never changes. This module
imports nothing of Spear.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

#: largest output of a call, and largest payload frame (``protocol.MAX_PAYLOAD``), in MiB
MAX_OUTPUT_MB = 64

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")]
NodeId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}\Z")]
LabelKey = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}\Z")]
LabelValue = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.\-/:]{0,128}\Z")]
LabelMap = Annotated[dict[LabelKey, LabelValue], Meta(max_length=64)]
EnvKey = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")]
Text = Annotated[str, Meta(max_length=4096)]
Arg = Annotated[str, Meta(max_length=65536)]
Runtime = Literal["wasm", "process", "docker"]
NodeState = Literal["ready", "unhealthy", "draining", "gone"]
NonNeg = Annotated[float, Meta(ge=0)]
NonNegInt = Annotated[int, Meta(ge=0)]


class Capacity(Struct, frozen=True, kw_only=True):
    """What a node offers: logical cores, memory and disk in bytes."""

    cores: Annotated[float, Meta(ge=0, le=1e6)] = 0.0
    memory: Annotated[int, Meta(ge=0, le=2**48)] = 0
    disk: Annotated[int, Meta(ge=0, le=2**52)] = 0
    slots: NonNegInt = 0  # concurrent executions the node accepts (0: no limit)


class Usage(Struct, frozen=True, kw_only=True):
    """A node's current usage, sent in every heartbeat (psutil figures)."""

    cpu_percent: NonNeg = 0.0
    memory_used: NonNegInt = 0
    memory_total: NonNegInt = 0
    disk_used: NonNegInt = 0
    disk_total: NonNegInt = 0
    net_rx: NonNegInt = 0
    net_tx: NonNegInt = 0
    load1: NonNeg = 0.0
    running: NonNegInt = 0
    warm: NonNegInt = 0


class NodeInfo(Struct, frozen=True, kw_only=True):
    """A node as the SMS knows it (also the record stored in the SMS store)."""

    node_id: NodeId
    name: Annotated[str, Meta(max_length=256)] = ""
    address: Annotated[str, Meta(max_length=512)] = ""
    labels: LabelMap = {}
    runtimes: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=16)] = []
    unavailable: Annotated[dict[Annotated[str, Meta(max_length=64)],
                                Annotated[str, Meta(max_length=2048)]], Meta(max_length=16)] = {}
    capacity: Capacity = Capacity()
    usage: Usage = Usage()
    state: NodeState = "ready"
    registered_at: float = 0.0
    last_seen: float = 0.0
    public_key: Annotated[str, Meta(max_length=64)] = ""  # z85 CURVE key of the node's ROUTER (empty: open)


class Limits(Struct, frozen=True, kw_only=True):
    """Per-function resource limits; ``None`` means the runtime default."""

    timeout: Annotated[float, Meta(gt=0, le=86400)] | None = None
    memory_mb: Annotated[int, Meta(ge=1, le=1 << 20)] | None = None
    cpu_seconds: Annotated[float, Meta(gt=0)] | None = None
    fuel: Annotated[int, Meta(ge=1)] | None = None
    cpus: Annotated[float, Meta(gt=0, le=1024)] | None = None
    pids: Annotated[int, Meta(ge=1, le=1 << 22)] | None = None
    network: bool = False
    read_only: bool = False
    #: largest output of a call, MiB; None: the node's maximum (at most the payload cap)
    max_output_mb: Annotated[int, Meta(ge=1, le=MAX_OUTPUT_MB)] | None = None


class PoolSettings(Struct, frozen=True, kw_only=True):
    """Warm-instance pool of one function on one node."""

    min_warm: Annotated[int, Meta(ge=0, le=1024)] = 0
    max: Annotated[int, Meta(ge=1, le=4096)] = 8
    idle_ttl: Annotated[float, Meta(gt=0)] = 300.0


class FunctionSpec(Struct, frozen=True, kw_only=True):
    """A deployable function.

    * ``wasm``: ``artifact`` holds .wasm or .wat bytes; ``handler`` names an
      export to call with numeric ``args`` (empty: WASI command ``_start``).
    * ``process``: ``command`` is an argv run one-shot, or ``handler`` is a
      Python ``module:function``; ``mode="pooled"`` keeps a worker up. With
      an ``artifact`` (a code bundle, see :mod:`spear.bundles`) the handler
      runs in it, in an environment with ``requirements`` on ``python``.
    * ``docker``: ``image`` plus ``command``; ``mode="pooled"`` keeps a
      container up and execs into it.
    """

    name: Name
    runtime: Runtime
    artifact: bytes | None = None
    handler: Annotated[str, Meta(max_length=512)] = ""
    command: Annotated[list[Arg], Meta(max_length=1024)] = []
    image: Annotated[str, Meta(max_length=512)] = ""
    mode: Literal["oneshot", "pooled"] = "oneshot"
    env: Annotated[dict[EnvKey, Annotated[str, Meta(max_length=65536)]], Meta(max_length=256)] = {}
    workdir: Text = ""
    limits: Limits = Limits()
    pool: PoolSettings = PoolSettings()
    labels: LabelMap = {}
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    idempotent: bool = False
    grants: Annotated[list[Text], Meta(max_length=64)] = []
    #: names in ``env`` whose values are secret: passed to the function, never
    #: returned by the SMS or the gateway (to any role) and never logged
    secret_env: Annotated[list[EnvKey], Meta(max_length=256)] = []
    #: SHA-256 (hex) of ``artifact``, checked against the bytes; sent without
    #: the bytes, it names an artifact the SMS already stores
    artifact_sha256: Annotated[str, Meta(pattern=r"^([0-9a-f]{64})?\Z")] = ""
    requirements: Annotated[list[Annotated[str, Meta(max_length=512)]], Meta(max_length=256)] = []
    python: Annotated[str, Meta(pattern=r"^(3\.\d{1,2})?\Z")] = ""  # major.minor, "": the node's
