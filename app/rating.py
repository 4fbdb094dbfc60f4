"""The senior confirms the visit and rates it, on a short call after the volunteer checks out.

    schedule()   at check-out, in its transaction: a job to call RATING_CALL_DELAY later,
                 moved to the end of RATING_QUIET_HOURS when it would fall in them
    place()      the job: the call goes out through the outbox once (rating:<assignment>);
                 no phone for the senior opens an "unconfirmed" supervision item instead
    came()       1: the volunteer came, the hours are verified; 2: they did not, and a
                 "did_not_come" item is opened
    rate()       1 (very poor) to 5 (very good), kept with rated_at; 1 or 2 opens "low_rating"
    ask_person() 0 at any point opens "person_asked" (the call then dials a coordinator)

Each answer is kept once: a replayed webhook (Twilio's retry) meets an answer already given
and changes nothing. A call nobody answers is not placed again: the answer stays unknown
(senior_came NULL) and supervision's sweep opens an "unconfirmed" item for it.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import current_app

from . import dispatch, jobs, outbox, people, queue, supervision
from .db import get_db
from .queue import now, record_event

CALL = "rating.call"
RATINGS = range(1, 6)
# A rating this low or lower is looked into by a coordinator.
LOW = 2
# What the call needs from a language's flow; without them the default language is used whole.
NEEDS = {
    "prompts": (
        "rating_hello",
        "rating_came",
        "rating_how",
        "rating_menu",
        "rating_thanks",
        "rating_sorry",
        "rating_not_came",
        "rating_no_answer",
        "rating_person_later",
        "rating_not_done",
        "rating_on_day",
        "rating_check",
        "rating_word_1",
        "rating_word_2",
    ),
    "status": ("today", "yesterday", "days"),
    **dispatch.SMS_NEEDS,
}


class RatingError(Exception):
    """The senior's answer could not be kept."""


class NotDone(RatingError):
    """The visit is not checked out (or was never made): there is nothing to confirm."""


# ---- pure ---------------------------------------------------------------------------------


def in_quiet(hour, quiet):
    """Return whether a local hour falls in quiet hours (start, end), which may cross midnight."""
    if not quiet:
        return False
    start, end = quiet
    return start <= hour < end if start < end else (hour >= start or hour < end)


def call_time(due, quiet, zone):
    """Return when a call due at due (aware) may be placed: due, or the end of quiet hours."""
    local = due.astimezone(zone)
    if not in_quiet(local.hour, quiet):
        return due
    start, end = quiet
    day = local.date()
    if start > end and local.hour >= start:
        day += timedelta(days=1)  # quiet from the evening: it ends tomorrow morning
    if end == 24:
        day, end = day + timedelta(days=1), 0
    return datetime.combine(day, time(end), zone).astimezone(UTC)


def day_words(stamp, today, flow):
    """Say which day a UTC stamp was, seen from today (local): today, yesterday, on Monday."""
    day = stamp.date()
    if day == today:
        return flow.status["today"]
    if day == today - timedelta(days=1):
        return flow.status["yesterday"]
    return flow.prompt("rating_on_day", day=flow.status["days"][day.weekday()])


# ---- the call -----------------------------------------------------------------------------


def _zone(app):
    return ZoneInfo(app.config["COORDINATOR_TIMEZONE"])


def schedule(app, db, assignment_id, moment=None):
    """Queue the rating call RATING_CALL_DELAY after moment (now), out of quiet hours."""
    moment = moment or datetime.now(UTC)
    due = moment + timedelta(seconds=app.config["RATING_CALL_DELAY"])
    at = call_time(due, app.config["RATING_QUIET_HOURS"], _zone(app))
    return jobs.enqueue(
        db,
        CALL,
        {"assignment_id": assignment_id},
        key=f"{CALL}:{assignment_id}",
        delay=max(0.0, (at - moment).total_seconds()),
    )


def place(app, db, assignment_id, moment=None):
    """Place the rating call through the outbox, once; return its outbox row (None: not now)."""
    moment = moment or datetime.now(UTC)
    assignment = dispatch.get(db, assignment_id)
    if assignment["state"] != "done" or assignment["senior_came"] is not None:
        return None  # undone by a coordinator, or answered already
    at = call_time(moment, app.config["RATING_QUIET_HOURS"], _zone(app))
    if at > moment:
        # The worker came to it late, in quiet hours (it was down overnight): wait for their end.
        jobs.enqueue(
            db,
            CALL,
            {"assignment_id": assignment_id},
            key=f"{CALL}:{assignment_id}:{at.isoformat()}",
            delay=(at - moment).total_seconds(),
        )
        return None
    request = queue.get(db, assignment["request_id"])
    phone = dispatch.senior_phone(db, request)
    if not phone:
        # Never a silent drop: somebody must ask the senior another way.
        volunteer = people.get_volunteer(db, assignment["volunteer_id"])
        supervision.open_item(
            db,
            "unconfirmed",
            reason=f"no phone to ask the senior whether {volunteer['name']} came"
            f" (job {assignment['code']})",
            actor="system",
            volunteer_id=assignment["volunteer_id"],
            request_id=assignment["request_id"],
            assignment_id=assignment_id,
        )
        return None
    return outbox.place_call(
        db,
        key=f"rating:{assignment_id}",
        to=phone,
        path=f"/twilio/rating/{assignment_id}",
        request_id=assignment["request_id"],
        assignment_id=assignment_id,
    )


@jobs.handler(CALL)
def call_job(payload):
    """Job: call the senior to confirm and rate a visit."""
    place(current_app, get_db(), payload["assignment_id"])


def words(db, assignment_id):
    """Return (flow, values) for the rating call, in the senior's language."""
    assignment = dispatch.get(db, assignment_id)
    request = queue.get(db, assignment["request_id"])
    volunteer = people.get_volunteer(db, assignment["volunteer_id"])
    person = dispatch._person(db, request)
    flow = dispatch.flow_for(person.get("language") or request.get("language"), NEEDS)
    zone = _zone(current_app)
    stamp = assignment["checked_out_at"] or now()
    day = day_words(datetime.fromisoformat(stamp).astimezone(zone), datetime.now(zone).date(), flow)
    return flow, {
        "volunteer": volunteer["name"],
        "category": dispatch._label(request["category"], flow.language),
        "day": day,
    }


# ---- the senior's answers -----------------------------------------------------------------


def _done(db, assignment_id):
    """Return a checked-out assignment, or raise NotDone."""
    try:
        assignment = dispatch.get(db, assignment_id)
    except dispatch.AssignmentNotFound as exc:
        raise NotDone(str(exc)) from exc
    if assignment["state"] != "done":
        raise NotDone(f"job {assignment['code']} is {assignment['state']}, not done")
    return assignment


def _about(assignment):
    """Return what an event or item says about the visit."""
    return {"volunteer": assignment["volunteer_id"], "code": assignment["code"]}


def came(db, assignment_id, answer, *, actor="caller"):
    """Keep the senior's yes or no once; a no opens "did_not_come". Return the assignment."""
    if answer not in ("yes", "no"):
        raise ValueError(f"answer must be yes or no, not {answer!r}")
    with db.atomic():
        assignment = _done(db, assignment_id)
        # Hours a coordinator entered by hand stay unverified: the senior confirms the visit,
        # not times nobody recorded at the door.
        verified = int(answer == "yes" and not assignment["manual"])
        cursor = db.execute(
            "UPDATE assignments SET senior_came = ?, verified = ?, updated_at = ?"
            " WHERE id = ? AND state = 'done' AND senior_came IS NULL",
            [answer, verified, now(), assignment_id],
        )
        if cursor.rowcount == 1:
            detail = _about(assignment) | {"verified": verified}
            action = "senior_confirmed" if answer == "yes" else "senior_said_not_came"
            record_event(db, assignment["request_id"], actor, action, detail)
            if answer == "no":
                _open(db, "did_not_come", assignment, "the senior said {name} did not come", actor)
        return dispatch.get(db, assignment_id)


def rate(db, assignment_id, rating, *, actor="caller"):
    """Keep a rating 1-5 once, after a yes, with rated_at; 1 or 2 opens "low_rating"."""
    if rating not in RATINGS:
        raise ValueError(f"a rating is 1 to 5, not {rating!r}")
    with db.atomic():
        assignment = _done(db, assignment_id)
        stamp = now()
        cursor = db.execute(
            "UPDATE assignments SET rating = ?, rated_at = ?, updated_at = ?"
            " WHERE id = ? AND state = 'done' AND senior_came = 'yes' AND rating IS NULL",
            [rating, stamp, stamp, assignment_id],
        )
        if cursor.rowcount == 1:
            detail = _about(assignment) | {"rating": rating}
            record_event(db, assignment["request_id"], actor, "rated", detail)
            if rating <= LOW:
                reason = f"the senior rated the help of {{name}} {rating} of 5"
                _open(db, "low_rating", assignment, reason, actor)
        return dispatch.get(db, assignment_id)


def _open(db, kind, assignment, reason, actor):
    """Open a supervision item about a visit; reason names the volunteer as {name}."""
    volunteer = people.get_volunteer(db, assignment["volunteer_id"])
    return supervision.open_item(
        db,
        kind,
        reason=reason.format(name=volunteer["name"]) + f" (job {assignment['code']})",
        actor=actor,
        volunteer_id=assignment["volunteer_id"],
        request_id=assignment["request_id"],
        assignment_id=assignment["id"],
    )


def ask_person(db, assignment_id, *, actor="caller"):
    """Open a "person_asked" item: the senior pressed 0 on the rating call. Return the item."""
    assignment = _done(db, assignment_id)
    item, _ = supervision.open_item(
        db,
        "person_asked",
        reason=f"the senior asked for a person on the call about job {assignment['code']}",
        actor=actor,
        volunteer_id=assignment["volunteer_id"],
        request_id=assignment["request_id"],
        assignment_id=assignment_id,
    )
    return item
