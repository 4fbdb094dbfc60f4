"""Console: make a request a standing arrangement, and list, pause, resume or end them."""

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for

from .. import arrangements, people, queue
from ..db import get_db
from .views import bp, require


def _today():
    """Return today's date in the coordinators' zone."""
    return datetime.now(ZoneInfo(current_app.config["COORDINATOR_TIMEZONE"])).date()


@bp.post("/requests/<int:request_id>/arrangements")
@require("act")
def create_arrangement(request_id):
    """Make a request a standing arrangement from the form on its page."""
    db = get_db()
    queue.get(db, request_id)  # an unknown request is a 404 (console_error)
    form = request.form
    try:
        volunteer_id = queue.row_id(form.get("volunteer_id") or "")
    except ValueError:
        volunteer_id = None
    try:
        if volunteer_id is None:
            raise arrangements.ArrangementError("choose the volunteer asked first")
        made = arrangements.create(
            db,
            request_id,
            volunteer_id=volunteer_id,
            weekdays=",".join(form.getlist("weekday")),
            local_time=form.get("time"),
            zone=current_app.config["COORDINATOR_TIMEZONE"],
            starts_on=form.get("starts_on") or _today(),
            ends_on=form.get("ends_on") or None,
            actor=g.principal.actor,
        )
    except arrangements.ArrangementError as exc:
        flash(f"Not made a standing arrangement: {exc}.", "error")
        return redirect(url_for("console.detail", request_id=request_id) + "#arrangement-heading")
    flash(f"Standing arrangement {made['id']}: {arrangements.describe(made)}.", "ok")
    return redirect(url_for("console.arrangements_page"), code=303)


@bp.get("/arrangements")
@require("view")
def arrangements_page():
    """List standing arrangements, newest first, with their volunteer and state."""
    db = get_db()
    rows = []
    for row in arrangements.list_arrangements(db):
        shown = arrangements.public(row)
        try:
            shown["volunteer"] = people.get_volunteer(db, row["volunteer_id"])["name"]
        except people.VolunteerNotFound:
            shown["volunteer"] = f"volunteer {row['volunteer_id']} (removed)"
        rows.append(shown)
    return render_template("console/arrangements.html", rows=rows)


@bp.post("/arrangements/<int:arrangement_id>/<action>")
@require("act")
def change_arrangement(arrangement_id, action):
    """Pause, resume or end a standing arrangement."""
    if action not in arrangements.CHANGES:
        abort(404)
    db = get_db()
    try:
        arrangements.change(db, arrangement_id, action, actor=g.principal.actor)
    except arrangements.ArrangementNotFound as exc:
        abort(404, str(exc))
    except arrangements.ArrangementError as exc:
        flash(f"Not changed: {exc}.", "error")
    else:
        done = {"pause": "paused", "resume": "resumed", "end": "ended"}[action]
        flash(f"Standing arrangement {arrangement_id} {done}.", "ok")
    return redirect(url_for("console.arrangements_page"), code=303)
