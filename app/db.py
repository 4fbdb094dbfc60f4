"""The SQLite database: one handle per request, schema through named migrations.

Writers wait for each other instead of failing: every write transaction takes the write
lock when it begins (``BEGIN IMMEDIATE``), so SQLite's busy timeout applies to it. A
deferred transaction that reads first and then writes would get "database is locked" at
once whenever another writer committed in between, whatever the busy timeout says.
"""

import contextlib
import queue
import random
import secrets
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from flask import current_app, g, has_app_context, has_request_context, jsonify, request
from flask.cli import with_appcontext
from sqlite_utils import Database
from werkzeug.exceptions import HTTPException, ServiceUnavailable
from werkzeug.routing import IntegerConverter

from . import settings
from .migrations import migrations
from .queue import MAX_ROW_ID, row_id

# Idle connections kept per app: opening one costs more than most requests' work.
POOL_SIZE = 16
# Taking the write lock is tried this many times (each waiting the busy timeout) before
# DatabaseBusy; a short random pause between tries keeps waiting writers from colliding.
LOCK_ATTEMPTS = 3
LOCK_PAUSE_SECONDS = (0.05, 0.25)
# SQLite's words for "another connection holds the lock" and "this file cannot be written".
BUSY_WORDS = ("database is locked", "database is busy", "database table is locked")
UNWRITABLE_WORDS = ("readonly database", "unable to open database file", "disk i/o error")
FULL_WORDS = ("database or disk is full",)


class RowIdConverter(IntegerConverter):
    """Match an id in a URL only if it could name a row: 1 to 18 digits, no leading zero."""

    # Refused by the pattern, not after it: a rejected value then reads as a 404, not a 405.
    regex = rf"[1-9]\d{{0,{len(str(MAX_ROW_ID)) - 1}}}"


class RowIdParam(click.ParamType):
    """A command-line id that could name a row: out of range is a usage error, not a crash."""

    name = "id"

    def convert(self, value, param, ctx):
        """Return value as a row id, or fail with click's usage message."""
        try:
            return row_id(value)
        except ValueError:
            self.fail(f"{value!r} is not an id (a whole number from 1 to {MAX_ROW_ID})", param, ctx)


ROW_ID = RowIdParam()


class DatabaseUnwritable(click.ClickException):
    """The database file or its folder cannot be written."""

    def __init__(self, path, reason):
        super().__init__(f"database {path} cannot be written: {reason}")
        self.path = path


class NotADatabase(DatabaseUnwritable):
    """The database path holds a file that is not SQLite: another file, or a damaged one."""

    def __init__(self, path, reason):
        click.ClickException.__init__(
            self,
            f"database {path} is damaged or not a SQLite database ({reason}); restore it "
            "from a backup or move it aside, or set CARECALL_DATABASE to another path",
        )
        self.path = path


class DatabaseBusy(sqlite3.OperationalError):
    """Another writer held the database lock through every wait and retry."""


class DatabaseFull(sqlite3.OperationalError):
    """The disk under the database has no room left, so nothing was saved."""


def is_busy(exc):
    """Return whether an SQLite error means another connection holds the lock."""
    return isinstance(exc, sqlite3.OperationalError) and _says(exc, BUSY_WORDS)


def is_unwritable(exc):
    """Return whether an SQLite error means the file or its folder cannot be written."""
    return isinstance(exc, sqlite3.OperationalError) and _says(exc, UNWRITABLE_WORDS)


def is_full(exc):
    """Return whether an SQLite error means the database's disk has no room left."""
    return isinstance(exc, DatabaseFull) or (
        isinstance(exc, sqlite3.OperationalError) and _says(exc, FULL_WORDS)
    )


def cannot_write(exc):
    """Return whether an error means the database cannot take a write now (busy, unwritable, full).

    Such an error is the database's state, not the request's: the same write may work later.
    """
    return isinstance(exc, DatabaseBusy) or is_busy(exc) or is_unwritable(exc) or is_full(exc)


def _says(exc, words):
    """Return whether an error's message contains one of words."""
    message = str(exc).lower()
    return any(word in message for word in words)


def retry_busy(step):
    """Run one locking step; when it stays busy, pause briefly and try again, a few times."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            if attempt == LOCK_ATTEMPTS:
                raise DatabaseBusy(
                    "The database stayed busy with other work, so this was not saved;"
                    " try again in a moment."
                ) from exc
            time.sleep(random.uniform(*LOCK_PAUSE_SECONDS))


class CareCallDatabase(Database):
    """A sqlite-utils Database whose write transactions take the write lock up front."""

    def __init__(self, conn):
        super().__init__(conn)
        # Undo steps for things done outside the database (a renamed file) during the
        # current transaction, run if it rolls back.
        self._undo = []

    @contextlib.contextmanager
    def atomic(self):
        """Run a block in one write transaction, or in a savepoint when one is open."""
        if self.conn.in_transaction:
            savepoint = f"sqlite_utils_{secrets.token_hex(16)}"
            self.conn.execute(f"SAVEPOINT {savepoint}")
            undo_before = len(self._undo)
            try:
                yield self
            except BaseException:
                # An error can destroy the whole transaction, savepoints included.
                if self.conn.in_transaction:
                    self.conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                    self.conn.execute(f"RELEASE SAVEPOINT {savepoint}")
                self._run_undo(undo_before)
                raise
            else:
                self.conn.execute(f"RELEASE SAVEPOINT {savepoint}")
            return
        self._begin()
        try:
            yield self
            self._commit()
        except BaseException as exc:
            self._abandon()
            if is_full(exc):
                raise DatabaseFull(
                    "There is no room left on the database's disk (CARECALL_DATABASE),"
                    " so this was not saved; try again later."
                ) from exc
            raise
        self._undo.clear()

    def on_rollback(self, undo):
        """Call undo() if the open transaction rolls back (to undo work outside the database)."""
        if not self.conn.in_transaction:
            raise RuntimeError("on_rollback needs an open transaction")
        self._undo.append(undo)

    def _begin(self):
        """Take the write lock, waiting the busy timeout, a few times with a pause between."""
        self._undo.clear()
        retry_busy(lambda: self.conn.execute("BEGIN IMMEDIATE"))

    def _commit(self):
        """Commit, retrying while busy: a failed COMMIT leaves the transaction open."""
        retry_busy(lambda: self.conn.execute("COMMIT"))

    def _abandon(self):
        """Roll back, then undo what was done outside the database."""
        self.rollback()
        self._run_undo(0)

    def _run_undo(self, start):
        """Run the undo steps registered since position start, newest first, and forget them."""
        undo, self._undo = self._undo[start:], self._undo[:start]
        for step in reversed(undo):
            step()


def write_if_free(db, sql, params=()):
    """Run one bookkeeping write only if the write lock is free now; return whether it ran.

    For notes like "token last used at" that must never hold up or fail the request they
    ride on: when another writer holds the lock, the note is skipped, not waited for.
    """
    if db.conn.in_transaction:
        with db.atomic():
            db.execute(sql, params)
        return True
    waits = db.conn.execute("PRAGMA busy_timeout").fetchone()[0]
    db.conn.execute("PRAGMA busy_timeout = 0")
    try:
        db.conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            return False
        raise
    finally:
        db.conn.execute(f"PRAGMA busy_timeout = {int(waits)}")
    try:
        db.execute(sql, params)
        db._commit()
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    return True


def note_use(db, table, column, row, last, *, every_seconds=60):
    """Note in row's column (an ISO 8601 time, last) when it was used: at most every minute.

    Skipped when another writer holds the lock (write_if_free): a read must not wait for,
    or fail on, the write lock only to say when a token or a kiosk was last seen.
    """
    at = datetime.now(UTC)
    recent = (at - timedelta(seconds=every_seconds)).isoformat(timespec="seconds")
    if last is not None and last > recent:
        return False
    stamp = at.isoformat(timespec="seconds")
    return write_if_free(db, f"UPDATE {table} SET {column} = ? WHERE id = ?", [stamp, row])


def connect(path, *, busy_timeout=None):
    """Open a CareCallDatabase with CareCall's connection settings.

    busy_timeout (seconds) defaults to the app's DB_BUSY_TIMEOUT_SECONDS setting.
    Raises DatabaseUnwritable when the file or its folder cannot be written.
    """
    if busy_timeout is None:
        busy_timeout = (
            current_app.config["DB_BUSY_TIMEOUT_SECONDS"]
            if has_app_context()
            else settings.BY_NAME["DB_BUSY_TIMEOUT_SECONDS"].default
        )
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # timeout is SQLite's busy timeout. Autocommit: no hidden deferred BEGIN, so
        # transactions are opened only by atomic(). Pooled connections move between
        # request threads, one user at a time.
        conn = sqlite3.connect(
            str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except OSError as exc:
        raise DatabaseUnwritable(path, exc.strerror or str(exc)) from exc
    except sqlite3.OperationalError as exc:
        if is_unwritable(exc):
            raise DatabaseUnwritable(path, str(exc)) from exc
        raise
    try:
        # Switching a new file to WAL needs it to itself; processes opening it together wait
        # their turn, and the busy handler does not always do that for this pragma.
        retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError as exc:
        conn.close()
        if is_unwritable(exc):
            raise DatabaseUnwritable(path, str(exc)) from exc
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise NotADatabase(path, str(exc)) from exc
    return CareCallDatabase(conn)


def get_db():
    """Return this request's database handle, reusing an idle one when there is one."""
    if "db" not in g:
        if not has_request_context():
            _migrate_once()
        try:
            g.db = _pool().get_nowait()
        except queue.Empty:
            g.db = connect(current_app.config["DATABASE"])
    return g.db


def close_db(e=None):
    """Give this request's database handle back to the pool, or close it if the pool is full."""
    db = g.pop("db", None)
    if db is None:
        return
    if db.conn.in_transaction:
        db.conn.rollback()
    try:
        _pool().put_nowait(db)
    except queue.Full:
        db.close()


def _migrate_once():
    """Bring the schema up to date once per app before a command or worker first writes.

    Without it, a command run on a brand-new database (`flask tokens create` before the
    first `serve`) lets sqlite-utils create tables outside the migrations, and the next
    start-up fails on "table already exists". A database already up to date is only read,
    so a command that reads (`tokens list`) still works on a file that cannot be written.
    """
    app = current_app._get_current_object()
    if not app.extensions.get("carecall.db_migrated"):
        db = connect(app.config["DATABASE"])
        try:
            pending = pending_names(db, app.config["DATABASE"])
        finally:
            db.close()
        if pending:
            migrate(app.config["DATABASE"])
        app.extensions["carecall.db_migrated"] = True


def _pool():
    """Return the app's pool of idle database handles."""
    return current_app.extensions["carecall.db_pool"]


def migrate(path):
    """Apply pending migrations to the database at path; return the names applied.

    Raises DatabaseUnwritable, naming the path, when the database cannot be written.
    """
    db = connect(path)
    try:
        # A damaged file is found by reading, before anything is written to it.
        pending_names(db, path)
        # Found out now, in one line, rather than by the first request that saves something.
        check_writable(db, path)
        # One transaction holds the write lock throughout: a second process starting at the
        # same moment waits, then finds nothing pending, instead of applying them again.
        with db.atomic():
            pending = pending_names(db, path)
            migrations.apply(db)
        return pending
    finally:
        db.close()


def pending_names(db, path):
    """Return the names of migrations not yet applied; NotADatabase when the file is damaged."""
    try:
        return [m.name for m in migrations.pending(db)]
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as exc:
        raise NotADatabase(path, str(exc)) from exc


def check_writable(db, path):
    """Raise DatabaseUnwritable unless a write transaction can begin and be journalled."""
    try:
        with db.atomic():
            db.execute("CREATE TABLE IF NOT EXISTS _carecall_write_check (x)")
            db.execute("DROP TABLE _carecall_write_check")
    except sqlite3.OperationalError as exc:
        if is_unwritable(exc):
            raise DatabaseUnwritable(path, str(exc)) from exc
        raise


@click.command("migrate")
@with_appcontext
def migrate_command():
    """Apply pending database migrations.

    Example: flask --app app migrate
    """
    applied = migrate(current_app.config["DATABASE"])
    for name in applied:
        click.echo(f"applied {name}")
    click.echo(f"database {current_app.config['DATABASE']} is up to date")


def busy_error(error):
    """Answer a database that stayed locked as 503, to be tried again, not as a crash."""
    headers = {"Retry-After": "2"}
    if request.path.startswith("/api/"):
        return jsonify(error="busy", message=str(error)), 503, headers
    return ServiceUnavailable(str(error)).get_response(), headers


class InsufficientStorage(HTTPException):
    """HTTP 507: the server has no room to store what was sent (werkzeug has no class for it)."""

    code = 507
    description = "There is no room left to save this."


def full_error(error):
    """Answer a database whose disk is full as 507, to be tried again once there is room."""
    message = (
        "There is no room left on the database's disk (CARECALL_DATABASE),"
        " so nothing was saved; try again later."
    )
    headers = {"Retry-After": "60"}
    if request.path.startswith("/api/"):
        return jsonify(error="storage_full", message=message), 507, headers
    return InsufficientStorage(message).get_response(), headers


def lock_error(error):
    """Answer a locked or full database escaping a view as 503 or 507; re-raise anything else."""
    # Registered on a blueprint, this is found before the app's DatabaseBusy handler.
    if isinstance(error, DatabaseBusy):
        return busy_error(error)
    if is_busy(error):
        return busy_error(DatabaseBusy("The database is busy with other work; try again."))
    if is_full(error):
        return full_error(error)
    raise error


def init_app(app):
    """Register database teardown, the migrate command, row ids in URLs and the busy answer."""
    # Every <int:...> in a route names a row, so out-of-range ids are a 404, never a crash.
    app.url_map.converters["int"] = RowIdConverter
    app.extensions["carecall.db_pool"] = queue.Queue(maxsize=POOL_SIZE)
    app.teardown_appcontext(close_db)
    app.register_error_handler(DatabaseBusy, busy_error)
    app.register_error_handler(DatabaseFull, full_error)
    app.cli.add_command(migrate_command)
