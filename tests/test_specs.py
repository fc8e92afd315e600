"""spear.specs: the rules every spec meets where it comes in (SMS and Spearlet)."""

from __future__ import annotations

import hashlib

import pytest

from spear import errors, protocol as P, specs


@pytest.mark.parametrize("line", [
    "humanize", "humanize==4.17.0", "requests[socks] >=2.31, <3", "numpy~=1.26",
    "colorama==0.4.6 ; sys_platform == 'win32'", "zope.interface>=5", "a_b-c.d===1.0",
])
def test_plain_requirement_lines_pass(line):
    assert specs.check_requirement(line) == line.strip()


@pytest.mark.parametrize("line", [
    "-r /etc/shadow", "--index-url http://evil/simple", "-e .", "./local/pkg", "/abs/pkg.whl",
    "pkg @ file:///etc/passwd", "pkg @ https://evil/pkg.whl", "git+https://x/y.git", "",
    "pkg; python_version > '3' @ x", "pkg==1.0 --hash=sha256:00", "pkg\\",
])
def test_options_paths_and_urls_are_refused(line):
    with pytest.raises(errors.InvalidArgument, match="not a package name"):
        specs.check_requirement(line)


def test_requirements_belong_to_python_handlers_only():
    with pytest.raises(errors.InvalidArgument, match="Python handlers only"):
        specs.check(P.FunctionSpec(name="w", runtime="wasm", artifact=b"x", requirements=["a"]))
    with pytest.raises(errors.InvalidArgument, match="Python handlers only"):
        specs.check(P.FunctionSpec(name="c", runtime="process", command=["true"], python="3.11"))
    specs.check(P.FunctionSpec(name="h", runtime="process", handler="m:f", requirements=["a"],
                               python="3.11"))


def test_an_artifact_must_match_the_sha256_it_comes_with():
    art = b"bundle"
    good = hashlib.sha256(art).hexdigest()
    specs.check(P.FunctionSpec(name="h", runtime="process", handler="m:f", artifact=art,
                               artifact_sha256=good))
    with pytest.raises(errors.InvalidArgument, match="SHA-256"):
        specs.check(P.FunctionSpec(name="h", runtime="process", handler="m:f", artifact=art,
                                   artifact_sha256="0" * 64))


def test_a_wasm_function_may_name_its_artifact_by_sha256_alone():
    specs.check(P.FunctionSpec(name="w", runtime="wasm", artifact_sha256="a" * 64))
    with pytest.raises(errors.InvalidArgument, match="needs an artifact"):
        specs.check(P.FunctionSpec(name="w", runtime="wasm"))


def test_the_wire_refuses_a_malformed_sha256_or_python_version():
    import msgspec

    for bad in ({"artifact_sha256": "XYZ"}, {"python": "three"}, {"python": "2.7"}):
        raw = msgspec.msgpack.encode({"name": "w", "runtime": "wasm", **bad})
        with pytest.raises(msgspec.ValidationError):
            msgspec.msgpack.decode(raw, type=P.FunctionSpec)
