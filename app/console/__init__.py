"""The coordinator console and its JSON API: a secure, audited queue over every request."""

from . import api, cli, views


def init_app(app):
    """Set console defaults and register the console and API blueprints and commands."""
    app.config.setdefault("DUPLICATE_WINDOW_HOURS", 24)
    # rapidfuzz token_sort_ratio, 0-100: at or above this, two transcripts say the same thing.
    app.config.setdefault("DUPLICATE_SIMILARITY", 85)
    # Words the recogniser was less sure of than this are marked for the coordinator.
    app.config.setdefault("LOW_WORD_CONFIDENCE", 0.6)
    app.config.setdefault("CONSOLE_POLL_SECONDS", 3.0)
    app.config.setdefault("CONSOLE_PAGE_SIZE", 50)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    cli.init_app(app)
