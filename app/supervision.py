"""Supervision: what a coordinator must look into about a visit or a volunteer, and what was done.

    open_item()   something to look into (a low rating, "did not come", a no-show ...), once per key
    act()         a note, a follow-up call logged, or resolving it; each action is kept
    decide()      recognition, training or ending the role, recorded with a reason

Everything is audited: the actions table is the item's history, and each change is also an
event on the request it is about.
"""

from __future__ import annotations

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
    if not (reason or "").strip():
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


def items(db, *, state="open", volunteer_id=None, limit=200):
    """Return items, newest first, optionally for one volunteer or of one state (None: all)."""
    where, params = [], []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if volunteer_id is not None:
        where.append("volunteer_id = ?")
        params.append(volunteer_id)
    return list(
        db["supervision_items"].rows_where(
            " AND ".join(where) or None, params, order_by="id DESC", limit=limit
        )
    )


def actions(db, item_id):
    """Return what was done about an item, oldest first."""
    return list(db["supervision_actions"].rows_where("item_id = ?", [item_id], order_by="id"))


def act(db, item_id, action, *, actor, text=""):
    """Record an action on an item; resolve and reopen change its state. Return the item."""
    if action not in ACTIONS:
        raise BadSupervision(f"action must be one of {', '.join(ACTIONS)}")
    text = (text or "").strip()
    if action in ("note", "follow_up_call") and not text:
        raise BadSupervision(f"a {action.replace('_', ' ')} needs some words")
    stamp = now()
    with db.atomic():
        item = get(db, item_id)
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


def decide(db, volunteer_id, decision, *, reason, actor):
    """Record a decision about a volunteer with its reason; return its row."""
    if decision not in DECISIONS:
        raise BadSupervision(f"decision must be one of {', '.join(DECISIONS)}")
    if not (reason or "").strip():
        raise BadSupervision("a decision about a volunteer needs a reason")
    stamp = now()
    with db.atomic():
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
