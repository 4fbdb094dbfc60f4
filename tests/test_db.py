"""Migrations and configuration."""

from app import create_app
from app.db import connect, migrate
from app.migrations import migrations


def test_migrate_is_idempotent_and_creates_tables(tmp_path):
    path = tmp_path / "fresh.db"
    applied = migrate(path)
    assert applied == [m.name for m in migrations._migrations]
    assert migrate(path) == []
    db = connect(path)
    assert {"requests", "events", "jobs"} <= set(db.table_names())
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_config_comes_from_prefixed_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CARECALL_DATABASE", str(tmp_path / "env.db"))
    monkeypatch.setenv("CARECALL_MAX_AUDIO_SECONDS", "30")
    app = create_app({"SECRET_KEY": "x" * 32})
    assert app.config["DATABASE"] == str(tmp_path / "env.db")
    assert app.config["MAX_AUDIO_SECONDS"] == 30


def test_migrate_command(runner, app):
    result = runner.invoke(args=["migrate"])
    assert result.exit_code == 0
    assert "up to date" in result.output
