"""The console's volunteer and people pages: list, add, edit, pause; test client and Chromium."""

import pytest

from app import people
from tests.browser import assert_accessible, chromium, live_server, log_in
from tests.test_console import add_request, as_role, csrf_token, make_user

FORM = {
    "name": "Ann Lee",
    "phone": "+15550000101",
    "languages": "en; ko",
    "skills": "groceries:3; transport",
    "postcode": "E1 6AN",
    "availability": "mon 09:00-12:00",
    "max_open": "2",
    "training_done": "yes",
}


def post(client, path, data):
    """Post a console form with the CSRF token of the volunteers page."""
    token = csrf_token(client, "/console/volunteers")
    return client.post(path, data={**data, "csrf_token": token})


@pytest.fixture
def coordinator(app, db):
    """Return a client logged in as a coordinator."""
    return as_role(app, db, "coordinator")


def test_add_lists_and_audits_a_volunteer(coordinator, db):
    response = post(coordinator, "/console/volunteers", FORM)
    assert response.status_code == 303
    page = coordinator.get("/console/volunteers").get_data(as_text=True)
    assert "Added volunteer Ann Lee." in page and 'href="tel:+15550000101"' in page
    [volunteer] = people.list_volunteers(db)
    assert (volunteer["region"], volunteer["training_done"]) == ("riverside", True)
    [event] = db["events"].rows_where("action = 'volunteer_added'")
    assert event["actor"] == "user:coordinator1"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"phone": "0207 946 0958"}, "phone", "is not E.164"),
        ({"skills": "knitting"}, "skills", "unknown skill"),
        ({"availability": "mon 9-12"}, "availability", "is not like"),
        ({"postcode": "Atlantis"}, "postcode", "unknown place"),
        ({"name": ""}, "name", "is required"),
    ],
)
def test_a_bad_form_says_which_field_and_stores_nothing(coordinator, db, changes, field, words):
    response = post(coordinator, "/console/volunteers", FORM | changes)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert f'id="v-{field}-error"' in page and words in page
    assert 'aria-invalid="true"' in page
    assert db["volunteers"].count == 0


def test_edit_and_pause_and_resume(coordinator, db):
    post(coordinator, "/console/volunteers", FORM)
    form = coordinator.get("/console/volunteers/1").get_data(as_text=True)
    assert 'value="groceries:3; transport"' in form
    moved = FORM | {"postcode": "SW4 0LG", "lat": "51.5205", "lon": "-0.075", "region": ""}
    moved |= {"training_done": ""}
    assert post(coordinator, "/console/volunteers/1", moved).status_code == 303
    volunteer = people.get_volunteer(db, 1)
    # The postcode changed and the shown coordinates were left as they were: it moved.
    assert (volunteer["lat"], volunteer["region"]) == (51.462, "old town")
    assert volunteer["training_done"] is False
    assert post(coordinator, "/console/volunteers/1/active", {"active": "no"}).status_code == 303
    assert people.get_volunteer(db, 1)["active"] is False
    assert "Resume Ann Lee" in coordinator.get("/console/volunteers").get_data(as_text=True)
    post(coordinator, "/console/volunteers/1/active", {"active": "yes"})
    assert people.get_volunteer(db, 1)["active"] is True


def test_viewers_see_but_cannot_change(app, db, coordinator):
    post(coordinator, "/console/volunteers", FORM)
    viewer = as_role(app, db, "viewer")
    page = viewer.get("/console/volunteers").get_data(as_text=True)
    assert "Ann Lee" in page and "Add a volunteer" not in page and "Pause" not in page
    token = csrf_token(viewer, "/console/volunteers")
    response = viewer.post(
        "/console/volunteers/1/active", data={"active": "no", "csrf_token": token}
    )
    assert response.status_code == 403
    assert people.get_volunteer(db, 1)["active"] is True


@pytest.mark.parametrize("path", ["/console/volunteers", "/console/volunteers/1"])
def test_logged_out_is_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302 and "/console/login" in response.headers["Location"]


def test_missing_volunteer_is_404(coordinator):
    assert coordinator.get("/console/volunteers/99").status_code == 404


@pytest.mark.browser
@pytest.mark.parametrize("width", [390, 1366])
def test_volunteer_pages_in_chromium_are_accessible(app, db, width):
    make_user(db, "amy", "coordinator")
    rules = people.rules_for(app)[0]
    people.add_volunteer(db, FORM | {"phone": "+15550000109", "name": "Bo Kim"}, rules, actor="t")
    with live_server(app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": 900})
        log_in(page, base, "amy")
        page.get_by_role("link", name="Volunteers").click()
        page.get_by_label("Name", exact=True).fill("Ann Lee")
        page.get_by_label("Phone").fill("12345")
        page.get_by_label("Skills").fill("groceries")
        page.get_by_role("button", name="Add volunteer").click()
        assert "is not E.164" in page.locator("#v-phone-error").inner_text()
        assert_accessible(page, f"volunteers-error-{width}")
        page.get_by_label("Phone").fill("+15550000101")
        page.get_by_role("button", name="Add volunteer").click()
        page.get_by_text("Added volunteer Ann Lee.").wait_for()
        page.get_by_role("button", name="Pause Ann Lee").click()
        page.get_by_role("button", name="Resume Ann Lee").wait_for()
        assert_accessible(page, f"volunteers-{width}")
        # On a phone the page itself does not scroll sideways; the table scrolls in its box.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.get_by_role("link", name="Bo Kim").click()
        assert page.get_by_label("Skills").input_value() == "groceries:3; transport"
        assert_accessible(page, f"volunteer-{width}")
    assert people.get_volunteer(db, 2)["active"] is False


PERSON = {
    "name": "May Chen",
    "phones": "+15550000001; +15550000002",
    "language": "ko",
    "postcode": "E1 6AN",
    "accessibility": "hard of hearing; speak slowly",
    "emergency_contact": "Lily Chen +15550000003",
}


def test_people_add_list_and_edit(coordinator, db):
    post(coordinator, "/console/volunteers", FORM)
    response = post(coordinator, "/console/people", PERSON | {"preferred_volunteers": "1"})
    assert response.status_code == 303
    page = coordinator.get("/console/people").get_data(as_text=True)
    assert "Added May Chen." in page and 'href="tel:+15550000002"' in page
    assert "Ann Lee (#1)" in page and "hard of hearing; speak slowly" in page
    assert people.find_person_by_phone(db, "+15550000002")["name"] == "May Chen"
    edited = PERSON | {"phones": "+15550000009", "preferred_volunteers": ""}
    assert post(coordinator, "/console/people/1", edited).status_code == 303
    assert people.find_person_by_phone(db, "+15550000002") is None
    person = people.find_person_by_phone(db, "+15550000009")
    assert (person["preferred_volunteers"], person["region"]) == ([], "riverside")


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"phones": "0207"}, "phones", "is not E.164"),
        ({"preferred_volunteers": "7"}, "preferred_volunteers", "no volunteer 7"),
        ({"language": "Korean!"}, "language", "not a language code"),
        ({"name": ""}, "name", "is required"),
    ],
)
def test_a_bad_person_form_says_which_field(coordinator, db, changes, field, words):
    response = post(coordinator, "/console/people", PERSON | changes)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert f'id="v-{field}-error"' in page and words in page
    assert db["people"].count == 0 and db["person_phones"].count == 0


def test_a_phone_belongs_to_one_person(coordinator, db):
    post(coordinator, "/console/people", PERSON)
    response = post(coordinator, "/console/people", PERSON | {"name": "Someone Else"})
    assert response.status_code == 400 and "already belongs to another person" in response.text
    assert db["people"].count == 1


@pytest.mark.browser
def test_people_pages_in_chromium_are_accessible(app, db):
    make_user(db, "amy", "coordinator")
    rules = people.rules_for(app)[0]
    people.add_person(db, {**PERSON, "phones": "+15550000007"}, rules, actor="t")
    with live_server(app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 900})
        log_in(page, base, "amy")
        page.get_by_role("link", name="People served").click()
        page.get_by_label("Name", exact=True).fill("Ada Park")
        page.get_by_label("Phones").fill("12")
        page.get_by_role("button", name="Add person").click()
        assert "is not E.164" in page.locator("#v-phones-error").inner_text()
        assert_accessible(page, "people-error-390")
        page.get_by_label("Phones").fill("+15550000008")
        page.get_by_role("button", name="Add person").click()
        page.get_by_text("Added Ada Park.").wait_for()
        assert_accessible(page, "people-390")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.get_by_role("link", name="May Chen").click()
        assert page.get_by_label("Accessibility").input_value() == PERSON["accessibility"]
        assert_accessible(page, "person-390")
    assert people.find_person_by_phone(db, "+15550000008")["name"] == "Ada Park"


ALWAYS = "; ".join(f"{d} 00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))


def registry(app, db):
    """Register three volunteers and May Chen, who speaks Korean; return her request."""
    rules = people.rules_for(app)[0]
    for name, phone, languages, postcode, active in (
        ("Ann Lee", "+15550000101", "en; ko", "E1 6AN", "yes"),
        ("Bo Kim", "+15550000102", "ko", "old town", "yes"),
        ("Cy Paused", "+15550000103", "ko", "E1 6AN", "no"),
        ("Di English", "+15550000104", "en", "E1 6AN", "yes"),
    ):
        fields = FORM | {"name": name, "phone": phone, "languages": languages}
        fields |= {"postcode": postcode, "active": active, "availability": ALWAYS}
        people.add_volunteer(db, fields, rules, actor="t")
    people.add_person(db, PERSON, rules, actor="t")
    return add_request(db, phone="+15550000001", category="groceries")


def test_request_page_links_to_ranked_suggestions(app, db, coordinator):
    item = registry(app, db)
    detail = coordinator.get(f"/console/requests/{item['id']}").get_data(as_text=True)
    assert f'href="/console/requests/{item["id"]}/matches"' in detail
    page = coordinator.get(f"/console/requests/{item['id']}/matches").get_data(as_text=True)
    assert page.index("Ann Lee") < page.index("Bo Kim")
    assert "Cy Paused" not in page and "Di English" not in page
    assert "For May Chen, riverside." in page and "2 who could help speak Korean." in page
    assert "speaks Korean (2 volunteers do)" in page and 'href="tel:+15550000101"' in page
    aside = coordinator.get(f"/console/requests/{item['id']}/matches?override_language=yes")
    assert "Di English" in aside.get_data(as_text=True)


def test_a_bad_time_is_400_with_the_field_marked(app, db, coordinator):
    item = registry(app, db)
    response = coordinator.get(f"/console/requests/{item['id']}/matches?at=soon")
    assert response.status_code == 400 and 'id="m-at-error"' in response.text


@pytest.mark.browser
def test_matches_page_in_chromium_is_accessible(app, db):
    make_user(db, "amy", "viewer")
    item = registry(app, db)
    with live_server(app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 900})
        log_in(page, base, "amy")
        page.goto(f"{base}/console/requests/{item['id']}")
        page.get_by_role("link", name="Suggested volunteers for this request").click()
        assert page.get_by_role("heading", level=3).first.inner_text().startswith("Ann Lee")
        assert_accessible(page, "matches-390")
        page.get_by_label("Also suggest volunteers who do not speak Korean").check()
        page.get_by_role("button", name="Suggest again").click()
        page.get_by_role("link", name="Di English").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_volunteer_who_no_longer_passes_the_rules_can_be_paused_not_resumed(coordinator, db):
    post(coordinator, "/console/volunteers", FORM)
    db["volunteers"].update(1, {"skills": '{"knitting": null}'})  # a skill since retired
    assert post(coordinator, "/console/volunteers/1/active", {"active": "no"}).status_code == 303
    assert people.get_volunteer(db, 1)["active"] is False
    response = post(coordinator, "/console/volunteers/1/active", {"active": "yes"})
    assert response.status_code == 303
    page = coordinator.get("/console/volunteers").get_data(as_text=True)
    assert "Could not change Ann Lee: skills: unknown skill" in page
    assert people.get_volunteer(db, 1)["active"] is False
