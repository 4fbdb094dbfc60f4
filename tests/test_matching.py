"""Ranked matching: who may be suggested, in what order, and the reasons given."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.availability import BadAvailability, Slot, next_free, parse_exceptions, parse_slots
from app.matching import (
    COMPONENTS,
    MatchingDataError,
    Need,
    Pool,
    Volunteer,
    haversine_km,
    load_weights,
    rank,
)

WEIGHTS = load_weights(Path(__file__).resolve().parent.parent / "ivr_flows" / "matching.toml")
# Monday 30 November 2026, 10:00 UTC.
MONDAY_10 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
HOME = (51.5079, -0.0877)  # riverside in places.toml


def volunteer(id, **fields):
    """Return a skilled, free, nearby English-speaking volunteer, changed by fields."""
    base = {
        "name": f"V{id}",
        "skills": {"groceries": None},
        "languages": ("en",),
        "region": "riverside",
        "lat": HOME[0],
        "lon": HOME[1],
        "slots": parse_slots("mon 09:00-12:00"),
        "max_open": 2,
        "training_done": True,
    }
    return Volunteer(id=id, **(base | fields))


NEED = Need("groceries", "en", "riverside", *HOME)


def ids(ranking):
    """Return the volunteer ids of a ranking, best first."""
    return [m.volunteer_id for m in ranking.matches]


@pytest.mark.parametrize(
    ("text", "slots"),
    [
        ("mon 09:00-12:00; wed 14:00-18:00", "mon 09:00-12:00; wed 14:00-18:00"),
        ("Wednesday 14:00 - 18:00;mon 9:00-12:00;", "mon 09:00-12:00; wed 14:00-18:00"),
        ("sun 00:00-24:00", "sun 00:00-24:00"),
        ("", ""),
        ("mon-wed 09:00-17:00", "mon 09:00-17:00; tue 09:00-17:00; wed 09:00-17:00"),
        ("Saturday, Sunday 10:00-12:00", "sat 10:00-12:00; sun 10:00-12:00"),
        ("sat-mon 8:00-9:00", "mon 08:00-09:00; sat 08:00-09:00; sun 08:00-09:00"),
        ("mon, wed-thu 9:00-10:00", "mon 09:00-10:00; wed 09:00-10:00; thu 09:00-10:00"),
        (
            "mon-fri 9:00-12:00; mon 09:00-12:00",
            "; ".join(f"{d} 09:00-12:00" for d in ("mon", "tue", "wed", "thu", "fri")),
        ),
    ],
)
def test_slots_are_read_and_written_back(text, slots):
    assert "; ".join(str(s) for s in parse_slots(text)) == slots


@pytest.mark.parametrize(
    "text",
    [
        "monday",
        "mon 9-12",
        "mon 12:00-09:00",
        "mon 09:60-10:00",
        "fun 09:00-10:00",
        "mon-fun 09:00-10:00",
        "mon-tue-wed 09:00-10:00",
        "mon,,tue 09:00-10:00",
        "- 09:00-10:00",
    ],
)
def test_bad_slots_are_refused(text):
    with pytest.raises(BadAvailability):
        parse_slots(text)


@pytest.mark.parametrize("text", ["2026-02-30", "24/12/2026", "2026-12-31..2026-12-01"])
def test_bad_holidays_are_refused(text):
    with pytest.raises(BadAvailability):
        parse_exceptions(text)


@pytest.mark.parametrize(
    ("slots", "holidays", "when", "horizon_h", "expected"),
    [
        ("mon 09:00-12:00", "", MONDAY_10, 168, (0, "mon 09:00-12:00")),
        ("mon 09:00-10:00", "", MONDAY_10, 168, (7 * 1440 - 60, "mon 09:00-10:00")),
        ("mon 11:00-12:00; tue 08:00-09:00", "", MONDAY_10, 168, (60, "mon 11:00-12:00")),
        (
            "mon 09:00-12:00; tue 08:00-09:00",
            "2026-11-30",
            MONDAY_10,
            168,
            (1320, "tue 08:00-09:00"),
        ),
        ("tue 08:00-09:00", "", MONDAY_10, 4, None),
        ("mon 09:00-12:00", "2026-11-30..2026-12-31", MONDAY_10, 168, None),
        ("", "", MONDAY_10, 168, None),
    ],
)
def test_next_free(slots, holidays, when, horizon_h, expected):
    found = next_free(parse_slots(slots), parse_exceptions(holidays), when, horizon_h * 60)
    assert (found and (found[0], str(found[1]))) == expected


@pytest.mark.parametrize(
    ("changes", "need", "reason"),
    [
        ({"skills": {"groceries": 3}}, NEED, "groceries skill, level 3 of 3"),
        ({}, NEED, "groceries skill"),
        ({}, NEED, "free now, until 12:00"),
        ({"slots": parse_slots("tue 14:00-16:00")}, NEED, "free from Tue 14:00 (in 28.0 h)"),
        ({"lat": 51.5079, "lon": -0.0577}, NEED, "2.1 km away"),
        ({"lat": None, "lon": None}, NEED, "distance unknown"),
        ({"open_jobs": 1, "max_open": 3}, NEED, "1 of 3 open jobs"),
        (
            {"languages": ("en", "ko")},
            replace(NEED, language="ko"),
            "speaks Korean (1 volunteer does)",
        ),
        ({}, replace(NEED, language="ko"), "nobody eligible speaks Korean: language set aside"),
        ({"rating": 4.64, "ratings": 12, "total_jobs": 12}, NEED, "rated 4.6 of 5 from 12 visits"),
        ({}, NEED, "no ratings yet"),
        ({}, NEED, "new volunteer: no jobs yet"),
        ({"total_jobs": 9, "recent_jobs": 2}, NEED, "2 jobs in the last 30 days"),
        ({}, NEED, "lives in riverside"),
        ({"training_done": False}, NEED, "training not done yet"),
        ({}, replace(NEED, preferred=(1,), person="Mrs Chen"), "Mrs Chen's preferred volunteer"),
        (
            {},
            replace(NEED, when=datetime(2026, 11, 30, 11, 0, tzinfo=UTC)),
            "free at the requested time, until 12:00",
        ),
    ],
)
def test_reasons_say_why_in_words_and_numbers(changes, need, reason):
    ranking = rank(need, [volunteer(1, **changes)], weights=WEIGHTS, now=MONDAY_10)
    [match] = ranking.matches
    assert reason in match.reasons


@pytest.mark.parametrize(
    ("changes", "need"),
    [
        ({"active": False}, NEED),
        ({"skills": {"transport": 3}}, NEED),
        ({"open_jobs": 2, "max_open": 2}, NEED),
        ({"max_open": 0}, NEED),
        ({"slots": ()}, NEED),
        ({"exceptions": parse_exceptions("2026-11-23..2026-12-08")}, NEED),
        # Asked for Tuesday 10:00; free only Monday mornings.
        ({}, replace(NEED, when=datetime(2026, 12, 1, 10, 0, tzinfo=UTC))),
        ({"lat": 52.5, "lon": -1.9}, NEED),  # Birmingham: beyond max_distance_km
    ],
)
def test_never_suggested(changes, need):
    pool = [volunteer(1, **changes), volunteer(2, active=False)]
    assert rank(need, pool, weights=WEIGHTS, now=MONDAY_10).matches == ()


def test_better_fit_ranks_first_and_ties_go_to_the_lower_id():
    pool = [
        volunteer(5),
        volunteer(4, lat=51.6, lon=-0.2),  # farther
        volunteer(3),
        volunteer(2, open_jobs=1),  # busier
        volunteer(1, skills={"groceries": 3}),  # more skilled
    ]
    ranking = rank(NEED, pool, weights=WEIGHTS, now=MONDAY_10)
    assert ids(ranking) == [1, 3, 5, 2, 4]
    assert ids(rank(NEED, pool, weights=WEIGHTS, now=MONDAY_10, limit=2)) == [1, 3]
    assert [m.score for m in ranking.matches] == sorted(
        (m.score for m in ranking.matches), reverse=True
    )


def test_ties_cut_by_the_limit_are_deterministic():
    pool = [volunteer(i) for i in range(40, 0, -1)]
    assert ids(rank(NEED, pool, weights=WEIGHTS, now=MONDAY_10, limit=3)) == [1, 2, 3]


def test_the_preferred_volunteer_comes_first_even_with_a_lower_score():
    pool = [volunteer(1, skills={"groceries": 3}), volunteer(2, lat=51.6, lon=-0.2, languages=())]
    need = replace(NEED, preferred=(2,), language="ko")
    ranking = rank(need, pool, weights=WEIGHTS, now=MONDAY_10)
    assert ids(ranking) == [2, 1]
    assert ranking.matches[0].preferred and ranking.matches[0].score < ranking.matches[1].score


@pytest.mark.parametrize(
    ("languages", "override", "expected", "speakers", "set_aside"),
    [
        ({1: ("en",), 2: ("ko",)}, False, [2], 1, False),
        ({1: ("en",), 2: ("en",)}, False, [1, 2], 0, True),
        ({1: ("en",), 2: ("ko",)}, True, [2, 1], 1, True),
    ],
)
def test_shared_language_is_required_unless_nobody_speaks_it(
    languages, override, expected, speakers, set_aside
):
    pool = [volunteer(i, languages=langs) for i, langs in languages.items()]
    need = replace(NEED, language="ko")
    ranking = rank(need, pool, weights=WEIGHTS, now=MONDAY_10, override_language=override)
    assert ids(ranking) == expected
    assert (ranking.speakers, ranking.language_override) == (speakers, set_aside)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            {"rating": 4.8, "ratings": 5, "total_jobs": 5},
            {"rating": 3.0, "ratings": 5, "total_jobs": 5},
        ),
        ({"recent_jobs": 0, "total_jobs": 8}, {"recent_jobs": 6, "total_jobs": 8}),
        ({"total_jobs": 0}, {"total_jobs": 3, "recent_jobs": 0}),  # newcomers get a way in
        ({"slots": parse_slots("mon 09:00-12:00")}, {"slots": parse_slots("mon 13:00-14:00")}),
    ],
)
def test_ratings_fairness_newcomers_and_availability_order(a, b):
    pool = [volunteer(1, **b), volunteer(2, **a)]
    assert ids(rank(NEED, pool, weights=WEIGHTS, now=MONDAY_10)) == [2, 1]


def test_a_prebuilt_pool_ranks_like_a_list():
    pool = [volunteer(i, lat=HOME[0] + i / 1000) for i in range(1, 30)]
    ranked = rank(NEED, Pool(pool), weights=WEIGHTS, now=MONDAY_10)
    assert ranked == rank(NEED, pool, weights=WEIGHTS, now=MONDAY_10)
    assert ranked.eligible == 29 and len(ranked.matches) == 10


def test_haversine_matches_a_known_distance():
    # London to Paris is about 343.5 km.
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343.5, abs=1)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[weights]\nskill = 1.0\n", "lacks availability"),
        (
            "[weights]\n" + "".join(f"{k} = 1\n" for k in COMPONENTS) + "[limits]\nmax_speed = 3\n",
            "unknown limits max_speed",
        ),
        ("[weights]\n" + "".join(f"{k} = -1\n" for k in COMPONENTS), "0 or more"),
    ],
)
def test_bad_matching_data_is_refused(tmp_path, text, words):
    path = tmp_path / "matching.toml"
    path.write_text(text)
    with pytest.raises(MatchingDataError, match=words):
        load_weights(path)


# ---- properties -------------------------------------------------------------------------

CATEGORIES = ("groceries", "transport", "meals")
START = datetime(2026, 11, 30, tzinfo=UTC)

slots = st.builds(
    lambda day, start, length: Slot(day, start, min(1440, start + length)),
    st.integers(0, 6),
    st.integers(0, 1439),
    st.integers(1, 600),
)
holidays = st.builds(
    lambda offset, length: (
        date(2026, 11, 30) + timedelta(days=offset),
        date(2026, 11, 30) + timedelta(days=offset + length),
    ),
    st.integers(-10, 10),
    st.integers(0, 5),
)
volunteers = st.lists(
    st.fixed_dictionaries(
        {
            "skills": st.dictionaries(
                st.sampled_from(CATEGORIES), st.none() | st.integers(1, 3), max_size=3
            ),
            "languages": st.lists(st.sampled_from(("en", "ko", "es")), max_size=2).map(tuple),
            "slots": st.lists(slots, max_size=3).map(lambda s: tuple(sorted(set(s)))),
            "exceptions": st.lists(holidays, max_size=2).map(tuple),
            "max_open": st.integers(0, 3),
            "open_jobs": st.integers(0, 4),
            "active": st.booleans(),
            "lat": st.none() | st.floats(51.0, 52.5),
            "lon": st.just(-0.1),
            "recent_jobs": st.integers(0, 5),
        }
    ),
    max_size=30,
)


def could_help(v, need, now, horizon_minutes):
    """Say, the slow way, whether a volunteer may be suggested at all."""
    if not v.active or need.category not in v.skills or v.open_jobs >= v.max_open:
        return False
    if next_free(v.slots, v.exceptions, now, horizon_minutes) is None:
        return False
    if v.lat is None:
        return True
    return haversine_km(v.lat, v.lon, need.lat, need.lon) <= WEIGHTS.max_distance_km


@settings(max_examples=200, deadline=None)
@given(
    rows=volunteers,
    category=st.sampled_from(CATEGORIES),
    language=st.none() | st.sampled_from(("en", "ko", "es")),
    minutes=st.integers(0, 14 * 1440),
    requested=st.none() | st.integers(0, 7 * 1440),
    preferred=st.lists(st.integers(1, 30), max_size=3).map(tuple),
    limit=st.integers(1, 12),
)
def test_never_suggests_paused_unskilled_unavailable_or_fully_loaded(
    rows, category, language, minutes, requested, preferred, limit
):
    pool = [Volunteer(id=i + 1, name=f"V{i + 1}", **row) for i, row in enumerate(rows)]
    now = START + timedelta(minutes=minutes)
    when = None if requested is None else now + timedelta(minutes=requested)
    need = Need(category, language, "riverside", *HOME, when=when, preferred=preferred)
    ranking = rank(need, pool, weights=WEIGHTS, now=now, limit=limit)
    hours = WEIGHTS.horizon_hours if when is None else WEIGHTS.requested_horizon_hours
    allowed = {v.id for v in pool if could_help(v, need, when or now, int(hours * 60))}
    found = ids(ranking)
    assert set(found) <= allowed
    assert len(found) == len(set(found)) <= limit
    if language is None:
        assert ranking.eligible == len(allowed)
        assert len(found) == min(limit, len(allowed))
    # Preferred volunteers first, then by score.
    keys = [(not m.preferred, -m.score) for m in ranking.matches]
    assert keys == sorted(keys)
