"""The front door: a landing page, a health check and a readiness check."""

import sqlite3

from flask import Blueprint, current_app, g, jsonify, render_template, request

from . import accounts, jobs
from .db import get_db
from .health import dead_job_problems, staff_problems, text_model_problems
from .health import problems as readiness_problems
from .speech import ModelNotInstalled
from .speech.models import load_manifest, model_path

bp = Blueprint("web", __name__)


@bp.get("/")
def index():
    """Show what this CareCall instance offers and where."""
    return render_template("index.html")


@bp.get("/healthz")
def health():
    """Say whether CareCall answers; staff (session or bearer token) also see the details."""
    db = get_db()
    try:
        db.execute("SELECT count(*) FROM jobs").fetchone()
    except sqlite3.Error:
        return jsonify(status="not ok"), 503
    principal = _principal(db)
    if principal is None or not principal.can("view"):
        # Counts of requests and jobs tell a stranger how busy the line is: staff only.
        return jsonify(status="ok")
    config = current_app.config
    return jsonify(
        status="ok",
        jobs=dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()),
        models={spec.name: _installed(spec.name) for spec in load_manifest().models},
        requests=db.execute("SELECT count(*) FROM requests").fetchone()[0],
        workers=jobs.live_workers(db, config["WORKER_HEARTBEAT_SECONDS"]),
        # Dead jobs, an unset coordinator line and classifying by the rules alone (a text
        # model or its weights missing) do not make CareCall unready; someone must look.
        problems=[
            *readiness_problems(current_app, db),
            *dead_job_problems(db),
            *staff_problems(current_app),
            *text_model_problems(current_app),
        ],
    )


@bp.get("/readyz")
def ready():
    """Answer 200 when requests can be stored and understood now, else 503 with the reasons."""
    reasons = readiness_problems(current_app, get_db())
    if reasons:
        return jsonify(status="not ready", reasons=reasons), 503
    return jsonify(status="ready", reasons=[])


def _principal(db):
    """Return who is asking: an API token's principal, a logged-in user's, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return accounts.principal_for_token(db, token.strip())
    # The console's own check, so a logged-out or disabled session counts for nothing here too.
    from .console.views import load_principal

    load_principal()
    return g.principal


def _installed(name):
    """Return whether a speech model is installed."""
    try:
        model_path(name, current_app.config["MODELS_DIR"])
    except ModelNotInstalled:
        return False
    return True
