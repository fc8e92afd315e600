"""Configuration: defaults, per-layer precedence, and errors that say where."""

from __future__ import annotations

import pytest

from spear.config import (
    DEFAULT_SMS,
    Config,
    load_config,
    no_extensions,
    parse_labels,
)
from spear.errors import ConfigError, InvalidArgument


def write(tmp_path, text: str, name: str = "spear.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- defaults


def test_defaults():
    cfg, origin = load_config(env={}, with_origin=True)
    assert cfg == Config()
    assert origin == {}
    assert cfg.global_.log_level == "info"
    assert cfg.global_.timeout == 10.0
    assert cfg.global_.sms == DEFAULT_SMS
    assert cfg.sms.listen == "tcp://127.0.0.1:7700"
    assert cfg.sms.heartbeat_interval == 1.0
    assert cfg.sms.heartbeat_timeout == 5.0
    assert cfg.sms.cleanup_interval == 60.0
    assert cfg.storage.backend == "leveldb"
    assert cfg.spearlet.sms == DEFAULT_SMS
    assert cfg.spearlet.labels == {}
    assert cfg.spearlet.max_concurrency == 64
    assert cfg.runtimes.wasm.enabled is True
    assert cfg.runtimes.wasm.fuel is None
    assert cfg.runtimes.docker.memory_mb == 256
    assert load_config(env={}, with_origin=False) == cfg


def test_config_is_frozen():
    cfg = load_config(env={})
    with pytest.raises(AttributeError):
        cfg.sms.listen = "x"  # type: ignore[misc]


def test_unrelated_environment_is_ignored():
    cfg = load_config(env={"HOME": "/root", "SPEARMINT": "1", "SPEAR_NO_EXTENSIONS": "1"})
    assert cfg == Config()


# ---------------------------------------------------------------- precedence

KEY = "sms.heartbeat_timeout"


def test_file_overrides_defaults(tmp_path):
    p = write(tmp_path, "[sms]\nheartbeat_timeout = 7.5\n[runtimes.wasm]\nfuel = 1000\n")
    cfg, origin = load_config(p, env={}, with_origin=True)
    assert cfg.sms.heartbeat_timeout == 7.5
    assert cfg.runtimes.wasm.fuel == 1000
    assert cfg.sms.heartbeat_interval == 1.0  # untouched keys keep their default
    assert origin == {KEY: f"file {p}", "runtimes.wasm.fuel": f"file {p}"}


def test_env_overrides_file(tmp_path):
    p = write(tmp_path, "[sms]\nheartbeat_timeout = 7.5\nlisten = 'tcp://0.0.0.0:1'\n")
    cfg, origin = load_config(p, env={"SPEAR_SMS_HEARTBEAT_TIMEOUT": "8.5"}, with_origin=True)
    assert cfg.sms.heartbeat_timeout == 8.5
    assert cfg.sms.listen == "tcp://0.0.0.0:1"
    assert origin[KEY] == "env SPEAR_SMS_HEARTBEAT_TIMEOUT"
    assert origin["sms.listen"] == f"file {p}"


def test_flags_override_env_and_file(tmp_path):
    p = write(tmp_path, "[sms]\nheartbeat_timeout = 7.5\n")
    cfg, origin = load_config(p, env={"SPEAR_SMS_HEARTBEAT_TIMEOUT": "8.5"},
                              overrides={KEY: 9.5}, with_origin=True)
    assert cfg.sms.heartbeat_timeout == 9.5
    assert origin[KEY] == "flag"


def test_none_flags_are_ignored(tmp_path):
    p = write(tmp_path, "[sms]\nheartbeat_timeout = 7.5\n")
    cfg, origin = load_config(p, env={"SPEAR_SMS_HEARTBEAT_TIMEOUT": "8.5"},
                              overrides={KEY: None}, with_origin=True)
    assert cfg.sms.heartbeat_timeout == 8.5
    assert origin[KEY] == "env SPEAR_SMS_HEARTBEAT_TIMEOUT"


def test_each_layer_contributes_its_own_keys(tmp_path):
    p = write(tmp_path, "[global]\nlog_level = 'debug'\n")
    cfg, origin = load_config(
        p,
        env={"SPEAR_STORAGE_BACKEND": "memory"},
        overrides={"spearlet.max_concurrency": 3},
        with_origin=True,
    )
    assert (cfg.global_.log_level, cfg.storage.backend, cfg.spearlet.max_concurrency) == (
        "debug", "memory", 3)
    assert origin == {
        "global.log_level": f"file {p}",
        "storage.backend": "env SPEAR_STORAGE_BACKEND",
        "spearlet.max_concurrency": "flag",
    }


def test_spear_config_env_names_the_file(tmp_path):
    p = write(tmp_path, "[sms]\ncleanup_interval = 30.0\n")
    cfg = load_config(env={"SPEAR_CONFIG": str(p)})
    assert cfg.sms.cleanup_interval == 30.0


def test_explicit_path_beats_spear_config(tmp_path):
    a = write(tmp_path, "[sms]\ncleanup_interval = 30.0\n", "a.toml")
    b = write(tmp_path, "[sms]\ncleanup_interval = 40.0\n", "b.toml")
    assert load_config(b, env={"SPEAR_CONFIG": str(a)}).sms.cleanup_interval == 40.0


def test_env_values_are_typed():
    cfg = load_config(env={
        "SPEAR_RUNTIMES_WASM_FUEL": "5000",
        "SPEAR_RUNTIMES_DOCKER_ENABLED": "false",
        "SPEAR_SPEARLET_MAX_CONCURRENCY": "12",
        "SPEAR_GLOBAL_TIMEOUT": "2.5",
    })
    assert cfg.runtimes.wasm.fuel == 5000
    assert cfg.runtimes.docker.enabled is False
    assert cfg.spearlet.max_concurrency == 12
    assert cfg.global_.timeout == 2.5


def test_spear_sms_shorthand():
    cfg, origin = load_config(env={"SPEAR_SMS": "tcp://10.0.0.1:7700"}, with_origin=True)
    assert cfg.global_.sms == "tcp://10.0.0.1:7700"
    assert cfg.spearlet.sms == "tcp://10.0.0.1:7700"
    assert origin["global.sms"] == origin["spearlet.sms"] == "env SPEAR_SMS"
    assert cfg.sms.listen == "tcp://127.0.0.1:7700"  # the SMS's own listen is unrelated


def test_specific_env_beats_shorthand():
    cfg = load_config(env={"SPEAR_SMS": "tcp://a:1", "SPEAR_SPEARLET_SMS": "tcp://b:2"})
    assert cfg.global_.sms == "tcp://a:1"
    assert cfg.spearlet.sms == "tcp://b:2"


def test_empty_spear_sms_is_ignored():
    assert load_config(env={"SPEAR_SMS": ""}).global_.sms == DEFAULT_SMS


def test_labels_from_env():
    cfg = load_config(env={"SPEAR_SPEARLET_LABELS": "zone=eu-1, gpu = yes,k=a=b,,"})
    assert cfg.spearlet.labels == {"zone": "eu-1", "gpu": "yes", "k": "a=b"}


def test_labels_from_file(tmp_path):
    p = write(tmp_path, "[spearlet.labels]\nzone = 'x'\n")
    assert load_config(p, env={}).spearlet.labels == {"zone": "x"}


def test_parse_labels():
    assert parse_labels("") == {}
    assert parse_labels("a=1") == {"a": "1"}
    with pytest.raises(ValueError, match="key=value"):
        parse_labels("a=1,b")


def test_no_extensions():
    assert no_extensions({"SPEAR_NO_EXTENSIONS": "1"}) is True
    assert no_extensions({"SPEAR_NO_EXTENSIONS": "0"}) is False
    assert no_extensions({}) is False


# ---------------------------------------------------------------- errors


def check_error(exc: ConfigError, *parts: str) -> None:
    msg = str(exc)
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert isinstance(exc, InvalidArgument)
    assert exc.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("text, parts", [
    ("[nope]\nx = 1\n", ["unknown section", "[nope]"]),
    ("[runtimes.nope]\nx = 1\n", ["unknown section", "runtimes.nope"]),
    ("nope = 1\n", ["unknown section", "nope"]),
    ("sms = 3\n", ["[sms]", "3"]),
    ("[sms]\nlisen = 'tcp://x:1'\n", ["unknown key", "[sms]", "lisen", "'tcp://x:1'"]),
    ("[sms]\nheartbeat_interval = 'fast'\n", ["[sms]", "heartbeat_interval", "'fast'"]),
    ("[sms]\nheartbeat_interval = -1.0\n", ["[sms]", "heartbeat_interval", "-1.0"]),
    ("[sms]\ncleanup_interval = 0\n", ["[sms]", "cleanup_interval", "= 0"]),
    ("[spearlet]\nmax_concurrency = 1.5\n", ["[spearlet]", "max_concurrency", "1.5"]),
    ("[spearlet]\nmax_concurrency = 0\n", ["[spearlet]", "max_concurrency", "= 0"]),
    ("[storage]\nbackend = 'sqlite'\n", ["[storage]", "backend", "'sqlite'"]),
    ("[runtimes.wasm]\nfuel = 0\n", ["[runtimes.wasm]", "fuel", "= 0"]),
    ("[runtimes.docker]\nmemory_mb = 2\n", ["[runtimes.docker]", "memory_mb", "= 2"]),
    ("[global]\nsms = ''\n", ["[global]", "sms", "''"]),
    ("[spearlet]\nlabels = 'a=b'\n", ["[spearlet]", "labels", "'a=b'"]),
    ("[sms]\nmax_queue = 0\n", ["[sms]", "max_queue", "= 0"]),
    ("[sms]\ndeadline_grace = 0\n", ["[sms]", "deadline_grace", "= 0"]),
    ("[sms]\ndefault_run_timeout = -5.0\n", ["[sms]", "default_run_timeout", "-5.0"]),
], ids=["section", "runtime-section", "top-level-key", "section-not-table", "key",
        "wrong-type", "out-of-range", "zero", "float-for-int", "int-range", "enum",
        "runtime-range", "docker-min", "empty-address", "labels-not-table",
        "max-queue", "deadline-grace", "default-run-timeout"])
def test_file_errors_name_path_key_value(tmp_path, text, parts):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    check_error(ei.value, str(p), *parts)


def test_bad_toml_names_the_file(tmp_path):
    p = write(tmp_path, "[sms\nlisten = \n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    check_error(ei.value, str(p), "invalid TOML")


def test_missing_file_names_the_file(tmp_path):
    p = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as ei:
        load_config(p, env={})
    check_error(ei.value, str(p), "not found")


def test_missing_file_from_spear_config(tmp_path):
    p = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as ei:
        load_config(env={"SPEAR_CONFIG": str(p)})
    check_error(ei.value, str(p), "not found")


@pytest.mark.parametrize("var, value, parts", [
    ("SPEAR_SMS_HEARTBEAT_INTERVAL", "abc", ["[sms]", "heartbeat_interval"]),
    ("SPEAR_SMS_HEARTBEAT_INTERVAL", "-2", ["[sms]", "heartbeat_interval"]),
    ("SPEAR_SPEARLET_MAX_CONCURRENCY", "lots", ["[spearlet]", "max_concurrency"]),
    ("SPEAR_SPEARLET_MAX_CONCURRENCY", "0", ["[spearlet]", "max_concurrency"]),
    ("SPEAR_RUNTIMES_WASM_ENABLED", "maybe", ["[runtimes.wasm]", "enabled"]),
    ("SPEAR_RUNTIMES_WASM_FUEL", "0", ["[runtimes.wasm]", "fuel"]),
    ("SPEAR_GLOBAL_LOG_LEVEL", "loud", ["[global]", "log_level"]),
    ("SPEAR_STORAGE_BACKEND", "sqlite", ["[storage]", "backend"]),
    ("SPEAR_SPEARLET_LABELS", "zone=1,gpu", ["[spearlet]", "labels"]),
    ("SPEAR_SMS_LISTEN", "", ["[sms]", "listen"]),
], ids=["float", "float-range", "int", "int-range", "bool", "optional-int-range", "enum",
        "backend", "labels", "empty-address"])
def test_env_errors_name_environment_key_value(var, value, parts):
    with pytest.raises(ConfigError) as ei:
        load_config(env={var: value})
    check_error(ei.value, "environment", *parts, repr(value))


@pytest.mark.parametrize("overrides, parts", [
    ({"nope.x": 1}, ["unknown section", "[nope]"]),
    ({"sms.lisen": "tcp://x:1"}, ["unknown key", "[sms]", "lisen", "'tcp://x:1'"]),
    ({"sms.heartbeat_interval": "x"}, ["[sms]", "heartbeat_interval", "'x'"]),
    ({"sms.heartbeat_interval": -1.0}, ["[sms]", "heartbeat_interval", "-1.0"]),
    ({"runtimes.wasm.fuel": 0}, ["[runtimes.wasm]", "fuel", "= 0"]),
    ({"storage.backend": "sqlite"}, ["[storage]", "backend", "'sqlite'"]),
], ids=["section", "key", "wrong-type", "out-of-range", "runtime-range", "enum"])
def test_flag_errors_name_command_line_key_value(overrides, parts):
    with pytest.raises(ConfigError) as ei:
        load_config(env={}, overrides=overrides)
    check_error(ei.value, "command line", *parts)


@pytest.mark.parametrize("interval, timeout", [(5.0, 5.0), (2.0, 1.0)], ids=["equal", "below"])
def test_heartbeat_timeout_must_exceed_interval(interval, timeout):
    with pytest.raises(ConfigError) as ei:
        load_config(env={}, overrides={"sms.heartbeat_interval": interval,
                                       "sms.heartbeat_timeout": timeout})
    check_error(ei.value, "heartbeat_timeout", str(timeout), "heartbeat_interval", str(interval))


def test_heartbeat_rule_applies_to_the_merged_result(tmp_path):
    # each layer is valid alone; only together do they break the rule
    p = write(tmp_path, "[sms]\nheartbeat_interval = 3.0\n")
    with pytest.raises(ConfigError):
        load_config(p, env={"SPEAR_SMS_HEARTBEAT_TIMEOUT": "2.0"})
    # and a layer may fix what a lower layer would have broken
    cfg = load_config(p, env={"SPEAR_SMS_HEARTBEAT_TIMEOUT": "2.0"},
                      overrides={"sms.heartbeat_timeout": 9.0})
    assert (cfg.sms.heartbeat_interval, cfg.sms.heartbeat_timeout) == (3.0, 9.0)


def test_heartbeat_rule_error_names_the_source():
    with pytest.raises(ConfigError) as ei:
        load_config(env={"SPEAR_SMS_HEARTBEAT_TIMEOUT": "0.5"})
    msg = str(ei.value)
    assert "environment" in msg or "SPEAR_SMS_HEARTBEAT_TIMEOUT" in msg, msg
