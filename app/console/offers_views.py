"""Console: offering a request to volunteers, and the outbox of every SMS and call sent."""

from flask import current_app, flash, g, redirect, render_template, request, url_for

from .. import dispatch, outbox, people, queue
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


@bp.post("/requests/<int:request_id>/offers")
@require("act")
def offer(request_id):
    """Offer a request to the volunteers ticked on its matches page, or to the top N."""
    db = get_db()
    queue.get(db, request_id)  # an unknown request is a 404 (console_error)
    ids = request.form.getlist("volunteer_id")
    top = request.form.get("top")
    back = url_for("console.matches", request_id=request_id)
    try:
        chosen = [int(i) for i in ids]
        top = int(top) if top else None
    except ValueError:
        chosen, top = [], None
    if not chosen and top is None:
        flash("Tick the volunteers to offer the request to, or choose the top few.", "error")
        return redirect(back, code=303)
    try:
        made = dispatch.offer(
            current_app,
            db,
            request_id,
            volunteer_ids=None if top is not None else chosen,
            top=top,
            actor=g.principal.actor,
        )
    except dispatch.DispatchError as exc:
        flash(f"Not offered: {exc}.", "error")
        return redirect(back, code=303)
    if not made:
        flash("Nobody left to offer this request to.", "error")
        return redirect(back, code=303)
    names = ", ".join(
        f"{people.get_volunteer(db, a['volunteer_id'])['name']} (code {a['code']})" for a in made
    )
    flash(f"Offered to {names}.", "ok")
    return redirect(back, code=303)
