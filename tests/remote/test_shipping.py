"""What a decorated function deploys with, without a cluster: spec, bundle, names."""

from __future__ import annotations

import io
import sys
import zipfile

import cloudpickle
import pytest

import spear
from spear import bundles, errors
from spear.client.requirements import this_python
from spear.remote import connection as connection_module
from spear.remote.connection import Connection
from spear.remote.shipping import HANDLER, in_bundle, runner_requirements, runner_source

NOWHERE = "tcp://127.0.0.1:9"  # never contacted: these tests only build specs


def double(n):
    return 2 * n


@pytest.fixture
def resolved(monkeypatch):
    """Record each resolution instead of asking the package index."""
    calls = []

    def fake_resolve(lines, python=None, progress=None):
        calls.append((tuple(lines), python))
        return [f"{line.split('>')[0].split('=')[0]}==1.0" for line in lines]

    monkeypatch.setattr(connection_module, "resolve", fake_resolve)
    return calls


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A package ``shiplib`` in a working directory, importable from it."""
    root = tmp_path / "project"
    (root / "shiplib").mkdir(parents=True)
    (root / "shiplib" / "__init__.py").write_text("")
    (root / "shiplib" / "text.py").write_text("def shout(s):\n    return s.upper() + '!'\n")
    (root / "notes.txt").write_text("data\n")
    monkeypatch.syspath_prepend(str(root))
    for name in ("shiplib", "shiplib.text"):
        sys.modules.pop(name, None)
    yield root
    for name in ("shiplib", "shiplib.text"):
        sys.modules.pop(name, None)


def _conn(**kwargs):
    return Connection(NOWHERE, **kwargs)


def _names(data: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(data)).namelist()


def test_spec_ships_the_runner_and_pins_its_needs(resolved):
    conn = _conn()
    try:
        spec = conn.spec_of(spear.function(double))
    finally:
        conn.close()
    assert (spec.runtime, spec.handler, spec.workdir) == ("process", HANDLER, "")
    assert spec.handler == "_spear_runner:run" and spec.python == this_python()
    assert spec.artifact_sha256 == bundles.sha256(spec.artifact)
    assert _names(spec.artifact) == ["_spear_runner.py"]
    assert zipfile.ZipFile(io.BytesIO(spec.artifact)).read("_spear_runner.py") == runner_source()
    assert f"cloudpickle=={cloudpickle.__version__}" in runner_requirements()
    assert resolved == [(tuple(sorted(runner_requirements())), this_python())]
    assert spec.requirements == ["cloudpickle==1.0", "msgspec==1.0"]
    assert spec.name.startswith("py-double-")


def test_requirements_of_connection_and_function_resolved_once_per_set(resolved):
    conn = _conn(requirements=["humanize"])
    try:
        a = conn.spec_of(spear.function(requirements=["tomli>=2"])(double))
        b = conn.spec_of(spear.function(requirements=["tomli>=2"], timeout=5)(double))
        c = conn.spec_of(spear.function(double))
    finally:
        conn.close()
    assert [lines for lines, _ in resolved] == [
        tuple(sorted([*runner_requirements(), "humanize", "tomli>=2"])),
        tuple(sorted([*runner_requirements(), "humanize"]))]
    assert a.requirements == b.requirements and "humanize==1.0" in c.requirements
    assert len({a.name, b.name, c.name}) == 3  # limits and requirements are in the name


def test_python_version_goes_to_the_spec(project, resolved):
    import shiplib.text

    conn = _conn(working_dir=project)
    try:
        spec = conn.spec_of(spear.function(python="3.12")(shiplib.text.shout))
    finally:
        conn.close()
    assert spec.python == "3.12" and resolved[0][1] == "3.12"
    with pytest.raises(errors.InvalidArgument, match="3.11"):
        spear.function(python="python3")(double)


def test_code_shipped_by_value_is_refused_for_another_python(resolved):
    """Pickled code objects load only on the Python that made them."""
    other = "3.12" if this_python() != "3.12" else "3.13"
    conn = _conn()
    try:
        with pytest.raises(errors.InvalidArgument, match="travels by value"):
            conn.spec_of(spear.function(python=other)(double))
        assert conn.spec_of(spear.function(python=this_python())(double)).python == this_python()
    finally:
        conn.close()


def test_bad_requirements_are_refused_at_once():
    with pytest.raises(errors.InvalidArgument, match="not a package name"):
        spear.function(requirements=["-r /etc/passwd"])(double)
    with pytest.raises(TypeError, match="list of lines"):
        spear.function(requirements="humanize")(double)
    with pytest.raises(errors.InvalidArgument):
        _conn(requirements=["https://example.com/x.whl"])


def test_unresolvable_requirement_fails_the_call_clearly():
    conn = _conn()
    try:
        fn = spear.function(requirements=["spear-no-such-package-xyz==1.0"])(double)
        with pytest.raises(errors.InvalidArgument, match="spear-no-such-package-xyz"):
            conn.spec_of(fn)
    finally:
        conn.close()


def test_working_dir_is_packed_at_connect(project, resolved):
    conn = _conn(working_dir=project)
    try:
        spec = conn.spec_of(spear.function(double))
    finally:
        conn.close()
    assert sorted(_names(spec.artifact)) == ["_spear_runner.py", "notes.txt", "shiplib/__init__.py",
                                     "shiplib/text.py"]
    assert spec.artifact_sha256 == conn.code.sha256 == bundles.sha256(spec.artifact)


def test_a_changed_working_dir_changes_the_name(project, resolved):
    fn = spear.function(double)
    names = []
    for text in ("one\n", "two\n"):
        (project / "notes.txt").write_text(text)
        conn = _conn(working_dir=project)
        try:
            names.append(conn.spec_of(fn).name)
        finally:
            conn.close()
    assert names[0] != names[1]


@pytest.mark.parametrize("bad", ["missing", "file"])
def test_a_bad_working_dir_fails_at_connect(tmp_path, bad):
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.InvalidArgument, match="not a directory"):
        spear.connect(NOWHERE, working_dir=tmp_path / bad)


def test_a_working_dir_may_not_hold_the_runner(tmp_path):
    (tmp_path / "_spear_runner.py").write_text("")
    with pytest.raises(errors.InvalidArgument, match="Spear's runner"):
        _conn(working_dir=tmp_path)


def test_modules_in_the_working_dir_go_by_reference(project):
    import shiplib.text

    fn = spear.function(shiplib.text.shout)
    assert in_bundle(shiplib.text, str(project.resolve()))
    assert not in_bundle(shiplib.text, str(project / "shiplib"))  # not importable by that name
    by_reference = fn.pickled(str(project.resolve()))
    assert b"shiplib.text" in by_reference and b"upper" not in by_reference
    assert "shiplib.text" not in cloudpickle.list_registry_pickle_by_value()
    by_value = fn.pickled(None)  # no working dir: the module is not on the node
    assert b"upper" in by_value
    assert "shiplib.text" in cloudpickle.list_registry_pickle_by_value()
    cloudpickle.unregister_pickle_by_value(shiplib.text)


def test_modules_outside_the_working_dir_keep_going_by_value(project):
    other = project.parent / "outside"
    other.mkdir()
    (other / "outmod.py").write_text("def out():\n    return 'outside-marker'\n")
    sys.path.insert(0, str(other))
    try:
        import outmod

        blob = spear.function(outmod.out).pickled(str(project.resolve()))
        assert b"outside-marker" in blob
    finally:
        sys.path.remove(str(other))
        sys.modules.pop("outmod", None)
        cloudpickle.unregister_pickle_by_value(outmod)


def test_remote_frames_of_the_working_dir_name_local_files(project):
    from spear.remote.futures import with_local_source
    from spear.remote.shipping import code_bundle

    code = code_bundle(project)
    remote = (f'Traceback (most recent call last):\n  File "/var/cache/spear/x/code/{code.sha256}'
              '/shiplib/text.py", line 2, in shout\n    return s.upper()\nTypeError: no\n')
    local = with_local_source(remote, None, code)
    assert f'File "{project.resolve()}/shiplib/text.py", line 2, in shout' in local
    assert local.endswith("    return s.upper()\nTypeError: no\n")
