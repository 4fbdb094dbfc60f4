"""JSON API for standing arrangements: GET /api/v1/arrangements."""

from flask import jsonify, request

from .. import arrangements, queue
from ..db import get_db
from .api import ApiError, bp, require

STATES = ("active", "paused", "ended")


@bp.get("/arrangements")
@require("view")
def list_arrangements():
    """List standing arrangements, newest first, for ?request_id= and ?state= if given."""
    request_id = request.args.get("request_id")
    if request_id is not None:
        try:
            request_id = queue.row_id(request_id)
        except ValueError as exc:
            raise ApiError(400, "request_id must be an id") from exc
    state = request.args.get("state")
    if state is not None and state not in STATES:
        raise ApiError(400, f"state must be one of {', '.join(STATES)}")
    rows = [
        arrangements.public(a)
        for a in arrangements.list_arrangements(get_db(), request_id=request_id)
    ]
    return jsonify([a for a in rows if state is None or a["state"] == state])
