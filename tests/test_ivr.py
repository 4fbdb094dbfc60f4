"""Whole phone calls through Twilio's webhook protocol, driven by the call simulator."""

import shutil
import xml.etree.ElementTree as ET

import pytest

from app import jobs, queue
from app.db import connect
from app.pipeline import categories_for
from app.telephony import store
from tests.speechgen import telephone
from tests.twilio_fake import (
    HANGUP,
    SILENCE,
    Speech,
    twilio_for,
)

CALLER = "+15551230001"
SHOPPING = (
    "Hello, I need someone to help me with my shopping this week because I cannot carry the bags."
)
TECH = "My computer does not work and I need help with my television."
EMERGENCY = "Help, my husband has fallen down and he is not breathing."


def spoken(text):
    """Render text as telephone-band speech, as a caller's recording."""
    return Speech.from_file(telephone(text))


def requests_of(db, phone=CALLER):
    return list(db["requests"].rows_where("phone = ?", [phone], order_by="id"))


def said(call, words):
    """Tell whether CareCall said something containing words."""
    return any(words in line for line in call.heard())


def test_greeting_is_a_slow_one_key_menu(twilio, app):
    status, body = twilio.post("/twilio/voice", twilio.call_params(_call()))
    root = ET.fromstring(body)
    gather = root.find("Gather")
    assert status == 200 and root.tag == "Response"
    assert gather.get("numDigits") == "1"
    assert gather.get("actionOnEmptyResult") == "true"
    assert int(gather.get("timeout")) >= 5
    assert gather.get("action") == "/twilio/menu/main"
    says = gather.findall("Say")
    assert says[0].get("voice") == "alice" and says[0].get("language") == "en-US"
    assert says[0].find("prosody").get("rate") == "90%"
    assert "To ask for help, press 1" in "".join(says[-1].itertext())
    spoken = " ".join("".join(say.itertext()) for say in says)
    assert "If you are in danger or hurt, hang up and dial 9 1 1" in spoken
    # Silence falls through to the same action: nobody is dropped if actionOnEmptyResult fails.
    assert root.find("Redirect").text == "/twilio/menu/main"


def _call():
    from scripts.simulate_call import Call, sid

    return Call(sid("CA"), CALLER)


@pytest.mark.slow
def test_a_request_is_recorded_read_back_confirmed_and_queued(twilio, db, media):
    call = twilio.call(CALLER, ["1", spoken(SHOPPING), "1"])
    print(call.transcript())
    [request] = requests_of(db)
    assert request["channel"] == "phone" and request["category"] == "groceries"
    assert request["confirmed_at"] and request["source_key"] == call.recordings[0]
    assert said(call, "I heard:") and said(call, categories_for("en").readback("groceries"))
    number = " ".join(str(request["id"]))
    confirmation = next(line for line in call.heard() if "request number is" in line)
    assert confirmation.count(f"number is {number}") == 2
    assert call.ended == "carecall hung up"
    # The recording was fetched with the account's credentials, once, despite two callbacks.
    assert len([p for p in media.requests if call.recordings[0] in p]) == 1
    assert store.get_call(db, call.call_sid)["outcome"] == "request"


def test_record_prompt_is_patient(twilio, db):
    call_ = _call()
    twilio.post("/twilio/voice", twilio.call_params(call_))
    status, body = twilio.post("/twilio/menu/main", {**twilio.call_params(call_), "Digits": "1"})
    root = ET.fromstring(body)
    record = root.find("Record")
    assert "after the tone" in "".join(root.find("Say").itertext())
    assert int(record.get("timeout")) >= 5
    assert record.get("maxLength") == "120"
    assert record.get("finishOnKey") == "#" and record.get("playBeep") == "true"
    assert record.get("recordingStatusCallback") == "/twilio/recording-status/request"
    assert record.get("action") == "/twilio/recorded/request"
    assert root.find("Redirect").text == "/twilio/no-message/request"


@pytest.mark.slow
def test_two_says_it_again_and_the_first_request_is_withdrawn(twilio, db):
    call = twilio.call(CALLER, ["1", spoken(SHOPPING), "2", spoken(TECH), "1"])
    first, second = requests_of(db)
    assert first["status"] == "cancelled" and not first["confirmed_at"]
    assert second["confirmed_at"] and second["category"] == "tech_help"
    assert call.heard().count(next(x for x in call.heard() if "after the tone" in x)) == 2


def test_star_repeats_the_menu_more_slowly_and_remembers_the_pace(twilio, db):
    call = twilio.call(CALLER, ["*", HANGUP])
    menus = [line for line in call.heard() if "To ask for help, press 1" in line]
    assert len(menus) == 2
    assert store.caller(db, CALLER)["pace"] == "slow"
    # The next call is slow from its first word.
    status, body = twilio.post("/twilio/voice", twilio.call_params(_call()))
    rate = ET.fromstring(body).find("Gather/Say/prosody").get("rate")
    assert rate == "75%"


def test_silence_three_times_falls_back_to_voicemail_never_a_hangup(twilio, db):
    call = twilio.call(CALLER, [SILENCE, SILENCE, SILENCE, HANGUP])
    heard = call.heard()
    assert sum("I did not hear a key press" in line for line in heard) == 2
    assert "leave your name and your message" in heard[-1]
    assert call.ended == "caller hung up"  # CareCall never hung up on them
    # They hung up without a message: a person calls them back.
    [request] = requests_of(db)
    assert request["error"] == "missed call — call back" and request["needs_review"] == 1


@pytest.mark.slow
def test_voicemail_after_silence_becomes_a_callback_request(twilio, db, app):
    call = twilio.call(CALLER, [SILENCE, SILENCE, SILENCE, spoken(TECH)])
    [request] = requests_of(db)
    assert request["channel"] == "voicemail" and request["source_key"] == call.recordings[0]
    assert said(call, "We have your message") and call.ended == "carecall hung up"
    jobs.drain(app)
    assert queue.get(db, request["id"])["category"] == "tech_help"


@pytest.mark.slow
def test_an_emergency_tells_the_caller_to_dial_911_and_alerts(twilio, db, app):
    app.config["DUTY_COORDINATOR_NUMBER"] = "+15550009999"
    call = twilio.call(CALLER, ["1", spoken(EMERGENCY), "0", "2"])
    print(call.transcript())
    [request] = requests_of(db)
    assert request["urgency"] == "critical" and request["emergency"] == 1
    assert queue.waiting(db)[0]["id"] == request["id"]
    # Raised once, by the pipeline that understood it; the call only tells the caller.
    assert [e["action"] for e in queue.events(db, request["id"])].count("alert") == 1
    assert said(call, "hang up now and dial 9 1 1")
    assert ("twilio", "dials +15550009999: no-answer") in call.lines
    # Nobody on duty answered: the advice once more, then (2) goodbye, not a voicemail.
    assert call.heard()[-5] == "Nobody can answer the phone right now."
    assert call.heard()[-4].startswith("This sounds like an emergency. Please hang up now")
    assert call.heard()[-2:] == [
        "If you are in danger or hurt, hang up and dial 9 1 1.",
        "Goodbye.",
    ]
    assert call.ended == "carecall hung up"


def test_status_by_phone_reads_the_latest_request_in_plain_words(twilio, db):
    made, _ = queue.create(db, channel="phone", phone=CALLER, category="groceries")
    call = twilio.call(CALLER, ["2", "2"])
    number = " ".join(str(made["id"]))
    assert said(call, f"Your request for shopping and errands, number {number}")
    assert said(call, "is waiting for a coordinator")
    assert call.heard()[-1] == "Thank you for calling CareCall. Goodbye."
    assert len(requests_of(db)) == 1  # hearing a status is not a missed call


def test_status_by_phone_without_a_request(twilio, db):
    call = twilio.call("+15550000404", ["2", "2"])
    assert said(call, "We do not have a request from this phone number yet.")


@pytest.mark.slow
def test_a_twilio_retry_of_the_same_recording_makes_one_request(twilio, db, media):
    call = twilio.call(CALLER, ["1", spoken(SHOPPING), "1"])
    recording_sid = call.recordings[0]
    _, url = media.add(b"")  # only to learn the URL shape
    url = url.rsplit("/", 1)[0] + "/" + recording_sid
    for _ in range(2):
        status, _ = twilio.recording_status(
            call, "/twilio/recording-status/request", recording_sid, url, 5
        )
        assert status == 204
    assert len(requests_of(db)) == 1


def test_a_forged_signature_is_refused_and_nothing_is_stored(twilio, db, media):
    call_ = _call()
    recording_sid, url = media.add(b"RIFF....")
    params = {
        **twilio.call_params(call_),
        "RecordingSid": recording_sid,
        "RecordingUrl": url,
        "RecordingStatus": "completed",
    }
    for path in ("/twilio/voice", "/twilio/recording-status/request", "/twilio/call-status"):
        status, _ = twilio.post(path, params, signature="Zm9yZ2VkIHNpZ25hdHVyZQ==")
        assert status == 403
    # Signed for another URL: also refused.
    status, _ = twilio.post(
        "/twilio/voice", params, signature=twilio.sign("http://localhost/twilio/other", params)
    )
    assert status == 403
    assert db["requests"].count == 0 and db["calls"].count == 0
    assert db["twilio_recordings"].count == 0 and media.requests == []


def test_no_auth_token_refuses_every_webhook(twilio, app, db):
    app.config["TWILIO_AUTH_TOKEN"] = None
    status, _ = twilio.post("/twilio/voice", twilio.call_params(_call()))
    assert status == 403 and db["calls"].count == 0


@pytest.mark.slow
def test_a_download_that_fails_twice_then_succeeds(twilio, db, media):
    media.fail_next(2)
    call = twilio.call(CALLER, ["1", spoken(SHOPPING), "1"])
    [request] = requests_of(db)
    assert request["confirmed_at"] and request["category"] == "groceries"
    row = db["twilio_recordings"].get(call.recordings[0])
    assert row["state"] == "stored" and row["attempts"] == 2
    assert said(call, "I heard:")


def test_a_download_that_never_succeeds_becomes_a_callback(twilio, db, media, app):
    app.config["TWILIO_FETCH_ATTEMPTS"] = 3
    media.fail_next(100)
    call = twilio.call(CALLER, ["1", Speech(b"RIFF-not-needed", 4.0), HANGUP])
    row = db["twilio_recordings"].get(call.recordings[0])
    assert row["state"] == "dead" and row["attempts"] == 3
    [request] = requests_of(db)
    assert request["source_key"] == call.recordings[0]
    assert request["error"].startswith("call back: recording could not be downloaded")


def test_recordings_only_come_from_allowed_hosts(twilio, db, app):
    app.config["TWILIO_RECORDING_HOSTS"] = ["api.twilio.com"]
    call = twilio.call(CALLER, ["1", Speech(b"RIFF", 4.0), HANGUP])
    row = db["twilio_recordings"].get(call.recordings[0])
    assert row["state"] == "refused" and "not in TWILIO_RECORDING_HOSTS" in row["error"]
    assert jobs.drain(app) == 0  # no retry of a refused host


def test_a_caller_is_greeted_in_their_remembered_language(twilio, app, db, tmp_path):
    flows = tmp_path / "flows"
    flows.mkdir()
    shutil.copy(app.config["FLOWS_DIR"] + "/en.toml", flows / "en.toml")
    text = (flows / "en.toml").read_text()
    text = text.replace('language = "en"', 'language = "xx"', 1)
    text = text.replace('say_language = "en-US"', 'say_language = "es-MX"', 1)
    text = text.replace('select_key = "9"', 'select_key = "8"', 1)
    (flows / "xx.toml").write_text(text)
    app.config["FLOWS_DIR"] = str(flows)
    call = twilio.call(CALLER, ["8", HANGUP])
    assert store.caller(db, CALLER)["language"] == "xx"
    status, body = twilio.post("/twilio/voice", twilio.call_params(_call()))
    say = ET.fromstring(body).find("Gather/Say")
    assert say.get("language") == "es-MX"
    assert "welcome back" in "".join(say.itertext())
    assert call.ended == "caller hung up"


def test_a_short_abandoned_call_is_a_missed_call_once(twilio, db):
    call = twilio.call(CALLER, [HANGUP])
    params = {**twilio.call_params(call, "completed"), "CallDuration": "3"}
    assert twilio.post("/twilio/call-status", params)[0] == 204  # Twilio retries
    [request] = requests_of(db)
    assert request["error"] == "missed call — call back"
    assert request["category"] == "other" and request["needs_review"] == 1
    assert request["channel"] == "phone" and request["phone"] == CALLER


def test_person_without_a_coordinator_leaves_a_voicemail(twilio, db):
    call = twilio.call(CALLER, ["0", HANGUP])
    assert said(call, "Nobody can answer the phone right now.")
    assert "leave your name" in call.heard()[-1]


def test_person_within_hours_is_dialled(twilio, app):
    app.config.update(
        COORDINATOR_NUMBER="+15550001234",
        COORDINATOR_HOURS=[0, 24],
        COORDINATOR_DAYS=list(range(7)),
    )
    twilio.dial_status = "completed"
    call = twilio.call(CALLER, ["0"])
    assert ("twilio", "dials +15550001234: completed") in call.lines


@pytest.mark.parametrize(
    ("models", "message", "error"),
    [
        # The recording is not audio at all: nothing can be heard in it.
        (
            {"whisper-tiny-en": "installed", "vosk-ko": "installed"},
            lambda: Speech(b"RIFF-but-no-sound-at-all" * 40, 4.0),
            "audio",
        ),
        # Real words, but the English model is broken: no retry would help.
        (
            {"whisper-tiny-en": "truncated", "vosk-ko": "installed"},
            lambda: spoken(SHOPPING),
            "speech model whisper-tiny-en unavailable",
        ),
    ],
)
def test_a_message_that_cannot_be_understood_gets_an_apology_and_a_callback(
    make_app, models_dir, media, models, message, error
):
    """The caller is told at once and kindly; the request waits, urgent, for a person."""
    app = make_app(MODELS_DIR=models_dir(models))
    twilio = twilio_for(app, media)
    call = twilio.call(CALLER, ["1", message()])
    print(call.transcript())
    assert said(call, "I am sorry, I could not make out your message")
    *_, apology, advice, goodbye = call.heard()
    assert "a coordinator will listen to it and call you back" in apology
    # Nobody knows what the message said: it may be someone hurt.
    assert advice == "If you are in danger or hurt, hang up and dial 9 1 1."
    assert goodbye == "Goodbye."
    assert not said(call, "Press 1 if that is right")  # no readback of nothing
    assert not said(call, "I am still listening")  # told at once, not after the poll limit
    assert call.ended == "carecall hung up"
    db = connect(app.config["DATABASE"])
    [request] = requests_of(db)
    assert request["stage"] == "failed" and error in request["error"].lower()
    assert request["urgency"] == "high" and request["needs_review"] == 1
    db.close()


RIDE = {"category": "transport"}
MISSED = {"category": "other", "source_key": "callback:CA0001", "needs_review": 1}


@pytest.mark.parametrize(
    ("made", "newest", "heard", "unheard"),
    [
        # A missed call after the real request is our note to ring back, not their request.
        ([RIDE, MISSED], 0, ["Your request for a ride somewhere, number", "made today"], []),
        ([RIDE, {"category": "groceries", "status": "cancelled"}], 0, ["a ride somewhere"], []),
        ([RIDE, {"category": "groceries", "merged_into": 1}], 0, ["a ride somewhere"], []),
        (
            [RIDE, {"category": "groceries"}, MISSED],
            1,
            ["You have 2 requests still open with us", "shopping and errands, number"],
            [],
        ),
        ([{"category": "groceries", "status": "done"}, RIDE], 1, ["a ride somewhere"], ["2 req"]),
        ([RIDE, {"category": "groceries", "status": "done"}], 0, ["a ride somewhere"], []),
        ([MISSED], None, ["We do not have a request from this phone number yet."], []),
    ],
)
def test_status_reads_the_callers_own_newest_requests(twilio, db, made, newest, heard, unheard):
    ids = []
    for fields in made:
        fields = dict(fields)
        status, merged = fields.pop("status", None), fields.pop("merged_into", None)
        row, _ = queue.create(db, channel="phone", phone=CALLER, **fields)
        if status or merged:
            db["requests"].update(row["id"], {"status": status or "new", "merged_into": merged})
        ids.append(row["id"])
    call = twilio.call(CALLER, ["2", "2"])
    print(call.transcript())
    if newest is not None:
        heard = [*heard, f"number {' '.join(str(ids[newest]))},"]
    for words in heard:
        assert said(call, words), words
    for words in [*unheard, "something else", "made on today"]:
        assert not said(call, words), words


def test_an_unexpected_key_asks_again_gently(twilio):
    call = twilio.call(CALLER, ["5", HANGUP])
    assert not said(call, "does nothing")
    lines = call.heard()
    gentle = lines.index("That key is not one of the choices. Here they are again.")
    assert lines[gentle + 1].startswith("To ask for help, press 1")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("duty", "dial", "answers", "dialled", "heard", "last"),
    [
        # 1 is yes everywhere: here it connects to the duty coordinator, as 0 does.
        ("+15550009999", "completed", ["1"], True, [], "Thank you for calling CareCall"),
        ("+15550009999", "completed", ["0"], True, [], "Thank you for calling CareCall"),
        # Nobody answers: the advice once more, then a message (1) or goodbye (2).
        ("+15550009999", "no-answer", ["1", "2"], True, ["Nobody can answer"], "Goodbye."),
        ("+15550009999", "no-answer", ["0", "1"], True, [], "leave your name"),
        # Nobody on duty: the advice once, then a message or goodbye; no dead "press 0".
        (None, None, ["2"], False, ["To leave a message for a coordinator, press 1"], "Goodbye."),
        (None, None, ["1"], False, [], "leave your name"),
        (None, None, ["7", "2"], False, ["not one of the choices"], "Goodbye."),
    ],
)
def test_an_emergency_says_only_what_is_true_once_then_offers_a_way_on(
    twilio, db, app, duty, dial, answers, dialled, heard, last
):
    app.config["DUTY_COORDINATOR_NUMBER"] = duty
    if dial:
        twilio.dial_status = dial
    call = twilio.call(CALLER, ["1", spoken(EMERGENCY), *answers, HANGUP])
    print(call.transcript())
    [request] = requests_of(db)
    assert request["emergency"] == 1 and request["urgency"] == "critical"
    lines = call.heard()
    assert said(call, "Your message is marked urgent for our coordinators")
    assert not said(call, "We have told our coordinators")
    assert not said(call, "does nothing")
    # Never the same sentence twice in a row: a caller who wants it again presses star.
    assert all(a != b for a, b in zip(lines, lines[1:], strict=False))
    assert any(line.startswith("This sounds like an emergency") for line in lines)
    assert (("twilio", f"dials {duty}: {dial}") in call.lines) == dialled
    for words in heard:
        assert said(call, words), words
    assert last in lines[-1]
    if last == "Goodbye.":
        assert "hang up and dial 9 1 1" in lines[-2] and call.ended == "carecall hung up"


DOCTOR = "I need to see a doctor about the pain in my knee."


@pytest.mark.slow
@pytest.mark.parametrize(
    ("message", "config", "advised"),
    [
        # Clear and ordinary: the goodbye is the request number and the callback promise.
        (SHOPPING, {}, False),
        # Health: a misheard "I fell and my chest hurts" lands here, so the advice is said.
        (DOCTOR, {"REVIEW_CONFIDENCE": 0.0}, True),
        # Unsure of the words: the caller may have said more than we heard.
        (SHOPPING, {"REVIEW_CONFIDENCE": 0.99}, True),
    ],
)
def test_a_goodbye_carries_the_danger_advice_unless_the_request_is_clear(
    twilio, db, app, message, config, advised
):
    app.config.update(config)
    call = twilio.call(CALLER, ["1", spoken(message), "1"])
    print(call.transcript())
    [request] = requests_of(db)
    assert request["confirmed_at"] and not request["emergency"]
    assert (request["category"] == "medical") == (message == DOCTOR)
    lines = call.heard()
    assert lines[-1] == "A coordinator will call you back. Goodbye."
    advice = "If you are in danger or hurt, hang up and dial 9 1 1."
    assert (lines[-2] == advice) == advised
    assert sum(advice in line for line in lines) == 1 + advised  # the greeting says it too


@pytest.mark.parametrize(
    "answers",
    [
        [SILENCE, SILENCE, SILENCE, SILENCE],  # asked for a voicemail; the caller says nothing
        [SILENCE, SILENCE, SILENCE, Speech(b"RIFF-not-needed", 4.0)],  # a message, not heard yet
    ],
)
def test_a_voicemail_goodbye_carries_the_danger_advice(twilio, answers):
    call = twilio.call(CALLER, answers)
    print(call.transcript())
    *_, thanks, advice, goodbye = call.heard()
    assert "coordinator will call you back" in thanks
    assert advice == "If you are in danger or hurt, hang up and dial 9 1 1."
    assert goodbye == "Goodbye." and call.ended == "carecall hung up"
