"""The coordinator console through the Flask test client: permissions, audit, merge, search."""

import base64
import json
import re
import wave
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from app import accounts, queue
from app.console import actions, search
from app.kiosk import devices
from app.migrations import migrations
from app.security import CSRF_EXEMPT_BLUEPRINTS, SECURITY_HEADERS

PASSWORD = "correct horse battery"
# Real argon2id, at test-sized cost: the production cost is a quarter second per hash.
FAST = {
    "PASSWORD_HASH_TIME_COST": 1,
    "PASSWORD_HASH_MEMORY_KIB": 64,
    "PASSWORD_HASH_PARALLELISM": 1,
}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(autouse=True)
def fast_hashing(app):
    """Hash passwords at test-sized cost in this module's app."""
    app.config.update(FAST)


def fast_hasher():
    """Return the test-sized password hasher."""
    return accounts.password_hasher(1, 64, 1)


def make_user(db, name, role):
    """Create a user with the test password."""
    return accounts.create_user(db, name, role, PASSWORD, hasher=fast_hasher())


def csrf_token(client, path="/console/login"):
    """Fetch a page and return the CSRF token its forms carry."""
    html = client.get(path, follow_redirects=True).get_data(as_text=True)
    match = _CSRF.search(html)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client, name, password=PASSWORD):
    """Log in through the real form; return the response."""
    token = csrf_token(client)
    return client.post(
        "/console/login", data={"name": name, "password": password, "csrf_token": token}
    )


def write_wav(path, seconds=1.0, rate=8000):
    """Write a short silent mono WAV and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return path


def add_request(db, **fields):
    """Queue a transcribed request with sensible defaults."""
    fields.setdefault("channel", "phone")
    fields.setdefault("phone", "+15550000001")
    fields.setdefault("category", "groceries")
    fields.setdefault("urgency", "normal")
    fields.setdefault("stage", "transcribed")
    item, _ = queue.create(db, **fields)
    return item


def as_role(app, db, role):
    """Return a client logged in as a fresh user with the role."""
    make_user(db, role + "1", role)
    client = app.test_client()
    assert login(client, role + "1").status_code == 303
    return client


def post_form(client, path, data, page=None):
    """Post a console form with the CSRF token from the page it lives on."""
    token = csrf_token(client, page or "/console/")
    return client.post(path, data={**data, "csrf_token": token})


@pytest.fixture
def coordinator(app, db):
    """Return a client logged in as a coordinator."""
    return as_role(app, db, "coordinator")


def test_token_blueprints_are_csrf_exempt_and_console_is_not(app):
    client = app.test_client()
    checked = set()
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.partition(".")[0]
        methods = rule.methods & {"POST", "PATCH", "PUT", "DELETE"}
        if blueprint not in (*CSRF_EXEMPT_BLUEPRINTS, "console") or not methods:
            continue
        path = re.sub(r"<[^>]+>", "1", rule.rule)
        response = client.open(path, method=sorted(methods)[0], data={})
        refused = b"CSRF" in response.data
        assert refused == (blueprint == "console"), (rule.rule, response.status_code)
        checked.add(blueprint)
    assert {"api", "console"} <= checked


@pytest.mark.parametrize("path", ["/", "/console/login", "/console/", "/api/v1/requests"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_session_cookie_is_http_only_and_same_site(app, db, client):
    make_user(db, "alice", "coordinator")
    response = login(client, "alice")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


@pytest.mark.parametrize(("secure", "hsts"), [(False, False), (True, True)])
def test_hsts_only_when_cookies_are_secure(app, client, secure, hsts):
    app.config["SESSION_COOKIE_SECURE"] = secure
    assert ("Strict-Transport-Security" in client.get("/").headers) is hsts


def test_pages_have_no_inline_scripts_or_styles(app, db, coordinator):
    item = add_request(db, transcript="I need milk", urgency="critical")
    pages = [
        coordinator.get("/console/"),
        coordinator.get(f"/console/requests/{item['id']}"),
        coordinator.get("/console/supervision"),
        app.test_client().get("/console/login"),
        app.test_client().get("/v/not-a-link"),  # the volunteer's page (tests/test_mobile.py)
    ]
    for page in pages:
        html = page.get_data(as_text=True)
        assert "<script>" not in html and "style=" not in html and "<style" not in html
        assert re.findall(r"<script [^>]*src=\"/static/", html)


@pytest.mark.parametrize(
    ("role", "method", "path", "expected"),
    [
        (None, "GET", "/console/", 302),
        (None, "GET", "/console/requests/{id}", 302),
        (None, "GET", "/console/requests/{id}/audio", 302),
        ("viewer", "GET", "/console/", 200),
        ("viewer", "GET", "/console/requests/{id}", 200),
        ("viewer", "POST", "/console/requests/{id}/status", 403),
        ("viewer", "POST", "/console/requests/{id}/correct", 403),
        ("viewer", "POST", "/console/requests/{id}/notes", 403),
        ("viewer", "POST", "/console/requests/{id}/callbacks", 403),
        ("viewer", "POST", "/console/requests/{id}/merge", 403),
        ("viewer", "GET", "/console/users", 403),
        ("coordinator", "POST", "/console/requests/{id}/status", 303),
        ("coordinator", "GET", "/console/users", 403),
        ("coordinator", "POST", "/console/users", 403),
        ("coordinator", "POST", "/console/tokens", 403),
        ("admin", "GET", "/console/users", 200),
        ("admin", "POST", "/console/requests/{id}/status", 303),
    ],
)
def test_permission_boundaries(app, db, role, method, path, expected):
    item = add_request(db, transcript="please bring bread")
    client = as_role(app, db, role) if role else app.test_client()
    path = path.format(id=item["id"])
    if method == "GET":
        response = client.get(path)
    else:
        token = csrf_token(client, "/console/login")
        response = client.post(path, data={"status": "triaged", "csrf_token": token})
    assert response.status_code == expected
    if role == "viewer":
        assert queue.get(db, item["id"])["status"] == "new"


def test_viewer_sees_no_forms(app, db):
    item = add_request(db, transcript="please bring bread")
    html = as_role(app, db, "viewer").get(f"/console/requests/{item['id']}").get_data(True)
    assert "Save corrections" not in html and "Add note" not in html


@pytest.mark.parametrize("path", ["/console/requests/{id}/status", "/console/logout"])
def test_csrf_missing_is_400(app, db, coordinator, path):
    item = add_request(db)
    response = coordinator.post(path.format(id=item["id"]), data={"status": "done"})
    assert response.status_code == 400
    assert queue.get(db, item["id"])["status"] == "new"


def test_status_change_is_audited_with_before_and_after(db, coordinator):
    item = add_request(db)
    response = post_form(
        coordinator, f"/console/requests/{item['id']}/status", {"status": "triaged"}
    )
    assert response.status_code == 303
    event = queue.events(db, item["id"])[-1]
    assert event["actor"] == "user:coordinator1"
    assert event["action"] == "status"
    assert event["detail"]["status"] == ["new", "triaged"]


def test_correction_is_audited_and_stored_as_labelled_data(db, coordinator, runner, tmp_path):
    item = add_request(db, transcript="my tap is leaking", category="other", needs_review=1)
    post_form(
        coordinator,
        f"/console/requests/{item['id']}/correct",
        {"category": "home_repair", "urgency": "high", "transcript": "my tap is leaking badly"},
    )
    after = queue.get(db, item["id"])
    assert (after["category"], after["urgency"], after["needs_review"]) == (
        "home_repair",
        "high",
        False,
    )
    event = queue.events(db, item["id"])[-1]
    assert event["action"] == "corrected"
    assert event["detail"]["category"] == ["other", "home_repair"]
    out = tmp_path / "corrections.jsonl"
    result = runner.invoke(args=["export-corrections", "--field", "category", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["field"], r["before"], r["after"]) for r in rows] == [
        ("category", "other", "home_repair")
    ]
    assert rows[0]["transcript"] == "my tap is leaking badly"
    assert rows[0]["actor"] == "user:coordinator1"
    result = runner.invoke(args=["export-corrections", "--format", "tsv"])
    assert result.stdout.splitlines()[:2] == [
        "text\tcategory\turgency",
        "my tap is leaking badly\thome_repair\thigh",
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"category": "spaceflight"}, "category must be one of"),
        ({"urgency": "whenever"}, "urgency must be one of"),
        ({"transcript": "   "}, "transcript must not be empty"),
        ({"status": "lost"}, "status must be one of"),
        ({"phone": "+1"}, "cannot be changed"),
    ],
)
def test_bad_changes_are_refused(db, changes, message):
    item = add_request(db)
    with pytest.raises(actions.BadChange, match=message):
        actions.change(db, item["id"], changes, actor="user:x")
    assert len(queue.events(db, item["id"])) == 1


def test_notes_and_callbacks_are_audited(db, coordinator):
    item = add_request(db)
    post_form(coordinator, f"/console/requests/{item['id']}/notes", {"body": "Daughter visits Fri"})
    post_form(
        coordinator,
        f"/console/requests/{item['id']}/callbacks",
        {"outcome": "reached", "note": "Milk on Tuesday is fine"},
    )
    html = coordinator.get(f"/console/requests/{item['id']}").get_data(as_text=True)
    assert "Daughter visits Fri" in html and "Milk on Tuesday is fine" in html
    kinds = [(e["actor"], e["action"]) for e in queue.events(db, item["id"])]
    assert kinds[-2:] == [("user:coordinator1", "note"), ("user:coordinator1", "called_back")]
    assert actions.callbacks(db, item["id"])[0]["outcome"] == "reached"


def test_duplicates_by_phone_window_and_similar_words(db):
    first = add_request(db, phone="+15551112222", transcript="Could someone get my shopping")
    same_phone = add_request(db, phone="+15551112222", transcript="It's about the tap")
    similar = add_request(
        db, phone="+15559990000", transcript="could someone get my shopping please"
    )
    unrelated = add_request(db, phone="+15553334444", transcript="I would like a lift to church")
    old = add_request(db, phone="+15551112222", transcript="Could someone get my shopping")
    db["requests"].update(old["id"], {"created_at": "2020-01-01T00:00:00+00:00"})
    found = actions.duplicates(db, queue.get(db, first["id"]), window_hours=24, similarity=85)
    by_id = {d["id"]: d["reasons"] for d in found}
    assert by_id[same_phone["id"]] == ["same phone number"]
    assert by_id[similar["id"]][0].startswith("similar words")
    assert unrelated["id"] not in by_id and old["id"] not in by_id


def test_merge_keeps_both_recordings_and_marks_called_again(app, db, coordinator):
    data = Path(app.config["DATA_DIR"])
    write_wav(data / "recordings" / "a.wav")
    write_wav(data / "recordings" / "b.wav")
    survivor = add_request(db, audio_path="recordings/a.wav", transcript="bread and milk please")
    dupe = add_request(
        db, audio_path="recordings/b.wav", urgency="high", transcript="bread and milk please"
    )
    page = f"/console/requests/{survivor['id']}"
    assert f'name="duplicate" value="{dupe["id"]}"' in coordinator.get(page).get_data(True)
    response = post_form(coordinator, f"{page}/merge", {"duplicate": dupe["id"]}, page=page)
    assert response.status_code == 303
    kept, merged = queue.get(db, survivor["id"]), queue.get(db, dupe["id"])
    assert kept["called_again"] == 1 and kept["urgency"] == "high"
    assert merged["merged_into"] == survivor["id"] and merged["status"] == "cancelled"
    assert merged["audio_path"] == "recordings/b.wav"
    html = coordinator.get(page).get_data(as_text=True)
    assert f"/console/requests/{dupe['id']}/audio" in html and "called again" in html
    with coordinator.get(f"/console/requests/{dupe['id']}/audio") as audio:
        assert audio.status_code == 200
    assert [e["action"] for e in queue.events(db, dupe["id"])][-1] == "merged_into"
    with pytest.raises(actions.MergeRefused):
        actions.merge(db, survivor["id"], dupe["id"], actor="user:x")


def test_audio_is_served_with_range_to_logged_in_users_only(app, db, coordinator):
    write_wav(Path(app.config["DATA_DIR"]) / "recordings" / "x.wav", seconds=2)
    item = add_request(db, audio_path="recordings/x.wav")
    url = f"/console/requests/{item['id']}/audio"
    with coordinator.get(url) as whole:
        assert whole.status_code == 200 and whole.mimetype in ("audio/x-wav", "audio/wav")
    with coordinator.get(url, headers={"Range": "bytes=100-199"}) as part:
        assert part.status_code == 206 and len(part.data) == 100
    assert app.test_client().get(url).status_code == 302


@pytest.mark.parametrize("stored", ["../secret.wav", "/etc/passwd", "recordings/missing.wav"])
def test_audio_never_leaves_data_dir(app, db, coordinator, stored):
    (Path(app.config["DATA_DIR"]).parent / "secret.wav").write_bytes(b"RIFF")
    item = add_request(db, audio_path=stored)
    with coordinator.get(f"/console/requests/{item['id']}/audio") as response:
        assert response.status_code == 404


def test_queue_pins_open_critical_requests_first(db, coordinator):
    add_request(db, transcript="a lift to the shops")
    critical = add_request(db, transcript="I have fallen and cannot get up", urgency="critical")
    add_request(db, transcript="help with a form")
    html = coordinator.get("/console/").get_data(as_text=True)
    pinned, rest = html.split('id="list-heading"')
    assert f'data-id="{critical["id"]}"' in pinned
    assert f'data-id="{critical["id"]}"' not in rest
    assert f'data-pinned-ids="{critical["id"]}"' in coordinator.get("/console/rows").get_data(True)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, ["tea", "fall", "pills"]),
        ({"status": "all"}, ["done", "tea", "fall", "pills"]),
        ({"status": "done"}, ["done"]),
        ({"category": "medical"}, ["pills"]),
        ({"urgency": "critical"}, ["fall"]),
        ({"region": "north"}, ["tea"]),
        ({"channel": "kiosk"}, ["pills"]),
        ({"language": "ko"}, ["fall"]),
        ({"phone": "+15550000009"}, ["pills"]),
        ({"q": "tablets"}, ["pills"]),
        ({"q": "fallen floor"}, ["fall"]),
        ({"q": "fell", "status": "all"}, []),
        ({"date_from": "2030-01-01"}, []),
        ({"date_to": "2030-01-01"}, ["tea", "fall", "pills"]),
    ],
)
def test_filters(db, args, expected):
    texts = {
        "done": dict(transcript="old news", status="done"),
        "tea": dict(transcript="someone to have tea with", region="north"),
        "fall": dict(transcript="I have fallen on the floor", urgency="critical", language="ko"),
        "pills": dict(
            transcript="my tablets ran out",
            category="medical",
            channel="kiosk",
            phone="+15550000009",
        ),
    }
    ids = {}
    for name, fields in texts.items():
        status = fields.pop("status", None)
        ids[add_request(db, **fields)["id"]] = name
        if status:
            queue.update(db, max(ids), {"status": status}, actor="system", action="test")
    rows, _ = search.list_requests(db, search.Filters.from_args(args))
    assert sorted(ids[r["id"]] for r in rows) == sorted(expected)


@pytest.mark.parametrize(
    "args",
    [{"status": "lost"}, {"category": "x"}, {"urgency": "soon"}, {"date_from": "yesterday"}],
)
def test_bad_filters_are_refused(args):
    with pytest.raises(search.BadFilter):
        search.Filters.from_args(args)


def test_fts_follows_transcript_corrections(db):
    item = add_request(db, transcript="the boiler is broken")
    assert search.list_requests(db, search.Filters(q="boiler"))[0]
    actions.change(db, item["id"], {"transcript": "the radiator is cold"}, actor="user:x")
    assert search.list_requests(db, search.Filters(q="boiler"))[0] == []
    assert [r["id"] for r in search.list_requests(db, search.Filters(q="radiators"))[0]] == [
        item["id"]
    ]


@pytest.mark.parametrize("text", ['"', "AND OR NOT", "*", "col:thing", "NEAR(a b)", "ü'); --"])
def test_fts_query_never_raises_on_what_people_type(db, text):
    add_request(db, transcript="and or not near thing")
    search.list_requests(db, search.Filters(q=text))


def test_cursor_pages_through_everything_once(db):
    made = {add_request(db, transcript=f"request {i}")["id"] for i in range(7)}
    seen, cursor = [], None
    while True:
        rows, cursor = search.list_requests(
            db, search.Filters(status="all"), limit=3, cursor=cursor
        )
        seen += [r["id"] for r in rows]
        if not cursor:
            break
    assert sorted(seen) == sorted(made) and len(seen) == len(made)


def test_low_confidence_words_are_marked_and_seekable(db, coordinator):
    words = [
        {"text": "bring", "start": 0.0, "end": 0.3, "confidence": 0.95},
        {"text": "paracetamol", "start": 0.4, "end": 1.1, "confidence": 0.31},
    ]
    item = add_request(db, transcript="bring paracetamol", transcript_words=json.dumps(words))
    html = coordinator.get(f"/console/requests/{item['id']}").get_data(as_text=True)
    low = r'<button type="button" class="word low" data-start="0.4"[^>]*>paracetamol'
    assert re.search(low, html)
    assert '<span class="word">bring</span>' in html


def test_admin_creates_user_and_token_in_the_browser_forms(app, db):
    admin = as_role(app, db, "admin")
    response = post_form(
        admin,
        "/console/users",
        {"name": "bob", "role": "viewer", "password": "long enough pw"},
        page="/console/users",
    )
    assert response.status_code == 303
    assert [u["role"] for u in accounts.list_users(db) if u["name"] == "bob"] == ["viewer"]
    html = post_form(
        admin, "/console/tokens", {"name": "bot", "role": "viewer"}, page="/console/users"
    ).get_data(as_text=True)
    secret = re.search(r"<code>(cc_[^<]+)</code>", html).group(1)
    assert accounts.principal_for_token(db, secret).role == "viewer"
    assert secret not in json.dumps(list(db["api_tokens"].rows))
    audit = [(e["actor"], e["action"]) for e in db["events"].rows_where("request_id IS NULL")]
    assert ("user:admin1", "user_created") in audit
    assert ("user:admin1", "token_created") in audit


def test_alert_sound_is_a_short_wav():
    path = Path(__file__).resolve().parent.parent / "app/static/console/alert.wav"
    with wave.open(str(path)) as sound:
        seconds = sound.getnframes() / sound.getframerate()
    assert 0.2 < seconds < 1.0 and path.stat().st_size < 50_000


def test_disabled_user_is_logged_out(app, db, coordinator):
    accounts.set_active(db, "coordinator1", False)
    assert coordinator.get("/console/").status_code == 302


_KIOSK_TOKEN = re.compile(r"Token: <code>([^<]+)</code>")


def add_kiosk_in_console(admin, name="Riverside Centre", region="riverside"):
    """Add a kiosk through the admin's form; return the response and the token it shows."""
    response = post_form(
        admin, "/console/kiosks", {"name": name, "region": region}, page="/console/kiosks"
    )
    match = _KIOSK_TOKEN.search(response.get_data(as_text=True))
    return response, match and match.group(1)


@pytest.mark.parametrize(
    ("role", "method", "path", "expected"),
    [
        (None, "GET", "/console/kiosks", 302),
        (None, "POST", "/console/kiosks", 302),
        (None, "POST", "/console/kiosks/{id}/revoke", 302),
        ("viewer", "GET", "/console/kiosks", 403),
        ("viewer", "POST", "/console/kiosks", 403),
        ("viewer", "POST", "/console/kiosks/{id}/revoke", 403),
        ("coordinator", "GET", "/console/kiosks", 403),
        ("coordinator", "POST", "/console/kiosks", 403),
        ("coordinator", "POST", "/console/kiosks/{id}/revoke", 403),
        ("admin", "GET", "/console/kiosks", 200),
        ("admin", "POST", "/console/kiosks", 200),
        ("admin", "POST", "/console/kiosks/{id}/revoke", 303),
    ],
)
def test_kiosk_page_permission_boundaries(app, db, role, method, path, expected):
    kiosk, _ = devices.add(db, "Hillside Centre", region="hillside")
    client = as_role(app, db, role) if role else app.test_client()
    path = path.format(id=kiosk.id)
    if method == "GET":
        response = client.get(path)
    else:
        token = csrf_token(client, "/console/login")
        data = {"name": "Harbour Centre", "region": "harbour", "csrf_token": token}
        response = client.post(path, data={**data, "confirm": "yes"})
    assert response.status_code == expected
    if response.status_code == 302:
        assert response.headers["Location"].startswith("/console/login?next=")
    if role != "admin":
        assert [(k.name, k.revoked_at) for k in devices.listing(db, include_revoked=True)] == [
            ("Hillside Centre", None)
        ]


@pytest.mark.parametrize("path", ["/console/kiosks", "/console/kiosks/{id}/revoke"])
def test_kiosk_forms_without_csrf_are_400(app, db, path):
    kiosk, _ = devices.add(db, "Hillside Centre", region="hillside")
    admin = as_role(app, db, "admin")
    response = admin.post(path.format(id=kiosk.id), data={"name": "X", "region": "y"})
    assert response.status_code == 400
    assert [(k.name, k.revoked_at) for k in devices.listing(db, include_revoked=True)] == [
        ("Hillside Centre", None)
    ]


def test_added_kiosk_token_is_shown_once_with_the_tablet_address(app, db):
    admin = as_role(app, db, "admin")
    response, token = add_kiosk_in_console(admin)
    html = response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert f"<code>http://localhost/kiosk?token={token}</code>" in html
    assert devices.authenticate(db, token).region == "riverside"
    assert token not in json.dumps(list(db["kiosks"].rows))
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    later = admin.get("/console/kiosks").get_data(as_text=True)
    assert "Riverside Centre" in later and token not in later
    assert f"<code>{token[: devices.HINT_CHARS]}…</code>" in later


def test_revoked_kiosk_is_refused_and_both_steps_are_audited(app, db, client):
    admin = as_role(app, db, "admin")
    _, token = add_kiosk_in_console(admin)
    kiosk = devices.authenticate(db, token)
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/kiosk", headers=bearer).status_code == 200
    path = f"/console/kiosks/{kiosk.id}/revoke"
    # Unconfirmed, the revoke only asks.
    asked = post_form(admin, path, {}, page="/console/kiosks")
    assert asked.status_code == 200 and "Yes, revoke kiosk" in asked.get_data(True)
    assert client.get("/api/v1/kiosk", headers=bearer).status_code == 200
    response = post_form(admin, path, {"confirm": "yes"}, page="/console/kiosks")
    assert response.status_code == 303
    assert "Revoked kiosk Riverside Centre" in admin.get("/console/kiosks").get_data(True)
    assert client.get("/api/v1/kiosk", headers=bearer).status_code == 401
    assert post_form(admin, path, {"confirm": "yes"}, page="/console/kiosks").status_code == 303
    audit = [
        (e["actor"], e["action"], json.loads(e["detail"]))
        for e in db["events"].rows_where("request_id IS NULL AND action LIKE 'kiosk_%'")
    ]
    detail = {"kiosk": kiosk.id, "name": "Riverside Centre"}
    assert audit == [
        ("user:admin1", "kiosk_added", detail | {"region": "riverside"}),
        ("user:admin1", "kiosk_revoked", detail),
    ]


@pytest.mark.parametrize(
    ("name", "region", "message"),
    [
        ("", "riverside", "Enter the kiosk&#39;s name."),
        ("   ", "riverside", "Enter the kiosk&#39;s name."),
        ("Riverside Centre", "", "Enter the kiosk&#39;s region."),
        ("x" * 81, "riverside", "The name must be at most 80 characters."),
        ("Riverside Centre", "r" * 41, "The region must be at most 40 characters."),
    ],
)
def test_bad_kiosk_fields_are_shown_in_the_form(app, db, name, region, message):
    response, token = add_kiosk_in_console(as_role(app, db, "admin"), name, region)
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and token is None
    assert message in html and 'aria-invalid="true"' in html
    assert devices.listing(db, include_revoked=True) == []


@pytest.fixture(scope="module")
def memory_db():
    """Return one migrated in-memory database with a request, for property tests."""
    database = Database(memory=True)
    migrations.apply(database)
    add_request(database, transcript="and or not near thing")
    return database


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_search_never_raises_on_any_text(memory_db, text):
    rows, _ = search.list_requests(memory_db, search.Filters(status="all", q=text))
    assert isinstance(rows, list)


# Past SQLite's largest integer: an id like this must be refused, never reach the database.
TOO_BIG = 2**63


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": search.encode_cursor([None, None])}, "cursor"),
        ({"cursor": search.encode_cursor(["2026-01-01", TOO_BIG])}, "cursor"),
        ({"cursor": search.encode_cursor([None]), "q": "milk"}, "cursor"),
        ({"date_from": "2026-02-01", "date_to": "2026-01-01"}, "date_from"),
        ({"date_to": "9999-12-31"}, None),
        ({"cursor": base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode()}, "cursor"),
        ({"cursor": "WyJcdWQ4MDAiLDFd"}, "cursor"),  # ["\ud800",1]: a lone surrogate
    ],
)
@pytest.mark.parametrize("path", ["/console/", "/console/rows"])
def test_odd_queue_arguments_are_explained_not_500(db, coordinator, path, args, shown):
    add_request(db, transcript="milk please")
    response = coordinator.get(path, query_string=args)
    if shown is None:
        assert response.status_code == 200 and "milk please" in response.get_data(True)
    else:
        assert response.status_code == 400
        # The rows fragment only refreshes the page; the page itself says what was wrong.
        assert path == "/console/rows" or shown in response.get_data(True)


@pytest.mark.parametrize("request_id", [str(TOO_BIG), "-1", "abc"])
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("GET", "/audio"), ("POST", "/notes"), ("POST", "/merge")],
)
def test_odd_request_ids_in_console_paths_are_404(db, coordinator, request_id, method, suffix):
    path = f"/console/requests/{request_id}{suffix}"
    if method == "GET":
        response = coordinator.get(path)
    else:
        response = post_form(coordinator, path, {"body": "hello", "duplicate": "1"})
    assert response.status_code == 404


@pytest.mark.parametrize("duplicate", [str(TOO_BIG), "-1", "abc", "", "1.5"])
def test_odd_merge_targets_are_refused(db, coordinator, duplicate):
    survivor = add_request(db, transcript="bread and milk please")
    page = f"/console/requests/{survivor['id']}"
    response = post_form(coordinator, f"{page}/merge", {"duplicate": duplicate}, page=page)
    assert response.status_code in (400, 404)
    assert queue.get(db, survivor["id"])["called_again"] == 0


@pytest.mark.parametrize(
    "args",
    [
        {"date_from": "2026-02-01", "date_to": "2026-01-31"},
        {"phone": "1" * 201},
        {"region": "r" * 201},
    ],
)
def test_more_bad_filters_are_refused(args):
    with pytest.raises(search.BadFilter):
        search.Filters.from_args(args)


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("notes", {"body": "n" * (actions.MAX_TEXT + 1)}),
        ("callbacks", {"outcome": "reached", "note": "n" * (actions.MAX_TEXT + 1)}),
        ("correct", {"transcript": "t" * (actions.MAX_TEXT + 1)}),
    ],
)
def test_over_long_console_text_is_refused_and_not_stored(db, coordinator, path, data):
    item = add_request(db, transcript="bread please")
    page = f"/console/requests/{item['id']}"
    response = post_form(coordinator, f"{page}/{path}", data, page=page)
    assert response.status_code == 303
    assert "at most" in coordinator.get(page).get_data(as_text=True)
    assert actions.notes(db, item["id"]) == actions.callbacks(db, item["id"]) == []
    assert queue.get(db, item["id"])["transcript"] == "bread please"


def test_a_failed_request_shows_why_in_the_queue_the_page_and_the_api(app, db, coordinator):
    from app import pipeline

    item = add_request(db, stage="received", category=None)
    reason = "speech model whisper-tiny-en unavailable: size of model.bin changed"
    pipeline.fail(db, item["id"], reason)
    row = coordinator.get("/console/").get_data(as_text=True)
    assert f"Not understood: {reason}" in row
    page = coordinator.get(f"/console/requests/{item['id']}").get_data(as_text=True)
    assert f"Not transcribed: {reason}" in page
    token, _ = accounts.create_token(db, "monitor", "viewer")
    listed = (
        app.test_client()
        .get("/api/v1/requests", headers={"Authorization": f"Bearer {token}"})
        .get_json()["requests"]
    )
    assert [(r["stage"], r["urgency"], r["error"]) for r in listed] == [("failed", "high", reason)]


@pytest.mark.parametrize("path", ["/console/", "/console/rows"])
def test_a_held_write_lock_does_not_fail_a_logged_in_page(make_app, path):
    """Noting that a session is still in use must not wait for, or fail on, the lock."""
    import time

    from app.db import connect

    app = make_app(DB_BUSY_TIMEOUT_SECONDS=0.1, **FAST)
    db = connect(app.config["DATABASE"])
    client = as_role(app, db, "coordinator")
    add_request(db, transcript="milk please")
    db.execute("UPDATE sessions SET last_seen_at = ?", [time.time() - 600])
    db.execute("BEGIN IMMEDIATE")
    try:
        response = client.get(path)
    finally:
        db.conn.rollback()
    assert response.status_code == 200 and "milk please" in response.get_data(True)


def test_logging_out_while_the_lock_is_held_is_busy_not_a_crash(make_app):
    from app.db import connect

    app = make_app(DB_BUSY_TIMEOUT_SECONDS=0.1, **FAST)
    db = connect(app.config["DATABASE"])
    client = as_role(app, db, "coordinator")
    token = csrf_token(client, "/console/")
    db.execute("BEGIN IMMEDIATE")
    try:
        response = client.post("/console/logout", data={"csrf_token": token})
    finally:
        db.conn.rollback()
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    # Nothing was ended: trying again works.
    again = client.post("/console/logout", data={"csrf_token": token})
    assert again.status_code == 303 and db["sessions"].count == 0
