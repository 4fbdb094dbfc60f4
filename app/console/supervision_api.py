"""JSON API for supervision items, on the console's API blueprint."""

from flask import current_app, jsonify, request

from .. import queue, supervision
from ..db import get_db
from .api import ApiError, bp, require
from .supervision_views import BadFilter, filters_from, moment

MAX_LIMIT = 500


def _public(db, item, standing):
    """Return an item as the API shows it: with its history and whether it still holds."""
    return {
        **item,
        "condition_holds": standing.holds(item),
        "actions": supervision.actions(db, item["id"]),
    }


@bp.get("/supervision")
@require("supervise")
def list_supervision():
    """List supervision items, open first, newest first; filter by state, kind and volunteer.

    state is open (the default), resolved or all.
    """
    try:
        state, kind = filters_from(request.args)
        volunteer = request.args.get("volunteer_id")
        volunteer_id = queue.row_id(volunteer) if volunteer else None
    except (BadFilter, ValueError) as exc:
        raise ApiError(400, str(exc)) from exc
    limit = request.args.get("limit", "100")
    if not (limit.isascii() and limit.isdecimal() and 1 <= int(limit) <= MAX_LIMIT):
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    db = get_db()
    rows = supervision.items(
        db, state=state, kind=kind, volunteer_id=volunteer_id, limit=int(limit)
    )
    standing = supervision.standing(db, moment=moment(), config=current_app.config)
    return jsonify(
        items=[_public(db, row, standing) for row in rows],
        filters={"state": state or "all", "kind": kind, "volunteer_id": volunteer_id},
    )
