"""Typed configuration, loaded in one place.

Precedence, lowest first: built-in defaults < one TOML file < ``SPEAR_*``
environment variables < command-line flags. This is the only package that
reads the environment. Every value is validated by msgspec on load; a bad
one raises :class:`spear.errors.ConfigError` naming the source, key and value.
The package holds the loader and the environment accessors here and the
section Structs in :mod:`.sections`; it may import only :mod:`spear.errors`.

TOML sections map to the Structs of :mod:`.sections`::

    [global]            -> GlobalConfig
    [sms]               -> SMSConfig
    [spearlet]          -> SpearletConfig
    [runtimes.wasm]     -> WasmConfig       (also .process, .docker)
    [storage]           -> StorageConfig
    [tracing]           -> TracingConfig
    [autoscaler]        -> AutoscalerConfig

Environment variables are ``SPEAR_<SECTION>_<KEY>`` (e.g.
``SPEAR_SMS_LISTEN``, ``SPEAR_RUNTIMES_WASM_FUEL``; lists are comma-separated,
tables ``k=v,k2=v2``), plus the shorthand ``SPEAR_SMS`` for every SMS address
(``[global]``, ``[spearlet]`` and ``[gateway]`` ``sms``).

A higher layer replaces a key's whole value (a table such as ``labels`` too);
sections merge key by key. Keys in :data:`INHERITED` left empty take their
``[global]`` key's effective value: the specific key, set in any layer, wins.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

import msgspec
import msgspec.inspect
import msgspec.json

from ..errors import ConfigError
from .sections import (  # noqa: F401 - the sections are part of this module's API
    Address,
    AutoscalerConfig,
    Config,
    DEFAULT_SMS,
    DockerConfig,
    GatewayConfig,
    GlobalConfig,
    HostRoot,
    INHERITED,
    MetricsPort,
    NodeTypeConfig,
    ProcessConfig,
    RuntimesConfig,
    SMSConfig,
    Seconds,
    SecurityConfig,
    SpearletConfig,
    StorageConfig,
    TracingConfig,
    WasmConfig,
)


_SECTIONS = {
    "global": GlobalConfig,
    "sms": SMSConfig,
    "spearlet": SpearletConfig,
    "storage": StorageConfig,
    "security": SecurityConfig,
    "gateway": GatewayConfig,
    "tracing": TracingConfig,
    "autoscaler": AutoscalerConfig,
    "runtimes.wasm": WasmConfig,
    "runtimes.process": ProcessConfig,
    "runtimes.docker": DockerConfig,
}


def _set(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def _merge(base: dict, top: Mapping, path: str = "") -> dict:
    """``top`` over ``base``: sections merge key by key, a value is replaced whole
    (a table value such as ``labels`` too: a higher layer never mixes into it)."""
    out = dict(base)
    for k, v in top.items():
        name = path + k
        section = any(s == name or s.startswith(name + ".") for s in _SECTIONS)
        if section and isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, name + ".")
        else:
            out[k] = v
    return out


def _env_layer(env: Mapping[str, str]) -> tuple[dict, dict[str, str]]:
    """Parse SPEAR_* variables into a tree of raw strings; returns (tree, origin)."""
    tree: dict = {}
    origin: dict[str, str] = {}
    if env.get("SPEAR_SMS"):
        for key in ("global.sms", *INHERITED):
            _set(tree, key, env["SPEAR_SMS"])
            origin[key] = "env SPEAR_SMS"
    for name, raw in env.items():
        if not name.startswith("SPEAR_") or name in ("SPEAR_SMS", "SPEAR_NO_EXTENSIONS"):
            continue
        rest = name[6:].lower()
        for section in sorted(_SECTIONS, key=len, reverse=True):
            prefix = section.replace(".", "_") + "_"
            if rest.startswith(prefix):
                key = rest[len(prefix):]
                if key not in _SECTIONS[section].__struct_fields__:
                    raise ConfigError(f"environment: unknown key [{section}] {key} "
                                      f"(from {name}={raw!r})")
                _set(tree, f"{section}.{key}", raw)
                origin[f"{section}.{key}"] = f"env {name}"
                break
    return tree, origin


def _coerce_strings(section_cls: type, values: dict, source: str) -> dict:
    """Env values arrive as strings: convert them to each field's type."""
    out = {}
    hints = {f.name: f.type for f in msgspec.structs.fields(section_cls)}
    for key, raw in values.items():
        typ = hints.get(key)
        if not isinstance(raw, str) or typ is None:
            out[key] = raw
            continue
        try:
            info = msgspec.inspect.type_info(typ)  # sees through Annotated[...]
            if isinstance(info, msgspec.inspect.DictType) and \
                    isinstance(info.value_type, msgspec.inspect.StructType):
                out[key] = msgspec.json.decode(raw)  # a table of tables: JSON
            elif isinstance(info, msgspec.inspect.DictType):
                out[key] = _parse_labels(raw)
            elif isinstance(info, msgspec.inspect.ListType):  # "a,b" -> ["a", "b"]
                out[key] = msgspec.convert([p.strip() for p in raw.split(",") if p.strip()],
                                           typ, strict=False)
            else:
                out[key] = msgspec.convert(raw, typ, strict=False)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            section = next(s for s, c in _SECTIONS.items() if c is section_cls)
            raise ConfigError(f"{source}: [{section}] {key} = {raw!r}: {exc}") from None
    return out


def _parse_labels(text: str) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` into a dict; raise ValueError on a malformed pair."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in pair:
            raise ValueError(f"label {pair!r} is not key=value")
        k, v = pair.split("=", 1)
        labels[k.strip()] = v.strip()
    return labels


parse_labels = _parse_labels


def _validate(tree: dict, source: str) -> None:
    """Check one layer section by section so errors name the source and key."""
    for name, section in tree.items():
        if name == "runtimes" and isinstance(section, dict):
            for rname, rsec in section.items():
                _validate_section(f"runtimes.{rname}", rsec, source)
        else:
            _validate_section(name, section, source)


def _validate_section(name: str, values: Any, source: str) -> None:
    cls = _SECTIONS.get(name)
    if cls is None:
        raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(_SECTIONS)})")
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, got {values!r}")
    for key, value in values.items():
        if key not in cls.__struct_fields__:
            raise ConfigError(f"{source}: unknown key [{name}] {key} = {value!r}")
        try:
            msgspec.convert({key: value}, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{source}: [{name}] {key} = {value!r}: {exc}") from None


def load_config(
    path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    with_origin: bool = False,
):
    """Build the effective :class:`Config`.

    ``path``: a TOML file (else ``SPEAR_CONFIG`` if set). ``overrides``: flat
    ``{"section.key": value}`` from command-line flags (``None`` values are
    ignored). With ``with_origin=True`` returns ``(config, origin)`` where
    origin maps each non-default key to where it came from.
    """
    env = os.environ if env is None else env
    origin: dict[str, str] = {}
    tree: dict = {}
    path = config_file(path, env)
    if path:
        p = Path(path)
        try:
            file_tree = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
        _validate(file_tree, str(p))
        tree = _merge(tree, file_tree)
        for section, values in file_tree.items():
            items = values.items() if section != "runtimes" else (
                (f"{r}.{k}", v) for r, sec in values.items() for k, v in sec.items()
            )
            for key, _ in items:
                origin[f"{section}.{key}"] = f"file {p}"
    env_tree, env_origin = _env_layer(env)
    for section, values in list(env_tree.items()):
        if section == "runtimes":
            for rname, rvals in values.items():
                values[rname] = _coerce_strings(_SECTIONS[f"runtimes.{rname}"], rvals, "environment")
        else:
            env_tree[section] = _coerce_strings(_SECTIONS[section], values, "environment")
    _validate(env_tree, "environment")
    tree = _merge(tree, env_tree)
    origin.update(env_origin)
    flag_tree: dict = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(flag_tree, key, value)
            origin[key] = "flag"
    _validate(flag_tree, "command line")
    tree = _merge(tree, flag_tree)
    try:
        cfg = msgspec.convert(tree, Config)
    except msgspec.ValidationError as exc:  # cross-field problems
        raise ConfigError(f"configuration: {exc}") from None
    for dotted, source in INHERITED.items():
        section, name = dotted.split(".")
        if not tree.get(section, {}).get(name):  # left empty: the value is [global]'s
            if source in origin:
                origin[dotted] = origin[source]
            else:
                origin.pop(dotted, None)
    if cfg.autoscaler.min_nodes > cfg.autoscaler.max_nodes:
        raise ConfigError(f"[autoscaler] min_nodes = {cfg.autoscaler.min_nodes} exceeds "
                          f"max_nodes = {cfg.autoscaler.max_nodes}")
    for tname, t in cfg.autoscaler.types.items():
        if t.min_nodes > t.max_nodes:
            raise ConfigError(f"[autoscaler.types.{tname}] min_nodes = {t.min_nodes} exceeds "
                              f"max_nodes = {t.max_nodes}")
    if cfg.sms.heartbeat_timeout <= cfg.sms.heartbeat_interval:
        src_t = origin.get("sms.heartbeat_timeout", "default")
        src_i = origin.get("sms.heartbeat_interval", "default")
        raise ConfigError(
            f"[sms] heartbeat_timeout = {cfg.sms.heartbeat_timeout} (from {src_t}) must exceed "
            f"heartbeat_interval = {cfg.sms.heartbeat_interval} (from {src_i})"
        )
    return (cfg, origin) if with_origin else cfg


def config_file(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> str:
    """The TOML file :func:`load_config` reads: ``path``, else ``SPEAR_CONFIG``, else ""."""
    env = os.environ if env is None else env
    return os.fspath(path) if path else env.get("SPEAR_CONFIG", "")


def no_extensions(env: Mapping[str, str] | None = None) -> bool:
    """True when SPEAR_NO_EXTENSIONS=1 asks for the pure-Python twins."""
    env = os.environ if env is None else env
    return env.get("SPEAR_NO_EXTENSIONS", "") == "1"


# ---------------------------------------------------------------- the process environment
# Everything else in Spear that needs a value from the environment asks here.

#: variables a function may inherit from the node's environment; everything
#: else (keys, tokens) stays out
INHERITABLE_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


def default_sms_address(env: Mapping[str, str] | None = None) -> str:
    """The SMS a client reaches by default: ``SPEAR_SMS``, else :data:`DEFAULT_SMS`."""
    env = os.environ if env is None else env
    return env.get("SPEAR_SMS") or DEFAULT_SMS


def batching_disabled(env: Mapping[str, str] | None = None) -> bool:
    """True when ``SPEAR_NO_BATCH`` asks the mesh to send one message per frame set."""
    env = os.environ if env is None else env
    return env.get("SPEAR_NO_BATCH", "") in ("1", "true", "yes")


def docker_host(env: Mapping[str, str] | None = None) -> str:
    """The Docker Engine named by ``DOCKER_HOST`` ("" when unset)."""
    env = os.environ if env is None else env
    return env.get("DOCKER_HOST", "")


def inherited_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of the node's environment a function may see (:data:`INHERITABLE_ENV`)."""
    env = os.environ if env is None else env
    return {k: env[k] for k in INHERITABLE_ENV if k in env}


def otlp_traces_endpoint(tracing: TracingConfig, env: Mapping[str, str] | None = None) -> str:
    """Where spans go: the full OTLP/HTTP traces URL, or "" (no spans).

    ``[tracing] otlp_endpoint``, else the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    (taken as it is), else OTEL_EXPORTER_OTLP_ENDPOINT; a base URL gets ``/v1/traces``.
    """
    env = os.environ if env is None else env
    if not tracing.enabled:
        return ""
    if tracing.otlp_endpoint:
        url = tracing.otlp_endpoint
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip()
    else:
        url = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not url or url.endswith("/v1/traces"):
        return url
    return url.rstrip("/") + "/v1/traces"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Spear daemon this process starts: its own plus ``extra``."""
    return {**os.environ, **(extra or {})}
