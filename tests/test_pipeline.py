"""The story end to end: recording -> transcript -> category/urgency -> queued request."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import jobs, pipeline, queue
from tests.speechgen import telephone

ROOT = Path(__file__).resolve().parent.parent

REQUESTS = [
    (
        "Hello dear. I have run out of food and I cannot get to the shops. "
        "Could somebody bring me some groceries today please?",
        "groceries",
        {"high", "critical"},
    ),
    (
        "Help me please, I have fallen on the kitchen floor and I cannot get up.",
        "emergency",
        {"critical"},
    ),
]


def receive(app, audio, **fields):
    with app.app_context():
        from app.db import get_db

        return pipeline.receive(get_db(), audio, **fields)


def test_receive_keeps_audio_and_request_before_returning(app, db, tmp_path):
    wav = telephone("I would like someone to visit me for a chat.")
    request = receive(app, wav, channel="voicemail", phone="+15550100", source_key="RE1")
    stored = Path(app.config["DATA_DIR"]) / request["audio_path"]
    assert stored.read_bytes() == wav.read_bytes()
    assert request["stage"] == "received" and request["status"] == "new"
    job = db.execute("SELECT kind, state, payload FROM jobs").fetchone()
    assert job[:2] == ("transcribe", "queued")
    assert json.loads(job[2]) == {"request_id": request["id"]}


def test_receive_twice_with_same_source_is_one_request(app, db):
    wav = telephone("I would like someone to visit me for a chat.")
    first = receive(app, wav, channel="voicemail", source_key="RE2")
    second = receive(app, wav.read_bytes(), channel="voicemail", source_key="RE2")
    assert first["id"] == second["id"]
    assert db["requests"].count == 1 and db["jobs"].count == 1
    files = list((Path(app.config["DATA_DIR"]) / "recordings").rglob("*.wav"))
    assert len(files) == 1


@pytest.mark.slow
@pytest.mark.parametrize(("text", "category", "urgencies"), REQUESTS)
def test_intake_transcribes_classifies_and_queues(app, text, category, urgencies):
    wav = telephone(text)
    request = pipeline.intake(app, wav, channel="voicemail", phone="+15550101")
    assert request["stage"] == "transcribed"
    assert request["engine"] == "whisper" and request["model"] == "whisper-tiny-en"
    assert request["category"] == category
    assert request["urgency"] in urgencies
    assert request["transcript_words"] and request["duration_s"] > 1
    with app.app_context():
        from app.db import get_db

        actions = [e["action"] for e in queue.events(get_db(), request["id"])]
    assert actions[:2] == ["received", "understood"]
    assert ("alert" in actions) == (category == "emergency")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 200, "audio"),
        (b"Dear volunteer, this is a text file.\n" * 10, "audio"),
    ],
)
def test_unreadable_recording_is_kept_for_a_person(app, tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    request = pipeline.intake(app, path, channel="voicemail", phone="+15550102")
    assert request["stage"] == "failed"
    assert message in request["error"].lower()
    assert request["needs_review"] and request["urgency"] == "high"
    assert request["status"] == "new"
    assert (Path(app.config["DATA_DIR"]) / request["audio_path"]).exists()


@pytest.mark.parametrize(
    ("language", "models", "reason"),
    [
        (
            "en",
            {"whisper-tiny-en": "truncated", "vosk-ko": "installed"},
            "speech model whisper-tiny-en unavailable: ",
        ),
        (
            "ko",
            {"whisper-tiny-en": "installed", "vosk-ko": "missing"},
            "speech model vosk-ko unavailable: Speech model 'vosk-ko' is not installed",
        ),
    ],
)
def test_a_model_that_cannot_load_fails_the_request_at_once(
    make_app, models_dir, language, models, reason
):
    """No pointless retries: the request is failed, urgent and explained after one attempt."""
    app = make_app(MODELS_DIR=models_dir(models))
    wav = telephone("Could somebody help me fill in a form for my pension please?")
    request = pipeline.intake(app, wav, channel="voicemail", phone="+15550105", language=language)
    assert request["stage"] == "failed" and request["error"].startswith(reason)
    assert request["urgency"] == "high" and request["needs_review"]
    with app.app_context():
        from app.db import get_db

        db = get_db()
        job = db["jobs"].get(1)
        actions = [e["action"] for e in queue.events(db, request["id"])]
    assert job["state"] == "dead" and job["attempts"] == 1
    assert actions == ["received", "failed"]


def test_a_transcription_that_kills_its_worker_every_time_fails_the_request(app, db):
    """A recording that crashes every worker that takes it is not left 'transcribing'."""
    wav = telephone("I would like someone to visit me for a chat.")
    request = receive(app, wav, channel="kiosk", phone="+15550106")
    start = time.time() + 1
    for attempt in range(app.config["JOB_MAX_ATTEMPTS"]):
        # Each worker takes the job and dies: nobody completes it, the lease runs out.
        assert jobs.claim(db, f"doomed-{attempt}", 10, now=start + 11 * attempt) is not None
    with app.app_context():
        from app.db import get_db

        assert jobs.claim(get_db(), "next", 10, now=start + 100) is None
    failed = queue.get(db, request["id"])
    assert failed["stage"] == "failed" and failed["urgency"] == "high"
    assert failed["needs_review"] and "worker stopped" in failed["error"]
    assert db["jobs"].get(1)["state"] == "dead"


def test_failing_a_request_that_was_understood_changes_nothing(app, db):
    request, _ = queue.create(db, channel="kiosk", stage="transcribed", category="groceries")
    with app.app_context():
        from app.db import get_db

        pipeline.fail(get_db(), request["id"], "too late")
    after = queue.get(db, request["id"])
    assert after["stage"] == "transcribed" and after["error"] is None
    assert [e["action"] for e in queue.events(db, request["id"])] == ["received"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "heartbeat",
    [
        None,  # the default beat: the restarted worker sees the dead process id on its host
        "0.5",  # a fast beat: three missed beats are enough, whatever the host
    ],
)
def test_a_killed_worker_s_job_is_taken_over_within_seconds_not_after_the_lease(app, db, heartbeat):
    """kill -9 a `flask worker` mid-transcription; a second worker finishes it in seconds."""
    wav = telephone(
        "Good morning. My name is Margaret and I live on my own since my husband died. "
        "Could somebody please help me fill in a long form for my pension and my rent? "
        "I cannot read the small print any more and the letter says it is due on Friday."
    )
    request = receive(app, wav, channel="voicemail", phone="+15550107")
    env = {
        **os.environ,
        "CARECALL_DATABASE": app.config["DATABASE"],
        "CARECALL_DATA_DIR": app.config["DATA_DIR"],
        "CARECALL_SECRET_KEY": "test-secret-key-0123456789",
    }
    if heartbeat:
        env["CARECALL_WORKER_HEARTBEAT_SECONDS"] = heartbeat

    def start_worker():
        return subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first = start_worker()
    try:
        deadline = time.time() + 60
        while db["jobs"].get(1)["state"] != "running":
            assert time.time() < deadline and first.poll() is None, "the worker never started"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(10)
    assert db["jobs"].get(1)["state"] == "running"  # the lease still runs for 300 s
    second = start_worker()
    started = time.time()
    try:
        while db["jobs"].get(1)["state"] != "done":
            assert time.time() - started < 60 and second.poll() is None
            time.sleep(0.05)
        took = time.time() - started
    finally:
        second.terminate()
        second.wait(10)
    job = db["jobs"].get(1)
    # Under 10 s: well inside three default beats (15 s), let alone the 300 s lease.
    assert job["attempts"] == 2 and took < 10, f"took over after {took:.1f} s"
    print(f"second worker finished the job {took:.1f} s after it started")
    assert queue.get(db, request["id"])["category"] == "paperwork"
    assert db["workers"].count == 1  # the killed one's row; the stopped one removed its own


@pytest.mark.slow
def test_job_survives_worker_killed_mid_transcription(app, db):
    """A worker process dies while transcribing; after its lease the job is done elsewhere."""
    app.config["JOB_LEASE_SECONDS"] = 3
    wav = telephone("Could somebody help me fill in a form for my pension please?")
    request = receive(app, wav, channel="voicemail", phone="+15550103")
    env = {
        **os.environ,
        "CARECALL_DATABASE": app.config["DATABASE"],
        "CARECALL_DATA_DIR": app.config["DATA_DIR"],
        "CARECALL_SECRET_KEY": "test-secret-key-0123456789",
        "CARECALL_JOB_LEASE_SECONDS": "3",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while db["jobs"].get(1)["state"] != "running" and time.time() < deadline:
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.wait(10)
    job = db["jobs"].get(1)
    assert job["state"] == "running" and job["attempts"] == 1
    assert queue.get(db, request["id"])["stage"] == "received"
    time.sleep(3.2)
    ran = jobs.drain(app)
    # Besides the transcription, only what the worker scheduled as it started (the periodic
    # supervision sweep, standing arrangements) ran: nothing else was waiting.
    assert ran == 1 + db["jobs"].count_where("id != 1 AND state = 'done'")
    job = db["jobs"].get(1)
    assert job["state"] == "done" and job["attempts"] == 2
    done = queue.get(db, request["id"])
    assert done["stage"] == "transcribed" and done["category"] == "paperwork"


@pytest.mark.parametrize(
    ("steps", "applied", "status", "confirmed"),
    [
        (["confirm", "confirm"], [True, False], "new", True),
        (["withdraw", "withdraw"], [True, False], "cancelled", False),
        # A replayed "say it again" after the senior confirmed must not cancel the request.
        (["confirm", "withdraw"], [True, False], "new", True),
        (["withdraw", "confirm"], [True, False], "cancelled", False),
        (["unconfirmed", "unconfirmed", "confirm"], [True, False, True], "new", True),
        (["confirm", "unconfirmed"], [True, False], "new", True),
    ],
)
def test_a_transition_applies_once_and_only_from_its_state(
    app, db, steps, applied, status, confirmed
):
    request, _ = queue.create(db, channel="phone", phone="+15550104")
    with app.app_context():
        from app.db import get_db

        results = [
            pipeline.transition(get_db(), request["id"], step, actor="caller") for step in steps
        ]
    assert results == applied
    after = queue.get(db, request["id"])
    assert after["status"] == status and bool(after["confirmed_at"]) is confirmed
    events = [e["action"] for e in queue.events(db, request["id"])]
    expected = [pipeline.TRANSITIONS[s].event for s, ok in zip(steps, applied, strict=True) if ok]
    assert events == ["received", *expected]


def test_a_transition_of_an_unknown_request_is_not_found(app):
    with app.app_context():
        from app.db import get_db

        with pytest.raises(queue.RequestNotFound):
            pipeline.transition(get_db(), 424242, "confirm", actor="caller")


def test_requests_left_behind_a_dead_job_before_the_upgrade_are_failed_by_it(tmp_path):
    """Requests stuck 'transcribing' on an older version are put before a person on upgrade."""
    from app.db import connect, migrate
    from app.migrations import migrations

    path = tmp_path / "old.db"
    db = connect(path)
    migrations.apply(db, stop_before="0005_workers")
    stuck, _ = queue.create(db, channel="kiosk", phone="+15550108")
    waiting, _ = queue.create(db, channel="kiosk", phone="+15550109")
    dead = jobs.enqueue(db, "transcribe", {"request_id": stuck["id"]})
    jobs.enqueue(db, "transcribe", {"request_id": waiting["id"]})
    error = "RuntimeError: Variable 'decoder/embeddings/weight' has an invalid payload size\n..."
    db["jobs"].update(dead, {"state": "dead", "attempts": 5, "last_error": error})
    db.close()
    assert migrate(path)[0] == "0005_workers"
    db = connect(path)
    failed, untouched = queue.get(db, stuck["id"]), queue.get(db, waiting["id"])
    assert failed["stage"] == "failed" and failed["urgency"] == "high"
    assert failed["needs_review"] and failed["category"] == "other"
    assert failed["error"] == "transcription died: " + error.splitlines()[0]
    assert [e["action"] for e in queue.events(db, stuck["id"])] == ["received", "failed"]
    assert untouched["stage"] == "received" and not untouched["needs_review"]
    db.close()


def test_racing_transitions_apply_exactly_one(app, db):
    """A 'yes' and a 'say it again' arriving together: one wins, the other changes nothing."""
    import threading

    from app.db import connect

    results = []
    for _ in range(20):
        request, _ = queue.create(db, channel="phone", phone="+15550110")
        start = threading.Barrier(2)

        def answer(action, request_id=request["id"], start=start):
            handle = connect(app.config["DATABASE"])
            start.wait()
            try:
                results.append(pipeline.transition(handle, request_id, action, actor="caller"))
            finally:
                handle.close()

        threads = [threading.Thread(target=answer, args=(a,)) for a in ("confirm", "withdraw")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = queue.get(db, request["id"])
        # Exactly one of confirmed or cancelled, never both, and one event for it.
        assert bool(after["confirmed_at"]) != (after["status"] == "cancelled")
        assert len(queue.events(db, request["id"])) == 2
    assert results.count(True) == 20 and results.count(False) == 20
