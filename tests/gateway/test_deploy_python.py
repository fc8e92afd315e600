"""POST /v1/functions with a Python handler's code: runtime ``python`` (the alias of
``process``), a zip bundle as the artifact, ``artifact_sha256``, ``requirements`` and
``python``, in each of the four encodings; read back with GET /v1/functions/{name}."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest

from spear import bundles

from .test_api import MSGPACK, assert_error

PINS = ["humanize==4.9.0"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("pycode")
    (d / "main.py").write_text("import humanize\n\ndef handler(data):\n"
                               "    return humanize.intcomma(int(data))\n")
    return bundles.pack(str(d))


def _spec(name: str, bundle: bytes, **kw) -> dict:
    return {"name": name, "runtime": "python", "handler": "main:handler",
            "artifact_sha256": bundles.sha256(bundle), "requirements": PINS, "python": "3.11", **kw}


def _assert_registered(api, name: str, bundle: bytes) -> None:
    spec = api.get(f"/v1/functions/{name}").json()
    assert spec["runtime"] == "process" and spec["handler"] == "main:handler"
    assert spec["artifact_sha256"] == bundles.sha256(bundle) and spec["artifact"] is None
    assert spec["requirements"] == PINS and spec["python"] == "3.11"


def test_python_runtime_in_four_encodings(api, bundle):
    # JSON, the bundle base64
    r = api.post("/v1/functions", json=_spec("gw-py1", bundle,
                                             artifact=base64.b64encode(bundle).decode()))
    assert r.status_code == 201, r.text
    assert r.json()["runtime"] == "process"
    # MessagePack, the bundle binary
    r = api.post("/v1/functions", data=msgspec.msgpack.encode(_spec("gw-py2", bundle, artifact=bundle)),
                 headers={"Content-Type": MSGPACK})
    assert r.status_code == 201, r.text
    # multipart: the spec part and the bundle as a file part
    r = api.post("/v1/functions", files={
        "spec": (None, json.dumps(_spec("gw-py3", bundle)), "application/json"),
        "artifact": ("code.zip", bundle, "application/zip")})
    assert r.status_code == 201, r.text
    # the bundle as the body, the spec in a header
    r = api.post("/v1/functions", data=bundle, headers={
        "Content-Type": "application/zip", "X-Spear-Spec": json.dumps(_spec("gw-py4", bundle))})
    assert r.status_code == 201, r.text
    for name in ("gw-py1", "gw-py2", "gw-py3", "gw-py4"):
        _assert_registered(api, name, bundle)
    # the CLI's spelling of the same, runtime process with a handler, is the same function
    r = api.post("/v1/functions", json={**_spec("gw-py5", bundle, artifact=base64.b64encode(bundle).decode()),
                                        "runtime": "process"})
    assert r.status_code == 201, r.text
    _assert_registered(api, "gw-py5", bundle)
    for name in ("gw-py1", "gw-py2", "gw-py3", "gw-py4", "gw-py5"):
        assert api.delete(f"/v1/functions/{name}").status_code == 204


def test_a_python_bundle_runs_with_its_requirements(api, bundle):
    """The bundle and the pins are all a node needs (it has never seen either)."""
    if "process" not in api.get("/v1/nodes").json()[0]["runtimes"]:
        pytest.skip("the process runtime is not available on this node")
    r = api.post("/v1/functions", data=bundle, headers={
        "Content-Type": "application/zip", "X-Spear-Spec": json.dumps(_spec("gw-pyrun", bundle))})
    assert r.status_code == 201, r.text
    r = api.post("/v1/functions/gw-pyrun/invoke", data=b"1234567", timeout=180)
    assert r.status_code == 200, r.text
    assert r.content == b"1,234,567"
    assert api.delete("/v1/functions/gw-pyrun").status_code == 204


def test_python_runtime_needs_a_handler(api):
    assert_error(api.post("/v1/functions", json={"name": "gw-pyx", "runtime": "python"}), 400,
                 "INVALID_ARGUMENT", "runtime python needs a handler")


@pytest.mark.parametrize("change, words", [
    ({"artifact_sha256": "0" * 64}, ["SHA-256"]),
    ({"artifact_sha256": "abc"}, ["$.artifact_sha256"]),
    ({"requirements": ["--index-url https://evil.example/simple"]}, ["options, paths and URLs"]),
    ({"requirements": ["pkg @ https://example.com/pkg.whl"]}, ["options, paths and URLs"]),
    ({"python": "2.7"}, ["$.python"]),
    ({"runtime": "wasm"}, ["Python handlers only"]),
])
def test_bad_python_fields_are_refused(api, bundle, change, words):
    body = {**_spec("gw-pybad", bundle, artifact=base64.b64encode(bundle).decode()), **change}
    assert_error(api.post("/v1/functions", json=body), 400, "INVALID_ARGUMENT", *words)


def test_openapi_documents_the_alias_and_id_prefixes(api):
    doc = api.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/v1/functions"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"].endswith("/DeploySpec")
    assert schemas["DeploySpec"]["properties"]["runtime"]["enum"] == ["docker", "process", "python", "wasm"]
    assert schemas["FunctionSpec"]["properties"]["runtime"]["enum"] == ["docker", "process", "wasm"]
    for field in ("requirements", "python", "artifact_sha256"):
        assert field in schemas["DeploySpec"]["properties"]
    assert "zip bundle" in schemas["DeploySpec"]["description"]
    param = doc["paths"]["/v1/executions/{execution_id}"]["get"]["parameters"][0]
    assert param["name"] == "execution_id" and "unique prefix" in param["schema"]["description"]
