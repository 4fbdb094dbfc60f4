"""Calls in progress and callers remembered: what a phone line needs to keep between webhooks.

Plain SQL on purpose: these run on every webhook, and a caller waits for each one.
"""

from ..queue import now

# A call's status once Twilio says it is over.
ENDED = ("completed", "busy", "no-answer", "failed", "canceled")
CALL_FIELDS = frozenset(
    {
        "language",
        "pace",
        "menu",
        "silences",
        "request_id",
        "recording_sid",
        "outcome",
        "call_status",
        "duration_s",
    }
)


class BadCallField(ValueError):
    """A call was given a field it does not have."""


def _one(db, sql, params):
    """Return the first row of a query as a dict, or None."""
    cursor = db.execute(sql, params)
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cursor.description], row, strict=True))


def start_call(db, call_sid, phone, *, default_language, languages):
    """Begin a call once per CallSid, in the caller's remembered language; return (call, known)."""
    existing = get_call(db, call_sid)
    if existing is not None:
        return existing, False
    known = caller(db, phone) if phone else None
    language, pace = default_language, "normal"
    if known:
        if known["language"] in languages:
            language = known["language"]
        pace = known["pace"] or "normal"
    stamp = now()
    with db.atomic():
        # A Twilio retry racing the first delivery inserts nothing and reads the winner's row.
        db.execute(
            "INSERT INTO calls (call_sid, phone, language, pace, menu, silences, started_at,"
            " updated_at) VALUES (?, ?, ?, ?, 'main', 0, ?, ?) ON CONFLICT DO NOTHING",
            [call_sid, phone, language, pace, stamp, stamp],
        )
        if phone:
            db.execute(
                "INSERT INTO callers (phone, language, pace, calls, last_call_at)"
                " VALUES (?, ?, ?, 1, ?) ON CONFLICT(phone) DO UPDATE SET"
                " calls = calls + 1, last_call_at = excluded.last_call_at",
                [phone, language, pace, stamp],
            )
    return get_call(db, call_sid), known is not None


def get_call(db, call_sid):
    """Return a call by CallSid, or None."""
    return _one(db, "SELECT * FROM calls WHERE call_sid = ?", [call_sid])


def update_call(db, call_sid, **changes):
    """Change a call's fields and return it."""
    unknown = set(changes) - CALL_FIELDS
    if unknown:
        raise BadCallField(f"calls have no field {', '.join(sorted(unknown))}")
    assignments = ", ".join(f"{name} = ?" for name in changes)
    db.execute(
        f"UPDATE calls SET {assignments}, updated_at = ? WHERE call_sid = ?",
        [*changes.values(), now(), call_sid],
    )
    return get_call(db, call_sid)


def caller(db, phone):
    """Return what we remember about a phone number, or None."""
    return _one(db, "SELECT * FROM callers WHERE phone = ?", [phone])


def remember(db, phone, *, language=None, pace=None):
    """Remember a caller's language or pace for their next call."""
    changes = {k: v for k, v in {"language": language, "pace": pace}.items() if v is not None}
    if not phone or not changes:
        return
    assignments = ", ".join(f"{name} = excluded.{name}" for name in changes)
    db.execute(
        f"INSERT INTO callers (phone, {', '.join(changes)}) VALUES (?{', ?' * len(changes)})"
        f" ON CONFLICT(phone) DO UPDATE SET {assignments}",
        [phone, *changes.values()],
    )


def recent_requests(db, phone, limit=20):
    """Return a phone number's own requests, newest first, for its status.

    Cancelled and merged requests are gone, and a call-back stub (a missed call, a message we
    could not fetch) is our note to ring back, not something the caller asked for.
    """
    cursor = db.execute(
        "SELECT * FROM requests WHERE phone = ? AND status != 'cancelled'"
        " AND merged_into IS NULL AND coalesce(source_key, '') NOT LIKE 'callback:%'"
        " ORDER BY id DESC LIMIT ?",
        [phone, limit],
    )
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
