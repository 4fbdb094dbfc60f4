"""Plain words for the phone: numbers read digit by digit and a request's status."""

from datetime import UTC, datetime


def digits(number):
    """Spell a number digit by digit, as a caller can write it down: 427 -> '4 2 7'."""
    return " ".join(str(number))


def spoken_date(iso, status_words, today=None):
    """Say an ISO timestamp as a day a caller understands: 'today' or 'March 4'."""
    when = datetime.fromisoformat(iso)
    today = today or datetime.now(UTC).date()
    if when.date() == today:
        return status_words.get("today", "today")
    months = status_words.get("months") or [str(m) for m in range(1, 13)]
    template = status_words.get("date", "{month} {day}")
    return template.format(month=months[when.month - 1], day=when.day)


def status_sentence(request, flow, category_label, volunteer=None, today=None):
    """Describe a request's status in plain words, with a volunteer's name once matched."""
    words = flow.status
    template = words.get(request["status"]) or words["new"]
    extra = ""
    if volunteer and words.get("volunteer"):
        # Matching (a later issue) passes {"name": ..., "when": ...} here.
        extra = words["volunteer"].format(**volunteer)
    return template.format(
        category=category_label,
        number=digits(request["id"]),
        date=spoken_date(request["created_at"], words, today),
        volunteer=extra,
    )
