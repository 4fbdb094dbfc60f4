"""The SQLite database: one handle per request, schema through named migrations."""

import queue
import sqlite3
from pathlib import Path

import click
from flask import current_app, g
from flask.cli import with_appcontext
from sqlite_utils import Database
from werkzeug.routing import IntegerConverter

from .migrations import migrations
from .queue import MAX_ROW_ID

# Idle connections kept per app: opening one costs more than most requests' work.
POOL_SIZE = 16


class RowIdConverter(IntegerConverter):
    """Match an id in a URL only if it could name a row: 1 to 18 digits, no leading zero."""

    # Refused by the pattern, not after it: a rejected value then reads as a 404, not a 405.
    regex = rf"[1-9]\d{{0,{len(str(MAX_ROW_ID)) - 1}}}"


def connect(path):
    """Open a sqlite-utils Database with CareCall's connection settings."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Pooled connections move between request threads, one user at a time.
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")
    return Database(conn)


def get_db():
    """Return this request's database handle, reusing an idle one when there is one."""
    if "db" not in g:
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


def _pool():
    """Return the app's pool of idle database handles."""
    return current_app.extensions["carecall.db_pool"]


def migrate(path):
    """Apply pending migrations to the database at path; return the names applied."""
    db = connect(path)
    try:
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
        return pending
    finally:
        db.close()


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


def init_app(app):
    """Register database teardown, the migrate command and row ids in URLs."""
    # Every <int:...> in a route names a row, so out-of-range ids are a 404, never a crash.
    app.url_map.converters["int"] = RowIdConverter
    app.extensions["carecall.db_pool"] = queue.Queue(maxsize=POOL_SIZE)
    app.teardown_appcontext(close_db)
    app.cli.add_command(migrate_command)
