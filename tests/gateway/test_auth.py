"""Bearer-token authentication and roles on the gateway."""

from __future__ import annotations

import base64

import msgspec
import pytest

from spear.gateway.routes import ROUTES
from spear.roles import allowed

from .conftest import start_gateway, stop_gateway
from tests.helpers import add_spec

TOKENS = {"tok-admin": "admin", "tok-deployer": "deployer", "tok-invoker": "invoker",
          "tok-viewer": "viewer", "tok-node": "node"}


@pytest.fixture(scope="module")
def secured(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("gwauth")
    cfg = d / "spear.toml"
    cfg.write_text("[security]\ntokens = { " +
                   ", ".join(f'"{t}" = "{r}"' for t, r in TOKENS.items()) + " }\n")
    g = start_gateway(cluster.sms_addr, d / "gateway.log", config=str(cfg))
    try:
        yield g
    finally:
        stop_gateway(g.proc)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_missing_and_bad_tokens_get_401(secured):
    r = secured.get("/v1/nodes")
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHENTICATED"
    assert r.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer nope", "Basic dG9rLWFkbWluOg==", "Bearer", "tok-admin"):
        r = secured.get("/v1/nodes", headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["code"] == "UNAUTHENTICATED", header
    # public: health, the document, the pages
    for path in ("/healthz", "/openapi.json", "/docs", "/admin", "/admin/admin.js"):
        assert secured.get(path).status_code == 200, path


def test_roles_follow_the_wire_table(secured):
    spec = add_spec("gw-auth-add")
    r = secured.post("/v1/functions", json={"name": spec.name, "runtime": "wasm", "handler": "add",
                                            "artifact": base64.b64encode(spec.artifact).decode()},
                     headers=bearer("tok-viewer"))
    assert r.status_code == 403 and r.json()["code"] == "PERMISSION_DENIED" and "viewer" in r.json()["message"]
    r = secured.post("/v1/functions", data=msgspec.json.encode(spec),
                     headers={**bearer("tok-deployer"), "Content-Type": "application/json"})
    assert r.status_code == 201, r.text

    cases = [  # (token, method, path, expected status)
        ("tok-viewer", "GET", "/v1/nodes", 200),
        ("tok-viewer", "GET", "/v1/stats", 200),
        ("tok-viewer", "GET", "/v1/functions/gw-auth-add", 200),
        ("tok-viewer", "POST", "/v1/functions/gw-auth-add/invoke?args=1,2", 403),
        ("tok-viewer", "DELETE", "/v1/functions/gw-auth-add", 403),
        ("tok-invoker", "POST", "/v1/functions/gw-auth-add/invoke?args=1,2", 200),
        ("tok-invoker", "DELETE", "/v1/functions/gw-auth-add", 403),
        ("tok-deployer", "POST", "/v1/functions/gw-auth-add/invoke?args=1,2", 403),
        ("tok-node", "GET", "/v1/nodes", 403),
        ("tok-admin", "POST", "/v1/functions/gw-auth-add/invoke?args=1,2", 200),
        ("tok-invoker", "POST", "/v1/executions/no-such/cancel", 404),
        ("tok-viewer", "POST", "/v1/executions/no-such/cancel", 403),
    ]
    for token, method, path, status in cases:
        r = secured(method, path, headers=bearer(token))
        assert r.status_code == status, (token, method, path, r.status_code, r.text[:200])
        if status == 403:
            assert r.json()["code"] == "PERMISSION_DENIED"
    r = secured.delete("/v1/functions/gw-auth-add", headers=bearer("tok-admin"))
    assert r.status_code == 204


def test_every_route_is_checked_against_the_role_table(secured):
    """A viewer may call exactly the routes whose wire message a viewer may send."""
    for route in ROUTES:
        if route.op is None or "{" in route.path or route.path in ("/v1/events", "/v1/live/stream"):
            continue
        r = secured(route.method, route.path, headers=bearer("tok-viewer"))
        if allowed("viewer", route.op):
            assert r.status_code != 403, route.path
        else:
            assert r.status_code == 403, route.path


def test_openapi_declares_the_scheme(secured):
    doc = secured.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/nodes"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert "401" in doc["paths"]["/v1/nodes"]["get"]["responses"]
