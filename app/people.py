"""Volunteers and the people they serve: checked fields, storage, CSV in and out, commands.

Parsing and checking are pure functions of the fields and the `Rules` (known skills,
places, skill levels), so the CLI, the API and the console all refuse the same things.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sqlite3
import tomllib
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import click
import phonenumbers
from flask import current_app
from flask.cli import with_appcontext

from . import matching, queue
from .accounts import cli_actor
from .availability import (
    BadAvailability,
    format_exceptions,
    format_slots,
    parse_exceptions,
    parse_slots,
)
from .classify import category_keys
from .db import ROW_ID, get_db
from .queue import now, record_event

# The CSV layout `volunteers import` reads and `volunteers export` writes.
CSV_COLUMNS = (
    "name",
    "phone",
    "languages",
    "skills",
    "region",
    "lat",
    "lon",
    "availability",
    "max_open",
    "postcode",
    "exceptions",
    "active",
    "training_done",
    "notes",
    "offer_channel",
)
REQUIRED_COLUMNS = CSV_COLUMNS[:9]
VOLUNTEER_FIELDS = frozenset(CSV_COLUMNS)
PERSON_FIELDS = frozenset(
    {
        "name",
        "phones",
        "address",
        "postcode",
        "lat",
        "lon",
        "region",
        "language",
        "accessibility",
        "preferred_volunteers",
        "emergency_contact",
        "notes",
    }
)
# How a volunteer is offered a job: an SMS to answer YES/NO, or a call to answer 1/2.
OFFER_CHANNELS = ("sms", "call")
MAX_OPEN_LIMIT = 100
MAX_TEXT = 2000
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")
_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


class PeopleError(Exception):
    """A volunteer or person could not be stored or found."""


class BadField(PeopleError, ValueError):
    """A field of a volunteer or person has a value CareCall cannot take."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


class DuplicatePhone(PeopleError):
    """Another volunteer already has this phone number."""


class VolunteerNotFound(PeopleError, LookupError):
    """No volunteer has that id."""


class PersonNotFound(PeopleError, LookupError):
    """No person has that id."""


class ImportFailed(PeopleError):
    """Some CSV rows are wrong; nothing was imported."""

    def __init__(self, errors):
        self.errors = errors  # [(row number, field, message)]
        lines = [f"row {row}, {field}: {message}" for row, field, message in errors]
        super().__init__("nothing imported:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Place:
    """Where a postcode or neighbourhood is, and the region it belongs to."""

    lat: float
    lon: float
    region: str | None = None


@dataclass(frozen=True)
class Rules:
    """What a volunteer or person may say: known skills, places, skill levels."""

    skills: frozenset[str]
    places: Mapping[str, Place]
    max_level: int = 3

    def place(self, name):
        """Return the place a postcode or neighbourhood names, or None."""
        return self.places.get(place_key(name)) if name else None


def place_key(name):
    """Return the lookup key of a place name: no case, no spaces ("E1 6AN" = "e16an")."""
    return re.sub(r"\s+", "", str(name)).lower()


def load_places(path):
    """Load ivr_flows/places.toml into a lookup by place key."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    places = {}
    for name, entry in data.get("places", {}).items():
        try:
            place = Place(float(entry["lat"]), float(entry["lon"]), entry.get("region"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{Path(path).name}: place {name!r} needs lat and lon") from exc
        places[place_key(name)] = place
    return places


def rules_for(app):
    """Return the app's rules and matching weights, loaded once from its flows folder."""
    cached = app.extensions.get("carecall.people")
    if cached is None:
        flows = Path(app.config["FLOWS_DIR"])
        weights = matching.load_weights(flows / "matching.toml")
        rules = Rules(
            skills=frozenset(category_keys(flows / "categories.toml")),
            places=load_places(flows / "places.toml"),
            max_level=weights.max_level,
        )
        cached = app.extensions["carecall.people"] = (rules, weights)
    return cached


# ---- parsing one field ------------------------------------------------------------------


def _blank(value):
    """Return whether a field was left empty."""
    return value is None or (isinstance(value, str) and not value.strip())


def _text(fields, name, *, required=False):
    """Return a stripped text field, or None when empty."""
    value = fields.get(name)
    if _blank(value):
        if required:
            raise BadField(name, "is required")
        return None
    if not isinstance(value, str):
        raise BadField(name, "must be text")
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise BadField(name, f"is longer than {MAX_TEXT} characters")
    return value


def parse_phone(value, field="phone"):
    """Return a phone number in E.164 form (+ and country code), or raise BadField."""
    if _blank(value) or not isinstance(value, str):
        raise BadField(field, "is required, in E.164 form like +15551234567")
    text = value.strip()
    if not text.startswith("+"):
        raise BadField(field, f"{text!r} is not E.164: start with + and the country code")
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise BadField(field, f"{text!r} is not a phone number ({exc})") from exc
    # Possible, not valid: valid would refuse the 555 numbers of examples and tests.
    if not phonenumbers.is_possible_number(number):
        raise BadField(field, f"{text!r} has the wrong number of digits")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _items(value, field):
    """Return the parts of a list field, given as a list or as text separated by ; or ,."""
    if _blank(value):
        return []
    if isinstance(value, str):
        return [p.strip() for p in re.split(r"[;,]", value) if p.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise BadField(field, "must be a list or text separated by ;")


def parse_languages(value, field="languages"):
    """Return language codes like ["en", "ko"] from a list or `en; ko`."""
    codes = []
    for item in _items(value, field):
        code = str(item).strip().lower()
        if not _LANGUAGE_RE.match(code):
            raise BadField(field, f"{item!r} is not a language code like en or ko")
        if code not in codes:
            codes.append(code)
    return codes


def parse_skills(value, rules, field="skills"):
    """Return {category: level or None} from a mapping or `groceries:3; transport`."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = []
        for item in _items(value, field):
            if not isinstance(item, str):
                raise BadField(field, f"{item!r} is not a skill")
            name, _, level = item.partition(":")
            pairs.append((name, level.strip() or None))
    skills = {}
    for name, level in pairs:
        key = str(name).strip().lower()
        if key not in rules.skills:
            known = ", ".join(sorted(rules.skills))
            raise BadField(field, f"unknown skill {name!r} (known: {known})")
        if level is not None:
            try:
                level = int(level)
            except (TypeError, ValueError):
                level = 0
            if not 1 <= level <= rules.max_level:
                raise BadField(field, f"{name}: level must be 1 to {rules.max_level}")
        skills[key] = level
    if not skills:
        raise BadField(field, "name at least one skill, e.g. groceries or transport:2")
    return skills


def _float(fields, name, low, high):
    """Return a number field within [low, high], or None when empty."""
    value = fields.get(name)
    if _blank(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not low <= number <= high:
        raise BadField(name, f"{value!r} is not a number from {low} to {high}")
    return number


def _int(fields, name, low, high, default):
    """Return a whole-number field within [low, high], or the default when empty."""
    value = fields.get(name)
    if _blank(value):
        return default
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise BadField(name, f"{value!r} is not a whole number from {low} to {high}")
    return number


def parse_flag(value, field, default=None):
    """Return yes/no (also true/false, 1/0, on/off) as a bool, or the default when empty."""
    if _blank(value):
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise BadField(field, f"{value!r} is not yes or no")


def _bool(fields, name, default):
    """Return a yes/no field, or the default when empty."""
    return parse_flag(fields.get(name), name, default)


def _location(fields, rules):
    """Return (lat, lon, region) from lat/lon, or else from the postcode's place."""
    lat = _float(fields, "lat", -90, 90)
    lon = _float(fields, "lon", -180, 180)
    if (lat is None) != (lon is None):
        raise BadField("lon" if lon is None else "lat", "give both lat and lon, or neither")
    postcode = _text(fields, "postcode")
    region = _text(fields, "region")
    place = rules.place(postcode)
    if postcode and place is None and lat is None:
        raise BadField("postcode", f"unknown place {postcode!r}; add it to places.toml")
    if lat is None and place:
        lat, lon = place.lat, place.lon
    if region is None and place:
        region = place.region
    return lat, lon, region, postcode


def _unknown(fields, allowed):
    """Refuse fields nobody can set, so a typo is not silently dropped."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise BadField(unknown[0], "is not a field that can be set")


# ---- whole records ----------------------------------------------------------------------


def check_volunteer(fields, rules):
    """Return a volunteer's fields checked and normalised, or raise BadField."""
    _unknown(fields, VOLUNTEER_FIELDS)
    lat, lon, region, postcode = _location(fields, rules)
    try:
        slots = parse_slots(_text(fields, "availability") or "")
    except BadAvailability as exc:
        raise BadField("availability", str(exc)) from exc
    try:
        exceptions = parse_exceptions(_text(fields, "exceptions") or "")
    except BadAvailability as exc:
        raise BadField("exceptions", str(exc)) from exc
    return {
        "name": _text(fields, "name", required=True),
        "phone": parse_phone(fields.get("phone")),
        "languages": parse_languages(fields.get("languages")),
        "skills": parse_skills(fields.get("skills"), rules),
        "region": region,
        "postcode": postcode,
        "lat": lat,
        "lon": lon,
        "availability": format_slots(slots),
        "exceptions": format_exceptions(exceptions),
        "max_open": _int(fields, "max_open", 0, MAX_OPEN_LIMIT, 1),
        "active": _bool(fields, "active", True),
        "training_done": _bool(fields, "training_done", False),
        "notes": _text(fields, "notes"),
        "offer_channel": _offer_channel(fields),
    }


def _offer_channel(fields):
    """Return how a volunteer wants offers: sms (the default) or call."""
    value = (_text(fields, "offer_channel") or "sms").lower()
    if value not in OFFER_CHANNELS:
        raise BadField("offer_channel", f"{value!r} is not one of {', '.join(OFFER_CHANNELS)}")
    return value


def check_person(fields, rules):
    """Return a served person's fields checked and normalised, or raise BadField."""
    _unknown(fields, PERSON_FIELDS)
    lat, lon, region, postcode = _location(fields, rules)
    phones = []
    for item in _items(fields.get("phones"), "phones"):
        phone = parse_phone(item, "phones")
        if phone not in phones:
            phones.append(phone)
    preferred = []
    for item in _items(fields.get("preferred_volunteers"), "preferred_volunteers"):
        try:
            preferred.append(int(item))
        except (TypeError, ValueError) as exc:
            raise BadField("preferred_volunteers", f"{item!r} is not a volunteer id") from exc
    language = _text(fields, "language")
    if language:
        language = parse_languages(language, "language")[0]
    return {
        "name": _text(fields, "name", required=True),
        "phones": phones,
        "address": _text(fields, "address"),
        "postcode": postcode,
        "lat": lat,
        "lon": lon,
        "region": region,
        "language": language,
        "accessibility": _text(fields, "accessibility"),
        "preferred_volunteers": preferred,
        "emergency_contact": _text(fields, "emergency_contact"),
        "notes": _text(fields, "notes"),
    }


def _volunteer_row(checked):
    """Return checked volunteer fields as a database row."""
    return {
        **checked,
        "languages": json.dumps(checked["languages"]),
        "skills": json.dumps(checked["skills"]),
        "active": int(checked["active"]),
        "training_done": int(checked["training_done"]),
    }


def _volunteer_public(row):
    """Return a volunteer row as the API and console show it."""
    return {
        **row,
        "languages": json.loads(row["languages"] or "[]"),
        "skills": json.loads(row["skills"] or "{}"),
        "active": bool(row["active"]),
        "training_done": bool(row["training_done"]),
    }


def add_volunteer(db, fields, rules, *, actor):
    """Check and store a new volunteer, audited; return it."""
    checked = check_volunteer(fields, rules)
    stamp = now()
    with db.atomic():
        _refuse_taken_phone(db, checked["phone"], None)
        row = {**_volunteer_row(checked), "created_at": stamp, "updated_at": stamp}
        with _phone_taken_is_named(checked["phone"]):
            volunteer_id = db["volunteers"].insert(row).last_pk
        record_event(db, None, actor, "volunteer_added", {"volunteer": volunteer_id})
    return get_volunteer(db, volunteer_id)


def update_volunteer(db, volunteer_id, changes, rules, *, actor):
    """Change some of a volunteer's fields, checking the whole record again; return it.

    Pausing alone is never refused, even when the stored record no longer passes the rules
    (a skill since retired): stopping suggestions must always work.
    """
    if set(changes) == {"active"} and parse_flag(changes["active"], "active") is False:
        return pause_volunteer(db, volunteer_id, actor=actor)
    with db.atomic():
        before = get_volunteer(db, volunteer_id)
        _unknown(changes, VOLUNTEER_FIELDS)
        merged = {k: before[k] for k in VOLUNTEER_FIELDS} | dict(changes)
        if "postcode" in changes and not {"lat", "lon"} & set(changes):
            # A new postcode moves the volunteer: look its place up again.
            merged["lat"] = merged["lon"] = None
        checked = check_volunteer(merged, rules)
        _refuse_taken_phone(db, checked["phone"], volunteer_id)
        row = _volunteer_row(checked)
        with _phone_taken_is_named(checked["phone"]):
            db["volunteers"].update(volunteer_id, {**row, "updated_at": now()})
        after = get_volunteer(db, volunteer_id)
        diff = {k: [before[k], after[k]] for k in VOLUNTEER_FIELDS if before[k] != after[k]}
        record_event(db, None, actor, "volunteer_changed", {"volunteer": volunteer_id, **diff})
    return after


def pause_volunteer(db, volunteer_id, *, actor):
    """Pause a volunteer, audited; return them."""
    with db.atomic():
        before = get_volunteer(db, volunteer_id)
        db["volunteers"].update(volunteer_id, {"active": 0, "updated_at": now()})
        diff = {"active": [before["active"], False]} if before["active"] else {}
        record_event(db, None, actor, "volunteer_changed", {"volunteer": volunteer_id, **diff})
    return get_volunteer(db, volunteer_id)


@contextmanager
def _phone_taken_is_named(phone):
    """Turn the unique index's refusal (another writer won a race) into DuplicatePhone."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise DuplicatePhone(f"another volunteer already has phone {phone}") from exc


def _refuse_taken_phone(db, phone, volunteer_id):
    """Raise DuplicatePhone when another volunteer has the number."""
    row = db.execute("SELECT id FROM volunteers WHERE phone = ?", [phone]).fetchone()
    if row and row[0] != volunteer_id:
        raise DuplicatePhone(f"volunteer {row[0]} already has phone {phone}")


def get_volunteer(db, volunteer_id):
    """Return one volunteer, or raise VolunteerNotFound."""
    rows = list(db["volunteers"].rows_where("id = ?", [volunteer_id]))
    if not rows:
        raise VolunteerNotFound(f"no volunteer {volunteer_id}")
    return _volunteer_public(rows[0])


def list_volunteers(db, *, active=None, region=None, skill=None, limit=None, offset=0):
    """Return volunteers by id, optionally only active or paused, in a region, with a skill."""
    where, args = [], []
    if active is not None:
        where.append("active = ?")
        args.append(int(active))
    if region:
        where.append("region = ?")
        args.append(region)
    if skill:
        where.append("EXISTS (SELECT 1 FROM json_each(skills) WHERE key = ?)")
        args.append(skill)
    rows = db["volunteers"].rows_where(
        " AND ".join(where) or None, args, order_by="id", limit=limit, offset=offset or None
    )
    return [_volunteer_public(row) for row in rows]


# ---- CSV --------------------------------------------------------------------------------


def read_csv(stream, rules):
    """Check every row of a volunteers CSV; return the checked rows or raise ImportFailed.

    Rows are numbered as a spreadsheet shows them: the header is row 1.
    """
    reader = csv.DictReader(stream)
    header = [h.strip() for h in (reader.fieldnames or [])]
    errors = []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in VOLUNTEER_FIELDS]
    if missing:
        errors.append((1, "header", f"missing column {', '.join(missing)}"))
    if unknown:
        errors.append((1, "header", f"unknown column {', '.join(unknown)}"))
    if errors:
        raise ImportFailed(errors)
    reader.fieldnames = header
    checked, phones = [], {}
    for number, raw in enumerate(reader, start=2):
        if None in raw:
            errors.append((number, "row", "more values than columns"))
            continue
        if all(_blank(v) for v in raw.values()):
            continue
        try:
            row = check_volunteer(raw, rules)
        except BadField as exc:
            errors.append((number, exc.field, str(exc).partition(": ")[2]))
            continue
        if row["phone"] in phones:
            errors.append((number, "phone", f"same number as row {phones[row['phone']]}"))
            continue
        phones[row["phone"]] = number
        checked.append(row)
    if errors:
        raise ImportFailed(errors)
    return checked


def import_csv(db, stream, rules, *, actor):
    """Import a volunteers CSV all or nothing; return (added, updated) counts.

    A row whose phone belongs to a volunteer already registered updates that volunteer.
    """
    rows = read_csv(stream, rules)
    added = updated = 0
    stamp = now()
    with db.atomic():
        for checked in rows:
            row = _volunteer_row(checked)
            found = db.execute("SELECT id FROM volunteers WHERE phone = ?", [row["phone"]])
            existing = found.fetchone()
            if existing:
                db["volunteers"].update(existing[0], {**row, "updated_at": stamp})
                updated += 1
            else:
                with _phone_taken_is_named(row["phone"]):
                    db["volunteers"].insert({**row, "created_at": stamp, "updated_at": stamp})
                added += 1
        record_event(db, None, actor, "volunteers_imported", {"added": added, "updated": updated})
    return added, updated


def csv_row(volunteer):
    """Return a volunteer as one CSV row in the import layout."""
    skills = "; ".join(
        name if level is None else f"{name}:{level}" for name, level in volunteer["skills"].items()
    )
    return {
        **{c: "" if volunteer.get(c) is None else volunteer[c] for c in CSV_COLUMNS},
        "languages": "; ".join(volunteer["languages"]),
        "skills": skills,
        "active": "yes" if volunteer["active"] else "no",
        "training_done": "yes" if volunteer["training_done"] else "no",
    }


def export_csv(db, stream):
    """Write every volunteer to the stream in the layout import reads; return the count."""
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for volunteer in list_volunteers(db):
        writer.writerow(csv_row(volunteer))
        count += 1
    return count


# ---- people served ----------------------------------------------------------------------


def _person_public(row):
    """Return a person row as the API and console show it."""
    return {
        **row,
        "phones": json.loads(row["phones"] or "[]"),
        "preferred_volunteers": json.loads(row["preferred_volunteers"] or "[]"),
    }


def add_person(db, fields, rules, *, actor):
    """Check and store a person served, with their phone numbers for caller ID; return them."""
    checked = check_person(fields, rules)
    stamp = now()
    with db.atomic():
        person_id = db["people"].insert({"name": checked["name"], "created_at": stamp}).last_pk
        _store_person(db, person_id, checked)
        record_event(db, None, actor, "person_added", {"person": person_id})
    return get_person(db, person_id)


def update_person(db, person_id, changes, rules, *, actor):
    """Change some of a person's fields, checking the whole record again; return them."""
    with db.atomic():
        before = get_person(db, person_id)
        _unknown(changes, PERSON_FIELDS)
        merged = {k: before[k] for k in PERSON_FIELDS} | dict(changes)
        if "postcode" in changes and not {"lat", "lon"} & set(changes):
            # A new postcode moves the person: look its place up again.
            merged["lat"] = merged["lon"] = None
        _store_person(db, person_id, check_person(merged, rules))
        after = get_person(db, person_id)
        diff = {k: [before[k], after[k]] for k in PERSON_FIELDS if before[k] != after[k]}
        record_event(db, None, actor, "person_changed", {"person": person_id, **diff})
    return after


def _store_person(db, person_id, checked):
    """Write a checked person and the phone numbers caller ID finds them by."""
    for volunteer_id in checked["preferred_volunteers"]:
        if not db["volunteers"].count_where("id = ?", [volunteer_id]):
            raise BadField("preferred_volunteers", f"no volunteer {volunteer_id}")
    for phone in checked["phones"]:
        if db["person_phones"].count_where("phone = ? AND person_id != ?", [phone, person_id]):
            raise BadField("phones", f"{phone} already belongs to another person")
    row = {
        **checked,
        "phones": json.dumps(checked["phones"]),
        "preferred_volunteers": json.dumps(checked["preferred_volunteers"]),
        "updated_at": now(),
    }
    db["people"].update(person_id, row)
    db["person_phones"].delete_where("person_id = ?", [person_id])
    db["person_phones"].insert_all(
        {"phone": phone, "person_id": person_id} for phone in checked["phones"]
    )


def get_person(db, person_id):
    """Return one person served, or raise PersonNotFound."""
    rows = list(db["people"].rows_where("id = ?", [person_id]))
    if not rows:
        raise PersonNotFound(f"no person {person_id}")
    return _person_public(rows[0])


def list_people(db, *, limit=None):
    """Return the people served, by id."""
    return [_person_public(r) for r in db["people"].rows_where(order_by="id", limit=limit)]


def link_request(db, request_id, person_id, *, actor):
    """Record that a request was made by (or for) a person, audited; return the request."""
    get_person(db, person_id)
    return queue.update(
        db, request_id, {"person_id": person_id}, actor=actor, action="person_linked"
    )


def find_person_by_phone(db, phone):
    """Return the person a caller ID belongs to, or None."""
    row = db.execute("SELECT person_id FROM person_phones WHERE phone = ?", [phone]).fetchone()
    return get_person(db, row[0]) if row else None


# ---- matching's view of the registry ----------------------------------------------------


def workload(db, *, window_days=30):
    """Return {volunteer id: (open, recent, total, rating, ratings)} from accepted offers.

    Accepted offers are those accepted, checked in or done (app/visits.py). Open jobs are
    the ones whose request is not done or cancelled; recent ones were
    accepted within window_days. Ratings arrive with the senior's rating call (a later issue).
    """
    since = (datetime.now(UTC) - timedelta(days=window_days)).isoformat(timespec="seconds")
    rows = db.execute(
        "SELECT a.volunteer_id, SUM(r.status NOT IN ('done', 'cancelled')),"
        " SUM(a.answered_at >= ?), COUNT(*) FROM assignments a"
        " JOIN requests r ON r.id = a.request_id"
        " WHERE a.state IN ('accepted', 'checked_in', 'done') GROUP BY a.volunteer_id",
        [since],
    ).fetchall()
    return {vid: (int(o or 0), int(rc or 0), int(t), None, 0) for vid, o, rc, t in rows}


def matching_volunteers(db, stats=None):
    """Return the active volunteers as matching.Volunteer, with their workload."""
    stats = workload(db) if stats is None else stats
    result = []
    for v in list_volunteers(db, active=True):
        if v.get("opted_out_at"):
            continue  # replied STOP: never offered again
        open_jobs, recent, total, rating, ratings = stats.get(v["id"], (0, 0, 0, None, 0))
        result.append(
            matching.Volunteer(
                id=v["id"],
                name=v["name"],
                skills=v["skills"],
                languages=tuple(v["languages"]),
                region=v["region"],
                lat=v["lat"],
                lon=v["lon"],
                slots=parse_slots(v["availability"] or ""),
                exceptions=parse_exceptions(v["exceptions"] or ""),
                max_open=v["max_open"],
                active=v["active"],
                training_done=v["training_done"],
                open_jobs=open_jobs,
                recent_jobs=recent,
                total_jobs=total,
                rating=rating,
                ratings=ratings,
            )
        )
    return result


def matching_pool(app, db):
    """Return the active volunteers as a matching.Pool, rebuilt only after the registry changed."""
    version = db.execute("SELECT version FROM volunteers_version WHERE id = 1").fetchone()[0]
    cached = app.extensions.get("carecall.matching_pool")
    if cached is None or cached[0] != version:
        _, weights = rules_for(app)
        stats = workload(db, window_days=weights.fairness_window_days)
        pool = matching.Pool(matching_volunteers(db, stats), default_level=weights.default_level)
        cached = app.extensions["carecall.matching_pool"] = (version, pool)
    return cached[1]


def suggest(app, db, request, *, when=None, override_language=False, limit=10):
    """Rank volunteers for a request as of now (or for `when`); return (need, ranking)."""
    rules, weights = rules_for(app)
    need = need_for(db, request, rules)
    if when is not None:
        need = replace(need, when=when)
    ranking = matching.rank(
        need,
        matching_pool(app, db),
        weights=weights,
        now=datetime.now(UTC),
        tz=ZoneInfo(app.config["COORDINATOR_TIMEZONE"]),
        limit=limit,
        override_language=override_language,
    )
    return need, ranking


def need_for(db, request, rules):
    """Return what a request needs from a volunteer, filled in from the person who asked."""
    person = None
    if request.get("person_id"):
        person = get_person(db, request["person_id"])
    elif request.get("phone"):
        person = find_person_by_phone(db, request["phone"])
    person = person or {}
    region = request.get("region") or person.get("region")
    lat, lon = person.get("lat"), person.get("lon")
    place = rules.place(region)
    if lat is None and place:
        # No home on file: the middle of the request's region is the best guess.
        lat, lon = place.lat, place.lon
    return matching.Need(
        category=request.get("category") or "other",
        language=person.get("language") or request.get("language"),
        region=region,
        lat=lat,
        lon=lon,
        preferred=tuple(person.get("preferred_volunteers") or ()),
        person=person.get("name"),
    )


# ---- commands ---------------------------------------------------------------------------


@click.group("volunteers")
def volunteers_cli():
    """Manage the volunteer registry.

    Example: flask --app app volunteers import volunteers.csv
    """


@volunteers_cli.command("import")
@with_appcontext
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
def volunteers_import(file):
    """Import volunteers from a CSV, all or nothing: any bad row and none are imported.

    Columns: name,phone,languages,skills,region,lat,lon,availability,max_open and
    optionally postcode,exceptions,active,training_done,notes,offer_channel (sms or call).
    Lists are separated by `;`: languages `en; ko`, skills `groceries:3; transport`, availability
    `mon 09:00-12:00; wed 14:00-18:00`, exceptions `2026-12-24..2026-12-31`.

    Example: flask --app app volunteers import volunteers.csv
    """
    rules, _ = rules_for(current_app)
    try:
        added, updated = import_csv(get_db(), io.StringIO(file.read()), rules, actor=cli_actor())
    except PeopleError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {added + updated} volunteers ({added} new, {updated} updated)")


@volunteers_cli.command("export")
@with_appcontext
@click.option(
    "--output", "-o", type=click.File("w", encoding="utf-8"), default="-", show_default=True
)
def volunteers_export(output):
    """Write every volunteer as CSV, in the layout `volunteers import` reads.

    Example: flask --app app volunteers export -o volunteers.csv
    """
    count = export_csv(get_db(), output)
    click.echo(f"exported {count} volunteers", err=True)


@volunteers_cli.command("list")
@with_appcontext
@click.option("--all", "show_all", is_flag=True, help="Include paused volunteers.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per volunteer.")
def volunteers_list(show_all, as_json):
    """List volunteers: id, name, phone, region, skills and languages.

    Example: flask --app app volunteers list --all
    """
    for v in list_volunteers(get_db(), active=None if show_all else True):
        if as_json:
            click.echo(json.dumps(v, ensure_ascii=False))
            continue
        paused = "" if v["active"] else "  (paused)"
        skills = csv_row(v)["skills"]
        click.echo(
            f"{v['id']:>5}  {v['name']:<24} {v['phone']:<16} {v['region'] or '-':<12}"
            f" {skills}  [{', '.join(v['languages'])}]{paused}"
        )


@click.group("people")
def people_cli():
    """Manage the people CareCall serves.

    Example: flask --app app people add "May Chen" --phone +15551234567 --postcode riverside
    """


@people_cli.command("add")
@with_appcontext
@click.argument("name")
@click.option("--phone", "phones", multiple=True, help="E.164 number (repeatable).")
@click.option("--address")
@click.option("--postcode", help="Postcode or neighbourhood from places.toml.")
@click.option("--lat", type=float)
@click.option("--lon", type=float)
@click.option("--region")
@click.option("--language", help="Language code, e.g. en or ko.")
@click.option("--accessibility", help='e.g. "hard of hearing; speak slowly".')
@click.option("--prefer", "preferred", multiple=True, type=ROW_ID, help="Preferred volunteer id.")
@click.option("--emergency-contact")
@click.option("--notes")
def people_add(name, phones, preferred, **fields):
    """Register a person served, so their calls and requests find them.

    Example: flask --app app people add "May Chen" --phone +15551234567 --language ko
    """
    rules, _ = rules_for(current_app)
    fields = {k: v for k, v in fields.items() if v is not None}
    fields |= {"name": name, "phones": list(phones), "preferred_volunteers": list(preferred)}
    try:
        person = add_person(get_db(), fields, rules, actor=cli_actor())
    except PeopleError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"person {person['id']}: {person['name']}")


@people_cli.command("link")
@with_appcontext
@click.argument("request_id", type=ROW_ID)
@click.argument("person_id", type=ROW_ID)
def people_link(request_id, person_id):
    """Record who a request is for, when caller ID could not tell (a shared or unknown phone).

    Example: flask --app app people link 42 7
    """
    try:
        link_request(get_db(), request_id, person_id, actor=cli_actor())
    except (PeopleError, queue.RequestNotFound) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"request {request_id} is for person {person_id}")


@people_cli.command("list")
@with_appcontext
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per person.")
def people_list(as_json):
    """List the people served: id, name, phones, region and language.

    Example: flask --app app people list --json
    """
    for p in list_people(get_db()):
        if as_json:
            click.echo(json.dumps(p, ensure_ascii=False))
        else:
            click.echo(
                f"{p['id']:>5}  {p['name']:<24} {', '.join(p['phones']) or '-':<16}"
                f" {p['region'] or '-':<12} {p['language'] or '-'}"
            )


def init_app(app):
    """Register the volunteers and people commands."""
    app.cli.add_command(volunteers_cli)
    app.cli.add_command(people_cli)
