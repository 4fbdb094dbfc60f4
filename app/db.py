"""The SQLite database: one handle per request, schema through named migrations."""

import sqlite3
from pathlib import Path

import click
from flask import current_app, g
from flask.cli import with_appcontext
from sqlite_utils import Database

from .migrations import migrations


def connect(path):
    """Open a sqlite-utils Database with CareCall's connection settings."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")
    return Database(conn)


def get_db():
    """Return this request's database handle, opening it on first use."""
    if "db" not in g:
        g.db = connect(current_app.config["DATABASE"])
    return g.db


def close_db(e=None):
    """Close this request's database handle if one was opened."""
    db = g.pop("db", None)
    if db is not None:
        db.close()


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
    """Register database teardown and the migrate command."""
    app.teardown_appcontext(close_db)
    app.cli.add_command(migrate_command)
