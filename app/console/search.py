"""Find requests for the queue and the API: filters, newest activity first, FTS5 search.

Pure core over a sqlite-utils Database: no Flask. Every query is written so one of the
indexes from migration 0003_console answers it without scanning the table.
"""

import base64
import json
import re
from dataclasses import asdict, dataclass, fields
from datetime import date, timedelta

from ..classify import CATEGORY_KEYS
from ..queue import CHANNELS, STATUSES, URGENCY_RANK

# Spelled exactly as in the partial indexes' WHERE clauses, so SQLite can use them.
OPEN = "status NOT IN ('done', 'cancelled')"
CRITICAL_OPEN = f"urgency = 'critical' AND {OPEN}"
STATUS_CHOICES = ("open", "all", *STATUSES)
LIST_COLUMNS = (
    "r.id, r.channel, r.phone, r.language, r.region, r.stage, r.category, r.urgency,"
    " r.status, r.emergency, r.needs_review, r.transcript_confidence, r.called_again,"
    " r.merged_into, substr(r.transcript, 1, 160) AS excerpt, r.error, r.created_at,"
    " r.updated_at"
)
MAX_LIMIT = 200
_WORD = re.compile(r"\w+", re.UNICODE)


class BadFilter(ValueError):
    """A filter value is not one the queue understands."""


@dataclass(frozen=True)
class Filters:
    """What a coordinator or API client asked to see."""

    status: str = "open"
    category: str = ""
    urgency: str = ""
    region: str = ""
    channel: str = ""
    language: str = ""
    phone: str = ""
    date_from: str = ""
    date_to: str = ""
    q: str = ""

    @classmethod
    def from_args(cls, args, default_status="open"):
        """Build and validate Filters from query-string arguments."""
        values = {f.name: (args.get(f.name) or "").strip() for f in fields(cls)}
        values["status"] = values["status"] or default_status
        choices = {
            "status": STATUS_CHOICES,
            "category": CATEGORY_KEYS,
            "urgency": tuple(URGENCY_RANK),
            "channel": CHANNELS,
        }
        for name, allowed in choices.items():
            if values[name] and values[name] not in allowed:
                raise BadFilter(f"{name} must be one of {', '.join(allowed)}")
        for name in ("date_from", "date_to"):
            if values[name]:
                try:
                    date.fromisoformat(values[name])
                except ValueError as exc:
                    raise BadFilter(f"{name} must be a date like 2026-01-31") from exc
        if len(values["q"]) > 200:
            raise BadFilter("search text must be at most 200 characters")
        return cls(**values)

    def to_args(self):
        """Return the filters that are set, as query-string arguments."""
        return {k: v for k, v in asdict(self).items() if v}


def fts_query(text):
    """Turn what a person typed into a safe FTS5 query: every word, the last as a prefix."""
    words = _WORD.findall(text)
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    if len(words[-1]) >= 2:
        quoted[-1] += "*"
    return " ".join(quoted)


def _where(filters, exclude_pinned):
    """Return SQL conditions and parameters for filters."""
    where, params = [], []
    if filters.status == "open":
        where.append(OPEN)
    elif filters.status != "all":
        where.append("r.status = ?")
        params.append(filters.status)
    for name in ("category", "urgency", "region", "channel", "language", "phone"):
        if value := getattr(filters, name):
            where.append(f"r.{name} = ?")
            params.append(value)
    if filters.date_from:
        where.append("r.created_at >= ?")
        params.append(filters.date_from)
    if filters.date_to:
        where.append("r.created_at < ?")
        params.append((date.fromisoformat(filters.date_to) + timedelta(days=1)).isoformat())
    if exclude_pinned:
        where.append(f"NOT ({CRITICAL_OPEN})")
    return where, params


def encode_cursor(values):
    """Return an opaque, URL-safe page cursor."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor):
    """Decode a page cursor made by encode_cursor."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError) as exc:
        raise BadFilter("cursor is not one this server gave out") from exc
    if not isinstance(values, list) or not values:
        raise BadFilter("cursor is not one this server gave out")
    return values


def list_requests(db, filters, *, limit=50, cursor=None, exclude_pinned=False):
    """Return (requests, next cursor) matching filters, newest activity first.

    With a search text, matches come newest request first instead, as FTS5 yields them.
    """
    limit = max(1, min(int(limit), MAX_LIMIT))
    where, params = _where(filters, exclude_pinned)
    match = fts_query(filters.q) if filters.q else None
    if filters.q and match is None:
        return [], None
    if match:
        sql = (
            f"SELECT {LIST_COLUMNS} FROM requests_fts JOIN requests r ON r.id = requests_fts.rowid"
        )
        where.insert(0, "requests_fts MATCH ?")
        params.insert(0, match)
        if cursor:
            where.append("requests_fts.rowid < ?")
            params.append(int(decode_cursor(cursor)[0]))
        order = "requests_fts.rowid DESC"
    else:
        sql = f"SELECT {LIST_COLUMNS} FROM requests r"
        if cursor:
            updated_at, request_id = decode_cursor(cursor)[:2]
            where.append("(r.updated_at, r.id) < (?, ?)")
            params.extend([updated_at, int(request_id)])
        order = "r.updated_at DESC, r.id DESC"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT ?"
    params.append(limit + 1)
    result = db.execute(sql, params)
    rows = [row_dict(result, row) for row in result.fetchall()]
    more = len(rows) > limit
    rows = rows[:limit]
    if not more:
        return rows, None
    last = rows[-1]
    return rows, encode_cursor([last["id"]] if match else [last["updated_at"], last["id"]])


def pinned(db, limit=50):
    """Return open critical requests, newest activity first: always shown, whatever the filters."""
    cursor = db.execute(
        f"SELECT {LIST_COLUMNS} FROM requests r WHERE {CRITICAL_OPEN}"
        " ORDER BY r.updated_at DESC, r.id DESC LIMIT ?",
        [limit],
    )
    return [row_dict(cursor, row) for row in cursor.fetchall()]


def caller_history(db, phone, limit=50):
    """Return every request from a phone number, newest first."""
    if not phone:
        return []
    cursor = db.execute(
        f"SELECT {LIST_COLUMNS} FROM requests r WHERE r.phone = ?"
        " ORDER BY r.created_at DESC LIMIT ?",
        [phone, limit],
    )
    return [row_dict(cursor, row) for row in cursor.fetchall()]


def row_dict(cursor, row):
    """Turn a result row into a dict with its flags as booleans."""
    out = {d[0]: v for d, v in zip(cursor.description, row, strict=True)}
    out["emergency"] = bool(out["emergency"])
    out["needs_review"] = bool(out["needs_review"])
    return out
