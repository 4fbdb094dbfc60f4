"""A durable job queue in SQLite: leases, retries with back-off, and a visible dead letter."""

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import click
from flask import current_app, has_app_context
from flask.cli import AppGroup, with_appcontext

from . import recordings
from .db import get_db

log = logging.getLogger(__name__)

# kind -> function(payload) run inside an app context; filled by @handler.
HANDLERS = {}
# Jobs queued once a day by any running worker; filled by daily().
SCHEDULE = []
MAX_BACKOFF_SECONDS = 300.0
SCHEDULE_CHECK_SECONDS = 60.0


class UnknownJobKind(LookupError):
    """No handler is registered for this kind of job."""


@dataclass(frozen=True)
class Daily:
    """A job to queue once a day, from the given UTC hour on, while enabled(app) is true."""

    kind: str
    hour: int
    payload: dict
    enabled: Callable

    def key(self, day):
        """Return the idempotency key that makes it one job per day, however many workers."""
        return f"{self.kind}:{day.isoformat()}"


@dataclass(frozen=True)
class Job:
    """A claimed job: what to do, with what, and how many times it has been tried."""

    id: int
    kind: str
    payload: dict
    attempts: int
    max_attempts: int

    @classmethod
    def from_row(cls, row):
        """Build a Job from a jobs table row."""
        return cls(
            id=row["id"],
            kind=row["kind"],
            payload=json.loads(row["payload"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
        )


def handler(kind):
    """Register a function as the handler for one kind of job."""

    def register(fn):
        HANDLERS[kind] = fn
        return fn

    return register


def daily(kind, *, hour, payload=None, enabled=lambda app: True):
    """Schedule a kind of job to be queued once a day from hour (UTC) on."""
    SCHEDULE.append(Daily(kind, hour, payload or {}, enabled))


def enqueue_due(app, db, now=None):
    """Queue today's scheduled jobs whose hour has come; return their ids."""
    now = now or datetime.now(UTC)
    return [
        enqueue(db, entry.kind, entry.payload, key=entry.key(now.date()))
        for entry in SCHEDULE
        if now.hour >= entry.hour and entry.enabled(app)
    ]


def enqueue(db, kind, payload, *, key=None, priority=0, delay=0.0, max_attempts=None):
    """Queue a job and return its id; a job with the same key is queued only once."""
    now = time.time()
    if max_attempts is None:
        max_attempts = current_app.config["JOB_MAX_ATTEMPTS"] if has_app_context() else 5
    # RETURNING keeps the statement open until fetched, so commit explicitly around it.
    with db.atomic():
        row = db.execute(
            "INSERT INTO jobs (kind, payload, key, state, priority, attempts, max_attempts,"
            " run_after, created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, 0, ?, ?, ?, ?)"
            " ON CONFLICT(key) DO NOTHING RETURNING id",
            [kind, json.dumps(payload), key, priority, max_attempts, now + delay, now, now],
        ).fetchone()
    if row is None:
        return db.execute("SELECT id FROM jobs WHERE key = ?", [key]).fetchone()[0]
    wake()
    return row[0]


def claim(db, worker, lease_seconds, now=None):
    """Lease the most urgent runnable job to a worker, or return None."""
    now = time.time() if now is None else now
    # One UPDATE ... RETURNING is atomic across threads and processes sharing the file.
    # A running job whose lease has expired belongs to a worker that died: take it over.
    with db.atomic():
        cursor = db.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?,"
            " worker = ?, updated_at = ? WHERE id = ("
            "  SELECT id FROM jobs WHERE (state = 'queued' AND run_after <= ?)"
            "  OR (state = 'running' AND lease_until < ?)"
            "  ORDER BY priority DESC, run_after, id LIMIT 1"
            ") RETURNING *",
            [now + lease_seconds, worker, now, now, now],
        )
        row = cursor.fetchone()
        columns = [c[0] for c in cursor.description]
    if row is None:
        return None
    job = Job.from_row(dict(zip(columns, row, strict=True)))
    if job.attempts > job.max_attempts:
        # It was leased max_attempts times and never finished: the worker keeps dying on it.
        bury(db, job.id, "worker stopped while running this job, every attempt")
        return claim(db, worker, lease_seconds, now)
    return job


def complete(db, job):
    """Mark a job done."""
    db.execute(
        "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = ?"
        " WHERE id = ?",
        [time.time(), job.id],
    )


def fail(db, job, error, backoff_seconds):
    """Record a failed attempt: queue a retry after a back-off, or bury it as dead."""
    now = time.time()
    if job.attempts >= job.max_attempts:
        bury(db, job.id, error)
        return "dead"
    delay = min(backoff_seconds * 2 ** (job.attempts - 1), MAX_BACKOFF_SECONDS)
    db.execute(
        "UPDATE jobs SET state = 'queued', run_after = ?, lease_until = NULL, last_error = ?,"
        " updated_at = ? WHERE id = ?",
        [now + delay, error, now, job.id],
    )
    return "queued"


def bury(db, job_id, error):
    """Move a job to the dead letter, keeping its last error for a person to read."""
    db.execute(
        "UPDATE jobs SET state = 'dead', lease_until = NULL, last_error = ?, updated_at = ?"
        " WHERE id = ?",
        [error, time.time(), job_id],
    )
    log.error("job %s is dead: %s", job_id, error)


def retry(db, job_id):
    """Queue a dead job again from scratch; return False if there is no such dead job."""
    cursor = db.execute(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_after = ?, updated_at = ?"
        " WHERE id = ? AND state = 'dead'",
        [time.time(), time.time(), job_id],
    )
    return cursor.rowcount == 1


def run_one(app, worker):
    """Claim and run one job in an app context; return False when none was runnable."""
    with app.app_context():
        db = get_db()
        job = claim(db, worker, app.config["JOB_LEASE_SECONDS"])
        if job is None:
            return False
        try:
            fn = HANDLERS.get(job.kind)
            if fn is None:
                raise UnknownJobKind(f"no handler for job kind {job.kind!r}")
            fn(job.payload)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            state = fail(db, job, error, app.config["JOB_BACKOFF_SECONDS"])
            log.warning("job %s (%s) failed, now %s: %s", job.id, job.kind, state, exc)
        else:
            complete(db, job)
        return True


def drain(app, worker=None, max_jobs=None):
    """Run runnable jobs until none is left (or max_jobs ran); return how many ran."""
    worker = worker or worker_name()
    count = 0
    while (max_jobs is None or count < max_jobs) and run_one(app, worker):
        count += 1
    return count


def worker_name():
    """Name this worker after its host, process and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def wake():
    """Tell this process's in-process worker that a job is waiting."""
    if has_app_context():
        event = current_app.extensions.get("carecall.jobs.wake")
        if event is not None:
            event.set()


class Worker(threading.Thread):
    """Runs jobs in a background thread of this process until stopped."""

    def __init__(self, app):
        super().__init__(name="carecall-worker", daemon=True)
        self.app = app
        self.stopping = threading.Event()
        self.wakeup = app.extensions["carecall.jobs.wake"]

    def run(self):
        """Run jobs, sleeping until woken or the poll interval passes."""
        name = worker_name()
        next_schedule_check = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() >= next_schedule_check:
                    next_schedule_check = time.monotonic() + SCHEDULE_CHECK_SECONDS
                    with self.app.app_context():
                        enqueue_due(self.app, get_db())
                ran = run_one(self.app, name)
            except Exception:
                log.exception("worker loop error; continuing")
                ran = False
            if not ran:
                self.wakeup.wait(self.app.config["JOB_POLL_SECONDS"])
                self.wakeup.clear()

    def stop(self, timeout=10):
        """Stop after the current job finishes."""
        self.stopping.set()
        self.wakeup.set()
        self.join(timeout)


def start_worker(app):
    """Start an in-process worker thread for this app and return it."""
    worker = Worker(app)
    worker.start()
    return worker


@click.command("worker")
@with_appcontext
@click.option("--burst", is_flag=True, help="Run waiting jobs, then exit.")
def worker_command(burst):
    """Run jobs from the queue in this process (start several for more throughput).

    Example: flask --app app worker
    """
    app = current_app._get_current_object()
    data_dir = app.config["DATA_DIR"]
    click.echo(recordings.sweep(data_dir, get_db()).line(data_dir))
    if burst:
        click.echo(f"ran {drain(app)} job(s)")
        return
    worker = start_worker(app)
    click.echo(f"worker {worker_name()} running; Ctrl-C to stop")
    try:
        while worker.is_alive():
            worker.join(1)
    except KeyboardInterrupt:
        worker.stop()


@click.group("jobs", cls=AppGroup)
def jobs_group():
    """Look at and retry background jobs.

    Example: flask --app app jobs list --state dead
    """


@jobs_group.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "done", "dead"]))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def jobs_list(state, as_json):
    """List jobs, newest first.

    Example: flask --app app jobs list --state dead --json
    """
    db = get_db()
    where, params = ("state = ?", [state]) if state else (None, None)
    for row in db["jobs"].rows_where(where, params, order_by="id desc", limit=200):
        if as_json:
            click.echo(json.dumps(row))
        else:
            error = (row["last_error"] or "").splitlines()[:1]
            click.echo(
                f"{row['id']:>6} {row['state']:<8} {row['kind']:<12} "
                f"attempts {row['attempts']}/{row['max_attempts']} {' '.join(error)}"
            )


@jobs_group.command("retry")
@click.argument("job_id", type=int)
def jobs_retry(job_id):
    """Queue a dead job again.

    Example: flask --app app jobs retry 12
    """
    if not retry(get_db(), job_id):
        raise click.ClickException(f"job {job_id} is not in the dead letter")
    click.echo(f"job {job_id} queued again")


def init_app(app):
    """Give the app a wake-up signal for its worker and register the job commands."""
    app.extensions["carecall.jobs.wake"] = threading.Event()
    app.cli.add_command(worker_command)
    app.cli.add_command(jobs_group)
