"""The phone line: Twilio's voice webhooks, signed, idempotent, and slow enough for everyone."""

from datetime import date

import click
from flask import current_app
from flask.cli import AppGroup

from .. import jobs
from ..db import get_db
from . import media, sms  # media registers the download and reconcile jobs
from .views import bp

__all__ = ["bp", "init_app"]


def _credentials(app):
    """Return whether the app can talk to the Twilio account."""
    return bool(app.config.get("TWILIO_ACCOUNT_SID") and app.config.get("TWILIO_AUTH_TOKEN"))


# Recover recordings no webhook delivered, every night, once Twilio credentials are set.
jobs.daily(media.RECONCILE, hour=3, payload={"days": 2}, enabled=_credentials)


def init_app(app):
    """Register the phone line's webhooks and commands."""
    app.register_blueprint(bp)
    app.register_blueprint(sms.bp)
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
