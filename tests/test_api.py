"""The JSON API: bearer tokens, the console's rules, the same audit trail."""

import base64

import pytest

from app import accounts, queue
from app.console import search
from tests.test_console import add_request


def bearer(db, role, name=None):
    """Return Authorization headers for a fresh token with the role."""
    token, _ = accounts.create_token(db, name or role, role)
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer cc_not-a-real-token"}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ],
)
def test_no_valid_token_is_401(client, db, headers, status):
    response = client.get("/api/v1/requests", headers=headers)
    assert response.status_code == status
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.is_json


def test_revoked_token_is_401(client, db):
    token, row = accounts.create_token(db, "bot", "viewer")
    accounts.revoke_token(db, row["id"])
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/requests", headers=headers).status_code == 401


@pytest.mark.parametrize(
    ("role", "method", "status"),
    [
        ("viewer", "GET", 200),
        ("viewer", "PATCH", 403),
        ("coordinator", "GET", 200),
        ("coordinator", "PATCH", 200),
        ("admin", "PATCH", 200),
    ],
)
def test_roles(client, db, role, method, status):
    item = add_request(db)
    response = client.open(
        f"/api/v1/requests/{item['id']}",
        method=method,
        headers=bearer(db, role),
        json={"status": "triaged"} if method == "PATCH" else None,
    )
    assert response.status_code == status
    expected = "triaged" if method == "PATCH" and status == 200 else "new"
    assert queue.get(db, item["id"])["status"] == expected


def test_session_cookie_does_not_authenticate_the_api(app, db):
    from tests.test_console import as_role

    app.config.update(
        PASSWORD_HASH_TIME_COST=1, PASSWORD_HASH_MEMORY_KIB=64, PASSWORD_HASH_PARALLELISM=1
    )
    client = as_role(app, db, "coordinator")
    assert client.get("/api/v1/requests").status_code == 401


def test_patch_is_audited_as_the_token_and_stores_corrections(client, db):
    item = add_request(db, category="other")
    response = client.patch(
        f"/api/v1/requests/{item['id']}",
        headers=bearer(db, "coordinator", "dispatch-bot"),
        json={"category": "transport", "urgency": "high", "note": "Needs a wheelchair taxi"},
    )
    assert response.status_code == 200, response.json
    body = response.json
    assert (body["category"], body["urgency"]) == ("transport", "high")
    assert body["notes"][0]["body"] == "Needs a wheelchair taxi"
    actors = {(e["actor"], e["action"]) for e in body["events"]}
    assert {("token:dispatch-bot", "corrected"), ("token:dispatch-bot", "note")} <= actors
    corrected = [e for e in body["events"] if e["action"] == "corrected"][0]
    assert corrected["detail"]["category"] == ["other", "transport"]
    assert [r["field"] for r in db["corrections"].rows] == ["category", "urgency"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"status": "lost"}, 400, "status must be"),
        ({"category": "spaceflight"}, 400, "category must be"),
        ({"phone": "+1"}, 400, "cannot change phone"),
        ({"note": 5}, 400, "note must be text"),
        ({"urgency": {}}, 400, "urgency must be"),
        ({"urgency": []}, 400, "urgency must be"),
        ({"category": ["food"]}, 400, "category must be"),
        ({"status": {"a": 1}}, 400, "status must be"),
        ({}, 400, "send a JSON object"),
    ],
)
def test_bad_patches_are_400_and_change_nothing(client, db, body, status, message):
    item = add_request(db)
    response = client.patch(
        f"/api/v1/requests/{item['id']}", headers=bearer(db, "coordinator"), json=body
    )
    assert response.status_code == status and message in response.json["error"]
    assert len(queue.events(db, item["id"])) == 1


def test_missing_request_is_404(client, db):
    headers = bearer(db, "coordinator")
    assert client.get("/api/v1/requests/999", headers=headers).status_code == 404
    response = client.patch("/api/v1/requests/999", headers=headers, json={"status": "done"})
    assert response.status_code == 404 and response.is_json


def test_list_filters_and_pages(client, db):
    for i in range(5):
        add_request(db, phone="+15550000001", transcript=f"shopping list number {i}")
    add_request(db, phone="+15550000002", transcript="my boiler is broken", category="home_repair")
    headers = bearer(db, "viewer")
    seen, cursor = [], None
    while True:
        args = {"phone": "+15550000001", "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/requests", headers=headers, query_string=args).json
        seen += [r["id"] for r in body["requests"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 5
    found = client.get(
        "/api/v1/requests", headers=headers, query_string={"q": "boiler", "category": "home_repair"}
    ).json["requests"]
    assert [r["phone"] for r in found] == ["+15550000002"]


@pytest.mark.parametrize(
    "args", [{"status": "lost"}, {"limit": "many"}, {"cursor": "!!"}, {"date_to": "soon"}]
)
def test_bad_list_arguments_are_400(client, db, args):
    response = client.get("/api/v1/requests", headers=bearer(db, "viewer"), query_string=args)
    assert response.status_code == 400 and response.is_json


# Past SQLite's largest integer: the id must be refused, never reach the database.
TOO_BIG = 2**63
# JSON nested far past Python's recursion limit, and one holding a lone surrogate.
DEEP = "[" * 3000 + "]" * 3000
DEEP_CURSOR = base64.urlsafe_b64encode(DEEP.encode()).decode()
SURROGATE_CURSOR = "WyJcdWQ4MDAiLDFd"  # ["\ud800",1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"cursor": search.encode_cursor([None, None])}, "cursor"),
        ({"cursor": search.encode_cursor(["2026-01-01", TOO_BIG])}, "cursor"),
        ({"cursor": search.encode_cursor(["2026-01-01", "x"])}, "cursor"),
        ({"cursor": search.encode_cursor([1])}, "cursor"),
        ({"cursor": search.encode_cursor({"a": 1})}, "cursor"),
        ({"cursor": search.encode_cursor([None]), "q": "milk"}, "cursor"),
        ({"cursor": "!!!"}, "cursor"),
        ({"date_from": "2026-02-01", "date_to": "2026-01-01"}, "date_from"),
        ({"date_to": "10000-01-01"}, "date_to"),
        ({"region": "x" * 201}, "region"),
        ({"limit": str(TOO_BIG)}, None),
        ({"cursor": DEEP_CURSOR}, "cursor"),
        ({"cursor": SURROGATE_CURSOR}, "cursor is not one this server gave out"),
    ],
)
def test_odd_list_arguments_are_400_with_a_reason(client, db, args, message):
    add_request(db, transcript="milk please")
    response = client.get("/api/v1/requests", headers=bearer(db, "viewer"), query_string=args)
    if message is None:
        assert response.status_code == 200
    else:
        assert response.status_code == 400 and message in response.json["error"]


@pytest.mark.parametrize("date_to", ["9999-12-31", "0001-01-01"])
def test_dates_at_the_ends_of_the_calendar_are_answered(client, db, date_to):
    add_request(db)
    response = client.get(
        "/api/v1/requests", headers=bearer(db, "viewer"), query_string={"date_to": date_to}
    )
    assert response.status_code == 200
    assert len(response.json["requests"]) == (1 if date_to.startswith("9999") else 0)


@pytest.mark.parametrize("request_id", [str(TOO_BIG), "-1", "abc", "1e3", "0x10"])
@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_odd_request_ids_are_404(client, db, request_id, method):
    response = client.open(
        f"/api/v1/requests/{request_id}",
        method=method,
        headers=bearer(db, "coordinator"),
        json={"status": "done"},
    )
    assert response.status_code == 404 and "error" in response.json


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100000 + "]" * 100000,
        '{"note": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"note": "\\ud800"}',
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/api/v1/requests/{id}"),
        ("POST", "/api/v1/volunteers"),
        ("PATCH", "/api/v1/volunteers/1"),
    ],
)
def test_deep_or_broken_json_bodies_are_400(client, db, method, path, body):
    item = add_request(db)
    response = client.open(
        path.format(id=item["id"]),
        method=method,
        headers=bearer(db, "admin"),
        data=body,
        content_type="application/json",
    )
    assert response.status_code == 400 and response.is_json
    assert "codec" not in response.get_data(True)
    assert len(queue.events(db, item["id"])) == 1


def test_the_message_for_a_bad_cursor_names_no_codec(client, db):
    response = client.get(
        "/api/v1/requests",
        headers=bearer(db, "viewer"),
        query_string={"cursor": SURROGATE_CURSOR},
    )
    assert response.status_code == 400
    assert "codec" not in response.json["error"] and "surrogate" not in response.json["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/requests", 200),  # a read never waits for the write lock
        ("GET", "/api/v1/requests/{id}", 200),
        ("PATCH", "/api/v1/requests/{id}", 503),  # a write says "busy, try again"
    ],
)
def test_a_held_write_lock_does_not_fail_reads_and_writes_answer_busy(
    make_app, method, path, status
):
    from app.db import connect

    app = make_app(DB_BUSY_TIMEOUT_SECONDS=0.1)
    db = connect(app.config["DATABASE"])
    item = add_request(db)
    headers = bearer(db, "coordinator")
    db.execute("BEGIN IMMEDIATE")
    try:
        response = app.test_client().open(
            path.format(id=item["id"]), method=method, headers=headers, json={"status": "done"}
        )
    finally:
        db.conn.rollback()
    assert response.status_code == status and response.is_json, response.get_data(True)
    if status == 503:
        assert response.json["error"] == "busy" and int(response.headers["Retry-After"]) > 0
    assert queue.get(db, item["id"])["status"] == "new"


@pytest.mark.parametrize(("seconds_ago", "noted_again"), [(30, False), (120, True)])
def test_token_use_is_noted_at_most_once_a_minute(client, db, seconds_ago, noted_again):
    from datetime import UTC, datetime, timedelta

    headers = bearer(db, "viewer")
    earlier = (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat(timespec="seconds")
    db.execute("UPDATE api_tokens SET last_used_at = ?", [earlier])
    assert client.get("/api/v1/requests", headers=headers).status_code == 200
    [noted] = [r["last_used_at"] for r in db["api_tokens"].rows]
    assert (noted != earlier) == noted_again
