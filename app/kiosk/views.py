"""The kiosk's web edge: the one-button page and the upload API it talks to."""

import io
import logging
import secrets
from pathlib import Path

from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    send_file,
    url_for,
)
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .. import pipeline, queue
from ..classify import UnknownLanguage
from ..db import DatabaseBusy, DatabaseFull, get_db, is_busy, is_full, is_unwritable
from ..recordings import FULL_ERRNOS, UNWRITABLE_ERRNOS, StorageFull, StorageUnavailable
from ..speech import AudioTooLong, CorruptAudio, EmptyAudio, NotAudio, SilentAudio
from . import devices, messages, voice, wording
from .upload import (
    BadField,
    MissingRecording,
    NotMultipart,
    TruncatedUpload,
    UploadTooLarge,
    read_upload,
)

bp = Blueprint("kiosk", __name__)
log = logging.getLogger(__name__)
# How long a tablet waits before sending again after a 503 or 507 (README: "Retry-After").
RETRY_AFTER_SECONDS = 5

# Named error -> (HTTP status, code the page understands). Most specific first.
API_ERRORS = (
    (devices.BadToken, 401, "unauthorized"),
    (UploadTooLarge, 413, "too_large"),
    (RequestEntityTooLarge, 413, "too_large"),
    (NotMultipart, 415, "not_multipart"),
    (messages.NotVideo, 415, "not_video"),
    (NotAudio, 415, "not_audio"),
    (CorruptAudio, 422, "corrupt"),
    (EmptyAudio, 422, "empty"),
    (SilentAudio, 422, "silent"),
    (AudioTooLong, 422, "too_long"),
    (MissingRecording, 400, "missing_recording"),
    (BadField, 400, "bad_field"),
    (TruncatedUpload, 400, "truncated"),
    (messages.BadAnswer, 400, "bad_answer"),
    (messages.BadLanguage, 400, "bad_field"),
    (messages.BadPhone, 400, "bad_field"),
    (queue.RequestNotFound, 404, "not_found"),
    (voice.VoiceUnavailable, 503, "no_voice"),
    # The tablet keeps the recording and sends it again: 5xx answers are retried.
    # StorageUnavailable is a kind of StorageFull: it must come first.
    (StorageUnavailable, 503, "storage_unavailable"),
    (StorageFull, 507, "storage_full"),
    (DatabaseFull, 507, "storage_full"),
    (DatabaseBusy, 503, "busy"),
    (messages.NotThisKiosks, 404, "not_found"),
)


@bp.after_request
def security_headers(response):
    """Keep API answers out of caches and a first-use token URL out of Referer headers."""
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    # The app-wide policy (app.security) sets the CSP; this blueprint adds nothing to it.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


@bp.get("/kiosk")
def page():
    """Show the one-button voice kiosk."""
    return _render("audio")


@bp.get("/kiosk/video")
def video_page():
    """Show the one-button video kiosk."""
    return _render("video")


@bp.get("/api/v1/kiosk")
def whoami():
    """Tell a kiosk which centre, region and language its token stands for."""
    return jsonify(devices.authenticate(get_db(), _bearer()).to_dict() | {"ok": True})


@bp.post("/api/v1/voicemail")
def upload():
    """Accept a recording, keep it safe, queue its transcription and answer 202."""
    config = current_app.config
    db = get_db()
    kiosk = devices.authenticate(db, _bearer())
    limits = {"audio": config["KIOSK_MAX_AUDIO_BYTES"], "video": config["KIOSK_MAX_VIDEO_BYTES"]}
    # Our own ceiling, whatever the app-wide MAX_CONTENT_LENGTH says; parts are checked
    # against their own limits while streaming.
    request.max_content_length = max(limits.values()) + 64 * 1024
    form = read_upload(
        request.stream,
        request.headers.get("Content-Type"),
        limits,
        Path(config["DATA_DIR"]) / "incoming",
        content_length=request.content_length,
    )
    try:
        messages.check_details(
            form.fields.get("language"),
            form.fields.get("phone"),
            languages=config["SPEECH_ENGINES"],
        )
        # A retry of a recording we already hold is answered without decoding it again.
        req = messages.sent_before(db, kiosk, form.fields.get("client_id"))
        created = req is None
        if created:
            recording = messages.inspect_recording(
                form.path, form.kind, max_seconds=config["MAX_AUDIO_SECONDS"]
            )
            req, created = messages.accept(
                db,
                kiosk,
                form.path,
                kind=form.kind,
                recording=recording,
                client_id=form.fields.get("client_id"),
                language=form.fields.get("language"),
                phone=form.fields.get("phone"),
            )
    finally:
        form.discard()
    devices.seen(db, kiosk)
    body = {
        "id": req["id"],
        "state": messages.state_of(req),
        "created": created,
        "status_url": url_for("kiosk.status", request_id=req["id"]),
    }
    return jsonify(body), 202 if created else 200


@bp.get("/api/v1/voicemail/<int:request_id>")
def status(request_id):
    """Report a kiosk request's state, with its readback once it is transcribed."""
    db = get_db()
    kiosk = devices.authenticate(db, _bearer())
    return jsonify(_status(messages.request_for(db, kiosk, request_id)))


@bp.post("/api/v1/voicemail/<int:request_id>/confirm")
def confirm(request_id):
    """Record the person's answer to the readback: "yes" or "again"."""
    db = get_db()
    kiosk = devices.authenticate(db, _bearer())
    reply = (request.get_json(silent=True) or {}).get("answer") or request.form.get("answer")
    return jsonify(_status(messages.answer(db, kiosk, request_id, reply)))


@bp.post("/api/v1/voicemail/<int:request_id>/phone")
def phone(request_id):
    """Store the call-back number typed on the keypad; {"phone": null} means none."""
    db = get_db()
    kiosk = devices.authenticate(db, _bearer())
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "phone" not in body:
        raise messages.BadPhone('send {"phone": "digits"}, or {"phone": null} for no phone')
    req = messages.give_phone(
        db, kiosk, request_id, body["phone"], region=current_app.config["KIOSK_PHONE_REGION"]
    )
    return jsonify(_status(req))


@bp.get("/kiosk/speech/<language>/<section>/<key>.wav")
def prompt_speech(language, section, key):
    """Say one of the kiosk's fixed sentences aloud, for tablets with no voice of their own."""
    words = _wording(language)
    sentences = getattr(words, section) if section in ("speech", "problems") else {}
    text = sentences.get(key)
    if text is None or "{" in text:
        abort(404)  # sentences with blanks are said per request, below
    return _speech(words, text, max_age=3600)


@bp.get("/api/v1/voicemail/<int:request_id>/speech/<what>.wav")
def request_speech(request_id, what):
    """Say a request's readback or its thank-you with the request number aloud."""
    db = get_db()
    kiosk = devices.authenticate(db, _bearer())
    req = messages.request_for(db, kiosk, request_id)
    words = _wording(req["language"] or current_app.config["DEFAULT_LANGUAGE"])
    if what == "readback" and messages.state_of(req) != "transcribing":
        text = f"{_status(req)['readback']['speech']} {words.speech['readback_suffix']}"
    elif what in ("done", "sent_without_readback", "done_no_phone"):
        text = words.speech[what].format(number=voice.spell_number(request_id))
    elif what == "done_phone" and req["phone"]:
        text = words.speech[what].format(
            number=voice.spell_number(request_id), phone=voice.spell_number(req["phone"])
        )
    else:
        abort(404)
    return _speech(words, text, max_age=0)


def _speech(words, text, *, max_age):
    """Answer with a WAV of text in the wording's voice."""
    path = voice.render(
        text,
        voice=words.voice["espeak"],
        rate=words.voice["rate"],
        cache_dir=Path(current_app.config["DATA_DIR"]) / "kiosk-speech",
    )
    # Sent from memory: a short clip, and no open file is left behind when a tablet drops
    # the connection mid-reply (the development server does not close it then).
    return send_file(
        io.BytesIO(path.read_bytes()),
        mimetype="audio/wav",
        max_age=max_age,
        etag=path.stem,  # the cache file is named after a hash of its text and voice
        download_name=path.name,
    )


def api_error(error):
    """Answer a named error as JSON with its status and a clear message."""
    for kind, code, name in API_ERRORS:
        if isinstance(error, kind):
            message = getattr(error, "description", None) or str(error)
            response = jsonify(error=name, message=str(message))
            if code == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="carecall-kiosk"'
            if code in (503, 507):
                response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response, code
    raise error  # unreachable: registered only for the kinds above


def unexpected_error(error):
    """Answer anything else as JSON too: storage and lock errors by name, the rest as 500."""
    if isinstance(error, HTTPException):
        if not request.path.startswith("/api/"):
            return error
        return jsonify(error=error.name.lower().replace(" ", "_"), message=error.description), (
            error.code
        )
    if named := _storage_error(error):
        return api_error(named)
    # Still a 5xx the tablet retries; the id ties its log line to what the page reports.
    request_id = secrets.token_hex(6)
    log.exception("kiosk request %s failed", request_id)
    response = jsonify(
        error="internal",
        message="Something went wrong on the server; try again in a moment.",
        request_id=request_id,
    )
    return response, 500


def _storage_error(error):
    """Return the named storage or lock error an OS or SQLite error stands for, or None."""
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
        return StorageFull(error.errno, "There is no room left to save recordings.")
    if isinstance(error, OSError) and error.errno in UNWRITABLE_ERRNOS:
        return StorageUnavailable(error.errno, "The data directory cannot be written.")
    if is_full(error):
        return DatabaseFull("There is no room left on the database's disk.")
    if is_busy(error):
        return DatabaseBusy("The database is busy; try again in a moment.")
    if is_unwritable(error):
        return StorageUnavailable(0, "The database cannot be written (CARECALL_DATABASE).")
    return None


for _kind, _code, _name in API_ERRORS:
    bp.register_error_handler(_kind, api_error)
bp.register_error_handler(Exception, unexpected_error)


def _status(req):
    """Build the page's view of a request in the request's language."""
    config = current_app.config
    language = req["language"] or config["DEFAULT_LANGUAGE"]
    return messages.status(
        req,
        _wording(language),
        _categories(language),
        emergency_number=config["EMERGENCY_NUMBER"],
        review_confidence=config["REVIEW_CONFIDENCE"],
    )


def _categories(language):
    """Return a language's categories (labels, readback sentences), else the default's."""
    try:
        return pipeline.categories_for(language)
    except UnknownLanguage:
        return pipeline.categories_for(current_app.config["DEFAULT_LANGUAGE"])


def _wording(language):
    """Return the kiosk wording for a language, or the default language's."""
    try:
        return wording.load(language)
    except wording.UnknownKioskLanguage:
        return wording.load(_page_language(None))


def _page_language(asked):
    """Choose the page's language: the one asked for if we have it, else the configured one."""
    have = wording.available()
    config = current_app.config
    for language in (asked, config["KIOSK_LANGUAGE"], config["DEFAULT_LANGUAGE"], "en"):
        if language in have:
            return language
    return have[0]


def _render(mode):
    """Render the kiosk page in a mode: "audio" or "video"."""
    config = current_app.config
    words = wording.load(_page_language(request.args.get("lang")))
    settings = {
        "mode": mode,
        "language": words.language,
        "languages": wording.available(),
        "resetSeconds": config["KIOSK_RESET_SECONDS"],
        "readbackSeconds": config["KIOSK_READBACK_SECONDS"],
        "silenceSeconds": config["KIOSK_SILENCE_SECONDS"],
        "quietSeconds": config["KIOSK_QUIET_SECONDS"],
        "maxSeconds": min(config["KIOSK_MAX_RECORD_SECONDS"], config["MAX_AUDIO_SECONDS"]),
        "silenceLevel": config["KIOSK_SILENCE_LEVEL"],
        "retryMaxSeconds": config["KIOSK_RETRY_MAX_SECONDS"],
        "readbackWaitSeconds": config["KIOSK_READBACK_WAIT_SECONDS"],
        "uploadUrl": url_for("kiosk.upload"),
        "kioskUrl": url_for("kiosk.whoami"),
        "promptSpeechUrl": url_for(
            "kiosk.prompt_speech", language=words.language, section="SECTION", key="KEY"
        ),
        "words": words.for_page(),
    }
    return render_template("kiosk/kiosk.html", words=words, mode=mode, settings=settings)


def _bearer():
    """Return the bearer token of this request, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
