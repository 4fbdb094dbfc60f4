"""The coordinator's working day in real headless Chromium: focus, keys, bulk, phone widths."""

from datetime import UTC, datetime, timedelta

import pytest

from app import accounts, queue
from app.kiosk import devices
from tests.browser import axe_violations, chromium, live_server, log_in
from tests.test_console import PASSWORD, add_request, fast_hasher

pytestmark = pytest.mark.browser

WIDTHS = [("phone", 390, 844), ("laptop", 1366, 768)]


@pytest.fixture(scope="module")
def browser():
    """Launch one headless Chromium for the module."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def console_app(app):
    """Configure the app for slow polling (the test drives refreshes) and quick hashing."""
    app.config.update(
        CONSOLE_POLL_SECONDS=30,
        PASSWORD_HASH_TIME_COST=1,
        PASSWORD_HASH_MEMORY_KIB=64,
        PASSWORD_HASH_PARALLELISM=1,
    )
    return app


def ago(minutes):
    """Return the ISO time this many minutes ago."""
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="seconds")


def check_fits(page, tmp_path, name):
    """At each width: no sideways scroll, zero axe-core violations, a screenshot in tmp_path."""
    for label, width, height in WIDTHS:
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(tmp_path / f"{name}-{label}-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, (name, width)
        assert axe_violations(page) == [], (name, width)


def active_row(page):
    """Return the id of the request whose link has the focus, or None."""
    return page.evaluate(
        "document.activeElement.classList.contains('row-link')"
        " ? document.activeElement.closest('tr').dataset.id : null"
    )


def test_queue_focus_keys_bulk_and_widths(console_app, db, browser, tmp_path):
    accounts.create_user(db, "cora", "coordinator", PASSWORD, hasher=fast_hasher())
    kiosk, _ = devices.add(db, "Riverside Centre", region="riverside")
    oldest = add_request(db, transcript="Could someone fetch my prescription", created_at=ago(300))
    assigned = add_request(db, transcript="A lift to the clinic on Tuesday", created_at=ago(200))
    queue.update(db, assigned["id"], {"status": "assigned"}, actor="system", action="test")
    newer = add_request(
        db,
        transcript="Help with my shopping, please",
        created_at=ago(100),
        channel="kiosk",
        phone="+15550002222",
        source_key=f"{kiosk.source_prefix}rec-1",
    )
    add_request(db, urgency="critical", transcript="I have fallen", created_at=ago(30))

    with live_server(console_app) as base:
        page = browser.new_page()
        log_in(page, base, "cora")
        # Straight to work: the first request of the list has the focus, not the body.
        page.wait_for_function(
            "() => document.activeElement.classList.contains('row-link')", timeout=5000
        )
        first = active_row(page)
        assert first is not None
        check_fits(page, tmp_path, "queue")
        page.set_viewport_size({"width": 1366, "height": 768})

        # A link into the page keeps its own focus; even then, the skip link is the first
        # stop and the first row two after it.
        page.goto(base + "/console/?status=open#from-a-link")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip-link"
        page.keyboard.press("Enter")
        page.keyboard.press("Tab")
        assert active_row(page) is not None

        # t on the assigned request is refused: it would move it back.
        page.locator(f'tr[data-id="{assigned["id"]}"] a.row-link').focus()
        page.keyboard.press("t")
        page.get_by_text("needs confirming").wait_for()
        assert queue.get(db, assigned["id"])["status"] == "assigned"
        # On a new one it triages.
        page.locator(f'tr[data-id="{oldest["id"]}"] a.row-link').focus()
        page.keyboard.press("t")
        page.get_by_text(f"Request #{oldest['id']} is now triaged.").wait_for()
        assert queue.get(db, oldest["id"])["status"] == "triaged"

        # Tick two with x and the mouse; a refresh keeps the ticks; close them both.
        page.keyboard.press("x")
        page.get_by_label(f"Select request #{newer['id']}").check()
        page.keyboard.press("r")
        page.wait_for_function(
            "() => document.getElementById('live-status').textContent.startsWith('Updated')"
        )
        assert page.get_by_label(f"Select request #{oldest['id']}").is_checked()
        page.get_by_role("button", name="Close (done)").click()
        page.get_by_text(f"Closed #{oldest['id']}, #{newer['id']}.").wait_for()
        assert {queue.get(db, i)["status"] for i in (oldest["id"], newer["id"])} == {"done"}

        # The request page: kiosk name, tap-to-call, readable audit, fits a phone.
        page.goto(f"{base}/console/requests/{newer['id']}")
        assert "from the kiosk Riverside Centre" in page.locator(".facts").inner_text()
        assert page.get_by_role("link", name="Call +15550002222").get_attribute("href") == (
            "tel:+15550002222"
        )
        assert "None" not in page.locator(".audit").inner_text()
        check_fits(page, tmp_path, "request")

        # Moving it back from done asks first.
        page.set_viewport_size({"width": 1366, "height": 768})
        page.get_by_label("Status").select_option("new")
        page.get_by_role("button", name="Change status").click()
        page.get_by_role("button", name="Yes, move it back to new").wait_for()
        assert queue.get(db, newer["id"])["status"] == "done"
        assert axe_violations(page) == []
        page.get_by_role("button", name="Yes, move it back to new").click()
        page.get_by_text("Status is now new.").wait_for()
        assert queue.get(db, newer["id"])["status"] == "new"


def test_kiosk_link_has_copy_qr_and_revoke_asks(console_app, db, browser, tmp_path):
    accounts.create_user(db, "ada", "admin", PASSWORD, hasher=fast_hasher())
    with live_server(console_app) as base:
        context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
        page = context.new_page()
        log_in(page, base, "ada")
        page.goto(base + "/console/kiosks")
        page.get_by_label("Name (the community centre)").fill("Riverside Centre")
        page.get_by_label("Region").fill("riverside")
        page.get_by_role("button", name="Add kiosk").click()
        assert page.locator(".qr svg").is_visible()
        page.get_by_role("button", name="Copy the address").click()
        page.get_by_text("Copied.").wait_for()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert "/kiosk?token=" in copied
        check_fits(page, tmp_path, "kiosks")
        page.goto(base + "/console/kiosks")
        page.get_by_role("link", name="Revoke kiosk #1 Riverside Centre…").click()
        assert devices.get(db, 1).revoked_at is None
        assert axe_violations(page) == []
        page.get_by_role("button", name="Yes, revoke kiosk #1 Riverside Centre").click()
        page.get_by_text("Revoked kiosk Riverside Centre").wait_for()
        assert devices.get(db, 1).revoked_at is not None
        context.close()
