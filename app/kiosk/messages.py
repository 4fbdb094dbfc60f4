"""Kiosk messages: check a recording by decoding it, queue it, read it back, settle it."""

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import av
import phonenumbers

from .. import jobs, people, pipeline, queue
from ..sentences import fill
from ..speech import EmptyAudio, NotAudio, load_audio

# PyAV names a container family by all its members; we store under one plain suffix.
SUFFIXES = {
    "matroska": ".webm",
    "webm": ".webm",
    "mov": ".mp4",
    "mp4": ".mp4",
    "ogg": ".ogg",
    "wav": ".wav",
    "mp3": ".mp3",
    "flac": ".flac",
    "aac": ".aac",
}
CHANNELS = {"audio": "kiosk", "video": "video"}
ANSWERS = ("yes", "again")
PHONE = re.compile(r"^\+?[0-9][0-9 ()-]{5,24}$")


class NotVideo(NotAudio):
    """A video upload has no picture track."""


class NotThisKiosks(LookupError):
    """The request was not sent by this kiosk."""


class BadLanguage(ValueError):
    """The upload names a language CareCall cannot transcribe."""


class BadPhone(ValueError):
    """The upload's phone number does not look like one."""


class BadAnswer(ValueError):
    """A confirmation answer is neither "yes" nor "again"."""


@dataclass(frozen=True)
class Recording:
    """What decoding found in an upload."""

    suffix: str
    duration_s: float


def inspect_recording(path, kind, *, max_seconds):
    """Decode an uploaded file to prove it holds speech; return its suffix and duration."""
    if Path(path).stat().st_size == 0:
        raise EmptyAudio("The recording is empty (0 bytes).")
    # load_audio raises NotAudio, CorruptAudio, EmptyAudio, SilentAudio or AudioTooLong.
    audio = load_audio(path, max_seconds=max_seconds)
    with av.open(str(path), metadata_errors="ignore") as container:
        family = container.format.name.split(",")
        has_picture = bool(container.streams.video)
    if kind == "video" and not has_picture:
        raise NotVideo("This upload has no picture: send it as 'audio', or record a video.")
    suffix = next((SUFFIXES[name] for name in family if name in SUFFIXES), ".bin")
    return Recording(suffix=suffix, duration_s=audio.duration_s)


def check_details(language, phone, *, languages):
    """Refuse a language nobody can transcribe, or a phone number that is not one."""
    if language and language not in languages:
        raise BadLanguage(f"language must be one of {', '.join(sorted(languages))}")
    if phone and not PHONE.match(phone):
        raise BadPhone("phone must be digits, spaces, dashes or brackets, with an optional +")


def source_key(kiosk, client_id):
    """Return the idempotency key of one recording made on one kiosk."""
    return f"{kiosk.source_prefix}{client_id or uuid.uuid4().hex}"


def sent_before(db, kiosk, client_id):
    """Return the request this kiosk already made from this recording, or None."""
    return queue.find_by_source(db, source_key(kiosk, client_id)) if client_id else None


def accept(db, kiosk, path, *, kind, recording, client_id=None, language=None, phone=None):
    """Queue a checked recording from a kiosk; return (request, created)."""
    key = source_key(kiosk, client_id)
    with db.atomic():
        # Looked up again under the write lock: a retry racing this upload may have just
        # saved the same recording, and must not be answered "created" or audited twice.
        if existing := queue.find_by_source(db, key):
            return existing, False
        request = _receive(db, kiosk, path, key, kind, recording, language, phone)
    # The worker is woken only now: before the commit it could not see the job.
    jobs.wake()
    return request, True


def _receive(db, kiosk, path, key, kind, recording, language, phone):
    """Queue the recording and note which kiosk sent it, in the caller's transaction."""
    request = pipeline.receive(
        db,
        str(path),
        channel=CHANNELS[kind],
        phone=phone or None,
        language=language or kiosk.language,
        region=kiosk.region,
        source_key=key,
        suffix=recording.suffix,
        actor=kiosk.actor,
    )
    queue.record_event(
        db,
        request["id"],
        kiosk.actor,
        "uploaded",
        {"kiosk_id": kiosk.id, "kind": kind, "duration_s": round(recording.duration_s, 2)},
    )
    return request


def request_for(db, kiosk, request_id):
    """Return a request this kiosk sent, or raise NotThisKiosks."""
    request = queue.get(db, request_id)
    if not (request["source_key"] or "").startswith(kiosk.source_prefix):
        raise NotThisKiosks(f"request {request_id} was not sent from this kiosk")
    return request


def answer(db, kiosk, request_id, reply):
    """Settle a readback: "yes" confirms the request, "again" withdraws it to re-record."""
    if reply not in ANSWERS:
        raise BadAnswer(f"answer must be one of {', '.join(ANSWERS)}")
    request_for(db, kiosk, request_id)
    if reply == "yes":
        return pipeline.confirm(db, request_id, actor=kiosk.actor)
    return pipeline.withdraw(db, request_id, actor=kiosk.actor, reason="said it again at the kiosk")


def give_phone(db, kiosk, request_id, digits, *, region):
    """Store the call-back number typed after the readback, or note that there is none.

    digits: what the keypad sent (a local number, or + and a country code); None when the
    person has no phone and a member of staff at the kiosk will help instead.
    """
    request = request_for(db, kiosk, request_id)
    if digits is None:
        detail = {"kiosk": kiosk.name}
        queue.record_event(db, request_id, kiosk.actor, "no_call_back_number", detail)
        return request
    phone = call_back_number(digits, region)
    with db.atomic():
        request = queue.update(
            db, request_id, {"phone": phone}, actor=kiosk.actor, action="call_back_number"
        )
        # A number a person served is known by ties the request to them, as caller ID does.
        if not request.get("person_id") and (person := people.find_person_by_phone(db, phone)):
            request = people.link_request(db, request_id, person["id"], actor=kiosk.actor)
    return request


def call_back_number(digits, region):
    """Return a keypad's number in E.164 form, or raise BadPhone."""
    text = digits.strip() if isinstance(digits, str) else ""
    if not PHONE.match(text):
        raise BadPhone("phone must be digits, with an optional + and country code")
    try:
        number = phonenumbers.parse(text, region)
        # The registry's own rule decides what a callable number is.
        return people.parse_phone(
            phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        )
    except (phonenumbers.NumberParseException, people.BadField) as exc:
        raise BadPhone(f"{text!r} is not a phone number with the right number of digits") from exc


def state_of(request):
    """Return where a request is for the page: transcribing, ready or failed."""
    return {"received": "transcribing", "transcribed": "ready"}.get(request["stage"], "failed")


def status(request, prompts, categories, *, emergency_number, review_confidence):
    """Return what the kiosk page needs to show and speak about a request.

    categories: the request language's Categories, for its label and readback sentence.
    """
    state = state_of(request)
    body = {
        "id": request["id"],
        "state": state,
        "status": request["status"],
        "confirmed": bool(request["confirmed_at"]),
        "channel": request["channel"],
        "phone": request["phone"],
    }
    if state == "transcribing":
        return body
    body |= {
        "transcript": request["transcript"],
        "category": request["category"],
        "category_label": categories.label(request["category"] or "other"),
        "urgency": request["urgency"],
        "emergency": bool(request["emergency"]),
        "readback": readback(
            request,
            prompts,
            categories,
            emergency_number=emergency_number,
            review_confidence=review_confidence,
        ),
    }
    return body


def readback(request, prompts, categories, *, emergency_number, review_confidence):
    """Compose what the page shows and says back: calm words, emergency advice first."""
    text = prompts.readback
    emergency = text["emergency"].format(number=emergency_number) if request["emergency"] else None
    if request["stage"] == "failed":
        return {
            "emergency": emergency,
            "heard": None,
            "about": None,
            "note": text["failed"],
            "speech": " ".join(filter(None, [emergency, text["failed"]])),
        }
    transcript = (request["transcript"] or "").strip()
    clear = transcript and (request["transcript_confidence"] or 0) >= review_confidence
    heard = transcript if clear else None
    note = None if clear else text["unclear"]
    category = request["category"] or "other"
    about = categories.label(category)  # shown under "This is about:"
    spoken = [
        emergency,
        fill(text["heard_speech"], transcript=heard) if heard else note,
        categories.readback(category),
        text["question"],
    ]
    return {
        "emergency": emergency,
        "heard": heard,
        "about": about,
        "note": note,
        "speech": " ".join(filter(None, spoken)),
    }
