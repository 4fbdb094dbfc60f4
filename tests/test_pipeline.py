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
    assert jobs.drain(app) == 1
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
