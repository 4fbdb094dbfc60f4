"""Offers to volunteers: who is asked, who said yes first, and the cascade when nobody does.

    offer()        a coordinator asks chosen volunteers, or the top N of the ranking
    answer_sms()   a volunteer's reply: YES/NO with the offer's code, HELP, STOP, or a note
    accept()       the first yes wins, atomically; the others are told the job is taken,
                   and the senior is called and told who will come and when
    decline()      the next candidate is asked
    expire_due()   offers nobody answered in OFFER_TIMEOUT: the coordinator is alerted and
                   the next candidate asked

Every SMS and call goes through the outbox. `parse_reply` and the wording are pure.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import current_app
from rapidfuzz.distance import OSA

from . import jobs, links, outbox, people, pipeline, queue
from .availability import next_free, parse_exceptions, parse_slots
from .classify import UnknownLanguage
from .db import get_db
from .flows import available_languages, load_flow
from .queue import now, record_event
from .sentences import fill

EXPIRE = "offers.expire"
# An offer, then (app/visits.py) the visit: accepted -> checked_in -> done, or no_show.
STATES = (
    "offered",
    "accepted",
    "declined",
    "expired",
    "withdrawn",
    "checked_in",
    "done",
    "no_show",
    "cancelled",
)
# A volunteer holds a job from their yes until they check out; one holder per request.
HELD = ("accepted", "checked_in")
CHANNELS = ("sms", "call")
MEANINGS = ("yes", "no", "help", "stop", "start", "in", "out")
# Requests a volunteer can still be offered.
OFFERABLE = ("new", "triaged")
MAX_TOP = 20
# Codes are not secrets, but a guessable sequence would let one volunteer answer another's.
_RANDOM = secrets.SystemRandom()
_TOKEN_RE = re.compile(r"[^\W\d_]+|\d+")
_CHECK_RE = re.compile(r"\b(check|checked)[\s-]+(in|out)\b")


class DispatchError(Exception):
    """An offer could not be made or answered."""


class CannotOffer(DispatchError):
    """The request cannot be offered now (it has a volunteer, or it is closed)."""


class BadVolunteer(DispatchError, ValueError):
    """A volunteer named for an offer cannot take it (unknown, paused, opted out, asked)."""


class AssignmentNotFound(DispatchError, LookupError):
    """No offer has that id."""


# ---- pure: reading a reply ----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What a volunteer's SMS means: a keyword and the offer code it names, or a note."""

    meaning: str  # yes, no, help, stop, start, or note
    code: str | None = None


def parse_reply(text, words):
    """Read an SMS as one keyword (any case, a small typo) and an optional code, or a note.

    words maps each meaning to its words, the keyword itself first; only the keyword
    forgives a typo, so "sure" is yes but "pure" is a note. STOP and START forgive only
    a swapped or doubled letter: opting someone out by a guess would be worse than asking.
    """
    folded = unicodedata.normalize("NFKC", text or "").lower()
    # "check in 427", "checked out": two words people write for one keyword.
    folded = _CHECK_RE.sub(r"\1\2", folded)
    tokens = _TOKEN_RE.findall(folded)
    codes = [t for t in tokens if t.isdigit()]
    letters = [t for t in tokens if not t.isdigit()]
    if len(letters) != 1 or len(codes) > 1:
        return Reply("note")
    meaning = _keyword(letters[0], words)
    if meaning is None:
        return Reply("note")
    return Reply(meaning, codes[0] if codes else None)


def _keyword(token, words):
    """Return the meaning a single word has, or None."""
    for meaning, choices in words.items():
        if token in choices:
            return meaning
    found = set()
    for meaning, choices in words.items():
        keyword = choices[0] if choices else ""
        if len(keyword) < 3 or len(token) < 3:
            continue  # a typo of "no" is another word
        if meaning in ("stop", "start"):
            if len(keyword) >= 4 and _slip(token, keyword):
                found.add(meaning)
        elif OSA.distance(token, keyword) <= 1:
            found.add(meaning)
    return found.pop() if len(found) == 1 else None


def _slip(token, keyword):
    """Return whether token is keyword with two neighbouring letters swapped or one doubled."""
    if _squeeze(token) == _squeeze(keyword) and len(token) <= len(keyword) + 1:
        return True
    return len(token) == len(keyword) and any(
        token == keyword[:i] + keyword[i + 1] + keyword[i] + keyword[i + 2 :]
        for i in range(len(keyword) - 1)
    )


def _squeeze(word):
    """Collapse runs of one letter: "sttop" -> "stop"."""
    return re.sub(r"(.)\1+", r"\1", word)


def new_code(taken, rng=None):
    """Return a short numeric code no open offer uses: 3 digits, 4 once those get crowded."""
    rng = rng or _RANDOM
    digits = 3 if len(taken) < 300 else 4
    while True:
        code = str(rng.randrange(10 ** (digits - 1), 10**digits))
        if code not in taken:
            return code


def when_words(moment, now_local, status_words):
    """Say when a volunteer will come: 'today at 14:00', 'on Tuesday at 10:00'."""
    if moment is None:
        return status_words.get("visit_soon", "as soon as they can")
    clock = f"{moment:%H:%M}"
    if moment.date() == now_local.date():
        return status_words["visit_today"].format(time=clock)
    day = status_words["days"][moment.weekday()]
    return status_words["visit_day"].format(day=day, time=clock)


# ---- reading offers -----------------------------------------------------------------------


def get(db, assignment_id):
    """Return one offer, or raise AssignmentNotFound."""
    row = next(db["assignments"].rows_where("id = ?", [assignment_id]), None)
    if row is None:
        raise AssignmentNotFound(f"no assignment {assignment_id}")
    return row


def assignments(db, *, request_id=None, volunteer_id=None, state=None):
    """Return offers, oldest first, for a request, a volunteer or in a state."""
    where, params = [], []
    for column, value in (("request_id", request_id), ("volunteer_id", volunteer_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if state:
        where.append("state = ?")
        params.append(state)
    return list(db["assignments"].rows_where(" AND ".join(where) or None, params, order_by="id"))


# ---- wording ------------------------------------------------------------------------------


# What each use of a flow needs from it; a language file without them falls back whole to
# the default language, so nobody hears (or reads) half of one language and half of another.
SMS_NEEDS = {"sms": ("someone", "nowhere"), "status": ("days", "visit_today", "visit_day")}
VISIT_NEEDS = {
    "prompts": (
        "visit_hello",
        "visit",
        "visit_menu",
        "visit_suits",
        "visit_another_time",
        "visit_no_answer",
    ),
    **SMS_NEEDS,
}
OFFER_CALL_NEEDS = {"prompts": ("offer_hello", "offer", "offer_menu"), **SMS_NEEDS}


def flow_for(language, needs=None):
    """Return a language's flow, or the default language's if it lacks words needs names."""
    # needs: {"prompts": (...), "sms": (...), "status": (...)}
    config = current_app.config
    if language in available_languages(config["FLOWS_DIR"]):
        flow = load_flow(config["FLOWS_DIR"], language)
        if all(key in getattr(flow, part) for part, keys in (needs or {}).items() for key in keys):
            return flow
    return load_flow(config["FLOWS_DIR"], config["DEFAULT_LANGUAGE"])


def _label(category, language):
    """Return a category in plain words in a language (or the default one)."""
    try:
        return pipeline.categories_for(language).label(category or "other")
    except UnknownLanguage:
        default = current_app.config["DEFAULT_LANGUAGE"]
        return pipeline.categories_for(default).label(category or "other")


def _tz():
    return ZoneInfo(current_app.config["COORDINATOR_TIMEZONE"])


def _visit_time(volunteer, moment=None, request=None):
    """Return the request's agreed start, else when a volunteer is next free later; or None.

    Both are in the coordinators' zone.
    """
    if request and request.get("wanted_at"):
        # A standing arrangement's occurrence: the time was agreed with the senior.
        return datetime.fromisoformat(request["wanted_at"]).astimezone(_tz())
    _, weights = people.rules_for(current_app)
    local = (moment or datetime.now(UTC)).astimezone(_tz())
    free = next_free(
        parse_slots(volunteer["availability"] or ""),
        parse_exceptions(volunteer["exceptions"] or ""),
        local,
        int(weights.horizon_hours * 60),
    )
    if free is None or free[0] == 0:
        # Free now: they come as soon as they can. The minute they said yes is no agreed
        # start, so nobody is marked a no-show half an hour later, nor told a time just past.
        return None
    return (local + timedelta(minutes=free[0])).replace(second=0, microsecond=0)


def _volunteer_language(volunteer):
    """Return the language a volunteer's messages are written in."""
    config = current_app.config
    spoken = available_languages(config["FLOWS_DIR"])
    return (
        next((code for code in volunteer["languages"] if code in spoken), None)
        or config["DEFAULT_LANGUAGE"]
    )


def _person(db, request):
    """Return the person a request is for, or {}."""
    if request.get("person_id"):
        return people.get_person(db, request["person_id"])
    if request.get("phone"):
        return people.find_person_by_phone(db, request["phone"]) or {}
    return {}


def _words(db, request, language, visit_at=None):
    """Return the values an offer's or visit's words are filled with."""
    flow = flow_for(language, SMS_NEEDS)
    person = _person(db, request)
    now_local = datetime.now(_tz())
    return {
        "category": _label(request["category"], flow.language),
        "person": person.get("name") or flow.sms["someone"],
        # An offer goes to several volunteers: it names the street, not the door. Only the
        # one who takes the job is sent the whole address.
        "place": street_of(person.get("address")) or request.get("region") or flow.sms["nowhere"],
        "address": person.get("address") or request.get("region") or flow.sms["nowhere"],
        "when": when_words(visit_at, now_local, flow.status),
        "number": request["id"],
    }


def senior_phone(db, request):
    """Return the phone a senior is called on: their person's first, else the request's."""
    person = _person(db, request)
    return (person.get("phones") or [None])[0] or request.get("phone")


def street_of(address):
    """Return an address without its house number: "4 Elm St, Flat 2" -> "Elm St"."""
    if not address:
        return None
    first = address.split(",")[0]
    return re.sub(r"^\s*(no\.?\s*)?\d+[a-z]?\b[\s,]*", "", first, flags=re.I).strip() or None


def _text(volunteer, key, **values):
    """Return an SMS text for a volunteer, in their language."""
    flow = flow_for(_volunteer_language(volunteer), {"sms": (key,), **SMS_NEEDS})
    return fill(flow.sms[key], **values)


# ---- offering -----------------------------------------------------------------------------


def offer(app, db, request_id, *, volunteer_ids=None, top=None, actor, wave=None):
    """Offer a request to chosen volunteers, or to the top N of its ranking; return the offers.

    Ties in the ranking go to the lower volunteer id, so the same registry gives the same
    offers. A volunteer already asked about this request, paused or opted out is not asked.
    """
    request = queue.get(db, request_id)
    if request["status"] not in OFFERABLE:
        raise CannotOffer(f"request {request_id} is {request['status']}: it cannot be offered")
    asked = {a["volunteer_id"] for a in assignments(db, request_id=request_id)}
    if volunteer_ids is not None:
        chosen = [_offerable(db, vid, asked) for vid in dict.fromkeys(volunteer_ids)]
    else:
        if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TOP:
            raise BadVolunteer(f"top must be a whole number from 1 to {MAX_TOP}")
        _, ranking = people.suggest(app, db, request, limit=top + len(asked))
        chosen = []
        for match in ranking.matches:
            volunteer = people.get_volunteer(db, match.volunteer_id)
            if match.volunteer_id in asked or volunteer.get("opted_out_at"):
                continue
            chosen.append(volunteer)
            if len(chosen) == top:
                break
    if not chosen:
        return []
    timeout = app.config["OFFER_TIMEOUT"]
    made = []
    if wave is None:
        row = db.execute(
            "SELECT COALESCE(MAX(wave), 0) + 1 FROM assignments WHERE request_id = ?",
            [request_id],
        ).fetchone()
        wave = row[0]
    # A held job's code still names it (IN 427, OUT 427): no new offer shares it.
    taken = {
        r[0]
        for r in db.execute(
            "SELECT code FROM assignments WHERE state IN ('offered', 'accepted', 'checked_in')"
        )
    }
    # The transaction takes the write lock as it begins (BEGIN IMMEDIATE): the request is
    # read again under it, so a coordinator closing it a moment ago stops the offers here.
    with db.atomic():
        status = queue.get(db, request_id)["status"]
        if status not in OFFERABLE:
            raise CannotOffer(f"request {request_id} is {status}: it cannot be offered")
        for volunteer in chosen:
            made.append(_make_offer(db, request, volunteer, taken, wave=wave, actor=actor))
        record_event(
            db,
            request_id,
            actor,
            "offered",
            {
                "wave": wave,
                "offers": [
                    {"volunteer": a["volunteer_id"], "code": a["code"], "channel": a["channel"]}
                    for a in made
                ],
            },
        )
        for assignment in made:
            jobs.enqueue(
                db,
                EXPIRE,
                {"assignment_id": assignment["id"]},
                key=f"{EXPIRE}:{assignment['id']}",
                delay=timeout,
            )
    return made


def _offerable(db, volunteer_id, asked):
    """Return a volunteer who may be offered this request, or raise BadVolunteer."""
    try:
        volunteer = people.get_volunteer(db, volunteer_id)
    except people.VolunteerNotFound as exc:
        raise BadVolunteer(str(exc)) from exc
    if not volunteer["active"]:
        raise BadVolunteer(f"volunteer {volunteer_id} is paused")
    if volunteer.get("opted_out_at"):
        raise BadVolunteer(f"volunteer {volunteer_id} replied STOP: they get no offers")
    if volunteer_id in asked:
        raise BadVolunteer(f"volunteer {volunteer_id} was already asked about this request")
    return volunteer


def _make_offer(db, request, volunteer, taken, *, wave, actor):
    """Store one offer with a code not in taken (then added to it); queue its SMS or call."""
    stamp = datetime.now(UTC)
    expires = stamp + timedelta(seconds=current_app.config["OFFER_TIMEOUT"])
    channel = volunteer.get("offer_channel") or "sms"
    for _ in range(20):
        code = new_code(taken)
        try:
            with db.atomic():  # a savepoint: a code taken meanwhile costs one retry
                assignment_id = (
                    db["assignments"]
                    .insert(
                        {
                            "request_id": request["id"],
                            "volunteer_id": volunteer["id"],
                            "state": "offered",
                            "code": code,
                            "channel": channel,
                            "wave": wave,
                            "actor": actor,
                            "offered_at": stamp.isoformat(timespec="seconds"),
                            "expires_at": expires.isoformat(timespec="seconds"),
                            "created_at": now(),
                            "updated_at": now(),
                        }
                    )
                    .last_pk
                )
            taken.add(code)
            break
        except sqlite3.IntegrityError:
            if db["assignments"].count_where(
                "request_id = ? AND volunteer_id = ? AND state = 'offered'",
                [request["id"], volunteer["id"]],
            ):
                # Another coordinator asked them a moment ago.
                raise BadVolunteer(
                    f"volunteer {volunteer['id']} was already asked about this request"
                ) from None
            taken.add(code)
    else:
        raise DispatchError("no free offer code; try again")
    language = _volunteer_language(volunteer)
    visit_at = _visit_time(volunteer, request=request)
    words = _words(db, request, language, visit_at)
    key = f"offer:{assignment_id}"
    if channel == "call":
        outbox.place_call(
            db,
            key=key,
            to=volunteer["phone"],
            path=f"/twilio/offer-call/{assignment_id}",
            request_id=request["id"],
            assignment_id=assignment_id,
        )
    else:
        link = links.url(current_app.config, assignment_id, volunteer["id"])
        outbox.send_sms(
            db,
            key=key,
            to=volunteer["phone"],
            body=offer_text(volunteer, code=code, link=link, **words),
            request_id=request["id"],
            assignment_id=assignment_id,
        )
    return get(db, assignment_id)


def offer_text(volunteer, *, link=None, **values):
    """Return an offer's SMS: the reply words, and the page's link when there is one."""
    if link is None:
        return _text(volunteer, "offer", **values)
    return _text(volunteer, "offer_link", link=link, **values)


# ---- answers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What became of an answer: accepted, taken, closed, full, declined, paused."""

    result: str
    assignment: dict


def accept(app, db, assignment_id, *, actor, by=None):
    """Accept an offer if nobody else has: the first yes wins, atomically; return Outcome.

    by names the way the yes came (sms, call, link) for the audit trail.
    """
    stamp = now()
    try:
        with db.atomic():
            # The conditional UPDATE comes first: it takes the write lock, so two yeses at
            # the same moment queue here and the second finds the first's row accepted.
            cursor = db.execute(
                "UPDATE assignments SET state = 'accepted', answered_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'offered' AND NOT EXISTS (SELECT 1 FROM assignments"
                " a WHERE a.request_id = assignments.request_id"
                " AND a.state IN ('accepted', 'checked_in'))",
                [stamp, stamp, assignment_id],
            )
            if cursor.rowcount != 1:
                return _why_not(db, assignment_id)
            assignment = get(db, assignment_id)
            volunteer = people.get_volunteer(db, assignment["volunteer_id"])
            if not volunteer["active"] or volunteer.get("opted_out_at"):
                # Paused (or ended) since the offer went out: their yes takes nothing.
                raise _Refuse("paused")
            busy = db.execute(
                "SELECT COUNT(*) FROM assignments a JOIN requests r ON r.id = a.request_id"
                " WHERE a.volunteer_id = ? AND a.state IN ('accepted', 'checked_in')"
                " AND r.status NOT IN ('done', 'cancelled')",
                [volunteer["id"]],
            ).fetchone()[0]
            if busy > volunteer["max_open"]:  # this job is counted already
                raise _Refuse("full")
            if not pipeline.transition(
                db,
                assignment["request_id"],
                "assign",
                actor=actor,
                detail={"volunteer": volunteer["id"]},
            ):
                raise _Refuse("closed")
            _accepted(app, db, assignment, volunteer, actor=actor, by=by)
    except _Refuse as refusal:
        if refusal.result in ("closed", "paused"):
            _close(db, assignment_id, "withdrawn")
        if refusal.result == "paused":
            cascade(app, db, get(db, assignment_id)["request_id"])  # nobody waits on them
        return Outcome(refusal.result, get(db, assignment_id))
    except sqlite3.IntegrityError:
        # The unique index on accepted offers: another yes won in a way the UPDATE missed.
        return Outcome("taken", get(db, assignment_id))
    return Outcome("accepted", get(db, assignment_id))


class _Refuse(Exception):
    """Roll an acceptance back, saying why."""

    def __init__(self, result):
        super().__init__(result)
        self.result = result


def _why_not(db, assignment_id):
    """Say why an offer could not be accepted: another volunteer took it, or it closed."""
    assignment = get(db, assignment_id)
    if assignment["state"] in (*HELD, "done"):
        return Outcome("accepted", assignment)  # a replayed yes
    winner = db.execute(
        "SELECT 1 FROM assignments WHERE request_id = ? AND state IN ('accepted', 'checked_in')"
        " AND id != ?",
        [assignment["request_id"], assignment_id],
    ).fetchone()
    return Outcome("taken" if winner else "closed", assignment)


def _accepted(app, db, assignment, volunteer, *, actor, by=None):
    """After a yes: withdraw the other offers, tell those volunteers, and call the senior."""
    request = queue.get(db, assignment["request_id"])
    visit_at = _visit_time(volunteer, request=request)
    db["assignments"].update(
        assignment["id"],
        {"visit_at": visit_at.isoformat(timespec="minutes") if visit_at else None},
    )
    others = [
        a
        for a in assignments(db, request_id=request["id"], state="offered")
        if a["id"] != assignment["id"]
    ]
    for other in others:
        if _close(db, other["id"], "withdrawn"):
            loser = people.get_volunteer(db, other["volunteer_id"])
            outbox.send_sms(
                db,
                key=f"withdrawn:{other['id']}",
                to=loser["phone"],
                body=_text(loser, "withdrawn", number=request["id"]),
                request_id=request["id"],
                assignment_id=other["id"],
            )
    record_event(
        db,
        request["id"],
        actor,
        "accepted",
        {
            "volunteer": volunteer["id"],
            "name": volunteer["name"],
            "code": assignment["code"],
            "visit_at": visit_at.isoformat(timespec="minutes") if visit_at else None,
            **({"by": by} if by else {}),
            "offers_withdrawn": len(others),  # a count: the audit trail reads 2-lists as changes
        },
    )
    from . import visits  # visits builds on dispatch: imported when first needed

    visits.schedule_missed(app, db, assignment["id"], visit_at)
    phone = senior_phone(db, request)
    if phone:
        outbox.place_call(
            db,
            key=f"visit:{assignment['id']}",
            to=phone,
            path=f"/twilio/visit/{assignment['id']}",
            request_id=request["id"],
            assignment_id=assignment["id"],
        )
    else:
        flag(db, request["id"], "no phone to tell the senior who is coming", actor="system")


def _close(db, assignment_id, state):
    """Close an open offer as declined, expired or withdrawn; return whether it was open."""
    stamp = now()
    cursor = db.execute(
        "UPDATE assignments SET state = ?, answered_at = COALESCE(answered_at, ?), updated_at = ?"
        " WHERE id = ? AND state = 'offered'",
        [state, stamp, stamp, assignment_id],
    )
    return cursor.rowcount == 1


def decline(app, db, assignment_id, *, actor, by=None):
    """Record a no and ask the next candidate; return Outcome (by: sms, call, link)."""
    with db.atomic():
        if not _close(db, assignment_id, "declined"):
            return _why_not(db, assignment_id)
        assignment = get(db, assignment_id)
        record_event(
            db,
            assignment["request_id"],
            actor,
            "declined",
            {
                "volunteer": assignment["volunteer_id"],
                "code": assignment["code"],
                **({"by": by} if by else {}),
            },
        )
    cascade(app, db, assignment["request_id"])
    return Outcome("declined", get(db, assignment_id))


def expire_due(app, db, moment=None):
    """Expire offers past their time, alert the coordinator and ask the next; return their ids."""
    stamp = (moment or datetime.now(UTC)).isoformat(timespec="seconds")
    due = db.execute(
        "SELECT id FROM assignments WHERE state = 'offered' AND expires_at <= ? ORDER BY id",
        [stamp],
    ).fetchall()
    expired = []
    for (assignment_id,) in due:
        assignment = get(db, assignment_id)
        if queue.get(db, assignment["request_id"])["status"] not in OFFERABLE:
            # Closed or assigned by a coordinator meanwhile: nobody waits on this offer.
            _close(db, assignment_id, "withdrawn")
            continue
        with db.atomic():
            if not _close(db, assignment_id, "expired"):
                continue  # answered meanwhile
            volunteer = people.get_volunteer(db, assignment["volunteer_id"])
            flag(
                db,
                assignment["request_id"],
                f"no answer from {volunteer['name']} to offer {assignment['code']}",
                actor="system",
                action="offer_expired",
                volunteer=volunteer["id"],
            )
            outbox.send_sms(
                db,
                key=f"expired:{assignment_id}",
                to=volunteer["phone"],
                body=_text(
                    volunteer, "expired", code=assignment["code"], number=assignment["request_id"]
                ),
                request_id=assignment["request_id"],
                assignment_id=assignment_id,
            )
        expired.append(assignment)
    for assignment in expired:
        cascade(app, db, assignment["request_id"])
    return [a["id"] for a in expired]


def cascade(app, db, request_id):
    """Ask the next candidate in place of one who said no or did not answer."""
    request = queue.get(db, request_id)
    if request["status"] not in OFFERABLE:
        return []
    if db["assignments"].count_where(
        "request_id = ? AND state IN ('accepted', 'checked_in')", [request_id]
    ):
        return []
    try:
        made = offer(app, db, request_id, top=1, actor="system")
    except CannotOffer:
        return []  # closed or taken a moment ago: nobody is waiting for the next volunteer
    if not made:
        flag(db, request_id, "no volunteer left to ask", actor="system", action="no_volunteer")
    return made


def request_closed(db, request_id, status, *, actor):
    """After a coordinator closes a request: open offers are withdrawn, a job taken is cancelled.

    Every volunteer concerned is told by SMS, so nobody goes to a visit nobody needs. A job
    already checked in is left for its check-out: the volunteer is there. A request marked
    done keeps its taken job for a visit entered by hand, and is never marked a no-show.
    """
    stamp = now()
    with db.atomic():
        told = []
        for assignment in assignments(db, request_id=request_id, state="offered"):
            if _close(db, assignment["id"], "withdrawn"):
                told.append((assignment, "request_closed"))
        if status == "cancelled":
            for assignment in assignments(db, request_id=request_id, state="accepted"):
                cursor = db.execute(
                    "UPDATE assignments SET state = 'cancelled', updated_at = ?"
                    " WHERE id = ? AND state = 'accepted'",
                    [stamp, assignment["id"]],
                )
                if cursor.rowcount == 1:
                    told.append((assignment, "job_cancelled"))
        for assignment, key in told:
            volunteer = people.get_volunteer(db, assignment["volunteer_id"])
            outbox.send_sms(
                db,
                key=f"{key}:{assignment['id']}",
                to=volunteer["phone"],
                body=_text(volunteer, key, code=assignment["code"], number=request_id),
                request_id=request_id,
                assignment_id=assignment["id"],
            )
        if told:
            record_event(
                db,
                request_id,
                actor,
                "offers_closed",
                {
                    "status": status,
                    "withdrawn": sum(key == "request_closed" for _, key in told),
                    "cancelled": sum(key == "job_cancelled" for _, key in told),
                },
            )
    return [assignment["id"] for assignment, _ in told]


def flag(db, request_id, reason, *, actor, action="needs_coordinator", **detail):
    """Put a request in front of a coordinator with the reason, as an event on it."""
    with db.atomic():
        db.execute(
            "UPDATE requests SET needs_review = 1, updated_at = ? WHERE id = ?",
            [now(), request_id],
        )
        record_event(db, request_id, actor, action, {"reason": reason, **detail})


# ---- SMS from volunteers ------------------------------------------------------------------


def _words_of_all_flows():
    """Return every language's reply words together: a reply may come in any of them."""
    config = current_app.config
    merged = {m: [] for m in MEANINGS}
    default = load_flow(config["FLOWS_DIR"], config["DEFAULT_LANGUAGE"])
    flows = [default] + [
        load_flow(config["FLOWS_DIR"], code)
        for code in available_languages(config["FLOWS_DIR"])
        if code != default.language
    ]
    for flow in flows:
        for meaning, words in flow.sms.get("words", {}).items():
            if meaning in merged:
                merged[meaning].extend(w.lower() for w in words)
    return merged


def answer_sms(app, db, *, message_sid, from_phone, body):
    """Act on an SMS to the line once per MessageSid; return the reply text (None: none)."""
    known = next(db["inbound_sms"].rows_where("message_sid = ?", [message_sid]), None)
    if known is not None:
        return known["reply"]  # Twilio's retry: the same answer, nothing done twice
    reply = parse_reply(body, _words_of_all_flows())
    volunteer = _volunteer_by_phone(db, from_phone)
    if volunteer is None:
        text, assignment = _from_someone_else(db, reply, body, from_phone, message_sid), None
    else:
        text, assignment = _act(app, db, volunteer, reply, body)
    db.execute(
        "INSERT INTO inbound_sms (message_sid, from_phone, body, volunteer_id, assignment_id,"
        " meaning, reply, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(message_sid) DO NOTHING",
        [
            message_sid,
            from_phone,
            body,
            volunteer["id"] if volunteer else None,
            assignment["id"] if assignment else None,
            reply.meaning,
            text,
            now(),
        ],
    )
    return text


def _volunteer_by_phone(db, phone):
    """Return the volunteer with this phone, or None."""
    row = db.execute("SELECT id FROM volunteers WHERE phone = ?", [phone or ""]).fetchone()
    return people.get_volunteer(db, row[0]) if row else None


def _act(app, db, volunteer, reply, body):
    """Do what a reply asks; return (the answer's text, the offer it was about)."""
    if reply.meaning == "help":
        return _text(volunteer, "help"), None
    if reply.meaning == "stop":
        opt_out(db, volunteer["id"], actor=f"sms:{volunteer['phone']}")
        return _text(volunteer, "stopped"), None
    if reply.meaning == "start":
        opt_in(db, volunteer["id"], actor=f"sms:{volunteer['phone']}")
        return _text(volunteer, "started"), None
    if reply.meaning in ("in", "out"):
        from . import visits  # visits builds on dispatch: imported when first needed

        return visits.answer_sms(app, db, volunteer, reply)
    actor = f"volunteer:{volunteer['id']}"
    if reply.meaning == "note":
        assignment = _latest(db, volunteer["id"])
        if assignment is None:
            # No offer to attach it to: it is kept in the audit trail, for a person to read.
            record_event(
                db, None, actor, "volunteer_note", {"volunteer": volunteer["id"], "text": body}
            )
            return _text(volunteer, "noted"), None
        flag(
            db,
            assignment["request_id"],
            f"message from {volunteer['name']}",
            actor=actor,
            action="volunteer_note",
            volunteer=volunteer["id"],
            text=body,
        )
        return _text(volunteer, "noted"), assignment
    assignment, problem = _offer_named(db, volunteer, reply.code)
    if assignment is None:
        return problem, None
    if reply.meaning == "yes":
        outcome = accept(app, db, assignment["id"], actor=actor, by="sms")
    else:
        outcome = decline(app, db, assignment["id"], actor=actor, by="sms")
    return outcome_text(db, volunteer, outcome), assignment


def _from_someone_else(db, reply, body, from_phone, message_sid):
    """Answer an SMS from a number no volunteer has; a message is kept for a call back."""
    config = current_app.config
    sms = flow_for(config["DEFAULT_LANGUAGE"], {"sms": ("help", "callback")}).sms
    if reply.meaning == "help":
        return sms["help"]
    if reply.meaning != "note" or not (body or "").strip():
        return None  # Twilio itself honours STOP and START for numbers that are not ours
    # A senior (or anyone) texting the line must not go unheard: a person calls back.
    pipeline.call_back(
        db,
        channel="phone",
        phone=from_phone or None,
        language=config["DEFAULT_LANGUAGE"],
        source_key=f"sms:{message_sid}",
        reason=f"SMS: {body.strip()[:500]}",
    )
    return sms["callback"]


def _offer_named(db, volunteer, code):
    """Return (the open offer a reply is about, None) or (None, what to answer instead)."""
    if code:
        found = db.execute(
            "SELECT id, state FROM assignments WHERE volunteer_id = ? AND code = ?"
            " ORDER BY state = 'offered' DESC, id DESC LIMIT 1",
            [volunteer["id"], code],
        ).fetchone()
        if found is None:
            return None, _text(volunteer, "closed", code=code)
        # A yes to an offer already closed still gets its own answer (taken, closed).
        return get(db, found[0]), None
    open_offers = assignments(db, volunteer_id=volunteer["id"], state="offered")
    if len(open_offers) == 1:
        return open_offers[0], None
    if not open_offers:
        return None, _text(volunteer, "no_offer")
    return None, _text(volunteer, "which", code=open_offers[-1]["code"])


def _latest(db, volunteer_id):
    """Return a volunteer's latest offer, open ones first, or None."""
    row = db.execute(
        "SELECT id FROM assignments WHERE volunteer_id = ?"
        " ORDER BY state IN ('offered', 'accepted', 'checked_in') DESC, id DESC LIMIT 1",
        [volunteer_id],
    ).fetchone()
    return get(db, row[0]) if row else None


def outcome_text(db, volunteer, outcome):
    """Return the SMS that answers a yes or a no."""
    assignment = outcome.assignment
    request = queue.get(db, assignment["request_id"])
    if outcome.result == "accepted":
        visit_at = (
            datetime.fromisoformat(assignment["visit_at"]) if assignment["visit_at"] else None
        )
        words = _words(db, request, _volunteer_language(volunteer), visit_at)
        return _text(volunteer, "accepted", code=assignment["code"], **words)
    if outcome.result == "taken":
        return _text(volunteer, "taken", number=request["id"])
    if outcome.result == "full":
        return _text(volunteer, "full")
    if outcome.result == "declined":
        return _text(volunteer, "declined")
    return _text(volunteer, "closed", code=assignment["code"])


def opt_out(db, volunteer_id, *, actor):
    """Record a volunteer's STOP: no offer goes to them again, and open ones are withdrawn."""
    with db.atomic():
        db.execute(
            "UPDATE volunteers SET opted_out_at = COALESCE(opted_out_at, ?) WHERE id = ?",
            [now(), volunteer_id],
        )
        withdrawn = []
        for assignment in assignments(db, volunteer_id=volunteer_id, state="offered"):
            if _close(db, assignment["id"], "withdrawn"):
                withdrawn.append(assignment)
        record_event(db, None, actor, "volunteer_opted_out", {"volunteer": volunteer_id})
        # STOP (or CANCEL, one of Twilio's STOP words) from someone holding a job: whether
        # they still come is for a person to ask, before the senior waits in vain.
        for held in assignments(db, volunteer_id=volunteer_id):
            if held["state"] in HELD:
                flag(
                    db,
                    held["request_id"],
                    f"the volunteer holding job {held['code']} replied STOP: ask whether they"
                    " still come",
                    actor=actor,
                    action="volunteer_opted_out",
                    volunteer=volunteer_id,
                )
    for assignment in withdrawn:
        cascade(current_app, db, assignment["request_id"])


def opt_in(db, volunteer_id, *, actor):
    """Record a volunteer's START: offers may go to them again."""
    with db.atomic():
        db.execute("UPDATE volunteers SET opted_out_at = NULL WHERE id = ?", [volunteer_id])
        record_event(db, None, actor, "volunteer_opted_in", {"volunteer": volunteer_id})


# ---- the calls ----------------------------------------------------------------------------


def visit_words(db, assignment_id):
    """Return (flow, values) for the call telling a senior who will come and when."""
    assignment = get(db, assignment_id)
    request = queue.get(db, assignment["request_id"])
    volunteer = people.get_volunteer(db, assignment["volunteer_id"])
    person = _person(db, request)
    flow = flow_for(person.get("language") or request.get("language"), VISIT_NEEDS)
    visit_at = datetime.fromisoformat(assignment["visit_at"]) if assignment["visit_at"] else None
    values = _words(db, request, flow.language, visit_at) | {"volunteer": volunteer["name"]}
    return flow, values


def offer_call_words(db, assignment_id):
    """Return (flow, values) for the call offering a job to a volunteer."""
    assignment = get(db, assignment_id)
    request = queue.get(db, assignment["request_id"])
    volunteer = people.get_volunteer(db, assignment["volunteer_id"])
    flow = flow_for(_volunteer_language(volunteer), OFFER_CALL_NEEDS)
    values = _words(db, request, flow.language, _visit_time(volunteer, request=request))
    return flow, values | {"code": " ".join(assignment["code"])}


def page_words(db, assignment_id):
    """Return (flow, values) for an offer's mobile page, in its volunteer's language."""
    assignment = get(db, assignment_id)
    request = queue.get(db, assignment["request_id"])
    volunteer = people.get_volunteer(db, assignment["volunteer_id"])
    flow = flow_for(_volunteer_language(volunteer), SMS_NEEDS)
    # Once taken, the time agreed; before, the time the SMS gave (agreed start or next free).
    if assignment["visit_at"]:
        visit_at = datetime.fromisoformat(assignment["visit_at"])
    else:
        visit_at = _visit_time(volunteer, request=request)
    values = _words(db, request, flow.language, visit_at)
    return flow, values | {"code": assignment["code"], "first_name": first_name(values["person"])}


# Titles that stand before a surname: "Mrs Chen" is how she is named, not "Mrs".
TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "sir", "dame"})


def first_name(name):
    """Return the name a volunteer needs: "Ann Lee" -> "Ann", "Mrs Mei Chen" -> "Mrs Chen"."""
    words = (name or "").split()
    if len(words) > 1 and words[0].lower().rstrip(".") in TITLES:
        return f"{words[0]} {words[-1]}"
    return words[0] if words else ""


def senior_answer(db, assignment_id, answer):
    """Record the senior's key on the visit call; 'another_time' flags the coordinator."""
    assignment = get(db, assignment_id)
    with db.atomic():
        cursor = db.execute(
            "UPDATE assignments SET senior_answer = ?, updated_at = ?"
            " WHERE id = ? AND senior_answer IS NOT ?",
            [answer, now(), assignment_id, answer],
        )
        if cursor.rowcount != 1:
            return False  # a replayed key press
        if answer == "suits":
            record_event(db, assignment["request_id"], "caller", "visit_confirmed", {})
        else:
            reasons = {
                "another_time": "the senior asked for another time",
                "person": "the senior asked to speak to a person about the visit",
                "no_answer": "the senior did not answer the visit call",
            }
            flag(
                db,
                assignment["request_id"],
                reasons[answer],
                actor="caller",
                action="visit_" + answer,
            )
    return True


@jobs.handler(EXPIRE)
def expire_job(payload):
    """Job: expire the offers whose time is up (this one and any the worker missed)."""
    expire_due(current_app, get_db())
