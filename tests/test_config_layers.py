"""Layering holds for every key of every section: default < file < env < flag.

The keys are not listed by hand: they come from the :class:`spear.config.Config`
Struct, so a key added later is covered the day it lands. Each key gets sample
values generated from its type (bounds, literals, optionals); keys whose type
cannot be sampled that way (a string with a pattern, a list of such strings)
take theirs from ``SAMPLES``, and a key with no sample at all fails
``test_every_key_has_samples`` until one is added.

Also here: keys that inherit a ``[global]`` value when unset (``[spearlet] sms``,
``[gateway] sms``), and the real command-line flags of the daemons, each of
which must beat the environment.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from spear import cli, config as C
from spear.config import Config, NodeTypeConfig, load_config

# ---------------------------------------------------------------- the keys


@dataclass(frozen=True)
class Key:
    section: str  # "sms", "runtimes.wasm"
    name: str
    cls: type
    type: Any
    default: Any

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"SPEAR_{self.section.replace('.', '_').upper()}_{self.name.upper()}"

    def get(self, cfg: Config) -> Any:
        obj: Any = cfg
        for part in self.section.split("."):
            obj = getattr(obj, "global_" if part == "global" else part)
        return getattr(obj, self.name)


def _keys(cls: type = Config, prefix: str = "") -> list[Key]:
    out: list[Key] = []
    defaults = cls()
    for f in msgspec.structs.fields(cls):
        value = getattr(defaults, f.name)
        if isinstance(value, msgspec.Struct):
            out += _keys(type(value), f"{prefix}{f.encode_name}.")
        else:
            out.append(Key(prefix.rstrip("."), f.encode_name, cls, f.type, value))
    return out


KEYS = _keys()
IDS = [k.dotted for k in KEYS]

#: samples for keys whose type admits no generated value (patterned strings);
#: two different valid values each, neither the default
SAMPLES: dict[str, list[Any]] = {
    "global.log_level": ["debug", "warning,spear.mesh=debug"],
    "gateway.allowed_hosts": [["spear.example.org"], ["*.example.net", "10.0.0.1"]],
    "gateway.allowed_origins": [["https://ui.example.org"], ["http://127.0.0.1:8080"]],
    "gateway.trace_url": ["http://jaeger:16686/trace/{trace_id}", "https://traces.example.org/t/{trace_id}"],
    "spearlet.host_roots": [["/srv/data"], ["/tmp/in", "/tmp/out:rw"]],
    "spearlet.private_paths": [["/srv/other-node"], ["/var/lib/a", "/var/lib/b"]],
    # HOST:PORT, checked when the gateway starts
    "gateway.listen": ["0.0.0.0:7781", "127.0.0.1:7999"],
    "runtimes.process.cache_dir": ["/var/cache/spear/node-a", "/srv/spear-cache"],
    "tracing.otlp_endpoint": ["http://collector:4318", "https://otel.example.org/v1/traces"],
    "runtimes.process.index_url": ["https://pypi.example.org/simple",
                                   "http://127.0.0.1:3141/root/pypi/+simple/"],
    "autoscaler.node_prefix": ["burst", "pool-a"],
    # at most the default max_nodes (min_nodes > max_nodes is refused)
    "autoscaler.min_nodes": [1, 3],
    # node type tables (in the environment: JSON)
    "autoscaler.types": [{"aws": NodeTypeConfig(provider="cloud", cost=2.0, options={"clouds": "aws"})},
                         {"home": NodeTypeConfig(max_nodes=2)}],
}

#: keys named like a [global] key that do NOT inherit it (a different meaning):
#: a function's default run timeout is not the client's request timeout
NOT_INHERITED = {"runtimes.wasm.timeout", "runtimes.process.timeout", "runtimes.docker.timeout"}


def _valid(key: Key, value: Any) -> bool:
    try:
        msgspec.convert({key.name: value}, key.cls)
    except msgspec.ValidationError:
        return False
    return True


def _numbers(info, default, integer: bool) -> list:
    base = default if default is not None else (info.ge or info.gt or 1)
    picks = [base * 2, base / 2, base + 1, base - 1, info.ge, info.le,
             (info.gt + 1) if info.gt is not None else None, (info.lt - 1) if info.lt is not None else None]
    out = []
    for p in picks:
        if p is None or (isinstance(p, float) and not math.isfinite(p)):
            continue
        out.append(int(p) if integer else float(p))
    return out


def _generated(info, default) -> list:
    if isinstance(info, mi.BoolType):
        return [not default]
    if isinstance(info, mi.IntType):
        return _numbers(info, default, True)
    if isinstance(info, mi.FloatType):
        return _numbers(info, default, False)
    if isinstance(info, mi.LiteralType):
        return list(info.values)
    if isinstance(info, mi.StrType) and info.pattern is None:
        return ["tcp://127.0.0.1:7999", "sample-value"]
    if isinstance(info, mi.UnionType):
        out: list = []
        for t in info.types:
            if not isinstance(t, mi.NoneType):
                out += _generated(t, default if default is not None else None)
        return out
    if isinstance(info, mi.DictType) and all(
            isinstance(t, mi.StrType) and t.pattern is None for t in (info.key_type, info.value_type)):
        # different keys on purpose: a higher layer replaces a table, it does not merge into it
        return [{"zone": "a"}, {"rack": "r2", "gpu": "yes"}]
    if isinstance(info, mi.ListType) and isinstance(info.item_type, mi.StrType) \
            and info.item_type.pattern is None:
        return [["sample-a"], ["sample-b", "sample-c"]]
    return []


def samples(key: Key) -> list:
    """Two (or, for a bool, one) valid non-default values of ``key``."""
    raw = SAMPLES.get(key.dotted) or _generated(mi.type_info(key.type), key.default)
    out: list = []
    for v in raw:
        if v != key.default and v not in out and _valid(key, v):
            out.append(v)
    return out[:2]


def two_values(key: Key) -> tuple[Any, Any]:
    """(a, b): a is not the default; b differs from a (the default for a bool)."""
    got = samples(key)
    assert got, f"no sample value for [{key.section}] {key.name}: add two to SAMPLES"
    return got[0], got[1] if len(got) > 1 else key.default


def toml_literal(v: Any) -> str:
    if isinstance(v, msgspec.Struct):
        v = msgspec.structs.asdict(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_literal(x)}" for k, x in v.items()) + " }"
    raise AssertionError(f"no TOML form for {v!r}")


def env_text(v: Any) -> str:
    """The SPEAR_* form of a value: lists comma-separated, tables k=v,k2=v2."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(v)
    if isinstance(v, dict) and any(isinstance(x, msgspec.Struct) for x in v.values()):
        return json.dumps(msgspec.to_builtins(v))
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def write_file(tmp_path, key: Key, value: Any, extra: str = ""):
    p = tmp_path / "spear.toml"
    p.write_text(f"[{key.section}]\n{key.name} = {toml_literal(value)}\n{extra}")
    return p


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No SPEAR_* variable of the calling shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("SPEAR_") and name != "SPEAR_NO_EXTENSIONS":
            monkeypatch.delenv(name)


# ---------------------------------------------------------------- every key, every layer


def test_keys_are_found():
    sections = {k.section for k in KEYS}
    assert {"global", "sms", "spearlet", "storage", "security", "gateway",
            "runtimes.wasm", "runtimes.process", "runtimes.docker"} <= sections
    assert sections == set(C._SECTIONS), "every section of Config loads from its own [table]"
    assert len(KEYS) == len(set(IDS))


@pytest.mark.parametrize("key", KEYS, ids=IDS)
def test_every_key_has_samples(key):
    assert samples(key), (f"[{key.section}] {key.name} ({key.type}) has no generated sample: "
                          f"add valid non-default values to SAMPLES in {__file__}")


@pytest.mark.parametrize("key", KEYS, ids=IDS)
def test_file_sets_the_key(tmp_path, key):
    a, _ = two_values(key)
    p = write_file(tmp_path, key, a)
    cfg, origin = load_config(p, env={}, with_origin=True)
    assert key.get(cfg) == a
    assert origin[key.dotted] == f"file {p}"


@pytest.mark.parametrize("key", KEYS, ids=IDS)
def test_env_sets_the_key(key):
    a, _ = two_values(key)
    cfg, origin = load_config(env={key.env: env_text(a)}, with_origin=True)
    assert key.get(cfg) == a
    assert origin[key.dotted] == f"env {key.env}"


@pytest.mark.parametrize("key", KEYS, ids=IDS)
def test_env_beats_file(tmp_path, key):
    a, b = two_values(key)
    p = write_file(tmp_path, key, a)
    cfg, origin = load_config(p, env={key.env: env_text(b)}, with_origin=True)
    assert key.get(cfg) == b
    assert origin[key.dotted] == f"env {key.env}"


@pytest.mark.parametrize("key", KEYS, ids=IDS)
def test_flag_beats_env_and_file(tmp_path, key):
    a, b = two_values(key)
    p = write_file(tmp_path, key, b)
    cfg, origin = load_config(p, env={key.env: env_text(b)}, overrides={key.dotted: a},
                              with_origin=True)
    assert key.get(cfg) == a
    assert origin[key.dotted] == "flag"


@pytest.mark.parametrize("key", KEYS, ids=IDS)
def test_unset_layers_leave_the_default(tmp_path, key):
    """A file that sets some other key leaves this one at its default."""
    other = next(k for k in KEYS if k.section != key.section)
    p = write_file(tmp_path, other, two_values(other)[0])
    cfg, origin = load_config(p, env={}, overrides={key.dotted: None}, with_origin=True)
    assert key.dotted not in origin
    assert key.get(cfg) == key.get(Config())


# ---------------------------------------------------------------- keys that inherit [global]

GLOBAL_NAMES = {k.name for k in KEYS if k.section == "global"}
NAMESAKES = [k for k in KEYS if k.section != "global" and k.name in GLOBAL_NAMES]


@pytest.mark.parametrize("key", NAMESAKES, ids=[k.dotted for k in NAMESAKES])
def test_namesakes_of_global_keys_inherit_or_are_listed(key):
    """A section key named like a [global] key inherits it, unless listed as unrelated."""
    if key.dotted in NOT_INHERITED:
        assert key.dotted not in C.INHERITED
    else:
        assert C.INHERITED.get(key.dotted) == f"global.{key.name}", (
            f"[{key.section}] {key.name}: inherit [global] {key.name} in config.INHERITED "
            f"or list it in NOT_INHERITED here")


#: every namesake not listed as unrelated inherits its [global] key
INHERITORS = sorted(k.dotted for k in NAMESAKES if k.dotted not in NOT_INHERITED)


@pytest.mark.parametrize("dotted", INHERITORS)
def test_global_in_the_file_reaches_an_unset_key(tmp_path, dotted):
    key = next(k for k in KEYS if k.dotted == dotted)
    glob = next(k for k in KEYS if k.dotted == "global." + key.name)
    a, _ = two_values(glob)
    p = write_file(tmp_path, glob, a)
    cfg, origin = load_config(p, env={}, with_origin=True)
    assert key.get(cfg) == a
    assert origin[dotted] == f"file {p}"


@pytest.mark.parametrize("dotted", INHERITORS)
def test_own_key_beats_global(tmp_path, dotted):
    key = next(k for k in KEYS if k.dotted == dotted)
    glob = next(k for k in KEYS if k.dotted == "global." + key.name)
    a, b = two_values(glob)
    p = tmp_path / "spear.toml"
    p.write_text(f"[{glob.section}]\n{glob.name} = {toml_literal(a)}\n"
                 f"[{key.section}]\n{key.name} = {toml_literal(b)}\n")
    assert key.get(load_config(p, env={})) == b
    # even when [global] comes from a higher layer: the more specific key wins
    p.write_text(f"[{key.section}]\n{key.name} = {toml_literal(b)}\n")
    assert key.get(load_config(p, env={glob.env: env_text(a)})) == b
    assert key.get(load_config(p, env={}, overrides={glob.dotted: a})) == b


@pytest.mark.parametrize("dotted", INHERITORS)
def test_empty_own_key_means_global(tmp_path, dotted):
    key = next(k for k in KEYS if k.dotted == dotted)
    p = tmp_path / "spear.toml"
    p.write_text(f'[global]\nsms = "tcp://10.9.8.7:7700"\n[{key.section}]\n{key.name} = ""\n')
    assert key.get(load_config(p, env={})) == "tcp://10.9.8.7:7700"


def test_defaults_hold_the_global_address():
    cfg = Config()
    assert cfg.spearlet.sms == cfg.gateway.sms == cfg.global_.sms == C.DEFAULT_SMS
    assert load_config(env={}) == cfg


def test_spear_sms_shorthand_sets_every_sms_address(tmp_path):
    p = tmp_path / "spear.toml"
    p.write_text('[spearlet]\nsms = "tcp://file:1"\n[gateway]\nsms = "tcp://file:2"\n')
    cfg, origin = load_config(p, env={"SPEAR_SMS": "tcp://env:3"}, with_origin=True)
    assert cfg.global_.sms == cfg.spearlet.sms == cfg.gateway.sms == "tcp://env:3"
    assert origin["gateway.sms"] == "env SPEAR_SMS"


# ---------------------------------------------------------------- the real command lines


class _Captured(Exception):
    pass


@pytest.fixture
def capture(monkeypatch):
    """Run ``spear ...`` up to the point a daemon or client would start; return what it got."""
    from spear import fsmodes, logs
    from spear.gateway import server
    from spear.sms import daemon as sms_daemon
    from spear.spearlet import daemon as spearlet_daemon

    got: dict = {}

    class Daemon:
        def __init__(self, config, **kw):
            got["config"] = config

        async def serve_forever(self):
            pass

    class FakeClient:
        def __init__(self, address, timeout=None, security=None):
            got["client"] = (address, timeout)
            raise _Captured

    monkeypatch.setattr(sms_daemon, "SMS", Daemon)
    monkeypatch.setattr(spearlet_daemon, "Spearlet", Daemon)
    monkeypatch.setattr(server, "serve", lambda settings: got.setdefault("settings", settings) and 0)
    monkeypatch.setattr("spear.client.Client", FakeClient)
    monkeypatch.setattr(logs, "setup", lambda level, fmt, component="": got.update(
        log_level=level, log_format=fmt))
    monkeypatch.setattr(fsmodes, "daemon_umask", lambda: None)

    def run(argv: list[str]) -> dict:
        got.clear()
        try:
            code = cli.main(argv)
        except _Captured:
            code = 0
        assert code == 0, f"spear {' '.join(argv)} exited {code}"
        return dict(got)

    return run


def _gateway_value(got, name):
    return getattr(got["settings"].gateway, name)


#: every option of the daemon commands -> (the key it sets, how to read the effective value)
FLAGS: dict[tuple[str, str], tuple[str, Any]] = {
    ("", "--log-level"): ("global.log_level", lambda got: got["log_level"]),
    ("", "--log-format"): ("global.log_format", lambda got: got["log_format"]),
    ("ping", "--sms"): ("global.sms", lambda got: got["client"][0]),
    ("ping", "--timeout"): ("global.timeout", lambda got: got["client"][1]),
    ("sms", "--listen"): ("sms.listen", None),
    ("sms", "--data"): ("storage.path", None),
    ("sms", "--store"): ("storage.backend", None),
    ("sms", "--heartbeat-interval"): ("sms.heartbeat_interval", None),
    ("sms", "--heartbeat-timeout"): ("sms.heartbeat_timeout", None),
    ("sms", "--cleanup-interval"): ("sms.cleanup_interval", None),
    ("sms", "--metrics-port"): ("sms.metrics_port", None),
    ("spearlet", "--sms"): ("spearlet.sms", None),
    ("spearlet", "--listen"): ("spearlet.listen", None),
    ("spearlet", "--advertise"): ("spearlet.advertise", None),
    ("spearlet", "--name"): ("spearlet.name", None),
    ("spearlet", "--node-id"): ("spearlet.node_id", None),
    ("spearlet", "--labels"): ("spearlet.labels", None),
    ("spearlet", "--data"): ("spearlet.data", None),
    ("spearlet", "--metrics-port"): ("spearlet.metrics_port", None),
    ("spearlet", "--host-root"): ("spearlet.host_roots", None),
    ("spearlet", "--private-path"): ("spearlet.private_paths", None),
    ("gateway", "--sms"): ("gateway.sms", lambda got: got["settings"].sms),
    ("gateway", "--http"): ("gateway.listen", lambda got: _gateway_value(got, "listen")),
    ("gateway", "--max-body"): ("gateway.max_body", lambda got: _gateway_value(got, "max_body")),
    ("gateway", "--invoke-timeout"): ("gateway.invoke_timeout",
                                      lambda got: _gateway_value(got, "invoke_timeout")),
    ("gateway", "--sample-interval"): ("gateway.sample_interval",
                                       lambda got: _gateway_value(got, "sample_interval")),
    ("gateway", "--access-log"): ("gateway.access_log",
                                  lambda got: _gateway_value(got, "access_log")),
    ("gateway", "--allowed-host"): ("gateway.allowed_hosts",
                                    lambda got: _gateway_value(got, "allowed_hosts")),
    ("gateway", "--allowed-origin"): ("gateway.allowed_origins",
                                      lambda got: _gateway_value(got, "allowed_origins")),
}
#: options that set no configuration key
NOT_KEYS = {"--help", "--version", "--config", "--json", "--node"}


def _options(command: str) -> set[str]:
    import argparse

    parser = cli.build_parser()
    if command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[command]
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


@pytest.mark.parametrize("command", sorted({c for c, _ in FLAGS}))
def test_every_daemon_flag_is_checked(command):
    listed = {flag for c, flag in FLAGS if c == command}
    missing = _options(command) - listed - NOT_KEYS
    assert not missing, f"`spear {command}` options with no entry in FLAGS: {sorted(missing)}"


def _flag_argv(flag: str, value: Any) -> list[str]:
    if value is True:
        return [flag]
    if isinstance(value, list):  # a repeatable flag
        return [x for item in value for x in (flag, item)]
    return [flag, env_text(value)]


def _command_argv(command: str, extra: list[str]) -> list[str]:
    if command == "":
        return [*extra, "sms"]
    return [command, *extra]


PRESENT = sorted(f for f in FLAGS if f[1] in _options(f[0]))


@pytest.mark.parametrize("command, flag", PRESENT, ids=[f"{c or 'spear'} {f}" for c, f in PRESENT])
def test_flag_beats_env_on_the_command_line(capture, monkeypatch, command, flag):
    dotted, read = FLAGS[(command, flag)]
    key = next(k for k in KEYS if k.dotted == dotted)
    a, b = two_values(key)
    if isinstance(key.default, bool):
        a, b = True, False  # a store_true flag can only say yes
    monkeypatch.setenv(key.env, env_text(b))
    got = capture(_command_argv(command, _flag_argv(flag, a)))
    value = read(got) if read else key.get(got["config"])
    assert value == a, f"spear {command} {flag}: got {value!r}, the env said {b!r}"
    # and without the flag the env value is what the daemon gets
    got = capture(_command_argv(command, []))
    value = read(got) if read else key.get(got["config"])
    assert value == b


def test_global_sms_in_the_file_reaches_the_spearlet_and_gateway(capture, tmp_path):
    p = tmp_path / "spear.toml"
    p.write_text('[global]\nsms = "tcp://10.1.2.3:7700"\n')
    assert capture(["spearlet", "--config", str(p)])["config"].spearlet.sms == "tcp://10.1.2.3:7700"
    assert capture(["gateway", "--config", str(p)])["settings"].sms == "tcp://10.1.2.3:7700"
    # their own keys win
    p.write_text('[global]\nsms = "tcp://10.1.2.3:7700"\n[spearlet]\nsms = "tcp://10.0.0.5:1"\n'
                 '[gateway]\nsms = "tcp://10.0.0.6:2"\n')
    assert capture(["spearlet", "--config", str(p)])["config"].spearlet.sms == "tcp://10.0.0.5:1"
    assert capture(["gateway", "--config", str(p)])["settings"].sms == "tcp://10.0.0.6:2"
    # and SPEAR_CONFIG names the file as well as --config does
    os.environ["SPEAR_CONFIG"] = str(p)
    try:
        assert capture(["spearlet"])["config"].spearlet.sms == "tcp://10.0.0.5:1"
    finally:
        del os.environ["SPEAR_CONFIG"]
