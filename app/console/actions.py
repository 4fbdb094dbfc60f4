"""What coordinators do to a request: correct, note, call back, change status, merge.

Pure core over a sqlite-utils Database: no Flask. Every change writes an events row
through app.queue, and multi-row changes happen in one transaction.
"""

import contextlib
import json
from datetime import datetime, timedelta

from rapidfuzz import fuzz, utils

from .. import dispatch, pipeline, queue
from ..classify import category_keys
from .search import LIST_COLUMNS, row_dict

EDITABLE = ("category", "urgency", "transcript")
CALLBACK_OUTCOMES = {
    "reached": "Reached the caller",
    "no_answer": "No answer",
    "left_message": "Left a message",
    "wrong_number": "Wrong number",
}
MAX_TEXT = 10_000


class ActionError(ValueError):
    """A console action was refused."""


class BadChange(ActionError):
    """A field was given a value the console does not accept."""


class MergeRefused(ActionError):
    """Two requests cannot be merged."""


class NeedsConfirmation(ActionError):
    """A status change would move a request backwards: a person must confirm it."""


BULK_ACTIONS = ("triage", "close", "merge")
# A request only moves forward through these by itself; done and cancelled are both ends.
FORWARD = {status: i for i, status in enumerate(queue.STATUSES)}


def backwards(before, after):
    """Return whether moving a request from status before to after undoes work."""
    return FORWARD[after] < FORWARD[before]


def _clean_text(value, what):
    """Return value stripped, or raise BadChange if empty or too long."""
    text = (value or "").strip()
    if not text:
        raise BadChange(f"{what} must not be empty")
    if len(text) > MAX_TEXT:
        raise BadChange(f"{what} must be at most {MAX_TEXT} characters")
    return text


def visible_events(db, request_id, principal):
    """Return a request's audit events; what supervision wrote only to those who supervise."""
    events = queue.events(db, request_id)
    if not principal.can("supervise"):
        for event in events:
            if event["action"].startswith("supervision_"):
                # That something was looked into stays visible; the reasons and notes do not.
                event["detail"] = {"item": event["detail"].get("item")}
    return events


def validate_changes(changes):
    """Return only the editable fields that are set, checked; raise BadChange otherwise."""
    out = {}
    for name, value in changes.items():
        if name not in (*EDITABLE, "status"):
            raise BadChange(f"{name} cannot be changed here")
        if value is None or value == "":
            continue
        # A list or object sent as JSON is refused before it is looked up (unhashable).
        known = {"category": category_keys(), "urgency": queue.URGENCY_RANK}
        known["status"] = queue.STATUSES
        if name in known and (not isinstance(value, str) or value not in known[name]):
            raise BadChange(f"{name} must be one of {', '.join(known[name])}")
        if not isinstance(value, str):
            raise BadChange(f"{name} must be text")
        out[name] = _clean_text(value, name) if name == "transcript" else value
    return out


def change(db, request_id, changes, *, actor, confirmed=True):
    """Apply corrections and a status change; store each correction as labelled data.

    Unless confirmed, a status change that would move the request backwards (assigned to
    triaged, done to new) is refused with NeedsConfirmation and nothing changes.
    """
    changes = validate_changes(changes)
    with db.atomic():
        before = queue.get(db, request_id)
        status = changes.get("status")
        if status and not confirmed and backwards(before["status"], status):
            raise NeedsConfirmation(
                f"request {request_id} is {before['status'].replace('_', ' ')}: moving it back"
                f" to {status.replace('_', ' ')} needs confirming"
            )
        corrected = {k: v for k, v in changes.items() if k in EDITABLE and before.get(k) != v}
        result = before
        if corrected:
            transcript = corrected.get("transcript", before.get("transcript"))
            for name, value in corrected.items():
                db["corrections"].insert(
                    {
                        "request_id": request_id,
                        "field": name,
                        "before": before.get(name),
                        "after": value,
                        "transcript": transcript,
                        "language": before.get("language"),
                        "actor": actor,
                        "created_at": queue.now(),
                    }
                )
            # A person has now read it: it no longer waits for review.
            result = queue.update(
                db, request_id, {**corrected, "needs_review": 0}, actor=actor, action="corrected"
            )
        if status and pipeline.transition(db, request_id, f"status:{status}", actor=actor):
            result = queue.get(db, request_id)
            if status in ("done", "cancelled"):
                dispatch.request_closed(db, request_id, status, actor=actor)
    return result


def set_status(db, request_id, status, *, actor, confirmed=False):
    """Move a request to another status, audited; going backwards needs confirmed=True."""
    return change(db, request_id, {"status": status}, actor=actor, confirmed=confirmed)


def bulk(db, action, request_ids, *, actor):
    """Triage, close or merge several requests at once; return (changed ids, skipped reasons).

    Triage and close only move requests forward: one that would go backwards is skipped and
    said why, never changed. Merge folds every other request into the one received first.
    All of it happens in one transaction.
    """
    if action not in BULK_ACTIONS:
        raise BadChange(f"action must be one of {', '.join(BULK_ACTIONS)}")
    ids = sorted(set(request_ids))
    if not ids:
        raise BadChange("select at least one request")
    if action == "merge" and len(ids) < 2:
        raise MergeRefused("select at least two requests to merge")
    changed, skipped = [], []
    with db.atomic():
        items = [queue.get(db, request_id) for request_id in ids]
        if action == "merge":
            survivor, *others = sorted(items, key=lambda r: (r["created_at"], r["id"]))
            for other in others:
                merge(db, survivor["id"], other["id"], actor=actor)
                changed.append(other["id"])
            return [survivor["id"], *changed], skipped
        target = "triaged" if action == "triage" else "done"
        for item in items:
            if item["status"] == target:
                skipped.append(f"#{item['id']} is already {target}")
            elif backwards(item["status"], target) or item["status"] == "cancelled":
                skipped.append(f"#{item['id']} is {item['status'].replace('_', ' ')}")
            else:
                change(db, item["id"], {"status": target}, actor=actor)
                changed.append(item["id"])
    return changed, skipped


def _touch(db, request_id):
    """Mark a request as having new activity, so it rises in the queue."""
    db.execute("UPDATE requests SET updated_at = ? WHERE id = ?", [queue.now(), request_id])


def add_note(db, request_id, body, *, actor):
    """Attach a coordinator's note to a request, audited."""
    body = _clean_text(body, "note")
    with db.atomic():
        queue.get(db, request_id)
        note_id = (
            db["notes"]
            .insert(
                {"request_id": request_id, "actor": actor, "body": body, "created_at": queue.now()}
            )
            .last_pk
        )
        queue.record_event(db, request_id, actor, "note", {"note_id": note_id, "body": body})
        _touch(db, request_id)
    return note_id


def notes(db, request_id):
    """Return a request's notes, oldest first."""
    return list(db["notes"].rows_where("request_id = ?", [request_id], order_by="id"))


def log_callback(db, request_id, outcome, note="", *, actor):
    """Record that someone called the senior back, and how it went, audited."""
    if outcome not in CALLBACK_OUTCOMES:
        raise BadChange(f"outcome must be one of {', '.join(CALLBACK_OUTCOMES)}")
    note = (note or "").strip()
    if len(note) > MAX_TEXT:
        raise BadChange(f"note must be at most {MAX_TEXT} characters")
    with db.atomic():
        queue.get(db, request_id)
        row = {"request_id": request_id, "actor": actor, "outcome": outcome, "note": note}
        callback_id = db["callbacks"].insert({**row, "created_at": queue.now()}).last_pk
        detail = {"callback_id": callback_id, "outcome": outcome, "note": note}
        queue.record_event(db, request_id, actor, "called_back", detail)
        _touch(db, request_id)
    return callback_id


def callbacks(db, request_id):
    """Return a request's call-back log, oldest first."""
    return list(db["callbacks"].rows_where("request_id = ?", [request_id], order_by="id"))


def merged_into(db, request_id):
    """Return the requests merged into this one, oldest first."""
    cursor = db.execute(
        f"SELECT {LIST_COLUMNS}, r.audio_path, r.video_path FROM requests r"
        " WHERE r.merged_into = ? ORDER BY r.id",
        [request_id],
    )
    return [row_dict(cursor, row) for row in cursor.fetchall()]


def duplicates(db, request, *, window_hours, similarity, limit=10, scan=500):
    """Suggest requests to merge: same phone within the window, or a very similar transcript."""
    created = datetime.fromisoformat(request["created_at"])
    low = (created - timedelta(hours=window_hours)).isoformat(timespec="seconds")
    high = (created + timedelta(hours=window_hours)).isoformat(timespec="seconds")
    cursor = db.execute(
        f"SELECT {LIST_COLUMNS}, r.transcript AS full_transcript FROM requests r"
        " WHERE r.created_at BETWEEN ? AND ? AND r.id != ? AND r.merged_into IS NULL"
        " AND r.status != 'cancelled' ORDER BY r.created_at DESC LIMIT ?",
        [low, high, request["id"], scan],
    )
    mine = utils.default_process(request.get("transcript") or "")
    found = []
    for row in (row_dict(cursor, r) for r in cursor.fetchall()):
        reasons = []
        if request.get("phone") and row["phone"] == request["phone"]:
            reasons.append("same phone number")
        other = utils.default_process(row.pop("full_transcript") or "")
        # Short transcripts ("help me") are alike by chance, not by being the same request.
        if len(mine) >= 20 and len(other) >= 20:
            score = fuzz.token_sort_ratio(mine, other)
            if score >= similarity:
                reasons.append(f"similar words ({score:.0f}%)")
        if reasons:
            found.append({**row, "reasons": reasons})
    return found[:limit]


def merge(db, survivor_id, duplicate_id, *, actor):
    """Merge a duplicate into a survivor: keep both recordings, mark the survivor called again."""
    if survivor_id == duplicate_id:
        raise MergeRefused("a request cannot be merged into itself")
    with db.atomic():
        survivor = queue.get(db, survivor_id)
        duplicate = queue.get(db, duplicate_id)
        if survivor.get("merged_into") or duplicate.get("merged_into"):
            raise MergeRefused("one of these requests was already merged")
        queue.update(
            db,
            duplicate_id,
            {"merged_into": survivor_id, "status": "cancelled"},
            actor=actor,
            action="merged_into",
        )
        urgency = min(
            (survivor.get("urgency") or "normal", duplicate.get("urgency") or "normal"),
            key=lambda u: queue.URGENCY_RANK.get(u, 2),
        )
        # The caller asked again: whatever was most urgent in either call still holds.
        changes = {"called_again": (survivor.get("called_again") or 0) + 1, "urgency": urgency}
        queue.update(db, survivor_id, changes, actor=actor, action="merged")
        queue.record_event(db, survivor_id, actor, "merge", {"duplicate": duplicate_id})
    return queue.get(db, survivor_id)


def export_corrections(db):
    """Yield every stored correction with the transcript it was about, oldest first."""
    for row in db["corrections"].rows_where(order_by="id"):
        yield dict(row)


def marked_words(words, threshold):
    """Return transcript words with a flag on those the recogniser was unsure of."""
    out = []
    for word in words or []:
        confidence = word.get("confidence")
        low = confidence is not None and confidence < threshold
        out.append({**word, "low": low})
    return out


# Request fields in plain words; None: too technical for the trail (kept in the API's events).
FIELD_WORDS = {
    "status": "status",
    "category": "category",
    "urgency": "urgency",
    "transcript": "transcript",
    "needs_review": "needs review",
    "transcript_confidence": "recogniser confidence",
    "category_score": "category score",
    "matched": "words that decided it",
    "emergency": "emergency",
    "stage": "stage",
    "error": "problem",
    "confirmed_at": "confirmed",
    "merged_into": "merged into",
    "called_again": "called again",
    "phone": "call-back number",
    "person_id": "person",
    "duration_s": "length",
    "channel": "channel",
    "reason": "reason",
    "outcome": "outcome",
    "note": "note",
    "body": "note",
    "duplicate": "duplicate",
    "kind": "kind",
    "kiosk": "kiosk",
    "transcript_words": None,
    "alternatives": None,
    "engine": None,
    "model": None,
    "note_id": None,
    "callback_id": None,
    "kiosk_id": None,
}
FLAGS = ("needs_review", "emergency")
SCORES = ("transcript_confidence", "category_score")
LONG_TEXT = 80


def _words(key, value, label):
    """Say one value of a request field plainly: no JSON, no None."""
    if key in queue.JSON_FIELDS and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if value is None or value == "" or value == []:
        return "nothing"
    if key in FLAGS:
        return "yes" if value else "no"
    if key in SCORES and isinstance(value, int | float):
        return f"{value * 100:.0f}%"
    if key == "category":
        return label(value)
    if key == "duration_s" and isinstance(value, int | float):
        return f"{value:.1f} s"
    if key in ("merged_into", "duplicate", "person_id") and isinstance(value, int):
        return f"#{value}"
    if key == "outcome":
        return CALLBACK_OUTCOMES.get(value, str(value)).lower()
    if isinstance(value, list):
        return ", ".join(_words(key, v, label) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {_words(k, v, label)}" for k, v in value.items())
    text = str(value).replace("_", " ") if key in ("status", "stage", "channel") else str(value)
    if key in ("transcript", "note", "body", "error", "reason"):
        short = text if len(text) <= LONG_TEXT else text[: LONG_TEXT - 1] + "…"
        return f"“{short}”"
    if key == "confirmed_at":
        return text[:16].replace("T", " ")
    return text


def describe(action, detail, label=str):
    """Return an audit event's detail as a short sentence a coordinator can read."""
    if not isinstance(detail, dict):
        return _words("", detail, label)
    parts = []
    for key, value in detail.items():
        name = FIELD_WORDS.get(key, key.replace("_", " "))
        if name is None:
            continue
        # Changes made through queue.update are [before, after]; alerts list words instead.
        if isinstance(value, list) and len(value) == 2 and action != "alert":
            before, after = value
            if before is None or before == "":
                parts.append(f"{name} set to {_words(key, after, label)}")
            else:
                parts.append(f"{name} {_words(key, before, label)} → {_words(key, after, label)}")
        else:
            parts.append(f"{name} {_words(key, value, label)}")
    return "; ".join(parts)


def labelled_examples(db):
    """Yield (text, category, urgency) for each request whose category or urgency was corrected.

    The text is the transcript as corrected; tabs and line breaks become spaces.
    """
    cursor = db.execute(
        "SELECT r.transcript, r.category, r.urgency FROM requests r"
        " WHERE r.id IN (SELECT request_id FROM corrections WHERE field IN ('category', 'urgency'))"
        " AND r.transcript IS NOT NULL ORDER BY r.id"
    )
    for text, category, urgency in cursor:
        yield " ".join(text.split()), category or "other", urgency or "normal"
