"""The request store: idempotent creation, audited updates, queue order."""

import pytest

from app import queue


def test_create_is_idempotent_on_source_key(db):
    first, created = queue.create(db, channel="phone", phone="+15550001", source_key="RE1")
    again, created_again = queue.create(db, channel="phone", phone="+15550001", source_key="RE1")
    assert created and not created_again
    assert first["id"] == again["id"]
    assert db["requests"].count == 1
    assert [e["action"] for e in queue.events(db, first["id"])] == ["received"]


def test_update_audits_before_and_after(db):
    request, _ = queue.create(db, channel="manual")
    queue.update(
        db,
        request["id"],
        {"status": "triaged", "urgency": "high"},
        actor="user:ann",
        action="triage",
    )
    last = queue.events(db, request["id"])[-1]
    assert last["actor"] == "user:ann"
    assert last["detail"] == {"status": ["new", "triaged"], "urgency": [None, "high"]}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": "lost"}, "status must be one of"),
        ({"urgency": "whenever"}, "urgency must be one of"),
    ],
)
def test_update_rejects_bad_values(db, changes, message):
    request, _ = queue.create(db, channel="manual")
    with pytest.raises(queue.BadRequestField, match=message):
        queue.update(db, request["id"], changes, actor="system", action="edit")
    assert queue.get(db, request["id"])["status"] == "new"


def test_unknown_channel_and_request_are_named_errors(db):
    with pytest.raises(queue.BadRequestField, match="channel must be one of"):
        queue.create(db, channel="pigeon")
    with pytest.raises(queue.RequestNotFound):
        queue.get(db, 404)


def test_waiting_puts_critical_first_then_oldest(db):
    ids = {}
    for name, urgency in [
        ("a", "normal"),
        ("b", "low"),
        ("c", "critical"),
        ("d", "high"),
        ("e", "normal"),
    ]:
        request, _ = queue.create(db, channel="manual", urgency=urgency)
        ids[request["id"]] = name
    done, _ = queue.create(db, channel="manual", urgency="critical", status="done")
    order = [ids[r["id"]] for r in queue.waiting(db)]
    assert order == ["c", "d", "a", "e", "b"]


def test_received_event_names_who_sent_it(db):
    request, _ = queue.create(db, channel="kiosk", actor="kiosk:3")
    assert [(e["actor"], e["action"]) for e in queue.events(db, request["id"])] == [
        ("kiosk:3", "received")
    ]
