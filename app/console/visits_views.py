"""Console: a coordinator enters a visit's check-in or check-out by hand, or excuses a no-show."""

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import abort, current_app, flash, g, redirect, request, url_for

from .. import dispatch, people, queue, visits
from ..db import get_db
from .views import bp, require

# What the request page shows of each visit: jobs taken, whatever became of them.
SHOWN = ("accepted", "checked_in", "done", "no_show")
HOW = {"sms": "by SMS", "call": "by phone", "link": "on the mobile page", "console": "by hand"}


def visit_rows(db, request_id):
    """Return the request's visits for its page, times in the coordinators' zone."""
    zone = ZoneInfo(current_app.config["COORDINATOR_TIMEZONE"])

    def local(stamp):
        return datetime.fromisoformat(stamp).astimezone(zone).strftime("%Y-%m-%d %H:%M")

    rows = []
    for a in dispatch.assignments(db, request_id=request_id):
        if a["state"] not in SHOWN:
            continue
        rows.append(
            a
            | {
                "volunteer": people.get_volunteer(db, a["volunteer_id"])["name"],
                "start_local": (
                    visits.visit_start(a["visit_at"], zone)
                    .astimezone(zone)
                    .strftime("%Y-%m-%d %H:%M")
                    if a["visit_at"]
                    else None
                ),
                "in_local": local(a["checked_in_at"]) if a["checked_in_at"] else None,
                "out_local": local(a["checked_out_at"]) if a["checked_out_at"] else None,
                "in_how": HOW.get(a["check_in_by"]),
                "out_how": HOW.get(a["check_out_by"]),
            }
        )
    return rows


def now_local():
    """Return now in the coordinators' zone, as a datetime-local field shows it."""
    zone = ZoneInfo(current_app.config["COORDINATOR_TIMEZONE"])
    return datetime.now(zone).strftime("%Y-%m-%dT%H:%M")


def _visit_of(db, request_id, assignment_id):
    """Return a visit of this request, or answer 404."""
    queue.get(db, request_id)  # an unknown request is a 404 (console_error)
    try:
        assignment = dispatch.get(db, assignment_id)
    except dispatch.AssignmentNotFound:
        abort(404)
    if assignment["request_id"] != request_id:
        abort(404)
    return assignment


def _visit_step(request_id, assignment_id, act, done):
    """Check a visit in or out by hand at the time entered (default now); back to the request."""
    db = get_db()
    _visit_of(db, request_id, assignment_id)
    at = (request.form.get("at") or "").strip() or None
    try:
        act(current_app, db, assignment_id, by="console", actor=g.principal.actor, at=at)
    except visits.VisitError as exc:
        flash(f"Nothing changed: {exc}.", "error")
    else:
        flash(done, "ok")
    return redirect(url_for("console.detail", request_id=request_id), code=303)


@bp.post("/requests/<int:request_id>/visits/<int:assignment_id>/check-in")
@require("act")
def visit_check_in(request_id, assignment_id):
    """Enter a volunteer's check-in by hand (marked manual)."""
    return _visit_step(request_id, assignment_id, visits.check_in, "Checked in by hand.")


@bp.post("/requests/<int:request_id>/visits/<int:assignment_id>/check-out")
@require("act")
def visit_check_out(request_id, assignment_id):
    """Enter a volunteer's check-out by hand (marked manual)."""
    return _visit_step(request_id, assignment_id, visits.check_out, "Checked out by hand.")


@bp.post("/requests/<int:request_id>/visits/<int:assignment_id>/excuse")
@require("act")
def visit_excuse(request_id, assignment_id):
    """Excuse a volunteer's no-show, with the reason given."""
    db = get_db()
    _visit_of(db, request_id, assignment_id)
    try:
        changed = visits.excuse(
            db, assignment_id, reason=request.form.get("reason"), actor=g.principal.actor
        )
    except (visits.VisitError, ValueError) as exc:
        flash(f"Not excused: {exc}.", "error")
    else:
        flash("No-show excused." if changed else "Excused already.", "ok")
    return redirect(url_for("console.detail", request_id=request_id), code=303)
