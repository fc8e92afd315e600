#!/usr/bin/env bash
# Installs what the gateway's browser test (tests/gateway/test_browser.py) needs:
# Debian's Chromium and chromedriver, fonts for readable screenshots, and the
# Python Playwright package that drives Chromium over CDP. Playwright's own
# browser download cannot work here (no internet), so none is attempted: the
# test points Playwright at /usr/bin/chromium.
#
# Usage (as root, from the repository root; idempotent, quick when done):
#     bash .ci/setup-browser.sh
# Then: python3 -m pytest tests/gateway/test_browser.py
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
PY="${PYTHON:-python3}"

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "== apt: chromium chromium-driver"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver \
        fonts-dejavu-core fonts-liberation >/dev/null
fi

if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "== pip: playwright (no browser download)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install -q "playwright>=1.45"
fi

# /usr/bin/chromium is a wrapper script; asking it for its version proves it starts
chromium --version 2>/dev/null | head -1
"$PY" - <<'PYEOF'
import tempfile
from playwright.sync_api import sync_playwright

with sync_playwright() as p:
    ctx = p.chromium.launch_persistent_context(
        tempfile.mkdtemp(), executable_path="/usr/bin/chromium", headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"])
    page = ctx.new_page()
    page.set_content("<p id=x>ok</p>")
    assert page.inner_text("#x") == "ok"
    ctx.close()
print("playwright drives /usr/bin/chromium: ok")
PYEOF
