"""Supervision items, their actions and decisions about volunteers, on a real database."""

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app import dispatch, jobs, people, queue, supervision, visits

ALWAYS = "mon-sun 00:00-24:00"


@pytest.fixture
def volunteer(app, db):
    """Register one volunteer."""
    rules = people.rules_for(app)[0]
    fields = {"name": "Ana", "phone": "+15550001001", "languages": "en", "skills": "groceries"}
    return people.add_volunteer(
        db, fields | {"postcode": "riverside", "availability": ALWAYS}, rules, actor="t"
    )


@pytest.fixture
def request_id(db):
    """Queue one request."""
    return queue.create(db, channel="manual", transcript="shopping please")[0]["id"]


def test_an_item_is_opened_once_per_key_and_audited(db, volunteer, request_id):
    item, created = supervision.open_item(
        db, "low_rating", reason="rated 1", actor="caller", request_id=request_id, key="r:1"
    )
    again, created_again = supervision.open_item(
        db, "low_rating", reason="rated 1 again", actor="caller", request_id=request_id, key="r:1"
    )
    assert (created, created_again) == (True, False)
    assert again["id"] == item["id"] and again["reason"] == "rated 1"
    opened = [e for e in queue.events(db, request_id) if e["action"] == "supervision_opened"]
    assert [e["detail"]["item"] for e in opened] == [item["id"]]


@pytest.mark.parametrize(
    ("kind", "reason", "message"),
    [
        ("gossip", "x", "kind must be one of"),
        ("low_rating", "  ", "needs a reason"),
    ],
)
def test_a_bad_item_is_refused(db, kind, reason, message):
    with pytest.raises(supervision.BadSupervision, match=message):
        supervision.open_item(db, kind, reason=reason, actor="t", key="k")
    assert db["supervision_items"].count == 0


def test_actions_are_kept_in_order_and_resolve_reopen_change_the_state(db, request_id):
    item, _ = supervision.open_item(
        db, "did_not_come", reason="no visit", actor="caller", request_id=request_id
    )
    supervision.act(db, item["id"], "follow_up_call", actor="user:cy", text="called Mrs Chen")
    resolved = supervision.act(db, item["id"], "resolve", actor="user:cy")
    assert (resolved["state"], resolved["resolved_by"]) == ("resolved", "user:cy")
    assert supervision.items(db) == []
    reopened = supervision.act(db, item["id"], "reopen", actor="user:cy")
    assert (reopened["state"], reopened["resolved_at"]) == ("open", None)
    history = [(a["action"], a["text"]) for a in supervision.actions(db, item["id"])]
    assert history == [("follow_up_call", "called Mrs Chen"), ("resolve", ""), ("reopen", "")]
    events = [e["action"] for e in queue.events(db, request_id)]
    assert events[-3:] == [
        "supervision_follow_up_call",
        "supervision_resolve",
        "supervision_reopen",
    ]


@pytest.mark.parametrize(
    ("action", "text", "error", "message"),
    [
        ("shout", "x", supervision.BadSupervision, "action must be one of"),
        ("note", " ", supervision.BadSupervision, "needs some words"),
        ("follow_up_call", "", supervision.BadSupervision, "needs some words"),
    ],
)
def test_a_bad_action_changes_nothing(db, action, text, error, message):
    item, _ = supervision.open_item(db, "no_show", reason="no IN", actor="system", key="n:1")
    with pytest.raises(error, match=message):
        supervision.act(db, item["id"], action, actor="user:cy", text=text)
    assert supervision.actions(db, item["id"]) == []


def test_an_unknown_item_is_named(db):
    with pytest.raises(supervision.ItemNotFound, match="no supervision item 99"):
        supervision.act(db, 99, "resolve", actor="user:cy")


def test_decisions_about_a_volunteer_need_a_reason_and_are_audited(db, volunteer):
    with pytest.raises(supervision.BadSupervision, match="needs a reason"):
        supervision.decide(db, volunteer["id"], "training", reason="", actor="user:cy")
    supervision.decide(db, volunteer["id"], "recognition", reason="20 visits, all 5", actor="u")
    kept = [(d["decision"], d["reason"]) for d in supervision.decisions(db, volunteer["id"])]
    assert kept == [("recognition", "20 visits, all 5")]
    event = db.execute("SELECT detail FROM events WHERE action = 'volunteer_recognition'")
    assert json.loads(event.fetchone()[0]) == {
        "volunteer": volunteer["id"],
        "reason": "20 visits, all 5",
    }


# ---- the sweep: conditions in the data open items -----------------------------------------

NOW = datetime.now(UTC)


def add_request(db, urgency="normal"):
    """Queue a transcribed request for groceries."""
    return queue.create(
        db,
        channel="manual",
        transcript="milk and bread please",
        category="groceries",
        urgency=urgency,
        stage="transcribed",
    )[0]


def give_jobs(app, db, volunteer, count):
    """Offer count new requests to the volunteer and accept them, as a YES would."""
    offers = []
    with app.app_context():
        for _ in range(count):
            request_id = add_request(db)["id"]
            [offer] = dispatch.offer(
                app, db, request_id, volunteer_ids=[volunteer["id"]], actor="t"
            )
            assert dispatch.accept(app, db, offer["id"], actor="t").result == "accepted"
            offers.append(offer)
    return offers


def missed(app, db, volunteer):
    """An accepted job nobody checked in to: a no-show; return the offer."""
    [offer] = give_jobs(app, db, volunteer, 1)
    with app.app_context():
        assert visits.no_show(app, db, offer["id"])
    return offer


def visited(app, db, volunteer):
    """A visit checked in and out now; return the offer."""
    [offer] = give_jobs(app, db, volunteer, 1)
    actor = f"volunteer:{volunteer['id']}"
    with app.app_context():
        visits.check_in(app, db, offer["id"], by="sms", actor=actor)
        visits.check_out(app, db, offer["id"], by="sms", actor=actor)
    return offer


def about_offer(offer, volunteer):
    """Return the item columns of an item about an offer."""
    return {
        "assignment_id": offer["id"],
        "request_id": offer["request_id"],
        "volunteer_id": volunteer["id"],
    }


def no_show(app, db, volunteer):
    """No check-in in time, not excused."""
    return NOW, about_offer(missed(app, db, volunteer), volunteer)


def unconfirmed(app, db, volunteer):
    """A visit done a day ago that the senior never confirmed."""
    offer = visited(app, db, volunteer)
    # From the check-out just made: NOW is when the module was imported, maybe long before.
    return datetime.now(UTC) + timedelta(days=1, minutes=5), about_offer(offer, volunteer)


def set_max_open(app, db, volunteer, most):
    """Change how many open jobs the volunteer asks for at most."""
    rules = people.rules_for(app)[0]
    people.update_volunteer(db, volunteer["id"], {"max_open": most}, rules, actor="t")


def over_load(app, db, volunteer):
    """Two accepted jobs, then the volunteer asks for at most one."""
    set_max_open(app, db, volunteer, 2)
    give_jobs(app, db, volunteer, 2)
    set_max_open(app, db, volunteer, 1)
    return NOW, {"volunteer_id": volunteer["id"]}


def inactive(app, db, volunteer):
    """Nothing, for longer than INACTIVE_AFTER."""
    return NOW + timedelta(days=61), {"volunteer_id": volunteer["id"]}


def dead_job(app, db, volunteer):
    """A job whose kind nobody handles, tried once, about a request."""
    request = add_request(db)
    job_id = jobs.enqueue(db, "test.nobody", {"request_id": request["id"]}, max_attempts=1)
    jobs.drain(app)
    return NOW, {"job_id": job_id, "request_id": request["id"]}


def waiting_long(app, db, volunteer):
    """A high-urgency request nobody has taken, after its two-hour target."""
    request = add_request(db, urgency="high")
    add_request(db, urgency="low")  # three days: not yet
    reason = f"request {request['id']} (high) has waited 2 h 05 min, past its 2 h 00 min target"
    moment = datetime.fromisoformat(request["created_at"]) + timedelta(hours=2, minutes=5)
    return moment, {"request_id": request["id"], "reason": reason + ", and nobody has taken it"}


@pytest.mark.parametrize(
    ("kind", "setup"),
    [
        ("no_show", no_show),
        ("unconfirmed", unconfirmed),
        ("over_load", over_load),
        ("inactive", inactive),
        ("dead_job", dead_job),
        ("waiting_long", waiting_long),
    ],
)
def test_each_condition_opens_exactly_one_item_however_often_swept(app, db, volunteer, kind, setup):
    moment, about = setup(app, db, volunteer)
    first = supervision.sweep(db, moment=moment, config=app.config)
    second = supervision.sweep(db, moment=moment, config=app.config)
    [item] = supervision.items(db)
    assert item["kind"] == kind and item["opened_by"] == "system"
    assert {k: item[k] for k in about} == about
    assert [i["id"] for i in first.opened] == [item["id"]] and second.opened == []
    assert second.holds(item) is True


def paused_for_long(app, db, volunteer):
    """A paused volunteer is not looked for."""
    people.pause_volunteer(db, volunteer["id"], actor="t")
    return NOW + timedelta(days=61)


def not_yet_inactive(app, db, volunteer):
    """59 days without a visit is not yet long."""
    return NOW + timedelta(days=59)


def at_their_load(app, db, volunteer):
    """Two jobs for a volunteer who asked for two."""
    set_max_open(app, db, volunteer, 2)
    give_jobs(app, db, volunteer, 2)
    return NOW


def taken_or_not_yet_late(app, db, volunteer):
    """A taken request waits for nobody; an untaken one is inside its target."""
    give_jobs(app, db, volunteer, 1)
    add_request(db, urgency="high")
    return NOW + timedelta(hours=1, minutes=55)


def excused(app, db, volunteer):
    """A no-show a coordinator excused."""
    offer = missed(app, db, volunteer)
    visits.excuse(db, offer["id"], reason="her bus broke down", actor="user:cy")
    return NOW


def confirmed_or_not_yet(app, db, volunteer):
    """One visit the senior confirmed, one done less than UNCONFIRMED_AFTER ago."""
    set_max_open(app, db, volunteer, 2)
    offer = visited(app, db, volunteer)
    db.execute("UPDATE assignments SET senior_came = 'yes' WHERE id = ?", [offer["id"]])
    visited(app, db, volunteer)
    return NOW + timedelta(hours=23)


@pytest.mark.parametrize(
    "setup",
    [
        paused_for_long,
        not_yet_inactive,
        at_their_load,
        taken_or_not_yet_late,
        excused,
        confirmed_or_not_yet,
    ],
)
def test_what_is_fine_opens_nothing(app, db, volunteer, setup):
    moment = setup(app, db, volunteer)
    assert supervision.sweep(db, moment=moment, config=app.config).opened == []
    assert supervision.items(db, state=None) == []


def test_a_cleared_condition_is_said_but_only_a_person_resolves(app, db, volunteer):
    over_load(app, db, volunteer)
    [item] = supervision.sweep(db, moment=NOW, config=app.config).opened
    set_max_open(app, db, volunteer, 2)
    swept = supervision.sweep(db, moment=NOW, config=app.config)
    assert swept.opened == [] and swept.holds(item) is False
    assert supervision.get(db, item["id"])["state"] == "open"
    assert swept.holds({"kind": "complaint"}) is None  # a person's report has no condition


def test_a_resolved_condition_stays_resolved_until_it_comes_back_anew(app, db, volunteer):
    later = NOW + timedelta(days=61)
    [item] = supervision.sweep(db, moment=later, config=app.config).opened
    supervision.act(db, item["id"], "resolve", actor="user:cy")
    assert supervision.sweep(db, moment=later, config=app.config).opened == []
    # A visit, then another 61 days without one: a new spell of inactivity, a new item.
    give_jobs(app, db, volunteer, 1)
    db.execute("UPDATE requests SET status = 'done'")
    [again] = supervision.sweep(db, moment=later + timedelta(days=61), config=app.config).opened
    assert again["kind"] == "inactive" and again["id"] != item["id"]
    assert "no visit since " + NOW.date().isoformat() in again["reason"]


def test_the_sweep_runs_as_a_periodic_durable_job(app, db):
    job_id = jobs.enqueue(db, "test.nobody", {}, max_attempts=1)
    jobs.drain(app)
    moment = datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC)
    for _ in range(2):
        jobs.enqueue_due(app, db, moment)
    jobs.enqueue_due(app, db, moment + timedelta(minutes=14))  # the same quarter hour
    assert db["jobs"].count_where("kind = ?", [supervision.SWEEP]) == 1
    jobs.enqueue_due(app, db, moment + timedelta(minutes=16))
    assert db["jobs"].count_where("kind = ?", [supervision.SWEEP]) == 2
    jobs.drain(app)
    [item] = supervision.items(db)
    assert (item["kind"], item["job_id"]) == ("dead_job", job_id)


def test_pausing_from_an_item_goes_through_the_registry_once(app, db, volunteer):
    item, _ = supervision.complain(
        db, "rude on the phone", actor="user:cy", key="ab12", volunteer_id=volunteer["id"]
    )
    supervision.act(db, item["id"], "pause_volunteer", actor="user:cy", text="until we talk")
    assert people.get_volunteer(db, volunteer["id"])["active"] is False
    [changed] = db["events"].rows_where("action = 'volunteer_changed'")
    assert json.loads(changed["detail"]) == {"volunteer": volunteer["id"], "active": [True, False]}
    with pytest.raises(supervision.BadSupervision, match="Ana is already paused"):
        supervision.act(db, item["id"], "pause_volunteer", actor="user:cy")
    assert [a["action"] for a in supervision.actions(db, item["id"])] == ["pause_volunteer"]


def test_ending_the_role_pauses_the_volunteer(db, volunteer):
    supervision.decide(db, volunteer["id"], "end_role", reason="three no-shows", actor="user:cy")
    assert people.get_volunteer(db, volunteer["id"])["active"] is False


@pytest.mark.parametrize(
    ("about", "key", "message"),
    [
        ({}, "ab", "about a volunteer or a request"),
        ({"request_id": 99}, "ab", "there is no request 99"),
        ({"volunteer_id": 1}, "", "form has expired"),
        ({"volunteer_id": 1}, "x'--", "form has expired"),
    ],
)
def test_a_complaint_must_name_what_it_is_about(db, volunteer, about, key, message):
    with pytest.raises(supervision.BadSupervision, match=message):
        supervision.complain(db, "late", actor="user:cy", key=key, **about)
    assert db["supervision_items"].count == 0


def test_a_complaint_sent_twice_is_one(db, volunteer, request_id):
    about = {"volunteer_id": volunteer["id"], "request_id": request_id}
    first = supervision.complain(db, "late", actor="user:cy", key="c0ffee", **about)
    second = supervision.complain(db, "late", actor="user:cy", key="c0ffee", **about)
    assert (first[1], second[1], second[0]["id"]) == (True, False, first[0]["id"])


def test_excusing_a_no_show_goes_through_visits_once_and_clears_it(app, db, volunteer):
    offer = missed(app, db, volunteer)
    [item] = supervision.sweep(db, moment=NOW, config=app.config).opened
    with pytest.raises(supervision.BadSupervision, match="give a reason"):
        supervision.act(db, item["id"], "excuse_no_show", actor="user:cy", text=" ")
    supervision.act(db, item["id"], "excuse_no_show", actor="user:cy", text="bus broke down")
    row = db["assignments"].get(offer["id"])
    assert (row["excused"], row["excuse"]) == (1, "bus broke down")
    with pytest.raises(supervision.BadSupervision, match="excused already"):
        supervision.act(db, item["id"], "excuse_no_show", actor="user:cy", text="again")
    assert supervision.sweep(db, moment=NOW, config=app.config).holds(item) is False
    assert [a["action"] for a in supervision.actions(db, item["id"])] == ["excuse_no_show"]
    excused_events = [
        e for e in queue.events(db, offer["request_id"]) if e["action"] == "no_show_excused"
    ]
    assert len(excused_events) == 1


def test_only_a_no_show_can_be_excused(db, volunteer, request_id):
    item, _ = supervision.complain(db, "late", actor="user:cy", key="e1", request_id=request_id)
    with pytest.raises(supervision.BadSupervision, match="only a no-show"):
        supervision.act(db, item["id"], "excuse_no_show", actor="user:cy", text="why not")
    assert supervision.actions(db, item["id"]) == []


def test_a_visit_counts_from_its_check_out_for_inactivity(app, db, volunteer):
    offer = visited(app, db, volunteer)
    # Accepted 70 days ago, visited only now: not inactive.
    db.execute(
        "UPDATE assignments SET answered_at = ? WHERE id = ?",
        [(NOW - timedelta(days=70)).isoformat(timespec="seconds"), offer["id"]],
    )
    db.execute("UPDATE volunteers SET created_at = ?", [(NOW - timedelta(days=90)).isoformat()])
    assert supervision.sweep(db, moment=NOW, config=app.config).opened == []


def test_a_request_for_a_later_time_waits_for_nobody_until_then(app, db):
    # An occurrence of a standing arrangement, made two days ahead (wanted_at has an offset).
    start = (NOW + timedelta(days=2)).astimezone(ZoneInfo("America/New_York"))
    request = queue.create(
        db,
        channel="manual",
        category="groceries",
        urgency="normal",
        wanted_at=start.isoformat(timespec="minutes"),
    )[0]
    before = start - timedelta(minutes=1)
    assert supervision.sweep(db, moment=before, config=app.config).opened == []
    [item] = supervision.sweep(db, moment=start + timedelta(minutes=1), config=app.config).opened
    assert (item["kind"], item["request_id"]) == ("waiting_long", request["id"])


@pytest.mark.parametrize("action", ["resolve", "reopen"])
def test_resolving_or_reopening_twice_acts_once(db, request_id, action):
    item, _ = supervision.open_item(db, "complaint", reason="rude", actor="u", key="c:9")
    if action == "reopen":
        supervision.act(db, item["id"], "resolve", actor="user:cy")
    for _ in range(3):
        supervision.act(db, item["id"], action, actor="user:cy")
    done = [a["action"] for a in supervision.actions(db, item["id"])]
    assert done.count(action) == 1


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda db, i, text: supervision.act(db, i, "note", actor="u", text=text), "the text is"),
        (
            lambda db, i, text: supervision.open_item(db, "complaint", reason=text, actor="u"),
            "the reason is",
        ),
        (
            lambda db, i, text: supervision.decide(db, 1, "training", reason=text, actor="u"),
            "the reason is",
        ),
    ],
)
def test_texts_longer_than_the_page_allows_are_refused_on_the_server(
    db, volunteer, request_id, call, says
):
    item, _ = supervision.open_item(db, "no_show", reason="no IN", actor="system", key="n:2")
    before = (db["supervision_actions"].count, db["volunteer_decisions"].count)
    with pytest.raises(supervision.BadSupervision, match=f"{says} 2001 characters: at most 2000"):
        call(db, item["id"], "x" * 2001)
    assert (db["supervision_actions"].count, db["volunteer_decisions"].count) == before
    assert db["supervision_items"].count == 1
