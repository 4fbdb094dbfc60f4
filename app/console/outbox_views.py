"""Console page: the outbox, every SMS and call CareCall sends, and what became of it."""

from flask import current_app, flash, g, redirect, render_template, request, url_for

from .. import outbox
from ..db import get_db
from .views import bp, require

STATES = ("waiting", "queued", "sending", "sent", "failed")


@bp.get("/outbox")
@require("view")
def outbox_page():
    """List outbound SMS and calls, newest first; waiting ones say what is missing."""
    state = request.args.get("state") or None
    if state not in (None, *STATES):
        state = None
    db = get_db()
    counts = dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
    return render_template(
        "console/outbox.html",
        rows=outbox.rows(db, state=state),
        state=state,
        states=STATES,
        counts=counts,
        missing_sms=outbox.missing(current_app.config, "sms"),
    )


@bp.post("/outbox/release")
@require("act")
def release_outbox():
    """Queue the waiting messages that can now be sent (credentials were set since)."""
    released = outbox.release_waiting(get_db())
    flash(f"Queued {released} waiting message(s) for sending.", "ok")
    current_app.logger.info("%s released %s outbox messages", g.principal.actor, released)
    return redirect(url_for("console.outbox_page"), code=303)
