"""Twilio's webhooks for offers: volunteers' SMS replies, outbox status callbacks, and the
calls the outbox places (a job offered by keypad, a senior told who will come and when, and
the senior asked after the visit whether the volunteer came and how it was).

Every webhook is signed like the voice webhooks; a replayed one changes nothing twice.
"""

import logging

from flask import Blueprint, Response, abort, current_app, request, url_for
from twilio.twiml.messaging_response import MessagingResponse
from werkzeug.exceptions import HTTPException

from .. import dispatch, outbox, people, rating
from ..db import get_db
from ..flows import KEYS
from . import speak
from .signature import twilio_only
from .views import _call_sid as checked_call_sid
from .views import _coordinator as coordinator_now
from .views import _duty_coordinator

log = logging.getLogger(__name__)

bp = Blueprint("telephony_sms", __name__, url_prefix="/twilio")

# The senior's keys on the visit call: the same meaning as everywhere (1 yes, 2 no).
VISIT_ANSWERS = {"yes": "suits", "no": "another_time"}


def _twiml(response):
    """Return TwiML as a Flask response."""
    return Response(str(response), mimetype="text/xml")


@bp.post("/sms")
@twilio_only
def sms():
    """Answer a volunteer's SMS: YES/NO with a code, HELP, STOP, START, or a note."""
    form = request.form
    message_sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    if not message_sid:
        abort(400, "MessageSid is required")  # it is what makes a replay harmless
    reply = dispatch.answer_sms(
        current_app,
        get_db(),
        message_sid=message_sid,
        from_phone=form.get("From", ""),
        body=form.get("Body", ""),
    )
    response = MessagingResponse()
    if reply:
        response.message(reply)
    return _twiml(response)


@bp.post("/sms-status")
@bp.post("/outbox-status")
@twilio_only
def outbox_status():
    """Keep the status Twilio reports for an SMS or call the outbox sent."""
    form = request.form
    sid = form.get("MessageSid") or form.get("CallSid") or ""
    status = form.get("MessageStatus") or form.get("CallStatus") or ""
    if sid and status:
        row = outbox.record_status(get_db(), sid, status, form.get("ErrorCode"))
        if (
            row is not None
            and row["kind"] == "call"
            and row["key"].startswith("visit:")
            and status in ("busy", "no-answer", "failed", "canceled")
        ):
            dispatch.senior_answer(get_db(), row["assignment_id"], "no_answer")
    return "", 204


def _speaker(flow):
    # Seniors hear the visit slowly; the words are few and they may write them down.
    return speak.Speaker(flow, "slow")


def _menu(flow, texts, action):
    """Ask a one-key question in the flow's voice, slowly."""
    return _twiml(speak.menu(_speaker(flow), texts, action, timeout=flow.timing.gather_seconds))


@bp.post("/visit/<int:assignment_id>")
@twilio_only
def visit(assignment_id):
    """Tell the senior who will come, when, and for what; ask whether it suits them."""
    flow, words = dispatch.visit_words(get_db(), assignment_id)
    silences = request.args.get("silences", 0, type=int)
    texts = [flow.prompt("visit", **words), flow.prompt("visit_menu")]
    if not silences:
        texts.insert(0, flow.prompt("visit_hello", category=words["category"]))
    return _menu(
        flow, texts, url_for(".visit_answer", assignment_id=assignment_id, silences=silences)
    )


@bp.post("/visit/<int:assignment_id>/answer")
@twilio_only
def visit_answer(assignment_id):
    """Act on the senior's key: 1 suits, 2 another time, * again, 0 a person."""
    db = get_db()
    flow, words = dispatch.visit_words(db, assignment_id)
    speaker = _speaker(flow)
    meaning = KEYS.get(request.form.get("Digits", "")[:1])
    if meaning is None:
        silences = request.args.get("silences", 0, type=int) + 1
        if silences >= flow.timing.silence_retries:
            dispatch.senior_answer(db, assignment_id, "no_answer")
            return _twiml(speak.goodbye(speaker, [flow.prompt("visit_no_answer")]))
        before = flow.prompt("no_key_heard" if not request.form.get("Digits") else "unknown_key")
        return _menu(
            flow,
            [before, flow.prompt("visit", **words), flow.prompt("visit_menu")],
            url_for(".visit_answer", assignment_id=assignment_id, silences=silences),
        )
    if meaning == "repeat":
        return _menu(
            flow,
            [flow.prompt("visit", **words), flow.prompt("visit_menu")],
            url_for(".visit_answer", assignment_id=assignment_id),
        )
    if meaning == "person":
        dispatch.senior_answer(db, assignment_id, "person")
        number = coordinator_now(current_app.config)  # within coordinator hours only
        if number:
            return _twiml(
                speak.connect(
                    speaker, [flow.prompt("connecting")], number, url_for(".visit_dialed")
                )
            )
        return _twiml(speak.goodbye(speaker, [flow.prompt("visit_another_time")]))
    answer = VISIT_ANSWERS[meaning]
    dispatch.senior_answer(db, assignment_id, answer)
    prompt = "visit_suits" if answer == "suits" else "visit_another_time"
    return _twiml(speak.goodbye(speaker, [flow.prompt(prompt, **words)]))


@bp.post("/visit/dialed")
@twilio_only
def visit_dialed():
    """After the coordinator was dialled from a visit call: the coordinator is already told."""
    flow = dispatch.flow_for(current_app.config["DEFAULT_LANGUAGE"])
    return _twiml(speak.goodbye(_speaker(flow), [flow.prompt("goodbye")]))


def _rating_step(flow, values, assignment, *, first=False, before=(), silences=0):
    """Say what comes next on the rating call, from what the senior has answered so far."""
    speaker = _speaker(flow)
    if assignment["state"] != "done":
        return _twiml(speak.goodbye(speaker, [flow.prompt("rating_not_done")]))
    if assignment["senior_came"] == "no":
        return _twiml(speak.goodbye(speaker, [flow.prompt("rating_not_came")]))
    if assignment["senior_came"] is None:
        texts = [*before, flow.prompt("rating_came", **values), flow.prompt("rating_menu")]
        if first:
            texts.insert(0, flow.prompt("rating_hello", **values))
        action = url_for(".rating_came", assignment_id=assignment["id"], silences=silences)
        return _menu(flow, texts, action)
    if assignment["rating"] is None:
        texts = [*before, flow.prompt("rating_how"), flow.prompt("rating_menu")]
        action = url_for(".rating_how", assignment_id=assignment["id"], silences=silences)
        return _menu(flow, texts, action)
    last = "rating_sorry" if assignment["rating"] <= rating.LOW else "rating_thanks"
    return _twiml(speak.goodbye(speaker, [flow.prompt(last)]))


def _rating_call(assignment_id):
    """Return (flow, values, assignment) for a step of the rating call."""
    checked_call_sid()  # a voice webhook without Twilio's CallSid, or a malformed one, is a 400
    db = get_db()
    flow, values = rating.words(db, assignment_id)
    return flow, values, dispatch.get(db, assignment_id)


def _rating_silence(flow, values, assignment, last):
    """Ask again after silence or a key that is no choice; after a few times, say last."""
    silences = request.args.get("silences", 0, type=int) + 1
    if silences >= flow.timing.silence_retries:
        return _twiml(speak.goodbye(_speaker(flow), [flow.prompt(last)]))
    before = flow.prompt("no_key_heard" if not request.form.get("Digits") else "unknown_key")
    return _rating_step(flow, values, assignment, before=[before], silences=silences)


def _rating_person(flow, assignment):
    """Open a "person_asked" item and dial the coordinator on duty, if anyone is."""
    rating.ask_person(get_db(), assignment["id"])
    number = _duty_coordinator(current_app.config)
    speaker = _speaker(flow)
    if not number:
        return _twiml(speak.goodbye(speaker, [flow.prompt("rating_person_later")]))
    action = url_for(".rating_dialed", assignment_id=assignment["id"])
    return _twiml(speak.connect(speaker, [flow.prompt("connecting")], number, action))


@bp.post("/rating/<int:assignment_id>")
@twilio_only
def rating_call(assignment_id):
    """Greet the senior after a visit and ask the question not yet answered."""
    flow, values, assignment = _rating_call(assignment_id)
    return _rating_step(flow, values, assignment, first=True)


@bp.post("/rating/<int:assignment_id>/came")
@twilio_only
def rating_came(assignment_id):
    """Act on the senior's key: 1 the volunteer came, 2 they did not, * again, 0 a person."""
    flow, values, assignment = _rating_call(assignment_id)
    if assignment["state"] != "done":
        return _rating_step(flow, values, assignment)  # refused politely, nothing kept
    meaning = KEYS.get(request.form.get("Digits", "")[:1])
    if meaning == "person":
        return _rating_person(flow, assignment)
    if meaning in ("yes", "no"):
        assignment = rating.came(get_db(), assignment_id, meaning)
    elif meaning != "repeat":
        return _rating_silence(flow, values, assignment, "rating_no_answer")
    return _rating_step(flow, values, assignment)


@bp.post("/rating/<int:assignment_id>/how")
@twilio_only
def rating_how(assignment_id):
    """Act on the senior's key: 1 very poor up to 5 very good, * again, 0 a person."""
    flow, values, assignment = _rating_call(assignment_id)
    if assignment["state"] != "done":
        return _rating_step(flow, values, assignment)
    digits = request.form.get("Digits", "")[:1]
    if digits and digits in "12345" and int(digits) <= rating.LOW and assignment["rating"] is None:
        return _rating_check(flow, assignment, int(digits))
    if digits and digits in "12345":
        assignment = rating.rate(get_db(), assignment_id, int(digits))
    elif KEYS.get(digits) == "person":
        return _rating_person(flow, assignment)
    elif KEYS.get(digits) != "repeat":
        return _rating_silence(flow, values, assignment, "rating_thanks")
    return _rating_step(flow, values, assignment)


def _rating_check(flow, assignment, value, before=(), silences=0):
    """Read a low rating back: 1 keeps it, 2 asks the question again (1 was yes a moment ago)."""
    word = flow.prompt(f"rating_word_{value}")
    texts = [
        *before,
        flow.prompt("rating_check", rating=value, word=word),
        flow.prompt("rating_menu"),
    ]
    action = url_for(".rating_low", assignment_id=assignment["id"], value=value, silences=silences)
    return _menu(flow, texts, action)


@bp.post("/rating/<int:assignment_id>/low/<int:value>")
@twilio_only
def rating_low(assignment_id, value):
    """Act on the key after a low rating was read back: 1 keep it, 2 choose again."""
    flow, values, assignment = _rating_call(assignment_id)
    if assignment["state"] != "done" or not 1 <= value <= rating.LOW:
        return _rating_step(flow, values, assignment)
    meaning = KEYS.get(request.form.get("Digits", "")[:1])
    if meaning == "yes":
        assignment = rating.rate(get_db(), assignment_id, value)
    elif meaning == "person":
        return _rating_person(flow, assignment)
    elif meaning == "repeat":
        return _rating_check(flow, assignment, value)
    elif meaning != "no":
        # Silence or another key: read it back again, a few times; nothing unconfirmed is kept.
        silences = request.args.get("silences", 0, type=int) + 1
        if silences >= flow.timing.silence_retries:
            return _twiml(speak.goodbye(_speaker(flow), [flow.prompt("rating_no_answer")]))
        before = [flow.prompt("no_key_heard" if not request.form.get("Digits") else "unknown_key")]
        return _rating_check(flow, assignment, value, before, silences)
    return _rating_step(flow, values, assignment)


@bp.post("/rating/<int:assignment_id>/dialed")
@twilio_only
def rating_dialed(assignment_id):
    """After a coordinator was dialled from the rating call: goodbye, or a call back promised."""
    flow, _ = rating.words(get_db(), assignment_id)
    answered = request.form.get("DialCallStatus") == "completed"
    last = "bye" if answered else "rating_person_later"
    return _twiml(speak.goodbye(_speaker(flow), [flow.prompt(last)]))


@bp.post("/offer-call/<int:assignment_id>")
@twilio_only
def offer_call(assignment_id):
    """Offer a job by phone to a volunteer who asked for calls: 1 takes it, 2 passes."""
    flow, words = dispatch.offer_call_words(get_db(), assignment_id)
    texts = [flow.prompt("offer_hello"), flow.prompt("offer", **words), flow.prompt("offer_menu")]
    return _menu(flow, texts, url_for(".offer_call_answer", assignment_id=assignment_id))


@bp.post("/offer-call/<int:assignment_id>/answer")
@twilio_only
def offer_call_answer(assignment_id):
    """Act on the volunteer's key: 1 accept, 2 decline, * again, 0 a person."""
    db = get_db()
    flow, words = dispatch.offer_call_words(db, assignment_id)
    speaker = speak.Speaker(flow)
    meaning = KEYS.get(request.form.get("Digits", "")[:1])
    action = url_for(".offer_call_answer", assignment_id=assignment_id)
    if meaning in (None, "repeat"):
        return _menu(flow, [flow.prompt("offer", **words), flow.prompt("offer_menu")], action)
    assignment = dispatch.get(db, assignment_id)
    volunteer_actor = f"volunteer:{assignment['volunteer_id']}"
    if meaning == "person":
        dispatch.flag(
            db,
            assignment["request_id"],
            "the volunteer asked to speak to a person about an offer",
            actor=volunteer_actor,
            action="volunteer_note",
        )
        return _twiml(speak.goodbye(speaker, [flow.sms["answer_call"]]))
    if meaning == "yes":
        outcome = dispatch.accept(current_app, db, assignment_id, actor=volunteer_actor, by="call")
    else:
        outcome = dispatch.decline(current_app, db, assignment_id, actor=volunteer_actor, by="call")
    volunteer = people.get_volunteer(db, assignment["volunteer_id"])
    return _twiml(speak.goodbye(speaker, [dispatch.outcome_text(db, volunteer, outcome)]))


@bp.errorhandler(Exception)
def apologise(exc):
    """Answer a broken step politely: an SMS says sorry, a call says sorry and ends."""
    if isinstance(exc, HTTPException):
        return exc
    if isinstance(exc, dispatch.AssignmentNotFound):
        # A call about an offer that is not ours (or was never made): say sorry, nothing broke.
        log.warning("twilio offer step %s: %s", request.endpoint, exc)
    else:
        log.exception("twilio offer step %s failed", request.endpoint)
    if request.endpoint in ("telephony_sms.sms",):
        response = MessagingResponse()
        flow = dispatch.flow_for(current_app.config["DEFAULT_LANGUAGE"])
        response.message(flow.sms["answer_call"])
        return _twiml(response)
    if request.endpoint == "telephony_sms.outbox_status":
        return "", 204  # Twilio does not retry status callbacks; the log has it
    flow = dispatch.flow_for(current_app.config["DEFAULT_LANGUAGE"])
    return _twiml(speak.goodbye(_speaker(flow), [flow.prompt("sorry")]))
