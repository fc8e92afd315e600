"""``spear deploy ./dir --runtime python``: the code bundle, pinned requirements and
Python version the CLI sends, read back with ``spear functions show``; and the one-line
errors of a missing directory, a bad requirements file or an unresolvable requirement.

Resolution runs the real uv against the package index (humanize is small).
"""

from __future__ import annotations

import json

import pytest

from spear import Client, bundles, cli
from spear.client.requirements import this_python, uv_binary
from spear.cluster import Cluster
from tests.helpers import spear_cli

HANDLER = "import humanize\n\ndef handler(data):\n    return humanize.intcomma(int(data))\n"

needs_uv = pytest.mark.skipif(uv_binary() is None, reason="uv is not installed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("pydeploy") / "spear", spearlets=1, store="memory")
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


@pytest.fixture
def code(tmp_path):
    """A directory of Python code: ``prettyfn/main.py`` and its requirements.txt."""
    d = tmp_path / "prettyfn"
    d.mkdir()
    (d / "main.py").write_text(HANDLER)
    (d / "requirements.txt").write_text("# what main.py imports\nhumanize\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"never shipped")
    return d


def _show(cluster, name: str) -> dict:
    r = spear_cli("functions", "show", name, "--json", "--sms", cluster.sms_addr)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ------------------------------------------------------------------ what is sent


@needs_uv
def test_deploy_a_directory_ships_the_bundle_pins_and_python(cluster, code, tmp_path):
    r = spear_cli("deploy", str(code), "--runtime", "python", "--handler", "main:handler",
                  "--requirements", str(code / "requirements.txt"), "--memory-mb", "256",
                  "--sms", cluster.sms_addr, timeout=120)
    assert r.returncode == 0, r.stderr
    digest = bundles.sha256(bundles.pack(str(code)))
    assert f"packed 2 file(s) from {code}" in r.stderr  # main.py, requirements.txt; no .pyc
    assert f"sha256 {digest[:12]}" in r.stderr
    assert "resolving 1 requirement(s) for Python" in r.stderr
    assert "resolved to 1 package(s): humanize==" in r.stderr
    assert r.stdout.startswith("deployed prettyfn (process")  # the directory's name

    spec = _show(cluster, "prettyfn")
    assert spec["runtime"] == "process" and spec["handler"] == "main:handler"
    assert spec["artifact_sha256"] == digest
    assert spec["python"] == this_python()
    assert len(spec["requirements"]) == 1 and spec["requirements"][0].startswith("humanize==")
    assert spec["limits"]["memory_mb"] == 256  # the deploy's other flags still apply

    text = spear_cli("functions", "show", "prettyfn", "--sms", cluster.sms_addr)
    assert text.returncode == 0, text.stderr
    shown = dict(line.strip().split(":", 1) for line in text.stdout.splitlines()[1:])
    assert shown["artifact sha256"].strip() == digest
    assert shown["python"].strip() == this_python()
    assert shown["requirements"].strip() == spec["requirements"][0]
    assert "env" not in shown and "image" not in shown  # unset fields are left out


@needs_uv
def test_name_flag_requirement_lines_and_python_version(cluster, code):
    r = spear_cli("deploy", str(code), "--runtime", "python", "--handler", "main:handler",
                  "--name", "pretty2", "--requirement", "humanize>=4", "--python", "3.10",
                  "--sms", cluster.sms_addr, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "for Python 3.10" in r.stderr
    spec = _show(cluster, "pretty2")
    assert spec["python"] == "3.10" and spec["requirements"][0].startswith("humanize==")


def test_redeploying_unchanged_code_gives_the_same_sha256(cluster, code):
    shas = []
    for _ in range(2):
        r = spear_cli("deploy", str(code), "--runtime", "python", "--handler", "main:handler",
                      "--name", "same", "--sms", cluster.sms_addr, timeout=60)
        assert r.returncode == 0, r.stderr
        shas.append(_show(cluster, "same")["artifact_sha256"])
    assert shas[0] == shas[1] == bundles.sha256(bundles.pack(str(code)))
    (code / "main.py").write_text(HANDLER + "# changed\n")
    r = spear_cli("deploy", str(code), "--runtime", "python", "--handler", "main:handler",
                  "--name", "same", "--sms", cluster.sms_addr, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _show(cluster, "same")["artifact_sha256"] != shas[0]


def test_process_runtime_with_a_handler_ships_a_directory_too(cluster, code):
    r = spear_cli("deploy", str(code), "--runtime", "process", "--handler", "main:handler",
                  "--name", "asprocess", "--sms", cluster.sms_addr, timeout=60)
    assert r.returncode == 0, r.stderr
    spec = _show(cluster, "asprocess")
    assert spec["artifact_sha256"] == bundles.sha256(bundles.pack(str(code)))
    assert spec["python"] == this_python() and spec["requirements"] == []


def test_python_runtime_by_name_ships_nothing(cluster):
    """A bare name (no such directory) keeps its old meaning: the handler's code is on the nodes."""
    r = spear_cli("deploy", "noship", "--runtime", "python", "--handler", "json:dumps",
                  "--sms", cluster.sms_addr, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "packed" not in r.stderr
    spec = _show(cluster, "noship")
    assert spec["runtime"] == "process" and spec["artifact_sha256"] == ""
    assert spec["python"] == this_python()


def test_a_function_file_may_say_runtime_python(cluster, tmp_path):
    f = tmp_path / "fn.toml"
    f.write_text('[function]\nname = "fromfile"\nruntime = "python"\nhandler = "json:dumps"\n')
    r = spear_cli("deploy", "-f", str(f), "--sms", cluster.sms_addr, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _show(cluster, "fromfile")["runtime"] == "process"


def test_show_an_unknown_function_is_one_line(cluster):
    r = spear_cli("functions", "show", "nope", "--sms", cluster.sms_addr)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "NOT_FOUND" in r.stderr


# ------------------------------------------------------------------ one-line errors


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run ``spear ARGV`` in-process (no SMS is reached: the error comes first)."""
    code = cli.main([*argv, "--sms", "tcp://127.0.0.1:9", "--timeout", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("spear: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_directory(capsys, tmp_path):
    line = _one_line_error(capsys, ["deploy", str(tmp_path / "nope"), "--runtime", "python",
                                    "--handler", "main:handler"])
    assert line == f"spear: INVALID_ARGUMENT: {tmp_path / 'nope'} is not a directory (the code to ship)"


def test_empty_directory(capsys, tmp_path):
    line = _one_line_error(capsys, ["deploy", str(tmp_path), "--runtime", "python",
                                    "--handler", "main:handler"])
    assert "holds no files to ship" in line


@pytest.mark.parametrize("text, needle", [
    ("humanize\n--index-url https://evil.example/simple\n", "requirements.txt:2"),
    ("-e .\n", "requirements.txt:1"),
    ("https://example.com/pkg.whl\n", "requirements.txt:1"),
])
def test_bad_requirements_file(capsys, code, text, needle):
    (code / "requirements.txt").write_text(text)
    line = _one_line_error(capsys, ["deploy", str(code), "--runtime", "python", "--handler",
                                    "main:handler", "--requirements", str(code / "requirements.txt")])
    assert needle in line and "INVALID_ARGUMENT" in line


def test_missing_requirements_file(capsys, code):
    line = _one_line_error(capsys, ["deploy", str(code), "--runtime", "python", "--handler",
                                    "main:handler", "--requirements", str(code / "nope.txt")])
    assert "cannot read requirements file" in line and "nope.txt" in line


@needs_uv
def test_unresolvable_requirement(capsys, code):
    line = _one_line_error(capsys, ["deploy", str(code), "--runtime", "python", "--handler",
                                    "main:handler", "--requirement", "humanize==0.0.0.1"])
    assert line.startswith("spear: INVALID_ARGUMENT: requirements humanize==0.0.0.1 cannot be installed")
    assert "no version of humanize" in line


@pytest.mark.parametrize("version", ["3", "2.7", "3.11.2", "python3"])
def test_python_version_is_major_minor(capsys, code, version):
    line = _one_line_error(capsys, ["deploy", str(code), "--runtime", "python", "--handler",
                                    "main:handler", "--python", version])
    assert f"--python {version} is not a major.minor version" in line


def test_python_runtime_needs_a_handler(capsys, code):
    line = _one_line_error(capsys, ["deploy", str(code), "--runtime", "python"])
    assert "--runtime python needs --handler module:function" in line


@pytest.mark.parametrize("extra", [["--runtime", "wasm"], ["--runtime", "process", "--command", "cat"]])
def test_only_a_python_handler_ships_a_directory(capsys, code, extra):
    line = _one_line_error(capsys, ["deploy", str(code), *extra])
    assert "only a Python handler ships a directory" in line


def test_requirements_need_a_python_handler(capsys):
    line = _one_line_error(capsys, ["deploy", "x", "--runtime", "process", "--command", "cat",
                                    "--requirement", "humanize"])
    assert "apply to Python handlers only" in line


def test_help_says_the_handler_has_no_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["deploy", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "required with --runtime python: no default" in out
    assert "--requirements FILE" in out and "--python X.Y" in out


# ------------------------------------------------------------------ end to end


@needs_uv
def test_a_shipped_directory_runs_with_its_requirements(cluster, code):
    """The nodes have never seen the code nor humanize: the bundle and the pins bring both."""
    with Client(cluster.sms_addr) as c:
        if "process" not in c.nodes()[0].runtimes:
            pytest.skip("the process runtime is not available on this node")
    r = spear_cli("deploy", str(code), "--runtime", "python", "--handler", "main:handler",
                  "--requirements", str(code / "requirements.txt"), "--name", "pretty-e2e",
                  "--sms", cluster.sms_addr, timeout=120)
    assert r.returncode == 0, r.stderr
    r = spear_cli("invoke", "pretty-e2e", "1234567", "--sms", cluster.sms_addr, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1,234,567"
    # new code, same name: the next call runs it
    (code / "main.py").write_text(HANDLER.replace("intcomma(int(data))", "intword(int(data))"))
    r = spear_cli("deploy", str(code), "--runtime", "python", "--handler", "main:handler",
                  "--requirements", str(code / "requirements.txt"), "--name", "pretty-e2e",
                  "--sms", cluster.sms_addr, timeout=120)
    assert r.returncode == 0, r.stderr
    r = spear_cli("invoke", "pretty-e2e", "1200000", "--sms", cluster.sms_addr, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1.2 million"


@pytest.mark.parametrize("argv, shipped", [
    (["prettyfn", "--runtime", "python", "--handler", "m:f"], True),   # an existing directory
    (["prettyfn", "--runtime", "process", "--handler", "m:f"], False),  # a name, as before
    (["./prettyfn", "--runtime", "process", "--handler", "m:f"], True),  # written as a path
    (["other", "--runtime", "python", "--handler", "m:f"], False),     # no such directory
])
def test_when_the_positional_is_a_directory(monkeypatch, code, argv, shipped):
    from spear.cli import build_parser
    from spear.cli.functions import _code_dir

    monkeypatch.chdir(code.parent)
    args = build_parser("deploy").parse_args(["deploy", *argv])
    assert (_code_dir(args) is not None) == shipped
