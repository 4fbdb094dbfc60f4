"""The volunteer's mobile page in headless Chromium at 390 px: the link from the SMS, the
buttons, with JavaScript on and off, and axe-core on every state."""

import re
import time

import pytest

from app import dispatch, queue
from tests.browser import assert_accessible, chromium, live_server, screenshot
from tests.test_console import add_request
from tests.test_dispatch import SENIOR, add_senior, add_volunteers, states

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    """Launch one headless Chromium for the module."""
    with chromium() as launched:
        yield launched


def offered_links(app, db, base, count=1):
    """Offer the senior's request to count volunteers; return the links their SMS carry."""
    app.config["PUBLIC_BASE_URL"] = base  # the address the phone opens: the live server
    add_senior(app, db)
    add_volunteers(app, db, count + 1)
    request = add_request(db, phone=SENIOR, region="riverside")
    with app.app_context():
        made = dispatch.offer(app, db, request["id"], top=count, actor="test")
    # No Twilio here: the SMS waits in the outbox with its words.
    bodies = {row["assignment_id"]: row["body"] for row in db["outbox"].rows}
    found = [re.search(r"(http://\S+/v/\S+)$", bodies[o["id"]]).group(1) for o in made]
    return request, made, found


def audit(page, name, javascript):
    """Run axe-core where it can run: it needs scripts, and the markup is the same without."""
    if javascript:
        assert_accessible(page, name)
    else:
        screenshot(page, name + "-nojs")


def fits(page):
    """Return whether the page fits the phone's width without sideways scrolling."""
    return page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_a_volunteer_takes_the_job_on_the_phone(app, db, browser, javascript):
    with live_server(app) as base:
        request, [o], [link] = offered_links(app, db, base)
        context = browser.new_context(viewport=PHONE, java_script_enabled=javascript)
        page = context.new_page()
        page.set_default_timeout(15000)
        page.goto(link)
        assert page.get_by_role("heading", level=1).inner_text() == "Can you help?"
        assert "Elm St" in page.inner_text("main") and "4 Elm St" not in page.inner_text("main")
        assert fits(page)
        audit(page, "mobile-offer", javascript)

        page.get_by_role("button", name="Yes, I will help").click()
        page.get_by_role("status").filter(has_text="the job is yours").wait_for()
        assert "4 Elm St" in page.inner_text("main")
        assert page.get_by_role("button", name="Yes, I will help").count() == 0
        assert fits(page)
        audit(page, "mobile-taken", javascript)
        assert states(db, request["id"])[o["volunteer_id"]] == "accepted"
        # Back to the page from the SMS later: the job as it stands, and no buttons to answer.
        page.goto(link)
        assert page.get_by_role("heading", level=1).inner_text() == "Your job"
        context.close()


def test_a_volunteer_says_no_and_a_bad_link_says_so(app, db, browser):
    with live_server(app) as base:
        request, [o], [link] = offered_links(app, db, base)
        page = browser.new_page(viewport=PHONE)
        page.goto(link)
        page.get_by_role("button", name="No, I cannot").click()
        page.get_by_role("status").filter(has_text="Thank you for letting us know").wait_for()
        assert page.get_by_role("heading", level=1).inner_text() == "Job closed"
        assert_accessible(page, "mobile-declined")
        assert states(db, request["id"])[o["volunteer_id"]] == "declined"
        assert [
            e["detail"]["by"] for e in queue.events(db, request["id"]) if e["action"] == "declined"
        ] == ["link"]

        response = page.goto(link[:-4])
        assert response.status == 403
        assert page.get_by_role("heading", level=1).inner_text() == "This link does not work"
        assert fits(page)
        assert_accessible(page, "mobile-bad-link")


POSITION = {"latitude": 51.5072, "longitude": -0.1276, "accuracy": 25.0}
CHECK_IN_CASES = [
    ("allowed", {"permissions": ["geolocation"], "geolocation": POSITION}, POSITION),
    ("not allowed", {}, None),
    ("no javascript", {"java_script_enabled": False}, None),
]


@pytest.mark.parametrize(
    ("case", "options", "position"), CHECK_IN_CASES, ids=[c[0] for c in CHECK_IN_CASES]
)
def test_a_volunteer_checks_in_and_out_on_the_phone(app, db, browser, case, options, position):
    javascript = options.get("java_script_enabled", True)
    with live_server(app) as base:
        request, [o], [link] = offered_links(app, db, base)
        context = browser.new_context(viewport=PHONE, **options)
        page = context.new_page()
        page.set_default_timeout(30000)
        page.goto(link)
        page.get_by_role("button", name="Yes, I will help").click()
        page.get_by_role("button", name="Check in: I have arrived").wait_for()
        audit(page, f"mobile-check-in-{case.replace(' ', '-')}", javascript)

        started = time.monotonic()
        page.get_by_role("button", name="Check in: I have arrived").click()
        page.get_by_role("status").filter(has_text="you are checked in at").wait_for()
        waited = time.monotonic() - started
        [row] = dispatch.assignments(db, request_id=request["id"])
        assert row["state"] == "checked_in" and row["check_in_by"] == "link"
        if position is None:
            assert (row["latitude"], row["longitude"], row["accuracy_m"]) == (None, None, None)
        else:
            assert row["latitude"] == pytest.approx(position["latitude"])
            assert row["longitude"] == pytest.approx(position["longitude"])
            assert row["accuracy_m"] == pytest.approx(position["accuracy"])
        assert waited < 15, f"checking in took {waited:.1f} s"
        assert fits(page)
        audit(page, f"mobile-checked-in-{case.replace(' ', '-')}", javascript)

        page.get_by_role("button", name="Check out: I am leaving").click()
        page.get_by_role("status").filter(has_text="you are checked out at").wait_for()
        assert page.get_by_role("heading", level=1).inner_text() == "Job done"
        assert dispatch.get(db, o["id"])["state"] == "done"
        audit(page, f"mobile-done-{case.replace(' ', '-')}", javascript)
        context.close()
