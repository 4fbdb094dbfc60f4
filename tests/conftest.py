"""Shared fixtures: a fresh app with its own database and data directory per test."""

import pytest

from app import create_app
from app.db import connect, migrate


@pytest.fixture
def app(tmp_path):
    """Build an app on a temporary database, migrated, with no background worker."""
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "DATABASE": str(tmp_path / "carecall.db"),
            "DATA_DIR": str(tmp_path / "data"),
            "OUTBOX_DIR": str(tmp_path / "outbox"),
            "WORKER": "none",
            "JOB_BACKOFF_SECONDS": 0.0,
        }
    )
    migrate(app.config["DATABASE"])
    return app


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
