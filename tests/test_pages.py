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
