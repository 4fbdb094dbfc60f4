"""Templates meet values once: no doubled stop after a transcript, no doubled label words."""

import pytest

from app.flows import load_flow
from app.sentences import fill


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        (
            "I heard: {t}.",
            {"t": "I need a ride on Friday morning?"},
            "I heard: I need a ride on Friday morning.",
        ),
        ("I heard: {t}.", {"t": "I need help."}, "I heard: I need help."),
        ("I heard: {t}.", {"t": "Help me!  "}, "I heard: Help me."),
        ("I heard: {t}.", {"t": "Well..."}, "I heard: Well."),
        # Marks and spaces mixed at the end: one stop, the template's.
        ("I heard: {t}.", {"t": "on Tuesday. ."}, "I heard: on Tuesday."),
        ("I heard: {t}.", {"t": "on Tuesday. … "}, "I heard: on Tuesday."),
        ("I heard: {t}.", {"t": "at the centre ?"}, "I heard: at the centre."),
        ("I heard: {t}.", {"t": "heard: a noise"}, "I heard: heard: a noise."),
        ("I heard: {t}", {"t": "I need help?"}, "I heard: I need help?"),
        ("you need help with {c}.", {"c": "help with health"}, "you need help with health."),
        ("you need help with {c}.", {"c": "Help with letters"}, "you need help with letters."),
        (
            "you need help with {c}.",
            {"c": "a ride somewhere"},
            "you need help with a ride somewhere.",
        ),
        ("you need help with {c}.", {"c": "help"}, "you need help with help."),
        ("number {n}, made {d}, is", {"n": "4 2 7", "d": "today"}, "number 4 2 7, made today, is"),
        ("{a}{b}.", {"a": "x", "b": ", coming at 10 a.m."}, "x, coming at 10 a.m."),
    ],
)
def test_a_value_fits_its_template(template, values, expected):
    assert fill(template, **values) == expected


@pytest.mark.parametrize(
    ("prompt", "values", "expected"),
    [
        (
            "heard",
            {"transcript": "Can someone drive me to the doctor on Friday morning?"},
            "I heard: Can someone drive me to the doctor on Friday morning.",
        ),
        (
            "heard",
            {"transcript": "I need a lift to the community center?"},
            "I heard: I need a lift to the community center.",
        ),
        ("heard", {"transcript": "It is on Tuesday. ."}, "I heard: It is on Tuesday."),
    ],
)
def test_the_phone_readback_says_each_word_once(app, prompt, values, expected):
    flow = load_flow(app.config["FLOWS_DIR"], "en")
    assert flow.prompt(prompt, **values) == expected


@pytest.mark.parametrize(
    ("category", "said"),
    [
        ("help with health, medicine or a doctor's visit", "help with health, medicine or a"),
        ("shopping and errands", "help with shopping and errands for Ann"),
    ],
)
def test_an_offer_by_sms_says_help_with_once(app, category, said):
    from app import dispatch

    values = {"category": category, "person": "Ann", "place": "Elm St", "when": "today"}
    with app.app_context():
        text = dispatch._text({"languages": ["en"]}, "offer", code="12", **values)
    assert said in text and "help with help with" not in text
