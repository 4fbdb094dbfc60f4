"""The CareCall story, top to bottom.

    call or button  -> recording      receive(): audio safe on disk and in the queue
    recording       -> transcript     understand(): offline speech recognition
    transcript      -> category       understand(): classify() into need and urgency
    category        -> queue item     understand(): the request waits for a coordinator
    (any step dies) -> failed         fail(): a person listens and calls back, with the reason
    queue item      -> match          people.suggest(): volunteers ranked, with reasons
    match           -> dispatch       dispatch.offer(): SMS or keypad; the first yes wins,
                                      transition "assign", and the senior is called
    dispatch        -> check-in       visits.check_in(): SMS "IN 427", a call from the
                                      volunteer's phone, their link, or a coordinator
    check-in        -> check-out      visits.check_out(): minutes kept; "check_out", done;
                                      ledger.post_visit(): the hours in the time bank, once
    (no check-in)   -> no-show        visits.miss_due(): CHECKIN_GRACE after the agreed
                                      start, "no_show" puts it back to be offered again
    check-out       -> rating         rating.schedule(): the senior is called: did they
                                      come (verified hours), and how was it, 1 to 5
    (anything amiss)-> supervision    supervision.sweep() and open_item(): a person looks
    (standing help) -> queue item     arrangements.create_due(): each occurrence, offered
                                      first to the same volunteer

Every step that can be slow or fail runs as a durable job, so a crash loses nothing.
"""

from dataclasses import dataclass
from pathlib import Path

from flask import current_app, has_app_context

from . import jobs, queue, recordings, settings, textmodel
from .classify import DEFAULT_PATH, UnknownLanguage, cached_categories, classify
from .db import get_db
from .speech import (
    AudioError,
    ModelUnavailable,
    SpeechService,
    UnknownModel,
    UnsupportedLanguage,
    load_audio,
)

TRANSCRIBE = "transcribe"


@dataclass(frozen=True)
class Transition:
    """A change of a request and the only state it may be made from."""

    event: str  # the audit event's action
    changes: dict  # column -> new value; NOW is the moment it applies
    when: dict  # column -> the values it may have; None means "not set yet"


NOW = object()
OPEN = ("new", "triaged", "assigned", "in_progress")
UNCONFIRMED = {"status": OPEN, "confirmed_at": (None,)}

# Every change a caller, a kiosk or a webhook may make to a request, and from which state.
# A replayed or late webhook meets a state its change was not meant for and changes nothing.
TRANSITIONS = {
    # The senior heard the readback and said it is right (or the emergency confirmed it).
    "confirm": Transition("confirmed", {"confirmed_at": NOW}, UNCONFIRMED),
    # The senior said it again: the first telling is cancelled, its recording kept.
    "withdraw": Transition("withdrawn", {"status": "cancelled"}, UNCONFIRMED),
    # Nobody heard the senior confirm: a person reads it before acting on it.
    "unconfirmed": Transition(
        "not confirmed", {"needs_review": 1}, {**UNCONFIRMED, "needs_review": (0, None)}
    ),
    # A volunteer said yes first (dispatch.accept): only a request with nobody yet is assigned.
    "assign": Transition("assigned", {"status": "assigned"}, {"status": ("new", "triaged")}),
    # The volunteer arrived (visits.check_in): the help is happening.
    "check_in": Transition("checked in", {"status": "in_progress"}, {"status": ("assigned",)}),
    # The volunteer left (visits.check_out): the request is done, checked in or not by status.
    "check_out": Transition(
        "checked out", {"status": "done"}, {"status": ("assigned", "in_progress")}
    ),
    # Nobody checked in in time (visits.miss_due): the request may be offered again.
    "no_show": Transition("no show", {"status": "triaged"}, {"status": ("assigned",)}),
}
# A coordinator may move a request from any other status to this one ("status:done").
TRANSITIONS |= {
    f"status:{status}": Transition(
        "status", {"status": status}, {"status": tuple(s for s in queue.STATUSES if s != status)}
    )
    for status in queue.STATUSES
}


def allows(request, action):
    """Return whether a TRANSITIONS change could apply to a request as it stands."""
    return all(request[column] in allowed for column, allowed in TRANSITIONS[action].when.items())


def transition(db, request_id, action, *, actor, detail=None):
    """Apply a TRANSITIONS change only from the state it was meant for; return whether it did."""
    rule = TRANSITIONS[action]
    stamp = queue.now()
    changes = {k: stamp if v is NOW else v for k, v in rule.changes.items()}
    conditions, params = ["id = ?"], [request_id]
    for column, allowed in rule.when.items():
        values = [v for v in allowed if v is not None]
        parts = [f"{column} IN ({', '.join('?' * len(values))})"] if values else []
        if None in allowed:
            parts.append(f"{column} IS NULL")
        conditions.append(f"({' OR '.join(parts)})")
        params.extend(values)
    assignments = ", ".join(f"{column} = ?" for column in [*changes, "updated_at"])
    with db.atomic():
        before = queue.get(db, request_id)  # raises RequestNotFound for an unknown id
        # One conditional UPDATE: two deliveries racing cannot both apply it.
        cursor = db.execute(
            f"UPDATE requests SET {assignments} WHERE {' AND '.join(conditions)}",
            [*changes.values(), stamp, *params],
        )
        if cursor.rowcount != 1:
            return False
        diff = {k: [before[k], v] for k, v in changes.items()}
        queue.record_event(db, request_id, actor, rule.event, {**diff, **(detail or {})})
    return True


def receive(
    db,
    audio,
    *,
    channel,
    phone=None,
    language=None,
    region=None,
    source_key=None,
    suffix=".wav",
    actor="system",
):
    """Keep a recording safe on disk and in the queue, and ask for its transcription.

    The file takes its final name in the transaction that saves the request, so a failed
    save leaves no file behind. Raises recordings.StorageFull when the disk is full.
    """
    config = current_app.config
    if source_key is not None and (existing := queue.find_by_source(db, source_key)):
        return existing
    staged = recordings.stage(config["DATA_DIR"], audio, suffix)
    field = "video_path" if channel == "video" else "audio_path"
    try:
        with db.atomic():
            request, created = queue.create(
                db,
                channel=channel,
                phone=phone,
                language=language or config["DEFAULT_LANGUAGE"],
                region=region,
                source_key=source_key,
                actor=actor,
                **{field: staged.relative},
            )
            if created:
                jobs.enqueue(
                    db,
                    TRANSCRIBE,
                    {"request_id": request["id"]},
                    key=f"{TRANSCRIBE}:{request['id']}",
                    priority=10,
                )
                staged.publish()
                # A caller's transaction around this one may still roll back.
                db.on_rollback(staged.discard)
    except BaseException:
        staged.discard()
        raise
    if not created:
        staged.discard()  # another delivery of the same recording was saved first
    return request


def call_back(db, *, channel, phone, language, source_key, reason, urgency="normal"):
    """Queue a 'call back' item for a senior we could not hear; once per source; return it."""
    request, _ = queue.create(
        db,
        channel=channel,
        phone=phone,
        language=language,
        source_key=source_key,
        category="other",
        urgency=urgency,
        needs_review=1,
        error=reason,
    )
    return request


def understand(db, request_id, speech, categories_for, *, max_seconds, review_confidence):
    """Turn a request's recording into a transcript, a category and an urgency."""
    request = queue.get(db, request_id)
    if request["stage"] != "received":
        return request  # a retried job whose work was already saved
    path = request["audio_path"] or request["video_path"]
    try:
        audio = load_audio(
            recordings.path_of(current_app.config["DATA_DIR"], path), max_seconds=max_seconds
        )
    except AudioError as exc:
        return fail(db, request_id, str(exc), action="unreadable")
    transcript = speech.transcribe(audio, language=request["language"])
    try:
        language = request["language"]
        result = classify(
            transcript.text, categories_for(language), text_classifier(current_app, language)
        )
    except UnknownLanguage:
        result = None
    changes = {
        "stage": "transcribed",
        "transcript": transcript.text,
        "transcript_confidence": transcript.confidence,
        "transcript_words": [w.to_dict() for w in transcript.words],
        "engine": transcript.engine,
        "model": transcript.model,
        "duration_s": transcript.duration_s,
        "needs_review": int(
            transcript.confidence < review_confidence
            or result is None
            or not transcript.text.strip()
        ),
    }
    if result is not None:
        changes |= {
            "category": result.category,
            "category_score": result.score,
            "alternatives": [{"category": c, "score": s} for c, s in result.alternatives],
            "matched": list(result.matched),
            "urgency": result.urgency,
            "emergency": int(result.emergency),
        }
    else:
        changes |= {"category": "other", "urgency": "normal"}
    with db.atomic():
        request = queue.update(db, request_id, changes, actor="system", action="understood")
        if request["emergency"]:
            queue.record_event(
                db,
                request_id,
                "system",
                "alert",
                {"reason": "emergency", "matched": request["matched"]},
            )
    return request


def fail(db, request_id, reason, *, action="failed"):
    """Give up understanding a request: a person must listen and call back today, told why."""
    with db.atomic():
        request = queue.get(db, request_id)
        if request["stage"] != "received":
            return request  # understood after all, or already failed: nothing to give up
        return queue.update(
            db,
            request_id,
            {
                "stage": "failed",
                "error": reason,
                "category": request["category"] or "other",
                "urgency": "critical" if request["urgency"] == "critical" else "high",
                "needs_review": 1,
            },
            actor="system",
            action=action,
        )


def confirm(db, request_id, *, actor="caller"):
    """Record that the senior heard the readback and said it is right."""
    transition(db, request_id, "confirm", actor=actor)
    return queue.get(db, request_id)


def withdraw(db, request_id, *, actor="caller", reason="said it again"):
    """Cancel a request the senior replaced by saying it again; its recording is kept."""
    transition(db, request_id, "withdraw", actor=actor, detail={"reason": reason})
    return queue.get(db, request_id)


def transcription_died(db, payload, reason):
    """When the transcription job is buried, mark its request failed so nobody waits on it."""
    fail(db, payload["request_id"], reason)


# A missing or broken model, or a language nobody configured, is not mended by retrying.
@jobs.handler(
    TRANSCRIBE,
    on_dead=transcription_died,
    permanent=(ModelUnavailable, UnsupportedLanguage),
)
def transcribe_job(payload):
    """Job: understand one received recording."""
    app = current_app
    understand(
        get_db(),
        payload["request_id"],
        speech_service(app),
        categories_for,
        max_seconds=app.config["MAX_AUDIO_SECONDS"],
        review_confidence=app.config["REVIEW_CONFIDENCE"],
    )


def intake(app, audio_path, **fields):
    """Run one recording through the whole pipeline now and return its request."""
    with app.app_context():
        db = get_db()
        request = receive(db, audio_path, suffix=Path(audio_path).suffix or ".bin", **fields)
    jobs.drain(app)
    with app.app_context():
        return queue.get(get_db(), request["id"])


def speech_service(app):
    """Return the app's speech service, which loads each model once, on first use."""
    return app.extensions["carecall.speech"]


def categories_for(language):
    """Return a language's categories from the app's flows folder (outside an app, ours)."""
    path = DEFAULT_PATH
    if has_app_context():
        path = Path(current_app.config["FLOWS_DIR"]) / "categories.toml"
    return cached_categories(path, language)


def text_classifier(app, language):
    """Return the learned classifier joined with the rules, or None for rules alone."""
    return textmodel.text_models(app).classifier(language)


def init_app(app):
    """Attach the speech and text models; a speech model name it does not know stops start-up."""
    textmodel.init_app(app)
    try:
        app.extensions["carecall.speech"] = SpeechService(
            engines=app.config["SPEECH_ENGINES"],
            models_dir=app.config["MODELS_DIR"],
            max_seconds=app.config["MAX_AUDIO_SECONDS"],
        )
    except UnknownModel as exc:
        engines = settings.shown(settings.BY_NAME["SPEECH_ENGINES"], app.config["SPEECH_ENGINES"])
        raise settings.SettingsError(
            f"{settings.PREFIX}SPEECH_ENGINES={engines}: {exc}"
            " (`flask --app app models list` shows the models)"
        ) from None
