"""The senior's confirmation and rating call after a visit: the real app, signed webhooks as
Twilio sends them, and the real twilio client against a loopback fake of Twilio's REST API.
The call is followed as Twilio follows it: from the Url the app gave the fake, Gather by Gather."""

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app import dispatch, jobs, ledger, outbox, people, rating, supervision, visits
from scripts.simulate_call import FlaskTransport, Twilio
from tests.test_api import bearer
from tests.test_console import add_request, as_role
from tests.test_dispatch import FROM, SENIOR, add_senior, add_volunteers, offer, said, signed, text
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN, SILENCE, rest_settings

DUTY = "+15550007777"
LONDON = ZoneInfo("Europe/London")


def twilio_settings(rest, **overrides):
    """Return the settings that point the app's Twilio client at the fake."""
    return {
        **rest_settings(rest),
        "PUBLIC_BASE_URL": "http://localhost",
        "OFFER_TIMEOUT": 3600.0,
        "DUTY_COORDINATOR_NUMBER": DUTY,
    } | overrides


@pytest.fixture
def app(make_app, rest):
    """Build an app with Twilio set up and pointed at the fake, and a duty coordinator."""
    return make_app(**twilio_settings(rest))


def checked_out(app, db, client, *, minutes=65, phone=SENIOR, registered=False):
    """Offer a request, and by SMS: YES, IN and OUT (minutes later); return (request, offer)."""
    if phone == SENIOR and not registered:
        add_senior(app, db)
    [volunteer] = add_volunteers(app, db, 1)
    request = add_request(db, phone=phone, region="riverside")
    [made] = offer(client, db, request["id"], top=1)
    assert "the job is yours" in text(client, volunteer["phone"], f"YES {made['code']}")
    assert "you are checked in" in text(client, volunteer["phone"], f"IN {made['code']}")
    earlier = datetime.now(UTC) - timedelta(minutes=minutes, seconds=30)
    db.execute(
        "UPDATE assignments SET checked_in_at = ? WHERE id = ?",
        [earlier.isoformat(timespec="seconds"), made["id"]],
    )
    assert "you are checked out" in text(client, volunteer["phone"], f"OUT {made['code']}")
    return request, made


def run_rating_job(app, db, assignment_id):
    """Let the rating job's delay pass and run it; return the job as it was queued."""
    [job] = db["jobs"].rows_where("key = ?", [f"{rating.CALL}:{assignment_id}"])
    db.execute("UPDATE jobs SET run_after = ? WHERE id = ?", [job["created_at"], job["id"]])
    jobs.drain(app)
    return job


def rating_call(rest, assignment_id):
    """Return the rating call the app placed at the fake."""
    calls = [c for c in rest.calls if c["url"].endswith(f"/twilio/rating/{assignment_id}")]
    assert len(calls) == 1, rest.calls
    return calls[0]


def answer(app, placed, keys, *, dial_status="completed"):
    """Pick up the call the app placed, press keys in turn as Twilio posts them; return it."""
    twilio = Twilio(
        "http://localhost",
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        transport=FlaskTransport(app.test_client()),
        number=FROM,
        dial_status=dial_status,
    )
    return twilio.call(
        placed["to"],
        keys,
        call_sid=placed["sid"],
        voice_path=placed["url"],
        status_path="/twilio/outbox-status",
        direction="outbound-api",
    )


def items(db, assignment_id):
    """Return the kinds of supervision items opened about an assignment."""
    return sorted(
        i["kind"] for i in supervision.items(db, state=None) if i["assignment_id"] == assignment_id
    )


def test_offer_yes_in_out_then_the_senior_confirms_and_rates_the_visit(app, db, client, rest):
    request, made = checked_out(app, db, client)
    job = run_rating_job(app, db, made["id"])
    # Within a minute of check-out, by default.
    assert job["run_after"] - job["created_at"] == pytest.approx(60, abs=1)
    placed = rating_call(rest, made["id"])
    assert (placed["to"], placed["from"]) == (SENIOR, FROM)
    assert placed["url"] == f"http://localhost/twilio/rating/{made['id']}"

    call = answer(app, placed, ["1", "5"])
    heard = call.heard()
    assert heard[0].startswith("Hello, this is CareCall") and "shopping" in heard[0]
    assert "Did Volunteer 101 come to help you today? Press 1 for yes, 2 for no." in heard
    assert "How was the help? Press 1 for very poor, up to 5 for very good." in heard
    assert "To speak to a person, press 0" in heard[-2]
    assert heard[-1].startswith("Thank you for your answers")
    assert call.ended == "carecall hung up"
    assert all(status in (200, 204) for _, status, _ in call.webhooks), call.webhooks

    stored = dispatch.get(db, made["id"])
    assert (stored["senior_came"], stored["verified"], stored["rating"]) == ("yes", 1, 5)
    assert stored["rated_at"] >= stored["checked_out_at"]
    assert items(db, made["id"]) == []
    # The status callback reached the outbox row of the call.
    assert outbox.find(db, f"rating:{made['id']}")["twilio_status"] == "completed"
    # The API, the ledger and the volunteer's page all count the hours as verified.
    shown = client.get(f"/api/v1/assignments/{made['id']}", headers=bearer(db, "viewer")).json
    assert (shown["verified"], shown["rating"], shown["senior_came"]) == (True, 5, "yes")
    assert shown["hours"] == 1.08
    stats = ledger.volunteer_stats(db, made["volunteer_id"])
    assert (stats.verified_minutes, stats.unverified_minutes, stats.rating_mean) == (65, 0, 5)
    page = as_role(app, db, "viewer").get(f"/console/volunteers/{made['volunteer_id']}")
    html = page.get_data(as_text=True)
    assert "<dt>Verified hours</dt><dd>1.08 h (65 min)</dd>" in html
    assert "1, average 5.0 of 5" in html


@pytest.mark.parametrize(
    ("keys", "came", "verified", "score", "kinds", "last"),
    [
        (["1", "5"], "yes", 1, 5, [], "Thank you for your answers"),
        (["1", "3"], "yes", 1, 3, [], "Thank you for your answers"),
        (["2"], "no", 0, None, ["did_not_come"], "A coordinator will call you about it soon"),
        # A low rating is read back first and kept on 1 ("that is right").
        (["1", "1", "1"], "yes", 1, 1, ["low_rating"], "We are sorry the help was not good"),
        (["1", "2", "1"], "yes", 1, 2, ["low_rating"], "We are sorry the help was not good"),
        # 1 pressed as "yes" a moment ago: 2 chooses again, and nothing low is kept.
        (["1", "1", "2", "5"], "yes", 1, 5, [], "Thank you for your answers"),
        (["1", "2", "*", "9", "1"], "yes", 1, 2, ["low_rating"], "We are sorry the help"),
        (["1", "1", SILENCE, SILENCE, SILENCE], "yes", 1, None, [], "A coordinator may call you"),
        # Keys that are no choice are answered with the choices again.
        (["7", "1", "#", "4"], "yes", 1, 4, [], "Thank you for your answers"),
        # Silence: asked again, a bounded number of times, then a polite goodbye.
        ([SILENCE] * 3, None, 0, None, [], "A coordinator may call you"),
        (["1", SILENCE, SILENCE, SILENCE], "yes", 1, None, [], "Thank you for your answers"),
        ([SILENCE, SILENCE, "1", SILENCE, "5"], "yes", 1, 5, [], "Thank you for your answers"),
    ],
)
def test_each_answer_is_kept_and_the_bad_ones_open_an_item(
    app, db, client, rest, keys, came, verified, score, kinds, last
):
    _, made = checked_out(app, db, client)
    run_rating_job(app, db, made["id"])
    call = answer(app, rating_call(rest, made["id"]), keys)
    assert last in call.heard()[-1], call.transcript()
    stored = dispatch.get(db, made["id"])
    assert (stored["senior_came"], stored["verified"], stored["rating"]) == (came, verified, score)
    assert (stored["rated_at"] is not None) == (score is not None)
    assert items(db, made["id"]) == kinds
    assert ledger.volunteer_stats(db, made["volunteer_id"]).verified_minutes == 65 * verified


def test_star_repeats_each_question_slowly(app, db, client, rest):
    _, made = checked_out(app, db, client)
    run_rating_job(app, db, made["id"])
    placed = rating_call(rest, made["id"])
    call = answer(app, placed, ["*", "*", "1", "*", "4"])
    heard = call.heard()
    assert sum(line.startswith("Did Volunteer 101 come") for line in heard) == 3
    assert sum(line.startswith("How was the help?") for line in heard) == 2
    assert sum(line.startswith("Hello, this is CareCall") for line in heard) == 1
    assert dispatch.get(db, made["id"])["rating"] == 4
    first = signed(client, f"/twilio/rating/{made['id']}", {"CallSid": placed["sid"]})
    rates = {p.get("rate") for p in ET.fromstring(first.get_data(as_text=True)).iter("prosody")}
    assert rates == {"75%"}  # the senior's pace


@pytest.mark.parametrize(
    ("keys", "number", "came", "dialled", "last"),
    [
        (["0"], DUTY, None, True, "Goodbye."),
        (["1", "0"], DUTY, "yes", True, "Goodbye."),
        # Nobody on duty (and no coordinator line): a call back is promised instead.
        (["0"], None, None, False, "Thank you. A coordinator will call you back soon"),
    ],
)
def test_zero_opens_person_asked_and_dials_the_duty_coordinator(
    make_app, db, rest, keys, number, came, dialled, last
):
    app = make_app(**twilio_settings(rest, DUTY_COORDINATOR_NUMBER=number))
    client = app.test_client()
    _, made = checked_out(app, db, client)
    run_rating_job(app, db, made["id"])
    call = answer(app, rating_call(rest, made["id"]), keys)
    assert (f"dials {DUTY}: completed" in call.transcript()) == dialled
    assert last in call.heard()[-1], call.transcript()
    assert items(db, made["id"]) == ["person_asked"]
    assert dispatch.get(db, made["id"])["senior_came"] == came


def test_an_unanswered_dial_promises_a_call_back(app, db, client, rest):
    _, made = checked_out(app, db, client)
    run_rating_job(app, db, made["id"])
    call = answer(app, rating_call(rest, made["id"]), ["0"], dial_status="no-answer")
    assert call.heard()[-1].startswith("Thank you. A coordinator will call you back soon")
    assert items(db, made["id"]) == ["person_asked"]


def snapshot(db):
    """Return everything a key press may change."""
    return (
        list(db["assignments"].rows),
        list(db["requests"].rows),
        db["events"].count,
        list(db["supervision_items"].rows),
    )


@pytest.mark.parametrize(
    ("first", "then", "replays", "came", "score"),
    [
        ("came", "1", [("came", "1"), ("came", "2")], "yes", None),
        ("came", "2", [("came", "2"), ("came", "1"), ("how", "5")], "no", None),
        ("how", "5", [("how", "5"), ("how", "1"), ("came", "2")], "yes", 5),
        ("low/1", "1", [("low/1", "1"), ("how", "5"), ("low/2", "1")], "yes", 1),
    ],
)
def test_replayed_key_presses_change_nothing_twice(
    app, db, client, rest, first, then, replays, came, score
):
    _, made = checked_out(app, db, client)
    path = f"/twilio/rating/{made['id']}"
    params = {"CallSid": "CA" + "4" * 32, "From": FROM, "To": SENIOR, "AccountSid": ACCOUNT_SID}
    if first in ("how", "low/1"):
        signed(client, f"{path}/came", params | {"Digits": "1"})
    answered = signed(client, f"{path}/{first}", params | {"Digits": then})
    before = snapshot(db)
    for step, digits in replays:
        again = signed(client, f"{path}/{step}", params | {"Digits": digits})
        assert again.status_code == 200
        assert said(again.get_data(as_text=True)) == said(answered.get_data(as_text=True))
    assert snapshot(db) == before
    stored = dispatch.get(db, made["id"])
    assert (stored["senior_came"], stored["rating"]) == (came, score)


@pytest.mark.parametrize("state", ["accepted", "checked_in"])
@pytest.mark.parametrize("step", ["", "/came", "/how"])
def test_a_key_for_a_visit_not_done_is_refused_politely(app, db, client, state, step):
    add_senior(app, db)
    [volunteer] = add_volunteers(app, db, 1)
    request = add_request(db, phone=SENIOR)
    [made] = offer(client, db, request["id"], top=1)
    text(client, volunteer["phone"], f"YES {made['code']}")
    if state == "checked_in":
        text(client, volunteer["phone"], f"IN {made['code']}")
    before = snapshot(db)
    response = signed(
        client, f"/twilio/rating/{made['id']}{step}", {"CallSid": "CA" + "5" * 32, "Digits": "1"}
    )
    assert response.status_code == 200
    assert "there is no visit to ask you about" in said(response.get_data(as_text=True))
    assert ET.fromstring(response.get_data(as_text=True)).find("Hangup") is not None
    assert snapshot(db) == before


def test_an_unsigned_rating_webhook_is_refused(app, db, client, rest):
    _, made = checked_out(app, db, client)
    response = client.post(f"/twilio/rating/{made['id']}/came", data={"Digits": "2"})
    assert response.status_code == 403
    assert dispatch.get(db, made["id"])["senior_came"] is None


def test_no_phone_for_the_senior_opens_an_unconfirmed_item(app, db, client, rest):
    _, made = checked_out(app, db, client, phone=None)
    run_rating_job(app, db, made["id"])
    assert not [c for c in rest.calls if "/twilio/rating/" in c["url"]]
    [item] = supervision.items(db)
    assert (item["kind"], item["assignment_id"]) == ("unconfirmed", made["id"])
    assert "no phone to ask the senior whether Volunteer 101 came" in item["reason"]


def test_an_unanswered_call_is_not_placed_again_and_stays_unconfirmed(app, db, client, rest):
    _, made = checked_out(app, db, client)
    run_rating_job(app, db, made["id"])
    placed = rating_call(rest, made["id"])
    params = {"CallSid": placed["sid"], "AccountSid": ACCOUNT_SID, "CallStatus": "no-answer"}
    assert signed(client, "/twilio/outbox-status", params).status_code == 204
    jobs.drain(app)
    assert len([c for c in rest.calls if "/twilio/rating/" in c["url"]]) == 1
    assert outbox.find(db, f"rating:{made['id']}")["twilio_status"] == "no-answer"
    stored = dispatch.get(db, made["id"])
    assert (stored["senior_came"], stored["verified"]) == (None, 0)


def test_a_check_out_queues_one_call_however_often_the_job_runs(app, db, client, rest):
    _, made = checked_out(app, db, client)
    run_rating_job(app, db, made["id"])
    with app.app_context():
        assert rating.place(app, db, made["id"])["key"] == f"rating:{made['id']}"
    jobs.drain(app)
    assert len([c for c in rest.calls if "/twilio/rating/" in c["url"]]) == 1
    # Once the senior has answered there is nothing left to call about.
    with app.app_context():
        rating.came(db, made["id"], "yes")
        assert rating.place(app, db, made["id"]) is None


# ---- quiet hours --------------------------------------------------------------------------


def utc(text):
    """Return an aware UTC datetime from an ISO string."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("due", "quiet", "zone", "expected"),
    [
        # Off: at once.
        ("2026-12-01T23:00", None, "UTC", "2026-12-01T23:00"),
        # Quiet 21-8 across midnight: the evening moves to tomorrow 08:00, the night to 08:00.
        ("2026-12-01T20:59", (21, 8), "UTC", "2026-12-01T20:59"),
        ("2026-12-01T21:00", (21, 8), "UTC", "2026-12-02T08:00"),
        ("2026-12-01T23:30", (21, 8), "UTC", "2026-12-02T08:00"),
        ("2026-12-02T03:10", (21, 8), "UTC", "2026-12-02T08:00"),
        ("2026-12-02T08:00", (21, 8), "UTC", "2026-12-02T08:00"),
        # Quiet within one day, and to midnight.
        ("2026-12-01T13:30", (12, 14), "UTC", "2026-12-01T14:00"),
        ("2026-12-01T22:15", (22, 24), "UTC", "2026-12-02T00:00"),
        # In the coordinators' zone: New York is UTC-5 in December.
        ("2026-12-02T03:00", (21, 8), "America/New_York", "2026-12-02T13:00"),
        ("2026-12-02T01:59", (21, 8), "America/New_York", "2026-12-02T01:59"),
        # Across a daylight-saving change: London's clocks go back on 2026-10-25.
        ("2026-10-24T22:00", (21, 8), "Europe/London", "2026-10-25T08:00"),
        ("2026-03-28T22:00", (21, 8), "Europe/London", "2026-03-29T07:00"),
    ],
)
def test_a_call_due_in_quiet_hours_moves_to_their_end(due, quiet, zone, expected):
    assert rating.call_time(utc(due), quiet, ZoneInfo(zone)) == utc(expected)


@pytest.mark.parametrize(
    ("checked_out_at", "quiet", "delay"),
    [
        ("2026-12-01T15:00", (21, 8), 60),  # the afternoon: a minute later
        ("2026-12-01T20:59:30", (21, 8), 11 * 3600 + 30),  # due 21:00:30: tomorrow at 8
        ("2026-12-01T22:30", (21, 8), 9.5 * 3600),
        ("2026-12-01T22:30", None, 60),  # quiet hours are off by default
    ],
)
def test_the_rating_job_is_queued_after_the_delay_out_of_quiet_hours(
    make_app, db, rest, checked_out_at, quiet, delay
):
    app = make_app(
        **twilio_settings(rest, RATING_QUIET_HOURS=quiet, COORDINATOR_TIMEZONE="Europe/London")
    )
    with app.app_context():
        job_id = rating.schedule(app, db, 7, moment=utc(checked_out_at))
    job = db["jobs"].get(job_id)
    assert job["run_after"] - job["created_at"] == pytest.approx(delay, abs=1)


def test_a_job_run_late_in_quiet_hours_waits_for_their_end(make_app, db, rest):
    app = make_app(**twilio_settings(rest, RATING_QUIET_HOURS=(21, 8)))
    client = app.test_client()
    _, made = checked_out(app, db, client)
    night = utc("2026-12-01T23:00")
    with app.app_context():
        assert rating.place(app, db, made["id"], moment=night) is None
    assert outbox.find(db, f"rating:{made['id']}") is None
    [later] = db["jobs"].rows_where(
        "key = ?", [f"{rating.CALL}:{made['id']}:2026-12-02T08:00:00+00:00"]
    )
    assert later["run_after"] - later["created_at"] == pytest.approx(9 * 3600, abs=1)


@pytest.mark.parametrize(
    ("checked_out_at", "today", "words"),
    [
        ("2026-12-01T15:00", "2026-12-01", "today"),
        ("2026-12-01T23:30", "2026-12-02", "yesterday"),
        ("2026-11-28T10:00", "2026-12-01", "on Saturday"),
    ],
)
def test_the_question_names_the_day_of_the_visit(app, checked_out_at, today, words):
    from app.flows import load_flow

    flow = load_flow(app.config["FLOWS_DIR"], "en")
    day = rating.day_words(utc(checked_out_at), datetime.fromisoformat(today).date(), flow)
    assert day == words


def test_hours_entered_by_hand_stay_unverified_when_the_senior_says_yes(app, db, client, rest):
    add_senior(app, db)
    [volunteer] = add_volunteers(app, db, 1)
    request = add_request(db, phone=SENIOR)
    [made] = offer(client, db, request["id"], top=1)
    text(client, volunteer["phone"], f"YES {made['code']}")
    text(client, volunteer["phone"], f"IN {made['code']}")
    with app.app_context():
        visits.check_out(app, db, made["id"], by="console", actor="user:coordinator1")
    run_rating_job(app, db, made["id"])
    answer(app, rating_call(rest, made["id"]), ["1", "4"])
    stored = dispatch.get(db, made["id"])
    assert (stored["senior_came"], stored["manual"], stored["verified"]) == ("yes", 1, 0)
    assert stored["rating"] == 4


@pytest.mark.parametrize("translated", [True, False])
def test_the_senior_is_asked_in_their_language(make_app, rest, db, tmp_path, translated):
    import shutil

    flows = tmp_path / "flows"
    shutil.copytree("ivr_flows", flows)
    korean = (flows / "en.toml").read_text()
    korean = korean.replace('language = "en"', 'language = "ko"').replace('"9"', '"8"')
    korean = korean.replace('say_language = "en-US"', 'say_language = "ko-KR"')
    english = 'rating_came = "Did {volunteer} come to help you {day}?'
    if translated:
        korean = korean.replace(english, 'rating_came = "{volunteer} 님이 {day} 왔습니까?')
        korean = korean.replace('today = "today"', 'today = "오늘"')
    else:  # half a language is worse than the default one
        korean = korean.replace(english, 'missing = "{volunteer}')
    (flows / "ko.toml").write_text(korean)
    app = make_app(**twilio_settings(rest, FLOWS_DIR=str(flows)))
    client = app.test_client()
    rules = people.rules_for(app)[0]
    people.add_person(db, {"name": "Mrs Kim", "phones": SENIOR, "language": "ko"}, rules, actor="t")
    _, made = checked_out(app, db, client, phone=SENIOR, registered=True)
    run_rating_job(app, db, made["id"])
    call = answer(app, rating_call(rest, made["id"]), ["1", "5"])
    if translated:
        assert any(line.startswith("Volunteer 101 님이 오늘 왔습니까?") for line in call.heard())
    else:
        assert "Did Volunteer 101 come to help you today?" in " ".join(call.heard())
    assert dispatch.get(db, made["id"])["rating"] == 5


@pytest.mark.parametrize("call_sid", [None, "XX1", "CA" + "z" * 32])
def test_a_rating_webhook_without_twilio_s_call_sid_is_refused(app, db, client, rest, call_sid):
    _, made = checked_out(app, db, client)
    params = {"Digits": "2"} | ({"CallSid": call_sid} if call_sid else {})
    response = signed(client, f"/twilio/rating/{made['id']}/came", params)
    assert response.status_code == 400
    assert dispatch.get(db, made["id"])["senior_came"] is None


def test_the_request_page_shows_what_the_senior_said(app, db, client, rest):
    request, made = checked_out(app, db, client)
    with app.app_context():
        rating.came(db, made["id"], "yes")
        rating.rate(db, made["id"], 4)
    coordinator = as_role(app, db, "coordinator")
    page = coordinator.get(f"/console/requests/{request['id']}").get_data(as_text=True)
    assert "Volunteer 101 came; rated 4 of 5; hours verified" in page


def test_a_low_rating_is_read_back_before_it_is_kept(app, db, client, rest):
    _, made = checked_out(app, db, client)
    run_rating_job(app, db, made["id"])
    call = answer(app, rating_call(rest, made["id"]), ["1", "1", "1"])
    heard = call.heard()
    assert any(
        "You pressed 1, which means very poor. If that is right, press 1" in h for h in heard
    )
