"""Find requests for the queue and the API: filters, the work order, FTS5 search.

Pure core over a sqlite-utils Database: no Flask. Every query is written so one of the
indexes from migrations 0003_console and 0010_queue answers it without scanning the table.
"""

import base64
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from datetime import date, timedelta

from .. import jsontext
from ..classify import category_keys
from ..queue import CHANNELS, STATUSES, URGENCY_RANK, row_id

# Spelled exactly as in the partial indexes' WHERE clauses, so SQLite can use them.
OPEN = "status NOT IN ('done', 'cancelled')"
CRITICAL_OPEN = f"urgency = 'critical' AND {OPEN}"
STATUS_CHOICES = ("open", "all", *STATUSES)
# Spelled exactly as in 0010_queue's indexes, so SQLite reads the work order from them.
URGENCY_ORDER = (
    "(CASE urgency WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'low' THEN 3 ELSE 2 END)"
)
# waiting: most urgent first, then who has waited longest since received (the work queue);
# newest: newest received first, whatever the urgency.
SORTS = ("waiting", "newest")
LIST_COLUMNS = (
    "r.id, r.channel, r.phone, r.language, r.region, r.stage, r.category, r.urgency,"
    " r.status, r.emergency, r.needs_review, r.transcript_confidence, r.called_again,"
    " r.merged_into, substr(r.transcript, 1, 160) AS excerpt, r.error, r.created_at,"
    " r.updated_at,"
    # A kiosk's requests carry its id in their source key: "kiosk:ID:recording".
    " CASE WHEN r.source_key LIKE 'kiosk:%' THEN (SELECT k.name FROM kiosks k"
    " WHERE k.id = CAST(substr(r.source_key, 7) AS INTEGER)) END AS kiosk"
)
# Counting stops here: a number this large is already "a lot", and counting on costs time.
# Open work is counted further; history (all, done, cancelled) is a million rows deep.
COUNT_CAP = 10_000
HISTORY_COUNT_CAP = 1_000
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
    sort: str = "waiting"

    @classmethod
    def from_args(cls, args, default_status="open"):
        """Build and validate Filters from query-string arguments."""
        values = {f.name: (args.get(f.name) or "").strip() for f in fields(cls)}
        values["status"] = values["status"] or default_status
        values["sort"] = values["sort"] or "waiting"
        choices = {
            "status": STATUS_CHOICES,
            "sort": SORTS,
            "category": category_keys(),
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
        return {k: v for k, v in asdict(self).items() if v and not (k == "sort" and v == "waiting")}

    def pinned(self):
        """Return these filters narrowed to open critical requests, or None if they allow none."""
        if self.urgency not in ("", "critical") or self.status in ("done", "cancelled"):
            return None
        status = "open" if self.status in ("open", "all") else self.status
        return replace(self, urgency="critical", status=status, sort="waiting")


def fts_query(text):
    """Turn what a person typed into a safe FTS5 query: every word, the last as a prefix."""
    words = _WORD.findall(text)
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    if len(words[-1]) >= 2:
        quoted[-1] += "*"
    return " ".join(quoted)


def open_scope(filters):
    """Return whether filters ask only for open work (the queue's usual view)."""
    return filters.status == "open" or filters.status in STATUSES[:4]


def _where(filters, exclude_pinned, *, ordered=True):
    """Return SQL conditions and parameters for filters.

    ordered: the rows are wanted in the work order, rather than counted.
    """
    where, params = [], []
    # Open work is a small part of a large table, and the work order is an index: SQLite
    # should walk it (the open requests' partial one when it can) and check each row,
    # not gather every row of a region or a category from a million and sort them. So the
    # other columns are compared as "+r.col", which no index of a whole column answers.
    # A phone is rarer still: it keeps its own index. Counting history needs no order.
    scoped = open_scope(filters)
    walk = scoped or (ordered and filters.sort == "waiting")
    column = "+r.{}" if walk else "r.{}"
    if scoped:
        where.append(OPEN)
    if filters.status not in ("open", "all"):
        # Counted, one status is a stretch of its own covering index.
        where.append(f"{column.format('status') if ordered else 'r.status'} = ?")
        params.append(filters.status)
    if filters.urgency and walk:
        # The urgency's place in the work order picks its stretch of the index.
        where.append(f"{URGENCY_ORDER} = ?")
        params.append(URGENCY_RANK[filters.urgency])
    for name in ("category", "urgency", "region", "channel", "language"):
        if value := getattr(filters, name):
            where.append(f"{column.format(name)} = ?")
            params.append(value)
    if filters.phone:
        where.append("r.phone = ?")
        params.append(filters.phone)
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


# What a cursor holds after its last row's id: per kind of listing, the types of the values.
CURSOR_SHAPES = {"search": (), "newest": (str,), "waiting": (int, str)}


def decode_cursor(cursor, shape="waiting"):
    """Decode a page cursor made by encode_cursor: [*sort values, id] for a shape."""
    kinds = CURSOR_SHAPES[shape]
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = jsontext.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list) or len(values) != len(kinds) + 1:
            raise TypeError("not a list of the right length")
        *keys, request_id = values
        for kind, value in zip(kinds, keys, strict=True):
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError("values of the wrong kind")
        if isinstance(request_id, str):
            raise TypeError("values of the wrong kind")
        row_id(request_id)
    except (ValueError, TypeError) as exc:
        raise BadFilter("cursor is not one this server gave out") from exc
    return values


def _rank(urgency):
    """Return an urgency's place in the work order, as URGENCY_ORDER computes it."""
    return URGENCY_RANK.get(urgency, URGENCY_RANK["normal"])


def list_requests(db, filters, *, limit=50, cursor=None, exclude_pinned=False):
    """Return (requests, next cursor) matching filters, in the filters' order.

    The default order is the work queue's: most urgent first, then longest waiting since
    received. With a search text, matches come newest request first, as FTS5 yields them.
    """
    limit = max(1, min(int(limit), MAX_LIMIT))
    where, params = _where(filters, exclude_pinned)
    match = fts_query(filters.q) if filters.q else None
    if filters.q and match is None:
        return [], None
    shape = "search" if match else filters.sort
    if match:
        sql = (
            f"SELECT {LIST_COLUMNS} FROM requests_fts JOIN requests r ON r.id = requests_fts.rowid"
        )
        where.insert(0, "requests_fts MATCH ?")
        params.insert(0, match)
        if cursor:
            where.append("requests_fts.rowid < ?")
            params.extend(decode_cursor(cursor, shape))
        order = "requests_fts.rowid DESC"
    elif shape == "newest":
        sql = f"SELECT {LIST_COLUMNS} FROM requests r"
        if cursor:
            where.append("(r.created_at, r.id) < (?, ?)")
            params.extend(decode_cursor(cursor, shape))
        order = "r.created_at DESC, r.id DESC"
    else:
        sql = f"SELECT {LIST_COLUMNS} FROM requests r"
        if cursor:
            where.append(f"({URGENCY_ORDER}, r.created_at, r.id) > (?, ?, ?)")
            params.extend(decode_cursor(cursor, shape))
        # One urgency is one stretch of the index: its order is just the time received.
        first = "" if filters.urgency else f"{URGENCY_ORDER}, "
        order = f"{first}r.created_at, r.id"
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
    keys = {
        "search": [],
        "newest": [last["created_at"]],
        "waiting": [_rank(last["urgency"]), last["created_at"]],
    }[shape]
    return rows, encode_cursor([*keys, last["id"]])


def count_cap(filters):
    """Return how far count_requests counts for filters."""
    return COUNT_CAP if open_scope(filters) else HISTORY_COUNT_CAP


def count_requests(db, filters, *, exclude_pinned=False):
    """Return how many requests match filters, counting no further than count_cap."""
    cap = count_cap(filters)
    where, params = _where(filters, exclude_pinned, ordered=False)
    match = fts_query(filters.q) if filters.q else None
    if filters.q and match is None:
        return 0
    if match:
        sql = "SELECT 1 FROM requests_fts JOIN requests r ON r.id = requests_fts.rowid"
        where.insert(0, "requests_fts MATCH ?")
        params.insert(0, match)
    else:
        sql = "SELECT 1 FROM requests r"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return db.execute(f"SELECT count(*) FROM ({sql} LIMIT ?)", [*params, cap]).fetchone()[0]


def pinned(db, filters=None, limit=50):
    """Return the open critical requests the filters allow, longest waiting first."""
    narrowed = (filters or Filters()).pinned()
    if narrowed is None:
        return []
    return list_requests(db, narrowed, limit=limit)[0]


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
