"""The volunteer and people-served registries: checked rows, all-or-nothing CSV, commands."""

import csv
import io

import pytest

from app import people, queue
from app.db import connect, migrate
from tests.test_console import add_request

HEADER = "name,phone,languages,skills,region,lat,lon,availability,max_open"
GOOD = "Ann Lee,+15550000101,en; ko,groceries:3; transport,riverside,51.51,-0.09,mon 09:00-12:00,2"


@pytest.fixture
def rules(app):
    """Return the app's registry rules (skills from the categories, places from data)."""
    return people.rules_for(app)[0]


def import_text(db, rules, text):
    """Import CSV text; return (added, updated)."""
    return people.import_csv(db, io.StringIO(text), rules, actor="test")


def csv_text(*rows):
    """Return CSV text with the columns the rows use, in the export's order."""
    columns = [
        c
        for c in people.CSV_COLUMNS
        if c in people.REQUIRED_COLUMNS or any(c in row for row in rows)
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def row(**fields):
    """Return a volunteer CSV row with sensible defaults."""
    return {"name": "Bo", "phone": "+15550000102", "languages": "en", "skills": "meals"} | fields


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            row(skills="groceries:3; transport", languages="en; ko", lat="51.51", lon="-0.09"),
            {"skills": {"groceries": 3, "transport": None}, "languages": ["en", "ko"]},
        ),
        # A neighbourhood or postcode stands in for lat/lon, and gives the region.
        (
            row(postcode="E1 6AN"),
            {"lat": 51.5205, "lon": -0.075, "region": "riverside", "postcode": "E1 6AN"},
        ),
        (
            row(
                phone="+44 20 7946 0958",
                languages="EN",
                skills="Tech_Help:1",
                availability="Tuesday 9:00-12:30; mon 08:00-09:00",
                max_open="",
            ),
            {
                "phone": "+442079460958",
                "languages": ["en"],
                "skills": {"tech_help": 1},
                "availability": "mon 08:00-09:00; tue 09:00-12:30",
                "max_open": 1,
            },
        ),
        (
            row(
                availability="sat 10:00-24:00",
                max_open="3",
                exceptions="2026-12-24; 2026-12-27..2027-01-02",
                active="no",
                training_done="yes",
                notes="Drives a van",
            ),
            {
                "exceptions": "2026-12-24; 2026-12-27..2027-01-02",
                "active": False,
                "training_done": True,
                "notes": "Drives a van",
                "max_open": 3,
            },
        ),
    ],
)
def test_good_rows_are_imported_normalised(db, rules, fields, expected):
    assert import_text(db, rules, csv_text(fields)) == (1, 0)
    [volunteer] = people.list_volunteers(db)
    assert {k: volunteer[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ("Bo,5550000102,en,meals,,,,tue 10:00-11:00,1", "phone", "not E.164"),
        ("Bo,+1555,en,meals,,,,tue 10:00-11:00,1", "phone", "wrong number of digits"),
        ("Bo,+15550000102,en,knitting,,,,tue 10:00-11:00,1", "skills", "unknown skill"),
        ("Bo,+15550000102,en,meals:9,,,,tue 10:00-11:00,1", "skills", "level must be 1 to 3"),
        ("Bo,+15550000102,en,,,,,tue 10:00-11:00,1", "skills", "at least one skill"),
        ("Bo,+15550000102,en,meals,,,,tue 10-11,1", "availability", "not like"),
        ("Bo,+15550000102,en,meals,,,,tue 12:00-11:00,1", "availability", "end must be after"),
        ("Bo,+15550000102,en,meals,,,,xyz 10:00-11:00,1", "availability", "day must be"),
        ("Bo,+15550000102,en,meals,,,,tue 25:00-26:00,1", "availability", "not a time"),
        ("Bo,+15550000102,english!,meals,,,,,1", "languages", "not a language code"),
        ("Bo,+15550000102,en,meals,,95,0,,1", "lat", "from -90 to 90"),
        ("Bo,+15550000102,en,meals,,51.5,,,1", "lon", "both lat and lon"),
        ("Bo,+15550000102,en,meals,,,,,many", "max_open", "whole number"),
        (",+15550000102,en,meals,,,,,1", "name", "is required"),
        ("Bo,+15550000101,en,meals,,,,,1", "phone", "same number as row 2"),
    ],
)
def test_one_bad_row_names_row_and_field_and_imports_nothing(db, rules, row, field, words):
    text = f"{HEADER}\n{GOOD}\n{row}\n"
    with pytest.raises(people.ImportFailed) as caught:
        import_text(db, rules, text)
    [(number, named, message)] = caught.value.errors
    assert (number, named) == (3, field)
    assert words in message
    assert f"row 3, {field}:" in str(caught.value)
    assert db["volunteers"].count == 0


def test_every_bad_row_is_reported_and_existing_volunteers_are_untouched(db, rules):
    import_text(db, rules, f"{HEADER}\n{GOOD}\n")
    changed = GOOD.replace("Ann Lee", "Ann Changed")
    text = f"{HEADER}\n{changed}\nBo,555,en,meals,,,,,1\nCy,+15550000103,en,chess,,,,,1\n"
    with pytest.raises(people.ImportFailed) as caught:
        import_text(db, rules, text)
    assert [(r, f) for r, f, _ in caught.value.errors] == [(3, "phone"), (4, "skills")]
    assert [v["name"] for v in people.list_volunteers(db)] == ["Ann Lee"]


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("name,phone,languages,skills,region,lat,lon,availability", "missing column max_open"),
        (HEADER + ",skils", "unknown column skils"),
    ],
)
def test_bad_header_is_row_1(db, rules, header, words):
    with pytest.raises(people.ImportFailed) as caught:
        import_text(db, rules, f"{header}\n{GOOD}\n")
    assert caught.value.errors[0][:2] == (1, "header") and words in caught.value.errors[0][2]


def test_reimport_updates_by_phone(db, rules):
    import_text(db, rules, f"{HEADER}\n{GOOD}\n")
    assert import_text(db, rules, f"{HEADER}\n{GOOD.replace(',2', ',4')}\n") == (0, 1)
    [volunteer] = people.list_volunteers(db)
    assert volunteer["max_open"] == 4


def test_export_round_trips(db, rules, tmp_path):
    import_text(db, rules, f"{HEADER}\n{GOOD}\n")
    extra = row(postcode="E1 6AN", exceptions="2026-12-24", active="no", notes="Van, big")
    import_text(db, rules, csv_text(extra))
    first = io.StringIO()
    assert people.export_csv(db, first) == 2
    migrate(tmp_path / "second.db")
    second_db = connect(tmp_path / "second.db")
    assert people.import_csv(second_db, io.StringIO(first.getvalue()), rules, actor="t") == (2, 0)
    second = io.StringIO()
    people.export_csv(second_db, second)
    assert second.getvalue() == first.getvalue()
    exported = list(csv.DictReader(io.StringIO(first.getvalue())))
    assert tuple(exported[0]) == people.CSV_COLUMNS
    assert exported[1]["notes"] == "Van, big" and exported[1]["active"] == "no"


def test_cli_import_bad_file_exits_non_zero_naming_row_and_field(runner, db, tmp_path):
    path = tmp_path / "volunteers.csv"
    path.write_text(f"{HEADER}\n{GOOD}\nBo,+15550000102,en,knitting,,,,,1\n")
    result = runner.invoke(args=["volunteers", "import", str(path)])
    assert result.exit_code != 0
    assert "row 3, skills: unknown skill 'knitting'" in result.output
    assert db["volunteers"].count == 0


def test_cli_import_export_and_list(runner, db, tmp_path):
    path = tmp_path / "volunteers.csv"
    path.write_text(f"{HEADER}\n{GOOD}\n")
    result = runner.invoke(args=["volunteers", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert "imported 1 volunteers (1 new, 0 updated)" in result.output
    out = tmp_path / "out.csv"
    assert runner.invoke(args=["volunteers", "export", "-o", str(out)]).exit_code == 0
    assert out.read_text().splitlines()[1].startswith("Ann Lee,+15550000101,en; ko,")
    listed = runner.invoke(args=["volunteers", "list"]).output
    assert "Ann Lee" in listed and "groceries:3; transport" in listed


def test_paused_volunteers_are_listed_only_with_all(runner, db, rules):
    import_text(db, rules, f"{HEADER}\n{GOOD}\n")
    people.update_volunteer(db, 1, {"active": False}, rules, actor="test")
    assert "Ann Lee" not in runner.invoke(args=["volunteers", "list"]).output
    assert "(paused)" in runner.invoke(args=["volunteers", "list", "--all"]).output


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"phone": "12"}, "phone"),
        ({"skills": ["gardening"]}, "skills"),
        ({"colour": "blue"}, "colour"),
        ({"postcode": "Atlantis"}, "postcode"),
    ],
)
def test_bad_changes_change_nothing(db, rules, changes, field):
    import_text(db, rules, f"{HEADER}\n{GOOD}\n")
    before = people.get_volunteer(db, 1)
    with pytest.raises(people.BadField) as caught:
        people.update_volunteer(db, 1, changes, rules, actor="test")
    assert caught.value.field == field
    assert people.get_volunteer(db, 1) == before


def test_a_new_postcode_moves_the_volunteer_and_is_audited(db, rules):
    import_text(db, rules, f"{HEADER}\n{GOOD}\n")
    moved = people.update_volunteer(db, 1, {"postcode": "SW4 0LG"}, rules, actor="user:amy")
    assert (moved["lat"], moved["lon"], moved["region"]) == (51.462, -0.1385, "riverside")
    [row] = db["events"].rows_where("action = 'volunteer_changed'")
    assert row["actor"] == "user:amy" and '"lat": [51.51, 51.462]' in row["detail"]


def test_people_add_and_list_and_caller_id(runner, db):
    result = runner.invoke(
        args=["people", "add", "May Chen", "--phone", "+15550000001", "--postcode", "E1 6AN"]
        + ["--language", "ko", "--accessibility", "hard of hearing; speak slowly"]
    )
    assert result.exit_code == 0, result.output
    person = people.find_person_by_phone(db, "+15550000001")
    assert (person["name"], person["region"], person["language"]) == ("May Chen", "riverside", "ko")
    assert "May Chen" in runner.invoke(args=["people", "list"]).output
    again = runner.invoke(args=["people", "add", "Other", "--phone", "+15550000001"])
    assert again.exit_code != 0 and "already belongs to another person" in again.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--phone", "0207"], "phones: '0207' is not E.164"),
        (["--prefer", "42"], "no volunteer 42"),
        (["--lat", "51.5"], "give both lat and lon"),
    ],
)
def test_people_add_refuses_bad_fields(runner, db, args, words):
    result = runner.invoke(args=["people", "add", "May Chen", *args])
    assert result.exit_code != 0 and words in result.output
    assert db["people"].count == 0


def test_need_comes_from_the_person_who_called(db, rules):
    import_text(db, rules, f"{HEADER}\n{GOOD}\n")
    people.add_person(
        db,
        {"name": "May Chen", "phones": "+15550000001", "postcode": "E1 6AN", "language": "ko"}
        | {"preferred_volunteers": [1]},
        rules,
        actor="test",
    )
    need = people.need_for(db, add_request(db, phone="+15550000001", language="en"), rules)
    assert (need.category, need.language, need.region) == ("groceries", "ko", "riverside")
    assert (need.lat, need.lon, need.preferred, need.person) == (51.5205, -0.075, (1,), "May Chen")
    stranger = people.need_for(db, add_request(db, phone="+15559999999", region="hillcrest"), rules)
    assert (stranger.lat, stranger.lon, stranger.person) == (51.586, -0.143, None)


def test_migration_links_requests_to_people_and_keeps_search(db):
    assert "person_id" in db["requests"].columns_dict
    triggers = {t.name for t in db.triggers}
    assert {"requests_ai", "requests_ad", "requests_au"} <= triggers


def test_people_link_ties_a_request_to_its_person(runner, db, rules):
    people.add_person(db, {"name": "May Chen", "language": "ko"}, rules, actor="test")
    item = add_request(db, phone="+15559999999")
    result = runner.invoke(args=["people", "link", str(item["id"]), "1"])
    assert result.exit_code == 0, result.output
    assert people.need_for(db, queue.get(db, item["id"]), rules).person == "May Chen"
    [event] = [e for e in queue.events(db, item["id"]) if e["action"] == "person_linked"]
    assert event["detail"] == {"person_id": [None, 1]}
    missing = runner.invoke(args=["people", "link", str(item["id"]), "9"])
    assert missing.exit_code != 0 and "no person 9" in missing.output


@pytest.mark.parametrize(
    ("channel", "phone", "linked"),
    [
        ("phone", "+15550000001", True),
        ("voicemail", "+15550000001", True),
        ("phone", "+15559999999", False),
        ("kiosk", None, False),
    ],
)
def test_caller_id_links_a_new_request_to_its_person(db, rules, channel, phone, linked):
    """A request from a known number belongs to that person from the moment it arrives."""
    person = people.add_person(
        db, {"name": "May Chen", "phones": "+15550000001"}, rules, actor="test"
    )
    request, _ = queue.create(db, channel=channel, phone=phone)
    assert request["person_id"] == (person["id"] if linked else None)
    [received] = queue.events(db, request["id"])
    assert received["detail"].get("person") == (person["id"] if linked else None)
