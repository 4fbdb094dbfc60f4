"""Standing arrangements: "groceries every Tuesday at 10:00 with Ana", one request per occurrence.

    occurrences()  pure: the moments a weekly rule falls on between two dates, in its zone
    create()       a coordinator makes a request a standing arrangement
    create_due()   the hourly job: each occurrence within RECURRING_HORIZON becomes a request
                   (once, however often it runs), offered first to the arrangement's volunteer;
                   a no or no answer falls back to the cascade like any offer

Times are wall-clock times in the zone the arrangement was made in: 10:00 stays 10:00 local
across daylight-saving changes. Two local times need a decision (see `localize`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import current_app

from . import dispatch, jobs, people, pipeline, queue
from .availability import DAYS
from .db import get_db
from .queue import now, record_event

DUE = "arrangements.due"
# Hourly: with RECURRING_HORIZON at least two hours every occurrence meets a run in time.
CHECK_SECONDS = 3600.0
DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CLOCK_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


class ArrangementError(ValueError):
    """An arrangement cannot be made or changed as asked."""


class ArrangementNotFound(ArrangementError, LookupError):
    """No arrangement has that id."""


# ---- pure: the rule and its occurrences ----------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A weekly rule: weekdays (0 is Monday) at a wall-clock time in a zone, between two dates."""

    weekdays: tuple[int, ...]
    at: time
    zone: str
    starts_on: date
    ends_on: date | None = None


def parse_weekdays(text):
    """Parse "tue" or "mon,thu" (any case, commas or spaces) into sorted weekday numbers."""
    names = [part for part in re.split(r"[\s,;]+", (text or "").strip().lower()) if part]
    days = set()
    for name in names:
        if name not in DAYS and name not in DAY_NAMES:
            raise ArrangementError(f"{name!r} is not a weekday (mon, tue, ... sun)")
        days.add(DAYS.index(name[:3]))
    if not days:
        raise ArrangementError("choose at least one weekday")
    return tuple(sorted(days))


def parse_clock(text):
    """Parse a 24-hour "HH:MM" into a time."""
    match = _CLOCK_RE.fullmatch((text or "").strip())
    if not match:
        raise ArrangementError(f"{text!r} is not a time like 10:00")
    return time(int(match[1]), int(match[2]))


def localize(day, at, zone):
    """Return the aware moment a wall-clock time names on a day in a zone.

    fold=0 throughout (PEP 495). An ambiguous time (autumn: the hour happens twice) is its
    first occurrence, still on summer time: a volunteer arriving an hour early is better than
    one an hour late. A time that does not exist (spring: the clocks jump over it) moves
    forward by the gap, 01:30 in London's jump from 01:00 to 02:00 becoming 02:30: the same
    instant fold=0 names, with the wall-clock time people will actually see.
    """
    # A time with fold=1 would name the later of two readings: the rule means the first.
    naive = datetime.combine(day, at.replace(fold=0), tzinfo=ZoneInfo(zone))
    return naive.astimezone(UTC).astimezone(naive.tzinfo)


def occurrences(rule, start_date, end_date):
    """Return the moments a rule falls on from start_date to end_date (inclusive), in order."""
    first = max(start_date, rule.starts_on)
    last = end_date if rule.ends_on is None else min(end_date, rule.ends_on)
    found = []
    day = first
    while day <= last:
        if day.weekday() in rule.weekdays:
            found.append(localize(day, rule.at, rule.zone))
        day += timedelta(days=1)
    return found


def rule_of(arrangement):
    """Return the Rule an arrangement row keeps."""
    return Rule(
        weekdays=parse_weekdays(arrangement["weekdays"]),
        at=parse_clock(arrangement["local_time"]),
        zone=arrangement["timezone"],
        starts_on=date.fromisoformat(arrangement["starts_on"]),
        ends_on=date.fromisoformat(arrangement["ends_on"]) if arrangement["ends_on"] else None,
    )


def describe(arrangement):
    """Say a rule in words: "every tue, thu at 10:00 (Europe/London), until 2027-03-01"."""
    days = ", ".join(DAYS[d] for d in parse_weekdays(arrangement["weekdays"]))
    words = f"every {days} at {arrangement['local_time']} ({arrangement['timezone']})"
    if arrangement.get("ends_on"):
        words += f", until {arrangement['ends_on']}"
    return words


# ---- the registry -------------------------------------------------------------------------


def get(db, arrangement_id):
    """Return one arrangement, or raise ArrangementNotFound."""
    row = next(db["arrangements"].rows_where("id = ?", [arrangement_id]), None)
    if row is None:
        raise ArrangementNotFound(f"no arrangement {arrangement_id}")
    return row


def list_arrangements(db, *, active=None, request_id=None):
    """Return arrangements, newest first, optionally only active ones or one request's."""
    where, params = [], []
    if active is not None:
        where.append("active = ?")
        params.append(1 if active else 0)
    if request_id is not None:
        where.append("request_id = ?")
        params.append(request_id)
    return list(
        db["arrangements"].rows_where(" AND ".join(where) or None, params, order_by="id desc")
    )


def public(arrangement):
    """Return an arrangement as the API and pages show it."""
    return {
        "id": arrangement["id"],
        "request_id": arrangement["request_id"],
        "person_id": arrangement["person_id"],
        "volunteer_id": arrangement["volunteer_id"],
        "category": arrangement["category"],
        "language": arrangement["language"],
        "place": arrangement["place"],
        "weekdays": [DAYS[d] for d in parse_weekdays(arrangement["weekdays"])],
        "time": arrangement["local_time"],
        "timezone": arrangement["timezone"],
        "starts_on": arrangement["starts_on"],
        "ends_on": arrangement["ends_on"],
        "state": state_of(arrangement),
        "rule": describe(arrangement),
        "created_by": arrangement["created_by"],
        "created_at": arrangement["created_at"],
    }


def state_of(arrangement):
    """Return active, paused or ended."""
    if arrangement["ended_at"]:
        return "ended"
    return "active" if arrangement["active"] else "paused"


def preferred_volunteer(db, request_id):
    """Return the id of the volunteer who took a request (coming, there, or done), or None."""
    row = db.execute(
        "SELECT volunteer_id FROM assignments WHERE request_id = ?"
        " AND state IN ('accepted', 'checked_in', 'done') ORDER BY id DESC LIMIT 1",
        [request_id],
    ).fetchone()
    return row[0] if row else None


def choices_for(db, request_id):
    """Return what making a request an arrangement offers: weekdays, volunteers, the preselected."""
    return {
        "days": DAYS,
        "volunteers": people.list_volunteers(db, active=True),
        "preselected": preferred_volunteer(db, request_id),
        "existing": [public(a) for a in list_arrangements(db, request_id=request_id)],
    }


def create(
    db, request_id, *, volunteer_id, weekdays, local_time, zone, actor, starts_on, ends_on=None
):
    """Make a request a standing arrangement; return it. Dates are local ISO dates or dates."""
    request = queue.get(db, request_id)
    days = parse_weekdays(weekdays)
    at = parse_clock(local_time)
    starts_on = _date(starts_on, "start date")
    ends_on = _date(ends_on, "end date") if ends_on else None
    if ends_on is not None and ends_on < starts_on:
        raise ArrangementError("the end date is before the start")
    try:
        volunteer = people.get_volunteer(db, volunteer_id)
    except people.VolunteerNotFound as exc:
        raise ArrangementError(str(exc)) from exc
    stamp = now()
    with db.atomic():
        # The same form sent twice (a double click, a retry) makes one arrangement, not two.
        same = db.execute(
            "SELECT id FROM arrangements WHERE request_id = ? AND volunteer_id = ?"
            " AND weekdays = ? AND local_time = ? AND starts_on = ? AND ends_on IS ?"
            " AND ended_at IS NULL",
            [
                request["id"],
                volunteer["id"],
                ",".join(DAYS[d] for d in days),
                f"{at:%H:%M}",
                starts_on.isoformat(),
                ends_on.isoformat() if ends_on else None,
            ],
        ).fetchone()
        if same is not None:
            return get(db, same[0])
        arrangement_id = (
            db["arrangements"]
            .insert(
                {
                    "request_id": request["id"],
                    "person_id": request.get("person_id"),
                    "phone": request.get("phone"),
                    "category": request.get("category"),
                    "language": request.get("language"),
                    "place": request.get("region"),
                    "notes": request.get("transcript"),
                    "volunteer_id": volunteer["id"],
                    "weekdays": ",".join(DAYS[d] for d in days),
                    "local_time": f"{at:%H:%M}",
                    "timezone": zone,
                    "starts_on": starts_on.isoformat(),
                    "ends_on": ends_on.isoformat() if ends_on else None,
                    "active": 1,
                    "created_by": actor,
                    "created_at": stamp,
                    "updated_at": stamp,
                }
            )
            .last_pk
        )
        arrangement = get(db, arrangement_id)
        record_event(
            db,
            request["id"],
            actor,
            "arrangement_created",
            {
                "arrangement": arrangement_id,
                "rule": describe(arrangement),
                "volunteer": volunteer["id"],
            },
        )
        # Its first occurrence may come before the hourly run: the worker makes it now.
        jobs.enqueue(db, DUE, {}, key=f"{DUE}:arrangement:{arrangement_id}")
    return arrangement


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date(value, what):
    """Return value as a date (plain YYYY-MM-DD), or raise ArrangementError naming what it is."""
    if isinstance(value, date):
        return value
    text = (value or "").strip()
    try:
        if _DAY.fullmatch(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise ArrangementError(f"the {what} must be a date like 2027-01-31")


# (action, states it applies from, active after)
CHANGES = {
    "pause": ("arrangement_paused", ("active",), 0),
    "resume": ("arrangement_resumed", ("paused",), 1),
    "end": ("arrangement_ended", ("active", "paused"), 0),
}


def change(db, arrangement_id, action, *, actor):
    """Pause, resume or end an arrangement; return it, or raise ArrangementError if it cannot."""
    event, allowed, active = CHANGES[action]
    with db.atomic():
        arrangement = get(db, arrangement_id)
        state = state_of(arrangement)
        if state not in allowed:
            raise ArrangementError(f"arrangement {arrangement_id} is {state}: it cannot {action}")
        stamp = now()
        changes = {"active": active, "updated_at": stamp}
        if action == "end":
            changes["ended_at"] = stamp
        db["arrangements"].update(arrangement_id, changes)
        detail = {"arrangement": arrangement_id}
        if action == "end":
            detail["cancelled"] = _cancel_upcoming(db, arrangement_id, actor=actor)
        record_event(db, arrangement["request_id"], actor, event, detail)
    return get(db, arrangement_id)


def _cancel_upcoming(db, arrangement_id, *, actor):
    """Cancel an ended arrangement's occurrences still to come and not begun; return their ids."""
    rows = db.execute(
        "SELECT r.id FROM occurrences o JOIN requests r ON r.id = o.request_id"
        " WHERE o.arrangement_id = ? AND r.status IN ('new', 'triaged', 'assigned')"
        " ORDER BY r.id",
        [arrangement_id],
    ).fetchall()
    cancelled = []
    for (request_id,) in rows:
        if pipeline.transition(db, request_id, "status:cancelled", actor=actor):
            # The volunteers asked or coming are told: nobody goes to a visit nobody needs.
            dispatch.request_closed(db, request_id, "cancelled", actor=actor)
            cancelled.append(request_id)
    return cancelled


# ---- the job: occurrences become requests --------------------------------------------------


def create_due(app, db, moment=None):
    """Create and offer each occurrence from moment to RECURRING_HORIZON ahead; return request ids.

    Each occurrence is made once: the unique (arrangement, date) row and the request's
    source_key refuse a second, whether from a replayed job or another worker.
    """
    moment = moment or datetime.now(UTC)
    until = moment + timedelta(seconds=app.config["RECURRING_HORIZON"])
    created = []
    for arrangement in list_arrangements(db, active=True):
        rule = rule_of(arrangement)
        zone = ZoneInfo(rule.zone)
        # A day either side: the zone's dates and UTC's differ by up to 14 hours.
        first = moment.astimezone(zone).date() - timedelta(days=1)
        last = until.astimezone(zone).date() + timedelta(days=1)
        for start in occurrences(rule, first, last):
            if moment < start <= until:
                request_id = _create_occurrence(app, db, arrangement, start)
                if request_id is not None:
                    created.append(request_id)
    return created


def _create_occurrence(app, db, arrangement, start):
    """Create one occurrence's request and its first offer; return its id, or None if made."""
    day = start.date().isoformat()
    # BEGIN IMMEDIATE: a second worker waits here, then finds the occurrence taken.
    with db.atomic():
        taken = db.execute(
            "INSERT INTO occurrences (arrangement_id, date, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(arrangement_id, date) DO NOTHING RETURNING id",
            [arrangement["id"], day, now()],
        ).fetchone()
        if taken is None:
            return None
        request, _ = queue.create(
            db,
            channel="manual",
            phone=arrangement["phone"],
            language=arrangement["language"] or app.config["DEFAULT_LANGUAGE"],
            region=arrangement["place"],
            source_key=f"arrangement:{arrangement['id']}:{day}",
            actor="system",
            person_id=arrangement["person_id"],
            category=arrangement["category"],
            urgency="normal",
            stage="transcribed",
            transcript=arrangement["notes"],
            wanted_at=start.isoformat(timespec="minutes"),
        )
        db["occurrences"].update(taken[0], {"request_id": request["id"]})
        record_event(
            db,
            request["id"],
            "system",
            "arrangement_occurrence",
            {
                "arrangement": arrangement["id"],
                "from_request": arrangement["request_id"],
                "date": day,
            },
        )
        _offer_first(app, db, arrangement, request["id"])
    return request["id"]


def _offer_first(app, db, arrangement, request_id):
    """Offer to the arrangement's volunteer alone, or to the top 1 when they cannot be asked."""
    try:
        made = dispatch.offer(
            app, db, request_id, volunteer_ids=[arrangement["volunteer_id"]], actor="system"
        )
    except dispatch.BadVolunteer as exc:
        dispatch.flag(
            db,
            request_id,
            f"the arrangement's volunteer cannot be asked ({exc}): offered to the next",
            actor="system",
            action="arrangement_fallback",
        )
        made = dispatch.offer(app, db, request_id, top=1, actor="system")
    if not made:
        dispatch.flag(
            db, request_id, "no volunteer left to ask", actor="system", action="no_volunteer"
        )
    return made


@jobs.handler(DUE)
def due_job(payload):
    """Job: turn the occurrences within the horizon into requests and offer them."""
    create_due(current_app, get_db())


jobs.every(DUE, seconds=CHECK_SECONDS)
