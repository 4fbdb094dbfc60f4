"""The phone line: Twilio's voice webhooks, signed, idempotent, and slow enough for everyone."""

import os
from datetime import date

import click
from flask import current_app
from flask.cli import AppGroup

from .. import jobs
from ..db import get_db
from . import media  # registers the download and reconcile jobs
from .views import bp

__all__ = ["bp", "init_app"]

DEFAULTS = {
    "TWILIO_ACCOUNT_SID": None,
    # Without it every webhook is refused: an unsigned phone line is an open door.
    "TWILIO_AUTH_TOKEN": None,
    "TWILIO_RECORDING_HOSTS": ["api.twilio.com"],
    "TWILIO_API_BASE_URL": "https://api.twilio.com",
    "TWILIO_DOWNLOAD_TIMEOUT": 3.0,
    "TWILIO_FETCH_ATTEMPTS": 6,
    "TWILIO_MAX_RECORDING_BYTES": 50 * 1024 * 1024,
    # The URL Twilio is configured with, when a TLS-terminating proxy sits in front of us.
    "PUBLIC_BASE_URL": None,
    "TRUST_FORWARDED_HEADERS": False,
    "EMERGENCY_NUMBER": "911",
    "COORDINATOR_NUMBER": None,
    "DUTY_COORDINATOR_NUMBER": None,
    "COORDINATOR_HOURS": [9, 17],
    "COORDINATOR_DAYS": [0, 1, 2, 3, 4],
    "COORDINATOR_TIMEZONE": "UTC",
    "RECORD_MAX_SECONDS": 120,
}


def _credentials(app):
    """Return whether the app can talk to the Twilio account."""
    return bool(app.config.get("TWILIO_ACCOUNT_SID") and app.config.get("TWILIO_AUTH_TOKEN"))


# Recover recordings no webhook delivered, every night, once Twilio credentials are set.
jobs.daily(media.RECONCILE, hour=3, payload={"days": 2}, enabled=_credentials)


def init_app(app):
    """Configure the phone line and register its webhooks and jobs."""
    for key in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        # Twilio's own variable names work too; CARECALL_-prefixed ones win.
        if not app.config.get(key) and os.environ.get(key):
            app.config[key] = os.environ[key]
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    app.register_blueprint(bp)
    app.cli.add_command(twilio_cli)


@click.group("twilio", cls=AppGroup)
def twilio_cli():
    """Look after the Twilio phone line.

    Example: flask --app app twilio reconcile --days 2
    """


@twilio_cli.command("reconcile")
@click.option("--days", default=2, show_default=True, help="How far back to look.")
def reconcile_command(days):
    """Queue a job that recovers account recordings no webhook delivered (run it nightly).

    Example: flask --app app twilio reconcile --days 2
    """
    if not current_app.config.get("TWILIO_AUTH_TOKEN"):
        raise click.ClickException("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set")
    day = date.today().isoformat()
    job = jobs.enqueue(get_db(), media.RECONCILE, {"days": days}, key=f"{media.RECONCILE}:{day}")
    click.echo(f"reconcile job {job} queued; a worker runs it")
