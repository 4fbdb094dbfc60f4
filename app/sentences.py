"""Spoken templates filled so a value fits its sentence: no doubled stop, no doubled words.

The one place where a template's words meet a value's (a transcript, a category label, a date):
"I heard: {transcript}." with "…on Friday morning?" must not say "?.", and "need help with
{category}" with "help with health" must not say "help with help with".
"""

from string import Formatter

# Marks that end a spoken clause; a template's own mark after a value wins over the value's.
STOPS = ".!?;:,…"
# How many words a template may already say before a value that starts with them.
OVERLAP_WORDS = 3


def fill(template, **values):
    """Fill a template's {names}, dropping what the template already says around each value."""
    parts = list(Formatter().parse(template))
    out = ""
    for index, (literal, name, spec, conversion) in enumerate(parts):
        out += literal
        if name is None:
            continue
        value = values[name]
        if conversion:
            value = {"r": repr, "s": str, "a": ascii}[conversion](value)
        text = format(value, spec or "")
        following = parts[index + 1][0] if index + 1 < len(parts) else ""
        if following[:1] in tuple(STOPS):
            # Spaces and marks together: "Tuesday. ." must not leave "Tuesday." for the stop.
            text = text.rstrip(STOPS + " \t\n")
        out += _without_overlap(out, text)
    return out


def _without_overlap(before, text):
    """Drop a value's opening words when the template just said them ("help with" twice)."""
    if not before or not before[-1].isspace():
        return text
    said = before.lower().split()
    words = text.split(" ")
    for size in range(min(OVERLAP_WORDS, len(said), len(words) - 1), 0, -1):
        # Plain words only: "I heard:" before a transcript that starts "I heard:" is the
        # caller's own words, and a template's punctuation marks where its words end.
        opening = [w.lower() for w in words[:size]]
        if said[-size:] == opening and all(w.isalpha() for w in opening):
            return " ".join(words[size:])
    return text
