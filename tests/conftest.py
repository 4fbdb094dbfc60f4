"""Shared fixtures: a fresh app with its own database and data directory per test."""

import json
from pathlib import Path

import pytest

from app import create_app
from app.db import connect, migrate
from tests.twilio_fake import media_server, rest_server, twilio_for


@pytest.fixture
def make_app(tmp_path):
    """Return a builder of apps on a temporary database, migrated, with no background worker."""

    def build(**overrides):
        app = create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "test-secret-key-0123456789",
                "DATABASE": str(tmp_path / "carecall.db"),
                "DATA_DIR": str(tmp_path / "data"),
                "OUTBOX_DIR": str(tmp_path / "outbox"),
                "WORKER": "none",
                # The tests install Korean too (scripts/test), and cover it beside English.
                "SPEECH_ENGINES": {"en": "whisper:whisper-tiny-en", "ko": "vosk:vosk-ko"},
                "JOB_BACKOFF_SECONDS": 0.0,
                **overrides,
            }
        )
        migrate(app.config["DATABASE"])
        return app

    return build


@pytest.fixture
def app(make_app):
    """Build the default test app."""
    return make_app()


@pytest.fixture
def db(app):
    """Open the test app's database."""
    database = connect(app.config["DATABASE"])
    yield database
    database.close()


@pytest.fixture
def rest():
    """Serve Twilio's REST API for messages and calls on loopback."""
    with rest_server() as server:
        yield server


@pytest.fixture
def client(app):
    """Return a test client for the app."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """Return a CLI runner for the app."""
    return app.test_cli_runner()


@pytest.fixture
def media():
    """Serve recordings the way Twilio's media endpoint does."""
    with media_server() as server:
        yield server


@pytest.fixture
def twilio(app, media):
    """Return Twilio calling the test app."""
    return twilio_for(app, media)


MODELS = Path(__file__).resolve().parent.parent / "speech_models"


@pytest.fixture
def models_dir(tmp_path):
    """Return a builder of a models folder: {name: "installed", "truncated" or "missing"}.

    Installed models are links to the real ones; a truncated one links the real files except
    its largest (Whisper's model.bin), cut to 1 MiB as an interrupted copy leaves it.
    """

    def build(states):
        folder = tmp_path / "models"
        folder.mkdir(exist_ok=True)
        for name, state in states.items():
            real = MODELS / name
            if state == "installed":
                (folder / name).symlink_to(real.resolve(), target_is_directory=True)
            elif state == "truncated":
                broken = folder / name
                broken.mkdir()
                record = json.loads((real / ".carecall-model.json").read_text())
                (broken / ".carecall-model.json").write_text(json.dumps(record))
                largest = max(record["files"], key=lambda rel: record["files"][rel]["size"])
                for rel in record["files"]:
                    target = broken / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if rel == largest:
                        with open(real / rel, "rb") as whole:
                            target.write_bytes(whole.read(1 << 20))
                    else:
                        target.symlink_to((real / rel).resolve())
            elif state != "missing":
                raise ValueError(f"model state {state!r}")
        return str(folder)

    return build
