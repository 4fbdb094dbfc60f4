"""Twilio's webhooks replayed, reordered, malformed, slow, or met by a full disk."""

import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import jobs, queue
from app.flows import load_flow
from app.telephony import media as twilio_media
from app.telephony import store
from tests.speechgen import telephone
from tests.twilio_fake import Speech

CALLER = "+15551230002"
# Not audio: its transcription fails at once, which still leads to a readback.
NOT_AUDIO = b"RIFF-not-really-audio" + b"\0" * 100
SHOPPING = "Hello, I need someone to help me with my shopping this week."
TECH = "My computer does not work and I need help with my television."


def spoken(text):
    """Return telephone-band speech of text, as a caller's recording."""
    return Speech.from_file(telephone(text)).audio


def snapshot(db):
    """Return every row of the tables a webhook may change on a request's behalf."""
    tables = {
        table: list(db[table].rows_where(order_by="rowid"))
        for table in ("requests", "events", "jobs", "twilio_recordings")
    }
    # Where the call is, too: a replay must not move it back to an earlier step.
    calls = db["calls"].rows_where(order_by="rowid")
    return tables | {"calls": [{**c, "updated_at": None} for c in calls]}


def verbs(body):
    """Return what a TwiML answer does next (gather, record, dial, hang up), with where to."""
    return [
        (element.tag, element.get("action") or (element.text or "").strip())
        for element in ET.fromstring(body).iter()
        if element.tag not in ("Say", "prosody")
    ]


def spoken_text(body):
    """Return everything a TwiML answer says, as one string."""
    return " ".join("".join(say.itertext()) for say in ET.fromstring(body).iter("Say"))


class CallScript:
    """One call's webhooks, posted by hand so each can be sent twice."""

    def __init__(self, twilio, media, app):
        from scripts.simulate_call import Call, sid

        self.twilio, self.media, self.app = twilio, media, app
        self.call = Call(sid("CA"), CALLER)

    def post(self, path, **extra):
        params = {**self.twilio.call_params(self.call), **extra}
        return self.twilio.post(path, params)

    def twilio_flow_poll_limit(self):
        """Return how many times the English flow polls before it stops holding."""
        return load_flow(self.app.config["FLOWS_DIR"], "en").timing.poll_limit

    def recording(self, audio=NOT_AUDIO):
        """Make a recording on the fake media server; return its webhook fields."""
        recording_sid, url = self.media.add(audio, self.call.call_sid)
        return {"RecordingSid": recording_sid, "RecordingUrl": url, "RecordingDuration": "4"}

    def status_of(self, recording):
        """Return the fields of the recording status callback for a recording."""
        return {**recording, "RecordingStatus": "completed", "RecordingChannels": "1"}

    def steps(self, key):
        """Yield (name, path, fields) of a call that records, answers key at the readback, ends."""
        first = self.recording(spoken(SHOPPING))
        yield "voice", "/twilio/voice", {}
        yield "menu/main", "/twilio/menu/main", {"Digits": "1"}
        yield "recorded", "/twilio/recorded/request", first
        yield "recording-status", "/twilio/recording-status/request", self.status_of(first)
        yield "drain", None, None
        yield "wait", "/twilio/wait?n=0", {}
        yield f"menu/readback {key}", "/twilio/menu/readback", {"Digits": key}
        if key == "2":
            second = self.recording(spoken(TECH))
            yield "recorded again", "/twilio/recorded/request", second
            yield "drain", None, None
            yield "wait again", "/twilio/wait?n=0", {}
            yield "menu/readback 1", "/twilio/menu/readback", {"Digits": "1"}
        ended = {"CallStatus": "completed", "CallDuration": "40"}
        yield "call-status", "/twilio/call-status", ended


def dial_steps(script):
    """Yield the steps of a call that asks for a person nobody answers, then hangs up."""
    yield "voice", "/twilio/voice", {}
    yield "menu/main 0", "/twilio/menu/main", {"Digits": "0"}
    yield "dialed", "/twilio/dialed", {"DialCallStatus": "no-answer"}
    yield "no-message", "/twilio/no-message/voicemail", {}
    yield "call-status", "/twilio/call-status", {"CallStatus": "completed", "CallDuration": "9"}


def unconfirmed_steps(script):
    """Yield the steps of a call that hangs up while its message is read back."""
    recording = script.recording(spoken(SHOPPING))
    yield "voice", "/twilio/voice", {}
    yield "menu/main", "/twilio/menu/main", {"Digits": "1"}
    yield "recorded", "/twilio/recorded/request", recording
    yield "drain", None, None
    yield "wait", "/twilio/wait?n=0", {}
    yield "call-status", "/twilio/call-status", {"CallStatus": "completed", "CallDuration": "30"}


def hold_steps(script):
    """Yield the steps of a call whose message is still being understood when holding ends."""
    yield "voice", "/twilio/voice", {}
    yield "menu/main", "/twilio/menu/main", {"Digits": "1"}
    yield "recorded", "/twilio/recorded/request", script.recording()
    limit = script.twilio_flow_poll_limit()
    yield "last wait", f"/twilio/wait?n={limit}", {}
    yield "call-status", "/twilio/call-status", {"CallStatus": "completed", "CallDuration": "90"}


def not_understood_steps(script):
    """Yield the steps of a call whose message cannot be made out."""
    yield "voice", "/twilio/voice", {}
    yield "menu/main", "/twilio/menu/main", {"Digits": "1"}
    yield "recorded", "/twilio/recorded/request", script.recording(NOT_AUDIO)
    yield "drain", None, None
    yield "wait", "/twilio/wait?n=0", {}
    yield "call-status", "/twilio/call-status", {"CallStatus": "completed", "CallDuration": "30"}


def outcome(db):
    """Return (status, confirmed, needs review, stage) of each request, oldest first."""
    rows = db["requests"].rows_where(order_by="id")
    return [(r["status"], bool(r["confirmed_at"]), r["needs_review"], r["stage"]) for r in rows]


# name -> (steps, whether its recordings must be understood, the requests it leaves)
SCRIPTS = {
    "confirm": (lambda script: script.steps("1"), True, [("new", True, 0, "transcribed")]),
    "say it again": (
        lambda script: script.steps("2"),
        True,
        [("cancelled", False, 0, "transcribed"), ("new", True, 0, "transcribed")],
    ),
    "hang up at readback": (unconfirmed_steps, True, [("new", False, 1, "transcribed")]),
    "person": (dial_steps, False, [("new", False, 1, "received")]),
    "held too long": (hold_steps, False, [("new", False, 1, "received")]),
    "not understood": (not_understood_steps, False, [("new", False, 1, "failed")]),
}
CASES = [
    ("confirm", "voice"),
    ("confirm", "menu/main"),
    ("confirm", "recorded"),
    ("confirm", "recording-status"),
    ("confirm", "wait"),
    ("confirm", "menu/readback 1"),
    ("confirm", "call-status"),
    ("say it again", "menu/readback 2"),
    ("say it again", "recorded again"),
    ("say it again", "menu/readback 1"),
    ("hang up at readback", "wait"),
    ("hang up at readback", "call-status"),
    ("person", "menu/main 0"),
    ("person", "dialed"),
    ("person", "no-message"),
    ("person", "call-status"),
    ("held too long", "last wait"),
    ("held too long", "call-status"),
    ("not understood", "wait"),
    ("not understood", "call-status"),
]


def _param(*values, script_name):
    """Mark a case slow when its recordings must really be understood."""
    marks = [pytest.mark.slow] if SCRIPTS[script_name][1] else []
    return pytest.param(*values, marks=marks, id=" ".join(values))


@pytest.mark.parametrize(
    ("script_name", "replayed"), [_param(*case, script_name=case[0]) for case in CASES]
)
def test_a_replayed_webhook_changes_nothing(twilio, media, app, db, script_name, replayed):
    app.config["COORDINATOR_NUMBER"] = "+15550001234"
    app.config.update(COORDINATOR_HOURS=[0, 24], COORDINATOR_DAYS=list(range(7)))
    script = CallScript(twilio, media, app)
    seen = False
    steps, _, leaves = SCRIPTS[script_name]
    for name, path, fields in steps(script):
        if path is None:
            jobs.drain(app)
            continue
        status, body = script.post(path, **fields)
        assert status in (200, 204), (name, body)
        if name == replayed:
            seen = True
            before = snapshot(db)
            again, replay_body = script.post(path, **fields)
            assert again == status
            assert snapshot(db) == before, name
            if status == 200:
                # Twilio's retry is answered in kind: the caller is led the same way.
                assert verbs(replay_body) == verbs(body), name
    assert seen and outcome(db) == leaves


@pytest.mark.parametrize("script_name", [_param(name, script_name=name) for name in SCRIPTS])
def test_every_webhook_replayed_after_the_call_changes_nothing(twilio, media, app, db, script_name):
    app.config["COORDINATOR_NUMBER"] = "+15550001234"
    app.config.update(COORDINATOR_HOURS=[0, 24], COORDINATOR_DAYS=list(range(7)))
    script = CallScript(twilio, media, app)
    run, _, leaves = SCRIPTS[script_name]
    steps = list(run(script))
    for name, path, fields in steps:
        if path is None:
            jobs.drain(app)
        else:
            assert script.post(path, **fields)[0] in (200, 204), name
    assert outcome(db) == leaves
    steps = [step for step in steps if step[1] is not None]
    before = snapshot(db)
    for name, path, fields in steps:
        status, body = script.post(path, **fields)
        assert status in (200, 204), name
        assert snapshot(db) == before, name
        if status == 200:
            assert ET.fromstring(body).tag == "Response"


@pytest.mark.slow
def test_a_replayed_say_it_again_after_confirming_changes_nothing(twilio, media, app, db):
    script = CallScript(twilio, media, app)
    steps = list(script.steps("2"))
    for name, path, fields in steps[:-1]:  # all but the hang-up
        if path is None:
            jobs.drain(app)
        else:
            assert script.post(path, **fields)[0] in (200, 204), name
    first, second = db["requests"].rows_where("phone = ?", [CALLER], order_by="id")
    assert first["status"] == "cancelled" and second["confirmed_at"]
    before = snapshot(db)
    # The signed "2" from the first readback, sent again after the second was confirmed.
    status, body = script.post("/twilio/menu/readback", Digits="2")
    assert status == 200
    assert snapshot(db) == before
    confirmed = queue.get(db, second["id"])
    assert confirmed["status"] == "new" and confirmed["confirmed_at"]
    # Not asked to record again: told the confirmed request's number once more.
    assert "after the tone" not in spoken_text(body)
    assert f"request number is {' '.join(str(second['id']))}" in spoken_text(body)
    assert store.get_call(db, script.call.call_sid)["request_id"] == second["id"]


WEBHOOKS = [
    "/twilio/voice",
    "/twilio/menu/main",
    "/twilio/recorded/request",
    "/twilio/recording-status/request",
    "/twilio/no-message/request",
    "/twilio/wait",
    "/twilio/dialed",
    "/twilio/call-status",
]


@pytest.mark.parametrize("path", WEBHOOKS)
@pytest.mark.parametrize("call_sid", [None, "", "   "])
def test_a_webhook_without_a_call_sid_is_refused(twilio, media, db, path, call_sid):
    recording_sid, url = media.add(NOT_AUDIO)
    params = {
        "AccountSid": twilio.account_sid,
        "From": CALLER,
        "CallStatus": "completed",
        "Digits": "1",
        "RecordingSid": recording_sid,
        "RecordingUrl": url,
        "RecordingStatus": "completed",
        "RecordingDuration": "4",
    }
    if call_sid is not None:
        params["CallSid"] = call_sid
    status, _ = twilio.post(path, params)
    assert status == 400
    assert db["calls"].count == 0 and db["requests"].count == 0
    assert db["twilio_recordings"].count == 0


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({"RecordingDuration": "abc"}, "stored"),
        ({"RecordingDuration": "nan"}, "stored"),
        ({"RecordingDuration": "1e999"}, "stored"),
        ({"RecordingUrl": "http://[::1"}, "refused"),
        ({"RecordingUrl": "http://127.0.0.1:notaport/x"}, "refused"),
        ({"RecordingUrl": "https://evil.example/Recordings/RE1"}, "refused"),
        ({"RecordingUrl": "ftp://127.0.0.1/Recordings/RE1"}, "refused"),
    ],
)
@pytest.mark.parametrize("path", ["/twilio/recorded/request", "/twilio/recording-status/request"])
def test_odd_recording_fields_are_answered_never_a_500(twilio, media, db, path, fields, state):
    script = CallScript(twilio, media, None)
    script.post("/twilio/voice")
    script.post("/twilio/menu/main", Digits="1")
    recording = {**script.status_of(script.recording()), **fields}
    status, body = script.post(path, **recording)
    assert status == (200 if "recorded" in path else 204)
    row = db["twilio_recordings"].get(recording["RecordingSid"])
    assert row["state"] == state
    assert row["duration_s"] is None or row["duration_s"] == 4
    [request] = db["requests"].rows
    if state == "refused":
        # A person calls back, and the caller is told so with the danger advice: no hold music.
        assert request["error"].startswith("call back: recording refused")
        if status == 200:
            said = spoken_text(body)
            assert "A coordinator will call you back" in said and "dial 9 1 1" in said
            assert ET.fromstring(body).find("Hangup") is not None


class Trickle:
    """A recording host that sends 40 bytes over 20 s, in its headers or in its body."""

    def __init__(self, where):
        self.where = where
        self.stop = threading.Event()
        trickle = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  http.server's name
                trickle.serve(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve(self, handler):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: audio/x-wav\r\nContent-Length: 40\r\n\r\n"
        if self.where == "body":
            handler.wfile.write(head)
            handler.wfile.flush()
        data = head if self.where == "headers" else b"R" * 40
        for i in range(0, len(data), 2):
            if self.stop.wait(20 / (len(data) / 2)):
                return
            try:
                handler.wfile.write(data[i : i + 2])
                handler.wfile.flush()
            except OSError:
                return  # the client gave up, as it should

    def url(self, recording_sid):
        port = self.server.server_port
        return f"http://127.0.0.1:{port}/2010-04-01/Accounts/AC1/Recordings/{recording_sid}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_trickling_recording_host_cannot_hold_the_webhook(twilio, media, app, db, where):
    app.config["TWILIO_DOWNLOAD_TIMEOUT"] = 1.0
    script = CallScript(twilio, media, app)
    script.post("/twilio/voice")
    script.post("/twilio/menu/main", Digits="1")
    with Trickle(where) as host:
        recording = script.recording()
        recording["RecordingUrl"] = host.url(recording["RecordingSid"])
        started = time.monotonic()
        status, body = script.post("/twilio/recorded/request", **recording)
        took = time.monotonic() - started
    assert status == 200 and took < 3.0, took  # Twilio waits 15 s; the deadline is 1 s
    assert "Please wait a moment" in spoken_text(body)  # held while a job fetches it
    row = db["twilio_recordings"].get(recording["RecordingSid"])
    assert row["state"] == "pending" and "longer than 1.0 s" in row["error"]
    [job] = db["jobs"].rows_where("kind = ?", [twilio_media.FETCH])
    assert job["state"] == "queued"


@pytest.fixture
def tiny_disk(tmp_path):
    """Mount a 64 KiB tmpfs as the data directory; yield it and a function that grows it."""
    where = tmp_path / "data"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=16m", str(where)], check=True)

    try:
        yield where, grow
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize(
    ("path", "heard", "verb"),
    [
        # Asked for a voicemail: Twilio keeps the first message, and we fetch it later.
        ("/twilio/recorded/request", "leave your name and your message", "Record"),
        # After a voicemail, the apology promises a call back, with the danger advice.
        ("/twilio/recorded/voicemail", "dial 9 1 1", "Hangup"),
        ("/twilio/recording-status/request", None, None),  # noted and queued: 204, no retry
    ],
)
def test_a_full_disk_keeps_the_phone_recording_pending_until_reconcile(
    twilio, media, app, db, tiny_disk, path, heard, verb
):
    data_dir, grow = tiny_disk
    app.config.update(DATA_DIR=str(data_dir), TWILIO_FETCH_ATTEMPTS=2)
    audio = NOT_AUDIO + b"\0" * 200_000  # larger than the whole disk
    script = CallScript(twilio, media, app)
    script.post("/twilio/voice")
    script.post("/twilio/menu/main", Digits="1")
    recording = script.status_of(script.recording(audio))
    status, body = script.post(path, **recording)
    if heard is None:
        assert status == 204
    else:
        assert status == 200
        assert "Sorry, something went wrong" in spoken_text(body)
        assert heard in spoken_text(body)
        assert ET.fromstring(body).find(verb) is not None  # never dead air
    row = db["twilio_recordings"].get(recording["RecordingSid"])
    assert row["state"] == "pending" and row["error"].startswith("disk full")
    [job] = db["jobs"].rows_where("kind = ?", [twilio_media.FETCH])
    assert job["state"] == "queued"
    # Its own retries run out while the disk stays full: a person is asked to call back,
    # and the recording is still pending.
    jobs.drain(app)
    assert db["jobs"].get(job["id"])["state"] == "dead"
    assert db["twilio_recordings"].get(recording["RecordingSid"])["state"] == "pending"
    [callback] = db["requests"].rows
    assert callback["source_key"] == "callback:" + recording["RecordingSid"]
    assert callback["error"].startswith("call back: recording not stored yet, disk full")
    assert callback["phone"] == CALLER and callback["urgency"] == "high"
    # The caller hangs up: the message is pending, so it is not a missed call as well.
    script.post("/twilio/call-status", CallStatus="completed", CallDuration="20")
    assert db["requests"].count == 1
    # Room again: the nightly reconcile finds it, though it was noted long ago.
    grow()
    with app.app_context():
        from app.db import get_db

        jobs.enqueue(get_db(), twilio_media.RECONCILE, {"days": 2})
    jobs.drain(app)
    row = db["twilio_recordings"].get(recording["RecordingSid"])
    assert row["state"] == "stored"
    request = queue.get(db, row["request_id"])
    assert request["source_key"] == recording["RecordingSid"] and request["phone"] == CALLER
    assert Path(data_dir, request["audio_path"]).read_bytes() == audio


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """Return (app, twilio, media) shared by every fuzzed webhook, so state builds up."""
    from app import create_app
    from app.db import migrate
    from tests.twilio_fake import media_server, twilio_for

    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-0123456789",
            "DATABASE": str(tmp / "carecall.db"),
            "DATA_DIR": str(tmp / "data"),
            "OUTBOX_DIR": str(tmp / "outbox"),
            "WORKER": "none",
            "TWILIO_DOWNLOAD_TIMEOUT": 1.0,
        }
    )
    migrate(app.config["DATABASE"])
    with media_server() as media:
        yield app, twilio_for(app, media), media


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
FIELDS = {
    "CallSid": st.one_of(st.sampled_from(["CA" + "1" * 32, "CA" + "2" * 32, ""]), TEXT),
    "From": st.one_of(st.just(CALLER), TEXT),
    "Digits": st.one_of(st.sampled_from(["1", "2", "0", "*", "9", "#", "11", ""]), TEXT),
    "RecordingSid": st.one_of(st.sampled_from(["RE" + "3" * 32, ""]), TEXT),
    "RecordingUrl": st.one_of(
        st.sampled_from(["http://[::1", "https://api.twilio.com/x", "http://127.0.0.1:1/x"]), TEXT
    ),
    "RecordingDuration": st.one_of(st.sampled_from(["0", "4", "abc", "-1", "nan"]), TEXT),
    "RecordingStatus": st.one_of(st.sampled_from(["completed", "failed"]), TEXT),
    "CallStatus": st.one_of(st.sampled_from(["in-progress", "completed", "busy"]), TEXT),
    "CallDuration": st.one_of(st.sampled_from(["3", "x", "1e999"]), TEXT),
    "DialCallStatus": st.one_of(st.sampled_from(["completed", "no-answer"]), TEXT),
}
PATHS = st.one_of(
    st.sampled_from(
        [
            "/twilio/voice",
            "/twilio/menu/main",
            "/twilio/menu/readback",
            "/twilio/menu/after_status",
            "/twilio/menu/emergency",
            "/twilio/recorded/request",
            "/twilio/recorded/voicemail",
            "/twilio/recording-status/request",
            "/twilio/no-message/request",
            "/twilio/no-message/voicemail",
            "/twilio/wait?n=3",
            "/twilio/wait?n=x",
            "/twilio/dialed",
            "/twilio/call-status",
        ]
    ),
    st.from_regex(r"\A/twilio/(menu|recorded|no-message|recording-status)/[a-z_]{0,12}\Z"),
)


@settings(max_examples=1000, deadline=None)
@given(path=PATHS, form=st.fixed_dictionaries({}, optional=FIELDS))
def test_no_signed_webhook_answers_a_5xx(fuzzed, path, form):
    app, twilio, _ = fuzzed
    status, body = twilio.post(path, form)
    assert status < 500, (path, form, body[:300])


@pytest.mark.parametrize(
    ("caller", "kept"),
    [
        ("+15551234567", True),
        ("client:alice", True),
        ("anonymous", True),
        ("+15552220003" * 1000, False),
        ("<img src=x onerror=alert(1)>", False),
        ("+1555\x00123", False),
    ],
)
def test_an_odd_caller_id_is_dropped_but_the_call_is_answered(twilio, media, app, db, caller, kept):
    """A senior is never refused for a strange caller ID, and it is never stored as a phone."""
    script = CallScript(twilio, media, app)
    status, body = script.post("/twilio/voice", From=caller)
    assert status == 200 and ET.fromstring(body).find("Gather") is not None
    [call] = db["calls"].rows
    assert call["phone"] == (caller if kept else None)
