"""Console pages: volunteers (list, add, edit, pause), people served, a request's matches."""

from datetime import datetime
from zoneinfo import ZoneInfo

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for

from .. import dispatch, ledger, people, queue
from ..db import get_db
from .views import bp, require

# The form's fields, in the order the page shows them; active is its own button.
FORM_FIELDS = (
    "name",
    "phone",
    "languages",
    "skills",
    "postcode",
    "region",
    "lat",
    "lon",
    "availability",
    "exceptions",
    "max_open",
    "training_done",
    "notes",
    "offer_channel",
)


def _form():
    """Return the volunteer form's fields as the registry reads them."""
    form = {k: (request.form.get(k) or "").strip() for k in FORM_FIELDS}
    form["training_done"] = "yes" if request.form.get("training_done") else "no"
    return form


def _as_form(volunteer):
    """Return a stored volunteer as the form's text fields."""
    row = people.csv_row(volunteer)
    return {k: "" if row.get(k) is None else str(row[k]) for k in FORM_FIELDS}


def _errors(exc):
    """Return a registry error as a message under its form field."""
    if isinstance(exc, people.DuplicatePhone):
        return {"phone": str(exc)}
    field = getattr(exc, "field", "name")
    field = field if field in FORM_FIELDS else "name"
    return {field: str(exc).partition(": ")[2] or str(exc)}


def _list_page(status=200, *, form=None, errors=None):
    """Render the registry with the add form."""
    rules, _ = people.rules_for(current_app)
    return (
        render_template(
            "console/volunteers.html",
            volunteers=people.list_volunteers(get_db()),
            form=form or {"max_open": "1"},
            errors=errors or {},
            skills=sorted(rules.skills),
        ),
        status,
    )


@bp.get("/volunteers")
@require("view")
def volunteers():
    """List every volunteer, paused ones marked, with a form to add one."""
    return _list_page()


@bp.post("/volunteers")
@require("act")
def add_volunteer():
    """Register a volunteer from the form."""
    rules, _ = people.rules_for(current_app)
    form = _form()
    fields = {k: v for k, v in form.items() if v != ""}
    try:
        volunteer = people.add_volunteer(get_db(), fields, rules, actor=g.principal.actor)
    except people.PeopleError as exc:
        return _list_page(400, form=form, errors=_errors(exc))
    flash(f"Added volunteer {volunteer['name']}.", "ok")
    return redirect(url_for("console.volunteers"), code=303)


def _volunteer_page(volunteer, status=200, *, form=None, errors=None):
    """Render one volunteer's edit form."""
    rules, _ = people.rules_for(current_app)
    return (
        render_template(
            "console/volunteer.html",
            volunteer=volunteer,
            form=form or _as_form(volunteer),
            errors=errors or {},
            skills=sorted(rules.skills),
            stats=ledger.volunteer_stats(get_db(), volunteer["id"]),
        ),
        status,
    )


def _changes(form, shown):
    """Turn an edit form into changes: an emptied field clears its value.

    A new postcode with the old coordinates left as they were means the person has moved:
    lat/lon are cleared, to be found again from the postcode.
    """
    changes = {k: (v if v != "" else None) for k, v in form.items()}
    moved = form["postcode"] != shown["postcode"]
    if moved and (form["lat"], form["lon"]) == (shown["lat"], shown["lon"]):
        changes["lat"] = changes["lon"] = None
    return changes


def _get(volunteer_id):
    """Return the volunteer, or answer 404."""
    try:
        return people.get_volunteer(get_db(), volunteer_id)
    except people.VolunteerNotFound:
        abort(404)


@bp.get("/volunteers/<int:volunteer_id>")
@require("view")
def volunteer(volunteer_id):
    """Show one volunteer's details in an edit form."""
    return _volunteer_page(_get(volunteer_id))


@bp.post("/volunteers/<int:volunteer_id>")
@require("act")
def edit_volunteer(volunteer_id):
    """Save the edit form."""
    rules, _ = people.rules_for(current_app)
    before = _get(volunteer_id)
    form = _form()
    changes = _changes(form, _as_form(before))
    try:
        saved = people.update_volunteer(
            get_db(), volunteer_id, changes, rules, actor=g.principal.actor
        )
    except people.PeopleError as exc:
        return _volunteer_page(before, 400, form=form, errors=_errors(exc))
    flash(f"Saved volunteer {saved['name']}.", "ok")
    return redirect(url_for("console.volunteers"), code=303)


@bp.post("/volunteers/<int:volunteer_id>/active")
@require("act")
def set_volunteer_active(volunteer_id):
    """Pause a volunteer (never suggested) or let them be suggested again."""
    rules, _ = people.rules_for(current_app)
    name = _get(volunteer_id)["name"]
    active = request.form.get("active") == "yes"
    try:
        people.update_volunteer(
            get_db(), volunteer_id, {"active": active}, rules, actor=g.principal.actor
        )
    except people.PeopleError as exc:
        # The stored record no longer passes today's rules (e.g. a skill was retired).
        flash(f"Could not change {name}: {exc}. Edit the volunteer first.", "error")
    else:
        flash(f"{'Resumed' if active else 'Paused'} volunteer {name}.", "ok")
    return redirect(url_for("console.volunteers"), code=303)


# ---- people served ----------------------------------------------------------------------

PERSON_FORM_FIELDS = (
    "name",
    "phones",
    "language",
    "address",
    "postcode",
    "region",
    "lat",
    "lon",
    "accessibility",
    "preferred_volunteers",
    "emergency_contact",
    "notes",
)


def _person_form():
    """Return the person form's fields as the registry reads them."""
    return {k: (request.form.get(k) or "").strip() for k in PERSON_FORM_FIELDS}


def _person_as_form(person):
    """Return a stored person as the form's text fields."""
    form = {k: "" if person.get(k) is None else str(person[k]) for k in PERSON_FORM_FIELDS}
    form["phones"] = "; ".join(person["phones"])
    form["preferred_volunteers"] = "; ".join(str(i) for i in person["preferred_volunteers"])
    return form


def _person_errors(exc):
    """Return a registry error as a message under its form field."""
    field = getattr(exc, "field", "name")
    field = field if field in PERSON_FORM_FIELDS else "name"
    return {field: str(exc).partition(": ")[2] or str(exc)}


def _people_page(status=200, *, form=None, errors=None):
    """Render the people served with the add form."""
    db = get_db()
    names = {v["id"]: v["name"] for v in people.list_volunteers(db)}
    return (
        render_template(
            "console/people.html",
            people=people.list_people(db),
            volunteer_names=names,
            form=form or {},
            errors=errors or {},
        ),
        status,
    )


@bp.get("/people")
@require("view")
def people_served():
    """List the people CareCall serves, with a form to add one."""
    return _people_page()


@bp.post("/people")
@require("act")
def add_person():
    """Register a person served from the form."""
    rules, _ = people.rules_for(current_app)
    form = _person_form()
    fields = {k: v for k, v in form.items() if v != ""}
    try:
        person = people.add_person(get_db(), fields, rules, actor=g.principal.actor)
    except people.PeopleError as exc:
        return _people_page(400, form=form, errors=_person_errors(exc))
    flash(f"Added {person['name']}.", "ok")
    return redirect(url_for("console.people_served"), code=303)


def _person_page(person, status=200, *, form=None, errors=None):
    """Render one person's edit form."""
    return (
        render_template(
            "console/person.html",
            person=person,
            form=form or _person_as_form(person),
            errors=errors or {},
        ),
        status,
    )


def _get_person(person_id):
    """Return the person, or answer 404."""
    try:
        return people.get_person(get_db(), person_id)
    except people.PersonNotFound:
        abort(404)


@bp.get("/people/<int:person_id>")
@require("view")
def person(person_id):
    """Show one person's details in an edit form."""
    return _person_page(_get_person(person_id))


@bp.post("/people/<int:person_id>")
@require("act")
def edit_person(person_id):
    """Save a person's edit form."""
    rules, _ = people.rules_for(current_app)
    before = _get_person(person_id)
    form = _person_form()
    changes = _changes(form, _person_as_form(before))
    try:
        saved = people.update_person(get_db(), person_id, changes, rules, actor=g.principal.actor)
    except people.PeopleError as exc:
        return _person_page(before, 400, form=form, errors=_person_errors(exc))
    flash(f"Saved {saved['name']}.", "ok")
    return redirect(url_for("console.people_served"), code=303)


# ---- suggested volunteers for a request -------------------------------------------------


@bp.get("/requests/<int:request_id>/matches")
@require("view")
def matches(request_id):
    """Show the volunteers best suited to a request, each with the reasons why."""
    db = get_db()
    item = queue.get(db, request_id)
    tz = ZoneInfo(current_app.config["COORDINATOR_TIMEZONE"])
    at, error = request.args.get("at") or "", None
    when = None
    if at:
        try:
            when = datetime.fromisoformat(at).replace(tzinfo=tz)
        except ValueError:
            error = "Enter a date and time, or leave it empty for as soon as possible."
    override = request.args.get("override_language") == "yes"
    need, ranking = people.suggest(current_app, db, item, when=when, override_language=override)
    _, weights = people.rules_for(current_app)
    language = weights.language_name(need.language) if need.language else None
    return (
        render_template(
            "console/matches.html",
            item=item,
            need=need,
            ranking=ranking,
            language=language,
            at=at,
            error=error,
            override=override,
            timezone=current_app.config["COORDINATOR_TIMEZONE"],
            phones={v["id"]: v["phone"] for v in people.list_volunteers(db, active=True)},
            offers=dispatch.assignments(db, request_id=request_id),
            names={v["id"]: v["name"] for v in people.list_volunteers(db)},
        ),
        400 if error else 200,
    )
