"""The volunteers API and a request's ranked matches: bearer tokens, JSON in and out."""

import pytest

from app import people
from tests.test_api import bearer
from tests.test_console import add_request

ALWAYS = "; ".join(f"{d} 00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))


def volunteer_body(**fields):
    """Return a volunteer as a client would post it."""
    return {
        "name": "Ann Lee",
        "phone": "+15550000101",
        "languages": ["en"],
        "skills": {"groceries": 2},
        "postcode": "riverside",
        "availability": ALWAYS,
        "max_open": 2,
    } | fields


def post(client, headers, **fields):
    """Register a volunteer through the API; return the response."""
    return client.post("/api/v1/volunteers", headers=headers, json=volunteer_body(**fields))


@pytest.mark.parametrize(
    ("role", "method", "path", "status"),
    [
        ("viewer", "GET", "/api/v1/volunteers", 200),
        ("viewer", "POST", "/api/v1/volunteers", 403),
        ("viewer", "PATCH", "/api/v1/volunteers/1", 403),
        ("viewer", "GET", "/api/v1/requests/1/matches", 200),
        ("coordinator", "POST", "/api/v1/volunteers", 201),
        (None, "GET", "/api/v1/volunteers", 401),
        (None, "GET", "/api/v1/requests/1/matches", 401),
    ],
)
def test_tokens_and_roles(client, db, role, method, path, status):
    add_request(db)
    people.add_volunteer(
        db, volunteer_body(phone="+15550000199"), people.rules_for(client.application)[0], actor="t"
    )
    headers = bearer(db, role) if role else {}
    body = volunteer_body() if method != "GET" else None
    response = client.open(path, method=method, headers=headers, json=body)
    assert response.status_code == status and response.is_json


def test_create_get_list_and_pause(client, db):
    headers = bearer(db, "coordinator", "dispatch-bot")
    created = post(client, headers)
    assert created.status_code == 201, created.json
    volunteer = created.json
    assert volunteer["skills"] == {"groceries": 2} and volunteer["region"] == "riverside"
    assert (volunteer["lat"], volunteer["active"]) == (51.5079, True)
    path = f"/api/v1/volunteers/{volunteer['id']}"
    assert client.get(path, headers=headers).json == volunteer
    paused = client.patch(path, headers=headers, json={"active": False})
    assert paused.status_code == 200 and paused.json["active"] is False
    everyone = client.get("/api/v1/volunteers", headers=headers).json["volunteers"]
    active = client.get("/api/v1/volunteers?active=true", headers=headers).json["volunteers"]
    assert [v["id"] for v in everyone] == [volunteer["id"]] and active == []
    [event] = db["events"].rows_where("action = 'volunteer_changed'")
    assert event["actor"] == "token:dispatch-bot" and '"active": [true, false]' in event["detail"]


@pytest.mark.parametrize(
    ("method", "fields", "status", "words"),
    [
        ("POST", {"phone": "555-0101"}, 400, "phone: '555-0101' is not E.164"),
        ("POST", {"skills": {"juggling": 1}}, 400, "skills: unknown skill 'juggling'"),
        ("POST", {"availability": "mon 9-5"}, 400, "availability:"),
        ("POST", {"favourite": "tea"}, 400, "favourite: is not a field"),
        ("POST", {"phone": "+15550000199"}, 409, "already has phone"),
        ("PATCH", {"max_open": -1}, 400, "max_open:"),
        ("PATCH", {"active": "maybe"}, 400, "active: 'maybe' is not yes or no"),
    ],
)
def test_bad_volunteers_are_refused_and_nothing_changes(client, db, method, fields, status, words):
    headers = bearer(db, "coordinator")
    first = post(client, headers, phone="+15550000199").json
    if method == "POST":
        response = post(client, headers, **fields)
    else:
        response = client.patch(f"/api/v1/volunteers/{first['id']}", headers=headers, json=fields)
    assert response.status_code == status and words in response.json["error"]
    assert client.get("/api/v1/volunteers", headers=headers).json["volunteers"] == [first]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/volunteers/99"), ("PATCH", "/api/v1/volunteers/99")],
)
def test_missing_volunteer_is_404(client, db, method, path):
    response = client.open(path, method=method, headers=bearer(db, "coordinator"), json={"a": 1})
    assert response.status_code == 404 and response.is_json


def test_matches_rank_with_reasons_and_leave_out_the_paused(client, db):
    headers = bearer(db, "coordinator")
    near = post(client, headers, name="Near", phone="+15550000101").json
    far = post(client, headers, name="Far", phone="+15550000102", postcode="old town").json
    paused = post(client, headers, name="Paused", phone="+15550000103").json
    client.patch(f"/api/v1/volunteers/{paused['id']}", headers=headers, json={"active": False})
    post(client, headers, name="Driver", phone="+15550000104", skills={"transport": 3})
    item = add_request(db, category="groceries", region="riverside", language="en")
    body = client.get(f"/api/v1/requests/{item['id']}/matches?limit=10", headers=headers).json
    assert [m["volunteer_id"] for m in body["matches"]] == [near["id"], far["id"]]
    assert set(body["matches"][0]) >= {"volunteer_id", "name", "score", "reasons"}
    assert "0.0 km away" in body["matches"][0]["reasons"]
    assert "6.2 km away" in body["matches"][1]["reasons"]
    assert "free now, until 24:00" in body["matches"][0]["reasons"]
    assert body["matches"][0]["score"] > body["matches"][1]["score"]
    one = client.get(f"/api/v1/requests/{item['id']}/matches?limit=1", headers=headers).json
    assert [m["name"] for m in one["matches"]] == ["Near"]


def test_matches_use_the_callers_language_and_preferred_volunteer(client, db):
    headers = bearer(db, "coordinator")
    english = post(client, headers, name="English", phone="+15550000101").json
    korean = post(client, headers, name="Korean", phone="+15550000102", languages=["ko"]).json
    rules = people.rules_for(client.application)[0]
    person = {"name": "May Chen", "phones": ["+15550000001"], "language": "ko"}
    people.add_person(db, person | {"postcode": "E1 6AN"}, rules, actor="t")
    item = add_request(db, phone="+15550000001")
    path = f"/api/v1/requests/{item['id']}/matches"
    body = client.get(path, headers=headers).json
    assert [m["volunteer_id"] for m in body["matches"]] == [korean["id"]]
    assert (body["language"], body["speakers"], body["language_override"]) == ("ko", 1, False)
    assert "speaks Korean (1 volunteer does)" in body["matches"][0]["reasons"]
    overridden = client.get(path + "?override_language=yes", headers=headers).json
    assert {m["volunteer_id"] for m in overridden["matches"]} == {english["id"], korean["id"]}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/requests/999/matches", 404),
        ("/api/v1/requests/1/matches?limit=0", 400),
        ("/api/v1/requests/1/matches?limit=lots", 400),
        ("/api/v1/requests/1/matches?override_language=perhaps", 400),
        ("/api/v1/requests/1/matches?at=tomorrow", 400),
    ],
)
def test_bad_match_questions(client, db, path, status):
    add_request(db)
    response = client.get(path, headers=bearer(db, "viewer"))
    assert response.status_code == status and response.is_json


def test_matches_follow_every_change_to_the_registry(client, db):
    headers = bearer(db, "coordinator")
    first = post(client, headers, name="First", phone="+15550000101").json
    item = add_request(db, category="groceries", region="riverside", language="en")
    path = f"/api/v1/requests/{item['id']}/matches"
    assert [m["name"] for m in client.get(path, headers=headers).json["matches"]] == ["First"]
    client.patch(f"/api/v1/volunteers/{first['id']}", headers=headers, json={"active": False})
    assert client.get(path, headers=headers).json["matches"] == []
    # A write that bypasses the API (a CSV import, another process) is seen too.
    db["volunteers"].update(first["id"], {"active": 1})
    assert [m["name"] for m in client.get(path, headers=headers).json["matches"]] == ["First"]


@pytest.mark.parametrize(
    ("at", "expected", "reason"),
    [
        ("2026-12-01T10:00", ["Tuesday"], "free at the requested time, until 12:00"),
        ("2026-12-02T15:00+00:00", ["Wednesday"], "free at the requested time, until 18:00"),
        ("2026-12-03T10:00", [], None),
    ],
)
def test_matches_at_a_requested_time(client, db, at, expected, reason):
    headers = bearer(db, "coordinator")
    post(client, headers, name="Tuesday", phone="+15550000101", availability="tue 09:00-12:00")
    post(client, headers, name="Wednesday", phone="+15550000102", availability="wed 14:00-18:00")
    item = add_request(db)
    path = f"/api/v1/requests/{item['id']}/matches"
    body = client.get(path, headers=headers, query_string={"at": at}).json
    assert [m["name"] for m in body["matches"]] == expected
    if reason:
        assert reason in body["matches"][0]["reasons"]


@pytest.mark.parametrize(
    ("offset", "status"),
    [
        ("0", 200),
        ("1000000", 200),
        ("-1", 400),
        ("1000001", 400),
        ("9223372036854775808", 400),
        ("99999999999999999999999999", 400),
        ("lots", 400),
    ],
)
def test_volunteer_offsets_are_bounded(client, db, offset, status):
    response = client.get(
        "/api/v1/volunteers", headers=bearer(db, "viewer"), query_string={"offset": offset}
    )
    assert response.status_code == status and response.is_json
    if status == 400:
        assert "offset must be a whole number from 0 to" in response.json["error"]
