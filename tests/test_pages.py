"""Pages in a real browser: every page passes axe-core with zero violations."""

import pytest

from tests.browser import assert_accessible, chromium, live_server


@pytest.mark.browser
def test_landing_page_is_accessible(app):
    with live_server(app) as base, chromium() as browser:
        page = browser.new_page()
        page.goto(base + "/")
        assert page.get_by_role("heading", level=1).inner_text() == "CareCall is running"
        assert_accessible(page, "landing")


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/console/login"), ("post", "/twilio/voice")],
)
def test_oversized_bodies_are_refused(app, client, method, path):
    app.config["TWILIO_AUTH_TOKEN"] = "secret"  # so the webhook reads its form to check it
    body = b"x" * (2 * 1024 * 1024)
    response = getattr(client, method)(
        path, data=body, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 413
