"""The coordinator's working queue: order, waiting, pinned filters, keys, bulk, audit, kiosks."""

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from app import accounts, cli, queue
from app.console import actions, search
from app.kiosk import devices, messages
from tests.test_console import FAST, add_request, as_role, csrf_token, post_form


@pytest.fixture(autouse=True)
def fast_hashing(app):
    """Hash passwords at test-sized cost in this module's app."""
    app.config.update(FAST)


@pytest.fixture
def coordinator(app, db):
    """Return a client logged in as a coordinator."""
    return as_role(app, db, "coordinator")


def ago(minutes):
    """Return the ISO time this many minutes ago."""
    # Now, not at import: the whole suite runs for minutes before this test does.
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="seconds")


def ids_in(html, pinned):
    """Return the request ids in the pinned block or the list, in page order."""
    top, rest = html.split('id="list-heading"')
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', top if pinned else rest)]


def test_queue_is_most_urgent_first_then_longest_waiting_and_a_touch_moves_nothing(db, coordinator):
    made = {}
    for name, urgency, waited in [
        ("new normal", "normal", 10),
        ("old normal", "normal", 300),
        ("old low", "low", 900),
        ("high", "high", 5),
        ("old high", "high", 60),
        ("critical", "critical", 420),
    ]:
        made[name] = add_request(db, urgency=urgency, created_at=ago(waited), updated_at=ago(1))
    # Triaged and noted a moment ago: activity must not lift a request over older ones.
    actions.set_status(db, made["new normal"]["id"], "triaged", actor="user:x")
    actions.add_note(db, made["new normal"]["id"], "called her", actor="user:x")
    html = coordinator.get("/console/").get_data(as_text=True)
    order = ["old high", "high", "old normal", "new normal", "old low"]
    assert ids_in(html, pinned=False) == [made[n]["id"] for n in order]
    assert ids_in(html, pinned=True) == [made["critical"]["id"]]
    assert "(5 in all)" in html
    # Newest received first, when asked.
    html = coordinator.get("/console/?sort=newest").get_data(as_text=True)
    assert ids_in(html, pinned=False)[0] == made["high"]["id"]


def test_cursor_pages_through_the_work_order_once(db):
    made = [
        add_request(db, urgency=u, created_at=ago(m))["id"]
        for u, m in [("low", 5), ("high", 9), ("normal", 7), ("high", 3), (None, 8), ("low", 50)]
    ]
    for filters in (search.Filters(status="all"), search.Filters(status="all", sort="newest")):
        seen, cursor = [], None
        while True:
            rows, cursor = search.list_requests(db, filters, limit=2, cursor=cursor)
            seen += [r["id"] for r in rows]
            if not cursor:
                break
        assert sorted(seen) == sorted(made) and len(seen) == len(made)
    full, _ = search.list_requests(db, search.Filters(status="all"), limit=50)
    assert [r["urgency"] for r in full] == ["high", "high", None, "normal", "low", "low"]


@pytest.mark.parametrize(
    ("urgency", "waited", "overdue"),
    [
        ("critical", 20, True),
        ("critical", 10, False),
        ("high", 119, False),
        ("high", 121, True),
        ("normal", 60 * 25, True),
        ("low", 60 * 25, False),
    ],
)
def test_waiting_time_is_shown_and_overdue_by_the_urgency_target(
    db, coordinator, urgency, waited, overdue
):
    item = add_request(db, urgency=urgency, created_at=ago(waited))
    html = coordinator.get("/console/").get_data(as_text=True)
    row = re.search(rf'<tr data-id="{item["id"]}" class="([^"]*)">(.*?)</tr>', html, re.S)
    assert ("overdue" in row[1].split()) is overdue
    assert (">overdue</span>" in row[2]) is overdue
    assert "min" in row[2] or " h " in row[2] or " d " in row[2]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, ["fall", "smoke"]),
        ({"q": "smoke"}, ["smoke"]),
        ({"region": "north"}, ["fall"]),
        ({"language": "ko"}, []),
        ({"urgency": "high"}, []),
        ({"urgency": "critical"}, ["fall", "smoke"]),
        ({"status": "done"}, []),
        ({"status": "triaged"}, ["smoke"]),
        ({"status": "all"}, ["fall", "smoke"]),
        ({"date_from": "2099-01-01"}, []),
    ],
)
def test_pinned_critical_block_honours_search_and_filters(db, coordinator, args, expected):
    made = {
        "fall": add_request(
            db, urgency="critical", transcript="I have fallen", region="north", created_at=ago(9)
        ),
        "smoke": add_request(
            db, urgency="critical", transcript="there is smoke", region="south", created_at=ago(5)
        ),
        "old": add_request(db, urgency="critical", transcript="smoke again", region="north"),
    }
    queue.update(db, made["old"]["id"], {"status": "done"}, actor="system", action="test")
    queue.update(db, made["smoke"]["id"], {"status": "triaged"}, actor="system", action="test")
    add_request(db, urgency="high", transcript="smoke alarm beeping", region="north")
    html = coordinator.get("/console/", query_string=args).get_data(as_text=True)
    assert ids_in(html, pinned=True) == [made[n]["id"] for n in expected]


def test_a_reversed_date_range_is_an_error(db, coordinator):
    response = coordinator.get("/console/?date_from=2026-02-01&date_to=2026-01-01")
    assert response.status_code == 400
    assert "date_from must not be after date_to" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("before", "asked", "code", "after"),
    [
        ("new", "triaged", 200, "triaged"),
        ("triaged", "assigned", 200, "assigned"),
        ("assigned", "triaged", 409, "assigned"),
        ("in_progress", "assigned", 409, "in_progress"),
        ("done", "triaged", 409, "done"),
        ("cancelled", "assigned", 409, "cancelled"),
        ("triaged", "triaged", 200, "triaged"),
    ],
)
def test_queue_keys_never_move_a_request_back(db, coordinator, before, asked, code, after):
    item = add_request(db)
    queue.update(db, item["id"], {"status": before}, actor="system", action="test")
    response = coordinator.post(
        f"/console/requests/{item['id']}/status",
        data={"status": asked, "csrf_token": csrf_token(coordinator, "/console/")},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == code
    assert queue.get(db, item["id"])["status"] == after
    if code == 409:
        assert "needs confirming" in response.get_json()["error"]


def test_moving_back_on_the_request_page_asks_then_confirms(db, coordinator):
    item = add_request(db)
    queue.update(db, item["id"], {"status": "assigned"}, actor="system", action="test")
    path = f"/console/requests/{item['id']}"
    response = post_form(coordinator, f"{path}/status", {"status": "triaged"}, page=path)
    assert response.status_code == 303 and response.location.endswith("?confirm=triaged")
    assert queue.get(db, item["id"])["status"] == "assigned"
    page = coordinator.get(response.location).get_data(as_text=True)
    assert "Yes, move it back to triaged" in page
    response = post_form(
        coordinator, f"{path}/status", {"status": "triaged", "confirm": "yes"}, page=path
    )
    assert response.status_code == 303
    assert queue.get(db, item["id"])["status"] == "triaged"


@pytest.mark.parametrize(
    ("action", "statuses", "after", "said"),
    [
        ("triage", ["new", "new"], ["triaged", "triaged"], "Triaged #1, #2."),
        ("triage", ["new", "assigned"], ["triaged", "assigned"], "#2 is assigned"),
        ("close", ["new", "in_progress"], ["done", "done"], "Closed #1, #2."),
        ("close", ["cancelled", "triaged"], ["cancelled", "done"], "#1 is cancelled"),
        ("merge", ["new", "triaged", "new"], ["new", "cancelled", "cancelled"], "into #1"),
    ],
)
def test_bulk_actions(db, coordinator, action, statuses, after, said):
    made = []
    for i, status in enumerate(statuses):
        item = add_request(db, created_at=ago(100 - i), transcript=f"request {i}")
        queue.update(db, item["id"], {"status": status}, actor="system", action="test")
        made.append(item["id"])
    token = csrf_token(coordinator, "/console/")
    response = coordinator.post(
        "/console/bulk",
        data={"action": action, "ids": made, "csrf_token": token, "next": "/console/"},
    )
    assert response.status_code == 303
    assert [queue.get(db, i)["status"] for i in made] == after
    assert said in coordinator.get("/console/").get_data(as_text=True)
    if action == "merge":
        assert all(queue.get(db, i)["merged_into"] == made[0] for i in made[1:])


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"action": "triage", "ids": ["1"]}, 400),  # no CSRF token
        ({"action": "explode", "ids": ["1"], "csrf": True}, 303),
        ({"action": "merge", "ids": ["1"], "csrf": True}, 303),
        ({"action": "triage", "ids": ["x"], "csrf": True}, 400),
    ],
)
def test_bulk_actions_refuse_without_csrf_or_sense(db, coordinator, data, code):
    add_request(db)
    if data.pop("csrf", False):
        data["csrf_token"] = csrf_token(coordinator, "/console/")
    response = coordinator.post("/console/bulk", data=data)
    assert response.status_code == code
    assert queue.get(db, 1)["status"] == "new"


def test_viewer_cannot_bulk_act(app, db):
    add_request(db)
    viewer = as_role(app, db, "viewer")
    assert 'id="bulk-form"' not in viewer.get("/console/").get_data(as_text=True)
    token = csrf_token(viewer, "/console/")
    response = viewer.post(
        "/console/bulk", data={"action": "triage", "ids": ["1"], "csrf_token": token}
    )
    assert response.status_code == 403


def test_audit_trail_reads_as_words_not_json(db, coordinator):
    words = [{"text": "milk", "start": 0.0, "end": 0.4, "confidence": 0.9}]
    item = add_request(db, category=None, urgency=None, stage="received")
    queue.update(
        db,
        item["id"],
        {
            "stage": "transcribed",
            "transcript": "milk please",
            "transcript_words": words,
            "category": "groceries",
            "urgency": "normal",
            "needs_review": 1,
            "transcript_confidence": 0.82,
        },
        actor="system",
        action="understood",
    )
    queue.record_event(
        db, item["id"], "system", "alert", {"reason": "emergency", "matched": ["a", "b"]}
    )
    actions.set_status(db, item["id"], "triaged", actor="user:cora")
    html = coordinator.get(f"/console/requests/{item['id']}").get_data(as_text=True)
    trail = html.split('id="audit-heading"')[1].split("</ul>")[0]
    for raw in ("None", "[", "{", '"text"', "&#34;", "&#39;"):
        assert raw not in trail, raw
    assert "status new → triaged" in trail
    assert "category set to shopping and errands" in trail
    assert "recogniser confidence set to 82%" in trail
    assert "needs review no → yes" in trail or "needs review set to yes" in trail


def test_revoking_a_kiosk_asks_first_and_the_new_kiosk_has_a_qr_code(app, db):
    admin = as_role(app, db, "admin")
    response = post_form(
        admin, "/console/kiosks", {"name": "Riverside", "region": "r"}, page="/console/kiosks"
    )
    html = response.get_data(as_text=True)
    assert "<svg" in html and "QR code of the kiosk address" in html
    assert 'data-copy="http://localhost/kiosk?token=' in html
    kiosk = devices.find(db, "Riverside")
    listing = admin.get("/console/kiosks").get_data(as_text=True)
    # The list links to a question, not to a form that revokes at once.
    assert f'href="/console/kiosks/{kiosk.id}/revoke"' in listing
    asked = admin.get(f"/console/kiosks/{kiosk.id}/revoke").get_data(as_text=True)
    assert "cannot be undone" in asked and devices.get(db, kiosk.id).revoked_at is None


def test_first_run_banner_says_where_to_change_the_password(app):
    lines = cli.banner(app, "http://127.0.0.1:5000", ("admin", "s3cret"), True)
    line = next(line for line in lines if "s3cret" in line)
    assert "http://127.0.0.1:5000/console/password" in line


QUICK = accounts.password_hasher(time_cost=1, memory_kib=64, parallelism=1)


@pytest.mark.parametrize(
    ("users", "created"),
    [
        ([], True),
        # Users made before the first start: without an active admin, one is still made.
        ([("mary", "coordinator", True)], True),
        ([("boss", "admin", False), ("mary", "coordinator", True)], True),
        ([("boss", "admin", True)], False),
        # The name is taken: the banner says how to add an admin instead.
        ([("admin", "viewer", True)], False),
    ],
)
def test_the_first_start_makes_an_admin_when_nobody_can_administer(app, db, users, created):
    for name, role, active in users:
        accounts.create_user(db, name, role, "correct horse battery", hasher=QUICK)
        if not active:
            accounts.set_active(db, name, False)
    admin = cli.first_admin(app)
    assert (admin is not None) is created
    if created:
        assert admin[0] == "admin"
        made = db.execute("SELECT role, active FROM users WHERE name = 'admin'").fetchone()
        assert made == ("admin", 1)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({}, "the rules and the text models e5-small+minilm-l6"),
        ({"TEXT_MODEL": "none"}, "the rules alone (CARECALL_TEXT_MODEL=none)"),
        ({"TEXT_MODEL": "minilm-l6"}, "the rules alone (a text model cannot load"),
    ],
)
def test_the_banner_says_what_understands_requests(make_app, settings, says):
    lines = cli.banner(make_app(**settings), "http://127.0.0.1:5000", None, True)
    assert f"  understanding:       {says}" in [line[: len(says) + 23] for line in lines]


# ---- the kiosk's call-back number ----------------------------------------------------


@pytest.fixture
def kiosk_request(db):
    """Return (kiosk, token, request) for a request read back on a kiosk."""
    kiosk, token = devices.add(db, "Riverside Centre", region="riverside")
    item = add_request(
        db, channel="kiosk", phone=None, source_key=messages.source_key(kiosk, "rec-1")
    )
    return kiosk, token, item


@pytest.mark.parametrize(
    ("sent", "code", "stored"),
    [
        ("5551234567", 200, "+15551234567"),
        ("+447700900123", 200, "+447700900123"),
        ("555 123-4567", 200, "+15551234567"),
        ("123", 400, None),
        ("555123456789012345", 400, None),
        ("call me", 400, None),
        (12345678, 400, None),
        (None, 200, None),
    ],
)
def test_kiosk_call_back_number_is_stored_on_the_request(
    client, db, kiosk_request, sent, code, stored
):
    kiosk, token, item = kiosk_request
    response = client.post(
        f"/api/v1/voicemail/{item['id']}/phone",
        json={"phone": sent},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == code, response.get_json()
    assert queue.get(db, item["id"])["phone"] == stored
    actions_seen = [e["action"] for e in queue.events(db, item["id"])]
    if code == 200:
        assert response.get_json()["phone"] == stored
        assert ("call_back_number" if sent else "no_call_back_number") in actions_seen


def test_kiosk_call_back_number_needs_the_kiosks_token(client, db, kiosk_request):
    _, _, item = kiosk_request
    other, token = devices.add(db, "Hillside", region="hill")
    for headers, code in [({}, 401), ({"Authorization": f"Bearer {token}"}, 404)]:
        response = client.post(
            f"/api/v1/voicemail/{item['id']}/phone", json={"phone": "5551234567"}, headers=headers
        )
        assert response.status_code == code
    assert queue.get(db, item["id"])["phone"] is None


def test_kiosk_name_shows_on_its_requests_in_the_console(db, coordinator, kiosk_request):
    _, _, item = kiosk_request
    queue_html = coordinator.get("/console/").get_data(as_text=True)
    assert 'kiosk <span class="kiosk-name">(Riverside Centre)</span>' in queue_html
    page = coordinator.get(f"/console/requests/{item['id']}").get_data(as_text=True)
    assert "from the kiosk Riverside Centre" in page


def test_phone_numbers_are_tap_to_call(db, coordinator):
    item = add_request(db, phone="+15550001234")
    assert 'href="tel:+15550001234"' in coordinator.get("/console/").get_data(as_text=True)
    page = coordinator.get(f"/console/requests/{item['id']}").get_data(as_text=True)
    assert 'href="tel:+15550001234"' in page


def test_queue_has_a_skip_link_to_the_requests(db, coordinator):
    html = coordinator.get("/console/").get_data(as_text=True)
    assert '<a class="skip-link" href="#queue-live">Skip to the requests</a>' in html
    assert html.index("skip-link") < html.index("console-nav")


def test_kiosk_page_has_the_keypad_and_its_sentences(client):
    html = client.get("/kiosk").get_data(as_text=True)
    keys = re.findall(r'class="key" data-key="([0-9+])"', html)
    assert sorted(keys) == sorted("0123456789+")
    assert "No phone: a staff member will help" in html
    settings = json.loads(re.search(r'id="kiosk-settings">(.*?)</script>', html, re.S)[1])
    assert "{phone}" in settings["words"]["speech"]["done_phone"]
