"""The request queue: what seniors asked for, where each request stands, and who did what."""

import json
import sqlite3
from datetime import UTC, datetime

CHANNELS = ("phone", "voicemail", "kiosk", "video", "manual")
STATUSES = ("new", "triaged", "assigned", "in_progress", "done", "cancelled")
URGENCY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
JSON_FIELDS = ("transcript_words", "alternatives", "matched")

# Critical first, then by urgency, then oldest first: who has waited longest is served first.
QUEUE_ORDER = (
    "CASE urgency WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2"
    " WHEN 'low' THEN 3 ELSE 2 END, id"
)


# Ids have at most 18 digits: far past any real row, and within SQLite's 64-bit integers
# (binding a bigger number raises OverflowError).
MAX_ROW_ID = 10**18 - 1


def row_id(value):
    """Return value as a row id, or raise ValueError if it cannot name a row."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a row id")
    if isinstance(value, str):
        if not (value.isascii() and value.strip().isdecimal()):
            raise ValueError(f"{value!r} is not a row id")
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= MAX_ROW_ID:
        raise ValueError(f"{value!r} is not a row id")
    return value


class RequestNotFound(LookupError):
    """No request has that id."""


class BadRequestField(ValueError):
    """A request field was given a value it cannot take."""


def now():
    """Return the current UTC time as an ISO 8601 string."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def create(
    db,
    *,
    channel,
    phone=None,
    language="en",
    region=None,
    source_key=None,
    actor="system",
    **fields,
):
    """Insert a new request and its 'received' event; return (request, created)."""
    if channel not in CHANNELS:
        raise BadRequestField(f"channel must be one of {', '.join(CHANNELS)}, not {channel!r}")
    if source_key is not None and (existing := find_by_source(db, source_key)):
        return existing, False
    stamp = now()
    row = {
        "channel": channel,
        "phone": phone,
        "language": language,
        "region": region,
        "source_key": source_key,
        "stage": "received",
        "status": "new",
        "created_at": stamp,
        "updated_at": stamp,
    } | fields
    try:
        with db.atomic():
            # Caller ID ties the request to the person served who owns that number
            # (a database from before 0008_people has no registry yet).
            if phone and not row.get("person_id") and db["person_phones"].exists():
                known = db.execute(
                    "SELECT person_id FROM person_phones WHERE phone = ?", [phone]
                ).fetchone()
                if known:
                    row["person_id"] = known[0]
            request_id = db["requests"].insert(row).last_pk
            detail = {"channel": channel}
            if row.get("person_id"):
                detail["person"] = row["person_id"]
            record_event(db, request_id, actor, "received", detail)
    except sqlite3.IntegrityError:
        # Another delivery of the same webhook won the race: theirs is the request.
        if source_key is not None and (existing := find_by_source(db, source_key)):
            return existing, False
        raise
    return get(db, request_id), True


def get(db, request_id):
    """Return one request as a dict with its JSON fields decoded."""
    rows = list(db["requests"].rows_where("id = ?", [request_id]))
    if not rows:
        raise RequestNotFound(f"no request {request_id}")
    return _decode(rows[0])


def find_by_source(db, source_key):
    """Return the request made from this webhook or upload, or None."""
    rows = list(db["requests"].rows_where("source_key = ?", [source_key]))
    return _decode(rows[0]) if rows else None


def update(db, request_id, changes, *, actor, action):
    """Change fields of a request and audit the change with before and after values."""
    changes = {k: json.dumps(v) if k in JSON_FIELDS else v for k, v in changes.items()}
    if "status" in changes and changes["status"] not in STATUSES:
        raise BadRequestField(f"status must be one of {', '.join(STATUSES)}")
    if "urgency" in changes and changes["urgency"] not in URGENCY_RANK:
        raise BadRequestField(f"urgency must be one of {', '.join(URGENCY_RANK)}")
    with db.atomic():
        before = next(db["requests"].rows_where("id = ?", [request_id]), None)
        if before is None:
            raise RequestNotFound(f"no request {request_id}")
        db["requests"].update(request_id, {**changes, "updated_at": now()})
        diff = {k: [before.get(k), v] for k, v in changes.items() if before.get(k) != v}
        record_event(db, request_id, actor, action, diff)
    return get(db, request_id)


def record_event(db, request_id, actor, action, detail=None):
    """Append an audit event: who did what to which request."""
    db["events"].insert(
        {
            "request_id": request_id,
            "actor": actor,
            "action": action,
            "detail": json.dumps(detail or {}, ensure_ascii=False),
            "created_at": now(),
        }
    )


def events(db, request_id):
    """Return a request's audit events, oldest first."""
    rows = db["events"].rows_where("request_id = ?", [request_id], order_by="id")
    return [{**row, "detail": json.loads(row["detail"])} for row in rows]


def waiting(db, limit=100):
    """Return open requests in the order a coordinator should handle them."""
    rows = db["requests"].rows_where(
        "status NOT IN ('done', 'cancelled')", order_by=QUEUE_ORDER, limit=limit
    )
    return [_decode(row) for row in rows]


def _decode(row):
    """Decode a request row's JSON columns."""
    for key in JSON_FIELDS:
        if row.get(key):
            row[key] = json.loads(row[key])
    row["emergency"] = bool(row.get("emergency"))
    row["needs_review"] = bool(row.get("needs_review"))
    return row
