"""The volunteer's mobile page, opened by the signed link in an offer SMS: the real app, the
real twilio client against the loopback fake of Twilio's REST API, the Flask test client."""

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer, base64_decode

from app import dispatch, jobs, links, queue
from app.security import SECURITY_HEADERS
from app.settings import SettingsError
from tests import test_dispatch
from tests.test_api import bearer
from tests.test_console import add_request
from tests.test_dispatch import SENIOR, add_senior, add_volunteers, offer, states, text

SECRET = "test-secret-key-0123456789"  # conftest's
# Offers as tests/test_dispatch.py makes them: Twilio's fake, PUBLIC_BASE_URL http://localhost.
app, scene = test_dispatch.app, test_dispatch.scene  # rest comes from conftest.py
_FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_LINK = re.compile(r"http://localhost(/v/\S+)")


def link_in_sms(rest, phone):
    """Return the path of the link in the latest offer SMS to phone."""
    body = [m["body"] for m in rest.messages if m["to"] == phone][-1]
    return _LINK.search(body).group(1)


def form_token(client, path):
    """Open a page and return the form token its buttons carry."""
    html = client.get(path).get_data(as_text=True)
    return _FORM_TOKEN.search(html).group(1)


def press(client, path, action, **fields):
    """Press a button on a volunteer's page, as the browser posts its form."""
    token = form_token(client, path)
    return client.post(path, data={"csrf_token": token, "action": action, **fields})


def signed_days_ago(payload, days, secret=SECRET, salt=links.SALT):
    """Return a token as CareCall would have signed it days ago."""

    class Then(TimestampSigner):
        def get_timestamp(self):
            return int(time.time() - days * 86400)

    return URLSafeTimedSerializer(secret, salt=salt, signer=Then).dumps(payload)


def tampered(token):
    """Return the token with one character of its signature changed."""
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


# Each case: how its token is made from (assignment id, its volunteer, another volunteer).
LINKS = [
    ("valid", lambda a, v, o: links.make(SECRET, a, v), 200, "Can you help?"),
    ("tampered", lambda a, v, o: tampered(links.make(SECRET, a, v)), 403, "does not work"),
    ("cut short", lambda a, v, o: links.make(SECRET, a, v)[:-5], 403, "does not work"),
    ("other id", lambda a, v, o: links.make(SECRET, a, v).replace("W", "X", 1), 403, "not work"),
    ("expired", lambda a, v, o: signed_days_ago([a, v], 15), 410, "has expired"),
    ("not yet expired", lambda a, v, o: signed_days_ago([a, v], 13), 200, "Can you help?"),
    ("foreign volunteer", lambda a, v, o: links.make(SECRET, a, o), 403, "does not work"),
    ("another key", lambda a, v, o: links.make("another-secret-key-0123", a, v), 403, "not work"),
    (
        "another salt",
        lambda a, v, o: URLSafeTimedSerializer(SECRET, salt="itsdangerous").dumps([a, v]),
        403,
        "does not work",
    ),
    (
        "no offer named",
        lambda a, v, o: URLSafeTimedSerializer(SECRET, salt=links.SALT).dumps(["a", v]),
        403,
        "does not work",
    ),
    ("unknown offer", lambda a, v, o: links.make(SECRET, a + 100, v), 410, "no longer here"),
    # Base64's spare bits: the same signature spelled another way is still not our link.
    ("respelled", lambda a, v, o: respelled(links.make(SECRET, a, v)), 403, "does not work"),
    ("padded", lambda a, v, o: links.make(SECRET, a, v) + "=", 403, "does not work"),
    # An id past SQLite's integers was a 500.
    ("huge id", lambda a, v, o: links.make(SECRET, 2**63, v), 403, "does not work"),
]


def respelled(token):
    """Return the token with its signature's last character spelled to decode the same."""
    signature = token.rpartition(".")[2]
    decoded = base64_decode(signature)
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
        other = signature[:-1] + letter
        if other != signature and base64_decode(other) == decoded:
            return token[: -len(signature)] + other
    raise AssertionError("no other spelling")


@pytest.mark.parametrize(("case", "make", "status", "words"), LINKS, ids=[c[0] for c in LINKS])
def test_only_a_good_link_opens_the_page_and_a_bad_one_changes_nothing(
    app, db, client, scene, case, make, status, words
):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], volunteer_ids=[1])
    path = "/v/" + make(o["id"], o["volunteer_id"], volunteers[1]["id"])
    events = db["events"].count

    page = client.get(path)
    assert page.status_code == status
    assert words in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"
    # The app's headers, with a stricter Referrer-Policy: the address is the credential.
    assert page.headers["Referrer-Policy"] == "no-referrer"
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value or name == "Referrer-Policy"
    # A good form token (the real link's) under a bad link acts on nothing either.
    real = path if status == 200 else "/v/" + links.make(SECRET, o["id"], o["volunteer_id"])
    good = form_token(client, real)
    answer = client.post(path, data={"csrf_token": good, "action": "accept"})
    if status == 200:
        assert states(db, request["id"]) == {1: "accepted"}
    else:
        assert answer.status_code == status
        assert states(db, request["id"]) == {1: "offered"} and db["events"].count == events


def test_the_offer_sms_carries_the_link_and_the_page_shows_only_what_is_needed(
    app, db, client, rest, scene
):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], volunteer_ids=[1])
    jobs.drain(app)
    [sms] = [m["body"] for m in rest.messages]
    path = link_in_sms(rest, volunteers[0]["phone"])
    assert sms.endswith(path) and f"Reply YES {o['code']} or NO {o['code']}, or open " in sms

    html = client.get(path).get_data(as_text=True)
    assert "shopping and errands" in html and "Mrs Chen" in html and "Elm St" in html
    # The street, not the door, until the job is taken; no phone number of the senior.
    assert "4 Elm St" not in html and SENIOR not in html
    assert "Yes, I will help" in html and "No, I cannot" in html
    assert "Check in" not in html
    # CSP-friendly: no inline script or style; the position script is a static file.
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    assert '<script src="/static/mobile/locate.js" defer></script>' in html

    taken = press(client, path, "accept").get_data(as_text=True)
    assert "the job is yours" in taken and "4 Elm St" in taken
    assert "Yes, I will help" not in taken and "No, I cannot" not in taken


def test_the_page_gives_the_time_the_sms_gave_for_a_standing_arrangement(app, db, client, rest):
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 1)
    start = (datetime.now(UTC) + timedelta(days=2)).replace(hour=10, minute=17, second=0)
    request = add_request(
        db, phone=SENIOR, region="riverside", wanted_at=start.isoformat(timespec="minutes")
    )
    offer(client, db, request["id"], volunteer_ids=[1])
    jobs.drain(app)
    path = link_in_sms(rest, volunteers[0]["phone"])
    sms = rest.messages[-1]["body"]
    assert "at 10:17" in sms and "at 10:17" in client.get(path).get_data(as_text=True)
    taken = press(client, path, "accept").get_data(as_text=True)
    assert "at 10:17" in taken


def test_without_a_public_address_the_sms_has_no_link(make_app, db, rest):
    app = make_app(TWILIO_API_BASE_URL=rest.base_url)
    add_senior(app, db)
    add_volunteers(app, db, 1)
    request = add_request(db, phone=SENIOR, region="riverside")
    with app.app_context():
        [o] = dispatch.offer(app, db, request["id"], top=1, actor="test")
    [row] = db["outbox"].rows
    assert row["body"].endswith(f"Reply YES {o['code']} to accept or NO {o['code']}.")
    assert "/v/" not in row["body"]


def test_accept_on_the_page_then_a_second_tap_acts_once(app, db, client, rest, scene):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], volunteer_ids=[1])
    jobs.drain(app)
    path = link_in_sms(rest, volunteers[0]["phone"])

    tap = {"csrf_token": form_token(client, path), "action": "accept"}
    first, again = client.post(path, data=tap), client.post(path, data=tap)  # a double tap
    assert first.status_code == again.status_code == 200
    said = [
        re.search(r'class="said" role="status">([^<]+)<', r.get_data(as_text=True)).group(1)
        for r in (first, again)
    ]
    assert said[0] == said[1] and "the job is yours" in said[0]
    assert states(db, request["id"]) == {1: "accepted"}
    assert queue.get(db, request["id"])["status"] == "assigned"
    [event] = [e for e in queue.events(db, request["id"]) if e["action"] == "accepted"]
    assert event["actor"] == f"volunteer:{o['volunteer_id']}" and event["detail"]["by"] == "link"
    jobs.drain(app)
    assert [c["to"] for c in rest.calls] == [SENIOR]  # the senior is called once


@pytest.mark.parametrize(
    ("meanwhile", "words"),
    [
        ("another volunteer said yes", "another volunteer has already taken this job"),
        ("a coordinator cancelled", "is no longer open"),
        ("the volunteer has too many jobs", "as many open jobs as you asked for"),
    ],
)
def test_a_late_answer_gets_the_sms_answer_and_changes_nothing(
    app, db, client, rest, scene, meanwhile, words
):
    request, volunteers = scene
    offers = offer(client, db, request["id"], volunteer_ids=[1, 2])
    jobs.drain(app)
    path = link_in_sms(rest, volunteers[1]["phone"])
    page_token = form_token(client, path)  # the page was open before anything else happened
    if meanwhile == "another volunteer said yes":
        text(client, volunteers[0]["phone"], f"YES {offers[0]['code']}")
    elif meanwhile == "a coordinator cancelled":
        changed = client.patch(
            f"/api/v1/requests/{request['id']}",
            headers=bearer(db, "coordinator"),
            json={"status": "cancelled"},
        )
        assert changed.status_code == 200, changed.json
    else:
        for _ in range(2):  # max_open is 2: two other jobs fill it
            other = add_request(db, phone="+15550000002", region="riverside")
            [o] = offer(client, db, other["id"], volunteer_ids=[2])
            text(client, volunteers[1]["phone"], f"YES {o['code']}")
    before = states(db, request["id"])
    late = client.post(path, data={"csrf_token": page_token, "action": "accept"})
    assert late.status_code == 200 and words in late.get_data(as_text=True)
    assert states(db, request["id"]) | {2: before[2]} == before
    assert states(db, request["id"])[2] in ("offered", "withdrawn")


def test_decline_on_the_page_asks_the_next_volunteer(app, db, client, rest, scene):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], volunteer_ids=[1])
    jobs.drain(app)
    path = link_in_sms(rest, volunteers[0]["phone"])

    tap = {"csrf_token": form_token(client, path), "action": "decline"}
    answer = client.post(path, data=tap).get_data(as_text=True)
    assert "Thank you for letting us know" in answer and "You said no to this job" in answer
    assert "Yes, I will help" not in answer
    assert states(db, request["id"]) == {1: "declined", 2: "offered"}
    [event] = [e for e in queue.events(db, request["id"]) if e["action"] == "declined"]
    assert event["actor"] == f"volunteer:{o['volunteer_id']}" and event["detail"]["by"] == "link"
    # A second tap gets the answer a second NO by SMS gets, and asks nobody else.
    second = client.post(path, data=tap).get_data(as_text=True)
    assert f"That offer ({o['code']}) is no longer open" in second
    assert "You said no to this job" in second
    assert states(db, request["id"]) == {1: "declined", 2: "offered"}
    jobs.drain(app)
    assert link_in_sms(rest, volunteers[1]["phone"]) != path


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"action": "accept"}, 400, "out of date"),
        ({"action": "accept", "csrf_token": "not-the-token"}, 400, "out of date"),
        ({"action": "accept", "csrf_token": "other link"}, 400, "out of date"),
        ({"action": "explode", "csrf_token": "this link"}, 400, "could not read"),
    ],
)
def test_a_form_without_this_links_token_changes_nothing(
    app, db, client, rest, scene, fields, status, words
):
    request, volunteers = scene
    offer(client, db, request["id"], volunteer_ids=[1, 2])
    jobs.drain(app)
    path = link_in_sms(rest, volunteers[0]["phone"])
    other = link_in_sms(rest, volunteers[1]["phone"])
    tokens = {"this link": form_token(client, path), "other link": form_token(client, other)}
    fields = {k: tokens.get(v, v) for k, v in fields.items()}
    response = client.post(path, data=fields)
    assert response.status_code == status and words in response.get_data(as_text=True)
    assert states(db, request["id"]) == {1: "offered", 2: "offered"}


def taken_job(app, db, client, rest, scene):
    """Offer the request to volunteer 1, who takes it on the page; return (request, path)."""
    request, volunteers = scene
    offer(client, db, request["id"], volunteer_ids=[1])
    jobs.drain(app)
    path = link_in_sms(rest, volunteers[0]["phone"])
    assert "the job is yours" in press(client, path, "accept").get_data(as_text=True)
    return request, path


def said(response):
    """Return the answer a page shows after a button was pressed."""
    html = response.get_data(as_text=True)
    return re.search(r'class="said" role="status">([^<]+)<', html).group(1)


@pytest.mark.parametrize(
    ("position", "stored"),
    [
        ({}, (None, None, None)),
        (
            {"latitude": "51.5072", "longitude": "-0.1276", "accuracy_m": "12.5"},
            (51.5072, -0.1276, 12.5),
        ),
        ({"latitude": "-33.86", "longitude": "151.21"}, (-33.86, 151.21, None)),
        ({"latitude": "90", "longitude": "-180", "accuracy_m": "0"}, (90.0, -180.0, 0.0)),
    ],
    ids=["not allowed", "allowed", "no accuracy", "at the edges"],
)
def test_check_in_and_out_on_the_page(app, db, client, rest, scene, position, stored):
    request, path = taken_job(app, db, client, rest, scene)
    page = client.get(path).get_data(as_text=True)
    assert "Check in: I have arrived" in page and "data-locate" in page
    tap = {"csrf_token": form_token(client, path), "action": "check_in", **position}

    first, again = client.post(path, data=tap), client.post(path, data=tap)
    assert "you are checked in at" in said(first)
    assert "You checked in already" in said(again) and "nothing changed" in said(again)
    [row] = dispatch.assignments(db, request_id=request["id"])
    assert row["state"] == "checked_in" and row["check_in_by"] == "link"
    assert (row["latitude"], row["longitude"], row["accuracy_m"]) == stored
    html = again.get_data(as_text=True)
    assert "Check out: I am leaving" in html and "Check in: I have arrived" not in html

    out = {"csrf_token": tap["csrf_token"], "action": "check_out"}
    first, again = client.post(path, data=out), client.post(path, data=out)
    assert "you are checked out at" in said(first) and "You checked out already" in said(again)
    [row] = dispatch.assignments(db, request_id=request["id"])
    assert row["state"] == "done" and row["check_out_by"] == "link" and row["minutes"] == 0
    assert queue.get(db, request["id"])["status"] == "done"
    html = again.get_data(as_text=True)
    assert "<button" not in html and "Job done" in html and "4 Elm St" not in html
    # Each step once in the audit trail: the volunteer, by the link.
    steps = [
        (e["action"], e["actor"], e["detail"].get("by"))
        for e in queue.events(db, request["id"])
        if e["detail"].get("by")
    ]
    assert steps == [
        ("accepted", "volunteer:1", "link"),
        ("checked in", "volunteer:1", "link"),
        ("checked out", "volunteer:1", "link"),
    ]


@pytest.mark.parametrize(
    "position",
    [
        {"latitude": "91", "longitude": "0"},
        {"latitude": "0", "longitude": "-180.5"},
        {"latitude": "nan", "longitude": "0"},
        {"latitude": "inf", "longitude": "0"},
        {"latitude": "51.5"},
        {"longitude": "0", "accuracy_m": "5"},
        {"latitude": "51.5", "longitude": "0", "accuracy_m": "-1"},
        {"latitude": "north", "longitude": "0"},
    ],
)
def test_a_position_out_of_range_is_refused_and_changes_nothing(
    app, db, client, rest, scene, position
):
    request, path = taken_job(app, db, client, rest, scene)
    tap = {"csrf_token": form_token(client, path), "action": "check_in", **position}
    response = client.post(path, data=tap)
    assert response.status_code == 400 and "could not read" in response.get_data(as_text=True)
    [row] = dispatch.assignments(db, request_id=request["id"])
    assert row["state"] == "accepted" and row["latitude"] is None


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ("check_out", "You have not checked in to job"),
        ("decline", "the job is yours"),  # a NO after a YES, as by SMS
    ],
)
def test_a_step_that_does_not_apply_changes_nothing(app, db, client, rest, scene, action, words):
    request, path = taken_job(app, db, client, rest, scene)
    token = form_token(client, path)
    response = client.post(path, data={"csrf_token": token, "action": action})
    assert response.status_code == 200 and words in said(response)
    assert states(db, request["id"]) == {1: "accepted"}


def test_before_the_job_is_taken_check_in_is_refused(app, db, client, rest, scene):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], volunteer_ids=[1])
    jobs.drain(app)
    path = link_in_sms(rest, volunteers[0]["phone"])
    response = press(client, path, "check_in", latitude="51.5", longitude="0")
    assert f"Reply YES {o['code']} to take it first" in said(response)
    [row] = dispatch.assignments(db, request_id=request["id"])
    assert row["state"] == "offered" and row["latitude"] is None


def test_an_oversized_form_is_refused_and_changes_nothing(app, db, client, rest, scene):
    request, volunteers = scene
    offer(client, db, request["id"], volunteer_ids=[1])
    jobs.drain(app)
    path = link_in_sms(rest, volunteers[0]["phone"])
    token = form_token(client, path)
    padding = "x" * (2 * 1024 * 1024)
    response = client.post(path, data={"csrf_token": token, "action": "accept", "pad": padding})
    assert response.status_code == 413
    assert states(db, request["id"]) == {1: "offered"}


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("14d", 14 * 86400.0), ("1h", 3600.0), ("366d", 366 * 86400.0)],
)
def test_the_link_lifetime_is_a_duration(make_app, raw, seconds, monkeypatch):
    monkeypatch.setenv("CARECALL_VOLUNTEER_LINK_LIFETIME", raw)
    assert make_app().config["VOLUNTEER_LINK_LIFETIME"] == seconds


@pytest.mark.parametrize("raw", ["10m", "400d", "two weeks"])
def test_a_wrong_link_lifetime_stops_start_up_naming_it(make_app, raw, monkeypatch):
    monkeypatch.setenv("CARECALL_VOLUNTEER_LINK_LIFETIME", raw)
    with pytest.raises(SettingsError, match="CARECALL_VOLUNTEER_LINK_LIFETIME"):
        make_app()


@pytest.mark.parametrize(
    ("name", "first"),
    [("Ann Lee", "Ann"), ("Mrs Chen", "Mrs Chen"), ("Dr. Ruth Ames", "Dr. Ames"), ("Bo", "Bo")],
)
def test_the_page_names_the_senior_by_first_name(name, first):
    assert dispatch.first_name(name) == first
