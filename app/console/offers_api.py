"""JSON API for offers: offer a request to volunteers, and read its assignments."""

from flask import current_app, g, jsonify, request

from .. import dispatch, people, queue
from ..db import get_db
from .api import ApiError, bp, require


def _public(assignment):
    """Return an assignment as the API shows it, with its visit once there is one."""
    minutes = assignment["minutes"]
    return {
        "hours": None if minutes is None else round(minutes / 60, 2),
        "verified": bool(assignment["verified"]),
        "manual": bool(assignment["manual"]),
        "excused": bool(assignment["excused"]),
    } | {
        key: assignment[key]
        for key in (
            "id",
            "request_id",
            "volunteer_id",
            "state",
            "code",
            "channel",
            "wave",
            "offered_at",
            "answered_at",
            "expires_at",
            "visit_at",
            "senior_answer",
            "checked_in_at",
            "checked_out_at",
            "minutes",
            "rating",
            "check_in_by",
            "check_out_by",
            "excuse",
        )
    }


@bp.post("/requests/<int:request_id>/offers")
@require("act")
def offer(request_id):
    """Offer a request to {"volunteer_ids": [...]} or to the {"top": N} of its ranking."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or len(set(body) & {"volunteer_ids", "top"}) != 1:
        raise ApiError(400, 'send {"volunteer_ids": [...]} or {"top": 3}')
    unknown = sorted(set(body) - {"volunteer_ids", "top"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]}")
    ids = body.get("volunteer_ids")
    if ids is not None and (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise ApiError(400, "volunteer_ids must be a list of volunteer ids")
    db = get_db()
    try:
        made = dispatch.offer(
            current_app,
            db,
            request_id,
            volunteer_ids=ids,
            top=body.get("top"),
            actor=g.principal.actor,
        )
    except dispatch.CannotOffer as exc:
        raise ApiError(409, str(exc)) from exc
    except (dispatch.BadVolunteer, people.PeopleError) as exc:
        raise ApiError(400, str(exc)) from exc
    except dispatch.DispatchError as exc:
        raise ApiError(409, str(exc)) from exc
    if not made:
        raise ApiError(409, "no volunteer can be offered this request now")
    return jsonify(offers=[_public(a) for a in made]), 201


@bp.get("/assignments/<int:assignment_id>")
@require("view")
def get_assignment(assignment_id):
    """Return one offer or visit: its state, check-in and check-out, hours and rating."""
    try:
        return jsonify(_public(dispatch.get(get_db(), assignment_id)))
    except dispatch.AssignmentNotFound as exc:
        raise ApiError(404, str(exc)) from exc


@bp.get("/assignments")
@require("view")
def list_assignments():
    """List offers and assignments, oldest first, for ?request_id= or ?volunteer_id=."""
    filters = {}
    for name in ("request_id", "volunteer_id"):
        value = request.args.get(name)
        if value is not None:
            try:
                filters[name] = queue.row_id(value)
            except ValueError as exc:
                raise ApiError(400, f"{name} must be an id") from exc
    state = request.args.get("state")
    if state is not None and state not in dispatch.STATES:
        raise ApiError(400, f"state must be one of {', '.join(dispatch.STATES)}")
    if not filters:
        raise ApiError(400, "give request_id or volunteer_id")
    rows = dispatch.assignments(get_db(), state=state, **filters)
    return jsonify([_public(a) for a in rows])
