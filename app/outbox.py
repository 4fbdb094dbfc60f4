"""The outbox: every SMS and call CareCall starts goes through here, durably, and once.

A message is a row first (its idempotency key makes queueing it twice one row), then a job
hands it to Twilio with the real twilio client. Before any retry the job asks Twilio whether
an earlier attempt already got through (a crash after Twilio said yes, before we kept the
SID), so a retry never sends twice. With no credentials messages wait, visibly.
"""

import json
import logging
import time
from datetime import UTC, datetime

import click
from flask import current_app
from flask.cli import AppGroup
from twilio.base import values
from twilio.base.exceptions import TwilioRestException

from . import jobs
from .db import get_db
from .queue import now, record_event

log = logging.getLogger(__name__)

DELIVER = "outbox.deliver"
KINDS = ("sms", "call")
# Our states: waiting (nothing can send it yet), queued, sending, sent, failed.
FINISHED = ("sent", "failed")
# Twilio's words, in the order a message moves through them: a late callback never goes back.
STATUS_RANK = {
    "accepted": 0,
    "queued": 1,
    "initiated": 1,
    "sending": 2,
    "ringing": 2,
    "sent": 3,
    "in-progress": 3,
    "answered": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "read": 5,
    "completed": 5,
    "busy": 5,
    "no-answer": 5,
    "canceled": 5,
}
# How far before our first attempt a message found on Twilio may have been made (clock skew).
SKEW_SECONDS = 120


class OutboxError(Exception):
    """An outbound message could not be queued or sent."""


class Refused(OutboxError):
    """Twilio refused the message itself (a bad number, an opted-out phone): no retry helps."""


def missing(config, kind):
    """Return the settings to set before a message of this kind can be sent ([] if none)."""
    needed = ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER"]
    if kind == "call":
        # Twilio fetches the call's words from us: it needs our public address.
        needed.append("PUBLIC_BASE_URL")
    return [f"CARECALL_{name}" for name in needed if not config.get(name)]


def _waiting_reason(config, kind):
    """Say why a message waits, or None when it can be sent."""
    absent = missing(config, kind)
    return "waiting for " + ", ".join(absent) if absent else None


def send_sms(db, *, key, to, body, request_id=None, assignment_id=None):
    """Queue an SMS once per key and return its outbox row."""
    return _put(db, key, "sms", to, request_id, assignment_id, body=body)


def place_call(db, *, key, to, path, request_id=None, assignment_id=None):
    """Queue a call once per key; Twilio fetches its TwiML from path. Return its outbox row."""
    return _put(db, key, "call", to, request_id, assignment_id, url=path)


def _put(db, key, kind, to, request_id, assignment_id, *, body=None, url=None):
    """Insert a message unless its key is known; queue its delivery job when it can be sent."""
    config = current_app.config
    reason = _waiting_reason(config, kind)
    stamp = now()
    with db.atomic():
        row = db.execute(
            "INSERT INTO outbox (key, kind, to_phone, body, url, request_id, assignment_id,"
            " state, attempts, error, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)"
            " ON CONFLICT(key) DO NOTHING RETURNING id",
            [
                key,
                kind,
                to,
                body,
                url,
                request_id,
                assignment_id,
                "waiting" if reason else "queued",
                reason,
                stamp,
                stamp,
            ],
        ).fetchone()
        if row is not None and not reason:
            _enqueue(db, row[0])
    return get(db, row[0]) if row else find(db, key)


def _enqueue(db, outbox_id):
    """Queue the job that hands one message to Twilio."""
    jobs.enqueue(
        db,
        DELIVER,
        {"id": outbox_id},
        key=f"{DELIVER}:{outbox_id}",
        priority=15,
        max_attempts=current_app.config["OUTBOX_MAX_ATTEMPTS"],
    )


def get(db, outbox_id):
    """Return one outbox row, or None."""
    return next(db["outbox"].rows_where("id = ?", [outbox_id]), None)


def find(db, key):
    """Return the outbox row with this idempotency key, or None."""
    return next(db["outbox"].rows_where("key = ?", [key]), None)


def rows(db, *, state=None, request_id=None, limit=200):
    """Return outbox rows, newest first, optionally in one state or for one request."""
    where, params = [], []
    if state:
        where.append("state = ?")
        params.append(state)
    if request_id:
        where.append("request_id = ?")
        params.append(request_id)
    return list(
        db["outbox"].rows_where(
            " AND ".join(where) or None, params, order_by="id desc", limit=limit
        )
    )


def release_waiting(db):
    """Queue every waiting message that can now be sent; return how many."""
    config = current_app.config
    released = 0
    for row in rows(db, state="waiting", limit=None):
        if missing(config, row["kind"]):
            continue
        with db.atomic():
            cursor = db.execute(
                "UPDATE outbox SET state = 'queued', error = NULL, updated_at = ?"
                " WHERE id = ? AND state = 'waiting'",
                [now(), row["id"]],
            )
            if cursor.rowcount == 1:
                # A message that waited may have been tried before: a fresh job key each time.
                jobs.enqueue(
                    db,
                    DELIVER,
                    {"id": row["id"]},
                    key=f"{DELIVER}:{row['id']}:{time.time_ns()}",
                    priority=15,
                    max_attempts=config["OUTBOX_MAX_ATTEMPTS"],
                )
                released += 1
    return released


def twilio_client(config):
    """Return the real twilio REST client, pointed at TWILIO_API_BASE_URL, with a timeout."""
    from .telephony.media import twilio_client as account_client

    client = account_client(config)
    client.http_client.timeout = config["TWILIO_API_TIMEOUT"]
    return client


def deliver(db, config, outbox_id):
    """Hand one message to Twilio unless it is already there; return its row."""
    row = get(db, outbox_id)
    if row is None or row["state"] in FINISHED or row["twilio_sid"]:
        return row
    reason = _waiting_reason(config, row["kind"])
    if reason:
        db.execute(
            "UPDATE outbox SET state = 'waiting', error = ?, updated_at = ? WHERE id = ?",
            [reason, now(), outbox_id],
        )
        return get(db, outbox_id)
    client = twilio_client(config)
    if row["attempts"]:
        # An earlier attempt may have reached Twilio and died before its SID was kept.
        earlier = _earlier_attempt(client, config, row)
        if earlier is not None:
            log.info("outbox %s: an earlier attempt got through as %s", outbox_id, earlier.sid)
            return _sent(db, outbox_id, earlier.sid, earlier.status)
    db.execute(
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1,"
        " first_attempt_at = COALESCE(first_attempt_at, ?), from_phone = ?, updated_at = ?"
        " WHERE id = ?",
        [time.time(), config["TWILIO_FROM_NUMBER"], now(), outbox_id],
    )
    try:
        created = _create(client, config, row)
    except TwilioRestException as exc:
        error = f"Twilio answered {exc.status}: {exc.msg}"
        db.execute(
            "UPDATE outbox SET error = ?, updated_at = ? WHERE id = ?", [error, now(), outbox_id]
        )
        # 4xx but 429: the message itself is wrong (a bad number, an opted-out phone).
        if 400 <= exc.status < 500 and exc.status != 429:
            raise Refused(error) from exc
        raise
    return _sent(db, outbox_id, created.sid, created.status)


def _create(client, config, row):
    """Ask Twilio to send the SMS or place the call; return what it created."""
    base = (config.get("PUBLIC_BASE_URL") or "").rstrip("/")
    callback = f"{base}/twilio/sms-status" if base else values.unset
    if row["kind"] == "sms":
        return client.messages.create(
            to=row["to_phone"],
            from_=config["TWILIO_FROM_NUMBER"],
            body=row["body"],
            status_callback=callback,
        )
    return client.calls.create(
        to=row["to_phone"],
        from_=config["TWILIO_FROM_NUMBER"],
        url=base + row["url"],
        method="POST",
        status_callback=f"{base}/twilio/outbox-status",
        status_callback_method="POST",
    )


def _earlier_attempt(client, config, row):
    """Return the message or call an earlier attempt made on Twilio, or None."""
    since = datetime.fromtimestamp((row["first_attempt_at"] or time.time()) - SKEW_SECONDS, UTC)
    sender = row["from_phone"] or config["TWILIO_FROM_NUMBER"]
    # Newest first; filtered here by creation time, since Twilio's DateSent filter would
    # miss a message still queued on its side.
    if row["kind"] == "sms":
        found = client.messages.list(to=row["to_phone"], from_=sender, limit=50)
        # A trial account puts words in front of the body; ours is unique by its number.
        return next(
            (m for m in found if _since(m, since) and (m.body or "").endswith(row["body"])), None
        )
    found = client.calls.list(to=row["to_phone"], from_=sender, limit=50)
    return next((c for c in found if _since(c, since)), None)


def _since(item, since):
    """Return whether a Twilio message or call was created at or after since."""
    return item.date_created is not None and item.date_created >= since


def _sent(db, outbox_id, sid, status):
    """Keep the SID Twilio gave the message: from now on it is never sent again."""
    db.execute(
        "UPDATE outbox SET state = 'sent', twilio_sid = ?, twilio_status = ?, error = NULL,"
        " updated_at = ? WHERE id = ?",
        [sid, status, now(), outbox_id],
    )
    return get(db, outbox_id)


def record_status(db, sid, status, error_code=None):
    """Keep a status Twilio called back with, unless a later one is already kept; return row."""
    row = next(db["outbox"].rows_where("twilio_sid = ?", [sid]), None)
    if row is None:
        return None
    before = STATUS_RANK.get(row["twilio_status"] or "", -1)
    if STATUS_RANK.get(status, -1) < before:
        return row  # callbacks can arrive out of order; keep the furthest
    error = f"Twilio error {error_code}" if error_code else row["error"]
    db.execute(
        "UPDATE outbox SET twilio_status = ?, error = ?, updated_at = ? WHERE id = ?",
        [status, error, now(), row["id"]],
    )
    if status in ("failed", "undelivered") and row["request_id"]:
        what = "SMS" if row["kind"] == "sms" else "call"
        _tell_coordinator(db, row["request_id"], f"{what} to {row['to_phone']} {status}", row["id"])
    return get(db, row["id"])


def _tell_coordinator(db, request_id, reason, outbox_id):
    """Flag a request for a person, saying which message did not get through."""
    with db.atomic():
        db.execute(
            "UPDATE requests SET needs_review = 1, updated_at = ? WHERE id = ?",
            [now(), request_id],
        )
        record_event(
            db, request_id, "system", "message_failed", {"reason": reason, "outbox": outbox_id}
        )


def delivery_died(db, payload, reason):
    """When every attempt failed, mark the message failed and tell the coordinator."""
    row = get(db, payload["id"])
    if row is None or row["twilio_sid"]:
        return
    db.execute(
        "UPDATE outbox SET state = 'failed', error = ?, updated_at = ? WHERE id = ?",
        [reason, now(), row["id"]],
    )
    if row["request_id"]:
        what = "SMS" if row["kind"] == "sms" else "call"
        _tell_coordinator(
            db, row["request_id"], f"{what} to {row['to_phone']} not sent: {reason}", row["id"]
        )


@jobs.handler(DELIVER, on_dead=delivery_died, permanent=(Refused,))
def deliver_job(payload):
    """Job: hand one outbox message to Twilio, once."""
    deliver(get_db(), current_app.config, payload["id"])


@click.group("outbox", cls=AppGroup)
def outbox_cli():
    """Look at outbound SMS and calls, and send the ones waiting for Twilio.

    Example: flask --app app outbox list --state waiting
    """


@outbox_cli.command("list")
@click.option("--state", type=click.Choice(["waiting", "queued", "sending", "sent", "failed"]))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per message.")
def outbox_list(state, as_json):
    """List outbound SMS and calls, newest first.

    Example: flask --app app outbox list --state waiting --json
    """
    for row in rows(get_db(), state=state):
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
            continue
        what = row["body"] or row["url"]
        click.echo(
            f"{row['id']:>6} {row['kind']:<4} {row['to_phone']:<16} {row['state']:<8}"
            f" {row['twilio_status'] or '-':<11} {what}"
        )


@outbox_cli.command("send")
def outbox_send():
    """Queue the waiting messages for sending, once Twilio's settings are in place.

    Example: flask --app app outbox send
    """
    waiting = rows(get_db(), state="waiting", limit=1)
    if waiting and missing(current_app.config, waiting[0]["kind"]):
        absent = ", ".join(missing(current_app.config, waiting[0]["kind"]))
        raise click.ClickException(f"messages still wait: set {absent}")
    click.echo(f"queued {release_waiting(get_db())} waiting message(s); a worker sends them")


def init_app(app):
    """Register the outbox commands."""
    app.cli.add_command(outbox_cli)
