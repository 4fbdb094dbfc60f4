"""JSON from outside, bounded: nesting and text checked before anything else reads it.

Python's json parser recurses once per level, so '[' * 100000 raises RecursionError, and it
accepts escaped lone surrogates ("\\ud800") that no database or page can store. Every JSON
a client sends (bodies and page cursors) is read through loads() here instead.
"""

import json
import re

from flask.json.provider import DefaultJSONProvider

# Our bodies and cursors are flat: an object of fields, a list of a few values.
MAX_DEPTH = 16
# A JSON string, with its escapes: what to skip when counting brackets.
STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class BadJson(ValueError):
    """A JSON text is malformed, nested too deep, or holds text that is not valid Unicode."""


def loads(text, *, max_depth=MAX_DEPTH):
    """Parse JSON nested at most max_depth deep whose strings are valid Unicode."""
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadJson("JSON must be UTF-8 text") from None
    if nesting(text, stop_above=max_depth) > max_depth:
        raise BadJson(f"JSON nested more than {max_depth} levels deep")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadJson("not valid JSON") from None
    _check_text(value)
    return value


def nesting(text, *, stop_above=None):
    """Return how deep brackets nest in a JSON text, ignoring brackets inside strings.

    With stop_above, counting stops as soon as the depth passes it (enough to refuse).
    """
    brackets = NOT_BRACKET.sub("", STRING.sub('""', text))
    depth = deepest = 0
    for char in brackets:
        depth += 1 if char in "[{" else -1
        if depth > deepest:
            deepest = depth
            if stop_above is not None and deepest > stop_above:
                break
    return deepest


def _check_text(value):
    """Raise BadJson if any string in a parsed value cannot be written as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJson("text must be valid Unicode (it holds a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)
    elif isinstance(value, list):
        for item in value:
            _check_text(item)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, reading request bodies through loads() so none can crash a view."""

    def loads(self, s, **kwargs):
        """Parse a request's JSON body, bounded; raise BadJson (a ValueError) when it is bad."""
        return loads(s)
