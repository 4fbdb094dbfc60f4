"""The supervision page, a volunteer's record and GET /api/v1/supervision, on the real app."""

import re
from datetime import UTC, datetime
from html import unescape

import pytest

from app import jobs, people, queue, supervision
from tests.browser import assert_accessible, chromium, live_server, log_in
from tests.test_api import bearer
from tests.test_console import add_request, as_role, csrf_token, make_user
from tests.test_supervision import missed

PAGE = "/console/supervision"


@pytest.fixture
def volunteer(app, db):
    """Register Ana."""
    rules = people.rules_for(app)[0]
    fields = {"name": "Ana Diaz", "phone": "+15550001001", "skills": "groceries"}
    return people.add_volunteer(db, fields | {"postcode": "riverside"}, rules, actor="t")


@pytest.fixture
def complaint(db, volunteer):
    """A complaint about Ana and a request of hers."""
    request = add_request(db, transcript="shopping please")
    item, _ = supervision.complain(
        db,
        "Ana shouted at Mrs Chen",
        actor="user:cy",
        key="ab01",
        volunteer_id=volunteer["id"],
        request_id=request["id"],
    )
    return item


@pytest.fixture
def coordinator(app, db):
    """Return a client logged in as a coordinator."""
    return as_role(app, db, "coordinator")


def post(client, path, data, page=PAGE):
    """Post a form with the CSRF token of the page it is on."""
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page)})


def dead_job(app, db):
    """Put one job in the dead letter; return its id."""
    job_id = jobs.enqueue(db, "test.nobody", {}, max_attempts=1)
    jobs.drain(app)
    return job_id


@pytest.mark.parametrize(
    ("role", "method", "path", "expected"),
    [
        (None, "GET", PAGE, 302),
        ("viewer", "GET", PAGE, 403),
        ("viewer", "POST", PAGE + "/{item}/actions", 403),
        ("viewer", "POST", PAGE + "/complaints", 403),
        ("viewer", "POST", "/console/volunteers/{volunteer}/decisions", 403),
        ("coordinator", "GET", PAGE, 200),
        ("coordinator", "POST", PAGE + "/{item}/actions", 303),
        ("admin", "GET", PAGE, 200),
        ("admin", "POST", "/console/volunteers/{volunteer}/decisions", 303),
    ],
)
def test_only_coordinators_and_admins_supervise(
    app, db, volunteer, complaint, role, method, path, expected
):
    client = as_role(app, db, role) if role else app.test_client()
    path = path.format(item=complaint["id"], volunteer=volunteer["id"])
    if method == "GET":
        response = client.get(path)
    else:
        data = {"action": "note", "text": "x", "decision": "training", "reason": "y"}
        response = client.post(path, data={**data, "csrf_token": csrf_token(client)})
    assert response.status_code == expected
    if role == "viewer":
        assert supervision.actions(db, complaint["id"]) == []
        assert supervision.decisions(db, volunteer["id"]) == []


@pytest.mark.parametrize("role", ["viewer", "coordinator"])
def test_the_navigation_links_the_page_for_those_who_may_open_it(app, db, role):
    html = as_role(app, db, role).get("/console/").get_data(as_text=True)
    assert (f'href="{PAGE}"' in html) is (role == "coordinator")


@pytest.mark.parametrize(
    "path",
    [PAGE + "/{item}/actions", PAGE + "/complaints", "/console/volunteers/{volunteer}/decisions"],
)
def test_every_post_needs_the_csrf_token(db, coordinator, volunteer, complaint, path):
    data = {"action": "resolve", "decision": "training", "reason": "y", "text": "t"}
    data |= {"volunteer_id": str(volunteer["id"]), "key": "ff"}
    response = coordinator.post(
        path.format(item=complaint["id"], volunteer=volunteer["id"]), data=data
    )
    assert response.status_code == 400
    assert supervision.get(db, complaint["id"])["state"] == "open"
    assert db["supervision_items"].count == 1 and supervision.decisions(db, volunteer["id"]) == []


def test_opening_the_page_sweeps_and_shows_open_items_first(app, db, coordinator, complaint):
    job_id = dead_job(app, db)
    supervision.act(db, complaint["id"], "resolve", actor="user:cy")
    html = coordinator.get(PAGE).get_data(as_text=True)
    assert "1 new item found just now." in html
    assert "Failed job" in html and f"jobs retry {job_id}" in html
    assert "Ana shouted" not in html  # resolved: not among the open items
    everything = coordinator.get(PAGE + "?state=all").get_data(as_text=True)
    assert everything.index("Failed job") < everything.index("Ana shouted at Mrs Chen")
    assert "1 new item" not in everything  # the second sweep found nothing new


@pytest.mark.parametrize(
    ("query", "status", "shown", "hidden"),
    [
        ("?kind=complaint", 200, "Ana shouted", "jobs retry"),
        ("?kind=dead_job", 200, "jobs retry", "Ana shouted"),
        ("?kind=gossip", 400, "kind must be one of", None),
        ("?state=closed", 400, "state must be one of", None),
    ],
)
def test_items_filter_by_kind_and_state(
    app, db, coordinator, complaint, query, status, shown, hidden
):
    dead_job(app, db)
    response = coordinator.get(PAGE + query)
    html = response.get_data(as_text=True)
    assert response.status_code == status and shown in html
    if hidden:
        assert hidden not in html


def test_actions_through_the_console_are_kept_in_the_history(db, coordinator, complaint):
    path = f"{PAGE}/{complaint['id']}/actions"
    steps = [
        ({"action": "note", "text": "Spoke to Ana"}, "Note added."),
        (
            {"action": "follow_up_call", "text": "Called Mrs Chen, she is fine"},
            "Follow-up call logged.",
        ),
        ({"action": "pause_volunteer"}, "Volunteer paused."),
        ({"action": "resolve"}, "Marked resolved."),
        ({"action": "reopen"}, "Reopened."),
    ]
    for data, message in steps:
        response = post(coordinator, path, data | {"next": PAGE + "?state=all"})
        assert response.status_code == 303
        assert response.headers["Location"].endswith(f"{PAGE}?state=all#item-{complaint['id']}")
        assert message in coordinator.get(response.headers["Location"]).get_data(as_text=True)
    history = [(a["action"], a["actor"]) for a in supervision.actions(db, complaint["id"])]
    assert history == [
        (action, "user:coordinator1")
        for action in ("note", "follow_up_call", "pause_volunteer", "resolve", "reopen")
    ]
    assert people.get_volunteer(db, complaint["volunteer_id"])["active"] is False
    html = coordinator.get(PAGE).get_data(as_text=True)
    assert "Called Mrs Chen, she is fine" in html and "Ana Diaz</a> (paused)" in html
    assert "Pause Ana Diaz" not in html
    events = [e["action"] for e in queue.events(db, complaint["request_id"])]
    assert events[-5:] == [f"supervision_{a}" for a, _ in history]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"action": "note", "text": "  "}, "a note needs some words"),
        ({"action": "shout"}, "action must be one of"),
    ],
)
def test_a_refused_action_says_why_and_changes_nothing(db, coordinator, complaint, data, message):
    response = post(coordinator, f"{PAGE}/{complaint['id']}/actions", data)
    html = coordinator.get(response.headers["Location"]).get_data(as_text=True)
    assert f"Nothing changed: {message}" in html
    assert supervision.actions(db, complaint["id"]) == []


def test_an_unknown_item_is_404(coordinator):
    assert post(coordinator, f"{PAGE}/99/actions", {"action": "resolve"}).status_code == 404


def test_a_complaint_taken_down_twice_from_one_form_is_one(db, coordinator, volunteer):
    html = coordinator.get(PAGE).get_data(as_text=True)
    key = re.search(r'name="key" value="([0-9a-f]+)"', html).group(1)
    request = add_request(db)
    data = {"key": key, "volunteer_id": str(volunteer["id"]), "request_id": f"#{request['id']}"}
    data["text"] = "Mr Park says Ana never rang the bell"
    first = post(coordinator, PAGE + "/complaints", data)
    assert "Complaint saved." in coordinator.get(first.headers["Location"]).get_data(as_text=True)
    second = post(coordinator, PAGE + "/complaints", data)
    [item] = supervision.items(db)
    assert (item["kind"], item["volunteer_id"], item["request_id"]) == (
        "complaint",
        volunteer["id"],
        request["id"],
    )
    assert item["opened_by"] == "user:coordinator1"
    assert "already saved" in coordinator.get(second.headers["Location"]).get_data(as_text=True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"request_id": "", "volunteer_id": ""}, "about a volunteer or a request"),
        ({"request_id": "12abc"}, "'12abc' is not a number"),
        ({"request_id": "999"}, "there is no request 999"),
        ({"text": " "}, "write what the complaint is"),
    ],
)
def test_a_complaint_that_cannot_be_saved_says_why(db, coordinator, volunteer, fields, message):
    data = {"key": "aa11", "volunteer_id": "", "request_id": "", "text": "late again"}
    data |= {"volunteer_id": str(volunteer["id"])} if "volunteer_id" not in fields else {}
    response = post(coordinator, PAGE + "/complaints", data | fields)
    html = unescape(coordinator.get(response.headers["Location"]).get_data(as_text=True))
    assert re.search("The complaint was not saved: [^<]*" + re.escape(message), html)
    assert db["supervision_items"].count == 0


def test_the_volunteer_page_keeps_their_record_and_decisions(app, db, coordinator, complaint):
    volunteer_id = complaint["volunteer_id"]
    page = f"/console/volunteers/{volunteer_id}"
    html = coordinator.get(page).get_data(as_text=True)
    assert "Supervision record" in html and "Ana shouted at Mrs Chen" in html
    assert "No decisions recorded about Ana Diaz." in html
    path = page + "/decisions"
    refused = post(coordinator, path, {"decision": "training", "reason": ""}, page)
    assert "Nothing recorded: a decision about a volunteer needs a reason" in coordinator.get(
        refused.headers["Location"]
    ).get_data(as_text=True)
    post(coordinator, path, {"decision": "training", "reason": "Refresher on manners"}, page)
    post(coordinator, path, {"decision": "end_role", "reason": "Second complaint"}, page)
    html = coordinator.get(page).get_data(as_text=True)
    assert "Refresher on manners" in html and "Second complaint" in html
    assert "(paused)" in html
    kept = [(d["decision"], d["actor"]) for d in supervision.decisions(db, volunteer_id)]
    assert kept == [("training", "user:coordinator1"), ("end_role", "user:coordinator1")]
    assert people.get_volunteer(db, volunteer_id)["active"] is False
    viewer = as_role(app, db, "viewer").get(page).get_data(as_text=True)
    assert "Ana Diaz" in viewer and "Supervision record" not in viewer


def test_a_decision_about_nobody_is_404(coordinator, volunteer):
    page = f"/console/volunteers/{volunteer['id']}"
    response = post(
        coordinator,
        "/console/volunteers/99/decisions",
        {"decision": "training", "reason": "x"},
        page,
    )
    assert response.status_code == 404


def test_the_page_says_when_a_condition_has_cleared(app, db, coordinator):
    job_id = dead_job(app, db)
    assert "still so now" in coordinator.get(PAGE).get_data(as_text=True)
    jobs.retry(db, job_id)
    html = coordinator.get(PAGE).get_data(as_text=True)
    assert "cleared since: no longer so" in html and "still so now" not in html
    assert supervision.items(db)[0]["state"] == "open"


# ---- GET /api/v1/supervision ------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"), [(None, 401), ("viewer", 403), ("coordinator", 200), ("admin", 200)]
)
def test_the_api_is_for_supervising_tokens(client, db, complaint, role, status):
    headers = bearer(db, role) if role else {}
    response = client.get("/api/v1/supervision", headers=headers)
    assert response.status_code == status and response.is_json


@pytest.mark.parametrize(
    ("query", "kinds"),
    [
        ("", ["dead_job"]),
        ("?state=open", ["dead_job"]),
        ("?state=resolved", ["complaint"]),
        ("?state=all", ["dead_job", "complaint"]),
        ("?state=all&kind=complaint", ["complaint"]),
        ("?state=all&volunteer_id={volunteer}", ["complaint"]),
    ],
)
def test_the_api_lists_items_by_state(app, client, db, complaint, query, kinds):
    dead_job(app, db)
    supervision.sweep(db, moment=datetime.now(UTC), config=app.config)
    supervision.act(db, complaint["id"], "resolve", actor="user:cy")
    query = query.format(volunteer=complaint["volunteer_id"])
    response = client.get("/api/v1/supervision" + query, headers=bearer(db, "coordinator"))
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert [i["kind"] for i in items] == kinds
    by_kind = {i["kind"]: i for i in items}
    if "complaint" in by_kind:
        assert [a["action"] for a in by_kind["complaint"]["actions"]] == ["resolve"]
        assert by_kind["complaint"]["condition_holds"] is None
    if "dead_job" in by_kind:
        assert by_kind["dead_job"]["condition_holds"] is True


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?state=closed", "state must be one of"),
        ("?kind=gossip", "kind must be one of"),
        ("?volunteer_id=abc", "is not a row id"),
        ("?limit=0", "limit must be a whole number"),
        ("?limit=ten", "limit must be a whole number"),
    ],
)
def test_the_api_refuses_a_bad_filter(client, db, query, message):
    response = client.get("/api/v1/supervision" + query, headers=bearer(db, "coordinator"))
    assert response.status_code == 400 and message in response.get_json()["error"]


# ---- in Chromium ------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.parametrize("width", [390, 1366])
def test_supervision_in_chromium_is_accessible(app, db, complaint, width):
    make_user(db, "amy", "coordinator")
    dead_job(app, db)
    missed(app, db, people.get_volunteer(db, complaint["volunteer_id"]))
    with live_server(app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": 900})
        log_in(page, base, "amy")
        page.get_by_role("link", name="Supervision").click()
        page.get_by_text("2 new items found just now.").wait_for()
        assert_accessible(page, f"supervision-{width}")
        [no_show] = supervision.items(db, kind="no_show")
        page.get_by_label(f"Why the no-show of #{no_show['id']} is excused").fill("Bus broke down")
        page.get_by_role("button", name="Excuse the no-show").click()
        page.get_by_text("No-show excused.").wait_for()
        item = page.locator(f"#item-{complaint['id']}")
        item.get_by_label(f"What was done or said about #{complaint['id']}").fill("Called Ana")
        item.get_by_role("button", name="Log follow-up call").click()
        page.get_by_text("Follow-up call logged.").wait_for()
        item = page.locator(f"#item-{complaint['id']}")
        assert "Follow-up call by user:amy: Called Ana" in item.inner_text()
        item.get_by_role("button", name=f"Mark #{complaint['id']} resolved").click()
        page.get_by_text("Marked resolved.").wait_for()
        page.get_by_label("About the volunteer").select_option(label="Ana Diaz (#1)")
        page.get_by_label("What the complaint is, and who made it").fill("Late twice")
        page.get_by_role("button", name="Save complaint").click()
        page.get_by_text("Complaint saved.").wait_for()
        assert_accessible(page, f"supervision-acted-{width}")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.get_by_role("link", name="Ana Diaz").first.click()
        page.get_by_label("Decision").select_option("recognition")
        page.get_by_label("Reason").fill("Thanked by three seniors")
        page.get_by_role("button", name="Record decision about Ana Diaz").click()
        page.get_by_text("Recorded: recognition.").wait_for()
        assert_accessible(page, f"volunteer-record-{width}")
    assert [d["decision"] for d in supervision.decisions(db, complaint["volunteer_id"])] == [
        "recognition"
    ]
    assert supervision.get(db, complaint["id"])["state"] == "resolved"
    assert [i["reason"] for i in supervision.items(db, kind="complaint")] == ["Late twice"]


def test_a_no_show_is_excused_from_the_page(app, db, coordinator, volunteer):
    offer = missed(app, db, volunteer)
    html = coordinator.get(PAGE).get_data(as_text=True)
    [item] = supervision.items(db, kind="no_show")
    assert f"Why the no-show of #{item['id']} is excused" in html
    response = post(
        coordinator,
        f"{PAGE}/{item['id']}/actions",
        {"action": "excuse_no_show", "text": "Her bus broke down"},
    )
    html = coordinator.get(response.headers["Location"]).get_data(as_text=True)
    assert "No-show excused." in html and "cleared since: no longer so" in html
    assert "Why the no-show of" not in html
    assert db["assignments"].get(offer["id"])["excused"] == 1


def test_what_supervision_wrote_stays_with_those_who_supervise(app, db, complaint, coordinator):
    supervision.act(db, complaint["id"], "note", actor="user:cy", text="SECRETNOTE about Ana")
    page = f"/console/requests/{complaint['request_id']}"
    viewer = as_role(app, db, "viewer")
    token = bearer(db, "viewer")
    api = f"/api/v1/requests/{complaint['request_id']}"
    for words in ("SECRETNOTE", "shouted at Mrs Chen"):
        assert words not in viewer.get(page).get_data(as_text=True)
        assert words not in app.test_client().get(api, headers=token).get_data(as_text=True)
        assert words in coordinator.get(page).get_data(as_text=True)
    # That something was looked into still shows, without its words.
    events = app.test_client().get(api, headers=token).json["events"]
    assert {"item": complaint["id"]} in [
        e["detail"] for e in events if "supervision" in e["action"]
    ]


def test_words_typed_before_resolving_are_kept_with_it(db, complaint, coordinator):
    page = coordinator.get(PAGE).get_data(as_text=True)
    assert f'name="action" value="resolve">Mark #{complaint["id"]} resolved' in page
    path = f"{PAGE}/{complaint['id']}/actions"
    assert (
        post(coordinator, path, {"action": "resolve", "text": "spoke to both"}).status_code == 303
    )
    [done] = supervision.actions(db, complaint["id"])
    assert (done["action"], done["text"]) == ("resolve", "spoke to both")
