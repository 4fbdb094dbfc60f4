"""The visit: a volunteer who took a job checks in when they arrive and out when they leave.

    check_in()      accepted -> checked_in, the request in_progress (SMS, call, link, console)
    check_out()     checked_in -> done with the whole minutes between, the request done;
                    the hours posted and the senior's rating call queued, all at once
    miss_due()      no check-in CHECKIN_GRACE after the agreed start: a no-show, the
                    coordinator flagged, and the request offered to the next volunteer
    excuse()        a coordinator excuses a no-show, with a reason

A replayed IN or OUT (Twilio's retry, a second SMS, a press of 1 again) changes nothing and
raises a named error saying why, which each edge turns into words. Every change is audited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import current_app

from . import dispatch, jobs, ledger, outbox, people, pipeline, queue, rating
from .db import get_db
from .queue import now, record_event

MISSED = "visits.missed"
BY = ("sms", "call", "link", "console")
# A visit entered "now" on another clock may be a little ahead of ours; more is a mistake.
FUTURE_SLACK = timedelta(minutes=2)


class VisitError(Exception):
    """A check-in or check-out could not be made; the assignment says where it stands."""

    def __init__(self, message, assignment=None):
        super().__init__(message)
        self.assignment = assignment


class NotAccepted(VisitError):
    """The job was not taken by this volunteer (still offered, closed, or a no-show)."""


class NotCheckedIn(VisitError):
    """A check-out came before any check-in."""


class AlreadyCheckedIn(VisitError):
    """A check-in was made already: a replay changes nothing."""


class AlreadyDone(VisitError):
    """The visit is checked out already: a replay changes nothing."""


class NotYours(VisitError):
    """The job belongs to another volunteer."""


class RequestClosed(VisitError):
    """The request was cancelled or closed by a coordinator."""


class BadTime(VisitError, ValueError):
    """A time entered by hand is in the future, unreadable, or before the check-in."""


class TooLong(VisitError):
    """A check-out would make the visit longer than VISIT_MAX: a coordinator enters the time."""


class TooEarly(VisitError):
    """A volunteer's check-in came long before the agreed start: another day's visit, perhaps."""


class NotNoShow(VisitError):
    """Only a no-show can be excused."""


@dataclass(frozen=True)
class Visit:
    """Where a visit stands: its times, minutes and how each was entered."""

    assignment_id: int
    request_id: int
    volunteer_id: int
    code: str
    state: str
    checked_in_at: str | None
    checked_out_at: str | None
    check_in_by: str | None
    check_out_by: str | None
    minutes: int | None
    manual: bool

    @classmethod
    def from_row(cls, row):
        """Build a Visit from an assignments row."""
        return cls(
            assignment_id=row["id"],
            request_id=row["request_id"],
            volunteer_id=row["volunteer_id"],
            code=row["code"],
            state=row["state"],
            checked_in_at=row["checked_in_at"],
            checked_out_at=row["checked_out_at"],
            check_in_by=row["check_in_by"],
            check_out_by=row["check_out_by"],
            minutes=row["minutes"],
            manual=bool(row["manual"]),
        )


# ---- pure ---------------------------------------------------------------------------------


def minutes_between(start, end):
    """Return the whole minutes from start to end (ISO strings), never negative."""
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return max(0, math.floor(seconds / 60))


def stamp_of(at, *, zone, moment=None):
    """Return a UTC ISO stamp (seconds) for at (None: now; naive: in zone), or raise BadTime."""
    moment = moment or datetime.now(UTC)
    if at is None:
        return moment.isoformat(timespec="seconds")
    shown = repr(at[:40] + "…" if isinstance(at, str) and len(at) > 40 else at)
    try:
        if isinstance(at, str):
            at = datetime.fromisoformat(at.strip())
        if at.tzinfo is None:
            at = at.replace(tzinfo=zone)
        at = at.astimezone(UTC)
    except (ValueError, OverflowError):
        # Unreadable, or a year so far off that it has no place on the clock (year 1, 9999).
        raise BadTime(f"{shown} is not a time like 2026-12-01T10:30") from None
    if at > moment + FUTURE_SLACK:
        raise BadTime("a visit cannot be entered for a time still to come")
    return at.isoformat(timespec="seconds")


def visit_start(visit_at, zone):
    """Return an assignment's agreed start as an aware datetime (naive: in zone), or None."""
    if not visit_at:
        return None
    start = datetime.fromisoformat(visit_at)
    return start if start.tzinfo else start.replace(tzinfo=zone)


# ---- check-in and check-out ---------------------------------------------------------------


def _zone(app):
    return ZoneInfo(app.config["COORDINATOR_TIMEZONE"])


def _check_by(by):
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, not {by!r}")


def _check_owner(assignment, actor):
    """Refuse a volunteer acting on another volunteer's job; staff may act on any."""
    if actor.startswith("volunteer:") and actor != f"volunteer:{assignment['volunteer_id']}":
        raise NotYours(f"job {assignment['code']} is another volunteer's", assignment)


def _refuse_unless(assignment, wanted):
    """Raise the error that says why an assignment is not in the wanted state."""
    state = assignment["state"]
    if state == wanted:
        return
    if state == "done":
        raise AlreadyDone(f"job {assignment['code']} is checked out already", assignment)
    if state == "checked_in":
        raise AlreadyCheckedIn(f"job {assignment['code']} is checked in already", assignment)
    if state == "accepted":
        raise NotCheckedIn(f"job {assignment['code']} is not checked in yet", assignment)
    raise NotAccepted(f"job {assignment['code']} is {state}, not a job taken", assignment)


def _location(location):
    """Return the latitude, longitude and accuracy a mobile page sent, checked, or Nones."""
    if not location:
        return None, None, None
    lat, lon = float(location["latitude"]), float(location["longitude"])
    accuracy = location.get("accuracy_m")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("latitude or longitude out of range")
    return lat, lon, None if accuracy is None else abs(float(accuracy))


def check_in(app, db, assignment_id, *, by, actor, at=None, location=None):
    """Record that the volunteer arrived; the request moves to in_progress; return Visit."""
    _check_by(by)
    stamp = stamp_of(at, zone=_zone(app))
    lat, lon, accuracy = _location(location)
    manual = int(by == "console")
    with db.atomic():
        assignment = dispatch.get(db, assignment_id)
        _check_owner(assignment, actor)
        _refuse_unless(assignment, "accepted")
        request = queue.get(db, assignment["request_id"])
        if request["status"] in ("done", "cancelled"):
            raise RequestClosed(f"request {assignment['request_id']} is closed", assignment)
        start = visit_start(assignment["visit_at"], _zone(app))
        early = timedelta(seconds=app.config["CHECKIN_EARLY"])
        if not manual and start is not None and datetime.fromisoformat(stamp) < start - early:
            # Two jobs for one senior, or Thursday's visit on Wednesday: not this one yet.
            raise TooEarly(f"the visit is agreed for {start:%Y-%m-%d %H:%M}", assignment)
        made = datetime.fromisoformat(request["created_at"]).replace(second=0)
        # To the minute: the page's "now" has no seconds, and may name the minute it was made.
        if at is not None and datetime.fromisoformat(stamp) < made:
            # A year typed wrong would count years of hours, and the ledger's entries are final.
            asked = datetime.fromisoformat(request["created_at"]).astimezone(_zone(app))
            raise BadTime(
                f"a check-in cannot be before the request was made ({asked:%Y-%m-%d %H:%M})",
                assignment,
            )
        db.execute(
            "UPDATE assignments SET state = 'checked_in', checked_in_at = ?, check_in_by = ?,"
            " manual = MAX(manual, ?), latitude = ?, longitude = ?, accuracy_m = ?,"
            " updated_at = ? WHERE id = ? AND state = 'accepted'",
            [stamp, by, manual, lat, lon, accuracy, now(), assignment_id],
        )
        _advance(db, assignment, "check_in", "checked in", actor, at=stamp, by=by, manual=manual)
        return Visit.from_row(dispatch.get(db, assignment_id))


def check_out(app, db, assignment_id, *, by, actor, at=None):
    """Record that the volunteer left, with the whole minutes; the request is done; return Visit."""
    _check_by(by)
    stamp = stamp_of(at, zone=_zone(app))
    manual = int(by == "console")
    with db.atomic():
        assignment = dispatch.get(db, assignment_id)
        _check_owner(assignment, actor)
        _refuse_unless(assignment, "checked_in")
        if at is not None and stamp < assignment["checked_in_at"]:
            raise BadTime("a check-out cannot be before the check-in", assignment)
        minutes = minutes_between(assignment["checked_in_at"], stamp)
        too_long = minutes * 60 > app.config["VISIT_MAX"]
        if too_long and manual:
            raise BadTime(
                f"that makes a visit of {_duration(minutes)}, longer than CARECALL_VISIT_MAX"
                f" ({app.config['VISIT_MAX'] / 3600:g} h): check the times",
                assignment,
            )
        if not too_long:
            return _checked_out(app, db, assignment, stamp, by, manual, minutes, actor)
    # A volunteer who forgot to check out: the hours are a coordinator's to enter, by hand.
    # Flagged once: a second tap or SMS only hears the answer again.
    asked = db.execute(
        "SELECT 1 FROM events WHERE request_id = ? AND action = 'visit_too_long'"
        " AND created_at >= ?",
        [assignment["request_id"], assignment["checked_in_at"]],
    ).fetchone()
    if asked is not None:
        raise TooLong(f"a visit of {_duration(minutes)} needs a coordinator", assignment)
    dispatch.flag(
        db,
        assignment["request_id"],
        f"check-out for job {assignment['code']} came {_duration(minutes)} after the check-in:"
        " enter the real check-out time by hand",
        actor=actor,
        action="visit_too_long",
        volunteer=assignment["volunteer_id"],
    )
    raise TooLong(f"a visit of {_duration(minutes)} needs a coordinator", assignment)


def _advance(db, assignment, action, words, actor, **detail):
    """Move the request on (TRANSITIONS[action]); audit the step even if it had moved already.

    A coordinator may have set the request in progress or done by hand: the volunteer's check-in
    or check-out is still an event on it.
    """
    detail = {"volunteer": assignment["volunteer_id"], "code": assignment["code"], **detail}
    if not pipeline.transition(db, assignment["request_id"], action, actor=actor, detail=detail):
        record_event(db, assignment["request_id"], actor, words, detail)


def _duration(minutes):
    """Return minutes as "3 h 05 min"."""
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _checked_out(app, db, assignment, stamp, by, manual, minutes, actor):
    """Write a check-out, audited, and post its hours; inside the caller's transaction."""
    db.execute(
        "UPDATE assignments SET state = 'done', checked_out_at = ?, check_out_by = ?,"
        " minutes = ?, manual = MAX(manual, ?), updated_at = ?"
        " WHERE id = ? AND state = 'checked_in'",
        [stamp, by, minutes, manual, now(), assignment["id"]],
    )
    detail = {"at": stamp, "by": by, "manual": manual, "minutes": minutes}
    _advance(db, assignment, "check_out", "checked out", actor, **detail)
    # The hours enter the time bank in the same transaction: a visit is done and counted,
    # or neither.
    ledger.post_visit(db, assignment["id"], actor=actor)
    # The senior is asked whether the volunteer came, and how it was (app/rating.py).
    rating.schedule(app, db, assignment["id"])
    return Visit.from_row(dispatch.get(db, assignment["id"]))


# ---- a missed check-in --------------------------------------------------------------------


def schedule_missed(app, db, assignment_id, visit_at):
    """Queue the no-show check for CHECKIN_GRACE after the agreed start (none without one)."""
    # Without an agreed start ("as soon as they can") there is nothing to be late for: the
    # request stays assigned and on the coordinator's queue; nothing is marked a no-show.
    if visit_at is None:
        return None
    due = visit_at + timedelta(seconds=app.config["CHECKIN_GRACE"])
    delay = max(0.0, (due - datetime.now(UTC)).total_seconds())
    return jobs.enqueue(
        db, MISSED, {"assignment_id": assignment_id}, key=f"{MISSED}:{assignment_id}", delay=delay
    )


def miss_due(app, db, moment=None):
    """Mark as no-shows the taken jobs nobody checked in to in time; return their ids."""
    moment = moment or datetime.now(UTC)
    grace = timedelta(seconds=app.config["CHECKIN_GRACE"])
    zone = _zone(app)
    missed = []
    for assignment in dispatch.assignments(db, state="accepted"):
        start = visit_start(assignment["visit_at"], zone)
        if start is not None and start + grace <= moment and no_show(app, db, assignment["id"]):
            missed.append(assignment["id"])
    return missed


def no_show(app, db, assignment_id, *, actor="system"):
    """Mark a taken job a no-show, flag the coordinator, ask the next; return whether it was."""
    with db.atomic():
        stamp = now()
        cursor = db.execute(
            "UPDATE assignments SET state = 'no_show', updated_at = ?"
            " WHERE id = ? AND state = 'accepted' AND EXISTS (SELECT 1 FROM requests"
            " WHERE requests.id = assignments.request_id AND requests.status = 'assigned')",
            [stamp, assignment_id],
        )
        if cursor.rowcount != 1:
            # Checked in meanwhile, marked already, or a coordinator moved the request on
            # (done by hand, in progress): nobody is late for a visit no longer awaited.
            return False
        assignment = dispatch.get(db, assignment_id)
        volunteer = people.get_volunteer(db, assignment["volunteer_id"])
        detail = {"volunteer": volunteer["id"], "code": assignment["code"]}
        pipeline.transition(db, assignment["request_id"], "no_show", actor=actor, detail=detail)
        dispatch.flag(
            db,
            assignment["request_id"],
            f"{volunteer['name']} did not check in to job {assignment['code']} in time",
            actor=actor,
            action="no_show",
            **detail,
        )
        outbox.send_sms(
            db,
            key=f"missed:{assignment_id}",
            to=volunteer["phone"],
            body=dispatch._text(
                volunteer, "missed", code=assignment["code"], number=assignment["request_id"]
            ),
            request_id=assignment["request_id"],
            assignment_id=assignment_id,
        )
    # Back to triaged, the next volunteer not yet asked is offered it, as after a NO; when
    # nobody is left the coordinator is told (dispatch.cascade).
    dispatch.cascade(app, db, assignment["request_id"])
    return True


def excuse(db, assignment_id, *, reason, actor):
    """Excuse a no-show with a reason; return whether it changed (a replay does not)."""
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("give a reason to excuse a no-show")
    with db.atomic():
        assignment = dispatch.get(db, assignment_id)
        if assignment["state"] != "no_show":
            raise NotNoShow(f"job {assignment['code']} is {assignment['state']}", assignment)
        cursor = db.execute(
            "UPDATE assignments SET excused = 1, excuse = ?, updated_at = ?"
            " WHERE id = ? AND state = 'no_show' AND excused = 0",
            [reason[:1000], now(), assignment_id],
        )
        if cursor.rowcount != 1:
            return False
        record_event(
            db,
            assignment["request_id"],
            actor,
            "no_show_excused",
            {"volunteer": assignment["volunteer_id"], "code": assignment["code"], "reason": reason},
        )
    return True


@jobs.handler(MISSED)
def missed_job(payload):
    """Job: mark the no-shows whose grace is over (this one and any the worker missed)."""
    miss_due(current_app, get_db())


# ---- the volunteer's side: which job, and what to say --------------------------------------


def held_visits(db, volunteer_id):
    """Return a volunteer's jobs taken and not checked out, checked-in ones first."""
    return list(
        db["assignments"].rows_where(
            "volunteer_id = ? AND state IN ('accepted', 'checked_in')",
            [volunteer_id],
            order_by="state = 'checked_in' DESC, visit_at IS NULL, visit_at, id",
        )
    )


def _named(db, volunteer, code, meaning):
    """Return (the job an IN or OUT is about, None) or (None, what to answer instead)."""
    if code:
        own = db.execute(
            "SELECT id FROM assignments WHERE volunteer_id = ? AND code = ?"
            " ORDER BY state IN ('accepted', 'checked_in') DESC, id DESC LIMIT 1",
            [volunteer["id"], code],
        ).fetchone()
        if own is None:
            own = db.execute(
                "SELECT id FROM assignments WHERE code = ?"
                " AND state IN ('accepted', 'checked_in', 'done') ORDER BY id DESC LIMIT 1",
                [code],
            ).fetchone()  # another volunteer's: check_in and check_out refuse it
        if own is None:
            return None, dispatch._text(volunteer, "no_job_code", code=code)
        return dispatch.get(db, own[0]), None
    held = held_visits(db, volunteer["id"])
    if len(held) == 1:
        return held[0], None
    if held:
        return None, dispatch._text(volunteer, "which_job", code=held[0]["code"])
    if meaning == "out":
        # A second OUT after the visit ended: say it is checked out already.
        last = db.execute(
            "SELECT id FROM assignments WHERE volunteer_id = ? AND state IN ('done', 'no_show')"
            " ORDER BY id DESC LIMIT 1",
            [volunteer["id"]],
        ).fetchone()
        if last is not None:
            return dispatch.get(db, last[0]), None
    return None, dispatch._text(volunteer, "no_job")


def clock(stamp, zone):
    """Return a UTC stamp as HH:MM in zone."""
    return f"{datetime.fromisoformat(stamp).astimezone(zone):%H:%M}"


def done_text(db, volunteer, assignment):
    """Return the words that confirm a check-in or a check-out."""
    zone = _zone(current_app)
    request = queue.get(db, assignment["request_id"])
    words = dispatch._words(db, request, dispatch._volunteer_language(volunteer))
    values = {**words, "code": assignment["code"]}
    if assignment["state"] == "checked_in":
        return dispatch._text(
            volunteer, "checked_in", time=clock(assignment["checked_in_at"], zone), **values
        )
    minutes = assignment["minutes"] or 0
    duration = dispatch._text(
        volunteer, "duration", hours=minutes // 60, minutes=f"{minutes % 60:02d}"
    )
    return dispatch._text(
        volunteer,
        "checked_out",
        time=clock(assignment["checked_out_at"], zone),
        duration=duration,
        **values,
    )


def refusal_text(volunteer, error):
    """Return the words that say why an IN or OUT changed nothing."""
    assignment = error.assignment or {}
    zone = _zone(current_app)
    code = assignment.get("code", "")
    if isinstance(error, AlreadyCheckedIn):
        return dispatch._text(
            volunteer, "already_in", code=code, time=clock(assignment["checked_in_at"], zone)
        )
    if isinstance(error, AlreadyDone):
        return dispatch._text(
            volunteer, "already_out", code=code, time=clock(assignment["checked_out_at"], zone)
        )
    if isinstance(error, NotCheckedIn):
        return dispatch._text(volunteer, "not_in", code=code)
    if isinstance(error, TooLong):
        return dispatch._text(volunteer, "too_long", code=code)
    if isinstance(error, TooEarly):
        flow = dispatch.flow_for(dispatch._volunteer_language(volunteer), dispatch.SMS_NEEDS)
        start = visit_start(assignment["visit_at"], zone)
        when = dispatch.when_words(start, datetime.now(zone), flow.status)
        return dispatch._text(volunteer, "too_early", code=code, when=when)
    if isinstance(error, NotYours):
        return dispatch._text(volunteer, "not_yours", code=code)
    if isinstance(error, NotAccepted) and assignment.get("state") == "offered":
        return dispatch._text(volunteer, "take_first", code=code)
    if isinstance(error, NotAccepted) and assignment.get("state") == "no_show":
        return dispatch._text(volunteer, "missed_refused", code=code)
    return dispatch._text(volunteer, "job_closed", code=code)


def answer_sms(app, db, volunteer, reply):
    """Act on IN or OUT from a volunteer's SMS; return (the answer's text, the job)."""
    assignment, problem = _named(db, volunteer, reply.code, reply.meaning)
    if assignment is None:
        return problem, None
    act = check_in if reply.meaning == "in" else check_out
    try:
        act(app, db, assignment["id"], by="sms", actor=f"volunteer:{volunteer['id']}")
    except VisitError as error:
        # Another volunteer's job is not linked to this message: its number was a slip.
        mine = assignment["volunteer_id"] == volunteer["id"]
        return refusal_text(volunteer, error), assignment if mine else None
    return done_text(db, volunteer, dispatch.get(db, assignment["id"])), assignment
