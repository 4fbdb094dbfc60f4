"""Console pages for supervision: what to look into, what was done, decisions about volunteers."""

import secrets
from datetime import UTC, datetime

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for

from .. import people, queue, supervision
from ..db import get_db
from .views import _safe_next, bp, require

KIND_WORDS = {
    "low_rating": "Low rating",
    "did_not_come": "Volunteer did not come",
    "person_asked": "Senior asked for a person",
    "complaint": "Complaint",
    "no_show": "No-show",
    "unconfirmed": "Visit not confirmed",
    "over_load": "Over their load",
    "inactive": "Long inactive",
    "dead_job": "Failed job",
    "waiting_long": "Waiting too long",
}
ACTION_WORDS = {
    "note": "Note",
    "follow_up_call": "Follow-up call",
    "pause_volunteer": "Paused the volunteer",
    "excuse_no_show": "Excused the no-show",
    "resolve": "Marked resolved",
    "reopen": "Reopened",
}
DECISION_WORDS = {
    "recognition": "Recognition",
    "training": "Training",
    "end_role": "End the role (also pauses them)",
}
STATE_FILTERS = ("open", "resolved", "all")
DONE = {
    "note": "Note added.",
    "follow_up_call": "Follow-up call logged.",
    "pause_volunteer": "Volunteer paused.",
    "excuse_no_show": "No-show excused.",
    "resolve": "Marked resolved.",
    "reopen": "Reopened.",
}


class BadFilter(ValueError):
    """A supervision filter names a state or kind there is none of."""


def filters_from(args):
    """Return (state, kind) from query arguments; state None means all. Raise BadFilter."""
    state = args.get("state") or "open"
    if state not in STATE_FILTERS:
        raise BadFilter(f"state must be one of {', '.join(STATE_FILTERS)}")
    kind = args.get("kind") or None
    if kind is not None and kind not in supervision.KINDS:
        raise BadFilter(f"kind must be one of {', '.join(supervision.KINDS)}")
    return (None if state == "all" else state), kind


def moment():
    """Return now, for the sweep and the conditions it checks."""
    return datetime.now(UTC)


def _with_history(db, rows, swept):
    """Add each item's actions and whether its condition still holds."""
    return [
        {**row, "actions": supervision.actions(db, row["id"]), "holds": swept.holds(row)}
        for row in rows
    ]


@bp.context_processor
def supervision_context():
    """Give console templates the words for kinds and actions, and a volunteer's record."""
    return {
        "KIND_WORDS": KIND_WORDS,
        "ACTION_WORDS": ACTION_WORDS,
        "DECISION_WORDS": DECISION_WORDS,
        "supervision_record": _record,
    }


def _record(volunteer_id):
    """Return a volunteer's supervision items and the decisions about them, for their page."""
    db = get_db()
    rows = supervision.items(db, state=None, volunteer_id=volunteer_id)
    # Looking at every condition costs a sweep's reading: only when an item has one.
    if any(row["kind"] in supervision.SUBJECTS for row in rows):
        standing = supervision.standing(db, moment=moment(), config=current_app.config)
    else:
        standing = supervision.Swept(opened=[], holding=frozenset())
    return {
        "items": _with_history(db, rows, standing),
        "decisions": supervision.decisions(db, volunteer_id),
    }


@bp.get("/supervision")
@require("supervise")
def supervision_page():
    """Show what needs looking into, open items first, after sweeping for new conditions."""
    db = get_db()
    try:
        state, kind = filters_from(request.args)
    except BadFilter as exc:
        error, (state, kind) = str(exc), ("open", None)
    else:
        error = None
    swept = supervision.sweep(db, moment=moment(), config=current_app.config)
    rows = supervision.items(db, state=state, kind=kind)
    volunteers = {v["id"]: v for v in people.list_volunteers(db)}
    html = render_template(
        "console/supervision.html",
        items=_with_history(db, rows, swept),
        state=state or "all",
        kind=kind,
        counts=supervision.counts(db, state=state),
        volunteers=volunteers,
        opened=len(swept.opened),
        filter_error=error,
        complaint_key=secrets.token_hex(16),
        kinds=supervision.KINDS,
        states=STATE_FILTERS,
    )
    return html, 400 if error else 200


def _back(item_id=None):
    """Go back to the page the form was on, at the item."""
    target = _safe_next(request.form.get("next") or url_for("console.supervision_page"))
    return redirect(target + (f"#item-{item_id}" if item_id else ""), code=303)


@bp.post("/supervision/<int:item_id>/actions")
@require("supervise")
def supervision_act(item_id):
    """Record an action on an item: a note, a follow-up call, a pause, resolve or reopen."""
    action = request.form.get("action", "")
    try:
        supervision.act(
            get_db(), item_id, action, actor=g.principal.actor, text=request.form.get("text", "")
        )
    except supervision.ItemNotFound:
        abort(404)
    except (supervision.BadSupervision, people.PeopleError) as exc:
        flash(f"Nothing changed: {exc}.", "error")
    else:
        flash(DONE[action], "ok")
    return _back(item_id)


@bp.post("/supervision/complaints")
@require("supervise")
def add_complaint():
    """Take down a complaint about a volunteer, a request or both."""
    try:
        volunteer_id = _optional_id("volunteer_id")
        request_id = _optional_id("request_id")
        item, created = supervision.complain(
            get_db(),
            request.form.get("text", ""),
            actor=g.principal.actor,
            key=request.form.get("key", ""),
            volunteer_id=volunteer_id,
            request_id=request_id,
        )
    except (supervision.BadSupervision, people.PeopleError) as exc:
        flash(f"The complaint was not saved: {exc}.", "error")
        return _back()
    flash("Complaint saved." if created else "That complaint was already saved.", "ok")
    return _back(item["id"])


def _optional_id(field):
    """Return a form field as a row id, None when empty; raise BadSupervision otherwise."""
    value = (request.form.get(field) or "").strip().lstrip("#")
    if not value:
        return None
    try:
        return queue.row_id(value)
    except ValueError:
        raise supervision.BadSupervision(f"{value!r} is not a number") from None


@bp.post("/volunteers/<int:volunteer_id>/decisions")
@require("supervise")
def add_decision(volunteer_id):
    """Record recognition, training or the end of the role for a volunteer, with a reason."""
    decision = request.form.get("decision", "")
    try:
        supervision.decide(
            get_db(),
            volunteer_id,
            decision,
            reason=request.form.get("reason", ""),
            actor=g.principal.actor,
        )
    except people.VolunteerNotFound:
        abort(404)
    except supervision.BadSupervision as exc:
        flash(f"Nothing recorded: {exc}.", "error")
    else:
        flash(f"Recorded: {DECISION_WORDS[decision].lower()}.", "ok")
    return redirect(
        url_for("console.volunteer", volunteer_id=volunteer_id) + "#supervision-record", code=303
    )
