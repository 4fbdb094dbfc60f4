"""Whether CareCall can do its work now: a writable database, loadable models, a live worker.

Each problem is one line naming the setting to look at, so the same words serve /readyz,
the details of /healthz, and the warnings `flask serve` and `flask worker` print at start-up.
"""

import os
import sqlite3
import tempfile
import time
from pathlib import Path

from . import jobs, pipeline, settings, textmodel

PROBE = "readiness probe"
# A probe writes this much: an empty file fits on a full disk (it needs no data block).
PROBE_BYTES = 4096


def problems(app, db):
    """Return why CareCall cannot do all its work now, one line each; empty when ready."""
    return [
        *database_problems(app, db),
        *storage_problems(app),
        *model_problems(app),
        *worker_problems(app, db),
    ]


def storage_problems(app):
    """Return a line per folder CareCall must write (DATA_DIR, the database's) that it cannot."""
    found = []
    data_dir = Path(app.config["DATA_DIR"])
    if problem := write_problem(data_dir):
        found.append(f"{settings.PREFIX}DATA_DIR={data_dir}: cannot save recordings: {problem}")
    # The database's own write probe rolls back before SQLite needs a page of disk.
    database = Path(app.config["DATABASE"])
    if problem := write_problem(database.parent):
        found.append(f"{settings.PREFIX}DATABASE={database}: cannot save requests: {problem}")
    return found


def write_problem(folder):
    """Return why a small file cannot be written durably in folder (or be made), else None."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".carecall-probe-", dir=folder)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def database_problems(app, db):
    """Return a line if the database cannot be written (read-only, full, locked)."""
    try:
        # Only a real write finds a read-only file: BEGIN IMMEDIATE alone succeeds on one.
        db.execute("BEGIN IMMEDIATE")
        try:
            jobs.register(db, PROBE, PROBE)
        finally:
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        if db.conn.in_transaction:
            db.conn.rollback()
        return [f"{settings.PREFIX}DATABASE: cannot write to the database: {exc}"]
    return []


def model_problems(app):
    """Return a line per configured language whose speech model cannot be used."""
    engines = app.config["SPEECH_ENGINES"]
    return [
        f"{settings.PREFIX}SPEECH_ENGINES: {language}={engines[language]}: {problem}"
        for language, problem in pipeline.speech_service(app).problems().items()
    ]


def text_model_problems(app):
    """Return a line per reason requests are classified by the rules alone."""
    name = app.config["TEXT_MODEL"]
    found = textmodel.text_models(app).problems([app.config["DEFAULT_LANGUAGE"]])
    return [
        f"{settings.PREFIX}TEXT_MODEL={name}: {_whose(what)}{problem.rstrip('.')}; "
        "classifying by the rules alone"
        for what, problem in found.items()
    ]


def _whose(what):
    """Return how a text model problem is introduced: the models', or a language's weights."""
    return "" if what == "model" else f"{what} weights: "


def worker_problems(app, db, now=None):
    """Return a line if no worker has beaten lately, so queued recordings would wait."""
    beat = app.config["WORKER_HEARTBEAT_SECONDS"]
    try:
        if jobs.live_workers(db, beat, now):
            return []
    except sqlite3.Error as exc:
        return [f"{settings.PREFIX}WORKER={app.config['WORKER']}: cannot read workers: {exc}"]
    silent = f"no job worker has reported in the last {jobs.STALE_HEARTBEATS * beat:g} s"
    if app.config["WORKER"] == "none":
        return [f"{settings.PREFIX}WORKER=none: {silent}; start one: flask --app app worker"]
    return [f"{settings.PREFIX}WORKER=inprocess: {silent}; is `flask --app app serve` running?"]


def dead_job_problems(db):
    """Return a line if jobs wait in the dead letter: work nobody will retry on its own."""
    dead = dict(db.execute("SELECT kind, count(*) FROM jobs WHERE state = 'dead' GROUP BY kind"))
    if not dead:
        return []
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(dead.items()))
    return [
        f"{sum(dead.values())} dead job(s) ({kinds}): see flask --app app jobs list --state dead,"
        " retry with flask --app app jobs retry ID"
    ]


def staff_problems(app):
    """Return lines about settings that leave callers short of a person, though all else works."""
    if app.config.get("COORDINATOR_NUMBER"):
        return []
    return [
        f"{settings.PREFIX}COORDINATOR_NUMBER is not set: every menu offers 0 for a person,"
        " but callers who press it always reach voicemail"
    ]


def startup_warnings(app, *, worker=False):
    """Return the one-line warnings `serve` (or `worker`) prints before it starts."""
    from .db import connect

    db = connect(app.config["DATABASE"])
    try:
        found = [
            *database_problems(app, db),
            *storage_problems(app),
            *model_problems(app),
            *text_model_problems(app),
        ]
        if not worker and app.config["WORKER"] == "none":
            found += worker_problems(app, db, time.time())
        if not worker:
            found += staff_problems(app)
    finally:
        db.close()
    return [f"warning: {line}" for line in found]
