"""Weekly availability slots and holidays: `mon-fri 09:00-12:00; sat, sun 14:00-18:00`.

Pure core: no Flask, no I/O. Times are wall-clock times in the service's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY

# Days first ("mon", "mon-fri", "mon, wed", "tuesday"), then one window; 9:00 or 09:00.
_SLOT_RE = re.compile(r"^([a-z][a-z,\s-]*?)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
_RANGE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\s*\.\.\s*(\d{4}-\d{2}-\d{2}))?$")


class BadAvailability(ValueError):
    """An availability slot or holiday is not written the way CareCall reads it."""


@dataclass(frozen=True, order=True)
class Slot:
    """One weekly window: day 0 is Monday, minutes from midnight, end after start."""

    day: int
    start: int
    end: int

    @property
    def week_start(self) -> int:
        """Return the slot's start as minutes from Monday 00:00."""
        return self.day * MINUTES_PER_DAY + self.start

    def __str__(self) -> str:
        return f"{DAYS[self.day]} {_clock(self.start)}-{_clock(self.end)}"


def _clock(minutes: int) -> str:
    """Return minutes from midnight as HH:MM."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _split(text: str) -> list[str]:
    """Split a `;`-separated list, dropping empty parts."""
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def _days(words: str, part: str) -> list[int]:
    """Return the days `mon-fri, sun` names (weekday numbers), or raise BadAvailability."""
    days = []
    for item in (w.strip() for w in words.split(",")):
        ends = [e.strip()[:3] for e in item.split("-")]
        if len(ends) > 2 or not all(ends) or any(e not in DAYS for e in ends):
            raise BadAvailability(
                f"{part!r}: day must be one of {', '.join(DAYS)}, or a range mon-fri"
            )
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        # A range may wrap past Sunday: "sat-mon" is Saturday, Sunday and Monday.
        days.extend((first + n) % 7 for n in range((last - first) % 7 + 1))
    return days


def parse_slots(text: str) -> tuple[Slot, ...]:
    """Parse `mon-fri 09:00-12:00; wed 14:00-18:00` into sorted slots, one per day."""
    slots = []
    for part in _split(text):
        m = _SLOT_RE.match(part.lower())
        if not m:
            raise BadAvailability(f"{part!r} is not like 'mon 09:00-12:00' or 'mon-fri 9:00-17:00'")
        words, h1, m1, h2, m2 = m.groups()
        days = _days(words, part)
        start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
        if int(m1) > 59 or int(m2) > 59 or start >= MINUTES_PER_DAY or end > MINUTES_PER_DAY:
            raise BadAvailability(f"{part!r}: not a time of day")
        if end <= start:
            # Overnight windows are two slots, so every slot lies inside one day.
            raise BadAvailability(f"{part!r}: the end must be after the start")
        slots.extend(Slot(day, start, end) for day in days)
    return tuple(sorted(set(slots)))


def format_slots(slots) -> str:
    """Write slots the way parse_slots reads them."""
    return "; ".join(str(s) for s in slots)


def parse_exceptions(text: str) -> tuple[tuple[date, date], ...]:
    """Parse holidays `2026-12-24; 2026-12-27..2027-01-02` into inclusive date ranges."""
    ranges = []
    for part in _split(text):
        m = _RANGE_RE.match(part)
        try:
            first = date.fromisoformat(m.group(1)) if m else None
            last = date.fromisoformat(m.group(2)) if m and m.group(2) else first
        except ValueError:
            first = None
        if first is None:
            raise BadAvailability(f"{part!r} is not like 2026-12-24 or 2026-12-24..2026-12-31")
        if last < first:
            raise BadAvailability(f"{part!r}: the range ends before it starts")
        ranges.append((first, last))
    return tuple(sorted(set(ranges)))


def format_exceptions(ranges) -> str:
    """Write holiday ranges the way parse_exceptions reads them."""
    return "; ".join(
        a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}" for a, b in ranges
    )


def on_holiday(ranges, day: date) -> bool:
    """Return whether the day falls in one of the holiday ranges."""
    return any(a <= day <= b for a, b in ranges)


def next_free(slots, exceptions, when: datetime, horizon_minutes: int):
    """Return (minutes to wait, slot) for the first free time from `when`, or None.

    `when` is a naive or aware wall-clock time in the slots' time zone; waiting longer
    than the horizon counts as not available.
    """
    minute = when.hour * 60 + when.minute
    for offset in range(horizon_minutes // MINUTES_PER_DAY + 2):
        day = when.date() + timedelta(days=offset)
        if on_holiday(exceptions, day):
            continue
        for slot in slots:
            if slot.day != day.weekday():
                continue
            if offset == 0 and slot.end <= minute:
                continue
            wait = max(0, offset * MINUTES_PER_DAY + slot.start - minute)
            return (wait, slot) if wait <= horizon_minutes else None
    return None
