"""The volunteer's page for one offer, opened by the signed link in its SMS, with no login.

    GET  /v/<token>    the offer (or the job) and only the buttons that apply to it now
    POST /v/<token>    action=accept | decline | check_in | check_out, with the form token
                       of that link; a check-in may carry latitude, longitude and accuracy_m
                       (sent by static/mobile/locate.js only when the volunteer allows it)

The link is the credential, so the page shows that one assignment and no more of the senior
than the volunteer needs: first name, street, kind of help and time; the door once taken.
Each answer is the one the SMS would give, and a second tap changes nothing.
"""

import math
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, render_template, request

from . import dispatch, links, people, visits
from .db import get_db

bp = Blueprint("mobile", __name__, url_prefix="/v")

# The buttons each state offers; any other state shows where the job stands, nothing to press.
BUTTONS = {
    "offered": ("accept", "decline"),
    "accepted": ("check_in",),
    "checked_in": ("check_out",),
}
# What a check-in's position may be: degrees, and metres up to half the Earth round.
LOCATION = {"latitude": (-90, 90), "longitude": (-180, 180), "accuracy_m": (0, 20_000_000)}


class Refused(Exception):
    """A link or a form the page cannot act on: a status and what to tell the person."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@bp.after_request
def keep_private(response):
    """Keep the page out of caches, search engines and other sites' Referer headers."""
    # The address itself opens the page: nothing may carry it further.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


@bp.errorhandler(Refused)
def refused(error):
    """Show why a link or form did nothing, as a page a volunteer can act on."""
    number = current_app.config.get("COORDINATOR_NUMBER")
    page = render_template("mobile/refused.html", reason=error.reason, coordinator=number)
    return page, error.status


@bp.get("/<token>")
def page(token):
    """Show the offer or job a link names, with the buttons that apply now."""
    db, assignment = _open(token)
    return _render(token, db, assignment["id"])


@bp.post("/<token>")
def act(token):
    """Accept, decline, check in or out of the job a link names; answer as the SMS would."""
    db, assignment = _open(token)
    if not links.form_token_ok(
        current_app.config["SECRET_KEY"], token, request.form.get("csrf_token")
    ):
        raise Refused(400, "stale")
    action = request.form.get("action")
    if action not in ("accept", "decline", "check_in", "check_out"):
        raise Refused(400, "unreadable")
    volunteer = people.get_volunteer(db, assignment["volunteer_id"])
    actor = f"volunteer:{volunteer['id']}"
    if action in ("accept", "decline"):
        answer = dispatch.accept if action == "accept" else dispatch.decline
        outcome = answer(current_app, db, assignment["id"], actor=actor, by="link")
        said = dispatch.outcome_text(db, volunteer, outcome)
    elif action == "check_in":
        location = _location(request.form)
        said = _visit(db, volunteer, assignment, visits.check_in, location=location)
    else:
        said = _visit(db, volunteer, assignment, visits.check_out)
    return _render(token, db, assignment["id"], said=said)


def _visit(db, volunteer, assignment, step, **extra):
    """Check in or out by the link; return the words the SMS would answer."""
    actor = f"volunteer:{volunteer['id']}"
    try:
        step(current_app, db, assignment["id"], by="link", actor=actor, **extra)
    except visits.VisitError as error:
        # A second tap, or a job closed meanwhile: nothing changed, and the page says why.
        return visits.refusal_text(volunteer, error)
    return visits.done_text(db, volunteer, dispatch.get(db, assignment["id"]))


def _location(form):
    """Return the position a check-in carries ({} parts), None without one, or raise Refused."""
    sent = {name: form.get(name, "").strip() for name in LOCATION}
    if not any(sent.values()):
        return None  # the volunteer did not allow it, or the page ran without its script
    if not (sent["latitude"] and sent["longitude"]):
        raise Refused(400, "unreadable")
    position = {}
    for name, raw in sent.items():
        if not raw:
            continue  # accuracy is optional
        try:
            value = float(raw)
        except ValueError:
            raise Refused(400, "unreadable") from None
        low, high = LOCATION[name]
        if not (math.isfinite(value) and low <= value <= high):
            raise Refused(400, "unreadable")
        position[name] = value
    return position


def _open(token):
    """Return (db, the assignment a link names) or raise Refused."""
    config = current_app.config
    try:
        link = links.read(config["SECRET_KEY"], token, max_age=config["VOLUNTEER_LINK_LIFETIME"])
    except links.ExpiredLink:
        raise Refused(410, "expired") from None
    except links.BadLink:
        raise Refused(403, "bad") from None
    db = get_db()
    try:
        assignment = dispatch.get(db, link.assignment_id)
    except dispatch.AssignmentNotFound:
        raise Refused(410, "gone") from None
    if assignment["volunteer_id"] != link.volunteer_id:
        # Signed by us for someone else's job: the same answer as a forged link.
        raise Refused(403, "bad")
    return db, assignment


def _render(token, db, assignment_id, said=None):
    """Return the page for an assignment as it stands now, with an answer to show."""
    assignment = dispatch.get(db, assignment_id)
    _, words = dispatch.page_words(db, assignment_id)
    state = assignment["state"]
    zone = ZoneInfo(current_app.config["COORDINATOR_TIMEZONE"])
    return render_template(
        "mobile/offer.html",
        assignment=assignment,
        state=state,
        words=words,
        # While the volunteer holds the job they need the door; before and after, the street.
        place=words["address"] if state in dispatch.HELD else words["place"],
        buttons=BUTTONS.get(state, ()),
        form_token=links.form_token(current_app.config["SECRET_KEY"], token),
        said=said,
        checked_in=_clock(assignment["checked_in_at"], zone),
        checked_out=_clock(assignment["checked_out_at"], zone),
        minutes=assignment.get("minutes"),
    )


def _clock(stamp, zone):
    """Return a UTC stamp as HH:MM in the coordinators' zone, or None."""
    return visits.clock(stamp, zone) if stamp else None
