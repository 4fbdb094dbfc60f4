"""The coordinator console and its JSON API: a secure, audited queue over every request."""

# The people, offers, visits, arrangements and supervision modules add their routes to the
# api and console blueprints.
from . import (  # noqa: F401
    api,
    arrangements_api,
    arrangements_views,
    cli,
    offers_api,
    offers_views,
    people_api,
    people_views,
    supervision_api,
    supervision_views,
    views,
    visits_views,
)


def init_app(app):
    """Register the console and API blueprints and commands."""
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    cli.init_app(app)
