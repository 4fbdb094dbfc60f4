"""Named, append-only schema migrations: never edit one that has been applied.

They apply in the order written here. The numbers are only names, fixed once a database
has recorded them, so some appear out of numeric order (0007 before 0005) and 0006 was
never used; renaming one would make every existing database apply it twice.
"""

import json
from datetime import UTC, datetime

from sqlite_utils.migrations import Migrations

migrations = Migrations("carecall")


@migrations(name="0001_requests_events_jobs")
def m0001(db):
    """Create the request queue, its audit events and the durable job table."""
    db["requests"].create(
        {
            "id": int,
            "channel": str,  # phone, voicemail, kiosk, video, manual
            "phone": str,
            "language": str,
            "region": str,
            "source_key": str,  # CallSid, RecordingSid, kiosk client id: makes retries idempotent
            "audio_path": str,
            "video_path": str,
            "stage": str,  # received -> transcribed, or failed: where intake is
            "transcript": str,
            "transcript_confidence": float,
            "transcript_words": str,  # JSON list of {text, start, end, confidence}
            "engine": str,
            "model": str,
            "duration_s": float,
            "category": str,
            "category_score": float,
            "alternatives": str,  # JSON list of {category, score}
            "matched": str,  # JSON list of phrases
            "urgency": str,
            "emergency": int,
            "needs_review": int,
            "error": str,
            "confirmed_at": str,  # when the senior said "yes, that is right" to the readback
            "status": str,  # new -> triaged -> assigned -> in_progress -> done, or cancelled
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"channel", "stage", "status", "created_at", "updated_at"},
        defaults={"stage": "received", "status": "new", "emergency": 0, "needs_review": 0},
    )
    db["requests"].create_index(["source_key"], unique=True)
    db["requests"].create_index(["phone", "created_at"])
    db["requests"].create_index(["status", "urgency", "created_at"])
    db["events"].create(
        {
            "id": int,
            "request_id": int,
            "actor": str,  # system, caller, kiosk:<name>, user:<name>
            "action": str,
            "detail": str,  # JSON: before/after or what happened
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("request_id", "requests", "id")],
        not_null={"actor", "action", "created_at"},
    )
    db["events"].create_index(["request_id", "id"])
    db["jobs"].create(
        {
            "id": int,
            "kind": str,
            "payload": str,
            "key": str,  # idempotency key: enqueueing the same key twice is one job
            "state": str,  # queued, running, done, dead
            "priority": int,
            "attempts": int,
            "max_attempts": int,
            "run_after": float,
            "lease_until": float,
            "worker": str,
            "last_error": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"kind", "payload", "state", "attempts", "max_attempts", "run_after"},
        defaults={"state": "queued", "priority": 0, "attempts": 0, "run_after": 0.0},
    )
    db["jobs"].create_index(["key"], unique=True)
    db["jobs"].create_index(["state", "priority", "run_after"])


@migrations(name="0002_telephony")
def m0002_telephony(db):
    """Create phone calls, remembered callers, and Twilio recordings awaiting download."""
    db["calls"].create(
        {
            "call_sid": str,  # Twilio's CallSid: every webhook of one call carries it
            "phone": str,
            "language": str,
            "pace": str,  # normal or slow: how fast prompts are spoken
            "menu": str,  # where the caller is now
            "silences": int,  # prompts in a row the caller has not answered
            "request_id": int,  # the request this call made, if any
            "recording_sid": str,  # the recording being turned into that request
            "outcome": str,  # request, voicemail, status, emergency, person; NULL = missed
            "call_status": str,  # Twilio's last CallStatus
            "duration_s": float,
            "started_at": str,
            "updated_at": str,
        },
        pk="call_sid",
        not_null={"started_at", "updated_at"},
        defaults={"silences": 0, "pace": "normal"},
    )
    db["calls"].create_index(["phone", "started_at"])
    db["callers"].create(
        {
            "phone": str,
            "language": str,  # greeted in this language next time
            "pace": str,  # and at this pace
            "calls": int,
            "last_call_at": str,
        },
        pk="phone",
        defaults={"calls": 0, "pace": "normal"},
    )
    db["twilio_recordings"].create(
        {
            "recording_sid": str,  # Twilio's RecordingSid: the request's source_key
            "call_sid": str,
            "url": str,  # RecordingUrl as Twilio sent it, checked against allowed hosts
            "purpose": str,  # request or voicemail
            "phone": str,
            "language": str,
            "duration_s": float,
            "state": str,  # pending -> stored, or dead after every download failed
            "request_id": int,
            "attempts": int,
            "error": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="recording_sid",
        not_null={"state", "created_at", "updated_at"},
        defaults={"state": "pending", "attempts": 0},
    )
    db["twilio_recordings"].create_index(["call_sid"])
    db["twilio_recordings"].create_index(["state"])


@migrations(name="0003_console")
def m0003_console(db):
    """Add accounts, tokens, lock-out, notes, call-backs, corrections, merging and FTS."""
    db["users"].create(
        {
            "id": int,
            "name": str,
            "role": str,  # admin, coordinator, viewer
            "password_hash": str,  # argon2id
            "active": int,
            "created_at": str,
        },
        pk="id",
        not_null={"name", "role", "password_hash", "active", "created_at"},
        defaults={"active": 1},
    )
    db["users"].create_index(["name"], unique=True)
    db["api_tokens"].create(
        {
            "id": int,
            "name": str,
            "role": str,
            "token_hash": str,  # sha256 of a 256-bit random token: unguessable, so no KDF
            "created_at": str,
            "last_used_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"name", "role", "token_hash", "created_at"},
    )
    db["api_tokens"].create_index(["token_hash"], unique=True)
    db["login_attempts"].create(
        {"name": str, "failures": int, "locked_until": float, "last_failure_at": float},
        pk="name",
        not_null={"failures"},
        defaults={"failures": 0, "locked_until": 0.0},
    )
    for table, columns in {
        "notes": {"body": str},
        "callbacks": {"outcome": str, "note": str},
    }.items():
        db[table].create(
            {"id": int, "request_id": int, "actor": str, **columns, "created_at": str},
            pk="id",
            foreign_keys=[("request_id", "requests", "id")],
            not_null={"request_id", "actor", "created_at"},
        )
        db[table].create_index(["request_id", "id"])
    db["corrections"].create(
        {
            "id": int,
            "request_id": int,
            "field": str,  # category, urgency, transcript
            "before": str,
            "after": str,
            "transcript": str,  # the words the correction is about, for phrase-list work
            "language": str,
            "actor": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("request_id", "requests", "id")],
        not_null={"request_id", "field", "actor", "created_at"},
    )
    db["requests"].add_column("merged_into", int)
    db["requests"].add_column("called_again", int, not_null_default=0)
    db["requests"].enable_fts(["transcript"], create_triggers=True, tokenize="porter")
    # Newest activity first, overall and within each filter the console offers.
    db["requests"].create_index(["updated_at"])
    for column in ("category", "urgency", "region", "channel", "language", "status"):
        db["requests"].create_index([column, "updated_at"])
    db["requests"].create_index(["created_at"])
    db["requests"].create_index(["merged_into"])
    # Partial indexes: open work and pinned critical requests stay fast however large done grows.
    db.execute(
        "CREATE INDEX idx_requests_open_updated ON requests(updated_at)"
        " WHERE status NOT IN ('done', 'cancelled')"
    )
    db.execute(
        "CREATE INDEX idx_requests_critical_open ON requests(updated_at)"
        " WHERE urgency = 'critical' AND status NOT IN ('done', 'cancelled')"
    )


@migrations(name="0004_kiosks")
def m0004_kiosks(db):
    """Create the kiosk registry: tablets whose hashed tokens name a centre and its region."""
    db["kiosks"].create(
        {
            "id": int,
            "name": str,  # the community centre, e.g. "Riverside Centre"
            "region": str,  # stamped on every request the kiosk sends
            "language": str,  # the page's language; None means the app's default
            "token_hash": str,  # sha256 of the bearer token; the token itself is never stored
            "token_hint": str,  # first characters of the token, to tell tablets apart
            "created_at": str,
            "last_seen_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"name", "region", "token_hash", "created_at"},
    )
    db["kiosks"].create_index(["token_hash"], unique=True)


@migrations(name="0007_sessions")
def m0007_sessions(db):
    """Key lock-out by client and name, and keep console sessions so logout can end them."""
    # Failed logins were keyed by name alone; they are short-lived state, so start afresh.
    db["login_attempts"].drop()
    db["login_attempts"].create(
        {
            "client": str,  # the address the attempts came from
            "name": str,  # the name tried; "" counts every name tried from the client
            "failures": int,
            "last_failure_at": float,  # epoch seconds: the lock lasts from here
        },
        pk=("client", "name"),
        not_null={"client", "name", "failures", "last_failure_at"},
    )
    db["login_attempts"].create_index(["last_failure_at"])
    db["sessions"].create(
        {
            "token_hash": str,  # sha256 of the random token in the signed cookie
            "user_id": int,
            "client": str,
            "created_at": str,
            "last_seen_at": float,  # epoch seconds: the session ends SESSION_LIFETIME after it
        },
        pk="token_hash",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "created_at", "last_seen_at"},
    )
    db["sessions"].create_index(["user_id"])
    db["sessions"].create_index(["last_seen_at"])


@migrations(name="0005_workers")
def m0005_workers(db):
    """Create the worker registry: a heartbeat per live worker, so a dead one's job moves on."""
    db["workers"].create(
        {
            "name": str,  # host:pid:thread-or-kind:random, as written in jobs.worker
            "kind": str,  # serve (in-process thread), worker (its own process) or drain
            "host": str,
            "pid": int,
            "started_at": float,
            "heartbeat_at": float,  # time.time() of the last beat
        },
        pk="name",
        not_null={"kind", "started_at", "heartbeat_at"},
    )
    # Before this, a dead transcription left its request 'received' for ever, unseen.
    stuck = db.execute(
        "SELECT r.id, r.urgency, j.last_error FROM requests r JOIN jobs j"
        " ON j.kind = 'transcribe' AND j.state = 'dead'"
        " AND json_extract(j.payload, '$.request_id') = r.id"
        " WHERE r.stage = 'received'"
    ).fetchall()
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for request_id, urgency, last_error in stuck:
        reason = "transcription died: " + ((last_error or "").splitlines() or ["no error kept"])[0]
        db["requests"].update(
            request_id,
            {
                "stage": "failed",
                "error": reason,
                "urgency": "critical" if urgency == "critical" else "high",
                "needs_review": 1,
                "updated_at": stamp,
            },
        )
        db.execute(
            "UPDATE requests SET category = 'other' WHERE id = ? AND category IS NULL", [request_id]
        )
        db["events"].insert(
            {
                "request_id": request_id,
                "actor": "system",
                "action": "failed",
                "detail": json.dumps({"reason": reason}),
                "created_at": stamp,
            }
        )


@migrations(name="0008_people")
def m0008_people(db):
    """Create the volunteer and people-served registries and link requests to a person."""
    db["volunteers"].create(
        {
            "id": int,
            "name": str,
            "phone": str,  # E.164
            "languages": str,  # JSON list of language codes
            "skills": str,  # JSON object: demand category -> level (null: no level given)
            "region": str,
            "postcode": str,  # or neighbourhood, resolved to lat/lon from ivr_flows/places.toml
            "lat": float,
            "lon": float,
            "availability": str,  # weekly slots: "mon 09:00-12:00; wed 14:00-18:00"
            "exceptions": str,  # holidays: "2026-12-24; 2026-12-27..2027-01-02"
            "max_open": int,  # open assignments at most
            "active": int,  # 0: paused, never suggested
            "training_done": int,
            "notes": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"name", "phone", "max_open", "active", "training_done", "created_at"},
        defaults={"active": 1, "training_done": 0, "max_open": 1},
    )
    db["volunteers"].create_index(["phone"], unique=True)
    db["volunteers"].create_index(["active", "region"])
    # Bumped by every write to volunteers, however made, so matching knows when the arrays
    # it keeps are stale.
    db["volunteers_version"].create({"id": int, "version": int}, pk="id")
    db["volunteers_version"].insert({"id": 1, "version": 0})
    for event in ("INSERT", "UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER volunteers_version_{event.lower()} AFTER {event} ON volunteers"
            " BEGIN UPDATE volunteers_version SET version = version + 1 WHERE id = 1; END"
        )
    db["people"].create(
        {
            "id": int,
            "name": str,
            "phones": str,  # JSON list, E.164; looked up through person_phones
            "address": str,
            "postcode": str,
            "lat": float,
            "lon": float,
            "region": str,
            "language": str,
            "accessibility": str,  # e.g. "hard of hearing; speak slowly"
            "preferred_volunteers": str,  # JSON list of volunteer ids, first choice first
            "emergency_contact": str,
            "notes": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"name", "created_at"},
    )
    # Caller ID finds the person: one row per number, so the lookup is an index hit.
    db["person_phones"].create(
        {"phone": str, "person_id": int},
        pk="phone",
        foreign_keys=[("person_id", "people", "id")],
    )
    db["person_phones"].create_index(["person_id"])
    # Plain ALTER TABLE: sqlite-utils' add_column(fk=...) rebuilds the table and drops the
    # full-text triggers.
    db.execute("ALTER TABLE requests ADD COLUMN person_id INTEGER REFERENCES people(id)")
    db["requests"].create_index(["person_id"])


@migrations(name="0010_queue")
def queue_order(db):
    """Index the work order: most urgent first, then longest waiting since received."""
    # The CASE is spelled exactly as app.console.search.URGENCY_ORDER, so SQLite reads
    # the order from the index instead of sorting every open (or every) request.
    rank = "(CASE urgency WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'low' THEN 3 ELSE 2 END)"
    db.execute(
        f"CREATE INDEX idx_requests_open_waiting ON requests({rank}, created_at, id)"
        " WHERE status NOT IN ('done', 'cancelled')"
    )
    db.execute(f"CREATE INDEX idx_requests_waiting ON requests({rank}, created_at, id)")


@migrations(name="0009_assignments")
def m0009_assignments(db):
    """Create offers to volunteers, the outbox of SMS and calls, inbound SMS, and opt-outs."""
    db["assignments"].create(
        {
            "id": int,
            "request_id": int,
            "volunteer_id": int,
            "state": str,  # offered -> accepted, declined, expired or withdrawn
            "code": str,  # short number the volunteer replies with: "YES 427"
            "channel": str,  # sms or call
            "wave": int,  # 1 for the coordinator's offer, +1 for each cascade to the next
            "actor": str,  # who made the offer
            "offered_at": str,
            "answered_at": str,
            "expires_at": str,
            "visit_at": str,  # when the volunteer will come, told to the senior
            "senior_answer": str,  # suits, another_time, person: the senior's key on the call
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        foreign_keys=[("request_id", "requests", "id"), ("volunteer_id", "volunteers", "id")],
        not_null={"request_id", "volunteer_id", "state", "code", "channel", "offered_at"},
        defaults={"wave": 1},
    )
    # A code names one open offer; one volunteer has one open offer per request; and
    # the database itself refuses a second accepted offer for a request.
    db.execute(
        "CREATE UNIQUE INDEX idx_assignments_open_code ON assignments(code) WHERE state = 'offered'"
    )
    db.execute(
        "CREATE UNIQUE INDEX idx_assignments_open_pair ON assignments(request_id, volunteer_id)"
        " WHERE state = 'offered'"
    )
    db.execute(
        "CREATE UNIQUE INDEX idx_assignments_accepted ON assignments(request_id)"
        " WHERE state = 'accepted'"
    )
    db["assignments"].create_index(["request_id", "id"])
    db["assignments"].create_index(["volunteer_id", "state"])
    db["assignments"].create_index(["state", "expires_at"])
    # A volunteer's load is part of matching's cached arrays: an accepted offer, or the end of
    # a request one was accepted for, makes them stale. Other offers leave the load alone.
    bump = "BEGIN UPDATE volunteers_version SET version = version + 1 WHERE id = 1; END"
    db.execute(
        "CREATE TRIGGER assignments_version_insert AFTER INSERT ON assignments"
        f" WHEN new.state = 'accepted' {bump}"
    )
    db.execute(
        "CREATE TRIGGER assignments_version_update AFTER UPDATE OF state ON assignments"
        f" WHEN (old.state = 'accepted') != (new.state = 'accepted') {bump}"
    )
    db.execute(
        "CREATE TRIGGER assignments_version_delete AFTER DELETE ON assignments"
        f" WHEN old.state = 'accepted' {bump}"
    )
    db.execute(
        "CREATE TRIGGER requests_status_version AFTER UPDATE OF status ON requests"
        " WHEN old.status IS NOT new.status AND EXISTS (SELECT 1 FROM assignments"
        f" WHERE request_id = new.id AND state = 'accepted') {bump}"
    )
    db["outbox"].create(
        {
            "id": int,
            "key": str,  # idempotency key: the same message is queued and sent once
            "kind": str,  # sms or call
            "to_phone": str,
            "from_phone": str,
            "body": str,  # the SMS text
            "url": str,  # for a call: the TwiML path Twilio fetches
            "request_id": int,
            "assignment_id": int,
            "state": str,  # waiting (no credentials), queued, sending, sent, failed
            "twilio_sid": str,  # SMxxx or CAxxx once Twilio accepted it
            "twilio_status": str,  # Twilio's own word, from the answer and status callbacks
            "attempts": int,
            "first_attempt_at": float,  # a retry looks for what Twilio got since then
            "error": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"key", "kind", "to_phone", "state", "attempts", "created_at"},
        defaults={"attempts": 0},
    )
    db["outbox"].create_index(["key"], unique=True)
    db["outbox"].create_index(["twilio_sid"])
    db["outbox"].create_index(["state", "id"])
    db["inbound_sms"].create(
        {
            "message_sid": str,  # Twilio's MessageSid: a replayed webhook gets the same answer
            "from_phone": str,
            "body": str,
            "volunteer_id": int,
            "assignment_id": int,
            "meaning": str,  # yes, no, help, stop, start or note
            "reply": str,  # what we answered, repeated to a replay
            "created_at": str,
        },
        pk="message_sid",
        not_null={"created_at"},
    )
    db["inbound_sms"].create_index(["from_phone", "created_at"])
    # Plain ALTER TABLE keeps the volunteers_version triggers (a table rebuild drops them).
    db.execute("ALTER TABLE volunteers ADD COLUMN opted_out_at TEXT")  # STOP: never offered
    db.execute("ALTER TABLE volunteers ADD COLUMN offer_channel TEXT NOT NULL DEFAULT 'sms'")


@migrations(name="0011_visits")
def m0011_visits(db):
    """Record each visit: check-in and check-out, minutes, a no-show and its excuse."""
    for column, kind in (
        ("checked_in_at", "TEXT"),  # UTC ISO-8601, seconds
        ("checked_out_at", "TEXT"),
        ("check_in_by", "TEXT"),  # sms, call, link or console
        ("check_out_by", "TEXT"),
        ("manual", "INTEGER NOT NULL DEFAULT 0"),  # 1: a coordinator entered it by hand
        ("minutes", "INTEGER"),  # whole minutes between check-in and check-out
        ("latitude", "REAL"),  # only from the mobile page, when the volunteer allows it
        ("longitude", "REAL"),
        ("accuracy_m", "REAL"),
        ("excused", "INTEGER NOT NULL DEFAULT 0"),  # a no-show a coordinator excused
        ("excuse", "TEXT"),
        ("senior_came", "TEXT"),  # yes or no: the senior's answer on the rating call
        ("rating", "INTEGER"),  # 1-5
        ("verified", "INTEGER NOT NULL DEFAULT 0"),  # hours the senior confirmed
        ("rated_at", "TEXT"),
    ):
        # Plain ALTER TABLE keeps the volunteers_version triggers (a table rebuild drops them).
        db.execute(f"ALTER TABLE assignments ADD COLUMN {column} {kind}")
    # A volunteer holds a job from yes to check-out: accepted, then checked_in. The database
    # refuses a second holder for a request, as 0009 did for accepted offers alone.
    held = "state IN ('accepted', 'checked_in')"
    db.execute(f"CREATE UNIQUE INDEX idx_assignments_held ON assignments(request_id) WHERE {held}")
    # Matching's cached load counts held jobs: moving in or out of holding makes it stale.
    bump = "BEGIN UPDATE volunteers_version SET version = version + 1 WHERE id = 1; END"
    for name in (
        "assignments_version_insert",
        "assignments_version_update",
        "assignments_version_delete",
        "requests_status_version",
    ):
        db.execute(f"DROP TRIGGER IF EXISTS {name}")
    db.execute(
        "CREATE TRIGGER assignments_version_insert AFTER INSERT ON assignments"
        f" WHEN new.{held} {bump}"
    )
    db.execute(
        "CREATE TRIGGER assignments_version_update AFTER UPDATE OF state ON assignments"
        f" WHEN (old.{held}) != (new.{held}) {bump}"
    )
    db.execute(
        "CREATE TRIGGER assignments_version_delete AFTER DELETE ON assignments"
        f" WHEN old.{held} {bump}"
    )
    db.execute(
        "CREATE TRIGGER requests_status_version AFTER UPDATE OF status ON requests"
        " WHEN old.status IS NOT new.status AND EXISTS (SELECT 1 FROM assignments"
        f" WHERE request_id = new.id AND {held}) {bump}"
    )


@migrations(name="0014_supervision")
def m0014_supervision(db):
    """Create supervision items, the actions taken on them, and decisions about volunteers."""
    db["supervision_items"].create(
        {
            "id": int,
            "key": str,  # what it is about, "low_rating:12": a second report is the same item
            "kind": str,  # low_rating, did_not_come, person_asked, no_show, unconfirmed, ...
            "state": str,  # open -> resolved
            "reason": str,  # one line for the coordinator
            "volunteer_id": int,
            "request_id": int,
            "assignment_id": int,
            "job_id": int,
            "opened_by": str,
            "opened_at": str,
            "resolved_by": str,
            "resolved_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"key", "kind", "state", "reason", "opened_by", "opened_at"},
    )
    db["supervision_items"].create_index(["key"], unique=True)
    db["supervision_items"].create_index(["state", "id"])
    db["supervision_items"].create_index(["volunteer_id", "id"])
    db["supervision_actions"].create(
        {
            "id": int,
            "item_id": int,
            "action": str,  # note, follow_up_call, pause_volunteer, excuse_no_show, resolve
            "text": str,
            "actor": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("item_id", "supervision_items", "id")],
        not_null={"item_id", "action", "actor", "created_at"},
    )
    db["supervision_actions"].create_index(["item_id", "id"])
    db["volunteer_decisions"].create(
        {
            "id": int,
            "volunteer_id": int,
            "decision": str,  # recognition, training, end_role
            "reason": str,
            "actor": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("volunteer_id", "volunteers", "id")],
        not_null={"volunteer_id", "decision", "reason", "actor", "created_at"},
    )
    db["volunteer_decisions"].create_index(["volunteer_id", "id"])


@migrations(name="0012_ledger")
def m0012_ledger(db):
    """Create the time-bank ledger: accounts, one transfer per visit, its double entries."""
    db.execute(
        """CREATE TABLE ledger_accounts (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,  -- volunteer:3, person:7 or programme
            kind TEXT NOT NULL CHECK (kind IN ('volunteer', 'person', 'programme')),
            owner_id INTEGER,  -- the volunteer's or person's id; NULL for the programme
            created_at TEXT NOT NULL
        )"""
    )
    db.execute(
        "INSERT INTO ledger_accounts (key, kind, created_at) VALUES ('programme', 'programme', ?)",
        [datetime.now(UTC).isoformat(timespec="seconds")],
    )
    db.execute(
        """CREATE TABLE ledger_transfers (
            id INTEGER PRIMARY KEY,
            assignment_id INTEGER NOT NULL REFERENCES assignments(id),
            request_id INTEGER NOT NULL REFERENCES requests(id),
            volunteer_id INTEGER NOT NULL REFERENCES volunteers(id),
            person_id INTEGER REFERENCES people(id),
            source TEXT NOT NULL,  -- the account key the minutes left
            minutes INTEGER NOT NULL CHECK (minutes >= 0),
            points INTEGER NOT NULL CHECK (points >= 0),
            category TEXT NOT NULL,
            started_at TEXT NOT NULL,  -- check-in and check-out, UTC
            ended_at TEXT NOT NULL,
            rules TEXT NOT NULL,  -- JSON list: the point rules applied, in words
            created_at TEXT NOT NULL
        )"""
    )
    # One transfer per visit: a replayed or racing post cannot count an hour twice.
    db.execute(
        "CREATE UNIQUE INDEX idx_ledger_transfers_assignment ON ledger_transfers(assignment_id)"
    )
    db.execute(
        "CREATE INDEX idx_ledger_transfers_volunteer ON ledger_transfers(volunteer_id, started_at)"
    )
    db.execute("CREATE INDEX idx_ledger_transfers_started ON ledger_transfers(started_at)")
    db.execute(
        """CREATE TABLE ledger_entries (
            id INTEGER PRIMARY KEY,
            transfer_id INTEGER NOT NULL REFERENCES ledger_transfers(id),
            account_id INTEGER NOT NULL REFERENCES ledger_accounts(id),
            unit TEXT NOT NULL CHECK (unit IN ('minutes', 'points')),
            amount INTEGER NOT NULL,  -- negative leaves the account, positive enters it
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX idx_ledger_entries_account ON ledger_entries(account_id, unit)")
    db.execute("CREATE INDEX idx_ledger_entries_transfer ON ledger_entries(transfer_id)")
    # The ledger is append-only: a correction is a new transfer, never an edit.
    for table in ("ledger_transfers", "ledger_entries"):
        for event in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table}"
                f" BEGIN SELECT RAISE(ABORT, '{table} are never changed or deleted'); END"
            )


@migrations(name="0013_arrangements")
def m0013_arrangements(db):
    """Create standing arrangements, their occurrences, and the agreed start of a request."""
    db["arrangements"].create(
        {
            "id": int,
            "request_id": int,  # the request it was made from: its template
            "person_id": int,
            "phone": str,  # the senior's number, copied: each occurrence is a request from it
            "category": str,
            "language": str,
            "place": str,  # the request's region, copied
            "notes": str,  # what was asked, copied from the request's transcript
            "volunteer_id": int,  # asked first for every occurrence
            "weekdays": str,  # "tue" or "mon,thu": availability.DAYS
            "local_time": str,  # HH:MM wall-clock time in timezone
            "timezone": str,  # COORDINATOR_TIMEZONE when it was made: later changes leave it
            "starts_on": str,  # local dates, ISO
            "ends_on": str,  # the last day an occurrence may fall on; NULL: no end
            "active": int,  # 0: paused, or ended (ended_at set)
            "ended_at": str,
            "created_by": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        foreign_keys=[
            ("request_id", "requests", "id"),
            ("person_id", "people", "id"),
            ("volunteer_id", "volunteers", "id"),
        ],
        not_null={"request_id", "weekdays", "local_time", "timezone", "starts_on", "active"},
        defaults={"active": 1},
    )
    db["arrangements"].create_index(["active"])
    db["arrangements"].create_index(["request_id"])
    db["occurrences"].create(
        {
            "id": int,
            "arrangement_id": int,
            "date": str,  # the local date of the occurrence
            "request_id": int,  # the request created for it
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("arrangement_id", "arrangements", "id"), ("request_id", "requests", "id")],
        not_null={"arrangement_id", "date", "created_at"},
    )
    # A replayed job or a second worker finds the occurrence taken and creates nothing.
    db["occurrences"].create_index(["arrangement_id", "date"], unique=True)
    # Plain ALTER TABLE keeps the full-text triggers. ISO 8601 with the zone's offset.
    db.execute("ALTER TABLE requests ADD COLUMN wanted_at TEXT")
