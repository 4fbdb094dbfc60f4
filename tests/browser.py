"""Real-browser test helpers: a live server, headless Chromium, axe-core audits, screenshots."""

import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
# This machine's network is closed: background fetches would only fail, slowly.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def live_server(app):
    """Serve the app on a free loopback port in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@contextmanager
def chromium(extra_args=()):
    """Launch Debian's headless Chromium through Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/test, which installs it")
    with sync_playwright() as p, launched(p.chromium, extra_args) as browser:
        yield browser


@contextmanager
def launched(browser_type, extra_args=()):
    """Launch Debian's Chromium from a running Playwright with our flags plus extra_args."""
    browser = browser_type.launch(
        executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args]
    )
    try:
        yield browser
    finally:
        browser.close()


def log_in(page, base, name, password=None):
    """Log in through the console's form and land on the queue."""
    if password is None:
        from tests.test_console import PASSWORD as password  # the tests' one password
    page.goto(base + "/console/login")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(base + "/console/")


def axe_violations(page):
    """Run axe-core on the page as it is now and return its violations."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run ./scripts/test, which installs it")
    # Evaluated through the DevTools protocol, so the page's CSP need not allow it.
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    result = page.evaluate("async () => await axe.run(document)")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in result["violations"]
    ]


def assert_accessible(page, name):
    """Save a screenshot named name and fail on any axe-core violation."""
    screenshot(page, name)
    violations = axe_violations(page)
    assert violations == [], f"axe-core violations on {name}: {violations}"


def screenshot(page, name):
    """Save a full-page screenshot under tests/artifacts/screenshots for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
