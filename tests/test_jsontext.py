"""JSON from outside, bounded: deep nesting and lone surrogates are refused before use."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import jsontext


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": [1, {"b": 2}]}', {"a": [1, {"b": 2}]}),
        ("[" * 16 + "]" * 16, [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]),
        ('{"note": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', {"note": "[" * 30}),  # text, not nesting
        ('{"note": "a \\" [[[[[[[[[[[[[[[[[[[[[[["}', {"note": 'a " ' + "[" * 23}),
        ('"caf\\u00e9"', "café"),
        (b'{"a": 1}', {"a": 1}),
    ],
)
def test_ordinary_json_is_read(text, expected):
    assert jsontext.loads(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[" * 17 + "]" * 17, "nested more than 16"),
        ("[" * 100000 + "]" * 100000, "nested more than 16"),
        ("[" * 100000, "nested more than 16"),
        ('["\\ud800", 1]', "lone surrogate"),
        ('{"\\udfff": 1}', "lone surrogate"),
        (b"\xff\xfe", "UTF-8"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_json_is_a_bad_json_error_with_a_plain_message(text, says):
    with pytest.raises(jsontext.BadJson, match=says):
        jsontext.loads(text)


@given(st.one_of(st.text(max_size=300), st.from_regex(r'[\[\]{}",:0-9a\\u]{0,80}')))
def test_any_text_is_read_storable_or_refused_with_bad_json(text):
    try:
        value = jsontext.loads(text)
    except jsontext.BadJson:
        return
    # What is read can always be stored: UTF-8 text, nested no deeper than the limit.
    dumped = json.dumps(value, ensure_ascii=False)
    dumped.encode("utf-8")
    assert jsontext.nesting(dumped) <= jsontext.MAX_DEPTH
