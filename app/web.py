"""The front door: a landing page and a health check."""

from flask import Blueprint, current_app, jsonify, render_template

from .db import get_db
from .speech import ModelNotInstalled
from .speech.models import load_manifest, model_path

bp = Blueprint("web", __name__)


@bp.get("/")
def index():
    """Show what this CareCall instance offers and where."""
    return render_template("index.html")


@bp.get("/healthz")
def health():
    """Report whether the database answers, which models are installed, and the job backlog."""
    db = get_db()
    counts = dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
    models = {spec.name: _installed(spec.name) for spec in load_manifest().models}
    return jsonify(
        ok=True,
        jobs=counts,
        models=models,
        requests=db.execute("SELECT count(*) FROM requests").fetchone()[0],
    )


def _installed(name):
    """Return whether a speech model is installed."""
    try:
        model_path(name, current_app.config["MODELS_DIR"])
    except ModelNotInstalled:
        return False
    return True
