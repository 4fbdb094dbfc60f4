"""CareCall: voice requests for volunteer help, from a senior's words to a coordinator's queue."""

import os
import secrets
from pathlib import Path

from flask import Flask

# Model weights load only from local directories; a hub download at run time is a bug.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config=None):
    """Create and configure a CareCall application."""
    app = Flask(__name__, instance_relative_config=True)
    instance = Path(app.instance_path)
    app.config.from_mapping(
        DATABASE=str(instance / "carecall.db"),
        DATA_DIR=str(instance / "data"),
        MODELS_DIR=str(REPO_ROOT / "speech_models"),
        FLOWS_DIR=str(REPO_ROOT / "ivr_flows"),
        # Engine per language: "engine:model-name" from speech_models/models.toml.
        SPEECH_ENGINES={"en": "whisper:whisper-tiny-en", "ko": "vosk:vosk-ko"},
        DEFAULT_LANGUAGE="en",
        MAX_AUDIO_SECONDS=600,
        # Below this a transcript is not read back word by word; a person listens.
        REVIEW_CONFIDENCE=0.6,
        WORKER="inprocess",
        JOB_LEASE_SECONDS=300,
        JOB_MAX_ATTEMPTS=5,
        JOB_BACKOFF_SECONDS=2.0,
        JOB_POLL_SECONDS=0.2,
        OUTBOX_DIR=str(instance / "outbox"),
        # Forms and webhooks are small; the kiosk upload API sets its own, larger ceiling.
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.config.from_prefixed_env("CARECALL")
    if test_config is not None:
        app.config.from_mapping(test_config)
    instance.mkdir(parents=True, exist_ok=True)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(instance / "secret_key")

    from . import accounts, cli, console, db, jobs, kiosk, pipeline, security, telephony, web

    # The rooms of the house: storage and jobs first, then each way in, then the guards.
    for room in (db, jobs, pipeline, cli, accounts, telephony, kiosk, console):
        room.init_app(app)
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
