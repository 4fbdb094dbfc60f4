"""The durable job queue: idempotent enqueue, leases, back-off, dead letter, dying workers."""

import json
import time
from pathlib import Path

import pytest

from app import jobs, queue

CALLS = []


@jobs.handler("test.record")
def record(payload):
    """Remember the payload."""
    CALLS.append(payload)


@jobs.handler("test.flaky")
def flaky(payload):
    """Fail until the payload's number of failures is used up."""
    CALLS.append(payload)
    if len(CALLS) <= payload["failures"]:
        raise RuntimeError(f"failure {len(CALLS)}")


@pytest.fixture(autouse=True)
def clear_calls():
    CALLS.clear()


def state(db, job_id):
    return db["jobs"].get(job_id)


def test_enqueue_with_same_key_is_one_job(app, db):
    first = jobs.enqueue(db, "test.record", {"n": 1}, key="k1")
    second = jobs.enqueue(db, "test.record", {"n": 2}, key="k1")
    assert first == second
    assert db["jobs"].count == 1
    assert jobs.drain(app) == 1
    assert CALLS == [{"n": 1}]


def test_claim_prefers_priority_then_age(db):
    low = jobs.enqueue(db, "test.record", {}, priority=0)
    high = jobs.enqueue(db, "test.record", {}, priority=10)
    assert jobs.claim(db, "w", 60).id == high
    assert jobs.claim(db, "w", 60).id == low
    assert jobs.claim(db, "w", 60) is None


@pytest.mark.parametrize(
    ("failures", "max_attempts", "final_state", "calls"),
    [
        (0, 3, "done", 1),
        (2, 3, "done", 3),
        (3, 3, "dead", 3),
        (9, 1, "dead", 1),
    ],
)
def test_retries_until_done_or_dead(app, db, failures, max_attempts, final_state, calls):
    job_id = jobs.enqueue(db, "test.flaky", {"failures": failures}, max_attempts=max_attempts)
    jobs.drain(app)
    row = state(db, job_id)
    assert row["state"] == final_state
    assert len(CALLS) == calls
    if final_state == "dead":
        assert "RuntimeError" in row["last_error"]


def test_backoff_delays_the_retry(app, db):
    app.config["JOB_BACKOFF_SECONDS"] = 30
    job_id = jobs.enqueue(db, "test.flaky", {"failures": 1})
    assert jobs.drain(app) == 1
    row = state(db, job_id)
    assert row["state"] == "queued"
    assert row["run_after"] > time.time() + 25
    assert jobs.claim(db, "w", 60) is None


def test_dead_job_can_be_retried(app, db):
    job_id = jobs.enqueue(db, "test.flaky", {"failures": 1}, max_attempts=1)
    jobs.drain(app)
    assert state(db, job_id)["state"] == "dead"
    assert jobs.retry(db, job_id)
    jobs.drain(app)
    assert state(db, job_id)["state"] == "done"
    assert not jobs.retry(db, job_id)


def test_unknown_kind_goes_to_dead_letter_not_lost(app, db):
    job_id = jobs.enqueue(db, "test.nobody", {}, max_attempts=2)
    jobs.drain(app)
    row = state(db, job_id)
    assert row["state"] == "dead"
    assert "UnknownJobKind" in row["last_error"]


def test_expired_lease_is_taken_over(db):
    job_id = jobs.enqueue(db, "test.record", {})
    first = jobs.claim(db, "dead-worker", lease_seconds=10)
    assert first.id == job_id
    assert jobs.claim(db, "other", 10) is None
    taken = jobs.claim(db, "other", 10, now=time.time() + 11)
    assert taken.id == job_id
    assert taken.attempts == 2


def test_job_whose_worker_always_dies_is_buried(db):
    job_id = jobs.enqueue(db, "test.record", {}, max_attempts=2)
    now = time.time()
    for step in range(2):
        assert jobs.claim(db, "w", 1, now=now + 2 * step).id == job_id
    assert jobs.claim(db, "w", 1, now=now + 10) is None
    row = state(db, job_id)
    assert row["state"] == "dead"
    assert "worker stopped" in row["last_error"]


def test_in_process_worker_runs_jobs_when_woken(app, db):
    worker = jobs.start_worker(app)
    try:
        with app.app_context():
            from app.db import get_db

            job_id = jobs.enqueue(get_db(), "test.record", {"n": 7})
        deadline = time.time() + 5
        while state(db, job_id)["state"] != "done" and time.time() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    assert state(db, job_id)["state"] == "done"
    assert CALLS == [{"n": 7}]


def test_jobs_cli_lists_and_retries_dead(app, db, runner):
    job_id = jobs.enqueue(db, "test.nobody", {}, max_attempts=1)
    jobs.drain(app)
    listed = runner.invoke(args=["jobs", "list", "--state", "dead"])
    assert f"{job_id}" in listed.output and "dead" in listed.output
    assert runner.invoke(args=["jobs", "retry", str(job_id)]).exit_code == 0
    assert state(db, job_id)["state"] == "queued"
    again = runner.invoke(args=["jobs", "retry", str(job_id)])
    assert again.exit_code != 0 and "not in the dead letter" in again.output


@pytest.mark.parametrize(
    ("hour", "enabled", "queued"),
    [(2, True, 0), (3, True, 1), (23, True, 1), (4, False, 0)],
)
def test_daily_jobs_are_queued_once_a_day_after_their_hour(app, db, hour, enabled, queued):
    from datetime import UTC, datetime

    entry = jobs.Daily("test.record", 3, {"daily": True}, lambda app: enabled)
    jobs.SCHEDULE.append(entry)
    try:
        now = datetime(2026, 11, 29, hour, 30, tzinfo=UTC)
        jobs.enqueue_due(app, db, now)
        jobs.enqueue_due(app, db, now)
    finally:
        jobs.SCHEDULE.remove(entry)
    rows = list(db["jobs"].rows_where("kind = 'test.record'"))
    assert len(rows) == queued
    if queued:
        assert rows[0]["key"] == "test.record:2026-11-29"


@pytest.mark.parametrize(
    ("times", "queued"),
    [
        (("10:00", "10:00", "10:59"), 1),  # one period, however many workers look
        (("10:59", "11:00"), 2),  # a new period, a new job
        (("10:00", "13:30"), 2),  # a worker down for hours queues one, not the missed ones
    ],
)
def test_periodic_jobs_are_queued_once_a_period(app, db, times, queued):
    from datetime import UTC, datetime

    entry = jobs.Every("test.record", 3600.0, {"every": True}, lambda app: True)
    jobs.SCHEDULE.append(entry)
    try:
        for clock in times:
            now = datetime.fromisoformat(f"2026-11-29T{clock}").replace(tzinfo=UTC)
            jobs.enqueue_due(app, db, now)
    finally:
        jobs.SCHEDULE.remove(entry)
    assert db["jobs"].count_where("kind = 'test.record'") == queued


def test_standing_arrangements_are_looked_at_every_hour(app, db):
    from datetime import UTC, datetime

    for hour in (9, 9, 10):
        jobs.enqueue_due(app, db, datetime(2026, 11, 29, hour, 30, tzinfo=UTC))
    assert db["jobs"].count_where("kind = 'arrangements.due'") == 2


def test_nightly_reconcile_waits_for_twilio_credentials(app, db):
    from datetime import UTC, datetime

    now = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
    jobs.enqueue_due(app, db, now)
    assert db["jobs"].count_where("kind = 'twilio.reconcile'") == 0
    app.config.update(TWILIO_ACCOUNT_SID="AC" + "0" * 32, TWILIO_AUTH_TOKEN="secret")
    jobs.enqueue_due(app, db, now)
    assert db["jobs"].count_where("kind = 'twilio.reconcile'") == 1


# --- dying jobs are seen, dead workers are replaced -------------------------------------------

DEATHS = []


class Unmendable(Exception):
    """An error test.unmendable declares permanent."""


def noted_death(db, payload, reason):
    """Note a death in the database, inside the burying transaction."""
    DEATHS.append((payload, reason))
    queue.record_event(db, None, "test", "died", {"reason": reason})


@jobs.handler("test.unmendable", on_dead=noted_death, permanent=(Unmendable,))
def unmendable(payload):
    """Fail with the error the payload names."""
    CALLS.append(payload)
    raise {"permanent": jobs.PermanentError, "declared": Unmendable, "other": RuntimeError}[
        payload["error"]
    ](f"cannot do {payload['error']}")


@jobs.handler("test.dies_badly", on_dead=lambda db, payload, reason: 1 / 0)
def dies_badly(payload):
    """Fail for good, with an on_dead that itself fails."""
    raise jobs.PermanentError("no")


@pytest.fixture(autouse=True)
def clear_deaths():
    DEATHS.clear()


@pytest.mark.parametrize(
    ("error", "calls", "reason"),
    [
        ("permanent", 1, "cannot do permanent"),
        ("declared", 1, "cannot do declared"),
        ("other", 3, "gave up after 3 attempts: RuntimeError: cannot do other"),
    ],
)
def test_a_dying_job_runs_its_on_dead_in_the_burying_transaction(app, db, error, calls, reason):
    job_id = jobs.enqueue(db, "test.unmendable", {"error": error}, max_attempts=3)
    jobs.drain(app)
    row = state(db, job_id)
    assert row["state"] == "dead" and row["attempts"] == calls == len(CALLS)
    assert [({"error": error}, reason)] == DEATHS
    died = db["events"].rows_where("action = 'died'")
    assert [json.loads(e["detail"])["reason"] for e in died] == [reason]


def test_a_job_whose_worker_always_dies_runs_its_on_dead(db):
    job_id = jobs.enqueue(db, "test.unmendable", {"error": "other"}, max_attempts=2)
    now = time.time()
    for step in range(2):
        assert jobs.claim(db, "w", 1, now=now + 2 * step).id == job_id
    assert jobs.claim(db, "w", 1, now=now + 10) is None
    assert state(db, job_id)["state"] == "dead"
    assert DEATHS == [({"error": "other"}, "the worker stopped while running it, 2 times")]


def test_a_failing_on_dead_still_buries_the_job(app, db):
    job_id = jobs.enqueue(db, "test.dies_badly", {})
    jobs.drain(app)
    row = state(db, job_id)
    assert row["state"] == "dead" and row["attempts"] == 1
    assert "ZeroDivisionError" in row["last_error"]


@pytest.mark.parametrize(
    ("silent_for", "taken"),
    [(0.5, False), (2.9, False), (3.1, True), (250.0, True)],
)
def test_the_job_of_a_worker_that_stopped_beating_is_taken_over(db, silent_for, taken):
    """A worker silent for three heartbeats is dead: its job moves on long before the lease."""
    job_id = jobs.enqueue(db, "test.record", {})
    now = time.time()
    jobs.register(db, "dead-worker", "worker", now=now)
    assert jobs.claim(db, "dead-worker", 300, now=now, heartbeat_seconds=1).id == job_id
    jobs.register(db, "alive", "worker", now=now + silent_for)
    again = jobs.claim(db, "alive", 300, now=now + silent_for, heartbeat_seconds=1)
    assert (again is not None and again.id == job_id) is taken
    if taken:
        assert again.attempts == 2 and state(db, job_id)["worker"] == "alive"


def test_a_worker_that_never_registered_keeps_its_lease(db):
    """Jobs of a worker with no heartbeat row (an older version) wait for the lease as before."""
    job_id = jobs.enqueue(db, "test.record", {})
    now = time.time()
    assert jobs.claim(db, "old-worker", 300, now=now, heartbeat_seconds=1).id == job_id
    assert jobs.claim(db, "new", 300, now=now + 60, heartbeat_seconds=1) is None
    assert jobs.claim(db, "new", 300, now=now + 301, heartbeat_seconds=1).id == job_id


@jobs.handler("test.who_runs")
def who_runs(payload):
    """Remember which workers are registered while this job runs."""
    from app.db import get_db

    CALLS.append([(r["name"], r["kind"]) for r in get_db()["workers"].rows])


def test_drain_registers_a_beating_worker_while_it_runs(app, db):
    app.config["WORKER_HEARTBEAT_SECONDS"] = 0.05
    jobs.enqueue(db, "test.who_runs", {})
    jobs.drain(app, worker="burst-1")
    assert CALLS == [[("burst-1", "drain")]]
    assert db["workers"].count == 0  # a worker that stops cleanly leaves no row behind


@pytest.mark.parametrize("how", ["reaped", "zombie"])
def test_a_restarted_worker_takes_over_at_once_from_a_dead_process_on_its_host(db, how):
    """After kill -9 and a restart, the job moves on now, not after three missed beats.

    A killed process its parent has not reaped yet (a zombie) is as dead as a reaped one.
    """
    import socket
    import subprocess

    gone = subprocess.Popen(["sleep", "60"])
    gone.kill()
    if how == "reaped":
        gone.wait()
    else:
        # Until /proc shows the zombie state, the kill has not landed yet.
        deadline = time.time() + 5
        while "Z" not in Path(f"/proc/{gone.pid}/stat").read_text().rpartition(")")[2][:3]:
            assert time.time() < deadline
            time.sleep(0.01)
    job_id = jobs.enqueue(db, "test.record", {})
    now = time.time()
    db["workers"].insert(
        {
            "name": "killed",
            "kind": "worker",
            "host": socket.gethostname(),
            "pid": gone.pid,
            "started_at": now,
            "heartbeat_at": now,
        }
    )
    assert jobs.claim(db, "killed", 300, now=now, heartbeat_seconds=5).id == job_id
    jobs.register(db, "restarted", "worker", now=now + 0.1)
    taken = jobs.claim(db, "restarted", 300, now=now + 0.1, heartbeat_seconds=5)
    gone.wait()
    assert taken is not None and taken.id == job_id


def test_workers_of_the_same_process_and_thread_have_different_names():
    assert jobs.worker_name("worker") != jobs.worker_name("worker")


def test_a_worker_stopped_by_sigterm_signs_off(app, db):
    """A service manager's SIGTERM ends `flask worker` cleanly: exit 0, no stale row left."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = {
        **os.environ,
        "CARECALL_DATABASE": app.config["DATABASE"],
        "CARECALL_DATA_DIR": app.config["DATA_DIR"],
        "CARECALL_SECRET_KEY": "test-secret-key-0123456789",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "worker"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 30
        while not jobs.live_workers(db, app.config["WORKER_HEARTBEAT_SECONDS"]):
            assert time.time() < deadline and worker.poll() is None, "the worker never registered"
            time.sleep(0.05)
        [row] = db["workers"].rows
        assert row["kind"] == "worker" and row["pid"] == worker.pid
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=20)[0]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, output
    assert f"worker {row['name']} running" in output
    assert db["workers"].count == 0
