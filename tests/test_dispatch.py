"""Offers and the cascade: the real app, the real twilio client against a loopback fake of
Twilio's REST API, and signed inbound webhooks, as Twilio would send them."""

import threading
import time
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from app import dispatch, jobs, outbox, people, queue
from app.db import connect
from tests.browser import assert_accessible, chromium, live_server, log_in
from tests.test_api import bearer
from tests.test_console import add_request, as_role, csrf_token, make_user
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN, SERVICE_NUMBER, rest_settings

ALWAYS = "; ".join(f"{d} 00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
FROM = SERVICE_NUMBER
SENIOR = "+15550000001"
WORDS = {
    "yes": ["yes", "y", "yeah", "ok", "sure"],
    "no": ["no", "n", "nope"],
    "help": ["help"],
    "stop": ["stop", "cancel", "end"],
    "start": ["start"],
}


@pytest.fixture
def app(make_app, rest):
    """Build an app with Twilio set up and pointed at the fake."""
    return make_app(
        **rest_settings(rest),
        PUBLIC_BASE_URL="http://localhost",
        OFFER_TIMEOUT=60.0,
    )


def add_volunteers(app, db, count, **fields):
    """Register count volunteers who can all do groceries at any time; return them."""
    rules = people.rules_for(app)[0]
    return [
        people.add_volunteer(
            db,
            {
                "name": f"Volunteer {n}",
                "phone": f"+1555000{n:04d}",
                "languages": "en",
                "skills": "groceries",
                "postcode": "riverside",
                "availability": ALWAYS,
                "max_open": 2,
            }
            | fields,
            rules,
            actor="test",
        )
        for n in range(101, 101 + count)
    ]


def add_senior(app, db):
    """Register the senior who asks for help, with the phone the request came from."""
    rules = people.rules_for(app)[0]
    return people.add_person(
        db,
        {"name": "Mrs Chen", "phones": SENIOR, "address": "4 Elm St", "postcode": "riverside"},
        rules,
        actor="test",
    )


def signed(client, path, params):
    """POST a webhook signed as Twilio signs it; return the response."""
    url = "http://localhost" + path
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


_sids = iter(range(10**6))


def text(client, phone, body, message_sid=None):
    """Send an SMS from phone to CareCall; return the words of the TwiML <Message>, or None."""
    params = {
        "MessageSid": message_sid or f"SM{next(_sids):032x}",
        "AccountSid": ACCOUNT_SID,
        "From": phone,
        "To": FROM,
        "Body": body,
    }
    response = signed(client, "/twilio/sms", params)
    assert response.status_code == 200, response.get_data(as_text=True)
    message = ET.fromstring(response.get_data(as_text=True)).find("Message")
    return None if message is None else message.text


def offer(client, db, request_id, **body):
    """Make offers through the API as a coordinator; return them."""
    response = client.post(
        f"/api/v1/requests/{request_id}/offers", headers=bearer(db, "coordinator"), json=body
    )
    assert response.status_code == 201, response.json
    return response.json["offers"]


def states(db, request_id):
    """Return {volunteer id: state} of a request's offers."""
    return {a["volunteer_id"]: a["state"] for a in dispatch.assignments(db, request_id=request_id)}


def said(twiml):
    """Return every word a TwiML document says."""
    return " ".join("".join(node.itertext()) for node in ET.fromstring(twiml).iter("Say"))


@pytest.fixture
def scene(app, db, client):
    """A senior's groceries request and four volunteers able to do it."""
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 4)
    request = add_request(db, phone=SENIOR, region="riverside")
    return request, volunteers


def test_two_yeses_at_once_one_wins_and_the_senior_is_called(app, db, client, rest, scene):
    request, volunteers = scene
    offers = offer(client, db, request["id"], top=3)
    # Equal scores: the lower ids, always.
    assert [o["volunteer_id"] for o in offers] == [1, 2, 3]
    assert len({o["code"] for o in offers}) == 3
    jobs.drain(app)
    bodies = {m["to"]: m["body"] for m in rest.messages}
    for o, v in zip(offers, volunteers, strict=False):
        assert (
            f"Reply YES {o['code']} or NO {o['code']}, or open http://localhost/v/"
            in (bodies[v["phone"]])
        )
        # Several volunteers read an offer: the street, not the door.
        assert "Mrs Chen, Elm St," in bodies[v["phone"]] and "4 Elm" not in bodies[v["phone"]]
    assert all(m["from"] == FROM for m in rest.messages)
    assert rest.calls == []  # the senior hears nothing until a volunteer has said yes
    # One volunteer's code is no good from another's phone.
    stolen = text(client, volunteers[3]["phone"], f"YES {offers[0]['code']}")
    assert "no longer open" in stolen and set(states(db, request["id"]).values()) == {"offered"}

    barrier = threading.Barrier(2)
    replies = {}

    def reply(volunteer, code):
        own = app.test_client()
        barrier.wait()
        replies[volunteer["id"]] = text(own, volunteer["phone"], f"yes {code}")

    threads = [
        threading.Thread(target=reply, args=(volunteers[i], offers[i]["code"])) for i in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    won = [vid for vid, words in replies.items() if "the job is yours" in words]
    assert all("Mrs Chen, 4 Elm St" in replies[vid] for vid in won)  # the winner gets the door
    lost = [vid for vid, words in replies.items() if "already taken" in words]
    assert len(won) == 1 and len(lost) == 1, replies
    final = states(db, request["id"])
    assert final[won[0]] == "accepted"
    assert sorted(final.values()) == ["accepted", "withdrawn", "withdrawn"]
    assert queue.get(db, request["id"])["status"] == "assigned"

    jobs.drain(app)
    [call] = rest.calls
    assert (call["to"], call["from"]) == (SENIOR, FROM)
    accepted = dispatch.assignments(db, request_id=request["id"], state="accepted")[0]
    assert call["url"] == f"http://localhost/twilio/visit/{accepted['id']}"
    # The volunteer nobody heard from is told the job is taken.
    third = volunteers[2]["phone"]
    assert any(m["to"] == third and "taken by another" in m["body"] for m in rest.messages)

    call_params = {"CallSid": call["sid"], "From": FROM, "To": SENIOR, "AccountSid": ACCOUNT_SID}
    path = f"/twilio/visit/{accepted['id']}"
    heard = said(signed(client, path, call_params).get_data(as_text=True))
    winner = people.get_volunteer(db, won[0])["name"]
    # Free at any time: they come as soon as they can, not at a minute already past.
    assert f"{winner} will come as soon as they can" in heard and "help you with" in heard
    assert "press 1" in heard and "press star" in heard and "press 0" in heard
    again = signed(client, path + "/answer", call_params | {"Digits": "*"})
    assert f"{winner} will come" in said(again.get_data(as_text=True))
    done = signed(client, path + "/answer", call_params | {"Digits": "1"})
    assert f"{winner} will see you" in said(done.get_data(as_text=True))
    actions = [e["action"] for e in queue.events(db, request["id"])]
    assert "assigned" in actions and "visit_confirmed" in actions
    # The matching cache sees the new load at once.
    _, ranking = people.suggest(app, db, queue.get(db, request["id"]), limit=4)
    reasons = {m.volunteer_id: m.reasons for m in ranking.matches}
    assert "1 of 2 open jobs" in reasons[won[0]]


def test_senior_asking_for_another_time_flags_the_coordinator(app, db, client, rest, scene):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], volunteer_ids=[2])
    assert "the job is yours" in text(client, volunteers[1]["phone"], f"YES {o['code']}")
    params = {"CallSid": "CA" + "1" * 32, "From": FROM, "To": SENIOR}
    response = signed(client, f"/twilio/visit/{o['id']}/answer", params | {"Digits": "2"})
    assert "find another time" in said(response.get_data(as_text=True))
    item = queue.get(db, request["id"])
    assert item["needs_review"] and item["status"] == "assigned"
    [event] = [e for e in queue.events(db, request["id"]) if e["action"] == "visit_another_time"]
    assert event["detail"]["reason"] == "the senior asked for another time"
    # The coordinator reads it on the request page, in words.
    page = as_role(app, db, "coordinator").get(f"/console/requests/{request['id']}")
    html = page.get_data(as_text=True)
    assert "the senior asked for another time" in html and "offers withdrawn 0" in html


def test_no_asks_the_next_volunteer(app, db, client, rest, scene):
    request, volunteers = scene
    [first] = offer(client, db, request["id"], top=1)
    assert "Thank you for letting us know" in text(client, volunteers[0]["phone"], "No")
    assert states(db, request["id"]) == {1: "declined", 2: "offered"}
    second = dispatch.assignments(db, request_id=request["id"], state="offered")[0]
    assert second["wave"] == 2 and second["code"] != first["code"]
    jobs.drain(app)
    assert [m["to"] for m in rest.messages] == [volunteers[0]["phone"], volunteers[1]["phone"]]


def test_no_answer_in_time_expires_alerts_and_asks_the_next(make_app, rest, db, client):
    app = make_app(
        **rest_settings(rest),
        OFFER_TIMEOUT=1.0,
    )
    client = app.test_client()
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 2)
    request = add_request(db, phone=SENIOR)
    [first] = offer(client, db, request["id"], top=1)
    jobs.drain(app)
    assert states(db, request["id"]) == {1: "offered"}  # not yet
    time.sleep(2.1)
    jobs.drain(app)
    assert states(db, request["id"]) == {1: "expired", 2: "offered"}
    item = queue.get(db, request["id"])
    assert item["needs_review"]
    [event] = [e for e in queue.events(db, request["id"]) if e["action"] == "offer_expired"]
    assert f"no answer from Volunteer 101 to offer {first['code']}" == event["detail"]["reason"]
    bodies = [(m["to"], m["body"]) for m in rest.messages]
    assert any(to == volunteers[0]["phone"] and "has closed" in b for to, b in bodies)
    assert any(to == volunteers[1]["phone"] and "Reply YES" in b for to, b in bodies)
    # The late yes is told the offer closed; nothing changes.
    late = text(client, volunteers[0]["phone"], f"yes {first['code']}")
    assert "no longer open" in late and queue.get(db, request["id"])["status"] == "new"
    # When nobody is left, the coordinator hears that too.
    time.sleep(2.1)
    jobs.drain(app)
    actions = [e["action"] for e in queue.events(db, request["id"])]
    assert actions.count("offer_expired") == 2 and "no_volunteer" in actions


def test_stop_is_honoured_and_recorded(app, db, client, rest, scene):
    request, volunteers = scene
    offer(client, db, request["id"], top=1)
    answer = text(client, volunteers[0]["phone"], "Stop")
    assert "no more CareCall offers" in answer
    assert people.get_volunteer(db, 1)["opted_out_at"]
    # The open offer moves on to the next volunteer, and volunteer 1 is never asked again.
    assert states(db, request["id"]) == {1: "withdrawn", 2: "offered"}
    later = add_request(db, phone=SENIOR)
    assert [o["volunteer_id"] for o in offer(client, db, later["id"], top=3)] == [2, 3, 4]
    refused = client.post(
        f"/api/v1/requests/{later['id']}/offers",
        headers=bearer(db, "coordinator", "c2"),
        json={"volunteer_ids": [1]},
    )
    assert refused.status_code == 400 and "STOP" in refused.json["error"]
    [event] = db["events"].rows_where("action = 'volunteer_opted_out'")
    assert event["actor"] == f"sms:{volunteers[0]['phone']}"
    assert "offers again" in text(client, volunteers[0]["phone"], "START")
    assert people.get_volunteer(db, 1)["opted_out_at"] is None


def test_free_text_reaches_the_coordinator_as_a_note(app, db, client, rest, scene):
    request, volunteers = scene
    offer(client, db, request["id"], top=2)
    words = "can't today, tomorrow at 2"
    assert "passed your message to a coordinator" in text(client, volunteers[0]["phone"], words)
    assert states(db, request["id"]) == {1: "offered", 2: "offered"}  # not forced to yes/no
    item = queue.get(db, request["id"])
    assert item["needs_review"]
    [event] = [e for e in queue.events(db, request["id"]) if e["action"] == "volunteer_note"]
    assert event["detail"]["text"] == words and event["actor"] == "volunteer:1"


def test_help_and_a_replayed_message(app, db, client, rest, scene):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], top=1)
    assert "reply YES and the number" in text(client, volunteers[0]["phone"], "help")
    first = text(client, volunteers[0]["phone"], f"Yse {o['code']}", message_sid="SM" + "a" * 32)
    again = text(client, volunteers[0]["phone"], f"Yse {o['code']}", message_sid="SM" + "a" * 32)
    assert first == again and "the job is yours" in first
    actions = [e["action"] for e in queue.events(db, request["id"])]
    assert actions.count("accepted") == 1 and actions.count("assigned") == 1


def test_unsigned_sms_is_refused(app, db, client, scene):
    request, volunteers = scene
    offer(client, db, request["id"], top=1)
    response = client.post(
        "/twilio/sms", data={"From": volunteers[0]["phone"], "Body": "yes", "MessageSid": "SMx"}
    )
    assert response.status_code == 403
    assert states(db, request["id"]) == {1: "offered"}


@pytest.mark.parametrize(
    ("message", "meaning", "code"),
    [
        ("YES 427", "yes", "427"),
        ("yes", "yes", None),
        ("Yes!", "yes", None),
        ("yse 427", "yes", "427"),
        ("yess", "yes", None),
        ("427 no", "no", "427"),
        ("NO, 427", "no", "427"),
        ("nope", "no", None),
        ("HLEP", "help", None),
        ("STOP", "stop", None),
        ("stpo", "stop", None),
        ("Cancel", "stop", None),
        ("shop", "note", None),
        ("end it all now", "note", None),
        ("can't today, tomorrow at 2", "note", None),
        ("yes please", "note", None),
        ("yes 427 428", "note", None),
        ("", "note", None),
        ("pure", "note", None),
    ],
)
def test_reading_a_reply(message, meaning, code):
    assert dispatch.parse_reply(message, WORDS) == dispatch.Reply(meaning, code)


@pytest.mark.parametrize("lost", [False, True])
def test_a_retry_after_a_500_sends_once(app, db, client, rest, scene, lost):
    request, volunteers = scene
    rest.fail_next(1, lost=lost)
    [o] = offer(client, db, request["id"], top=1)
    jobs.drain(app)
    [row] = outbox.rows(db)
    assert row["state"] == "sent" and row["twilio_sid"].startswith("SM")
    [message] = rest.messages  # whether or not Twilio had kept the first try
    assert message["sid"] == row["twilio_sid"] and o["code"] in message["body"]
    assert row["attempts"] == (1 if lost else 2)


def test_a_number_twilio_refuses_is_not_retried_and_the_coordinator_is_told(
    app, db, client, rest, scene
):
    request, volunteers = scene
    rest.refused.add(volunteers[0]["phone"])
    offer(client, db, request["id"], top=1)
    jobs.drain(app)
    [row] = outbox.rows(db)
    assert (row["state"], row["attempts"], rest.messages) == ("failed", 1, [])
    assert "Twilio answered 400" in row["error"]
    item = queue.get(db, request["id"])
    [event] = [e for e in queue.events(db, request["id"]) if e["action"] == "message_failed"]
    assert item["needs_review"] and volunteers[0]["phone"] in event["detail"]["reason"]


def test_a_request_done_frees_its_volunteer_for_matching(app, db, client, rest, scene):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], volunteer_ids=[1])
    text(client, volunteers[0]["phone"], f"yes {o['code']}")
    headers = bearer(db, "coordinator", "c3")
    path = f"/api/v1/requests/{request['id']}/matches?limit=4"
    busy = client.get(path, headers=headers).json["matches"]
    assert "1 of 2 open jobs" in next(m for m in busy if m["volunteer_id"] == 1)["reasons"]
    client.patch(f"/api/v1/requests/{request['id']}", headers=headers, json={"status": "done"})
    free = client.get(path, headers=headers).json["matches"]
    assert "0 of 2 open jobs" in next(m for m in free if m["volunteer_id"] == 1)["reasons"]


def test_status_callbacks_update_the_outbox(app, db, client, rest, scene):
    request, volunteers = scene
    offer(client, db, request["id"], top=1)
    jobs.drain(app)
    [row] = outbox.rows(db)
    assert rest.messages[0]["status_callback"] == "http://localhost/twilio/sms-status"
    for status in ("sent", "delivered", "sent"):  # the late "sent" does not undo delivered
        params = {"MessageSid": row["twilio_sid"], "MessageStatus": status}
        assert signed(client, "/twilio/sms-status", params).status_code == 204
    assert outbox.get(db, row["id"])["twilio_status"] == "delivered"
    unsigned = client.post("/twilio/sms-status", data={"MessageSid": row["twilio_sid"]})
    assert unsigned.status_code == 403
    failed = {"MessageSid": row["twilio_sid"], "MessageStatus": "undelivered", "ErrorCode": "30003"}
    signed(client, "/twilio/sms-status", failed)
    assert queue.get(db, request["id"])["needs_review"]


def test_without_credentials_messages_wait_in_the_outbox(make_app, db, rest):
    app = make_app(TWILIO_API_BASE_URL=rest.base_url)
    add_senior(app, db)
    add_volunteers(app, db, 1)
    request = add_request(db, phone=SENIOR)
    client = app.test_client()
    [o] = offer(client, db, request["id"], top=1)
    jobs.drain(app)
    [row] = outbox.rows(db)
    assert row["state"] == "waiting" and "CARECALL_TWILIO_FROM_NUMBER" in row["error"]
    assert rest.messages == [] and db["jobs"].count_where("kind = 'outbox.deliver'") == 0
    coordinator = as_role(app, db, "coordinator")
    page = coordinator.get("/console/outbox").get_data(as_text=True)
    assert f"Reply YES {o['code']}" in page and "waiting" in page
    app.config.update(
        TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_FROM_NUMBER=FROM
    )
    with app.app_context():
        assert outbox.release_waiting(db) == 1
    jobs.drain(app)
    assert outbox.get(db, row["id"])["state"] == "sent" and len(rest.messages) == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"top": 0}, 400, "top must be"),
        ({"volunteer_ids": [99]}, 400, "no volunteer 99"),
        ({"volunteer_ids": "1"}, 400, "volunteer_ids must be"),
        ({"top": 1, "volunteer_ids": [1]}, 400, "send"),
        ({"topp": 1}, 400, "send"),
    ],
)
def test_bad_offers_are_refused(app, db, client, scene, body, status, words):
    request, _ = scene
    response = client.post(
        f"/api/v1/requests/{request['id']}/offers", headers=bearer(db, "coordinator"), json=body
    )
    assert response.status_code == status and words in response.json["error"]
    assert db["assignments"].count == 0


def test_assignments_api_and_roles(app, db, client, scene):
    request, volunteers = scene
    offers = offer(client, db, request["id"], volunteer_ids=[3, 1])
    viewer = bearer(db, "viewer", "v")
    listed = client.get(f"/api/v1/assignments?request_id={request['id']}", headers=viewer)
    assert listed.status_code == 200
    assert [(a["volunteer_id"], a["state"], a["code"]) for a in listed.json] == [
        (o["volunteer_id"], "offered", o["code"]) for o in offers
    ]
    assert {"id", "request_id", "volunteer_id", "state", "code"} <= set(listed.json[0])
    denied = client.post(
        f"/api/v1/requests/{request['id']}/offers", headers=viewer, json={"top": 1}
    )
    assert denied.status_code == 403
    text(client, volunteers[2]["phone"], "yes")
    again = client.post(
        f"/api/v1/requests/{request['id']}/offers",
        headers=bearer(db, "coordinator", "c9"),
        json={"top": 1},
    )
    assert again.status_code == 409 and "assigned" in again.json["error"]


@pytest.mark.browser
def test_outbox_page_in_chromium_is_accessible(make_app, db):
    app = make_app()
    add_senior(app, db)
    add_volunteers(app, db, 2)
    request = add_request(db, phone=SENIOR)
    with app.app_context():
        dispatch.offer(app, db, request["id"], top=2, actor="test")
    make_user(db, "amy", "coordinator")
    with live_server(app) as base, chromium() as browser:
        for width in (390, 1366):
            page = browser.new_page(viewport={"width": width, "height": 900})
            log_in(page, base, "amy")
            page.get_by_role("link", name="Outbox").click()
            page.get_by_text("Messages wait here until Twilio is set up").wait_for()
            assert_accessible(page, f"outbox-{width}")
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            page.close()


def test_a_volunteer_who_asked_for_calls_answers_by_keypad(app, db, client, rest, scene):
    request, volunteers = scene
    people.update_volunteer(
        db, 1, {"offer_channel": "call"}, people.rules_for(app)[0], actor="test"
    )
    [o] = offer(client, db, request["id"], volunteer_ids=[1])
    assert o["channel"] == "call"
    jobs.drain(app)
    [call] = rest.calls
    assert call["to"] == volunteers[0]["phone"] and rest.messages == []
    path = f"/twilio/offer-call/{o['id']}"
    params = {"CallSid": call["sid"], "From": FROM, "To": volunteers[0]["phone"]}
    heard = said(signed(client, path, params).get_data(as_text=True))
    assert "Help with shopping and errands for Mrs Chen, Elm St" in heard
    assert f"The job number is {' '.join(o['code'])}." in heard
    assert "To take the job, press 1. To pass, press 2." in heard
    answered = signed(client, path + "/answer", params | {"Digits": "1"})
    assert "the job is yours" in said(answered.get_data(as_text=True))
    assert states(db, request["id"]) == {1: "accepted"}
    assert queue.get(db, request["id"])["status"] == "assigned"


@pytest.mark.parametrize(("value", "ok"), [("call", True), ("SMS", True), ("pigeon", False)])
def test_offer_channel_is_checked(app, db, value, ok):
    rules = people.rules_for(app)[0]
    fields = {
        "name": "Ann",
        "phone": "+15550000555",
        "skills": "groceries",
        "offer_channel": value,
    }
    if ok:
        assert people.add_volunteer(db, fields, rules, actor="t")["offer_channel"] == value.lower()
    else:
        with pytest.raises(people.BadField, match="offer_channel"):
            people.add_volunteer(db, fields, rules, actor="t")


@pytest.mark.parametrize(
    ("form", "flashed", "offered"),
    [
        ({"volunteer_id": ["3", "1"]}, "Offered to Volunteer 103 (code ", [3, 1]),
        ({"top": "3", "volunteer_id": ["4"]}, "Offered to Volunteer 101 (code ", [1, 2, 3]),
        ({}, "Tick the volunteers", []),
        ({"top": "0"}, "Not offered: top must be", []),
        ({"volunteer_id": ["99"]}, "Not offered: no volunteer 99", []),
        ({"volunteer_id": ["x"]}, "Tick the volunteers", []),
    ],
)
def test_console_offers_from_the_matches_page(app, db, scene, form, flashed, offered):
    request, _ = scene
    coordinator = as_role(app, db, "coordinator")
    path = f"/console/requests/{request['id']}/matches"
    page = coordinator.get(path).get_data(as_text=True)
    assert 'name="volunteer_id"' in page and "Offer to the top 3" in page
    token = csrf_token(coordinator, path)
    response = coordinator.post(
        f"/console/requests/{request['id']}/offers", data={**form, "csrf_token": token}
    )
    assert response.status_code == 303 and response.location.endswith(path)
    assert flashed in coordinator.get(path).get_data(as_text=True)
    assert [a["volunteer_id"] for a in dispatch.assignments(db, request_id=request["id"])] == (
        offered
    )


def test_viewers_cannot_offer(app, db, scene):
    request, _ = scene
    viewer = as_role(app, db, "viewer")
    page = viewer.get(f"/console/requests/{request['id']}/matches").get_data(as_text=True)
    assert 'name="volunteer_id"' not in page
    token = csrf_token(viewer, f"/console/requests/{request['id']}/matches")
    response = viewer.post(
        f"/console/requests/{request['id']}/offers", data={"top": "3", "csrf_token": token}
    )
    assert response.status_code == 403 and db["assignments"].count == 0


@pytest.mark.browser
@pytest.mark.parametrize("width", [390, 1366])
def test_coordinator_offers_in_chromium(make_app, db, width):
    app = make_app()
    add_senior(app, db)
    add_volunteers(app, db, 4)
    request = add_request(db, phone=SENIOR)
    make_user(db, "amy", "coordinator")
    with live_server(app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": 900})
        log_in(page, base, "amy")
        page.goto(base + f"/console/requests/{request['id']}")
        page.get_by_role("link", name="Suggested volunteers for this request").click()
        page.get_by_label("Offer to Volunteer 102").check()
        page.get_by_role("button", name="Offer to the ticked volunteers").click()
        page.get_by_text("Offered to Volunteer 102 (code").wait_for()
        assert_accessible(page, f"offers-{width}")
        page.get_by_role("button", name="Offer to the top 3").click()
        page.get_by_text("Offered to Volunteer 101 (code").wait_for()
        assert page.get_by_role("row").filter(has_text="Volunteer 104").count() == 1
        assert_accessible(page, f"offers-top-{width}")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert {a["volunteer_id"] for a in dispatch.assignments(db, request_id=request["id"])} == {
        1,
        2,
        3,
        4,
    }


@pytest.mark.parametrize("sid_field", [None, "", "  "])
def test_an_sms_without_a_message_sid_is_refused(app, db, client, scene, sid_field):
    request, volunteers = scene
    offer(client, db, request["id"], top=1)
    params = {"From": volunteers[0]["phone"], "Body": "yes"}
    if sid_field is not None:
        params["MessageSid"] = sid_field
    assert signed(client, "/twilio/sms", params).status_code == 400
    assert states(db, request["id"]) == {1: "offered"} and db["inbound_sms"].count == 0


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
FUZZ_FIELDS = {
    "MessageSid": st.one_of(st.sampled_from(["SM" + "1" * 32, "SM" + "2" * 32, ""]), TEXT),
    "CallSid": st.one_of(st.just("CA" + "3" * 32), TEXT),
    "From": st.one_of(st.sampled_from(["+15550000101", "+15550000102", SENIOR]), TEXT),
    "Body": st.one_of(st.sampled_from(["yes", "NO 123", "stop", "start", "help"]), TEXT),
    "MessageStatus": st.one_of(st.sampled_from(["sent", "delivered", "failed"]), TEXT),
    "CallStatus": st.one_of(st.sampled_from(["completed", "no-answer"]), TEXT),
    "Digits": st.one_of(st.sampled_from(["1", "2", "0", "*", "9", ""]), TEXT),
}
FUZZ_PATHS = st.one_of(
    st.sampled_from(
        [
            "/twilio/sms",
            "/twilio/sms-status",
            "/twilio/outbox-status",
            "/twilio/visit/1",
            "/twilio/visit/1/answer",
            "/twilio/visit/1/answer?silences=x",
            "/twilio/visit/99/answer",
            "/twilio/visit/dialed",
            "/twilio/offer-call/2",
            "/twilio/offer-call/2/answer",
            "/twilio/offer-call/99",
            "/twilio/rating/1",
            "/twilio/rating/1/came",
            "/twilio/rating/1/how?silences=x",
            "/twilio/rating/99/came",
            "/twilio/rating/1/dialed",
        ]
    ),
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """Return an app with offers made, shared by every fuzzed webhook so state builds up."""
    from app import create_app
    from app.db import connect, migrate

    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-0123456789",
            "DATABASE": str(tmp / "carecall.db"),
            "DATA_DIR": str(tmp / "data"),
            "OUTBOX_DIR": str(tmp / "outbox"),
            "WORKER": "none",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        }
    )
    migrate(app.config["DATABASE"])
    db = connect(app.config["DATABASE"])
    add_senior(app, db)
    add_volunteers(app, db, 3)
    request = add_request(db, phone=SENIOR)
    with app.app_context():
        dispatch.offer(app, db, request["id"], top=3, actor="test")
    db.close()
    return app


@settings(max_examples=300, deadline=None)
@given(path=FUZZ_PATHS, form=st.fixed_dictionaries({}, optional=FUZZ_FIELDS))
def test_no_signed_offer_webhook_answers_a_5xx(fuzzed, path, form):
    response = signed(fuzzed.test_client(), path, form)
    assert response.status_code < 500, (path, form, response.get_data(as_text=True)[:300])


def test_outbox_commands_list_and_send_the_waiting(make_app, db, rest):
    app = make_app(TWILIO_API_BASE_URL=rest.base_url)
    add_senior(app, db)
    add_volunteers(app, db, 1)
    request = add_request(db, phone=SENIOR)
    with app.app_context():
        [o] = dispatch.offer(app, db, request["id"], top=1, actor="test")
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["outbox", "list", "--state", "waiting", "--json"])
    assert listed.exit_code == 0 and f"Reply YES {o['code']}" in listed.output
    refused = runner.invoke(args=["outbox", "send"])
    assert refused.exit_code == 1 and "CARECALL_TWILIO_ACCOUNT_SID" in refused.output
    app.config.update(
        TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_FROM_NUMBER=FROM
    )
    sent = runner.invoke(args=["outbox", "send"])
    assert sent.exit_code == 0 and "queued 1 waiting message" in sent.output
    jobs.drain(app)
    assert [m["to"] for m in rest.messages] == ["+15550000101"]


def test_an_offer_for_a_request_closed_meanwhile_is_withdrawn_not_flagged(make_app, rest, db):
    app = make_app(
        **rest_settings(rest),
        OFFER_TIMEOUT=1.0,
    )
    client = app.test_client()
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 2)
    request = add_request(db, phone=SENIOR)
    [o] = offer(client, db, request["id"], top=1)
    headers = bearer(db, "coordinator", "c4")
    client.patch(f"/api/v1/requests/{request['id']}", headers=headers, json={"status": "done"})
    assert "no longer open" in text(client, volunteers[0]["phone"], f"yes {o['code']}")
    [o2] = offer(client, db, add_request(db, phone=SENIOR)["id"], top=1)
    client.patch(
        f"/api/v1/requests/{o2['request_id']}", headers=headers, json={"status": "cancelled"}
    )
    time.sleep(2.1)
    jobs.drain(app)
    assert dispatch.get(db, o["id"])["state"] == "withdrawn"
    assert dispatch.get(db, o2["id"])["state"] == "withdrawn"
    assert not queue.get(db, o2["request_id"])["needs_review"]
    assert db["assignments"].count == 2  # nobody else was asked


@pytest.mark.parametrize(
    ("keys", "heard", "dialled", "answer", "flagged"),
    [
        (["1"], "will see you", False, "suits", False),
        (["2"], "find another time", False, "another_time", True),
        (["0"], "connect you to a coordinator", True, "person", True),
        (["9", "1"], "will see you", False, "suits", False),
        (["", "", ""], "A coordinator will call you about this visit", False, "no_answer", True),
    ],
)
def test_the_senior_keys_on_the_visit_call(
    make_app, rest, db, keys, heard, dialled, answer, flagged
):
    app = make_app(
        **rest_settings(rest),
        PUBLIC_BASE_URL="http://localhost",
        COORDINATOR_NUMBER="+15550008888",
        COORDINATOR_HOURS=(0, 24),
        COORDINATOR_DAYS=(0, 1, 2, 3, 4, 5, 6),
    )
    client = app.test_client()
    add_senior(app, db)
    volunteers = add_volunteers(app, db, 1)
    request = add_request(db, phone=SENIOR)
    [o] = offer(client, db, request["id"], top=1)
    text(client, volunteers[0]["phone"], "yes")
    params = {"CallSid": "CA" + "7" * 32, "From": FROM, "To": SENIOR}
    path = f"/twilio/visit/{o['id']}"
    first = signed(client, path, params).get_data(as_text=True)
    action = ET.fromstring(first).find("Gather").get("action")
    for key in keys:
        body = signed(client, action, params | {"Digits": key}).get_data(as_text=True)
        gather = ET.fromstring(body).find("Gather")
        action = gather.get("action") if gather is not None else None
    assert heard in said(body)
    assert (ET.fromstring(body).find("Dial") is not None) == dialled
    assert dispatch.get(db, o["id"])["senior_answer"] == answer
    assert queue.get(db, request["id"])["needs_review"] == flagged


@pytest.mark.parametrize("translated", [True, False])
def test_the_senior_hears_the_visit_in_their_language(make_app, rest, db, tmp_path, translated):
    import shutil

    flows = tmp_path / "flows"
    shutil.copytree("ivr_flows", flows)
    korean = (flows / "en.toml").read_text()
    korean = korean.replace('language = "en"', 'language = "ko"').replace('"9"', '"8"')
    korean = korean.replace('say_language = "en-US"', 'say_language = "ko-KR"')
    if translated:
        korean = korean.replace(
            'visit = "{volunteer} will come {when} to help you with {category}."',
            'visit = "{volunteer} 님이 {when} 방문합니다."',
        )
    else:
        korean = korean.replace('visit = "{volunteer} will come', 'missing = "{volunteer}')
    (flows / "ko.toml").write_text(korean)
    app = make_app(
        FLOWS_DIR=str(flows),
        **rest_settings(rest),
    )
    client = app.test_client()
    rules = people.rules_for(app)[0]
    people.add_person(db, {"name": "Mrs Kim", "phones": SENIOR, "language": "ko"}, rules, actor="t")
    add_volunteers(app, db, 1, languages="ko; en")
    request = add_request(db, phone=SENIOR)
    [o] = offer(client, db, request["id"], top=1)
    text(client, "+15550000101", "yes")
    body = signed(client, f"/twilio/visit/{o['id']}", {"CallSid": "CA" + "9" * 32})
    root = ET.fromstring(body.get_data(as_text=True))
    words = said(body.get_data(as_text=True))
    languages = {say.get("language") for say in root.iter("Say")}
    if translated:
        assert "Volunteer 101 님이" in words and languages == {"ko-KR"}
    else:  # half a language is worse than the default one
        assert "Volunteer 101 will come" in words and languages == {"en-US"}
    # Slowly: the senior's pace.
    assert {p.get("rate") for p in root.iter("prosody")} == {"75%"}


def test_two_coordinators_offering_at_once_ask_a_volunteer_once(app, db, scene):
    request, _ = scene
    barrier = threading.Barrier(2)
    statuses = []
    tokens = [bearer(db, "coordinator", f"c{n}") for n in (1, 2)]

    def post(headers):
        own = app.test_client()
        barrier.wait()
        response = own.post(
            f"/api/v1/requests/{request['id']}/offers", headers=headers, json={"volunteer_ids": [1]}
        )
        statuses.append((response.status_code, response.json))

    threads = [threading.Thread(target=post, args=(h,)) for h in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(code for code, _ in statuses) == [201, 400], statuses
    assert any("already asked" in (body.get("error") or "") for _, body in statuses)
    assert states(db, request["id"]) == {1: "offered"}


@pytest.mark.parametrize(("status", "flagged"), [("completed", False), ("no-answer", True)])
def test_a_visit_call_nobody_answers_flags_the_coordinator(
    app, db, client, rest, scene, status, flagged
):
    request, volunteers = scene
    [o] = offer(client, db, request["id"], volunteer_ids=[1])
    text(client, volunteers[0]["phone"], "yes")
    jobs.drain(app)
    [call] = rest.calls
    assert call["status_callback"] == "http://localhost/twilio/outbox-status"
    params = {"CallSid": call["sid"], "CallStatus": status}
    assert signed(client, "/twilio/outbox-status", params).status_code == 204
    assert outbox.find(db, f"visit:{o['id']}")["twilio_status"] == status
    assert queue.get(db, request["id"])["needs_review"] == flagged
    assert dispatch.get(db, o["id"])["senior_answer"] == ("no_answer" if flagged else None)


def test_three_yeses_at_once_against_the_real_server(tmp_path, rest):
    from app import accounts, create_app
    from app.db import migrate
    from tests.server import Server, wait_for

    server = Server(
        tmp_path / "server",
        worker="inprocess",
        settings={"TWILIO_FROM_NUMBER": FROM, "TWILIO_API_BASE_URL": rest.base_url},
    )
    # The registry and the request are made with CareCall's own code, before it serves.
    setup = create_app({"TESTING": True, **server.settings, "WORKER": "none"})
    migrate(server.settings["DATABASE"])
    db = connect(server.settings["DATABASE"])
    with setup.app_context():
        add_senior(setup, db)
        volunteers = add_volunteers(setup, db, 3)
        request = add_request(db, phone=SENIOR)
        token, _ = accounts.create_token(db, "dispatch", "coordinator")
    db.close()
    with server:
        headers = {"Authorization": f"Bearer {token}"}
        made = server.request(
            "POST", f"/api/v1/requests/{request['id']}/offers", json={"top": 3}, headers=headers
        )
        assert made.status_code == 201, made.text
        offers = made.json()["offers"]
        assert wait_for(lambda: len(rest.messages) == 3)  # the server's own worker sent them
        barrier = threading.Barrier(3)
        answers = {}

        def reply(volunteer, code):
            params = {"MessageSid": f"SM{volunteer['id']:032x}", "From": volunteer["phone"]}
            params["Body"] = f"YES {code}"
            barrier.wait()
            response = server.twilio("/twilio/sms", params)
            answers[volunteer["id"]] = (response.status_code, response.text)

        threads = [
            threading.Thread(target=reply, args=(v, o["code"]))
            for v, o in zip(volunteers, offers, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {status for status, _ in answers.values()} == {200}, answers
        won = [v for v, (_, body) in answers.items() if "the job is yours" in body]
        lost = [v for v, (_, body) in answers.items() if "already taken" in body]
        assert len(won) == 1 and len(lost) == 2, answers
        rows = server.query(
            "SELECT volunteer_id, state FROM assignments WHERE request_id = ?", [request["id"]]
        )
        assert sorted(state for _, state in rows) == ["accepted", "withdrawn", "withdrawn"]
        assert dict(rows)[won[0]] == "accepted"
        status = server.query("SELECT status FROM requests WHERE id = ?", [request["id"]])
        assert status == [("assigned",)]
        assert wait_for(lambda: [c["to"] for c in rest.calls] == [SENIOR])
        assert server.errors() == {}


def test_a_volunteer_at_their_limit_cannot_take_one_more(app, db, client, rest):
    add_senior(app, db)
    [volunteer] = add_volunteers(app, db, 1, max_open=1)
    first, second = add_request(db, phone=SENIOR), add_request(db, phone=SENIOR)
    [a] = offer(client, db, first["id"], volunteer_ids=[1])
    [b] = offer(client, db, second["id"], volunteer_ids=[1])
    assert "the job is yours" in text(client, volunteer["phone"], f"yes {a['code']}")
    assert "as many open jobs" in text(client, volunteer["phone"], f"yes {b['code']}")
    assert dispatch.get(db, b["id"])["state"] == "offered"  # still theirs once one is done
    assert queue.get(db, second["id"])["status"] == "new"


def test_the_console_form_sets_how_a_volunteer_gets_offers(app, db, scene):
    coordinator = as_role(app, db, "coordinator")
    path = "/console/volunteers/1"
    page = coordinator.get(path).get_data(as_text=True)
    assert '<option value="sms" selected>' in page
    form = {
        "name": "Volunteer 101",
        "phone": "+15550000101",
        "skills": "groceries",
        "availability": ALWAYS,
        "max_open": "2",
        "offer_channel": "call",
        "csrf_token": csrf_token(coordinator, path),
    }
    assert coordinator.post(path, data=form).status_code == 303
    assert people.get_volunteer(db, 1)["offer_channel"] == "call"
    assert '<option value="call" selected>' in coordinator.get(path).get_data(as_text=True)


@pytest.mark.parametrize(
    ("address", "street"),
    [
        ("4 Elm St", "Elm St"),
        ("12b Rose Lane, Flat 2", "Rose Lane"),
        ("No. 7 High Street", "High Street"),
        ("Elm St", "Elm St"),
        ("", None),
        ("42", None),
    ],
)
def test_an_offer_names_the_street_not_the_door(address, street):
    assert dispatch.street_of(address) == street


@pytest.mark.parametrize(
    ("body", "answer", "requests"),
    [
        ("Please can someone help me with my shopping", "will call you back", 1),
        ("help", "reply YES and the number", 0),
        ("STOP", None, 0),
        ("   ", None, 0),
    ],
)
def test_an_sms_from_someone_not_a_volunteer(app, db, client, body, answer, requests):
    sid = "SM" + "5" * 32
    first = text(client, SENIOR, body, message_sid=sid)
    assert first == answer or (answer is not None and answer in first)
    assert text(client, SENIOR, body, message_sid=sid) == first  # a replay: the same, once
    rows = list(db["requests"].rows)
    assert len(rows) == requests
    if requests:
        assert rows[0]["phone"] == SENIOR and rows[0]["needs_review"] == 1
        assert body in rows[0]["error"]
