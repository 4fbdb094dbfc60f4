"""Named, append-only schema migrations: never edit one that has been applied."""

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
