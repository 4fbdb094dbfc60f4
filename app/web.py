"""The front door: a landing page and a health check."""

from flask import Blueprint, current_app, jsonify, render_template

from .db import get_db
from .speech.models import installed_models

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
    models = installed_models(current_app.config["MODELS_DIR"])
    return jsonify(ok=True, jobs=counts, models=models,
                   requests=db.execute("SELECT count(*) FROM requests").fetchone()[0])
