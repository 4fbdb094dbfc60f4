"""The console in real headless Chromium: live alerts, audio, corrections, merges, axe-core."""

import json
import math
import struct
import wave
from pathlib import Path

import pytest

from app import accounts, queue
from tests.browser import assert_accessible, chromium, live_server, log_in
from tests.test_console import PASSWORD, add_request, fast_hasher

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    """Launch one headless Chromium for the module; sound may start without a click."""
    with chromium(["--autoplay-policy=no-user-gesture-required"]) as launched:
        yield launched


@pytest.fixture
def console_app(app):
    """Configure the app for quick polling and test-sized password hashing."""
    app.config.update(
        CONSOLE_POLL_SECONDS=0.3,
        PASSWORD_HASH_TIME_COST=1,
        PASSWORD_HASH_MEMORY_KIB=64,
        PASSWORD_HASH_PARALLELISM=1,
    )
    return app


def tone(path, seconds=4.0, rate=16000):
    """Write a quiet 440 Hz tone as a mono WAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        samples = (
            int(3000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))
        )
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))


def test_coordinator_sees_critical_live_plays_corrects_and_merges(console_app, db, browser):
    data = Path(console_app.config["DATA_DIR"])
    tone(data / "recordings" / "first.wav")
    tone(data / "recordings" / "again.wav")
    words = [
        {"text": "I", "start": 0.0, "end": 0.2, "confidence": 0.9},
        {"text": "need", "start": 0.2, "end": 0.5, "confidence": 0.9},
        {"text": "a", "start": 0.5, "end": 0.6, "confidence": 0.9},
        {"text": "lift", "start": 0.6, "end": 1.0, "confidence": 0.4},
        {"text": "tomorrow", "start": 1.0, "end": 1.8, "confidence": 0.95},
    ]
    first = add_request(
        db,
        phone="+15557654321",
        category="other",
        transcript="I need a lift tomorrow",
        transcript_words=json.dumps(words),
        audio_path="recordings/first.wav",
        region="north",
    )
    again = add_request(
        db,
        phone="+15557654321",
        transcript="It's me again about the lift",
        audio_path="recordings/again.wav",
    )
    accounts.create_user(db, "cora", "coordinator", PASSWORD, hasher=fast_hasher())

    with live_server(console_app) as base:
        page = browser.new_page()
        page.goto(base + "/console/")
        assert_accessible(page, "console-login")
        log_in(page, base, "cora")
        assert page.get_by_role("heading", level=1).inner_text() == "Request queue"
        assert_accessible(page, "console-queue")

        # Keyboard: j selects the first request, t triages it.
        page.locator("body").press("j")
        assert page.evaluate("document.activeElement.classList.contains('row-link')")
        selected = int(page.evaluate("document.activeElement.closest('tr').dataset.id"))
        page.keyboard.press("t")
        page.get_by_text(f"Request #{selected} is now triaged.").wait_for()
        assert queue.get(db, selected)["status"] == "triaged"
        assert page.evaluate("document.activeElement.closest('tr').dataset.id") == str(selected)

        # A critical request arrives while the coordinator watches.
        critical = add_request(
            db,
            phone="+15550001111",
            urgency="critical",
            emergency=1,
            category="emergency",
            transcript="I have fallen and I cannot get up",
        )
        alert = page.locator("#critical-alert")
        alert.wait_for(state="visible", timeout=5000)
        assert f"#{critical['id']}" in alert.inner_text()
        pinned = page.locator(".critical-table tbody tr").first
        assert pinned.get_attribute("data-id") == str(critical["id"])
        page.wait_for_function(
            "() => document.querySelector('.console').dataset.alertPlayed === '1'"
        )
        assert_accessible(page, "console-queue-critical")

        # The request: play from a low-confidence word, correct the category, merge.
        page.goto(f"{base}/console/requests/{first['id']}")
        assert_accessible(page, "console-request")
        page.get_by_role("button", name="lift (unsure, play from here)").click()
        page.wait_for_function(
            "() => { const a = document.getElementById('player');"
            " return !a.paused && a.currentTime > 0.6; }",
            timeout=5000,
        )
        page.keyboard.press("p")
        page.get_by_label("Category").select_option("transport")
        page.get_by_role("button", name="Save corrections").click()
        page.get_by_text("Corrections saved.").wait_for()
        assert queue.get(db, first["id"])["category"] == "transport"
        assert "transport" not in page.get_by_role("heading", level=1).inner_text()

        page.get_by_role("button", name=f"Merge #{again['id']} into this request").click()
        page.get_by_text(f"Request {again['id']} merged into this one.").wait_for()
        assert page.get_by_text("called again (1×)").is_visible()
        assert page.locator(f"audio[src$='/requests/{again['id']}/audio']").count() == 1
        assert queue.get(db, again["id"])["merged_into"] == first["id"]
        assert_accessible(page, "console-request-merged")


def test_admin_and_viewer_pages_are_accessible(console_app, db, browser):
    accounts.create_user(db, "ada", "admin", PASSWORD, hasher=fast_hasher())
    accounts.create_user(db, "vic", "viewer", PASSWORD, hasher=fast_hasher())
    item = add_request(db, transcript="Could someone help me fill in a form", category="paperwork")
    with live_server(console_app) as base:
        admin = browser.new_page()
        log_in(admin, base, "ada")
        admin.goto(base + "/console/users")
        assert_accessible(admin, "console-users")
        admin.get_by_label("Used by").fill("reports")
        admin.get_by_role("button", name="Create token").click()
        assert admin.locator(".secret code").inner_text().startswith("cc_")
        assert_accessible(admin, "console-users-token")
        admin.get_by_role("link", name="Kiosks").click()
        admin.get_by_label("Name (the community centre)").fill("Riverside Centre")
        admin.get_by_label("Region").fill("riverside")
        admin.get_by_role("button", name="Add kiosk").click()
        assert "/kiosk?token=" in admin.locator(".secret").inner_text()
        assert admin.get_by_role("link", name="Revoke kiosk #1 Riverside Centre…").is_visible()
        assert_accessible(admin, "console-kiosks")

        viewer = browser.new_page()
        log_in(viewer, base, "vic")
        viewer.goto(f"{base}/console/requests/{item['id']}")
        assert viewer.get_by_role("button", name="Save corrections").count() == 0
        assert_accessible(viewer, "console-request-viewer")
        viewer.goto(base + "/console/users")
        assert_accessible(viewer, "console-forbidden")
