"""The admin page's API and views: execution search and paging, an execution's detail,
function statistics, a node's detail, cancel and drain, and the role checks, in
Chromium for every view (the ``browser`` fixture of test_browser.py)."""

from __future__ import annotations

import time

import pytest

from spear import protocol as P

from .conftest import hello_spec, start_gateway, stop_gateway
from .test_browser import ARTIFACTS, _watch, browser  # noqa: F401 - browser is a fixture
from .test_auth import bearer

TRACE_URL = "http://traces.example.org/trace/{trace_id}"
TOKENS = {"tok-admin": "admin", "tok-deployer": "deployer", "tok-viewer": "viewer"}


def failing_spec(name: str) -> P.FunctionSpec:
    return P.FunctionSpec(name=name, runtime="process",
                          command=["sh", "-c", "echo 'it broke here' >&2; exit 3"])


def sleepy_spec(name: str) -> P.FunctionSpec:
    return P.FunctionSpec(name=name, runtime="process", command=["sleep", "30"])


@pytest.fixture(scope="module")
def operated(cluster, tmp_path_factory):
    """A gateway with bearer tokens and a trace URL."""
    d = tmp_path_factory.mktemp("gwadmin")
    cfg = d / "spear.toml"
    cfg.write_text(f'[gateway]\ntrace_url = "{TRACE_URL}"\n[security]\ntokens = {{ ' +
                   ", ".join(f'"{t}" = "{r}"' for t, r in TOKENS.items()) + " }\n")
    g = start_gateway(cluster.sms_addr, d / "gateway.log", config=str(cfg),
                      extra=["--sample-interval", "0.5"])
    try:
        yield g
    finally:
        stop_gateway(g.proc)


def _ids(page: dict) -> list[str]:
    return [e["execution_id"] for e in page["executions"]]


def test_executions_filter_by_time_and_prefix_and_page_by_cursor(api):
    api.deploy(hello_spec("gw-adm-page"))
    t0 = time.time()
    ids = []
    for k in range(5):
        r = api.post("/v1/functions/gw-adm-page/invoke", data=f"n{k}".encode())
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-spear-execution-id"])
    ids.reverse()  # newest first
    got, cursor = [], ""
    while True:
        page = api.get(f"/v1/executions?function=gw-adm-page&limit=2&cursor={cursor}").json()
        assert page["total"] == 5
        got += _ids(page)
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert got == ids
    assert _ids(api.get(f"/v1/executions?prefix={ids[2][:28]}").json()) == [ids[2]]
    later = api.get(f"/v1/executions?function=gw-adm-page&since={t0 + 3600}").json()
    assert later["total"] == 0
    earlier = api.get(f"/v1/executions?function=gw-adm-page&until={t0}").json()
    assert earlier["total"] == 0
    assert api.get("/v1/executions?prefix=XYZ").status_code == 400


def test_function_statistics_and_node_history(api):
    api.deploy(hello_spec("gw-adm-stats"))
    for k in range(3):
        assert api.post("/v1/functions/gw-adm-stats/invoke", data=b"x").status_code == 200
    s = api.get("/v1/functions/gw-adm-stats/stats?window=600&slices=6").json()
    assert s["name"] == "gw-adm-stats" and s["total"]["calls"] == 3 and s["total"]["errors"] == 0
    assert len(s["slices"]) == 6 and sum(x["calls"] for x in s["slices"]) == 3
    assert s["total"]["p50"] is not None and s["total"]["p99"] >= s["total"]["p50"]
    nodes = {n["node_id"] for n in api.get("/v1/nodes").json()}
    assert s["warm"] and set(s["warm"]) <= nodes and set(s["busy"]) == set(s["warm"])
    every = {f["name"]: f for f in api.get("/v1/stats/functions?window=600").json()}
    assert every["gw-adm-stats"]["total"]["calls"] == 3
    node = api.get("/v1/nodes").json()[0]["node_id"]
    deadline = time.time() + 10
    while not (h := api.get(f"/v1/nodes/{node}/history").json())["samples"]:
        assert time.time() < deadline, "no node sample taken"
        time.sleep(0.2)
    assert h["node_id"] == node and h["samples"][-1]["memory_total"] > 0
    assert api.get("/v1/nodes/nope/history").status_code == 404


def test_whoami_drain_and_cancel_are_role_checked(operated):
    me = operated.get("/v1/whoami", headers=bearer("tok-viewer")).json()
    assert me["role"] == "viewer" and me["trace_url"] == TRACE_URL
    assert "ListExecutions" in me["operations"] and "DrainNode" not in me["operations"]
    me = operated.get("/v1/whoami", headers=bearer("tok-deployer")).json()
    assert {"DrainNode", "CancelExecution"} <= set(me["operations"])
    node = operated.get("/v1/nodes", headers=bearer("tok-viewer")).json()[0]["node_id"]
    r = operated.post(f"/v1/nodes/{node}/drain", headers=bearer("tok-viewer"))
    assert r.status_code == 403 and r.json()["code"] == "PERMISSION_DENIED"
    r = operated.post("/v1/executions/0190abcd/cancel", headers=bearer("tok-viewer"))
    assert r.status_code == 403
    try:
        r = operated.post(f"/v1/nodes/{node}/drain", headers=bearer("tok-deployer"))
        assert r.status_code == 200 and r.json()["state"] == "draining"
    finally:
        r = operated.delete(f"/v1/nodes/{node}/drain", headers=bearer("tok-deployer"))
        assert r.status_code == 200 and r.json()["state"] == "ready"


def test_whoami_on_an_open_gateway_allows_everything(api):
    me = api.get("/v1/whoami").json()
    assert me["role"] == "" and {"DrainNode", "CancelExecution", "Invoke"} <= set(me["operations"])


# ---------------------------------------------------------------- in Chromium


def _open(page, url: str, token: str = ""):
    if token:
        page.add_init_script(f"localStorage.setItem('spear.token', {token!r})")
    page.goto(url)


def test_admin_views_in_chromium(api, browser):  # noqa: F811 - the fixture
    ARTIFACTS.mkdir(exist_ok=True)
    api.deploy(hello_spec("gw-adm-view"))
    api.deploy(failing_spec("gw-adm-fail"))
    for k in range(3):
        assert api.post("/v1/functions/gw-adm-view/invoke", data=f"v{k}".encode()).status_code == 200
    r = api.post("/v1/functions/gw-adm-fail/invoke")
    assert r.status_code == 502
    failed = r.json()["execution_id"]
    page = browser.new_page()
    problems = _watch(page, api.url)

    # executions: filtered by function, two per page, older and newer
    _open(page, f"{api.url}/admin#executions?function=gw-adm-view&limit=2")
    page.wait_for_function("document.querySelectorAll('#xs tr[data-execution]').length == 2")
    assert "1\u20132 of 3" in page.inner_text("#xs-page")
    assert page.input_value("#xs-filter [name=function]") == "gw-adm-view"
    page.click("#xs-older")
    page.wait_for_function("document.getElementById('xs-page').textContent.startsWith('3\u20133')")
    page.click("#xs-newer")
    page.wait_for_function("document.getElementById('xs-page').textContent.startsWith('1\u20132')")
    # the form: status failed, any function
    page.fill("#xs-filter [name=function]", "")
    page.select_option("#xs-filter [name=status]", "failed")
    page.fill("#xs-filter [name=prefix]", failed[:28])
    page.click("#xs-filter button[type=submit]")
    page.wait_for_selector(f"#xs tr[data-execution='{failed}']")
    assert page.locator("#xs tr[data-execution]").count() == 1
    page.screenshot(path=str(ARTIFACTS / "admin-executions.png"), full_page=True)

    # its detail: timings, node, error with the stored stderr tail, trace id
    page.click(f"#xs tr[data-execution='{failed}']")
    page.wait_for_function(f"document.getElementById('detail-id').textContent == '{failed}'")
    assert "failed" in page.inner_text("#detail-status")
    assert "it broke here" in page.inner_text("#detail-error-text")
    assert "queue" in page.inner_text("#detail-timings") and "run" in page.inner_text("#detail-timings")
    facts = page.inner_text("#detail-facts")
    assert "trace id" in facts and "node" in facts
    assert page.locator("#detail-trace").count() == 0  # no trace_url on this gateway
    assert page.locator("#detail-cancel").is_hidden()  # finished: nothing to cancel
    page.screenshot(path=str(ARTIFACTS / "admin-execution.png"), full_page=True)

    # functions, then one function's figures and instances
    page.click("#tabs a[data-tab=functions]")
    row = "#fs tr[data-function='gw-adm-view']"
    page.wait_for_selector(row)
    assert page.inner_text(f"{row} td:nth-child(2)") == "3"
    page.click(f"{row} a")
    page.wait_for_function("document.getElementById('fn-name').textContent == 'gw-adm-view'")
    page.wait_for_selector("#fn-figures .fig")
    assert "3" in page.inner_text("#fn-figures") and page.locator("#fn-instances tbody tr").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "admin-function.png"), full_page=True)

    # a node: facts, usage plot, instances, running work; drain and undo it
    page.click("#tabs a[data-tab=nodes]")
    page.wait_for_selector("#nodes tr[data-node] a")
    node = page.get_attribute("#nodes tr[data-node]", "data-node")
    page.click(f"#nodes tr[data-node='{node}'] a")
    page.wait_for_function("document.getElementById('node-facts').textContent.includes('address')")
    assert page.locator("#node-instances tbody tr").count() >= 1
    page.on("dialog", lambda d: d.accept())
    try:
        page.click("#node-drain")
        page.wait_for_selector("#node-state .badge.draining")
        assert page.locator("#node-undrain").is_visible()
        page.screenshot(path=str(ARTIFACTS / "admin-node.png"), full_page=True)
        page.click("#node-undrain")
        page.wait_for_selector("#node-state .badge.ready")
    finally:
        api.delete(f"/v1/nodes/{node}/drain")
    assert not problems, problems


def test_admin_role_checks_in_chromium(operated, browser):  # noqa: F811 - the fixture
    g = operated
    h = {**bearer("tok-deployer"), "Content-Type": "application/json"}
    import msgspec

    assert g.post("/v1/functions", data=msgspec.json.encode(sleepy_spec("gw-adm-sleepy")),
                  headers=h).status_code == 201
    r = g.post("/v1/functions/gw-adm-sleepy/invoke?mode=async", headers=bearer("tok-admin"))
    assert r.status_code == 202, r.text
    eid = r.json()["execution_id"]
    node = g.get("/v1/nodes", headers=bearer("tok-viewer")).json()[0]["node_id"]

    # a viewer: no cancel, no drain; the trace link; a forged request is refused
    viewer = browser.new_page()
    problems = _watch(viewer, g.url)
    _open(viewer, f"{g.url}/admin#execution/{eid}", "tok-viewer")
    viewer.wait_for_function(f"document.getElementById('detail-id').textContent == '{eid}'")
    assert "viewer" in viewer.inner_text("#whoami")
    assert viewer.locator("#detail-cancel").is_hidden()
    link = viewer.get_attribute("#detail-trace", "href")
    assert link and link.startswith("http://traces.example.org/trace/")
    viewer.goto(f"{g.url}/admin#node/{node}")
    viewer.wait_for_function("document.getElementById('node-facts').textContent.includes('address')")
    assert viewer.locator("#node-drain").is_hidden() and viewer.locator("#node-undrain").is_hidden()
    assert not problems, problems  # (the forged requests below log their 403s)
    status = viewer.evaluate("""async (u) => (await fetch(u, {method: 'POST',
        headers: {Authorization: 'Bearer tok-viewer'}})).status""", f"/v1/executions/{eid}/cancel")
    assert status == 403
    status = viewer.evaluate("""async (u) => (await fetch(u, {method: 'POST',
        headers: {Authorization: 'Bearer tok-viewer'}})).status""", f"/v1/nodes/{node}/drain")
    assert status == 403

    # an admin sees the cancel button of the running execution and uses it
    admin = browser.new_page()
    admin.on("dialog", lambda d: d.accept())
    _open(admin, f"{g.url}/admin#execution/{eid}", "tok-admin")
    admin.wait_for_selector("#detail-cancel:not([hidden])", timeout=20_000)
    admin.click("#detail-cancel")
    admin.wait_for_selector("#detail-status .badge.cancelled", timeout=20_000)
    admin.screenshot(path=str(ARTIFACTS / "admin-cancelled.png"), full_page=True)
