"""Plain words for the phone: numbers read digit by digit and a request's status."""

from datetime import UTC, datetime, timedelta

from ..sentences import fill


def digits(number):
    """Spell a number digit by digit, as a caller can write it down: 427 -> '4 2 7'."""
    return " ".join(str(number))


def spoken_date(iso, status_words, today=None, zone=UTC):
    """Say when a request was made: 'today', 'yesterday' or 'on Tuesday 1 December'."""
    # Stored in UTC; a caller's "today" is the line's own day (an evening call is not tomorrow).
    when = datetime.fromisoformat(iso).astimezone(zone)
    today = today or datetime.now(zone).date()
    if when.date() == today:
        return status_words["today"]
    if when.date() == today - timedelta(days=1) and status_words.get("yesterday"):
        return status_words["yesterday"]
    return status_words["date"].format(
        weekday=status_words["days"][when.weekday()],
        month=status_words["months"][when.month - 1],
        day=when.day,
    )


def status_sentence(request, flow, category_label, volunteer=None, today=None, zone=UTC):
    """Describe a request's status in plain words, with a volunteer's name once matched."""
    words = flow.status
    template = words.get(request["status"]) or words["new"]
    extra = ""
    if volunteer and words.get("volunteer"):
        # Matching (a later issue) passes {"name": ..., "when": ...} here.
        extra = fill(words["volunteer"], **volunteer)
    return fill(
        template,
        category=category_label,
        number=digits(request["id"]),
        date=spoken_date(request["created_at"], words, today, zone),
        volunteer=extra,
    )
