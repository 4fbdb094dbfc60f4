"""Check-in and check-out of a job taken: the real app, signed webhooks as Twilio sends them,
and the real twilio client against a loopback fake of Twilio's REST API."""

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app import dispatch, jobs, ledger, outbox, queue, visits
from tests.browser import assert_accessible, chromium, live_server, log_in
from tests.test_api import bearer
from tests.test_console import add_request, as_role, csrf_token, make_user, post_form
from tests.test_dispatch import (
    SENIOR,
    add_senior,
    add_volunteers,
    offer,
    said,
    signed,
    states,
    text,
)
from tests.twilio_fake import ACCOUNT_SID, rest_settings


@pytest.fixture
def app(make_app, rest):
    """Build an app with Twilio set up and pointed at the fake."""
    return make_app(
        **rest_settings(rest),
        PUBLIC_BASE_URL="http://localhost",
        OFFER_TIMEOUT=3600.0,
    )


@pytest.fixture
def context(app):
    """Call the core inside the app, as its views and jobs do (not around console requests:
    one app context would share Flask's g, and its CSRF token, between two clients)."""
    with app.app_context():
        yield


@pytest.fixture
def taken(app, db, client):
    """Mrs Chen's groceries at an agreed time (now), offered to two; the first said YES."""
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 3)
    request = add_request(db, phone=SENIOR, region="riverside", wanted_at=agreed_now(app))
    first, second = offer(client, db, request["id"], top=2)
    assert "the job is yours" in text(client, volunteers[0]["phone"], f"YES {first['code']}")
    return request, volunteers, first, second


def agreed_now(app, *, gone=0.0):
    """Return this minute in the coordinators' zone, as a request's agreed start, once at
    least `gone` seconds of it have passed (the start is the minute's first second)."""
    zone = ZoneInfo(app.config["COORDINATOR_TIMEZONE"])
    moment = datetime.now(zone)
    wait = gone - (moment.second + moment.microsecond / 1e6)
    if wait > 0:
        time.sleep(wait)
        moment = datetime.now(zone)
    return moment.isoformat(timespec="minutes")


def made_earlier(db, request_id, *, hours):
    """Move a request's creation back, as if the senior had asked hours ago."""
    stamp = (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="seconds")
    db.execute("UPDATE requests SET created_at = ? WHERE id = ?", [stamp, request_id])


def row(db, assignment_id):
    """Return an assignment as stored now."""
    return dispatch.get(db, assignment_id)


def test_offer_yes_in_out_makes_the_request_done_with_its_minutes(app, db, client, taken):
    request, volunteers, first, _ = taken
    phone = volunteers[0]["phone"]
    reply = text(client, phone, f"IN {first['code']}")
    assert "you are checked in at" in reply and "Mrs Chen" in reply
    assert f"Reply OUT {first['code']}" in reply
    assert row(db, first["id"])["state"] == "checked_in"
    assert queue.get(db, request["id"])["status"] == "in_progress"
    # An hour and five minutes later (the check-in is moved back, as if it had been).
    earlier = (datetime.now(UTC) - timedelta(minutes=65, seconds=30)).isoformat(timespec="seconds")
    db.execute("UPDATE assignments SET checked_in_at = ? WHERE id = ?", [earlier, first["id"]])
    reply = text(client, phone, f"out {first['code']}")
    assert "you are checked out at" in reply and "1 h 05 min" in reply
    stored = row(db, first["id"])
    assert (stored["state"], stored["minutes"], stored["manual"]) == ("done", 65, 0)
    assert (stored["check_in_by"], stored["check_out_by"]) == ("sms", "sms")
    assert queue.get(db, request["id"])["status"] == "done"
    actions = [e["action"] for e in queue.events(db, request["id"])]
    assert actions[-3:] == ["checked in", "checked out", "hours_posted"]
    # The same transaction put the 65 minutes in the time bank, once, whatever is replayed.
    text(client, phone, f"OUT {first['code']}")
    account = ledger.volunteer_account(volunteers[0]["id"])
    assert ledger.balance(db, account).minutes == 65
    assert db["ledger_transfers"].count == 1


@pytest.mark.parametrize(
    ("setup", "who", "body", "expected"),
    [
        # IN for a job offered but not taken: take it first; a job withdrawn is closed.
        ("offer", 2, "IN {other}", "is an offer you have not taken yet"),
        ("none", 1, "IN {second}", "is closed, so nothing changed"),
        # OUT before IN.
        ("none", 0, "OUT {first}", "You have not checked in to job"),
        # A replayed OUT, and a replayed IN.
        ("out", 0, "OUT {first}", "You checked out already"),
        ("in", 0, "IN {first}", "You checked in already"),
        ("out", 0, "OUT", "You checked out already"),
        # Another volunteer's code.
        ("in", 1, "OUT {first}", "is another volunteer's"),
        ("none", 2, "IN {first}", "is another volunteer's"),
        # A code nobody has, and no job at all.
        ("none", 0, "IN 1", "You have no job with the number 1"),
        ("none", 2, "IN", "You have no job to check in or out of"),
    ],
)
def test_refusals_answer_clearly_and_change_nothing(
    app, db, client, taken, setup, who, body, expected
):
    request, volunteers, first, second = taken
    owner = volunteers[0]["phone"]
    if setup in ("in", "out"):
        text(client, owner, f"IN {first['code']}")
    if setup == "out":
        text(client, owner, f"OUT {first['code']}")
    other = None
    if setup == "offer":
        later = add_request(db, phone=SENIOR, region="riverside")
        [other] = offer(client, db, later["id"], volunteer_ids=[volunteers[2]["id"]])
    codes = {"first": first["code"], "second": second["code"], "other": (other or {}).get("code")}
    before = (list(db["assignments"].rows), list(db["requests"].rows), db["events"].count)
    reply = text(client, volunteers[who]["phone"], body.format(**codes))
    assert expected in reply
    assert (list(db["assignments"].rows), list(db["requests"].rows), db["events"].count) == before


@pytest.mark.parametrize(
    ("body", "state"),
    [
        ("inn {code}", "checked_in"),
        ("In", "checked_in"),  # the code may be left out with one job held
        ("checkin {code}", "checked_in"),
        ("ni {code}", "accepted"),  # two letters forgive no typo: a note for the coordinator
        ("oute {code}", "accepted"),  # OUT understood, but before IN: refused
    ],
)
def test_typos_of_in_and_out(app, db, client, taken, body, state):
    _, volunteers, first, _ = taken
    text(client, volunteers[0]["phone"], body.format(code=first["code"]))
    assert row(db, first["id"])["state"] == state


def test_a_replayed_message_sid_is_answered_the_same_and_done_once(app, db, client, taken):
    request, volunteers, first, _ = taken
    sid = "SM" + "ab" * 16
    once = text(client, volunteers[0]["phone"], f"IN {first['code']}", message_sid=sid)
    twice = text(client, volunteers[0]["phone"], f"IN {first['code']}", message_sid=sid)
    assert once == twice and "you are checked in" in once
    actions = [e["action"] for e in queue.events(db, request["id"])]
    assert actions.count("checked in") == 1


@pytest.mark.parametrize(
    ("start", "end", "minutes"),
    [
        ("2026-12-01T10:00:00+00:00", "2026-12-01T10:00:59+00:00", 0),
        ("2026-12-01T10:00:00+00:00", "2026-12-01T11:05:00+00:00", 65),
        ("2026-12-01T10:00:00+00:00", "2026-12-01T09:59:00+00:00", 0),
        ("2026-12-01T23:30:00+00:00", "2026-12-02T00:45:30+00:00", 75),
    ],
)
def test_minutes_are_whole_and_never_negative(start, end, minutes):
    assert visits.minutes_between(start, end) == minutes


def test_a_missed_check_in_is_a_no_show_flagged_and_offered_to_the_next(
    context, app, db, client, taken
):
    request, volunteers, first, second = taken
    stored = row(db, first["id"])
    assert stored["visit_at"]  # volunteers free at any time: the visit is now
    [job] = [j for j in db["jobs"].rows_where("kind = ?", [visits.MISSED])]
    assert job["key"] == f"{visits.MISSED}:{first['id']}"
    assert job["run_after"] > datetime.now(UTC).timestamp() + 25 * 60  # the grace: 30 min
    assert visits.miss_due(app, db) == []  # not yet
    later = datetime.now(UTC) + timedelta(minutes=31)
    assert visits.miss_due(app, db, later) == [first["id"]]
    assert visits.miss_due(app, db, later) == []  # once
    assert row(db, first["id"])["state"] == "no_show"
    item = queue.get(db, request["id"])
    assert item["needs_review"] and item["status"] == "triaged"
    [flagged] = [e for e in queue.events(db, request["id"]) if e["action"] == "no_show"]
    assert "did not check in" in flagged["detail"]["reason"]
    # The cascade asks the next volunteer nobody asked yet; the one asked before was withdrawn.
    assert states(db, request["id"]) == {1: "no_show", 2: "withdrawn", 3: "offered"}
    jobs.drain(app)
    late = text(client, volunteers[0]["phone"], f"IN {first['code']}")
    assert "because no check-in came in time" in late
    assert row(db, first["id"])["state"] == "no_show"


def test_a_visit_without_an_agreed_start_is_never_marked_a_no_show(context, app, db, client, taken):
    _, _, first, _ = taken
    db.execute("UPDATE assignments SET visit_at = NULL WHERE id = ?", [first["id"]])
    assert visits.miss_due(app, db, datetime.now(UTC) + timedelta(days=30)) == []
    assert row(db, first["id"])["state"] == "accepted"


def test_a_no_show_may_be_excused_once_with_a_reason(context, app, db, client, taken):
    request, _, first, _ = taken
    with pytest.raises(visits.NotNoShow):
        visits.excuse(db, first["id"], reason="ill", actor="user:1")
    visits.miss_due(app, db, datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(ValueError, match="reason"):
        visits.excuse(db, first["id"], reason="  ", actor="user:1")
    assert visits.excuse(db, first["id"], reason="car broke down", actor="user:1")
    assert not visits.excuse(db, first["id"], reason="again", actor="user:1")
    stored = row(db, first["id"])
    assert (stored["excused"], stored["excuse"]) == (1, "car broke down")
    [event] = [e for e in queue.events(db, request["id"]) if e["action"] == "no_show_excused"]
    assert event["actor"] == "user:1" and event["detail"]["reason"] == "car broke down"


@pytest.mark.parametrize(
    ("at", "error"),
    [
        ("not a time", visits.BadTime),
        (datetime.now(UTC) + timedelta(hours=2), visits.BadTime),
    ],
)
def test_a_time_entered_by_hand_must_be_readable_and_past(
    context, app, db, client, taken, at, error
):
    _, _, first, _ = taken
    with pytest.raises(error):
        visits.check_in(app, db, first["id"], by="console", actor="user:1", at=at)
    assert row(db, first["id"])["state"] == "accepted"


def test_a_check_out_entered_before_the_check_in_is_refused(context, app, db, client, taken):
    request, _, first, _ = taken
    start = datetime.now(UTC) - timedelta(hours=2)
    made_earlier(db, request["id"], hours=3)
    visits.check_in(app, db, first["id"], by="console", actor="user:1", at=start)
    with pytest.raises(visits.BadTime):
        visits.check_out(
            app, db, first["id"], by="console", actor="user:1", at=start - timedelta(minutes=1)
        )
    done = visits.check_out(
        app, db, first["id"], by="console", actor="user:1", at=start + timedelta(minutes=90)
    )
    assert (done.state, done.minutes, done.manual) == ("done", 90, True)


def test_the_api_shows_the_visit_in_hours_and_minutes(context, app, db, client, taken):
    _, volunteers, first, _ = taken
    viewer = bearer(db, "viewer")
    path = f"/api/v1/assignments/{first['id']}"
    shown = client.get(path, headers=viewer).json
    assert shown["state"] == "accepted" and shown["checked_in_at"] is None
    assert shown["hours"] is None and shown["minutes"] is None and shown["verified"] is False
    made_earlier(db, first["request_id"], hours=2)
    start = datetime.now(UTC) - timedelta(minutes=100)
    visits.check_in(app, db, first["id"], by="sms", actor="system", at=start)
    assert client.get(path, headers=viewer).json["state"] == "checked_in"
    visits.check_out(app, db, first["id"], by="console", actor="user:1")
    shown = client.get(path, headers=viewer).json
    assert (shown["state"], shown["minutes"], shown["hours"]) == ("done", 100, 1.67)
    assert (shown["check_in_by"], shown["check_out_by"], shown["manual"]) == (
        "sms",
        "console",
        True,
    )
    assert shown["checked_in_at"] == start.isoformat(timespec="seconds")
    assert shown["rating"] is None
    listed = client.get(
        f"/api/v1/assignments?state=done&volunteer_id={volunteers[0]['id']}", headers=viewer
    )
    assert [a["id"] for a in listed.json] == [first["id"]]
    assert client.get("/api/v1/assignments/999", headers=viewer).status_code == 404
    assert client.get(path).status_code == 401


_calls = iter(range(10**6))


def call(client, phone):
    """Start a call from phone to CareCall; return (a function pressing a key, what it heard)."""
    params = {"CallSid": f"CA{next(_calls):032x}", "AccountSid": ACCOUNT_SID, "From": phone}
    first = signed(client, "/twilio/voice", params)
    assert first.status_code == 200

    def press(digit, menu="volunteer"):
        response = signed(client, f"/twilio/menu/{menu}", params | {"Digits": digit})
        assert response.status_code == 200
        return said(response.get_data(as_text=True))

    return press, said(first.get_data(as_text=True)), first.get_data(as_text=True)


def test_a_volunteer_calls_and_presses_1_then_later_2(app, db, client, taken):
    request, volunteers, first, _ = taken
    press, heard, twiml = call(client, volunteers[0]["phone"])
    assert "Hello Volunteer 101" in heard
    assert "To check in to your visit to Mrs Chen for" in heard and "press 1" in heard
    assert "calling for help for yourself, press 3" in heard and "press star" in heard
    assert 'rate="75%"' in twiml  # slowly
    assert "press 0" in heard and "check out" not in heard
    assert "To check in to your visit" in press("*")  # star repeats
    assert "You have not checked in to this visit yet" in press("2")  # OUT before IN
    assert row(db, first["id"])["state"] == "accepted"
    assert "You are checked in at" in press("1")
    assert row(db, first["id"])["check_in_by"] == "call"
    assert queue.get(db, request["id"])["status"] == "in_progress"
    assert "Goodbye" in press("1")  # Twilio's retry of the press: nothing more
    assert [e["action"] for e in queue.events(db, request["id"])].count("checked in") == 1

    press, heard, _ = call(client, volunteers[0]["phone"])
    assert "To check out of your visit to Mrs Chen" in heard and "press 2" in heard
    assert "You checked in already" in press("1")
    assert "You are checked out at" in press("2")
    stored = row(db, first["id"])
    assert (stored["state"], stored["check_out_by"]) == ("done", "call")
    assert queue.get(db, request["id"])["status"] == "done"
    # No job held now: the next call is any caller's.
    _, heard, _ = call(client, volunteers[0]["phone"])
    assert "To ask for help, press 1" in heard and "check in" not in heard


def test_a_volunteer_calling_for_help_themselves_presses_3(app, db, client, taken):
    _, volunteers, first, _ = taken
    press, _, _ = call(client, volunteers[0]["phone"])
    heard = press("3")
    assert "To ask for help, press 1" in heard and "hang up and dial 9 1 1" in heard
    assert "what help you need after the tone" in press("1", menu="main")
    assert row(db, first["id"])["state"] == "accepted"


def test_a_volunteer_without_a_job_taken_hears_the_normal_greeting(app, db, client, taken):
    _, volunteers, _, _ = taken
    _, heard, _ = call(client, volunteers[2]["phone"])
    assert "To ask for help, press 1" in heard and "check in" not in heard


def test_a_coordinator_enters_a_visit_by_hand(app, db, client, taken):
    request, _, first, _ = taken
    page = f"/console/requests/{request['id']}"
    base = f"{page}/visits/{first['id']}"
    viewer = as_role(app, db, "viewer")
    assert "Visit" in viewer.get(page).get_data(as_text=True)
    assert "Check in by hand" not in viewer.get(page).get_data(as_text=True)
    token = csrf_token(viewer, "/console/login")
    refused = viewer.post(base + "/check-in", data={"at": "", "csrf_token": token})
    assert refused.status_code == 403
    coordinator = as_role(app, db, "coordinator")
    assert coordinator.post(base + "/check-in", data={"at": ""}).status_code == 400  # no CSRF
    assert row(db, first["id"])["state"] == "accepted"
    html = coordinator.get(page).get_data(as_text=True)
    assert "Check in by hand" in html and 'type="datetime-local"' in html
    db.execute(  # the senior asked the day before
        "UPDATE requests SET created_at = '2026-11-30T16:00:00+00:00' WHERE id = ?", [request["id"]]
    )
    done = post_form(coordinator, base + "/check-in", {"at": "2026-12-01T09:30"}, page=page)
    assert done.status_code == 303
    stored = row(db, first["id"])
    assert (stored["checked_in_at"], stored["check_in_by"], stored["manual"]) == (
        "2026-12-01T09:30:00+00:00",
        "console",
        1,
    )
    post_form(coordinator, base + "/check-out", {"at": "2026-12-01T11:15"}, page=page)
    stored = row(db, first["id"])
    assert (stored["state"], stored["minutes"]) == ("done", 105)
    html = coordinator.get(page).get_data(as_text=True)
    assert "105 minutes (1.75 hours), entered by hand" in html and "by hand" in html
    assert queue.get(db, request["id"])["status"] == "done"
    [event] = [e for e in queue.events(db, request["id"]) if e["action"] == "checked out"]
    assert event["actor"].startswith("user:") and event["detail"]["manual"] == 1
    # A replay changes nothing and says so.
    again = post_form(coordinator, base + "/check-out", {"at": ""}, page=page)
    assert "Nothing changed" in coordinator.get(again.location).get_data(as_text=True)
    assert post_form(coordinator, f"{page}/visits/999/check-in", {}, page=page).status_code == 404


def test_a_coordinator_excuses_a_no_show_on_the_request_page(app, db, client, taken):
    request, _, first, _ = taken
    with app.app_context():
        visits.miss_due(app, db, datetime.now(UTC) + timedelta(hours=1))
    page = f"/console/requests/{request['id']}"
    coordinator = as_role(app, db, "coordinator")
    html = coordinator.get(page).get_data(as_text=True)
    assert "did not come" in html and "Excuse no-show" in html
    post_form(coordinator, f"{page}/visits/{first['id']}/excuse", {"reason": "flu"}, page=page)
    stored = row(db, first["id"])
    assert (stored["excused"], stored["excuse"]) == (1, "flu")
    assert "excused: flu" in coordinator.get(page).get_data(as_text=True)


def test_the_missed_check_in_job_runs_when_the_grace_is_over(make_app, rest, db):
    app = make_app(
        **rest_settings(rest),
        CHECKIN_GRACE=1.0,
    )
    client = app.test_client()
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 2)
    # The agreed start is this minute's first second, and two seconds of the minute have
    # gone, so the one second of grace is over (at 12:00:00.4 it would not be yet).
    request = add_request(db, phone=SENIOR, wanted_at=agreed_now(app, gone=2.0))
    [first] = offer(client, db, request["id"], top=1)
    text(client, volunteers[0]["phone"], "yes")
    jobs.drain(app)
    assert states(db, request["id"]) == {1: "no_show", 2: "offered"}
    assert any(
        m["to"] == volunteers[0]["phone"] and "we asked another volunteer" in m["body"]
        for m in rest.messages
    )


def test_a_volunteer_who_hangs_up_at_the_check_in_menu_is_no_missed_call(app, db, client, taken):
    _, volunteers, _, _ = taken
    sid = f"CA{next(_calls):032x}"
    params = {"CallSid": sid, "AccountSid": ACCOUNT_SID, "From": volunteers[0]["phone"]}
    assert "press 1" in said(signed(client, "/twilio/voice", params).get_data(as_text=True))
    ended = signed(client, "/twilio/call-status", params | {"CallStatus": "completed"})
    assert ended.status_code == 204
    assert queue.find_by_source(db, f"callback:{sid}") is None


@pytest.mark.browser
def test_the_request_page_with_a_visit_is_accessible_and_checks_in_by_hand(make_app, db):
    app = make_app()
    add_senior(app, db)
    add_volunteers(app, db, 2)
    request = add_request(db, phone=SENIOR)
    with app.app_context():
        [first, _] = dispatch.offer(app, db, request["id"], top=2, actor="test")
        dispatch.accept(app, db, first["id"], actor="test")
    make_user(db, "amy", "coordinator")
    with live_server(app) as base, chromium() as browser:
        for width in (390, 1366):
            page = browser.new_page(viewport={"width": width, "height": 900})
            log_in(page, base, "amy")
            page.goto(f"{base}/console/requests/{request['id']}")
            step = "in" if width == 390 else "out"
            page.get_by_role("button", name=f"Check {step} by hand").wait_for()
            assert_accessible(page, f"request-visit-{step}-{width}")
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            page.get_by_role("button", name=f"Check {step} by hand").click()
            page.get_by_text(f"Checked {step} by hand.").wait_for()
            assert_accessible(page, f"request-visit-{step}ed-{width}")
            page.close()
    stored = row(db, first["id"])
    assert (stored["state"], stored["manual"], stored["check_out_by"]) == ("done", 1, "console")


def test_a_job_checked_in_still_counts_against_the_volunteer_s_load(app, db, client, taken):
    request, volunteers, first, _ = taken
    db.execute("UPDATE volunteers SET max_open = 1 WHERE id = ?", [volunteers[0]["id"]])
    text(client, volunteers[0]["phone"], f"IN {first['code']}")
    later = add_request(db, phone=SENIOR, region="riverside")
    [other] = offer(client, db, later["id"], volunteer_ids=[volunteers[0]["id"]])
    assert other["code"] != first["code"]  # a held job's code is not given to a new offer
    assert "as many open jobs as you asked for" in text(
        client, volunteers[0]["phone"], f"YES {other['code']}"
    )
    text(client, volunteers[0]["phone"], f"OUT {first['code']}")
    assert "the job is yours" in text(client, volunteers[0]["phone"], f"YES {other['code']}")


@pytest.mark.parametrize(
    ("status", "stage", "state", "sms"),
    [
        # Cancelled before anyone said yes: the open offers are withdrawn, each told.
        ("cancelled", "offered", "withdrawn", "is no longer needed"),
        # Cancelled after a yes: the job is cancelled and the volunteer told not to go.
        ("cancelled", "taken", "cancelled", "has been cancelled: please do not go"),
        # Done by hand after a yes: the job stays for a visit entered by hand, told nothing.
        ("done", "taken", "accepted", None),
        # Checked in, then cancelled: the volunteer is there; their check-out still counts.
        ("cancelled", "checked_in", "checked_in", None),
    ],
)
def test_a_request_closed_by_a_coordinator_closes_its_offers_and_jobs(
    app, db, client, status, stage, state, sms
):
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 2)
    request = add_request(db, phone=SENIOR, region="riverside")
    first, _ = offer(client, db, request["id"], top=2)
    if stage != "offered":
        text(client, volunteers[0]["phone"], f"YES {first['code']}")
    if stage == "checked_in":
        text(client, volunteers[0]["phone"], f"IN {first['code']}")
    coordinator = as_role(app, db, "coordinator")
    path = f"/console/requests/{request['id']}/status"
    assert post_form(coordinator, path, {"status": status, "confirm": "yes"}).status_code == 303
    assert row(db, first["id"])["state"] == state
    bodies = [r["body"] for r in outbox.rows(db) if r["to_phone"] == volunteers[0]["phone"]]
    closing = [b for b in bodies if "no longer needed" in b or "please do not go" in b]
    assert closing == ([] if sms is None else [next(b for b in bodies if sms in b)])
    # The no-show check finds nobody late for a visit no longer awaited.
    later = datetime.now(UTC) + timedelta(hours=2)
    with app.app_context():
        assert visits.miss_due(app, db, later) == []
    if state == "cancelled":
        late = text(client, volunteers[0]["phone"], f"IN {first['code']}")
        assert "is closed, so nothing changed" in late
    if state == "checked_in":
        text(client, volunteers[0]["phone"], f"OUT {first['code']}")
        assert row(db, first["id"])["state"] == "done"


@pytest.mark.parametrize(
    ("at", "says"),
    [
        # A year typed wrong: before the request was made.
        ("2000-01-01T00:00", "before the request was made"),
        # Years the clock cannot hold in the coordinators' zone or in UTC.
        ("0001-01-01T00:00+05:00", "is not a time like"),
        ("9999-12-31T23:59:59-05:00", "is not a time like"),
        # A huge value is named, not echoed whole.
        ("9" * 5000, "9999999…"),
    ],
)
def test_a_check_in_by_hand_at_an_impossible_time_is_refused_on_the_page(
    app, db, client, taken, at, says
):
    request, _, first, _ = taken
    coordinator = as_role(app, db, "coordinator")
    path = f"/console/requests/{request['id']}/visits/{first['id']}/check-in"
    page = f"/console/requests/{request['id']}"
    response = post_form(coordinator, path, {"at": at}, page=page)
    assert response.status_code == 303
    shown = coordinator.get(page).get_data(as_text=True)
    assert says in shown and "9" * 100 not in shown
    assert row(db, first["id"])["state"] == "accepted"


def test_a_visit_longer_than_visit_max_is_refused_by_hand_and_flagged_by_sms(
    context, app, db, client, taken
):
    request, volunteers, first, _ = taken
    made_earlier(db, request["id"], hours=20)
    start = datetime.now(UTC) - timedelta(hours=13)
    visits.check_in(app, db, first["id"], by="console", actor="user:1", at=start)
    # By hand: a slip in the times, refused with the length it would make.
    with pytest.raises(visits.BadTime, match="13 h 00 min, longer than CARECALL_VISIT_MAX"):
        visits.check_out(app, db, first["id"], by="console", actor="user:1")
    # By SMS: the volunteer forgot to check out; a coordinator is asked for the real time.
    reply = text(client, volunteers[0]["phone"], f"OUT {first['code']}")
    assert "a coordinator will enter the time you left" in reply
    assert row(db, first["id"])["state"] == "checked_in"
    assert db["ledger_transfers"].count == 0
    [flagged] = [e for e in queue.events(db, request["id"]) if e["action"] == "visit_too_long"]
    assert "enter the real check-out time" in flagged["detail"]["reason"]
    assert queue.get(db, request["id"])["needs_review"]
    done = visits.check_out(
        app, db, first["id"], by="console", actor="user:1", at=start + timedelta(hours=2)
    )
    assert (done.state, done.minutes) == ("done", 120)
    assert db["ledger_transfers"].count == 1


def test_a_too_late_check_out_sent_again_is_flagged_once(context, app, db, client, taken):
    request, volunteers, first, _ = taken
    made_earlier(db, request["id"], hours=20)
    visits.check_in(
        app,
        db,
        first["id"],
        by="console",
        actor="user:1",
        at=datetime.now(UTC) - timedelta(hours=16),
    )
    for _ in range(3):
        reply = text(client, volunteers[0]["phone"], f"OUT {first['code']}")
        assert "a coordinator will enter the time you left" in reply
    flagged = [e for e in queue.events(db, request["id"]) if e["action"] == "visit_too_long"]
    assert len(flagged) == 1


@pytest.mark.parametrize("how", ["paused", "opted out"])
def test_a_volunteer_paused_since_the_offer_takes_nothing_and_the_next_is_asked(
    app, db, client, how
):
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 2)
    request = add_request(db, phone=SENIOR, region="riverside")
    [first] = offer(client, db, request["id"], top=1)
    column = "active = 0" if how == "paused" else "opted_out_at = '2026-12-01T00:00:00+00:00'"
    db.execute(f"UPDATE volunteers SET {column} WHERE id = ?", [first["volunteer_id"]])
    reply = text(client, volunteers[0]["phone"], f"YES {first['code']}")
    assert "is no longer open" in reply and "Elm" not in reply
    assert row(db, first["id"])["state"] == "withdrawn"
    assert queue.get(db, request["id"])["status"] != "assigned"
    assert states(db, request["id"]) == {1: "withdrawn", 2: "offered"}


def test_a_volunteer_free_now_comes_as_soon_as_they_can_and_is_never_a_no_show(
    app, db, client, rest
):
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 2)
    request = add_request(db, phone=SENIOR, region="riverside")  # no time agreed
    [first] = offer(client, db, request["id"], top=1)
    reply = text(client, volunteers[0]["phone"], f"YES {first['code']}")
    assert "as soon as they can" in reply and "today at" not in reply
    assert row(db, first["id"])["visit_at"] is None
    assert not list(db["jobs"].rows_where("kind = ?", [visits.MISSED]))
    with app.app_context():
        assert visits.miss_due(app, db, datetime.now(UTC) + timedelta(days=1)) == []
    assert row(db, first["id"])["state"] == "accepted"


def test_a_check_in_long_before_the_agreed_start_is_refused_as_too_early(app, db, client, rest):
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 1)
    zone = ZoneInfo(app.config["COORDINATOR_TIMEZONE"])
    tomorrow = (datetime.now(zone) + timedelta(days=1)).replace(hour=10, minute=0)
    request = add_request(db, phone=SENIOR, wanted_at=tomorrow.isoformat(timespec="minutes"))
    [first] = offer(client, db, request["id"], top=1)
    text(client, volunteers[0]["phone"], f"YES {first['code']}")
    reply = text(client, volunteers[0]["phone"], f"IN {first['code']}")
    assert "it is too early to check in" in reply
    days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    assert f"on {days[tomorrow.weekday()]} at 10:00" in reply
    assert row(db, first["id"])["state"] == "accepted"
    # A coordinator entering it by hand is believed: they know what happened.
    with app.app_context():
        visits.check_in(app, db, first["id"], by="console", actor="user:1")
    assert row(db, first["id"])["state"] == "checked_in"


@pytest.mark.parametrize(
    ("setup", "key", "words"),
    [
        # Tomorrow's visit, pressed today: too early, and nothing changes.
        ("tomorrow", "1", "too early to check in"),
        # Checked in 16 hours ago: a coordinator enters the time they left.
        ("long ago", "2", "a coordinator will enter the time you left"),
    ],
)
def test_a_volunteer_s_call_too_early_or_too_late_says_so(app, db, client, rest, setup, key, words):
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 1)
    zone = ZoneInfo(app.config["COORDINATOR_TIMEZONE"])
    wanted = datetime.now(zone) + (timedelta(days=1) if setup == "tomorrow" else timedelta(0))
    request = add_request(db, phone=SENIOR, wanted_at=wanted.isoformat(timespec="minutes"))
    [first] = offer(client, db, request["id"], top=1)
    text(client, volunteers[0]["phone"], f"YES {first['code']}")
    if setup == "long ago":
        made_earlier(db, request["id"], hours=20)
        with app.app_context():
            long_ago = datetime.now(UTC) - timedelta(hours=16)
            visits.check_in(app, db, first["id"], by="console", actor="user:1", at=long_ago)
    before = row(db, first["id"])["state"]
    press, _, _ = call(client, volunteers[0]["phone"])
    assert words in press(key)
    assert row(db, first["id"])["state"] == before


@pytest.mark.parametrize(
    ("body", "state"),
    [("check in", "checked_in"), ("Checked in {code}", "checked_in"), ("check-in", "checked_in")],
)
def test_check_in_written_as_two_words_is_understood(app, db, client, taken, body, state):
    _, volunteers, first, _ = taken
    reply = text(client, volunteers[0]["phone"], body.format(code=first["code"]))
    assert "you are checked in" in reply
    assert row(db, first["id"])["state"] == state


def test_the_yes_and_help_answers_say_how_to_check_in_and_out(app, db, client):
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 1)
    request = add_request(db, phone=SENIOR)
    [first] = offer(client, db, request["id"], top=1)
    reply = text(client, volunteers[0]["phone"], f"YES {first['code']}")
    assert (
        f"Reply IN {first['code']} when you arrive and OUT {first['code']} when you leave" in reply
    )
    assert "IN and the number when you arrive" in text(client, volunteers[0]["phone"], "HELP")


def test_stop_from_a_volunteer_holding_a_job_puts_it_before_a_coordinator(app, db, client, taken):
    request, volunteers, first, _ = taken
    text(client, volunteers[0]["phone"], "cancel")
    [flagged] = [e for e in queue.events(db, request["id"]) if e["action"] == "volunteer_opted_out"]
    assert "replied STOP: ask whether they still come" in flagged["detail"]["reason"]
    assert queue.get(db, request["id"])["needs_review"]
