"""/docs and /admin in headless Chromium (Debian's, driven by Playwright).

Playwright's own browser download cannot work here: the test points it at
/usr/bin/chromium (``.ci/setup-browser.sh`` installs both). Without them the
test skips locally and FAILS in CI (CI=true), so a missing browser can never
pass unnoticed. Screenshots go to tests/gateway/artifacts/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import hello_spec

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SPEAR_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture
def browser(tmp_path):
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 pip install playwright)"
    exe = chromium_path()
    if reason is None and exe is None:
        reason = "no Chromium at /usr/bin/chromium (apt-get install chromium chromium-driver)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {reason}; run .ci/setup-browser.sh")
        pytest.skip(reason)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=exe, headless=True, args=FLAGS,
            viewport={"width": 1440, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()


def _watch(page, base: str):
    """Collect page errors and any request that leaves the gateway."""
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("request", lambda r: r.url.startswith(base) or r.url.startswith("data:")
            or problems.append(f"left the gateway: {r.url}"))
    return problems


def test_docs_and_admin_in_chromium(api, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    api.deploy(hello_spec("gw-browser"))
    page = browser.new_page()
    problems = _watch(page, api.url)

    # Swagger UI from local files, and one call made from it
    page.goto(f"{api.url}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/v1/functions/{name}/invoke" in p.replace("\u200b", "") for p in paths), paths
    assert "Spear gateway" in page.locator(".info .title").inner_text()
    page.screenshot(path=str(ARTIFACTS / "docs.png"))
    page.locator("#operations-nodes-list_nodes .opblock-summary").click()
    page.locator("#operations-nodes-list_nodes .try-out__btn").click()
    page.locator("#operations-nodes-list_nodes .execute").click()
    page.wait_for_selector("#operations-nodes-list_nodes .live-responses-table .microlight",
                           timeout=20_000)
    assert "node_id" in page.locator("#operations-nodes-list_nodes .live-responses-table").inner_text()
    page.screenshot(path=str(ARTIFACTS / "docs-try-it-out.png"))

    # the admin page: nodes, an invocation from its form, one from the API, live figures
    page.goto(f"{api.url}/admin")
    page.wait_for_function("document.querySelectorAll('#nodes tr[data-node]').length == 2",
                           timeout=20_000)
    assert page.locator("#nodes .badge.ready").count() == 2
    page.wait_for_selector("#invoke-fn option:text-is('gw-browser')", state="attached", timeout=20_000)
    page.select_option("#invoke-fn", "gw-browser")
    page.fill("#invoke-input", "browser")
    page.click("#invoke button")
    page.wait_for_function("document.getElementById('invoke-out').textContent.includes('hello, browser')",
                           timeout=20_000)
    assert "succeeded" in page.inner_text("#invoke-out")
    assert "greeting written" in page.inner_text("#invoke-out")  # its logs, captured

    r = api.post("/v1/functions/gw-browser/invoke?logs=true", data=b"from the API")
    eid = r.headers["x-spear-execution-id"]
    row = f"#executions tr[data-execution='{eid}']"
    page.wait_for_selector(f"{row} .badge.succeeded", timeout=20_000)  # pushed by the event stream
    page.click(row)
    page.wait_for_function("document.getElementById('detail-output').textContent.includes('from the API')",
                           timeout=20_000)
    page.wait_for_function("document.getElementById('detail-logs').textContent.includes('greeting written')",
                           timeout=20_000)
    assert page.locator(f"#events li:has-text('{eid}')").count() >= 1
    page.wait_for_function("document.getElementById('f-nodes').textContent == '2'", timeout=20_000)
    page.wait_for_function("document.getElementById('conn').classList.contains('on')", timeout=20_000)
    page.wait_for_function("document.getElementById('f-p50').textContent != '-'", timeout=20_000)
    shot = ARTIFACTS / "admin.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshots: {shot} and {ARTIFACTS / 'docs.png'}")
    assert shot.stat().st_size > 10_000
    assert not problems, problems
