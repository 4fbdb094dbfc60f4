"""Failures are seen: /healthz, /readyz and the warnings serve and worker print at start-up."""

import shutil
import subprocess

import pytest

from app import accounts, create_app, jobs, pipeline, settings
from app.speech import ModelUnavailable
from tests.test_console import FAST, login, make_user, post_form
from tests.test_storage import UNWRITABLE, full_database, unwritable_data_dir  # noqa: F401

READY_MODELS = {"whisper-tiny-en": "installed", "vosk-ko": "installed"}


@pytest.fixture
def live_worker(app):
    """Keep a worker's heartbeat fresh for the test, as a running `flask worker` would."""
    with jobs.Heartbeat(app, "test-worker", "worker"):
        yield


@pytest.fixture
def immutable(tmp_path):
    """Make files unwritable even for root (chattr +i), and writable again afterwards."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    locked = []

    def lock(path):
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"this file system cannot make files immutable: {done.stderr!r}")
        locked.append(path)

    yield lock
    for path in locked:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_anonymous_health_is_only_ok(client, db):
    """Counts of requests and jobs are for staff, not for anyone on the internet."""
    jobs.enqueue(db, "transcribe", {"request_id": 1})
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("how", ["session", "token"])
@pytest.mark.parametrize("role", ["admin", "coordinator"])
def test_staff_see_the_details_of_health(app, client, db, how, role):
    app.config.update(FAST)
    jobs.enqueue(db, "transcribe", {"request_id": 1})
    headers = {}
    if how == "session":
        make_user(db, "pat", role)
        assert login(client, "pat").status_code == 303
    else:
        token, _ = accounts.create_token(db, "monitor", role)
        headers = {"Authorization": f"Bearer {token}"}
    body = client.get("/healthz", headers=headers).get_json()
    assert body["status"] == "ok"
    assert body["requests"] == 0 and body["jobs"] == {"queued": 1}
    assert body["models"]["whisper-tiny-en"] is True
    assert body["workers"] == []
    assert any("CARECALL_WORKER=none" in line for line in body["problems"])


def test_dead_jobs_are_a_problem_staff_see_but_not_unreadiness(app, client, db):
    """A job in the dead letter waits for a person; /healthz says so, /readyz stays ready."""
    app.config.update(FAST)
    dead = jobs.enqueue(db, "twilio.reconcile", {})
    db["jobs"].update(dead, {"state": "dead", "last_error": "URLError: no route"})
    token, _ = accounts.create_token(db, "monitor", "coordinator")
    body = client.get("/healthz", headers={"Authorization": f"Bearer {token}"}).get_json()
    [line] = [p for p in body["problems"] if "dead job" in p]
    assert line.startswith("1 dead job(s) (1 twilio.reconcile)")
    assert "jobs list --state dead" in line
    assert not any("dead job" in r for r in client.get("/readyz").get_json()["reasons"])


@pytest.mark.parametrize(
    ("models", "says"),
    [
        ({"e5-small": "installed"}, "Text model 'minilm-l6' is not installed"),
        ({"e5-small": "installed", "minilm-l6": "truncated"}, "minilm-l6 is damaged"),
    ],
)
def test_rules_alone_is_a_problem_staff_see_but_not_unreadiness(make_app, models_dir, models, says):
    """Without a text model requests are still understood, less well: someone must look."""
    app = make_app(MODELS_DIR=models_dir({**READY_MODELS, **models}))
    client = app.test_client()
    with app.app_context():
        from app.db import get_db

        token, _ = accounts.create_token(get_db(), "monitor", "coordinator")
    with jobs.Heartbeat(app, "test-worker", "worker"):
        body = client.get("/healthz", headers={"Authorization": f"Bearer {token}"}).get_json()
        ready = client.get("/readyz")
    [line] = [p for p in body["problems"] if "TEXT_MODEL" in p]
    assert line.startswith("CARECALL_TEXT_MODEL=e5-small+minilm-l6: ")
    assert says in line and line.endswith("; classifying by the rules alone")
    assert ".;" not in line
    assert (ready.status_code, ready.get_json()["reasons"]) == (200, [])


def test_a_wrong_token_sees_only_ok(client, db):
    body = client.get("/healthz", headers={"Authorization": "Bearer cc_nonsense"}).get_json()
    assert body == {"status": "ok"}


def test_ready_when_the_database_models_and_a_worker_are(make_app, models_dir):
    app = make_app(MODELS_DIR=models_dir(READY_MODELS))
    with jobs.Heartbeat(app, "test-worker", "worker"):
        response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "reasons": []}


@pytest.mark.parametrize(
    ("models", "worker", "reasons"),
    [
        (
            {"whisper-tiny-en": "truncated", "vosk-ko": "installed"},
            True,
            [
                "CARECALL_SPEECH_ENGINES: en=whisper:whisper-tiny-en: speech model whisper-tiny-en"
                " unavailable: size of model.bin changed"
            ],
        ),
        (
            {"whisper-tiny-en": "installed", "vosk-ko": "missing"},
            True,
            ["CARECALL_SPEECH_ENGINES: ko=vosk:vosk-ko: speech model vosk-ko unavailable: not"],
        ),
        (
            READY_MODELS,
            False,
            ["CARECALL_WORKER=none: no job worker has reported in the last 15 s"],
        ),
    ],
)
def test_not_ready_says_why(make_app, models_dir, models, worker, reasons):
    app = make_app(MODELS_DIR=models_dir(models))
    if worker:
        with jobs.Heartbeat(app, "test-worker", "worker"):
            response = app.test_client().get("/readyz")
    else:
        response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready"
    assert len(body["reasons"]) == len(reasons)
    for said, expected in zip(body["reasons"], reasons, strict=True):
        assert said.startswith(expected)


def test_a_model_that_failed_to_load_is_reported_with_its_load_error(make_app, models_dir):
    """After a failed load, readiness repeats what the engine said, without loading again."""
    app = make_app(MODELS_DIR=models_dir({"whisper-tiny-en": "truncated", "vosk-ko": "installed"}))
    with pytest.raises(ModelUnavailable, match="speech model whisper-tiny-en unavailable"):
        pipeline.speech_service(app).engine("en")
    with jobs.Heartbeat(app, "test-worker", "worker"):
        body = app.test_client().get("/readyz").get_json()
    [reason] = body["reasons"]
    assert "whisper-tiny-en unavailable: Variable" in reason and "invalid payload size" in reason


def test_a_read_only_database_is_not_ready(app, client, live_worker, immutable):
    immutable(app.config["DATABASE"])
    # A fresh app opens the file afresh, as a restarted server would.
    names = ("TESTING", "SECRET_KEY", "DATABASE", "DATA_DIR", "OUTBOX_DIR", "WORKER")
    fresh = create_app({name: app.config[name] for name in names})
    response = fresh.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["reasons"][0].startswith("CARECALL_DATABASE: cannot write")


@pytest.mark.parametrize(
    ("engines", "message"),
    [
        ({"en": "whisper:whisper-huge"}, "No speech model called 'whisper-huge'"),
        ({"en": "vosk:whisper-tiny-en"}, "Model whisper-tiny-en is not a vosk model"),
    ],
)
def test_an_unknown_model_name_stops_start_up_naming_the_variable(tmp_path, engines, message):
    with pytest.raises(settings.SettingsError) as caught:
        create_app(
            {
                "SECRET_KEY": "x" * 32,
                "DATABASE": str(tmp_path / "db.sqlite"),
                "SPEECH_ENGINES": engines,
            }
        )
    assert caught.value.message.startswith("CARECALL_SPEECH_ENGINES=")
    assert message in caught.value.message


def test_worker_warns_at_start_up_about_a_model_that_cannot_load(make_app, models_dir):
    app = make_app(MODELS_DIR=models_dir({"whisper-tiny-en": "truncated", "vosk-ko": "missing"}))
    result = app.test_cli_runner().invoke(args=["worker", "--burst"])
    assert result.exit_code == 0
    warnings = [
        line
        for line in result.output.splitlines()
        if line.startswith("warning: CARECALL_SPEECH_ENGINES")
    ]
    assert len(warnings) == 2
    assert "en=whisper:whisper-tiny-en: speech model whisper-tiny-en unavailable" in warnings[0]
    assert "ko=vosk:vosk-ko: speech model vosk-ko unavailable" in warnings[1]
    assert warnings[1].endswith("install it with: flask --app app models install vosk-ko")
    assert "ran 0 job(s)" in result.output


def test_a_logged_out_session_sees_only_ok(app, client, db):
    """Health details follow the console's own sessions: logging out ends them here too."""
    app.config.update(FAST)
    make_user(db, "pat", "coordinator")
    assert login(client, "pat").status_code == 303
    assert "jobs" in client.get("/healthz").get_json()
    assert post_form(client, "/console/logout", {}).status_code in (302, 303)
    assert client.get("/healthz").get_json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("number", "warned"),
    [(None, True), ("", True), ("+15550001234", False)],
)
def test_an_unset_coordinator_line_is_warned_but_not_unready(make_app, db, number, warned):
    """Every menu offers 0 for a person: without a coordinator line it always means voicemail."""
    app = make_app(COORDINATOR_NUMBER=number, **FAST)
    from app.health import startup_warnings

    about = [w for w in startup_warnings(app) if "COORDINATOR_NUMBER" in w]
    assert about == (
        [
            "warning: CARECALL_COORDINATOR_NUMBER is not set: every menu offers 0 for a person,"
            " but callers who press it always reach voicemail"
        ]
        if warned
        else []
    )
    client = app.test_client()
    token, _ = accounts.create_token(db, "monitor", "coordinator")
    body = client.get("/healthz", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert any("CARECALL_COORDINATOR_NUMBER" in p for p in body["problems"]) == warned
    assert not any("COORDINATOR" in r for r in client.get("/readyz").get_json()["reasons"])


@pytest.mark.parametrize("how", UNWRITABLE)
def test_an_unwritable_data_dir_is_not_ready_and_warned_of_at_start_up(
    make_app,
    unwritable_data_dir,  # noqa: F811
    how,
):
    with unwritable_data_dir(how) as data:
        app = make_app(DATA_DIR=str(data))
        with jobs.Heartbeat(app, "test-worker", "worker"):
            response = app.test_client().get("/readyz")
        result = app.test_cli_runner().invoke(args=["worker", "--burst"])
    assert response.status_code == 503
    [reason] = response.get_json()["reasons"]
    assert reason.startswith(f"CARECALL_DATA_DIR={data}: cannot save recordings")
    assert f"warning: {reason}" in result.output


def test_a_full_database_disk_is_not_ready(full_database):  # noqa: F811
    app, _ = full_database
    # No worker could beat here either (its heartbeat is a write): that is a reason too.
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    reasons = response.get_json()["reasons"]
    assert any(r.startswith("CARECALL_DATABASE=") and "No space left" in r for r in reasons), (
        reasons
    )
