"""The time-bank ledger: each completed visit's minutes and points as one double-entry transfer.

The minutes leave the served person's account (the programme's, when the request names
nobody) and enter the volunteer's; the points leave the programme's account and enter
the volunteer's. So every unit sums to zero over all accounts, and a visit is posted once:
ledger_transfers.assignment_id is unique, so a replay or a race is a no-op. Entries and
transfers are never changed or deleted (the migration's triggers refuse it).

Point rules live in ivr_flows/points.toml; `points_for` is pure.
"""

import csv
import json
import re
import sqlite3
import tomllib
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from zoneinfo import ZoneInfo

import click
from flask import current_app, has_app_context
from flask.cli import with_appcontext

from . import settings
from .availability import DAYS
from .classify import category_keys
from .db import get_db
from .queue import now, record_event

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "ivr_flows" / "points.toml"
PROGRAMME = "programme"
UNITS = ("minutes", "points")
CSV_COLUMNS = (
    "date",
    "volunteer",
    "person",
    "category",
    "minutes",
    "hours",
    "verified",
    "points",
    "entered",
)
RECENT = 20

# The keys points.toml may hold, per table ("" is the top level).
_KEYS = {
    "": {"points_per_hour", "categories", "evening", "weekend", "holidays"},
    "evening": {"from", "until", "bonus"},
    "weekend": {"days", "bonus"},
    "holidays": {"dates", "bonus"},
}


class PointsDataError(ValueError):
    """points.toml has an unknown key, lacks one, or gives one a wrong value."""


class LedgerError(Exception):
    """A visit could not be posted to the ledger."""


class VisitNotFound(LedgerError, LookupError):
    """No assignment has that id."""


class VisitNotDone(LedgerError):
    """The visit has not been checked in and out, so it has no hours to post."""


class BadVisit(LedgerError, ValueError):
    """The visit's times or minutes cannot be hours (check-out before check-in)."""


# ---- point rules (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class PointRules:
    """How many points a visit earns: per hour, per category, and one bonus at most."""

    points_per_hour: Fraction
    categories: MappingProxyType  # category -> multiplier; unlisted categories count 1
    evening_from: time
    evening_until: time
    evening_bonus: Fraction
    weekend_days: frozenset  # weekday numbers, Monday 0
    weekend_bonus: Fraction
    holidays: frozenset  # dates
    holiday_bonus: Fraction


@dataclass(frozen=True)
class Points:
    """A visit's points and the rules that gave them, in words stored with the transfer."""

    points: int
    applied: tuple[str, ...]


def _percent(fraction):
    """Say a bonus fraction as a percentage: 1/2 -> "+50%"."""
    return f"+{float(fraction * 100):g}%"


def points_for(minutes, category, start_local, rules):
    """Return the points a visit of minutes in category, starting at start_local, earns."""
    if minutes < 0:
        raise BadVisit(f"a visit cannot last {minutes} minutes")
    applied = [f"{float(rules.points_per_hour):g} points per hour"]
    multiplier = rules.categories.get(category, Fraction(1))
    if multiplier != 1:
        applied.append(f"{category} x{float(multiplier):g}")
    clock = start_local.time().replace(tzinfo=None)
    if rules.evening_from > rules.evening_until:  # the evening runs past midnight
        evening = clock >= rules.evening_from or clock < rules.evening_until
    else:
        evening = rules.evening_from <= clock < rules.evening_until
    # The largest bonus that applies, ties going to the first named: never two at once.
    candidates = [
        ("holiday", rules.holiday_bonus, start_local.date() in rules.holidays),
        ("weekend", rules.weekend_bonus, start_local.weekday() in rules.weekend_days),
        ("evening", rules.evening_bonus, evening),
    ]
    bonus_name, bonus = None, Fraction(0)
    for name, value, applies in candidates:
        if applies and value > bonus:
            bonus_name, bonus = name, value
    if bonus_name:
        applied.append(f"{bonus_name} {_percent(bonus)}")
    exact = Fraction(minutes, 60) * rules.points_per_hour * multiplier * (1 + bonus)
    # Halves round up: exact fractions, so 0.5 is never 0.49999.
    return Points(points=int(exact + Fraction(1, 2)), applied=tuple(applied))


def _number(value, where):
    """Return a TOML number of 0 or more as an exact fraction, or raise PointsDataError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PointsDataError(f"{where} must be a number of 0 or more, not {value!r}")
    return Fraction(str(value))


def _clock(value, where):
    """Return "HH:MM" as a time, or raise PointsDataError."""
    if isinstance(value, str) and len(value) == 5:
        try:
            return time.fromisoformat(value)
        except ValueError:
            pass
    raise PointsDataError(f"{where} must be a time like 18:00, not {value!r}")


def _table(data, name, where):
    """Return a table of points.toml, refusing unknown and missing keys by name."""
    table = data.get(name) if name else data
    if not isinstance(table, dict):
        raise PointsDataError(f"{where}: [{name}] is missing or not a table")
    label = f"{name}." if name else ""
    unknown = sorted(set(table) - _KEYS[name])
    if unknown:
        raise PointsDataError(f"{where}: unknown key {label}{unknown[0]}")
    missing = sorted(_KEYS[name] - set(table) - {"categories"})
    if missing:
        raise PointsDataError(f"{where}: missing key {label}{missing[0]}")
    return table


def parse_points(data, where="points.toml"):
    """Check a parsed points.toml and return its PointRules; errors name where and the key."""
    top = _table(data, "", where)
    categories = top.get("categories", {})
    if not isinstance(categories, dict):
        raise PointsDataError(f"{where}: [categories] must be a table")
    # The categories beside this points.toml (a flows folder's own), else the shipped ones.
    beside = Path(where).with_name("categories.toml")
    known = category_keys(beside if beside.is_file() else None)
    for category in categories:
        if category not in known:
            raise PointsDataError(f"{where}: unknown key categories.{category} (not a category)")
    evening = _table(data, "evening", where)
    weekend = _table(data, "weekend", where)
    holidays = _table(data, "holidays", where)
    days = weekend["days"]
    if not isinstance(days, list) or any(day not in DAYS for day in days):
        raise PointsDataError(f"{where}: weekend.days must list days like sat, sun: {days!r}")
    dates = holidays["dates"]
    if not isinstance(dates, list) or any(
        not isinstance(d, date) or isinstance(d, datetime) for d in dates
    ):
        raise PointsDataError(f"{where}: holidays.dates must list dates like 2026-12-25")
    return PointRules(
        points_per_hour=_number(top["points_per_hour"], f"{where}: points_per_hour"),
        categories=MappingProxyType(
            {k: _number(v, f"{where}: categories.{k}") for k, v in categories.items()}
        ),
        evening_from=_clock(evening["from"], f"{where}: evening.from"),
        evening_until=_clock(evening["until"], f"{where}: evening.until"),
        evening_bonus=_number(evening["bonus"], f"{where}: evening.bonus"),
        weekend_days=frozenset(DAYS.index(day) for day in days),
        weekend_bonus=_number(weekend["bonus"], f"{where}: weekend.bonus"),
        holidays=frozenset(dates),
        holiday_bonus=_number(holidays["bonus"], f"{where}: holidays.bonus"),
    )


@lru_cache(maxsize=4)
def load_points(path=DEFAULT_PATH):
    """Load and check points.toml, once per path."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PointsDataError(f"{path}: {exc}") from None
    return parse_points(data, str(path))


def point_rules():
    """Return the app's point rules (its FLOWS_DIR), or the shipped ones outside an app."""
    if has_app_context():
        return load_points(Path(current_app.config["FLOWS_DIR"]) / "points.toml")
    return load_points()


def timezone():
    """Return the coordinators' time zone, in which visits have their dates and evenings."""
    if has_app_context():
        return ZoneInfo(current_app.config["COORDINATOR_TIMEZONE"])
    return ZoneInfo(settings.BY_NAME["COORDINATOR_TIMEZONE"].default)


# ---- accounts and transfers ---------------------------------------------------------------


def volunteer_account(volunteer_id):
    """Return the key of a volunteer's account."""
    return f"volunteer:{volunteer_id}"


def person_account(person_id):
    """Return the key of a served person's account."""
    return f"person:{person_id}"


@dataclass(frozen=True)
class Balance:
    """What an account holds: minutes and points (negative for what it has given)."""

    minutes: int = 0
    points: int = 0

    def to_dict(self):
        """Return the balance as the API shows it."""
        return {"minutes": self.minutes, "hours": hours(self.minutes), "points": self.points}


@dataclass(frozen=True)
class Transfer:
    """One posted visit: its minutes and points, and the rules that gave the points."""

    id: int
    assignment_id: int
    request_id: int
    volunteer_id: int
    person_id: int | None
    source: str  # the account the minutes left
    minutes: int
    points: int
    category: str
    started_at: str
    ended_at: str
    rules: tuple[str, ...]
    created_at: str

    def to_dict(self):
        """Return the transfer as the API shows it."""
        return {**asdict(self), "rules": list(self.rules), "hours": hours(self.minutes)}


def hours(minutes):
    """Return minutes as hours to two decimals."""
    return round(minutes / 60, 2)


def _transfer(row):
    """Return a ledger_transfers row as a Transfer."""
    row = dict(row)
    row["rules"] = tuple(json.loads(row["rules"]))
    return Transfer(**row)


def get_transfer(db, assignment_id):
    """Return the transfer posted for an assignment, or None."""
    row = next(db["ledger_transfers"].rows_where("assignment_id = ?", [assignment_id]), None)
    return _transfer(row) if row else None


def _account_id(db, key, kind, owner_id):
    """Return the id of the account with this key, opening it the first time."""
    db.execute(
        "INSERT OR IGNORE INTO ledger_accounts (key, kind, owner_id, created_at)"
        " VALUES (?, ?, ?, ?)",
        [key, kind, owner_id, now()],
    )
    return db.execute("SELECT id FROM ledger_accounts WHERE key = ?", [key]).fetchone()[0]


def _visit(db, assignment_id):
    """Return what posting needs of an assignment and its request, or raise VisitNotFound."""
    # Plain SQL: the visit columns come from migration 0011_visits, which this one
    # does not depend on.
    cursor = db.execute(
        "SELECT a.id, a.request_id, a.volunteer_id, a.minutes, a.checked_in_at,"
        " a.checked_out_at, r.category, r.person_id FROM assignments a"
        " JOIN requests r ON r.id = a.request_id WHERE a.id = ?",
        [assignment_id],
    )
    row = cursor.fetchone()
    if row is None:
        raise VisitNotFound(f"no assignment {assignment_id}")
    return dict(zip([c[0] for c in cursor.description], row, strict=True))


def _utc(moment):
    """Return an ISO 8601 time in UTC, to the second, so stored times compare as text."""
    return datetime.fromisoformat(moment).astimezone(UTC).isoformat(timespec="seconds")


def visit_minutes(visit):
    """Return a done visit's whole minutes, or raise VisitNotDone or BadVisit."""
    started, ended = visit["checked_in_at"], visit["checked_out_at"]
    if not started or not ended:
        raise VisitNotDone(f"assignment {visit['id']} has not been checked in and out")
    span = datetime.fromisoformat(ended) - datetime.fromisoformat(started)
    if span < timedelta(0):
        raise BadVisit(f"assignment {visit['id']} was checked out before it was checked in")
    minutes = visit["minutes"]
    if minutes is None:
        minutes = int(span.total_seconds() // 60)
    if minutes < 0:
        raise BadVisit(f"assignment {visit['id']} has {minutes} minutes")
    return minutes


def post_visit(db, assignment_id, *, rules=None, tz=None, actor="system"):
    """Post a done visit's minutes and points once; return (transfer, posted now).

    Posting again, or racing another poster, returns the transfer already there.
    """
    if (existing := get_transfer(db, assignment_id)) is not None:
        return existing, False
    rules = rules or point_rules()
    tz = tz or timezone()
    try:
        with db.atomic():
            # Looked at again under the write lock: another poster may have just committed.
            if (existing := get_transfer(db, assignment_id)) is not None:
                return existing, False
            visit = _visit(db, assignment_id)
            minutes = visit_minutes(visit)
            category = visit["category"] or "other"
            start_local = datetime.fromisoformat(visit["checked_in_at"]).astimezone(tz)
            earned = points_for(minutes, category, start_local, rules)
            person_id = visit["person_id"]
            source = person_account(person_id) if person_id else PROGRAMME
            stamp = now()
            transfer_id = (
                db["ledger_transfers"]
                .insert(
                    {
                        "assignment_id": assignment_id,
                        "request_id": visit["request_id"],
                        "volunteer_id": visit["volunteer_id"],
                        "person_id": person_id,
                        "source": source,
                        "minutes": minutes,
                        "points": earned.points,
                        "category": category,
                        "started_at": _utc(visit["checked_in_at"]),
                        "ended_at": _utc(visit["checked_out_at"]),
                        "rules": json.dumps(list(earned.applied)),
                        "created_at": stamp,
                    }
                )
                .last_pk
            )
            volunteer = _account_id(
                db, volunteer_account(visit["volunteer_id"]), "volunteer", visit["volunteer_id"]
            )
            giver = _account_id(db, source, "person" if person_id else "programme", person_id)
            programme = _account_id(db, PROGRAMME, "programme", None)
            for unit, amount, account in (
                ("minutes", minutes, giver),
                ("points", earned.points, programme),
            ):
                db["ledger_entries"].insert_all(
                    {"transfer_id": transfer_id, "account_id": to, "unit": unit}
                    | {"amount": signed, "created_at": stamp}
                    for to, signed in ((account, -amount), (volunteer, amount))
                )
            record_event(
                db,
                visit["request_id"],
                actor,
                "hours_posted",
                {
                    "assignment": assignment_id,
                    "volunteer": visit["volunteer_id"],
                    "minutes": minutes,
                    "points": earned.points,
                    "from": source,
                },
            )
    except sqlite3.IntegrityError:
        # The unique assignment_id: another poster got there first, theirs is the transfer.
        if (existing := get_transfer(db, assignment_id)) is not None:
            return existing, False
        raise
    return get_transfer(db, assignment_id), True


def balance(db, account):
    """Return an account's balance by its key (volunteer_account(3), PROGRAMME...)."""
    totals = dict(
        db.execute(
            "SELECT e.unit, SUM(e.amount) FROM ledger_entries e"
            " JOIN ledger_accounts a ON a.id = e.account_id WHERE a.key = ? GROUP BY e.unit",
            [account],
        ).fetchall()
    )
    return Balance(minutes=totals.get("minutes", 0), points=totals.get("points", 0))


def totals(db):
    """Return each unit's sum over every account: zero, always, for a sound ledger."""
    found = dict(db.execute("SELECT unit, SUM(amount) FROM ledger_entries GROUP BY unit"))
    return {unit: found.get(unit, 0) for unit in UNITS}


# ---- a volunteer's record -----------------------------------------------------------------


@dataclass(frozen=True)
class VolunteerStats:
    """A volunteer's visits, hours (verified apart), points, no-shows, ratings and complaints."""

    visits: int = 0
    minutes: int = 0
    verified_minutes: int = 0
    points: int = 0
    no_shows: int = 0
    ratings: int = 0
    rating_mean: float | None = None
    complaints: int = 0
    disputed_minutes: int = 0  # the senior said nobody came: part of the unverified minutes

    @property
    def unverified_minutes(self):
        """Return the minutes nobody confirmed (entered by hand, or the senior did not say)."""
        return self.minutes - self.verified_minutes

    @property
    def verified_share(self):
        """Return the share of minutes the served person confirmed, or None with no minutes."""
        return round(self.verified_minutes / self.minutes, 3) if self.minutes else None

    def to_dict(self):
        """Return the record as the API shows it."""
        return {
            **asdict(self),
            "hours": hours(self.minutes),
            "verified_hours": hours(self.verified_minutes),
            "unverified_minutes": self.unverified_minutes,
            "unverified_hours": hours(self.unverified_minutes),
            "verified_share": self.verified_share,
        }


def utc_bounds(start, end, tz):
    """Return [start, end] local dates (either may be None) as UTC ISO bounds [low, high)."""

    def midnight(day):
        """Return the UTC time at which a local day begins."""
        return datetime.combine(day, time(0), tz).astimezone(UTC).isoformat(timespec="seconds")

    low = midnight(start) if start else ""
    high = midnight(end + timedelta(days=1)) if end else "9999"
    return low, high


def volunteer_stats(db, volunteer_id, *, start=None, end=None, tz=None):
    """Return a volunteer's record for visits from start to end (local dates, inclusive)."""
    low, high = utc_bounds(start, end, tz or timezone())
    visits, minutes, verified, disputed, points = db.execute(
        "SELECT COUNT(*), IFNULL(SUM(t.minutes), 0),"
        " IFNULL(SUM(CASE WHEN a.verified = 1 THEN t.minutes ELSE 0 END), 0),"
        " IFNULL(SUM(CASE WHEN a.senior_came = 'no' THEN t.minutes ELSE 0 END), 0),"
        " IFNULL(SUM(t.points), 0) FROM ledger_transfers t"
        " JOIN assignments a ON a.id = t.assignment_id"
        " WHERE t.volunteer_id = ? AND t.started_at >= ? AND t.started_at < ?",
        [volunteer_id, low, high],
    ).fetchone()
    # A no-show is dated by the day the visit was due (visit_at is written in local time),
    # or by the day it was offered when no time was agreed.
    no_shows = db.execute(
        "SELECT COUNT(*) FROM assignments WHERE volunteer_id = ? AND state = 'no_show'"
        " AND NOT IFNULL(excused, 0)"
        " AND substr(COALESCE(visit_at, offered_at), 1, 10) BETWEEN ? AND ?",
        [
            volunteer_id,
            start.isoformat() if start else "0000-00-00",
            end.isoformat() if end else "9999-99-99",
        ],
    ).fetchone()[0]
    ratings, mean = db.execute(
        "SELECT COUNT(rating), AVG(rating) FROM assignments"
        " WHERE volunteer_id = ? AND rating IS NOT NULL"
        " AND COALESCE(checked_in_at, rated_at) >= ? AND COALESCE(checked_in_at, rated_at) < ?",
        [volunteer_id, low, high],
    ).fetchone()
    # A complaint taken down by a coordinator, or the senior saying nobody came.
    complaints = db.execute(
        "SELECT COUNT(*) FROM supervision_items WHERE volunteer_id = ?"
        " AND kind IN ('complaint', 'did_not_come') AND opened_at >= ? AND opened_at < ?",
        [volunteer_id, low, high],
    ).fetchone()[0]
    return VolunteerStats(
        complaints=complaints,
        disputed_minutes=disputed,
        visits=visits,
        minutes=minutes,
        verified_minutes=verified,
        points=points,
        no_shows=no_shows,
        ratings=ratings,
        rating_mean=round(mean, 2) if mean is not None else None,
    )


def recent_transfers(db, volunteer_id, limit=RECENT):
    """Return a volunteer's latest transfers, newest visit first."""
    rows = db["ledger_transfers"].rows_where(
        "volunteer_id = ?", [volunteer_id], order_by="started_at DESC, id DESC", limit=limit
    )
    return [_transfer(row) for row in rows]


# ---- export -------------------------------------------------------------------------------


def visit_rows(db, start, end, tz=None):
    """Return one CSV row per posted visit from start to end (local dates, inclusive)."""
    tz = tz or timezone()
    low, high = utc_bounds(start, end, tz)
    cursor = db.execute(
        "SELECT t.started_at, v.name AS volunteer, p.name AS person, t.category, t.minutes,"
        " t.points, a.verified, a.senior_came, a.check_in_by, a.check_out_by, a.manual"
        " FROM ledger_transfers t JOIN assignments a ON a.id = t.assignment_id"
        " JOIN volunteers v ON v.id = t.volunteer_id LEFT JOIN people p ON p.id = t.person_id"
        " WHERE t.started_at >= ? AND t.started_at < ? ORDER BY t.started_at, t.id",
        [low, high],
    )
    names = [c[0] for c in cursor.description]
    rows = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        rows.append(
            {
                "date": datetime.fromisoformat(row["started_at"]).astimezone(tz).date().isoformat(),
                "volunteer": row["volunteer"],
                "person": row["person"] or "",
                "category": row["category"],
                "minutes": row["minutes"],
                "hours": f"{row['minutes'] / 60:.2f}",
                # "disputed": the senior said nobody came; supervision looks into it.
                "verified": (
                    "yes" if row["verified"] else "disputed" if row["senior_came"] == "no" else "no"
                ),
                "points": row["points"],
                "entered": entered(row["check_in_by"], row["check_out_by"], row["manual"]),
            }
        )
    return rows


def entered(check_in_by, check_out_by, manual):
    """Say how a visit was entered: "sms", "call in, console out", "console (manual)"."""
    check_in_by, check_out_by = check_in_by or "unknown", check_out_by or "unknown"
    words = check_in_by if check_in_by == check_out_by else f"{check_in_by} in, {check_out_by} out"
    return words + (" (manual)" if manual else "")


def write_csv(rows, stream):
    """Write visit rows as CSV with a header; return how many rows."""
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)


# Plain YYYY-MM-DD only ("2026-W49-1" and "20261201" are ISO too, but nobody means them),
# within years a time bank has: the day after --to and the zone's offset must stay on the clock.
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(2999, 12, 31)


def _date(value, option):
    """Return a YYYY-MM-DD option as a date, or fail naming the option."""
    try:
        day = date.fromisoformat(value) if _DAY.fullmatch(value) else None
    except ValueError:
        day = None
    if day is None:
        raise click.ClickException(f"{option} must be a date like 2026-12-01, not {value!r}")
    if not FIRST_DAY <= day <= LAST_DAY:
        raise click.ClickException(f"{option} must be a date from {FIRST_DAY} to {LAST_DAY}")
    return day


@click.group("hours")
def hours_cli():
    """Volunteers' hours from the time-bank ledger.

    Example: flask --app app hours export --from 2026-12-01 --to 2026-12-31
    """


@hours_cli.command("export")
@with_appcontext
@click.option("--from", "start", required=True, help="First day, YYYY-MM-DD (local).")
@click.option("--to", "end", required=True, help="Last day, YYYY-MM-DD (local, included).")
@click.option(
    "--output", "-o", type=click.File("w", encoding="utf-8"), default="-", show_default=True
)
def hours_export(start, end, output):
    """Write every posted visit from --from to --to as CSV, one row per visit.

    Columns: date,volunteer,person,category,minutes,hours,verified,points,entered.
    Dates are in CARECALL_COORDINATOR_TIMEZONE; both days are included.

    \b
    Example:
        flask --app app hours export --from 2026-12-01 --to 2026-12-31 --output hours.csv
    """
    first, last = _date(start, "--from"), _date(end, "--to")
    if last < first:
        raise click.ClickException(f"--to ({last}) is before --from ({first})")
    count = write_csv(visit_rows(get_db(), first, last), output)
    click.echo(f"exported {count} visits", err=True)


def init_app(app):
    """Register the hours command."""
    app.cli.add_command(hours_cli)
