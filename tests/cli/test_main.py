"""``spear.cli.main``: every command's help, the lazy registry, the daemons' logging options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spear import cli


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, (_, text) in cli.COMMANDS.items():
        assert name in out
    assert "bench" not in out.split("options:")[0]  # the harness is python -m bench, from a checkout


def test_no_command_prints_help_and_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_help_works(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: spear {command}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["config", "show", "--help"], ["config", "check", "--help"],
                                  ["store", "check", "--help"], ["store", "repair", "--help"]])
def test_nested_actions_help_works(argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0


def test_every_command_has_a_module_that_implements_it():
    for name in cli.COMMANDS:
        command = cli.load_command(name)
        assert callable(command.add_arguments) and callable(command.run)


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("argv, command", [
    (["nodes"], "nodes"),
    (["--log-level", "debug", "sms", "--listen", "x"], "sms"),
    (["--log-format=json", "deploy", "f"], "deploy"),
    (["--log-format", "text", "--log-level", "info,spear.mesh=debug", "ping"], "ping"),
    (["--version"], None),
    ([], None),
])
def test_command_in_skips_top_level_options(argv, command):
    assert cli.command_in(argv) == command


def _modules_after(code: str) -> set[str]:
    """The ``spear.*`` modules a fresh interpreter has imported after running ``code``."""
    script = (f"import sys\n{code}\n"
              "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('spear'))))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


#: command modules (and what they pull in) that importing the package must not load
HEAVY = {"spear.cli.daemons", "spear.cli.functions", "spear.cli.executions", "spear.cli.cluster",
         "spear.cli.gateway", "spear.cli.config", "spear.cli.store", "spear.cli.nodes",
         "spear.cli.keys", "spear.sms.daemon", "spear.spearlet.daemon", "spear.gateway",
         "spear.cluster", "spear.store"}


def test_importing_the_cli_imports_no_command_module():
    loaded = _modules_after("import spear.cli")
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_top_level_help_imports_no_command_module():
    loaded = _modules_after("import spear.cli\ntry:\n    spear.cli.main(['--help'])\n"
                            "except SystemExit:\n    pass")
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_a_command_imports_only_its_own_module():
    loaded = _modules_after("import spear.cli\ntry:\n    spear.cli.main(['deploy', '--help'])\n"
                            "except SystemExit:\n    pass")
    assert "spear.cli.functions" in loaded
    assert not loaded & (HEAVY - {"spear.cli.functions"}), sorted(loaded & HEAVY)


@pytest.mark.parametrize("module, command", [("spear.sms", "sms"), ("spear.spearlet", "spearlet"),
                                             ("spear.gateway", "gateway")])
def test_python_m_daemon_is_spear_daemon(module, command):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    r2 = subprocess.run([sys.executable, "-m", "spear", command, "--help"], capture_output=True, text=True,
                        timeout=60)
    assert r.returncode == r2.returncode == 0, r.stderr + r2.stderr
    assert r.stdout == r2.stdout


def test_daemons_take_the_logging_options_after_their_name(monkeypatch):
    """``python -m spear.gateway --log-level debug`` is ``spear gateway --log-level debug``."""
    ap = cli.build_parser("gateway")
    args = ap.parse_args(["gateway", "--log-level", "debug", "--log-format", "json", "--sms", "tcp://h:1"])
    assert (args.log_level, args.log_format, args.sms) == ("debug", "json", "tcp://h:1")
    args = ap.parse_args(["--log-level", "info", "gateway"])
    assert (args.log_level, args.log_format) == ("info", None)


def test_config_check_ignores_a_bad_environment_unless_asked(tmp_path, monkeypatch, capsys):
    """The command reports configuration errors itself; main's logging set-up does not pre-empt it."""
    path = tmp_path / "ok.toml"
    path.write_text("[sms]\nqueue_timeout = 5.0\n")
    monkeypatch.setenv("SPEAR_SMS_QUEUE_TIMEOUT", "-3")
    assert cli.main(["config", "check", str(path)]) == 0
    assert cli.main(["config", "check", str(path), "--env"]) == 2


def test_a_bad_log_level_flag_is_still_a_usage_error(capsys):
    assert cli.main(["--log-level", "loud", "config", "check", "/nonexistent.toml"]) == 2
    assert "log_level" in capsys.readouterr().err
