"""The coordinator console and its JSON API: a secure, audited queue over every request."""

from . import api, cli, people_api, views  # noqa: F401 (people_api adds routes to api.bp)


def init_app(app):
    """Register the console and API blueprints and commands."""
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    cli.init_app(app)
