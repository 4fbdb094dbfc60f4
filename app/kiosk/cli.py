"""Coordinators' commands for kiosk tablets: register one, list them, revoke one."""

import json

import click
from flask import current_app
from flask.cli import AppGroup

from ..accounts import cli_actor
from ..db import get_db
from . import devices


@click.group("kiosks", cls=AppGroup)
def kiosks_cli():
    """Register, list and revoke kiosk tablets.

    Example: flask --app app kiosks add "Riverside Centre" --region riverside
    """


@kiosks_cli.command("add")
@click.argument("name")
@click.option("--region", required=True, help="Region stamped on the kiosk's requests.")
@click.option("--language", default=None, help="Page language, e.g. en (default: the app's).")
@click.option("--json", "as_json", is_flag=True, help="Print the kiosk and token as JSON.")
def add_command(name, region, language, as_json):
    """Register a kiosk tablet and print its token (shown only this once).

    Example: flask --app app kiosks add "Riverside Centre" --region riverside
    """
    # A kiosk in a language nobody can transcribe would fail every request it sends.
    languages = current_app.config["SPEECH_ENGINES"]
    if language is not None and language not in languages:
        raise click.UsageError(
            f"--language {language!r} has no speech engine; use one of {', '.join(languages)}"
        )
    try:
        kiosk, token = devices.add(
            get_db(), name, region=region, language=language, actor=cli_actor()
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(kiosk.to_dict() | {"token": token}, ensure_ascii=False))
        return
    click.echo(f"kiosk {kiosk.id}: {kiosk.name} (region {kiosk.region})")
    click.echo(f"token: {token}")
    click.echo(f"open once on the tablet: /kiosk?token={token}")
    click.echo("The token is not stored and cannot be shown again.")


@kiosks_cli.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked kiosks.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per kiosk.")
def list_command(include_revoked, as_json):
    """List registered kiosks (never their tokens).

    Example: flask --app app kiosks list --all
    """
    for kiosk in devices.listing(get_db(), include_revoked=include_revoked):
        if as_json:
            click.echo(json.dumps(kiosk.to_dict(), ensure_ascii=False))
            continue
        state = f"revoked {kiosk.revoked_at}" if kiosk.revoked_at else "active"
        seen = kiosk.last_seen_at or "never"
        click.echo(
            f"{kiosk.id:>4}  {kiosk.name:<28} {kiosk.region:<16} {kiosk.token_hint}…  "
            f"{state}, last seen {seen}"
        )


@kiosks_cli.command("revoke")
@click.argument("kiosk")
def revoke_command(kiosk):
    """Revoke a kiosk's token, by id or exact name; its requests stay in the queue.

    Example: flask --app app kiosks revoke 3
    """
    db = get_db()
    try:
        found = devices.revoke(db, devices.find(db, kiosk).id, actor=cli_actor())
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"kiosk {found.id} ({found.name}) revoked at {found.revoked_at}")
