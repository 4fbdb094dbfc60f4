"""CareCall: voice requests for volunteer help, from a senior's words to a coordinator's queue."""

import os
import secrets
from pathlib import Path

from flask import Flask

from . import jsontext, settings

# Model weights load only from local directories; a hub download at run time is a bug.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Extensions read their own keys from app.config (Flask-WTF: WTF_CSRF_ENABLED...).
FLASK_EXTENSION_PREFIXES = ("WTF_",)


def create_app(test_config=None):
    """Create and configure a CareCall application."""
    app = Flask(__name__, instance_relative_config=True)
    # Every JSON body is read bounded: a deeply nested one is a 400, not a RecursionError.
    app.json = jsontext.JSONProvider(app)
    instance = Path(app.instance_path)
    loaded = settings.load(os.environ, test_config, instance=instance, repo=REPO_ROOT)
    app.config.update(loaded.values)
    # Flask's own keys (TESTING, SERVER_NAME...) may come from code; anything else is a typo.
    for key, value in (test_config or {}).items():
        if key not in settings.BY_NAME:
            if key not in app.config and not key.startswith(FLASK_EXTENSION_PREFIXES):
                raise settings.SettingsError(f"{key} is not a CareCall or Flask setting")
            app.config[key] = value
    instance.mkdir(parents=True, exist_ok=True)
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _instance_secret(instance / "secret_key")
        loaded.sources["SECRET_KEY"] = "instance/secret_key"
    app.extensions["carecall.settings"] = loaded
    app.cli.add_command(settings.settings_command)

    from . import accounts, cli, console, db, jobs, kiosk, pipeline, security, telephony, web

    # The rooms of the house: storage and jobs first, then each way in, then the guards.
    for room in (db, jobs, pipeline, cli, accounts, telephony, kiosk, console):
        room.init_app(app)
    # Volunteers, people served, the outbox of offers and the ledger of hours: their
    # commands (their API and pages are part of the console's).
    from . import ledger, outbox, people

    people.init_app(app)
    outbox.init_app(app)
    ledger.init_app(app)
    app.register_blueprint(web.bp)
    # Last: CSRF exemptions name blueprints, so every blueprint must be registered by now.
    security.init_app(app)
    return app


def _instance_secret(path):
    """Return the instance's persistent secret key, creating it on first use."""
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()
