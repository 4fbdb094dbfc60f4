"""Shared fixtures: a fresh app with its own database and data directory per test."""

import pytest

from app import create_app
from app.db import connect, migrate
from tests.twilio_fake import media_server, twilio_for


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
