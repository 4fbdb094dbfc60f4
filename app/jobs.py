"""A durable job queue in SQLite: leases, retries with back-off, and a visible dead letter."""

import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import click
from flask import current_app, has_app_context
from flask.cli import AppGroup, with_appcontext

from . import processes, recordings
from .db import ROW_ID, connect, get_db, migrate

log = logging.getLogger(__name__)

# kind -> Handler (what runs inside an app context, and what runs when it dies); filled by @handler.
HANDLERS = {}
# Jobs queued once a day or once a period by any running worker; filled by daily() and every().
SCHEDULE = []
MAX_BACKOFF_SECONDS = 300.0
# A worker silent for this many heartbeats is taken for dead, and its jobs are taken over.
STALE_HEARTBEATS = 3
SCHEDULE_CHECK_SECONDS = 60.0
# Rows of workers silent this long, holding no job, are removed when another worker starts.
FORGET_WORKER_SECONDS = 86400.0


class UnknownJobKind(LookupError):
    """No handler is registered for this kind of job."""


class PermanentError(Exception):
    """A job failed in a way no retry can mend: it goes to the dead letter at once."""


@dataclass(frozen=True)
class Handler:
    """What a kind of job runs, what runs when it dies, and which errors no retry mends."""

    run: Callable
    on_dead: Callable | None = None
    permanent: tuple = ()

    def is_permanent(self, exc):
        """Return whether exc is an error that retrying cannot fix."""
        return isinstance(exc, (PermanentError, *self.permanent))


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

    def due(self, now):
        """Return whether today's job may be queued at now."""
        return now.hour >= self.hour

    def key_at(self, now):
        """Return the idempotency key of the job due at now."""
        return self.key(now.date())


@dataclass(frozen=True)
class Every:
    """A job to queue once in each period of seconds (counted from the epoch) while enabled."""

    kind: str
    seconds: float
    payload: dict
    enabled: Callable

    def due(self, now):
        """Return True: a period's job is due as soon as the period begins."""
        return True

    def key_at(self, now):
        """Return the idempotency key that makes it one job per period, however many workers."""
        return f"{self.kind}:{int(now.timestamp() // self.seconds)}"


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


def handler(kind, on_dead=None, permanent=()):
    """Register a function as the handler for one kind of job.

    on_dead(db, payload, reason) runs in the transaction that buries the job, so whatever
    the job was for is marked as failed exactly when the job is. Errors of the permanent
    classes (and PermanentError) bury the job at once instead of retrying it.
    """

    def register(fn):
        HANDLERS[kind] = Handler(fn, on_dead, tuple(permanent))
        return fn

    return register


def daily(kind, *, hour, payload=None, enabled=lambda app: True):
    """Schedule a kind of job to be queued once a day from hour (UTC) on."""
    SCHEDULE.append(Daily(kind, hour, payload or {}, enabled))


def every(kind, *, seconds, payload=None, enabled=lambda app: True):
    """Schedule a kind of job to be queued once in every period of seconds."""
    SCHEDULE.append(Every(kind, seconds, payload or {}, enabled))


def enqueue_due(app, db, now=None):
    """Queue the scheduled jobs whose time has come (once per day or period); return their ids."""
    now = now or datetime.now(UTC)
    return [
        enqueue(db, entry.kind, entry.payload, key=entry.key_at(now))
        for entry in SCHEDULE
        if entry.due(now) and entry.enabled(app)
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


def claim(db, worker, lease_seconds, now=None, *, heartbeat_seconds=None):
    """Lease the most urgent runnable job to a worker, or return None.

    A running job is taken over when its lease has expired, or at once when its worker has
    stopped beating (heartbeat_seconds given): a killed worker's job waits seconds, not the lease.
    """
    now = time.time() if now is None else now
    # Heartbeats older than this belong to a dead worker; 0 matches none.
    stale = now - STALE_HEARTBEATS * heartbeat_seconds if heartbeat_seconds else 0
    # One UPDATE ... RETURNING is atomic across threads and processes sharing the file.
    with db.atomic():
        cursor = db.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?,"
            " worker = ?, updated_at = ? WHERE id = ("
            "  SELECT id FROM jobs WHERE (state = 'queued' AND run_after <= ?)"
            "  OR (state = 'running' AND (lease_until < ? OR worker IN"
            "   (SELECT name FROM workers WHERE heartbeat_at < ?)))"
            "  ORDER BY priority DESC, run_after, id LIMIT 1"
            ") RETURNING *",
            [now + lease_seconds, worker, now, now, now, stale],
        )
        row = cursor.fetchone()
        columns = [c[0] for c in cursor.description]
    if row is None:
        return None
    job = Job.from_row(dict(zip(columns, row, strict=True)))
    if job.attempts > job.max_attempts:
        # It was leased max_attempts times and never finished: the worker keeps dying on it.
        bury(
            db,
            job,
            "worker stopped while running this job, every attempt",
            reason=f"the worker stopped while running it, {job.max_attempts} times",
        )
        return claim(db, worker, lease_seconds, now, heartbeat_seconds=heartbeat_seconds)
    return job


def complete(db, job):
    """Mark a job done."""
    db.execute(
        "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = ?"
        " WHERE id = ?",
        [time.time(), job.id],
    )


def fail(db, job, error, backoff_seconds, *, permanent=False, reason=None):
    """Record a failed attempt: queue a retry after a back-off, or bury it as dead.

    A permanent failure is buried at once; reason is the one line a person is shown.
    """
    now = time.time()
    if permanent or job.attempts >= job.max_attempts:
        bury(db, job, error, reason=reason)
        return "dead"
    delay = min(backoff_seconds * 2 ** (job.attempts - 1), MAX_BACKOFF_SECONDS)
    db.execute(
        "UPDATE jobs SET state = 'queued', run_after = ?, lease_until = NULL, last_error = ?,"
        " updated_at = ? WHERE id = ?",
        [now + delay, error, now, job.id],
    )
    return "queued"


def bury(db, job, error, *, reason=None):
    """Move a job to the dead letter and run its on_dead in the same transaction."""
    entry = HANDLERS.get(job.kind)
    reason = reason or error.splitlines()[0]
    try:
        with db.atomic():
            _mark_dead(db, job.id, error)
            if entry is not None and entry.on_dead is not None:
                entry.on_dead(db, job.payload, reason)
    except Exception:
        # The job itself must still reach the dead letter, where a person will see it.
        log.exception("on_dead of job %s (%s) failed", job.id, job.kind)
        _mark_dead(db, job.id, f"{error}\non_dead failed:\n{traceback.format_exc(limit=3)}")
    log.error("job %s (%s) is dead: %s", job.id, job.kind, reason)


def _mark_dead(db, job_id, error):
    """Set a job's state to dead, keeping its last error for a person to read."""
    db.execute(
        "UPDATE jobs SET state = 'dead', lease_until = NULL, last_error = ?, updated_at = ?"
        " WHERE id = ?",
        [error, time.time(), job_id],
    )


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
    config = app.config
    with app.app_context():
        db = get_db()
        job = claim(
            db,
            worker,
            config["JOB_LEASE_SECONDS"],
            heartbeat_seconds=config["WORKER_HEARTBEAT_SECONDS"],
        )
        if job is None:
            return False
        entry = HANDLERS.get(job.kind)
        try:
            if entry is None:
                raise UnknownJobKind(f"no handler for job kind {job.kind!r}")
            entry.run(job.payload)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            permanent = entry is not None and entry.is_permanent(exc)
            if permanent:
                reason = str(exc) or type(exc).__name__
            else:
                reason = f"gave up after {job.attempts} attempts: {type(exc).__name__}: {exc}"
            state = fail(
                db, job, error, config["JOB_BACKOFF_SECONDS"], permanent=permanent, reason=reason
            )
            log.warning("job %s (%s) failed, now %s: %s", job.id, job.kind, state, exc)
        else:
            complete(db, job)
        return True


def drain(app, worker=None, max_jobs=None):
    """Run runnable jobs until none is left (or max_jobs ran); return how many ran."""
    worker = worker or worker_name()
    count = 0
    # Registered like any worker, so nobody takes its job over while it is alive.
    with Heartbeat(app, worker, "drain"):
        while (max_jobs is None or count < max_jobs) and run_one(app, worker):
            count += 1
    return count


def register(db, name, kind, now=None):
    """Add (or refresh) a worker's row, forgetting long-silent workers that hold no job.

    A worker of this host whose process is gone (a restart after kill -9) is marked silent
    at once, so its job is taken over now rather than after three missed beats.
    """
    now = time.time() if now is None else now
    host = socket.gethostname()
    with db.atomic():
        db.execute(
            "DELETE FROM workers WHERE heartbeat_at < ? AND name NOT IN"
            " (SELECT worker FROM jobs WHERE state = 'running' AND worker IS NOT NULL)",
            [now - FORGET_WORKER_SECONDS],
        )
        neighbours = db.execute(
            "SELECT name, pid FROM workers WHERE host = ? AND pid != ? AND heartbeat_at > 0",
            [host, os.getpid()],
        ).fetchall()
        for neighbour, pid in neighbours:
            if not processes.alive(pid):
                db.execute("UPDATE workers SET heartbeat_at = 0 WHERE name = ?", [neighbour])
        db.execute(
            "INSERT INTO workers (name, kind, host, pid, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            [name, kind, host, os.getpid(), now, now],
        )


def beat(db, name, now=None):
    """Record that a worker is alive."""
    db.execute(
        "UPDATE workers SET heartbeat_at = ? WHERE name = ?",
        [time.time() if now is None else now, name],
    )


def unregister(db, name):
    """Remove a worker that stops cleanly."""
    db.execute("DELETE FROM workers WHERE name = ?", [name])


def live_workers(db, heartbeat_seconds, now=None):
    """Return the names of workers whose heartbeat is fresh."""
    now = time.time() if now is None else now
    rows = db.execute(
        "SELECT name FROM workers WHERE heartbeat_at >= ? ORDER BY name",
        [now - STALE_HEARTBEATS * heartbeat_seconds],
    ).fetchall()
    return [row[0] for row in rows]


class Heartbeat:
    """A worker's row in the workers table, kept fresh from its own thread while it runs."""

    def __init__(self, app, name, kind):
        self.database = app.config["DATABASE"]
        self.interval = app.config["WORKER_HEARTBEAT_SECONDS"]
        self.name = name
        self.kind = kind
        self.stopped = threading.Event()
        self.thread = None
        self.db = None

    def __enter__(self):
        # Its own connection: a beat must not wait behind the job's transaction.
        self.db = connect(self.database)
        register(self.db, self.name, self.kind)
        self.thread = threading.Thread(target=self._beat, name="carecall-heartbeat", daemon=True)
        self.thread.start()
        return self

    def _beat(self):
        """Beat until stopped; a missed beat (a busy database) is only logged."""
        while not self.stopped.wait(self.interval):
            try:
                beat(self.db, self.name)
            except sqlite3.Error as exc:
                log.warning("worker %s missed a heartbeat: %s", self.name, exc)

    def __exit__(self, *exc_info):
        self.stopped.set()
        self.thread.join()
        try:
            unregister(self.db, self.name)
        finally:
            self.db.close()


def worker_name(label=None):
    """Name a worker after its host, process and thread (or label), unique even across restarts.

    The random part matters: a restarted container may give the new worker the dead one's
    process id, and the dead one's job must not look like the new one's.
    """
    label = label or threading.get_ident()
    return f"{socket.gethostname()}:{os.getpid()}:{label}:{secrets.token_hex(3)}"


def wake():
    """Tell this process's in-process worker that a job is waiting."""
    if has_app_context():
        event = current_app.extensions.get("carecall.jobs.wake")
        if event is not None:
            event.set()


class Worker(threading.Thread):
    """Runs jobs in a background thread of this process until stopped."""

    def __init__(self, app, kind="serve"):
        super().__init__(name="carecall-worker", daemon=True)
        self.app = app
        self.kind = kind
        # Named before it starts, so the name printed is the one its jobs and heartbeat carry.
        self.worker = worker_name(kind)
        self.stopping = threading.Event()
        self.wakeup = app.extensions["carecall.jobs.wake"]

    def run(self):
        """Run jobs, sleeping until woken or the poll interval passes."""
        name = self.worker
        while not self.stopping.is_set():
            try:
                with Heartbeat(self.app, name, self.kind):
                    self._loop(name)
            except sqlite3.Error:
                # Registering can meet a locked database; a worker must not die of it.
                log.exception("worker %s could not register; trying again", name)
                self.stopping.wait(self.app.config["JOB_POLL_SECONDS"])

    def _loop(self, name):
        """Run jobs until stopped."""
        next_schedule_check = 0.0
        # Start-up has just swept; later sweeps catch what a killed upload leaves meanwhile.
        next_sweep = time.monotonic() + self.app.config["DATA_SWEEP_SECONDS"]
        while not self.stopping.is_set():
            try:
                if time.monotonic() >= next_schedule_check:
                    next_schedule_check = time.monotonic() + SCHEDULE_CHECK_SECONDS
                    with self.app.app_context():
                        enqueue_due(self.app, get_db())
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.app.config["DATA_SWEEP_SECONDS"]
                    self._sweep()
                ran = run_one(self.app, name)
            except Exception:
                log.exception("worker loop error; continuing")
                ran = False
            if not ran:
                self.wakeup.wait(self.app.config["JOB_POLL_SECONDS"])
                self.wakeup.clear()

    def _sweep(self):
        """Sweep the data directory: .part files whose writer died, recordings nobody claims."""
        data_dir = self.app.config["DATA_DIR"]
        with self.app.app_context():
            swept = recordings.sweep(data_dir, get_db())
        if swept.parts_removed or swept.orphans_moved:
            log.warning("%s", swept.line(data_dir))

    def stop(self, timeout=10):
        """Stop after the current job finishes."""
        self.stopping.set()
        self.wakeup.set()
        self.join(timeout)


def start_worker(app, kind="serve"):
    """Start a worker thread for this app and return it."""
    worker = Worker(app, kind)
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
    # The worker registers itself in the workers table, which an older database lacks.
    migrate(app.config["DATABASE"])
    data_dir = app.config["DATA_DIR"]
    click.echo(recordings.sweep(data_dir, get_db()).line(data_dir))
    from .health import startup_warnings

    for line in startup_warnings(app, worker=True):
        click.echo(line, err=True)
    if burst:
        click.echo(f"ran {drain(app)} job(s)")
        return
    # A service manager stops us with SIGTERM: finish the job in hand and sign off cleanly.
    # The handler is in place before the worker registers, so even an early SIGTERM is clean.
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.set())
    worker = start_worker(app, "worker")
    click.echo(f"worker {worker.worker} running; Ctrl-C to stop")
    try:
        while worker.is_alive():
            if terminated.wait(1):
                worker.stop(timeout=0)
                worker.join()
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
@click.argument("job_id", type=ROW_ID)
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
