"""``spear config show|check`` and the example configuration file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from spear import cli
from spear.cli.config import effective, parse_override, render_text, walk
from spear.config import Config, load_config
from spear.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "spear.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No SPEAR_* variable of the calling shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("SPEAR_") and name != "SPEAR_NO_EXTENSIONS":
            monkeypatch.delenv(name)


def write(tmp_path, text: str, name: str = "spear.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def source_in_text(text: str, key: str) -> tuple[str, str]:
    """(value literal, source) of ``section.key`` in ``config show`` text output."""
    section, name = key.rsplit(".", 1)
    body = text.split(f"[{section}]\n", 1)[1].split("\n\n", 1)[0]
    m = re.search(rf"^#? ?{re.escape(name)} = (.*?)\s+# (.+)$", body, re.M)
    assert m, f"{key} not in output"
    return m.group(1), m.group(2)


# ---------------------------------------------------------------- show: precedence per layer

KEY = "sms.queue_timeout"


def test_show_defaults_only():
    eff = effective(None, env={})
    assert eff["file"] is None
    assert {v["source"] for v in eff["values"].values()} == {"default"}
    assert eff["values"][KEY] == {"value": 30.0, "source": "default"}
    assert eff["values"]["runtimes.wasm.fuel"] == {"value": None, "source": "default"}
    # every key of every section is listed
    assert list(eff["values"]) == [k for k, _ in walk(Config())]


@pytest.mark.parametrize("layers, value, source", [
    ((), 30.0, "default"),
    (("file",), 11.0, "file"),
    (("env",), 12.0, "env SPEAR_SMS_QUEUE_TIMEOUT"),
    (("flag",), 13.0, "flag"),
    (("file", "env"), 12.0, "env SPEAR_SMS_QUEUE_TIMEOUT"),
    (("file", "flag"), 13.0, "flag"),
    (("env", "flag"), 13.0, "flag"),
    (("file", "env", "flag"), 13.0, "flag"),
])
def test_show_precedence_per_layer(tmp_path, layers, value, source):
    path = write(tmp_path, "[sms]\nqueue_timeout = 11.0\n") if "file" in layers else None
    env = {"SPEAR_SMS_QUEUE_TIMEOUT": "12"} if "env" in layers else {}
    flags = {KEY: 13.0} if "flag" in layers else {}
    eff = effective(path, env=env, overrides=flags)
    got = eff["values"][KEY]
    assert got["value"] == value
    if source == "file":
        source = f"file {path}"
    assert got["source"] == source
    lit, src = source_in_text(render_text(eff), KEY)
    assert float(lit) == value and src == source
    # a key no layer touched stays a default
    assert eff["values"]["sms.listen"]["source"] == "default"


def test_show_through_the_command(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, '[sms]\nqueue_timeout = 11.0\nlisten = "tcp://127.0.0.1:7800"\n'
                           '[spearlet]\nlabels = { zone = "a" }\n')
    monkeypatch.setenv("SPEAR_SMS_LISTEN", "tcp://127.0.0.1:7900")
    monkeypatch.setenv("SPEAR_SMS", "tcp://10.0.0.1:7700")
    code, out, err = run(["--log-level", "debug", "config", "show", "--config", str(path),
                          "--set", "sms.max_executions=5000", "--set", "storage.backend=memory"],
                         capsys)
    assert code == 0, err
    assert out.startswith(f"# effective Spear configuration; file: {path}")
    assert source_in_text(out, "sms.queue_timeout") == ("11.0", f"file {path}")
    assert source_in_text(out, "sms.listen") == ('"tcp://127.0.0.1:7900"', "env SPEAR_SMS_LISTEN")
    assert source_in_text(out, "global.sms") == ('"tcp://10.0.0.1:7700"', "env SPEAR_SMS")
    assert source_in_text(out, "spearlet.sms") == ('"tcp://10.0.0.1:7700"', "env SPEAR_SMS")
    assert source_in_text(out, "sms.max_executions") == ("5000", "flag")
    assert source_in_text(out, "storage.backend") == ('"memory"', "flag")
    assert source_in_text(out, "global.log_level") == ('"debug"', "flag")
    assert source_in_text(out, "spearlet.labels") == ('{ "zone" = "a" }', f"file {path}")
    assert source_in_text(out, "runtimes.wasm.fuel") == ("(unset)", "default")

    code, out, _ = run(["config", "show", "--config", str(path), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["file"] == str(path)
    assert doc["values"]["sms.listen"] == {"value": "tcp://127.0.0.1:7900",
                                           "source": "env SPEAR_SMS_LISTEN"}
    assert doc["values"]["spearlet.labels"]["value"] == {"zone": "a"}


def test_show_text_is_a_config_file_that_loads_to_the_same_values(tmp_path):
    src = write(tmp_path, '[sms]\nqueue_timeout = 11.0\n[runtimes.wasm]\nfuel = 1000\n'
                          '[security]\nadmin = ["a.key"]\n[spearlet]\nlabels = { "k/x" = "v" }\n')
    cfg = load_config(src, env={})
    out = write(tmp_path, render_text(effective(src, env={})), "shown.toml")
    assert load_config(out, env={}) == cfg


def test_show_never_prints_tokens(tmp_path, capsys):
    path = write(tmp_path, '[security]\ntokens = { "s3cret-token" = "admin", "other" = "viewer" }\n')
    for extra in ([], ["--json"]):
        code, out, _ = run(["config", "show", "--config", str(path), *extra], capsys)
        assert code == 0
        assert "s3cret-token" not in out
        assert "2 hidden" in out


def test_show_reports_a_bad_layer_and_exits_2(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "[sms]\nqueue_timeout = -1\n")
    code, out, err = run(["config", "show", "--config", str(path)], capsys)
    assert code == 2 and out == ""
    assert str(path) in err and "queue_timeout" in err and "-1" in err
    code, _, err = run(["config", "show", "--set", "sms.nope=1"], capsys)
    assert code == 2 and "command line" in err and "nope" in err
    code, _, err = run(["config", "show", "--set", "novalue"], capsys)
    assert code == 2 and "section.key=VALUE" in err
    monkeypatch.setenv("SPEAR_SMS_MAX_EXECUTIONS", "lots")
    code, _, err = run(["config", "show"], capsys)
    assert code == 2 and "environment" in err and "max_executions" in err and "'lots'" in err


@pytest.mark.parametrize("text, value", [
    ("sms.max_executions=5000", 5000),
    ("sms.queue_timeout=2.5", 2.5),
    ("runtimes.wasm.enabled=false", False),
    ("sms.listen=tcp://0.0.0.0:7700", "tcp://0.0.0.0:7700"),
    ('global.sms="tcp://h:1"', "tcp://h:1"),
    ('spearlet.labels={zone="a"}', {"zone": "a"}),
    ("security.admin=[\"a\", \"b\"]", ["a", "b"]),
])
def test_parse_override(text, value):
    key, got = parse_override(text)
    assert key == text.split("=", 1)[0] and got == value


# ---------------------------------------------------------------- check


def test_check_valid_file(tmp_path, capsys):
    path = write(tmp_path, "[sms]\nqueue_timeout = 5.0\n")
    code, out, _ = run(["config", "check", str(path)], capsys)
    assert (code, out) == (0, f"{path}: ok\n")
    code, out, _ = run(["config", "check", str(path), "--json"], capsys)
    assert code == 0 and json.loads(out) == {"file": str(path), "ok": True}


@pytest.mark.parametrize("text, needles", [
    ("[sms]\nlisten_on = 'x'\n", ["unknown key", "[sms] listen_on"]),
    ("[smss]\nlisten = 'x'\n", ["unknown section", "[smss]"]),
    ("[sms]\nmax_executions = 'many'\n", ["[sms] max_executions", "'many'"]),
    ("[sms]\nmax_executions = 5\n", ["[sms] max_executions", "5", ">= 100"]),
    ("[global]\nlog_level = 'loud'\n", ["[global] log_level", "'loud'"]),
    ("[runtimes.wasm]\nfuel = 0\n", ["[runtimes.wasm] fuel", "0"]),
    ("[runtimes.lua]\nenabled = true\n", ["unknown section", "runtimes.lua"]),
    ("[sms]\nheartbeat_timeout = 0.5\n", ["heartbeat_timeout = 0.5", "must exceed",
                                          "heartbeat_interval"]),
    ("[sms\nlisten = 1\n", ["invalid TOML"]),
    ("sms = 3\n", ["[sms] must be a table"]),
])
def test_check_invalid_file_names_file_key_and_value(tmp_path, capsys, text, needles):
    path = write(tmp_path, text)
    code, out, err = run(["config", "check", str(path)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("spear: configuration error: ")
    assert str(path) in err
    for needle in needles:
        assert needle in err, (needle, err)
    code, out, _ = run(["config", "check", str(path), "--json"], capsys)
    doc = json.loads(out)
    assert code == 2 and doc["ok"] is False and str(path) in doc["error"]


def test_check_missing_file(tmp_path, capsys):
    code, _, err = run(["config", "check", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "not found" in err


def test_check_ignores_the_environment_unless_asked(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "[sms]\nqueue_timeout = 5.0\n")
    monkeypatch.setenv("SPEAR_SMS_QUEUE_TIMEOUT", "-3")
    code, _, _ = run(["config", "check", str(path)], capsys)
    assert code == 0
    code, _, err = run(["config", "check", str(path), "--env"], capsys)
    assert code == 2 and "queue_timeout" in err


# ---------------------------------------------------------------- subprocess


def spear_py(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = "import sys; from spear.cli import main; sys.exit(main(sys.argv[1:]))"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=60, cwd=ROOT)


def test_subprocess_show_and_check(tmp_path):
    path = write(tmp_path, "[sms]\nqueue_timeout = 11.0\n")
    p = spear_py("config", "show", "--config", str(path), "--json",
                 env={"SPEAR_SMS_CLEANUP_INTERVAL": "90"})
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["values"]["sms.queue_timeout"]["source"] == f"file {path}"
    assert doc["values"]["sms.cleanup_interval"] == {"value": 90.0,
                                                     "source": "env SPEAR_SMS_CLEANUP_INTERVAL"}
    assert spear_py("config", "check", str(EXAMPLE)).returncode == 0
    bad = write(tmp_path, "[sms]\nqueue_timeout = 0\n", "bad.toml")
    p = spear_py("config", "check", str(bad))
    assert p.returncode == 2 and "queue_timeout" in p.stderr


def test_python_m_spear_config(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPEAR_")}
    ok = subprocess.run([sys.executable, "-m", "spear", "config", "check", str(EXAMPLE)],
                        capture_output=True, text=True, env=clean, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = write(tmp_path, "[sms]\nmax_executions = 1\n")
    p = subprocess.run([sys.executable, "-m", "spear", "config", "check", str(bad)],
                       capture_output=True, text=True, env=clean, timeout=60)
    assert p.returncode == 2 and "max_executions" in p.stderr
    p = subprocess.run([sys.executable, "-m", "spear", "config", "show", "--json"],
                       capture_output=True, text=True, env={**clean, "SPEAR_SMS_QUEUE_TIMEOUT": "7"},
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["values"]["sms.queue_timeout"]["source"] == \
        "env SPEAR_SMS_QUEUE_TIMEOUT"


# ---------------------------------------------------------------- the example file


def test_example_loads_and_holds_the_defaults():
    cfg, origin = load_config(EXAMPLE, env={}, with_origin=True)
    assert cfg == Config(), "examples/spear.toml must show the built-in defaults"
    assert origin and all(v == f"file {EXAMPLE}" for v in origin.values())


def test_example_mentions_every_key():
    text = EXAMPLE.read_text()
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^\[([\w.]+)\]\s*$", line)
        if m:
            current = m.group(1)
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    for key, _ in walk(Config()):
        section, name = key.rsplit(".", 1)
        assert section in sections, f"[{section}] missing from {EXAMPLE.name}"
        # set, or shown commented out (no TOML form for "unset")
        assert re.search(rf"^#? ?{re.escape(name)} = ", sections[section], re.M), \
            f"{key} missing from {EXAMPLE.name}"
    tomllib.loads(text)  # and it stays plain TOML


def test_config_error_is_the_loaders():
    with pytest.raises(ConfigError):
        effective(EXAMPLE.parent / "missing.toml", env={})
