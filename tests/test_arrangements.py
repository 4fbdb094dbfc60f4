"""Standing arrangements: occurrences across daylight-saving changes, the job that makes them
requests (once), the first offer to the same volunteer with the cascade behind it, and the
console and API. The real app, real SQLite, Twilio's REST API as a loopback fake."""

import threading
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app import arrangements, dispatch, jobs, outbox, people, queue
from app.arrangements import Rule, localize, occurrences
from app.db import connect
from tests.browser import assert_accessible, chromium, live_server, log_in
from tests.test_api import bearer
from tests.test_console import add_request, as_role, csrf_token, make_user, post_form
from tests.test_dispatch import SENIOR, add_senior, add_volunteers, states, text
from tests.twilio_fake import rest_settings

LONDON, NEW_YORK = "Europe/London", "America/New_York"

# ---- pure: occurrences across daylight-saving changes ---------------------------------------


@pytest.mark.parametrize(
    ("zone", "day", "clock", "expected"),
    [
        # An ordinary time keeps its wall-clock time on both sides of each change.
        (LONDON, "2026-03-28", "10:00", "2026-03-28T10:00:00+00:00"),
        (LONDON, "2026-03-29", "10:00", "2026-03-29T10:00:00+01:00"),
        (LONDON, "2026-10-24", "10:00", "2026-10-24T10:00:00+01:00"),
        (LONDON, "2026-10-25", "10:00", "2026-10-25T10:00:00+00:00"),
        (NEW_YORK, "2026-03-07", "10:00", "2026-03-07T10:00:00-05:00"),
        (NEW_YORK, "2026-03-08", "10:00", "2026-03-08T10:00:00-04:00"),
        (NEW_YORK, "2026-10-31", "10:00", "2026-10-31T10:00:00-04:00"),
        (NEW_YORK, "2026-11-01", "10:00", "2026-11-01T10:00:00-05:00"),
        # Spring: the clocks jump over it, so it moves forward by the gap.
        (LONDON, "2026-03-29", "01:30", "2026-03-29T02:30:00+01:00"),
        (LONDON, "2026-03-29", "01:00", "2026-03-29T02:00:00+01:00"),
        (NEW_YORK, "2026-03-08", "02:30", "2026-03-08T03:30:00-04:00"),
        (NEW_YORK, "2026-03-08", "02:00", "2026-03-08T03:00:00-04:00"),
        # Autumn: it happens twice; the first time (still summer time), fold=0.
        (LONDON, "2026-10-25", "01:30", "2026-10-25T01:30:00+01:00"),
        (LONDON, "2026-10-25", "01:00", "2026-10-25T01:00:00+01:00"),
        (NEW_YORK, "2026-11-01", "01:30", "2026-11-01T01:30:00-04:00"),
        # Just outside the changed hour nothing moves.
        (LONDON, "2026-03-29", "02:00", "2026-03-29T02:00:00+01:00"),
        (LONDON, "2026-10-25", "02:00", "2026-10-25T02:00:00+00:00"),
        (NEW_YORK, "2026-11-01", "02:00", "2026-11-01T02:00:00-05:00"),
        # A half-hour change (Lord Howe Island) moves by its own gap.
        ("Australia/Lord_Howe", "2026-10-04", "02:15", "2026-10-04T02:45:00+11:00"),
    ],
)
def test_a_local_time_is_placed_deliberately_around_each_change(zone, day, clock, expected):
    moment = localize(date.fromisoformat(day), arrangements.parse_clock(clock), zone)
    assert moment.isoformat() == expected
    assert moment.fold == 0 and moment.tzinfo == ZoneInfo(zone)


@pytest.mark.parametrize(
    ("zone", "first", "last", "offsets"),
    [
        # Sundays at 10:00 across the spring and autumn changes of each zone.
        (LONDON, "2026-03-22", "2026-04-05", ["+00:00", "+01:00", "+01:00"]),
        (LONDON, "2026-10-18", "2026-11-01", ["+01:00", "+00:00", "+00:00"]),
        (NEW_YORK, "2026-03-01", "2026-03-15", ["-05:00", "-04:00", "-04:00"]),
        (NEW_YORK, "2026-10-25", "2026-11-08", ["-04:00", "-05:00", "-05:00"]),
    ],
)
def test_ten_oclock_stays_ten_oclock_across_a_change(zone, first, last, offsets):
    rule = Rule((6,), time(10, 0), zone, date(2026, 1, 1))
    found = occurrences(rule, date.fromisoformat(first), date.fromisoformat(last))
    assert [m.strftime("%a %H:%M") for m in found] == ["Sun 10:00"] * 3
    assert [m.isoformat()[-6:] for m in found] == offsets
    # A week apart on the wall, so one hour more or less than 168 hours apart in fact
    # (in UTC: Python subtracts two times of one zone by their wall clocks).
    real = [m.astimezone(UTC) for m in found]
    gaps = {(b - a) // timedelta(hours=1) for a, b in zip(real, real[1:], strict=False)}
    assert len(gaps - {168}) == 1 and gaps <= {167, 168, 169}


@pytest.mark.parametrize(
    ("starts_on", "ends_on", "first", "last", "expected"),
    [
        ("2026-12-01", None, "2026-11-01", "2026-12-31", 10),  # Tue and Thu from Dec 1
        ("2026-12-01", "2026-12-10", "2026-11-01", "2026-12-31", 4),  # and until Dec 10
        ("2026-12-01", "2026-12-01", "2026-11-01", "2026-12-31", 1),  # one day
        ("2026-12-01", None, "2026-12-02", "2026-12-02", 0),  # a Wednesday
    ],
)
def test_occurrences_keep_within_the_rules_dates(starts_on, ends_on, first, last, expected):
    rule = Rule(
        (1, 3),
        time(9, 15),
        "UTC",
        date.fromisoformat(starts_on),
        date.fromisoformat(ends_on) if ends_on else None,
    )
    found = occurrences(rule, date.fromisoformat(first), date.fromisoformat(last))
    assert len(found) == expected
    assert all(m.weekday() in (1, 3) and (m.hour, m.minute) == (9, 15) for m in found)


ZONES = (LONDON, NEW_YORK, "Australia/Lord_Howe", "Australia/Sydney", "Asia/Kathmandu", "UTC")


@given(
    zone=st.sampled_from(ZONES),
    weekdays=st.sets(st.integers(0, 6), min_size=1).map(lambda s: tuple(sorted(s))),
    at=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    start=st.dates(date(2025, 1, 1), date(2030, 12, 31)),
    span=st.integers(0, 400),
)
# Found by hypothesis: a rule time carrying fold=1 in New York's spring gap came out at 01:00.
@example(zone=NEW_YORK, weekdays=(6,), at=time(2, 0, fold=1), start=date(2025, 3, 9), span=0)
def test_occurrences_fall_once_on_each_rule_day_at_its_time(zone, weekdays, at, start, span):
    end = start + timedelta(days=span)
    rule = Rule(weekdays, at, zone, start)
    found = occurrences(rule, start, end)
    days = [start + timedelta(days=n) for n in range(span + 1)]
    assert [m.date() for m in found] == [d for d in days if d.weekday() in weekdays]
    assert all(a < b for a, b in zip(found, found[1:], strict=False))
    at = at.replace(fold=0)  # hypothesis also draws fold=1: the rule means the same wall time
    for moment in found:
        wall = datetime.combine(moment.date(), at)
        # The instant fold=0 names, whichever of the two rules applied (compared in UTC:
        # Python compares two times of one zone by their wall clocks).
        named = datetime.combine(moment.date(), at, tzinfo=ZoneInfo(zone))
        assert moment.astimezone(UTC) == named.astimezone(UTC)
        if moment.replace(tzinfo=None) != wall:
            # Only a time the clocks skipped moves, forward, by less than the gap (≤ 1 h).
            assert timedelta(0) < moment.replace(tzinfo=None) - wall <= timedelta(hours=1)
            assert (
                wall.replace(tzinfo=ZoneInfo(zone))
                .astimezone(UTC)
                .astimezone(ZoneInfo(zone))
                .replace(tzinfo=None)
                != wall
            )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("tue", (1,)), ("Mon, thu", (0, 3)), ("sunday saturday", (5, 6)), ("TUE,tue", (1,))],
)
def test_weekdays_are_read_in_any_case(text, expected):
    assert arrangements.parse_weekdays(text) == expected


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: arrangements.parse_weekdays("funday"), "not a weekday"),
        (lambda: arrangements.parse_weekdays(""), "at least one weekday"),
        (lambda: arrangements.parse_clock("24:00"), "not a time"),
        (lambda: arrangements.parse_clock("9am"), "not a time"),
    ],
)
def test_a_wrong_rule_is_refused_in_words(call, says):
    with pytest.raises(arrangements.ArrangementError, match=says):
        call()


# ---- the job: occurrences become requests, once -------------------------------------------


def twilio_app(make_app, rest, zone=LONDON, **overrides):
    """Build an app with Twilio pointed at the fake, in the coordinators' zone."""
    return make_app(
        **rest_settings(rest),
        PUBLIC_BASE_URL="http://localhost",
        COORDINATOR_TIMEZONE=zone,
        OFFER_TIMEOUT=60.0,
        **overrides,
    )


@pytest.fixture
def app(make_app, rest):
    """Build an app with Twilio set up, coordinators in London."""
    return twilio_app(make_app, rest)


def standing(app, db, *, volunteer_id=3, weekdays="tue", clock="10:00", **dates):
    """Register a senior and four volunteers; make a groceries request a standing arrangement."""
    add_senior(app, db)
    add_volunteers(app, db, 4)
    template = add_request(db, phone=SENIOR, region="riverside", transcript="I need groceries")
    return arrangements.create(
        db,
        template["id"],
        volunteer_id=volunteer_id,
        weekdays=weekdays,
        local_time=clock,
        zone=app.config["COORDINATOR_TIMEZONE"],
        starts_on=dates.get("starts_on", "2026-01-01"),
        ends_on=dates.get("ends_on"),
        actor="user:amy",
    )


def due(app, db, moment):
    """Run the job's work at a frozen moment; return the requests it created."""
    with app.app_context():
        return [queue.get(db, i) for i in arrangements.create_due(app, db, moment)]


def utc(text):
    """Return an ISO time as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "made"),
    [
        ("2026-12-06T09:59", False),  # Tuesday 10:00 is 48 h and a minute away
        ("2026-12-06T10:00", True),  # exactly the horizon
        ("2026-12-08T09:59", True),  # a minute before
        ("2026-12-08T10:00", False),  # its time has come: too late to offer
    ],
)
def test_an_occurrence_is_made_within_the_horizon(app, db, moment, made):
    arrangement = standing(app, db)
    created = due(app, db, utc(moment))
    assert len(created) == int(made)
    if made:
        [request] = created
        assert request["wanted_at"] == "2026-12-08T10:00+00:00"
        assert request["source_key"] == f"arrangement:{arrangement['id']}:2026-12-08"
        assert (request["category"], request["channel"], request["status"]) == (
            "groceries",
            "manual",
            "new",
        )
        assert request["person_id"] == 1 and request["transcript"] == "I need groceries"
        [event] = [e for e in queue.events(db, request["id"]) if e["action"].startswith("arr")]
        assert event["detail"] == {
            "arrangement": arrangement["id"],
            "from_request": arrangement["request_id"],
            "date": "2026-12-08",
        }


@pytest.mark.parametrize(
    ("zone", "moments", "wanted"),
    [
        (
            LONDON,
            ("2026-10-18", "2026-11-04"),
            ["2026-10-20T10:00+01:00", "2026-10-27T10:00+00:00", "2026-11-03T10:00+00:00"],
        ),
        (
            LONDON,
            ("2027-03-21", "2027-04-01"),
            ["2027-03-23T10:00+00:00", "2027-03-30T10:00+01:00"],
        ),
        (
            NEW_YORK,
            ("2026-10-25", "2026-11-04"),
            ["2026-10-27T10:00-04:00", "2026-11-03T10:00-05:00"],
        ),
        (
            NEW_YORK,
            ("2026-03-01", "2026-03-11"),
            ["2026-03-03T10:00-05:00", "2026-03-10T10:00-04:00"],
        ),
    ],
)
def test_the_job_makes_each_tuesday_at_ten_across_a_change_once(
    make_app, rest, zone, moments, wanted
):
    app = twilio_app(make_app, rest, zone=zone)
    db = connect(app.config["DATABASE"])
    standing(app, db)
    start, end = (date.fromisoformat(d) for d in moments)
    made = []
    # Every hour, as the schedule runs it: each occurrence is made by exactly one run.
    moment = datetime.combine(start, time(), tzinfo=UTC)
    while moment.date() <= end:
        made += due(app, db, moment)
        moment += timedelta(hours=1)
    assert [r["wanted_at"] for r in made] == wanted
    assert db["occurrences"].count == len(wanted)
    db.close()


def test_a_replay_or_two_workers_at_once_make_one_request(app, db):
    arrangement = standing(app, db)
    moment = utc("2026-12-07T12:00")
    barrier = threading.Barrier(3)
    results = []

    def work():
        own = connect(app.config["DATABASE"])
        try:
            barrier.wait()
            results.append(due(app, own, moment))
        finally:
            own.close()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(len(r) for r in results) == [0, 0, 1]
    assert due(app, db, moment) == []  # the job replayed
    assert db["requests"].count_where("source_key LIKE 'arrangement:%'") == 1
    [occurrence] = db["occurrences"].rows
    assert occurrence["arrangement_id"] == arrangement["id"]
    [request] = [r for batch in results for r in batch]
    assert occurrence["request_id"] == request["id"]
    assert len(dispatch.assignments(db, request_id=request["id"])) == 1


def test_the_scheduled_job_makes_the_occurrences_when_a_worker_runs_it(app, db):
    every_day = "mon,tue,wed,thu,fri,sat,sun"
    standing(app, db, weekdays=every_day, clock="12:00", starts_on=date.today().isoformat())
    with app.app_context():
        jobs.enqueue_due(app, db)
    assert jobs.drain(app) >= 1
    # The hourly run, and the run its creation asked for: both done, the occurrences once.
    done = [j["state"] for j in db["jobs"].rows_where("kind = ?", [arrangements.DUE])]
    assert done == ["done", "done"]
    # 12:00 London falls once or twice in the next 48 hours, so two days' requests at most.
    made = db["requests"].count_where("source_key LIKE 'arrangement:%'")
    assert made in (1, 2) and db["occurrences"].count == made


@pytest.mark.parametrize("change", ["pause", "end"])
def test_a_paused_or_ended_arrangement_makes_nothing(app, db, change):
    arrangement = standing(app, db)
    arrangements.change(db, arrangement["id"], change, actor="user:amy")
    assert due(app, db, utc("2026-12-07T12:00")) == []
    if change == "pause":
        arrangements.change(db, arrangement["id"], "resume", actor="user:amy")
        assert len(due(app, db, utc("2026-12-07T12:00"))) == 1


def test_the_end_date_is_the_last_day(app, db):
    standing(app, db, ends_on="2026-12-08")
    assert len(due(app, db, utc("2026-12-07T12:00"))) == 1
    assert due(app, db, utc("2026-12-14T12:00")) == []


# ---- offers: the same volunteer first, then the cascade ------------------------------------


@pytest.mark.parametrize("refusal", ["no", "no answer"])
def test_the_same_volunteer_is_asked_first_and_the_cascade_asks_the_next(
    app, db, client, rest, refusal
):
    standing(app, db, volunteer_id=3)
    [request] = due(app, db, utc("2026-12-07T12:00"))
    assert states(db, request["id"]) == {3: "offered"}  # not the ranking's first
    jobs.drain(app)
    [sms] = rest.messages
    assert sms["to"] == "+15550000103" and "on Tuesday at 10:00" in sms["body"]
    if refusal == "no":
        assert "Thank you for letting us know" in text(client, "+15550000103", "NO")
    else:
        [offered] = dispatch.assignments(db, request_id=request["id"])
        with app.app_context():
            late = datetime.fromisoformat(offered["expires_at"]) + timedelta(seconds=1)
            dispatch.expire_due(app, db, late)
    after = states(db, request["id"])
    assert after[3] == ("declined" if refusal == "no" else "expired")
    [(other, state)] = [(v, s) for v, s in after.items() if v != 3]
    assert state == "offered" and other == 1  # the ranking's first, who was not asked yet
    jobs.drain(app)
    nxt = [m for m in rest.messages if m["to"] == "+15550000101"]
    assert nxt and "on Tuesday at 10:00" in nxt[0]["body"]


def test_a_yes_sets_the_visit_to_the_agreed_time(app, db, client, rest):
    standing(app, db, volunteer_id=3)
    [request] = due(app, db, utc("2026-12-07T12:00"))
    [offered] = dispatch.assignments(db, request_id=request["id"])
    reply = text(client, "+15550000103", f"YES {offered['code']}")
    assert "the job is yours" in reply and "on Tuesday at 10:00" in reply
    assert dispatch.get(db, offered["id"])["visit_at"] == "2026-12-08T10:00+00:00"
    assert queue.get(db, request["id"])["status"] == "assigned"


@pytest.mark.parametrize("why", ["paused", "opted out"])
def test_a_volunteer_who_cannot_be_asked_gives_way_to_the_top_one(app, db, why):
    arrangement = standing(app, db, volunteer_id=3)
    if why == "paused":
        people.update_volunteer(db, 3, {"active": "no"}, people.rules_for(app)[0], actor="test")
    else:
        with app.app_context():
            dispatch.opt_out(db, 3, actor="sms:+15550000103")
    [request] = due(app, db, utc("2026-12-07T12:00"))
    assert states(db, request["id"]) == {1: "offered"}
    [flagged] = [
        e for e in queue.events(db, request["id"]) if e["action"] == "arrangement_fallback"
    ]
    assert "cannot be asked" in flagged["detail"]["reason"]
    assert queue.get(db, request["id"])["needs_review"]
    assert arrangement["volunteer_id"] == 3


# ---- console and API ----------------------------------------------------------------------


def accepted_template(app, db):
    """A groceries request volunteer 2 accepted; return it."""
    add_senior(app, db)
    add_volunteers(app, db, 3)
    template = add_request(db, phone=SENIOR, region="riverside")
    with app.app_context():
        [offered] = dispatch.offer(app, db, template["id"], volunteer_ids=[2], actor="test")
        assert dispatch.accept(app, db, offered["id"], actor="test").result == "accepted"
    return template


def test_a_coordinator_makes_pauses_and_ends_an_arrangement(app, db):
    template = accepted_template(app, db)
    coordinator = as_role(app, db, "coordinator")
    page_path = f"/console/requests/{template['id']}"
    page = coordinator.get(page_path).get_data(as_text=True)
    assert "Make this a standing arrangement" in page
    assert '<option value="2" selected>Volunteer 102</option>' in page  # who said yes
    form = {"weekday": ["tue", "thu"], "time": "10:00", "volunteer_id": "2", "ends_on": ""}
    made = post_form(coordinator, page_path + "/arrangements", form, page=page_path)
    assert made.status_code == 303 and made.location.endswith("/console/arrangements")
    [arrangement] = arrangements.list_arrangements(db)
    assert (arrangement["weekdays"], arrangement["local_time"], arrangement["timezone"]) == (
        "tue,thu",
        "10:00",
        "Europe/London",
    )
    assert arrangement["volunteer_id"] == 2 and arrangement["created_by"] == "user:coordinator1"
    listed = coordinator.get("/console/arrangements").get_data(as_text=True)
    assert "every tue, thu at 10:00 (Europe/London)" in listed and "Volunteer 102" in listed

    for action, state in (("pause", "paused"), ("resume", "active"), ("end", "ended")):
        path = f"/console/arrangements/{arrangement['id']}/{action}"
        answer = post_form(coordinator, path, {}, page="/console/arrangements")
        assert answer.status_code == 303
        assert arrangements.state_of(arrangements.get(db, arrangement["id"])) == state
    again = post_form(
        coordinator,
        f"/console/arrangements/{arrangement['id']}/resume",
        {},
        "/console/arrangements",
    )
    assert "it cannot resume" in coordinator.get(again.location).get_data(as_text=True)
    unknown = post_form(
        coordinator,
        f"/console/arrangements/{arrangement['id']}/delete",
        {},
        "/console/arrangements",
    )
    assert unknown.status_code == 404
    actions = [
        (e["actor"], e["action"])
        for e in queue.events(db, template["id"])
        if e["action"].startswith("arrangement_")
    ]
    assert actions == [
        ("user:coordinator1", "arrangement_created"),
        ("user:coordinator1", "arrangement_paused"),
        ("user:coordinator1", "arrangement_resumed"),
        ("user:coordinator1", "arrangement_ended"),
    ]
    # The audit trail on the request says it in words.
    assert "rule every tue, thu at 10:00" in coordinator.get(page_path).get_data(as_text=True)


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({"time": "10:00", "volunteer_id": "2"}, "choose at least one weekday"),
        ({"weekday": "tue", "time": "25:00", "volunteer_id": "2"}, "not a time"),
        ({"weekday": "tue", "time": "10:00", "volunteer_id": ""}, "choose the volunteer"),
        ({"weekday": "tue", "time": "10:00", "volunteer_id": "99"}, "no volunteer 99"),
        (
            {"weekday": "tue", "time": "10:00", "volunteer_id": "2", "ends_on": "2000-01-01"},
            "the end date is before the start",
        ),
    ],
)
def test_a_wrong_form_makes_nothing_and_says_why(app, db, form, says):
    template = accepted_template(app, db)
    coordinator = as_role(app, db, "coordinator")
    path = f"/console/requests/{template['id']}"
    answer = post_form(coordinator, path + "/arrangements", form, page=path)
    assert says in coordinator.get(answer.location).get_data(as_text=True)
    assert db["arrangements"].count == 0


@pytest.mark.parametrize(
    ("role", "with_token", "status"), [("coordinator", False, 400), ("viewer", True, 403)]
)
def test_making_one_needs_the_csrf_token_and_the_role(app, db, role, with_token, status):
    template = accepted_template(app, db)
    client = as_role(app, db, role)
    path = f"/console/requests/{template['id']}"
    form = {"weekday": "tue", "time": "10:00", "volunteer_id": "2"}
    if with_token:
        form["csrf_token"] = csrf_token(client, path)
        assert "Make this a standing arrangement" not in client.get(path).get_data(as_text=True)
    assert client.post(path + "/arrangements", data=form).status_code == status
    assert db["arrangements"].count == 0


def test_the_api_lists_arrangements(app, db, client):
    arrangement = standing(app, db)
    arrangements.change(db, arrangement["id"], "pause", actor="user:amy")
    headers = bearer(db, "viewer")
    [shown] = client.get("/api/v1/arrangements", headers=headers).json
    assert shown | {"created_at": None} == {
        "id": arrangement["id"],
        "request_id": arrangement["request_id"],
        "person_id": 1,
        "volunteer_id": 3,
        "category": "groceries",
        "language": "en",
        "place": "riverside",
        "weekdays": ["tue"],
        "time": "10:00",
        "timezone": "Europe/London",
        "starts_on": "2026-01-01",
        "ends_on": None,
        "state": "paused",
        "rule": "every tue at 10:00 (Europe/London)",
        "created_by": "user:amy",
        "created_at": None,
    }
    assert client.get("/api/v1/arrangements?state=active", headers=headers).json == []
    assert client.get("/api/v1/arrangements?state=soon", headers=headers).status_code == 400
    assert client.get("/api/v1/arrangements").status_code == 401


@pytest.mark.browser
def test_arrangements_in_chromium(app, db):
    template = accepted_template(app, db)
    make_user(db, "amy", "coordinator")
    with live_server(app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 900})
        log_in(page, base, "amy")
        page.goto(base + f"/console/requests/{template['id']}")
        page.get_by_label("Tue").check()
        page.get_by_label("At (24-hour time)").fill("10:00")
        assert_accessible(page, "arrangement-form-390")
        page.get_by_role("button", name="Make this a standing arrangement").click()
        page.get_by_text("every tue at 10:00").first.wait_for()
        assert_accessible(page, "arrangements-390")
        page.get_by_role("button", name="Pause arrangement 1").click()
        page.get_by_text("Standing arrangement 1 paused.").wait_for()
        assert_accessible(page, "arrangements-paused-390")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_the_same_form_sent_twice_makes_one_arrangement(app, db):
    first = standing(app, db)
    template = arrangements.get(db, first["id"])["request_id"]
    again = arrangements.create(
        db,
        template,
        volunteer_id=3,
        weekdays="tue",
        local_time="10:00",
        zone=app.config["COORDINATOR_TIMEZONE"],
        starts_on="2026-01-01",
        actor="user:amy",
    )
    assert again["id"] == first["id"] and db["arrangements"].count == 1


def test_a_new_arrangement_asks_the_worker_to_make_its_first_occurrence_now(app, db):
    arrangement = standing(app, db)
    [job] = db["jobs"].rows_where(
        "key = ?", [f"{arrangements.DUE}:arrangement:{arrangement['id']}"]
    )
    assert job["state"] == "queued" and job["run_after"] <= datetime.now(UTC).timestamp() + 1


def test_ending_an_arrangement_cancels_its_visits_still_to_come(app, db, client):
    arrangement = standing(app, db)
    [request] = due(app, db, utc("2026-12-07T12:00"))
    [offer] = dispatch.assignments(db, request_id=request["id"])
    with app.app_context():  # the volunteer's SMS is in their language's words
        arrangements.change(db, arrangement["id"], "end", actor="user:amy")
    assert queue.get(db, request["id"])["status"] == "cancelled"
    assert dispatch.get(db, offer["id"])["state"] == "withdrawn"
    [told] = [r for r in outbox.rows(db) if r["key"] == f"request_closed:{offer['id']}"]
    assert "is no longer needed" in told["body"]
    [ended] = [
        e for e in queue.events(db, arrangement["request_id"]) if e["action"] == "arrangement_ended"
    ]
    assert ended["detail"] == {"arrangement": arrangement["id"], "cancelled": [request["id"]]}


@pytest.mark.parametrize("value", ["2026-W49-1", "20261203", "2026-12-3", " "])
def test_dates_are_plain_year_month_day(app, db, value):
    with pytest.raises(arrangements.ArrangementError, match="must be a date like 2027-01-31"):
        standing(app, db, starts_on=value)
