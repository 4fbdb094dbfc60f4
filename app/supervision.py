"""Supervision: what a coordinator must look into about a visit or a volunteer, and what was done.

    open_item()   something to look into (a low rating, "did not come", a no-show ...), once per key
    act()         a note, a follow-up call logged, or resolving it; each action is kept
    decide()      recognition, training or ending the role, recorded with a reason
    complain()    a complaint a coordinator takes down, about a volunteer or a request
    sweep()       open an item for each condition found in the data (no-shows, dead jobs ...)
    standing()    which of those conditions hold now: an item says when its own has cleared

Everything is audited: the actions table is the item's history, and each change is also an
event on the request it is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app

from . import jobs, people
from .db import get_db
from .queue import now, record_event

KINDS = (
    "low_rating",  # the senior rated the help 1 or 2
    "did_not_come",  # the senior said the volunteer did not come
    "person_asked",  # the senior pressed 0 on the rating call
    "complaint",  # a complaint entered by a coordinator
    "no_show",  # no check-in after the agreed start
    "unconfirmed",  # the senior never confirmed the visit
    "over_load",  # a volunteer holds more jobs than they asked for
    "inactive",  # an active volunteer with no visit for a long time
    "dead_job",  # a job failed every attempt
    "waiting_long",  # a request waited past its target
)
STATES = ("open", "resolved")
ACTIONS = ("note", "follow_up_call", "pause_volunteer", "excuse_no_show", "resolve", "reopen")
DECISIONS = ("recognition", "training", "end_role")
# The longest reason, note or complaint kept: the page's fields say so, and the server holds it.
MAX_TEXT = 2000


def _words(text, what):
    """Return text stripped, or raise BadSupervision when it is longer than MAX_TEXT."""
    text = (text or "").strip()
    if len(text) > MAX_TEXT:
        raise BadSupervision(f"{what} is {len(text)} characters: at most {MAX_TEXT}, please")
    return text


# The kinds sweep() finds in the data, and which column names what each one is about: an
# open item of a kind already about that subject covers it.
SUBJECTS = {
    "no_show": "assignment_id",
    "unconfirmed": "assignment_id",
    "over_load": "volunteer_id",
    "inactive": "volunteer_id",
    "dead_job": "job_id",
    "waiting_long": "request_id",
}
SWEEP = "supervision.sweep"
# A no-show or a dead job is seen within a quarter of an hour (and whenever the page opens).
SWEEP_SECONDS = 15 * 60.0
# A complaint form carries a one-time key (hex): submitted twice, it is one complaint.
COMPLAINT_KEY_CHARS = frozenset("0123456789abcdef")


class SupervisionError(Exception):
    """A supervision change could not be made."""


class ItemNotFound(SupervisionError, LookupError):
    """No supervision item has that id."""


class BadSupervision(SupervisionError, ValueError):
    """A kind, action, decision or reason that cannot be taken."""


def open_item(
    db,
    kind,
    *,
    reason,
    actor,
    key=None,
    volunteer_id=None,
    request_id=None,
    assignment_id=None,
    job_id=None,
):
    """Open an item once per key (a replay finds the first); return (item, whether it is new)."""
    if kind not in KINDS:
        raise BadSupervision(f"kind must be one of {', '.join(KINDS)}")
    reason = _words(reason, "the reason")
    if not reason:
        raise BadSupervision("a supervision item needs a reason")
    subject = assignment_id or request_id or volunteer_id or job_id
    key = key or f"{kind}:{subject}"
    stamp = now()
    with db.atomic():
        cursor = db.execute(
            "INSERT INTO supervision_items (key, kind, state, reason, volunteer_id, request_id,"
            " assignment_id, job_id, opened_by, opened_at, updated_at)"
            " VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
            [
                key,
                kind,
                reason.strip(),
                volunteer_id,
                request_id,
                assignment_id,
                job_id,
                actor,
                stamp,
                stamp,
            ],
        )
        created = cursor.rowcount == 1
        item = next(db["supervision_items"].rows_where("key = ?", [key]))
        if created:
            record_event(
                db,
                request_id,
                actor,
                "supervision_opened",
                {"item": item["id"], "kind": kind, "reason": item["reason"]},
            )
    return item, created


def get(db, item_id):
    """Return one item, or raise ItemNotFound."""
    row = next(db["supervision_items"].rows_where("id = ?", [item_id]), None)
    if row is None:
        raise ItemNotFound(f"no supervision item {item_id}")
    return row


def items(db, *, state="open", kind=None, volunteer_id=None, limit=200):
    """Return items, open ones first, newest first; filter by state (None: all), kind, volunteer."""
    where, params = [], []
    for column, value in (("state", state), ("kind", kind), ("volunteer_id", volunteer_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return list(
        db["supervision_items"].rows_where(
            " AND ".join(where) or None,
            params,
            order_by="state = 'open' DESC, id DESC",
            limit=limit,
        )
    )


def counts(db, *, state="open"):
    """Return {kind: how many items} of one state (None: all)."""
    where = "WHERE state = ?" if state is not None else ""
    rows = db.execute(
        f"SELECT kind, count(*) FROM supervision_items {where} GROUP BY kind",
        [state] if state is not None else [],
    )
    return dict(rows.fetchall())


def actions(db, item_id):
    """Return what was done about an item, oldest first."""
    return list(db["supervision_actions"].rows_where("item_id = ?", [item_id], order_by="id"))


def act(db, item_id, action, *, actor, text=""):
    """Record an action on an item; resolve and reopen change its state. Return the item."""
    if action not in ACTIONS:
        raise BadSupervision(f"action must be one of {', '.join(ACTIONS)}")
    text = _words(text, "the text")
    if action in ("note", "follow_up_call") and not text:
        raise BadSupervision(f"a {action.replace('_', ' ')} needs some words")
    stamp = now()
    with db.atomic():
        item = get(db, item_id)
        if (action, item["state"]) in (("resolve", "resolved"), ("reopen", "open")):
            return item  # a second click, or two coordinators at once: done already
        if action == "pause_volunteer":
            _pause(db, item, actor=actor)
        elif action == "excuse_no_show":
            _excuse(db, item, reason=text, actor=actor)
        if action == "resolve":
            db["supervision_items"].update(
                item_id,
                {"state": "resolved", "resolved_by": actor, "resolved_at": stamp},
            )
        elif action == "reopen":
            db["supervision_items"].update(
                item_id, {"state": "open", "resolved_by": None, "resolved_at": None}
            )
        db["supervision_items"].update(item_id, {"updated_at": stamp})
        db["supervision_actions"].insert(
            {
                "item_id": item_id,
                "action": action,
                "text": text,
                "actor": actor,
                "created_at": stamp,
            }
        )
        record_event(
            db,
            item["request_id"],
            actor,
            "supervision_" + action,
            {"item": item_id, "text": text},
        )
    return get(db, item_id)


def _pause(db, item, *, actor):
    """Pause the volunteer an item is about, through the registry (audited there too)."""
    if not item["volunteer_id"]:
        raise BadSupervision("this item is about no volunteer, so there is nobody to pause")
    volunteer = people.get_volunteer(db, item["volunteer_id"])
    if not volunteer["active"]:
        raise BadSupervision(f"{volunteer['name']} is already paused")
    people.pause_volunteer(db, volunteer["id"], actor=actor)


def _excuse(db, item, *, reason, actor):
    """Excuse the no-show an item is about, through the visits module (audited there too)."""
    # Imported here: visits reaches the rating call, which opens items in this module.
    from . import visits

    if item["kind"] != "no_show" or not item["assignment_id"]:
        raise BadSupervision("only a no-show can be excused")
    if not reason:
        raise BadSupervision("give a reason to excuse the no-show")
    try:
        changed = visits.excuse(db, item["assignment_id"], reason=reason, actor=actor)
    except visits.NotNoShow as exc:
        raise BadSupervision(str(exc)) from None
    if not changed:
        raise BadSupervision("this no-show was excused already")


def decide(db, volunteer_id, decision, *, reason, actor):
    """Record a decision about a volunteer with its reason; return its row.

    Ending the role also pauses the volunteer, so they are offered nothing more.
    """
    if decision not in DECISIONS:
        raise BadSupervision(f"decision must be one of {', '.join(DECISIONS)}")
    reason = _words(reason, "the reason")
    if not reason:
        raise BadSupervision("a decision about a volunteer needs a reason")
    stamp = now()
    with db.atomic():
        volunteer = people.get_volunteer(db, volunteer_id)
        if decision == "end_role" and volunteer["active"]:
            people.pause_volunteer(db, volunteer_id, actor=actor)
        decision_id = (
            db["volunteer_decisions"]
            .insert(
                {
                    "volunteer_id": volunteer_id,
                    "decision": decision,
                    "reason": reason.strip(),
                    "actor": actor,
                    "created_at": stamp,
                }
            )
            .last_pk
        )
        record_event(
            db,
            None,
            actor,
            "volunteer_" + decision,
            {"volunteer": volunteer_id, "reason": reason.strip()},
        )
    return db["volunteer_decisions"].get(decision_id)


def decisions(db, volunteer_id):
    """Return the decisions recorded about a volunteer, oldest first."""
    return list(
        db["volunteer_decisions"].rows_where("volunteer_id = ?", [volunteer_id], order_by="id")
    )


def complain(db, text, *, actor, key, volunteer_id=None, request_id=None):
    """Open a complaint a coordinator took down, about a volunteer, a request or both."""
    if not (text or "").strip():
        raise BadSupervision("write what the complaint is")
    if not (volunteer_id or request_id):
        raise BadSupervision("a complaint is about a volunteer or a request: name one")
    if volunteer_id:
        people.get_volunteer(db, volunteer_id)
    if (
        request_id
        and not db.execute("SELECT 1 FROM requests WHERE id = ?", [request_id]).fetchone()
    ):
        raise BadSupervision(f"there is no request {request_id}")
    if not (key and len(key) <= 64 and set(key) <= COMPLAINT_KEY_CHARS):
        raise BadSupervision("the complaint form has expired: open the page again")
    return open_item(
        db,
        "complaint",
        reason=text,
        actor=actor,
        key=f"complaint:{key}",
        volunteer_id=volunteer_id,
        request_id=request_id,
    )


# ---- what sweep() finds in the data -----------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """Something in the data a coordinator must look into, and the key of its item."""

    kind: str
    key: str
    reason: str
    volunteer_id: int | None = None
    request_id: int | None = None
    assignment_id: int | None = None
    job_id: int | None = None

    @property
    def subject(self):
        """Return what the condition is about: (kind, id)."""
        return self.kind, getattr(self, SUBJECTS[self.kind])


@dataclass(frozen=True)
class Swept:
    """What a sweep opened, and which conditions hold now."""

    opened: list
    holding: frozenset

    def holds(self, item):
        """Return whether an item's condition still holds; None for kinds a person reports."""
        column = SUBJECTS.get(item["kind"])
        if column is None:
            return None
        return (item["kind"], item[column]) in self.holding


def _stamp(moment):
    """Return an aware datetime as the database writes times (UTC, seconds)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _over_load(db, moment, config):
    """Volunteers holding more open jobs (accepted or checked in) than they asked for."""
    # CROSS JOIN keeps SQLite on the open requests' index: few, however long the history.
    rows = db.execute(
        "SELECT v.id, v.name, v.max_open, COUNT(*), MAX(a.id) FROM requests r"
        " CROSS JOIN assignments a ON a.request_id = r.id"
        " JOIN volunteers v ON v.id = a.volunteer_id"
        " WHERE r.status NOT IN ('done', 'cancelled') AND a.state IN ('accepted', 'checked_in')"
        " GROUP BY v.id HAVING COUNT(*) > v.max_open"
    )
    # The newest job is in the key: a volunteer over load again later is a new item.
    return [
        Condition(
            "over_load",
            f"over_load:{vid}:{newest}",
            f"{name} holds {count} open jobs, more than the {most} they asked for",
            volunteer_id=vid,
        )
        for vid, name, most, count, newest in rows
    ]


def _inactive(db, moment, config):
    """Active volunteers registered before the cut-off with no visit accepted since."""
    cutoff = _stamp(moment - timedelta(seconds=config["INACTIVE_AFTER"]))
    # A visit counts from its check-out, else its check-in, else the yes that took it.
    rows = db.execute(
        "SELECT v.id, v.name, v.created_at,"
        " MAX(COALESCE(a.checked_out_at, a.checked_in_at, a.answered_at)) AS last"
        " FROM volunteers v"
        " LEFT JOIN assignments a ON a.volunteer_id = v.id"
        "  AND a.state IN ('accepted', 'checked_in', 'done')"
        " WHERE v.active = 1 AND v.created_at < ? GROUP BY v.id"
        " HAVING last IS NULL OR last < ?",
        [cutoff, cutoff],
    )
    # The last visit is in the key: inactive again after a new visit is a new item.
    return [
        Condition(
            "inactive",
            f"inactive:{vid}:{last or 'never'}",
            f"{name} has had no visit since {last[:10]}"
            if last
            else f"{name} has had no visit since joining on {created[:10]}",
            volunteer_id=vid,
        )
        for vid, name, created, last in rows
    ]


def _dead_jobs(db, moment, config):
    """Jobs in the dead letter, linked to their request when the payload names one."""
    rows = db.execute(
        "SELECT j.id, j.kind, j.last_error, j.updated_at, r.id FROM jobs j"
        " LEFT JOIN requests r ON r.id ="
        "  CASE WHEN json_valid(j.payload) THEN json_extract(j.payload, '$.request_id') END"
        " WHERE j.state = 'dead'"
    )
    # When it died is in the key: retried and dead again is a new item.
    return [
        Condition(
            "dead_job",
            f"dead_job:{job_id}:{int(died or 0)}",
            f"job {job_id} ({kind}) failed: {(error or 'no error kept').splitlines()[0][:200]}",
            job_id=job_id,
            request_id=request_id,
        )
        for job_id, kind, error, died, request_id in rows
    ]


def _waiting_long(db, moment, config):
    """Requests nobody has taken yet that have waited past their urgency's target.

    A request for a later time (a standing arrangement's occurrence, made days ahead) waits
    for nobody until that time has come.
    """
    # Imported here: the console package imports this module's views.
    from .console.waiting import load_targets, words

    targets = load_targets().minutes
    cutoffs = {u: _stamp(moment - timedelta(minutes=m)) for u, m in targets.items()}
    rows = db.execute(
        "SELECT id, COALESCE(urgency, 'normal'),"
        " CAST(ROUND((julianday(?) - julianday(created_at)) * 86400) AS INTEGER) / 60"
        " FROM requests"
        " WHERE status IN ('new', 'triaged') AND merged_into IS NULL"
        " AND (wanted_at IS NULL OR julianday(wanted_at) <= julianday(?)) AND created_at <"
        " CASE COALESCE(urgency, 'normal') WHEN 'critical' THEN ? WHEN 'high' THEN ?"
        " WHEN 'low' THEN ? ELSE ? END",
        [
            _stamp(moment),
            _stamp(moment),
            cutoffs["critical"],
            cutoffs["high"],
            cutoffs["low"],
            cutoffs["normal"],
        ],
    )
    return [
        Condition(
            "waiting_long",
            f"waiting_long:{rid}",
            f"request {rid} ({urgency}) has waited {words(minutes)},"
            f" past its {words(targets[urgency])} target, and nobody has taken it",
            request_id=rid,
        )
        for rid, urgency, minutes in rows
    ]


def _no_shows(db, moment, config):
    """Jobs marked no-show (no check-in in time) that no coordinator has excused."""
    rows = db.execute(
        "SELECT a.id, a.request_id, a.volunteer_id, v.name, a.code, a.visit_at"
        " FROM assignments a JOIN volunteers v ON v.id = a.volunteer_id"
        " WHERE a.state = 'no_show' AND a.excused = 0"
    )
    return [
        Condition(
            "no_show",
            f"no_show:{aid}",
            f"{name} did not check in to job {code} for request {rid}"
            + (f" (agreed start {visit_at.replace('T', ' ')})" if visit_at else ""),
            volunteer_id=vid,
            request_id=rid,
            assignment_id=aid,
        )
        for aid, rid, vid, name, code, visit_at in rows
    ]


def _unconfirmed(db, moment, config):
    """Visits done before the cut-off that the senior has not confirmed (nor denied)."""
    cutoff = _stamp(moment - timedelta(seconds=config["UNCONFIRMED_AFTER"]))
    rows = db.execute(
        "SELECT a.id, a.request_id, a.volunteer_id, v.name, a.checked_out_at"
        " FROM assignments a JOIN volunteers v ON v.id = a.volunteer_id"
        " WHERE a.state = 'done' AND a.senior_came IS NULL AND a.checked_out_at < ?",
        [cutoff],
    )
    return [
        Condition(
            "unconfirmed",
            f"unconfirmed:{aid}",
            f"the senior has not confirmed {name}'s visit for request {rid},"
            f" checked out {out[:16].replace('T', ' ')} UTC: its hours stay unverified",
            volunteer_id=vid,
            request_id=rid,
            assignment_id=aid,
        )
        for aid, rid, vid, name, out in rows
    ]


FINDERS = (_no_shows, _unconfirmed, _over_load, _inactive, _dead_jobs, _waiting_long)


def conditions(db, *, moment, config):
    """Return every condition that holds at moment, as the data stands."""
    return [found for finder in FINDERS for found in finder(db, moment, config)]


def standing(db, *, moment, config):
    """Return which conditions hold at moment, opening nothing."""
    found = conditions(db, moment=moment, config=config)
    return Swept(opened=[], holding=frozenset(c.subject for c in found))


def sweep(db, *, moment, config):
    """Open an item for each condition not already covered by an open item; return Swept.

    Idempotent: a condition's key is stable while it holds, so sweeping twice opens nothing
    more. A condition that clears leaves its item open: only a person resolves an item.
    """
    with db.atomic():
        found = conditions(db, moment=moment, config=config)
        covered = {
            (row["kind"], row[column])
            for kind, column in SUBJECTS.items()
            for row in db["supervision_items"].rows_where(
                "state = 'open' AND kind = ?", [kind], select=f"kind, {column}"
            )
        }
        opened = []
        for condition in found:
            if condition.subject in covered:
                continue
            item, created = open_item(
                db,
                condition.kind,
                reason=condition.reason,
                actor="system",
                key=condition.key,
                volunteer_id=condition.volunteer_id,
                request_id=condition.request_id,
                assignment_id=condition.assignment_id,
                job_id=condition.job_id,
            )
            if created:
                opened.append(item)
                covered.add(condition.subject)
    return Swept(opened=opened, holding=frozenset(c.subject for c in found))


@jobs.handler(SWEEP)
def sweep_job(payload):
    """Job: look for what needs a coordinator, every SWEEP_SECONDS."""
    sweep(get_db(), moment=datetime.now(UTC), config=current_app.config)


jobs.every(SWEEP, seconds=SWEEP_SECONDS)
