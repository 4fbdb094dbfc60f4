"""A phone recording on its way in: old recordings replayed, late ones, bad SIDs, no storage."""

import os
import sqlite3
import threading
import xml.etree.ElementTree as ET

import pytest

from app import jobs, queue
from app.db import connect, get_db
from app.pipeline import categories_for
from app.telephony import media as twilio_media
from app.telephony import store
from tests.test_ivr import EMERGENCY
from tests.test_storage import read_only, small_disk
from tests.test_webhooks import NOT_AUDIO, SHOPPING, CallScript, snapshot, spoken, spoken_text
from tests.twilio_fake import twilio_for

# The second recording: a fall. (The report's "Help, I fell down, my chest hurts" rendered by
# espeak-ng is heard by Whisper tiny as "I failed... my test hurts", which is no emergency.)
FALL = EMERGENCY


def requests_of(db):
    """Return every request, oldest first."""
    return list(db["requests"].rows_where(order_by="id"))


def actions(db, request_id):
    """Return the actions of a request's audit events, oldest first."""
    return [event["action"] for event in queue.events(db, request_id)]


# --- 1: an old recording replayed while the caller says it again -------------------------


@pytest.mark.slow
def test_an_old_recording_replayed_while_the_caller_says_it_again_moves_nothing(
    twilio, media, app, db
):
    script = CallScript(twilio, media, app)
    sid = script.call.call_sid
    script.post("/twilio/voice")
    script.post("/twilio/menu/main", Digits="1")
    first = script.recording(spoken(SHOPPING))
    script.post("/twilio/recorded/request", **first)
    jobs.drain(app)
    _, body = script.post("/twilio/wait?n=0")
    # The first message, read back.
    assert categories_for("en").readback("groceries") in spoken_text(body)
    _, body = script.post("/twilio/menu/readback", Digits="2")  # "say it again"
    assert ET.fromstring(body).find("Record") is not None
    # The odd moment: Twilio delivers the first recording's action again.
    before = snapshot(db)
    status, body = script.post("/twilio/recorded/request", **first)
    assert status == 200 and ET.fromstring(body).find("Record") is not None
    assert snapshot(db) == before
    assert store.get_call(db, sid)["menu"] == "record"
    # The real new recording arrives, and its status callback.
    second = script.recording(spoken(FALL))
    _, body = script.post("/twilio/recorded/request", **second)
    assert "Please wait a moment while I listen" in spoken_text(body)
    assert script.post("/twilio/recording-status/request", **script.status_of(second))[0] == 204
    jobs.drain(app)
    _, body = script.post("/twilio/wait?n=0")
    said = spoken_text(body)
    # The new message is the one read: an emergency, so the advice, not the old shopping.
    assert "hang up now and dial 9 1 1" in said and "shopping" not in said
    # With nobody on duty the caller may still leave a message (1) or say goodbye (2).
    assert ET.fromstring(body).find("Gather") is not None
    script.post("/twilio/call-status", CallStatus="completed", CallDuration="120")
    withdrawn, fall = requests_of(db)
    assert withdrawn["source_key"] == first["RecordingSid"] and withdrawn["status"] == "cancelled"
    assert fall["source_key"] == second["RecordingSid"]
    assert (fall["emergency"], fall["urgency"]) == (1, "critical"), fall["transcript"]
    assert fall["confirmed_at"] and fall["status"] == "new"
    call = store.get_call(db, sid)
    assert (call["request_id"], call["recording_sid"]) == (fall["id"], second["RecordingSid"])


# --- 20b: the call ends on the emergency advice, and stays ended --------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/twilio/menu/readback", {"Digits": "2"}),
        ("/twilio/wait?n=0", {}),
        ("/twilio/wait?n=1", {}),
        ("/twilio/menu/main", {"Digits": "1"}),
    ],
)
def test_after_the_emergency_advice_a_late_webhook_repeats_it(twilio, media, app, db, path, fields):
    script = CallScript(twilio, media, app)
    script.post("/twilio/voice")
    script.post("/twilio/menu/main", Digits="1")
    script.post("/twilio/recorded/request", **script.recording(spoken(FALL)))
    jobs.drain(app)
    _, body = script.post("/twilio/wait?n=0")
    assert "hang up now and dial 9 1 1" in spoken_text(body)
    # Nobody is on duty: the caller chooses goodbye (2), and the call ends on the advice.
    _, body = script.post("/twilio/menu/emergency_message", Digits="2")
    assert "dial 9 1 1" in spoken_text(body) and ET.fromstring(body).find("Hangup") is not None
    assert store.get_call(db, script.call.call_sid)["menu"] == "done"
    before = snapshot(db)
    status, body = script.post(path, **fields)
    assert status == 200 and snapshot(db) == before
    said = spoken_text(body)
    assert "dial 9 1 1" in said and "wait" not in said
    assert ET.fromstring(body).find("Hangup") is not None


# --- 2: a recording stored after the caller stopped listening ------------------------------


def _holding_ends(script):
    limit = script.twilio_flow_poll_limit()
    _, body = script.post(f"/twilio/wait?n={limit}")
    assert "We have your message" in spoken_text(body)


def _hang_up(script):
    script.post("/twilio/call-status", CallStatus="completed", CallDuration="90")


def _status(script):
    script.media.fail_next(0)
    assert script.post("/twilio/recording-status/request", **script.late)[0] == 204


def _fetch_job(script):
    script.media.fail_next(0)
    jobs.drain(script.app)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([_holding_ends, _hang_up, _status], id="status after hang-up"),
        pytest.param([_holding_ends, _status, _hang_up], id="status after holding, then hang-up"),
        pytest.param([_hang_up, _status], id="hang-up while holding, then status"),
        pytest.param([_status, _hang_up], id="status while holding, then hang-up"),
        pytest.param([_holding_ends, _hang_up, _fetch_job], id="download job after hang-up"),
    ],
)
def test_a_recording_nobody_confirmed_is_flagged_for_review_in_any_order(
    twilio, media, app, db, steps
):
    script = CallScript(twilio, media, app)
    script.post("/twilio/voice")
    script.post("/twilio/menu/main", Digits="1")
    recording = script.recording()
    script.late = script.status_of(recording)
    media.fail_next(1000)  # Twilio's media server fails: the caller is held
    _, body = script.post("/twilio/recorded/request", **recording)
    assert "Please wait a moment" in spoken_text(body)
    for step in steps:
        step(script)
    [request] = requests_of(db)
    assert request["source_key"] == recording["RecordingSid"]
    assert (request["needs_review"], request["confirmed_at"]) == (1, None)
    assert actions(db, request["id"]).count("not confirmed") == 1


# --- 17: SIDs are Twilio's shape or refused -----------------------------------------------


BAD_SIDS = [
    pytest.param(lambda prefix: prefix + "1" * 100_000, id="100000 digits"),
    pytest.param(lambda prefix: prefix + "1" * 31, id="one digit short"),
    pytest.param(lambda prefix: prefix + "1" * 33, id="one digit long"),
    pytest.param(lambda prefix: prefix + "g" * 32, id="not hex"),
    pytest.param(lambda prefix: "XX" + "1" * 32, id="wrong kind"),
    pytest.param(lambda prefix: prefix + "1" * 31 + "\n", id="newline"),
    pytest.param(lambda prefix: prefix + "'; drop table calls; --", id="quote"),
]
SID_WEBHOOKS = [
    ("CallSid", "CA", "/twilio/voice"),
    ("CallSid", "CA", "/twilio/recorded/request"),
    ("CallSid", "CA", "/twilio/recording-status/request"),
    ("CallSid", "CA", "/twilio/call-status"),
    ("RecordingSid", "RE", "/twilio/recorded/request"),
    ("RecordingSid", "RE", "/twilio/recorded/voicemail"),
    ("RecordingSid", "RE", "/twilio/recording-status/request"),
    ("AccountSid", "AC", "/twilio/voice"),
    ("AccountSid", "AC", "/twilio/recording-status/request"),
]


@pytest.mark.parametrize("bad", BAD_SIDS)
@pytest.mark.parametrize(("field", "prefix", "path"), SID_WEBHOOKS)
def test_a_malformed_sid_is_refused_and_never_stored(twilio, media, db, field, prefix, path, bad):
    recording_sid, url = media.add(NOT_AUDIO)
    params = {
        **twilio.call_params(CallScript(twilio, media, None).call, status="completed"),
        "RecordingSid": recording_sid,
        "RecordingUrl": url,
        "RecordingStatus": "completed",
        "RecordingDuration": "4",
        field: bad(prefix),
    }
    status, _ = twilio.post(path, params)
    assert status == 400
    for table in ("calls", "callers", "requests", "twilio_recordings", "jobs"):
        assert db[table].count == 0, table


# --- 5, 6, 7: storage that cannot take the recording now -----------------------------------


def _data_dir_read_only(app, tmp_path):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return read_only(data)


class _DataDirIsAFile:
    def __init__(self, app, tmp_path):
        self.path = tmp_path / "data-file"
        app.config["DATA_DIR"] = str(self.path)

    def __enter__(self):
        self.path.write_text("not a folder")

    def __exit__(self, *exc):
        self.path.unlink()


# fault -> (set up the fault, what keeps the recording: "job" queued now or "reconcile")
DATA_DIR_FAULTS = {"data dir read-only": _data_dir_read_only, "data dir is a file": _DataDirIsAFile}
ANSWERS = {
    # path -> (status, what the caller is led to next)
    "/twilio/recorded/request": (200, "Record"),  # the apology and a voicemail
    "/twilio/recorded/voicemail": (200, "Hangup"),  # a call back, with the danger advice
}


@pytest.mark.parametrize("fault", list(DATA_DIR_FAULTS))
@pytest.mark.parametrize(
    "path",
    ["/twilio/recorded/request", "/twilio/recorded/voicemail", "/twilio/recording-status/request"],
)
def test_an_unwritable_data_dir_keeps_the_recording_pending_with_a_download_job(
    twilio, media, app, db, tmp_path, fault, path
):
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer as in production
    script = CallScript(twilio, media, app)
    script.post("/twilio/voice")
    script.post("/twilio/menu/main", Digits="1")
    recording = script.status_of(script.recording())
    with DATA_DIR_FAULTS[fault](app, tmp_path):
        status, body = script.post(path, **recording)
    _assert_answered(path, status, body, stored_later=204)
    row = db["twilio_recordings"].get(recording["RecordingSid"])
    assert row["state"] == "pending"
    assert row["error"].startswith(
        "data directory unwritable: The data directory cannot be written"
    )
    [job] = db["jobs"].rows_where("kind = ?", [twilio_media.FETCH])
    assert job["state"] == "queued"
    # The folder is writable again: the queued job stores it.
    jobs.drain(app)
    _assert_stored(db, recording)


def _assert_answered(path, status, body, *, stored_later):
    """Check a webhook met by broken storage was answered in kind, never with a 5xx."""
    if path.startswith("/twilio/recording-status"):
        assert status == stored_later
        return
    expected_status, verb = ANSWERS[path]
    assert status == expected_status
    said = spoken_text(body)
    assert said.startswith("Sorry, something went wrong"), said
    # What they said may have been lost, and it may have been an emergency.
    assert "hang up and dial 9 1 1" in said, said
    assert ET.fromstring(body).find(verb) is not None


def _assert_stored(db, recording):
    row = db["twilio_recordings"].get(recording["RecordingSid"])
    assert row["state"] == "stored"
    request = queue.get(db, row["request_id"])
    assert request["source_key"] == recording["RecordingSid"]


def _database_full(app, tmp_path):
    """Return a context in which the database's disk has no room left."""
    return _FullDatabase(app)


class _FullDatabase:
    def __init__(self, app):
        self.folder = os.path.dirname(app.config["DATABASE"])
        self.filler = os.path.join(self.folder, "filler")

    def __enter__(self):
        database = connect(os.path.join(self.folder, "carecall.db"))
        # Nothing left in the write-ahead log to reuse: the next write must grow a file.
        database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        database.close()
        with open(self.filler, "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
                    filler.flush()
            except OSError:
                pass

    def __exit__(self, *exc):
        os.unlink(self.filler)


class _LockHeld:
    """Another connection holds the write lock throughout (BEGIN IMMEDIATE)."""

    def __init__(self, app, tmp_path):
        self.holder = connect(app.config["DATABASE"], busy_timeout=0.2)

    def __enter__(self):
        self.holder.execute("BEGIN IMMEDIATE")

    def __exit__(self, *exc):
        self.holder.conn.rollback()
        self.holder.close()


DATABASE_FAULTS = {"database disk full": _database_full, "database lock held": _LockHeld}


@pytest.mark.parametrize("fault", list(DATABASE_FAULTS))
@pytest.mark.parametrize(
    "path",
    ["/twilio/recorded/request", "/twilio/recorded/voicemail", "/twilio/recording-status/request"],
)
def test_a_database_that_cannot_be_written_is_never_a_5xx_and_reconcile_recovers(
    make_app, media, tmp_path, fault, path
):
    folder = tmp_path / "db-disk"
    with small_disk(folder, 4 << 20):
        app = make_app(
            DATABASE=str(folder / "carecall.db"),
            PROPAGATE_EXCEPTIONS=False,
            DB_BUSY_TIMEOUT_SECONDS=0.2,
        )
        twilio = twilio_for(app, media)
        script = CallScript(twilio, media, app)
        script.post("/twilio/voice")
        script.post("/twilio/menu/main", Digits="1")
        recording = script.status_of(script.recording())
        with DATABASE_FAULTS[fault](app, tmp_path):
            status, body = script.post(path, **recording)
        _assert_answered(path, status, body, stored_later=202)
        db = connect(app.config["DATABASE"])
        assert db["twilio_recordings"].count == 0 and db["requests"].count == 0
        # The database takes writes again: the nightly reconcile asks Twilio for the
        # recordings of the last days and fetches the one we never noted.
        with app.app_context():
            jobs.enqueue(get_db(), twilio_media.RECONCILE, {"days": 2})
        jobs.drain(app)
        _assert_stored(db, recording)
        db.close()
        _close_pool(app)  # the small disk is unmounted next


def _close_pool(app):
    """Close the app's idle database connections."""
    pool = app.extensions["carecall.db_pool"]
    while not pool.empty():
        pool.get_nowait().close()


def test_a_lock_held_through_note_is_busy_not_a_raw_lock_error(app, db):
    holder = connect(app.config["DATABASE"], busy_timeout=0.1)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, holder.conn.rollback)
    release.start()
    try:
        with app.app_context():
            app.config["DB_BUSY_TIMEOUT_SECONDS"] = 0.1
            # A fresh connection, with the setting's busy timeout.
            database = connect(app.config["DATABASE"])
            # Waited for and retried inside one transaction: the lock is let go in time.
            row = twilio_media.note(
                database,
                recording_sid="RE" + "a" * 32,
                call_sid="CA" + "a" * 32,
                url="http://127.0.0.1/x",
                purpose="request",
                phone=None,
                language="en",
            )
            database.close()
    finally:
        release.join()
    assert row["state"] == "pending"


def test_the_real_server_answers_a_held_lock_without_a_5xx_and_reconcile_recovers(tmp_path):
    from tests.server import call_params, new_call_sid, recording_params, running, status_params

    with running(tmp_path / "server", settings={"DB_BUSY_TIMEOUT_SECONDS": "1"}) as server:
        call_sid, caller = new_call_sid(), "+15551230077"
        params = call_params(call_sid, caller)
        assert server.twilio("/twilio/voice", params).status_code == 200
        assert server.twilio("/twilio/menu/main", {**params, "Digits": "1"}).status_code == 200
        recording_sid, url = server.media.add(NOT_AUDIO, call_sid)
        # Another process holds the write lock longer than every wait and retry (attack 7).
        holder = sqlite3.connect(server.settings["DATABASE"], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            status = server.twilio(
                "/twilio/recording-status/request", status_params(call_sid, recording_sid, url)
            )
            recorded = server.twilio(
                "/twilio/recorded/request", {**params, **recording_params(recording_sid, url)}
            )
        finally:
            holder.rollback()
            holder.close()
        assert status.status_code == 202
        assert recorded.status_code == 200
        assert spoken_text(recorded.text).startswith("Sorry, something went wrong")
        assert ET.fromstring(recorded.text).find("Record") is not None
        assert server.query("SELECT count(*) FROM twilio_recordings") == [(0,)]
        # The nightly reconcile, run by hand, finds the recording nobody noted.
        server.flask("twilio", "reconcile", "--days", "1")
        server.flask("worker", "--burst")
        assert server.query(
            "SELECT r.state FROM twilio_recordings r JOIN requests q ON q.id = r.request_id"
            " WHERE r.recording_sid = ? AND q.source_key = ?",
            [recording_sid, recording_sid],
        ) == [("stored",)]
        assert not any("Error" in line for line in server.errors()), server.errors()
