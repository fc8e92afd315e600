"""The configuration's sections: one frozen Struct per TOML section, with its
keys, defaults and bounds. :mod:`spear.config` loads and layers them; this
module reads nothing (no file, no environment) and imports only msgspec and
:mod:`spear.errors`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

Seconds = Annotated[float, Meta(gt=0, le=86400)]
Address = Annotated[str, Meta(min_length=1, max_length=512)]
DEFAULT_SMS = "tcp://127.0.0.1:7700"
#: Prometheus /metrics port: -1 off, 0 any free port (logged), else that port
MetricsPort = Annotated[int, Meta(ge=-1, le=65535)]
#: keys that take a [global] key's value when left empty in every layer; set in
#: any layer, the more specific key wins (resolved in Config.__post_init__)
INHERITED: dict[str, str] = {"spearlet.sms": "global.sms", "gateway.sms": "global.sms"}
#: an absolute host directory, optionally marked ":rw" (or ":ro", the default)
HostRoot = Annotated[str, Meta(pattern=r"^/[^\x00]*\Z", max_length=4096)]


class _Section(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class GlobalConfig(_Section, frozen=True):
    """Settings shared by every daemon and client."""

    #: a level, optionally followed by per-component levels:
    #: "info,spear.mesh=debug,spear.sms.tasks=warning"
    log_level: Annotated[str, Meta(pattern=r"^(debug|info|warning|error)"
                                            r"(,[a-z_.]+=(debug|info|warning|error))*\Z")] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    timeout: Seconds = 10.0
    sms: Address = DEFAULT_SMS


class StorageConfig(_Section, frozen=True):
    """Where the SMS keeps its state."""

    backend: Literal["memory", "leveldb", "rocksdb"] = "leveldb"
    path: str = "./.spear/sms"


class SMSConfig(_Section, frozen=True):
    """The management service."""

    listen: Address = "tcp://127.0.0.1:7700"
    heartbeat_interval: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    heartbeat_timeout: Annotated[float, Meta(gt=0, le=86400)] = 5.0
    cleanup_interval: Annotated[float, Meta(gt=0, le=30 * 86400)] = 60.0
    #: retention: execution records kept (the oldest finished are deleted first)
    max_executions: Annotated[int, Meta(ge=100, le=10_000_000)] = 100_000
    #: retention: finished execution records older than this (seconds) are deleted
    retention_age: Annotated[float, Meta(ge=60, le=3650 * 86400)] = 7 * 86400.0
    #: finished executions kept whole in memory; older ones are read back from the store
    cache_executions: Annotated[int, Meta(ge=0, le=10_000_000)] = 1_000
    queue_timeout: Annotated[float, Meta(gt=0, le=86400)] = 30.0
    #: artifacts (wasm modules, code bundles) stored, all together, MiB; a
    #: deploy of a new artifact past it is refused (one no function uses is deleted)
    artifacts_max_mb: Annotated[int, Meta(ge=1, le=1 << 30)] = 4096
    #: executions waiting for capacity, all functions together; more are refused
    max_queue: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    #: a dispatched execution still running this long past its timeout (or past
    #: default_run_timeout when it has none) ends timed_out in the SMS
    deadline_grace: Annotated[float, Meta(gt=0, le=86400)] = 5.0
    default_run_timeout: Annotated[float, Meta(gt=0, le=7 * 86400)] = 3600.0
    #: how a node is picked: "baseline" (headroom, load, warmth), "finish"
    #: (shortest expected finish time from each function's learned run time),
    #: "pack" (reserve each function's learned peak memory, never more than
    #: it asks for); see docs/scheduling.md
    placement: Literal["baseline", "finish", "pack"] = "baseline"
    metrics_port: MetricsPort = -1
    metrics_host: Address = "127.0.0.1"


class SpearletConfig(_Section, frozen=True):
    """One execution node."""

    #: the SMS to register with; empty: ``[global] sms``
    sms: Annotated[str, Meta(max_length=512)] = ""
    listen: Address = "tcp://127.0.0.1:7701"
    advertise: str = ""
    name: str = ""
    node_id: str = ""
    labels: dict[str, str] = {}
    data: str = "./.spear/spearlet"
    max_concurrency: Annotated[int, Meta(ge=1, le=100000)] = 64
    drain_timeout: Annotated[float, Meta(ge=0, le=3600)] = 10.0
    max_memory_mb: Annotated[int, Meta(ge=1)] = 8192
    max_timeout: Annotated[float, Meta(gt=0)] = 3600.0
    max_cpus: Annotated[float, Meta(gt=0)] = 64.0
    reconnect_min: Annotated[float, Meta(gt=0, le=60)] = 0.1
    reconnect_max: Annotated[float, Meta(gt=0, le=600)] = 2.0
    metrics_port: MetricsPort = -1
    metrics_host: Address = "127.0.0.1"
    #: host directories functions may reach (wasm ``dir:`` grants, process
    #: ``workdir``): "/abs/path" read-only, "/abs/path:rw" writable; none by default
    host_roots: list[HostRoot] = []
    #: absolute paths never granted to a function, nor anything inside or above them,
    #: besides the node's own directories (e.g. the other nodes' data on a shared host)
    private_paths: list[Annotated[str, Meta(pattern=r"^/.*\Z")]] = []
    #: how long idle instances stay warm: "fixed" (each pool's idle_ttl) or
    #: "learned" (a histogram of each function's idle times; see docs/autoscaling.md)
    warming: Literal["fixed", "learned"] = "fixed"


class WasmConfig(_Section, frozen=True):
    """Defaults of the wasm runtime."""

    enabled: bool = True
    memory_mb: Annotated[int, Meta(ge=1)] = 128
    fuel: Annotated[int, Meta(ge=1)] | None = None
    timeout: Seconds = 30.0
    #: worker threads for calls that do not run inline (0: the CPU count)
    threads: Annotated[int, Meta(ge=0, le=4096)] = 0
    #: calls that may wait for a worker thread at once; the next is refused
    #: with RESOURCE_EXHAUSTED
    max_queue: Annotated[int, Meta(ge=0, le=1_000_000)] = 64
    #: how long a call may wait for a worker thread before RESOURCE_EXHAUSTED
    queue_timeout: Seconds = 2.0


class ProcessConfig(_Section, frozen=True):
    """Defaults of the process runtime."""

    enabled: bool = True
    memory_mb: Annotated[int, Meta(ge=1)] = 512
    timeout: Seconds = 30.0
    #: user functions run as: "auto" (nobody when the Spearlet is root), "" (the
    #: Spearlet's own user), "per-function" (root only: a user of its own for each
    #: function, see docs/sandbox.md), or a user name
    user: str = "auto"
    #: refuse network=false functions where no network namespace can be made
    strict_network: bool = True
    #: largest output of one call, MiB (at most the 64 MiB payload cap); a
    #: function's limits.max_output_mb may lower it, never raise it
    max_output_mb: Annotated[int, Meta(ge=1, le=64)] = 64
    #: pids limit of executions whose function sets none (where there is a pids cgroup)
    pids: Annotated[int, Meta(ge=1, le=1 << 22)] = 1024
    #: a cgroup per execution: "auto" (where they work, else rlimits with a
    #: warning), "required" (no process runtime without them), "off"
    cgroups: Literal["auto", "required", "off"] = "auto"
    #: where code bundles are unpacked and Python environments built; "" = a
    #: root-owned /var/cache/spear/<12 hex of the data dir's hash> when functions
    #: run as another user, else <data>/cache (the sandbox user must reach it)
    cache_dir: Annotated[str, Meta(pattern=r"^(/.*)?\Z")] = ""  # absolute, or ""
    #: what builds the environments of Python handlers: "auto" (uv if installed, else pip)
    installer: Literal["auto", "uv", "pip"] = "auto"
    #: package index of those builds ("" = the installer's default, PyPI)
    index_url: Annotated[str, Meta(pattern=r"^(https?://\S+)?\Z")] = ""
    #: longest build of one environment (it fails the deploy, UNAVAILABLE)
    env_build_timeout: Seconds = 600.0
    #: how long an environment no deployed function uses is kept (seconds)
    env_ttl: Annotated[float, Meta(gt=0)] = 86400.0
    #: disk all those environments may take together (MB); past it, unused ones are
    #: removed first, then a build is refused RESOURCE_EXHAUSTED
    envs_max_mb: Annotated[int, Meta(ge=1)] = 20480
    #: free disk (MB) under the environments that a build never takes: a build
    #: is refused, or stopped while it runs, RESOURCE_EXHAUSTED, below it
    envs_min_free_mb: Annotated[int, Meta(ge=0)] = 1024


class DockerConfig(_Section, frozen=True):
    """Defaults of the docker runtime."""

    enabled: bool = True
    base_url: str = ""
    memory_mb: Annotated[int, Meta(ge=4)] = 256
    pids: Annotated[int, Meta(ge=1)] = 256
    timeout: Seconds = 30.0
    #: how long an availability check of the engine is trusted: a node without
    #: a reachable engine checks again this often (and on use), and one with
    #: an engine notices it going away
    check_interval: Seconds = 2.0


class SecurityConfig(_Section, frozen=True):
    """CURVE keys and roles; empty ``key`` means open (plaintext, no auth).

    ``key``: this process's secret key file (``NAME.key_secret`` from
    ``spear keygen``). ``sms_key``: the SMS's public key file (for clients and
    spearlets). Role lists hold public key files or z85 keys.
    ``tokens``: HTTP bearer token -> role, for the gateway.
    """

    key: str = ""
    sms_key: str = ""
    admin: list[str] = []
    deployer: list[str] = []
    invoker: list[str] = []
    viewer: list[str] = []
    node: list[str] = []
    #: node id -> public key (file or z85) that alone may register as it; node
    #: ids not listed are bound to the first key that registers them
    node_keys: dict[str, str] = {}
    #: a directory of node public key files (``*.key``) the SMS re-reads while it
    #: runs (on SIGHUP and every ``node_keys_poll`` seconds): a key added there
    #: admits its node, a key removed refuses it at its next connection
    node_keys_dir: str = ""
    node_keys_poll: Seconds = 5.0
    tokens: dict[str, str] = {}


#: a Host name the gateway answers to: a name or IP, "[v6]", "*" or "*.domain"
HostPattern = Annotated[str, Meta(pattern=r"^(\*|(\*\.)?[A-Za-z0-9_\-.]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])\Z")]
#: a browser origin: scheme://host[:port], nothing after it
OriginUrl = Annotated[str, Meta(pattern=r"^https?://[A-Za-z0-9_\-.]{1,253}(:[0-9]{1,5})?\Z"
                                        r"|^https?://\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?\Z")]


class GatewayConfig(_Section, frozen=True):
    """The HTTP gateway (``spear gateway``)."""

    #: HOST:PORT to serve HTTP on
    listen: Annotated[str, Meta(min_length=1, max_length=512)] = "127.0.0.1:7780"
    #: SMS address; empty: ``[global] sms``
    sms: str = ""
    #: largest request body (deploy uploads, invocation input), bytes
    max_body: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024)] = 64 * 1024 * 1024
    #: how long a synchronous invocation may wait for its result, seconds
    invoke_timeout: Annotated[float, Meta(gt=0, le=86400)] = 300.0
    #: live figures: seconds between samples, and how many seconds are kept
    sample_interval: Annotated[float, Meta(ge=0.1, le=3600)] = 2.0
    history: Annotated[float, Meta(ge=10, le=86400)] = 900.0
    #: executions whose streamed logs are kept in memory
    log_executions: Annotated[int, Meta(ge=0, le=1_000_000)] = 1000
    #: write an access log line per request
    access_log: bool = False
    #: the admin page links an execution to its trace here ("{trace_id}" is replaced;
    #: e.g. "http://jaeger:16686/trace/{trace_id}"); empty: no link
    trace_url: Annotated[str, Meta(pattern=r"^(https?://[^\s\"'<>]*)?\Z", max_length=512)] = ""
    #: Host header names served (any port); "*" any, "*.example.org" its subdomains.
    #: Anything else gets 400, which keeps DNS-rebinding pages out.
    allowed_hosts: Annotated[list[HostPattern], Meta(max_length=256)] = msgspec.field(
        default_factory=lambda: ["127.0.0.1", "localhost", "[::1]"])
    #: origins besides the gateway's own that may send writes (POST, DELETE, ...)
    #: from a browser; other cross-site writes get 403
    allowed_origins: Annotated[list[OriginUrl], Meta(max_length=256)] = []
    #: seconds a connection has to send a request's headers, counted from when
    #: it opened or its previous response ended
    header_timeout: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    #: seconds a request has to send its whole body
    body_timeout: Annotated[float, Meta(gt=0, le=86400)] = 120.0
    #: open connections at most (beyond it new requests get 503)
    max_connections: Annotated[int, Meta(ge=16, le=1_000_000)] = 4096
    #: connections still sending headers (or idle) at most; a new one closes the oldest
    max_pending: Annotated[int, Meta(ge=1, le=1_000_000)] = 256
    #: open event and live-figure streams per bearer token (per client address
    #: when there are no tokens); one more gets 429
    max_subscriptions_per_key: Annotated[int, Meta(ge=1, le=100_000)] = 16


class TracingConfig(_Section, frozen=True):
    """OpenTelemetry spans of every stage (sent over OTLP/HTTP; needs the ``otel`` extra)."""

    #: False: no spans even with an endpoint (W3C trace context is passed on anyway)
    enabled: bool = True
    #: the OTLP/HTTP collector ("http://host:4318"); empty: the standard
    #: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variable; neither set: no spans
    otlp_endpoint: Annotated[str, Meta(pattern=r"^(https?://\S+)?\Z", max_length=512)] = ""
    #: share of new traces recorded (a caller's sampled flag decides for its own)
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 1.0


class NodeTypeConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One named node type, ``[autoscaler.types.NAME]``: where its nodes come
    from, their size, its own bounds and its ``cost`` (lower is tried first)."""

    provider: Literal["local", "docker", "kubernetes", "cloud"] = "local"
    cores: Annotated[float, Meta(gt=0, le=1e6)] = 1.0
    memory_mb: Annotated[int, Meta(ge=1)] = 1024
    min_nodes: Annotated[int, Meta(ge=0, le=10_000)] = 0
    max_nodes: Annotated[int, Meta(ge=0, le=10_000)] = 4
    cost: Annotated[float, Meta(ge=0)] = 1.0
    options: dict[str, str] = {}


#: a node type's name: it labels its nodes (``spear.node-type``) and names cloud machines
NodeTypeName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9\-]{0,30}\Z")]


class AutoscalerConfig(_Section, frozen=True):
    """The node autoscaler (``spear autoscaler``; ``spear up`` starts it when the
    configuration sets any key of this section). Its node types are the tables
    ``[autoscaler.types.NAME]``; without any, one type ``default`` made of
    ``provider``, ``node_cores``, ``node_memory_mb`` and ``options``."""

    #: where nodes come from: local | docker | kubernetes | cloud
    provider: Literal["local", "docker", "kubernetes", "cloud"] = "local"
    #: nodes kept at least / at most, the cluster's own nodes included
    min_nodes: Annotated[int, Meta(ge=0, le=10_000)] = 0
    max_nodes: Annotated[int, Meta(ge=0, le=10_000)] = 4
    #: a node of the autoscaler's that ran nothing this long is drained, then removed
    scale_down_idle_s: Annotated[float, Meta(gt=0, le=86400)] = 60.0
    #: ... unless it holds the only warm instance of a busy function: then this long
    protect_idle_s: Annotated[float, Meta(gt=0, le=7 * 86400)] = 300.0
    #: seconds between two looks at the SMS
    tick: Annotated[float, Meta(ge=0.05, le=3600)] = 2.0
    #: least time between two scale ups, and between a scale up or down and a scale down
    up_cooldown: Annotated[float, Meta(ge=0, le=86400)] = 5.0
    down_cooldown: Annotated[float, Meta(ge=0, le=86400)] = 30.0
    #: consecutive ticks with queued executions before nodes are added
    up_ticks: Annotated[int, Meta(ge=1, le=1000)] = 2
    #: the nodes started: their name prefix, cores and memory (for sizing) and
    #: provider-specific options (local: config, labels; see docs/autoscaling.md)
    node_prefix: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9\-]{0,30}\Z")] = "auto"
    node_cores: Annotated[float, Meta(gt=0, le=1e6)] = 1.0
    node_memory_mb: Annotated[int, Meta(ge=1)] = 1024
    options: dict[str, str] = {}
    #: the autoscaler's own state (local provider: the nodes' directories)
    data: str = "./.spear/autoscaler"
    #: named node types, tried cheapest first; a type whose provider refuses a
    #: node is passed over for the next (multi-cloud)
    types: dict[NodeTypeName, NodeTypeConfig] = {}
    #: serve Prometheus /metrics here (-1 off, 0 any free port)
    metrics_port: MetricsPort = -1
    metrics_host: Address = "127.0.0.1"


class RuntimesConfig(_Section, frozen=True):
    """Per-runtime defaults; per-function limits override them."""

    wasm: WasmConfig = WasmConfig()
    process: ProcessConfig = ProcessConfig()
    docker: DockerConfig = DockerConfig()


class Config(_Section, frozen=True):
    """The whole effective configuration."""

    global_: GlobalConfig = msgspec.field(default_factory=GlobalConfig, name="global")
    sms: SMSConfig = SMSConfig()
    spearlet: SpearletConfig = SpearletConfig()
    runtimes: RuntimesConfig = RuntimesConfig()
    storage: StorageConfig = StorageConfig()
    security: SecurityConfig = SecurityConfig()
    gateway: GatewayConfig = GatewayConfig()
    tracing: TracingConfig = TracingConfig()
    autoscaler: AutoscalerConfig = AutoscalerConfig()

    def __post_init__(self) -> None:
        # the one place inherited keys are resolved, so every Config (loaded or
        # built in code) holds the effective value and no reader repeats the rule
        for dotted, source in INHERITED.items():
            section, name = dotted.split(".")
            values = getattr(self, section)
            if not getattr(values, name):
                src_section, src_name = source.split(".")
                value = getattr(getattr(self, _attr(src_section)), src_name)
                msgspec.structs.force_setattr(
                    self, section, msgspec.structs.replace(values, **{name: value}))


def _attr(section: str) -> str:
    """The Config attribute of a TOML section name (``global`` is a keyword)."""
    return "global_" if section == "global" else section
