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
from ..queue import CHANNELS, STATUSES, URGENCY_RANK, row_id

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
# Longest filter value: search text, a region or a phone number all fit well within it.
MAX_FILTER_LENGTH = 200
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
        for name, value in values.items():
            if len(value) > MAX_FILTER_LENGTH:
                what = "search text" if name == "q" else name
                raise BadFilter(f"{what} must be at most {MAX_FILTER_LENGTH} characters")
        days = {}
        for name in ("date_from", "date_to"):
            if values[name]:
                try:
                    days[name] = date.fromisoformat(values[name])
                except ValueError as exc:
                    raise BadFilter(f"{name} must be a date like 2026-01-31") from exc
        if len(days) == 2 and days["date_from"] > days["date_to"]:
            raise BadFilter("date_from must not be after date_to")
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
    # The last day of the calendar has no day after it: it then bounds nothing.
    if filters.date_to and (last := date.fromisoformat(filters.date_to)) < date.max:
        where.append("r.created_at < ?")
        params.append((last + timedelta(days=1)).isoformat())
    if exclude_pinned:
        where.append(f"NOT ({CRITICAL_OPEN})")
    return where, params


def encode_cursor(values):
    """Return an opaque, URL-safe page cursor."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor, searching=False):
    """Decode a page cursor made by encode_cursor: [id] when searching, else [updated_at, id]."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list) or len(values) != (1 if searching else 2):
            raise TypeError("not a list of the right length")
        *updated_at, request_id = values
        if not all(isinstance(v, str) for v in updated_at) or isinstance(request_id, str):
            raise TypeError("values of the wrong kind")
        row_id(request_id)
    except (ValueError, TypeError) as exc:
        raise BadFilter("cursor is not one this server gave out") from exc
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
            params.extend(decode_cursor(cursor, searching=True))
        order = "requests_fts.rowid DESC"
    else:
        sql = f"SELECT {LIST_COLUMNS} FROM requests r"
        if cursor:
            where.append("(r.updated_at, r.id) < (?, ?)")
            params.extend(decode_cursor(cursor))
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
