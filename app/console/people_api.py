"""JSON API for volunteers and a request's ranked matches, on the console's API blueprint."""

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import current_app, g, jsonify, request

from .. import ledger, people, queue
from ..db import get_db
from .api import ApiError, bp, require

MAX_LIMIT = 100
MAX_OFFSET = 10**6


def _body():
    """Return the request's JSON object, or answer 400."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body:
        raise ApiError(400, "send a JSON object with the volunteer's fields")
    return body


def _flag(name):
    """Return a yes/no query argument, None when absent, or answer 400."""
    try:
        return people.parse_flag(request.args.get(name), name)
    except people.BadField as exc:
        raise ApiError(400, str(exc)) from exc


def _limit(default):
    """Return the `limit` query argument within 1..MAX_LIMIT, or answer 400."""
    try:
        limit = int(request.args.get("limit", default))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def _moment(text, tz):
    """Return an ISO 8601 time as an aware datetime (naive means the coordinators' zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ApiError(400, f"at must be a time like 2026-12-01T10:00, not {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def _answer_people_error(exc):
    """Translate a registry error into an API error."""
    if isinstance(exc, people.VolunteerNotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, people.DuplicatePhone):
        return ApiError(409, str(exc))
    return ApiError(400, str(exc))


@bp.get("/volunteers")
@require("view")
def list_volunteers():
    """List volunteers by id; filter with active, region and skill."""
    try:
        offset = int(request.args.get("offset", 0))
    except ValueError:
        offset = -1
    # SQLite's OFFSET is a 64-bit integer; nobody pages a million volunteers deep.
    if not 0 <= offset <= MAX_OFFSET:
        raise ApiError(400, f"offset must be a whole number from 0 to {MAX_OFFSET}")
    rows = people.list_volunteers(
        get_db(),
        active=_flag("active"),
        region=request.args.get("region") or None,
        skill=request.args.get("skill") or None,
        limit=_limit(MAX_LIMIT),
        offset=offset,
    )
    return jsonify(volunteers=rows)


@bp.post("/volunteers")
@require("act")
def add_volunteer():
    """Register a volunteer; answer 201 with the stored record."""
    rules, _ = people.rules_for(current_app)
    try:
        volunteer = people.add_volunteer(get_db(), _body(), rules, actor=g.principal.actor)
    except people.PeopleError as exc:
        raise _answer_people_error(exc) from exc
    return jsonify(volunteer), 201


@bp.get("/volunteers/<int:volunteer_id>")
@require("view")
def get_volunteer(volunteer_id):
    """Return one volunteer."""
    try:
        return jsonify(people.get_volunteer(get_db(), volunteer_id))
    except people.PeopleError as exc:
        raise _answer_people_error(exc) from exc


@bp.patch("/volunteers/<int:volunteer_id>")
@require("act")
def patch_volunteer(volunteer_id):
    """Change a volunteer's fields; {"active": false} pauses them."""
    rules, _ = people.rules_for(current_app)
    try:
        volunteer = people.update_volunteer(
            get_db(), volunteer_id, _body(), rules, actor=g.principal.actor
        )
    except people.PeopleError as exc:
        raise _answer_people_error(exc) from exc
    return jsonify(volunteer)


@bp.get("/volunteers/<int:volunteer_id>/ledger")
@require("view")
def volunteer_ledger(volunteer_id):
    """Return a volunteer's time-bank balance, record and latest transfers."""
    db = get_db()
    try:
        people.get_volunteer(db, volunteer_id)
    except people.PeopleError as exc:
        raise _answer_people_error(exc) from exc
    account = ledger.volunteer_account(volunteer_id)
    return jsonify(
        volunteer_id=volunteer_id,
        account=account,
        balance=ledger.balance(db, account).to_dict(),
        stats=ledger.volunteer_stats(db, volunteer_id).to_dict(),
        transfers=[t.to_dict() for t in ledger.recent_transfers(db, volunteer_id)],
    )


@bp.get("/requests/<int:request_id>/matches")
@require("view")
def request_matches(request_id):
    """Rank volunteers for a request, best first, each with the reasons why.

    `at` asks who is free at that time rather than as soon as possible.
    """
    db = get_db()
    item = queue.get(db, request_id)
    at = request.args.get("at")
    tz = ZoneInfo(current_app.config["COORDINATOR_TIMEZONE"])
    _, ranking = people.suggest(
        current_app,
        db,
        item,
        when=_moment(at, tz) if at else None,
        override_language=bool(_flag("override_language")),
        limit=_limit(10),
    )
    return jsonify(request_id=request_id, **ranking.to_dict())
