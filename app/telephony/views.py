"""Twilio's voice webhooks: each turns a signed form post into one step of the call, as TwiML."""

import logging
import math
import re
from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, current_app, request, url_for
from werkzeug.exceptions import HTTPException

from .. import dispatch, pipeline, queue, recordings, visits
from ..classify import UnknownLanguage
from ..db import get_db
from ..flows import KEYS, available_languages, load_flow
from ..sentences import fill
from . import media, speak, store, words
from .signature import twilio_only

log = logging.getLogger(__name__)

bp = Blueprint("telephony", __name__, url_prefix="/twilio")

TERMINAL = store.ENDED
# Twilio's SIDs are two letters naming the kind and 32 hex digits: anything else is not Twilio's.
SID_PREFIXES = {"CallSid": "CA", "RecordingSid": "RE", "AccountSid": "AC"}
SID_DIGITS = re.compile(r"[0-9a-fA-F]{32}")
# Steps whose failure must reach Twilio as a 5xx: nothing may be acknowledged unstored.
MUST_FAIL_LOUDLY = ("telephony.recording_status",)


def twiml(response):
    """Return TwiML as a Flask response."""
    return Response(str(response), mimetype="text/xml")


def _config():
    return current_app.config


def _flow(language):
    """Return the flow for a language, falling back to the default language."""
    config = _config()
    if language not in available_languages(config["FLOWS_DIR"]):
        language = config["DEFAULT_LANGUAGE"]
    return load_flow(config["FLOWS_DIR"], language)


def _call_sid():
    """Return this webhook's CallSid; refuse (400) one without it or with a malformed SID."""
    call_sid = request.form.get("CallSid", "").strip()
    if not call_sid:
        abort(400, "CallSid is required")
    for field, prefix in SID_PREFIXES.items():
        value = call_sid if field == "CallSid" else request.form.get(field, "")
        # An empty RecordingSid or AccountSid means none was sent; a wrong one is refused.
        if value and not (value.startswith(prefix) and SID_DIGITS.fullmatch(value[2:])):
            abort(400, f"{field} is not a Twilio SID")
    return call_sid


def _seconds(value):
    """Return a duration Twilio sent, in seconds, or None when it is missing or not a number."""
    try:
        seconds = float(value or 0)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _duration(form):
    """Return a recording's RecordingDuration in seconds, or None."""
    return _seconds(form.get("RecordingDuration"))


def _call():
    """Return this webhook's call, starting it if Twilio's first webhook never reached us."""
    return _start_call()[0]


def _start_call():
    """Start (or find) this webhook's call; return it and whether the caller is known."""
    config = _config()
    return store.start_call(
        get_db(),
        _call_sid(),
        _caller(request.form.get("From")),
        default_language=config["DEFAULT_LANGUAGE"],
        languages=available_languages(config["FLOWS_DIR"]),
    )


# Caller ID as Twilio sends it: +15551234567, client:name, sip:..., anonymous, or digits.
CALLER_ID = re.compile(r"[+\w:.@-]{1,64}")


def _caller(value):
    """Return the caller ID if it looks like one, else None: a senior is never refused for it."""
    return value if value and CALLER_ID.fullmatch(value) else None


def _speaker(call):
    return speak.Speaker(_flow(call["language"]), call["pace"] or "normal")


def _categories(language):
    """Return a language's categories (labels, readback sentences), else the default's."""
    try:
        return pipeline.categories_for(language)
    except (UnknownLanguage, KeyError):
        return pipeline.categories_for(_config()["DEFAULT_LANGUAGE"])


def _coordinator(config, now=None):
    """Return the coordinator line if someone answers it now, else None."""
    number = config.get("COORDINATOR_NUMBER")
    if not number:
        return None
    start, end = config["COORDINATOR_HOURS"]
    now = now or datetime.now(ZoneInfo(config["COORDINATOR_TIMEZONE"]))
    if now.weekday() not in config["COORDINATOR_DAYS"]:
        return None
    return number if start <= now.hour < end else None


def _duty_coordinator(config):
    """Return who answers in an emergency: the duty line, or the coordinator within hours."""
    return config.get("DUTY_COORDINATOR_NUMBER") or _coordinator(config)


def _spoken_number(number):
    """Spell a phone number like 911 digit by digit."""
    return words.digits("".join(ch for ch in str(number) if ch.isdigit()))


def _danger(flow):
    """Return the advice to hang up and dial the emergency number if in danger or hurt."""
    return flow.prompt("in_danger", emergency_number=_spoken_number(_config()["EMERGENCY_NUMBER"]))


def _needs_danger_advice(flow, request_):
    """Tell whether a goodbye about this request must carry the danger advice.

    A misheard "I fell and my chest hurts" can read as an ordinary health request: so any
    health request, any transcript we are unsure of, and any message not understood (or not
    heard yet) ends with the advice, not only the ones recognised as emergencies.
    """
    if request_ is None or request_["stage"] != "transcribed" or request_["needs_review"]:
        return True
    if request_["category"] in flow.danger_advice_categories:
        return True
    confidence = request_["transcript_confidence"]
    return confidence is None or confidence < _config()["REVIEW_CONFIDENCE"]


def _farewell(call, texts, last, request_=None):
    """Say the last words and hang up, with the danger advice before the goodbye when needed."""
    speaker = _speaker(call)
    flow = speaker.flow
    danger = [_danger(flow)] if _needs_danger_advice(flow, request_) else []
    return twiml(speak.goodbye(speaker, [*texts, *danger, flow.prompt(last)]))


@bp.post("/voice")
@twilio_only
def voice():
    """Answer a new call: greet the caller, in their remembered language, with the main menu.

    A volunteer calling from their own phone with a job taken hears the check-in menu first.
    """
    call, known = _start_call()
    if call["menu"] == "volunteer":
        return _ask(call, "volunteer")  # Twilio's retry of this webhook
    if call["menu"] == "main" and call["outcome"] is None and (found := _held_visit(call)):
        # An outcome: a volunteer who hangs up here is no missed call to call back.
        call = store.update_call(
            get_db(), call["call_sid"], menu="volunteer", pace="slow", outcome="volunteer"
        )
        flow = _flow(call["language"])
        return _ask(
            call, "volunteer", before=[flow.prompt("volunteer_hello", volunteer=found[0]["name"])]
        )
    return _greet(call, known)


def _greet(call, known):
    """Greet a caller with the danger advice and the main menu, offering other languages."""
    config = _config()
    speaker = _speaker(call)
    flow = speaker.flow
    texts = [flow.prompt("welcome_back" if known else "greeting"), _danger(flow)]
    response = speak.menu(
        speaker,
        [*texts, *_menu_texts(call, "main")],
        url_for(".menu", name="main"),
        timeout=flow.timing.gather_seconds,
    )
    # Other languages are offered each in its own voice, before the menu is repeated.
    gather = response.verbs[0]
    for language in available_languages(config["FLOWS_DIR"]):
        other = load_flow(config["FLOWS_DIR"], language)
        if language != flow.language and other.select_prompt:
            gather.append(speak.Speaker(other, call["pace"]).say(other.select_prompt))
    return twiml(response)


def _menu_texts(call, name):
    """Return what a menu says, including the request or status it is about."""
    flow = _flow(call["language"])
    menu = flow.menu(name)
    db = get_db()
    if name == "readback":
        return [*_readback_texts(flow, queue.get(db, call["request_id"])), flow.prompt(menu.prompt)]
    if name == "after_status":
        return [*_status_texts(flow, call), flow.prompt(menu.prompt)]
    if name == "volunteer":
        return [*_visit_texts(flow, call), flow.prompt(menu.prompt)]
    if name in ("emergency", "emergency_message"):
        # Said once per asking: a caller who wants it again presses star.
        return [_emergency_text(flow), flow.prompt(menu.prompt)]
    return [flow.prompt(menu.prompt)]


def _ask(call, name, before=()):
    """Ask a menu's question, after any words that lead up to it."""
    if call["menu"] != name:
        # Each write is a moment of the database lock: skip the ones that change nothing.
        call = store.update_call(get_db(), call["call_sid"], menu=name)
    speaker = _speaker(call)
    return twiml(
        speak.menu(
            speaker,
            [*before, *_menu_texts(call, name)],
            url_for(".menu", name=name),
            timeout=speaker.flow.timing.gather_seconds,
        )
    )


@bp.post("/menu/<name>")
@twilio_only
def menu(name):
    """Act on the key a caller pressed in a menu, or on their silence."""
    db = get_db()
    call = _call()
    flow = _flow(call["language"])
    current = flow.menu(name)
    if call["menu"] != name:
        # A replayed or late press of a menu the call has left: it changes nothing.
        return _resume(call)
    digit = request.form.get("Digits", "")[:1]
    if not digit:
        silences = call["silences"] + 1
        call = store.update_call(db, call["call_sid"], silences=silences, pace="slow")
        store.remember(db, call["phone"], pace="slow")
        if silences >= flow.timing.silence_retries:
            return _do(call, current.on_silence)
        return _ask(call, name, before=[flow.prompt("no_key_heard")])
    if call["silences"]:
        call = store.update_call(db, call["call_sid"], silences=0)
    if name == "main" and (switched := _switch_language(call, digit)) is not None:
        return switched
    meaning = KEYS.get(digit)
    if meaning == "repeat":
        if call["pace"] != "slow":
            call = store.update_call(db, call["call_sid"], pace="slow")
            store.remember(db, call["phone"], pace="slow")
        return _ask(call, name)
    if meaning == "person":
        return _do(call, "person")
    action = current.action_for(meaning) if meaning else current.keys.get(digit)
    if action is None:
        return _ask(call, name, before=[flow.prompt("unknown_key")])
    return _do(call, action)


def _resume(call):
    """Answer a stale webhook with the step the call is at now, changing nothing."""
    menus = _flow(call["language"]).menus
    if call["menu"] in menus:
        return _ask(call, call["menu"])
    if call["menu"] == "record":
        return _record(call)
    if call["menu"] == "voicemail":
        return _voicemail(call)
    if call["menu"] == "waiting":
        return _hold(call, [_flow(call["language"]).prompt("holding")])
    if call["menu"] == "person":
        return _person(call)  # Twilio's retry of the press that dialled: dial again
    if call["outcome"] == "emergency":
        return _emergency_goodbye(call)  # the call ended on the emergency advice: say it again
    if call["outcome"] == "request" and call["request_id"]:
        # Twilio's retry of the confirming press: the caller hears their number again.
        return _confirmed(call, queue.get(get_db(), call["request_id"]))
    return _goodbye(call)


def _hold(call, texts, polls=0):
    """Keep the caller on the line while their message is understood."""
    speaker = _speaker(call)
    return twiml(
        speak.hold(
            speaker,
            texts,
            url_for(".wait", n=polls),
            pause_seconds=speaker.flow.timing.poll_seconds,
        )
    )


def _switch_language(call, digit):
    """Switch the call to the language whose select key was pressed; None if it was not one."""
    config = _config()
    for language in available_languages(config["FLOWS_DIR"]):
        other = load_flow(config["FLOWS_DIR"], language)
        if other.select_key == digit and language != call["language"]:
            db = get_db()
            call = store.update_call(db, call["call_sid"], language=language)
            store.remember(db, call["phone"], language=language)
            return _ask(call, "main", before=[other.prompt("language_switched")])
    return None


def _do(call, action):
    """Carry out what a key (or silence) led to."""
    return ACTIONS[action](call)


def _record(call, before=()):
    """Ask for the request in the caller's own words, after the tone."""
    return _listen(call, "request", "record", before)


def _voicemail(call, before=()):
    """Ask for a message for a coordinator to call back about."""
    return _listen(call, "voicemail", "voicemail", before)


def _listen(call, purpose, prompt, before):
    """Play a prompt, then record the caller with a generous silence allowance."""
    if call["menu"] != prompt:
        call = store.update_call(get_db(), call["call_sid"], menu=prompt)
    speaker = _speaker(call)
    return twiml(
        speak.record(
            speaker,
            [*before, speaker.flow.prompt(prompt)],
            url_for(".recorded", purpose=purpose),
            status_callback=url_for(".recording_status", purpose=purpose),
            silence_seconds=speaker.flow.timing.record_silence_seconds,
            max_seconds=_config()["RECORD_MAX_SECONDS"],
            after=url_for(".no_message", purpose=purpose),
        )
    )


def _confirm(call):
    db = get_db()
    if not call["request_id"]:
        return _resume(call)
    request_ = pipeline.confirm(db, call["request_id"], actor="caller")
    if request_["status"] == "cancelled":
        return _resume(call)  # withdrawn already: there is nothing left to confirm
    call = store.update_call(db, call["call_sid"], outcome="request", menu="done")
    return _confirmed(call, request_)


def _confirmed(call, request_):
    """Give the caller their request number twice, and say goodbye."""
    flow = _flow(call["language"])
    number = words.digits(request_["id"])
    return _farewell(call, [flow.prompt("confirmed", number=number)], "callback_promise", request_)


def _rerecord(call):
    db = get_db()
    if call["request_id"] and not pipeline.transition(
        db, call["request_id"], "withdraw", actor="caller", detail={"reason": "said it again"}
    ):
        return _resume(call)  # confirmed or withdrawn already: a replay changes nothing
    call = store.update_call(
        db, call["call_sid"], request_id=None, recording_sid=None, outcome=None
    )
    return _record(call)


def _status(call):
    db = get_db()
    if call["outcome"] is None:
        call = store.update_call(db, call["call_sid"], outcome="status")
    return _ask(call, "after_status")


def _status_texts(flow, call):
    """Read the caller's newest real request in plain words, saying how many are open."""
    requests = store.recent_requests(get_db(), call["phone"]) if call["phone"] else []
    if not requests:
        return [flow.prompt("no_request")]
    open_ = [r for r in requests if r["status"] != "done"]  # cancelled ones are not here
    newest = (open_ or requests)[0]
    label = _categories(flow.language).label(newest["category"] or "other")
    zone = ZoneInfo(_config()["COORDINATOR_TIMEZONE"])
    sentence = words.status_sentence(newest, flow, label, zone=zone)
    if len(open_) > 1:
        return [fill(flow.status["several"], count=len(open_)), sentence]
    return [sentence]


def _goodbye(call):
    speaker = _speaker(call)
    return twiml(speak.goodbye(speaker, [speaker.flow.prompt("goodbye")]))


def _person(call):
    config = _config()
    speaker = _speaker(call)
    emergency = call["menu"] == "emergency" or call["outcome"] == "emergency"
    number = _duty_coordinator(config) if emergency else _coordinator(config)
    if number is None:
        return _voicemail(call, before=[speaker.flow.prompt("person_unavailable")])
    if call["menu"] != "person":
        store.update_call(get_db(), call["call_sid"], menu="person")
    return twiml(
        speak.connect(speaker, [speaker.flow.prompt("connecting")], number, url_for(".dialed"))
    )


def _held_visit(call):
    """Return (volunteer, job) when the caller is a volunteer with a job taken, else None."""
    volunteer = dispatch._volunteer_by_phone(get_db(), call["phone"]) if call["phone"] else None
    held = visits.held_visits(get_db(), volunteer["id"]) if volunteer else []
    return (volunteer, held[0]) if held else None


def _visit_texts(flow, call):
    """Say which visit 1 checks in to, or 2 checks out of."""
    found = _held_visit(call)
    if found is None:
        return []
    volunteer, assignment = found
    words = dispatch._words(get_db(), queue.get(get_db(), assignment["request_id"]), flow.language)
    key = "volunteer_check_in" if assignment["state"] == "accepted" else "volunteer_check_out"
    return [flow.prompt(key, **words)]


def _visit_step(call, act):
    """Check the calling volunteer in or out of their job, and say so."""
    db = get_db()
    found = _held_visit(call)
    if found is None:
        return _as_any_caller(call)  # the job ended meanwhile: on as any caller
    volunteer, assignment = found
    flow = _flow(call["language"])
    zone = ZoneInfo(_config()["COORDINATOR_TIMEZONE"])
    try:
        visit = act(
            current_app, db, assignment["id"], by="call", actor=f"volunteer:{volunteer['id']}"
        )
    except visits.AlreadyCheckedIn as error:
        at = visits.clock(error.assignment["checked_in_at"], zone)
        return _ask(call, "volunteer", before=[flow.prompt("volunteer_already_in", time=at)])
    except visits.NotCheckedIn:
        return _ask(call, "volunteer", before=[flow.prompt("volunteer_not_in")])
    except visits.TooEarly:
        call = store.update_call(db, call["call_sid"], menu="done")
        return twiml(speak.goodbye(_speaker(call), [flow.prompt("volunteer_too_early")]))
    except visits.TooLong:
        call = store.update_call(db, call["call_sid"], menu="done")
        return twiml(speak.goodbye(_speaker(call), [flow.prompt("volunteer_too_long")]))
    except visits.VisitError:
        call = store.update_call(db, call["call_sid"], menu="done")
        return twiml(speak.goodbye(_speaker(call), [flow.prompt("volunteer_closed")]))
    call = store.update_call(db, call["call_sid"], menu="done")
    if visit.state == "checked_in":
        text = flow.prompt("volunteer_checked_in", time=visits.clock(visit.checked_in_at, zone))
    else:
        minutes = visit.minutes or 0
        duration = flow.prompt("volunteer_duration", hours=minutes // 60, minutes=minutes % 60)
        at = visits.clock(visit.checked_out_at, zone)
        text = flow.prompt("volunteer_checked_out", time=at, duration=duration)
    return twiml(speak.goodbye(_speaker(call), [text]))


def _as_any_caller(call):
    """Go on as any caller: the greeting, the danger advice and the main menu."""
    call = store.update_call(get_db(), call["call_sid"], menu="main", outcome=None, silences=0)
    return _greet(call, known=False)


ACTIONS = {
    "check_in": lambda call: _visit_step(call, visits.check_in),
    "check_out": lambda call: _visit_step(call, visits.check_out),
    "caller": lambda call: _as_any_caller(call),
    "record": _record,
    "status": _status,
    "confirm": _confirm,
    "rerecord": _rerecord,
    "goodbye": _goodbye,
    "voicemail": _voicemail,
    "main": lambda call: _ask(call, "main"),
    "person": _person,
    "emergency": lambda call: _emergency_goodbye(call),
}


@bp.post("/no-message/<purpose>")
@twilio_only
def no_message(purpose):
    """Ask again when a recording ended without a message; after three, take a callback."""
    return _no_message(purpose)


def _no_message(purpose):
    db = get_db()
    call = _call()
    if call["menu"] == "done" or (purpose == "request" and call["menu"] != "record"):
        return _resume(call)  # a replay after the call moved on changes nothing
    flow = _flow(call["language"])
    silences = call["silences"] + 1
    call = store.update_call(db, call["call_sid"], silences=silences, pace="slow")
    if purpose == "voicemail" or silences >= flow.timing.silence_retries:
        if purpose == "voicemail":
            _callback(db, call, "missed call: no message left")
            store.update_call(db, call["call_sid"], outcome="voicemail", menu="done")
            return _farewell(call, [flow.prompt("voicemail_silent")], "bye")
        return _voicemail(call)
    return _record(call, before=[flow.prompt("no_message_heard")])


@bp.post("/recorded/<purpose>")
@twilio_only
def recorded(purpose):
    """Keep the caller's message safe, then hold while it is transcribed."""
    form = request.form
    duration_s = _duration(form)
    if not form.get("RecordingSid") or form.get("RecordingDuration", "1") == "0":
        return _no_message(purpose)
    db = get_db()
    call = _call()
    if (purpose == "request" and call["menu"] != "record") or _moved_past(db, call, form):
        # A replay of a message the call has moved past: it changes nothing.
        return _resume(call)
    try:
        stored = media.accept(
            db,
            recording_sid=form["RecordingSid"],
            call_sid=call["call_sid"],
            url=form.get("RecordingUrl", ""),
            purpose=purpose,
            phone=call["phone"],
            language=call["language"],
            duration_s=duration_s,
        )
    except recordings.StorageFull:
        # Twilio keeps the audio and a job fetches it once there is room: no message is lost.
        log.error("no room for recording %s; its download is queued", form["RecordingSid"])
        store.update_call(db, call["call_sid"], recording_sid=form["RecordingSid"])
        return _sorry(call, purpose)
    except media.DatabaseUnavailable:
        # Nothing can be written now, not even where the call is: Twilio keeps the audio and
        # the nightly reconcile fetches it; the caller hears the apology and the safe route.
        return _apology(call, purpose)
    row = media.recording(db, form["RecordingSid"])
    call = store.update_call(
        db,
        call["call_sid"],
        silences=0,
        recording_sid=form["RecordingSid"],
        request_id=stored["id"] if stored else None,
        outcome="voicemail" if purpose == "voicemail" else "request",
        menu="done" if purpose == "voicemail" or row["state"] == "refused" else "waiting",
    )
    speaker = _speaker(call)
    if row["state"] == "refused":
        return _sorry_goodbye(call)  # nobody can fetch this message: a person calls back
    if purpose == "voicemail":
        # Not understood yet: nobody knows whether the message is about someone hurt.
        return _farewell(call, [speaker.flow.prompt("voicemail_thanks")], "bye")
    return _hold(call, [speaker.flow.prompt("holding")])


def _moved_past(db, call, form):
    """Tell whether a recording belongs to another call or to a step this call has left.

    A recording already stored whose request can no longer be confirmed (the caller said it
    again, or confirmed it) is a replay: only a new recording moves the call on.
    """
    row = media.recording(db, form["RecordingSid"])
    if row is None:
        return False  # new: this is the recording the call is waiting for
    if row["call_sid"] != call["call_sid"]:
        return True
    if row["purpose"] != "request" or not row["request_id"]:
        return False
    return not pipeline.allows(queue.get(db, row["request_id"]), "confirm")


def _sorry(call, purpose):
    """Apologise: ask for a voicemail, or after a voicemail say a person will call back."""
    if purpose == "voicemail":
        return _sorry_goodbye(call)
    flow = _flow(call["language"])
    # What they said may be lost, and it may have been an emergency.
    return _voicemail(call, before=[flow.prompt("sorry"), _danger(flow)])


def _sorry_goodbye(call):
    """Say a person will call back, with the danger advice, since we cannot hear the message."""
    speaker = _speaker(call)
    flow = speaker.flow
    return twiml(speak.goodbye(speaker, [flow.prompt("sorry"), _danger(flow)]))


@bp.post("/wait")
@twilio_only
def wait():
    """Read the message back once it is transcribed; until then, hold the line briefly."""
    db = get_db()
    call = _call()
    speaker = _speaker(call)
    flow = speaker.flow
    polls = request.args.get("n", 0, type=int)
    if call["menu"] != "waiting":
        return _resume(call)  # read back or finished already: a late poll changes nothing
    request_ = _request_of(db, call)
    if request_ is not None and request_["stage"] == "failed":
        return _not_understood(call)
    if request_ is not None and request_["stage"] != "received":
        return _readback(call, request_)
    if polls >= flow.timing.poll_limit:
        if request_ is not None:
            pipeline.transition(
                db,
                request_["id"],
                "unconfirmed",
                actor="system",
                detail={"reason": "readback timed out"},
            )
        store.update_call(db, call["call_sid"], menu="done")
        return _farewell(call, [flow.prompt("unconfirmed_wait")], "goodbye", request_)
    # A few words every few polls, so the caller knows the line is still open.
    texts = [flow.prompt("still_holding")] if polls and polls % 5 == 0 else []
    return _hold(call, texts, polls + 1)


def _not_understood(call):
    """Say sorry that the message could not be made out; it is kept and a person calls back."""
    call = store.update_call(get_db(), call["call_sid"], menu="done")
    return _farewell(call, [_flow(call["language"]).prompt("not_understood")], "bye")


def _request_of(db, call):
    """Return the request this call's recording became, once it is stored."""
    if call["request_id"]:
        return queue.get(db, call["request_id"])
    if call["recording_sid"]:
        row = media.recording(db, call["recording_sid"])
        if row and row["request_id"]:
            store.update_call(db, call["call_sid"], request_id=row["request_id"])
            return queue.get(db, row["request_id"])
    return None


def _readback_texts(flow, request_):
    """Say back what we understood: the words only when we are confident of them."""
    about = _categories(flow.language).readback(request_["category"] or "other")
    if request_["needs_review"] or not (request_["transcript"] or "").strip():
        return [flow.prompt("listen_later"), about]
    return [flow.prompt("heard", transcript=request_["transcript"].strip()), about]


def _readback(call, request_):
    db = get_db()
    call = store.update_call(db, call["call_sid"], request_id=request_["id"])
    if request_["emergency"]:
        return _emergency(call, request_)
    return _ask(call, "readback")


def _emergency(call, request_):
    """Tell the caller to dial the emergency number now; the pipeline already alerted."""
    db = get_db()
    # No readback in an emergency: the request stands as it is, first in the queue.
    pipeline.transition(db, request_["id"], "confirm", actor="system")
    call = store.update_call(db, call["call_sid"], outcome="emergency")
    if _duty_coordinator(_config()):
        return _ask(call, "emergency")
    return _ask(call, "emergency_message")


def _emergency_text(flow):
    """Return the emergency advice: hang up and dial now; the message is marked urgent."""
    return flow.prompt("emergency", emergency_number=_spoken_number(_config()["EMERGENCY_NUMBER"]))


def _emergency_goodbye(call):
    """End an emergency call with the danger advice once, so the caller can dial at once."""
    if call["menu"] != "done":
        # The call is over: a late or replayed webhook hears this advice again, nothing else.
        call = store.update_call(get_db(), call["call_sid"], menu="done")
    speaker = _speaker(call)
    return twiml(speak.goodbye(speaker, [_danger(speaker.flow), speaker.flow.prompt("bye")]))


@bp.post("/dialed")
@twilio_only
def dialed():
    """After a call to a coordinator: if nobody answered, take a voicemail instead."""
    call = _call()
    if call["menu"] != "person":
        return _resume(call)  # this dial was answered for already: a replay changes nothing
    if request.form.get("DialCallStatus") == "completed":
        store.update_call(
            get_db(), call["call_sid"], outcome=call["outcome"] or "person", menu="done"
        )
        return _goodbye(call)
    flow = _flow(call["language"])
    if call["outcome"] == "emergency":
        # Nobody on duty answered: the advice once more, then a message or goodbye.
        return _ask(call, "emergency_message", before=[flow.prompt("person_unavailable")])
    return _voicemail(call, before=[flow.prompt("person_unavailable")])


@bp.post("/recording-status/<purpose>")
@twilio_only
def recording_status(purpose):
    """Store a finished recording Twilio tells us about, before acknowledging it."""
    form = request.form
    call_sid = _call_sid()
    if form.get("RecordingStatus") != "completed" or not form.get("RecordingSid"):
        return "", 204
    db = get_db()
    call = store.get_call(db, call_sid) or {}
    try:
        media.accept(
            db,
            recording_sid=form["RecordingSid"],
            call_sid=call_sid,
            url=form.get("RecordingUrl", ""),
            purpose=purpose,
            phone=call.get("phone"),
            language=call.get("language") or _config()["DEFAULT_LANGUAGE"],
            duration_s=_duration(form),
        )
    except recordings.StorageFull:
        # Noted as pending with a download job: acknowledged, and fetched once there is room.
        log.error("no room for recording %s; its download is queued", form["RecordingSid"])
    except media.DatabaseUnavailable:
        # Twilio does not retry a status callback, so a 5xx would only log an error there.
        # Accepted, not stored: Twilio keeps the audio and the nightly reconcile fetches it.
        return "", 202
    return "", 204


@bp.post("/call-status")
@twilio_only
def call_status():
    """At the end of a call, queue a 'call back' item if the caller left with nothing done."""
    form = request.form
    call_sid = _call_sid()
    status = form.get("CallStatus", "")
    db = get_db()
    # The call's end and what it leads to commit together, so a replay can tell it was handled.
    with db.atomic():
        call = store.get_call(db, call_sid)
        if call is not None and call["call_status"] in TERMINAL:
            return "", 204  # a replay: the call's end was handled once already
        if call is not None:
            call = store.update_call(
                db, call_sid, call_status=status, duration_s=_seconds(form.get("CallDuration"))
            )
        if status not in TERMINAL:
            return "", 204
        if call is None:
            call = {
                "call_sid": call_sid,
                "phone": _caller(form.get("From")),
                "language": _config()["DEFAULT_LANGUAGE"],
                "outcome": None,
                "request_id": None,
                "recording_sid": None,
            }
        # Every message of the call that nobody confirmed, read back or not, is read by a person.
        media.call_ended(db, call_sid)
        if (
            not call["request_id"]
            and call["outcome"] is None
            and not call["recording_sid"]
            # A recording Twilio told us about is a message, even if the call never heard so.
            and not media.recordings_of_call(db, call_sid)
        ):
            _callback(db, call, "missed call — call back")
    return "", 204


def _callback(db, call, reason):
    """Queue a 'call back' item for a caller who left without a request; once per call."""
    return pipeline.call_back(
        db,
        channel="phone",
        phone=call["phone"],
        language=call["language"],
        source_key=f"callback:{call['call_sid']}",
        reason=reason,
    )


@bp.errorhandler(Exception)
def apologise(exc):
    """Answer a broken step with a spoken apology and a voicemail, never dead air."""
    if isinstance(exc, HTTPException):
        return exc
    if request.endpoint in MUST_FAIL_LOUDLY:
        raise exc
    log.exception("telephony step %s failed", request.endpoint)
    return _apology()


def _apology(call=None, purpose="request"):
    """Say sorry and take a voicemail (after a voicemail: a call back), writing nothing."""
    if purpose == "voicemail" and call is not None:
        return _sorry_goodbye(call)
    flow = _flow(call["language"] if call else _config()["DEFAULT_LANGUAGE"])
    speaker = speak.Speaker(flow, "slow")
    response = speak.record(
        speaker,
        # We may have lost what they said: it may have been an emergency.
        [flow.prompt("sorry"), _danger(flow), flow.prompt("voicemail")],
        url_for(".recorded", purpose="voicemail"),
        status_callback=url_for(".recording_status", purpose="voicemail"),
        silence_seconds=flow.timing.record_silence_seconds,
        max_seconds=_config()["RECORD_MAX_SECONDS"],
        after=url_for(".no_message", purpose="voicemail"),
    )
    return twiml(response)
