"""JSON API under /api/v1/requests: bearer tokens, the console's rules and the same audit."""

import functools
import sqlite3

from flask import Blueprint, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import accounts, queue
from ..db import get_db, lock_error
from . import actions, search

bp = Blueprint("api", __name__, url_prefix="/api/v1")

PATCHABLE = ("status", "category", "urgency", "note", "notes")


class ApiError(Exception):
    """An API request failed with an HTTP status and a message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


@bp.before_request
def authenticate():
    """Find the API token's principal; cookies never authenticate here."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    g.principal = None
    if scheme.lower() == "bearer":
        g.principal = accounts.principal_for_token(get_db(), token.strip())
    if g.principal is None:
        raise ApiError(401, "a valid bearer token is required")


def require(permission):
    """Let an API view run only for a token whose role has the permission."""

    def decorate(view):
        @functools.wraps(view)
        def wrapped(**kwargs):
            if not g.principal.can(permission):
                raise ApiError(403, f"role {g.principal.role} may not do this")
            return view(**kwargs)

        return wrapped

    return decorate


@bp.errorhandler(ApiError)
def api_error(error):
    """Answer an API error as JSON."""
    response = jsonify(error=str(error))
    response.status_code = error.status
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="carecall"'
    return response


@bp.errorhandler(queue.RequestNotFound)
def request_not_found(error):
    """Answer any route that names a request nobody has as a JSON 404."""
    return api_error(ApiError(404, str(error)))


# A write outside a transaction can still meet the lock: busy, not a crash.
bp.register_error_handler(sqlite3.OperationalError, lock_error)


@bp.errorhandler(HTTPException)
def http_error(error):
    """Answer HTTP errors inside the API as JSON, not HTML."""
    response = jsonify(error=error.description)
    response.status_code = error.code
    return response


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def api_route_error(error):
    """Answer a path under /api/ that matches no route (a bad id, a wrong method) as JSON."""
    if not request.path.startswith("/api/"):
        return error
    response = jsonify(error=error.description)
    response.status_code = error.code
    if error.code == 405:
        response.headers["Allow"] = ", ".join(error.valid_methods or ())
    return response


def _public(item):
    """Return a request as the API shows it."""
    item = dict(item)
    item.pop("source_key", None)
    return item


@bp.get("/requests")
@require("view")
def list_requests():
    """List requests matching the filters, newest activity first, a page at a time."""
    try:
        filters = search.Filters.from_args(request.args, default_status="all")
        limit = int(request.args.get("limit", 50))
        rows, next_cursor = search.list_requests(
            get_db(), filters, limit=limit, cursor=request.args.get("cursor") or None
        )
    except (search.BadFilter, ValueError) as exc:
        raise ApiError(400, str(exc)) from exc
    return jsonify(requests=rows, next_cursor=next_cursor, filters=filters.to_args())


def _full(db, request_id):
    """Return a request with its notes, call-backs and audit events."""
    item = queue.get(db, request_id)
    return {
        **_public(item),
        "notes": actions.notes(db, request_id),
        "callbacks": actions.callbacks(db, request_id),
        "events": actions.visible_events(db, request_id, g.principal),
    }


@bp.get("/requests/<int:request_id>")
@require("view")
def get_request(request_id):
    """Return one request with its notes, call-backs and audit trail."""
    return jsonify(_full(get_db(), request_id))


@bp.patch("/requests/<int:request_id>")
@require("act")
def patch_request(request_id):
    """Change status, category or urgency, or add a note, audited as the token."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        raise ApiError(400, "send a JSON object with status, category, urgency or note")
    unknown = sorted(set(body) - set(PATCHABLE))
    if unknown:
        raise ApiError(400, f"cannot change {', '.join(unknown)}")
    db = get_db()
    note = body.get("note", body.get("notes"))
    if note is not None and not isinstance(note, str):
        raise ApiError(400, "note must be text")
    changes = {k: body[k] for k in ("status", "category", "urgency") if k in body}
    actor = g.principal.actor
    try:
        with db.atomic():
            if changes:
                actions.change(db, request_id, changes, actor=actor)
            if note is not None:
                actions.add_note(db, request_id, note, actor=actor)
    except (actions.ActionError, queue.BadRequestField) as exc:
        raise ApiError(400, str(exc)) from exc
    return jsonify(_full(db, request_id))
