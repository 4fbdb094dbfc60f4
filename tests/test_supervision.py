"""Supervision items, their actions and decisions about volunteers, on a real database."""

import json

import pytest

from app import people, queue, supervision

ALWAYS = "mon 09:00-12:00"


@pytest.fixture
def volunteer(app, db):
    """Register one volunteer."""
    rules = people.rules_for(app)[0]
    fields = {"name": "Ana", "phone": "+15550001001", "languages": "en", "skills": "groceries"}
    return people.add_volunteer(
        db, fields | {"postcode": "riverside", "availability": ALWAYS}, rules, actor="t"
    )


@pytest.fixture
def request_id(db):
    """Queue one request."""
    return queue.create(db, channel="manual", transcript="shopping please")[0]["id"]


def test_an_item_is_opened_once_per_key_and_audited(db, volunteer, request_id):
    item, created = supervision.open_item(
        db, "low_rating", reason="rated 1", actor="caller", request_id=request_id, key="r:1"
    )
    again, created_again = supervision.open_item(
        db, "low_rating", reason="rated 1 again", actor="caller", request_id=request_id, key="r:1"
    )
    assert (created, created_again) == (True, False)
    assert again["id"] == item["id"] and again["reason"] == "rated 1"
    opened = [e for e in queue.events(db, request_id) if e["action"] == "supervision_opened"]
    assert [e["detail"]["item"] for e in opened] == [item["id"]]


@pytest.mark.parametrize(
    ("kind", "reason", "message"),
    [
        ("gossip", "x", "kind must be one of"),
        ("low_rating", "  ", "needs a reason"),
    ],
)
def test_a_bad_item_is_refused(db, kind, reason, message):
    with pytest.raises(supervision.BadSupervision, match=message):
        supervision.open_item(db, kind, reason=reason, actor="t", key="k")
    assert db["supervision_items"].count == 0


def test_actions_are_kept_in_order_and_resolve_reopen_change_the_state(db, request_id):
    item, _ = supervision.open_item(
        db, "did_not_come", reason="no visit", actor="caller", request_id=request_id
    )
    supervision.act(db, item["id"], "follow_up_call", actor="user:cy", text="called Mrs Chen")
    resolved = supervision.act(db, item["id"], "resolve", actor="user:cy")
    assert (resolved["state"], resolved["resolved_by"]) == ("resolved", "user:cy")
    assert supervision.items(db) == []
    reopened = supervision.act(db, item["id"], "reopen", actor="user:cy")
    assert (reopened["state"], reopened["resolved_at"]) == ("open", None)
    history = [(a["action"], a["text"]) for a in supervision.actions(db, item["id"])]
    assert history == [("follow_up_call", "called Mrs Chen"), ("resolve", ""), ("reopen", "")]
    events = [e["action"] for e in queue.events(db, request_id)]
    assert events[-3:] == [
        "supervision_follow_up_call",
        "supervision_resolve",
        "supervision_reopen",
    ]


@pytest.mark.parametrize(
    ("action", "text", "error", "message"),
    [
        ("shout", "x", supervision.BadSupervision, "action must be one of"),
        ("note", " ", supervision.BadSupervision, "needs some words"),
        ("follow_up_call", "", supervision.BadSupervision, "needs some words"),
    ],
)
def test_a_bad_action_changes_nothing(db, action, text, error, message):
    item, _ = supervision.open_item(db, "no_show", reason="no IN", actor="system", key="n:1")
    with pytest.raises(error, match=message):
        supervision.act(db, item["id"], action, actor="user:cy", text=text)
    assert supervision.actions(db, item["id"]) == []


def test_an_unknown_item_is_named(db):
    with pytest.raises(supervision.ItemNotFound, match="no supervision item 99"):
        supervision.act(db, 99, "resolve", actor="user:cy")


def test_decisions_about_a_volunteer_need_a_reason_and_are_audited(db, volunteer):
    with pytest.raises(supervision.BadSupervision, match="needs a reason"):
        supervision.decide(db, volunteer["id"], "training", reason="", actor="user:cy")
    supervision.decide(db, volunteer["id"], "recognition", reason="20 visits, all 5", actor="u")
    kept = [(d["decision"], d["reason"]) for d in supervision.decisions(db, volunteer["id"])]
    assert kept == [("recognition", "20 visits, all 5")]
    event = db.execute("SELECT detail FROM events WHERE action = 'volunteer_recognition'")
    assert json.loads(event.fetchone()[0]) == {
        "volunteer": volunteer["id"],
        "reason": "20 visits, all 5",
    }
