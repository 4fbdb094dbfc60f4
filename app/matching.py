"""Rank volunteers for a request, each suggestion with its reasons in words and numbers.

Pure core: no Flask, no database. Weights and limits live in ivr_flows/matching.toml.
A `Pool` precomputes one numpy array per volunteer attribute, so ranking 100,000
volunteers is a few vector operations and reasons are written for the top few only.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path

import numpy as np

from .availability import MINUTES_PER_DAY, MINUTES_PER_WEEK, Slot, next_free

EARTH_RADIUS_KM = 6371.0088
COMPONENTS = (
    "skill",
    "availability",
    "distance",
    "load",
    "language",
    "rating",
    "fairness",
    "newcomer",
    "region",
    "training",
)
# Preferred volunteers sort above every score: continuity beats a slightly better fit.
_PREFERRED_BONUS = 1e9
_NEVER = np.iinfo(np.int64).max // 4


class MatchingDataError(ValueError):
    """matching.toml is missing a weight or limit, or gives one a wrong value."""


@dataclass(frozen=True)
class Volunteer:
    """What ranking needs to know about one volunteer, with their current workload."""

    id: int
    name: str
    skills: Mapping[str, int | None]  # category -> level, None when no level was given
    languages: tuple[str, ...] = ()
    region: str | None = None
    lat: float | None = None
    lon: float | None = None
    slots: tuple[Slot, ...] = ()
    exceptions: tuple[tuple[date, date], ...] = ()
    max_open: int = 1
    active: bool = True
    training_done: bool = False
    open_jobs: int = 0
    recent_jobs: int = 0  # jobs within the fairness window
    total_jobs: int = 0
    rating: float | None = None  # average of the seniors' ratings, 1 to 5
    ratings: int = 0


@dataclass(frozen=True)
class Need:
    """What a request asks for: the kind of help, for whom, where and when."""

    category: str
    language: str | None = None
    region: str | None = None
    lat: float | None = None
    lon: float | None = None
    when: datetime | None = None  # a requested time; None means as soon as possible
    preferred: tuple[int, ...] = ()
    person: str | None = None


@dataclass(frozen=True)
class Weights:
    """Weights of the score's components and the limits that rule volunteers out."""

    weights: Mapping[str, float]
    max_level: int = 3
    default_level: int = 2
    max_distance_km: float = 30.0
    distance_scale_km: float = 5.0
    availability_scale_hours: float = 24.0
    horizon_hours: float = 168.0
    requested_horizon_hours: float = 4.0
    fairness_window_days: int = 30
    require_language: bool = True
    language_names: Mapping[str, str] = field(default_factory=dict)

    def language_name(self, code: str) -> str:
        """Return a language's name for reasons, or its code when the data names none."""
        return self.language_names.get(code, code)


@dataclass(frozen=True)
class Match:
    """One suggested volunteer, with the score and the reasons behind it."""

    volunteer_id: int
    name: str
    score: float
    reasons: tuple[str, ...]
    preferred: bool = False

    def to_dict(self) -> dict:
        """Return the match as the API shows it."""
        return {
            "volunteer_id": self.volunteer_id,
            "name": self.name,
            "score": self.score,
            "reasons": list(self.reasons),
            "preferred": self.preferred,
        }


@dataclass(frozen=True)
class Ranking:
    """The best matches, how many volunteers could help, and whether language was set aside."""

    matches: tuple[Match, ...]
    eligible: int = 0
    language: str | None = None
    speakers: int = 0  # eligible volunteers who speak the senior's language
    language_override: bool = False

    def to_dict(self) -> dict:
        """Return the ranking as the API shows it."""
        return {
            "matches": [m.to_dict() for m in self.matches],
            "eligible": self.eligible,
            "language": self.language,
            "speakers": self.speakers,
            "language_override": self.language_override,
        }


def load_weights(path: Path) -> Weights:
    """Load weights, limits and language names from matching.toml."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    weights = data.get("weights", {})
    missing = [name for name in COMPONENTS if name not in weights]
    if missing:
        raise MatchingDataError(f"{Path(path).name}: [weights] lacks {', '.join(missing)}")
    unknown = sorted(set(weights) - set(COMPONENTS))
    if unknown:
        raise MatchingDataError(f"{Path(path).name}: unknown weights {', '.join(unknown)}")
    if any(not isinstance(v, int | float) or v < 0 for v in weights.values()):
        raise MatchingDataError(f"{Path(path).name}: weights must be numbers of 0 or more")
    limits = data.get("limits", {})
    known = {f.name for f in Weights.__dataclass_fields__.values()} - {
        "weights",
        "language_names",
    }
    unknown = sorted(set(limits) - known)
    if unknown:
        raise MatchingDataError(f"{Path(path).name}: unknown limits {', '.join(unknown)}")
    result = Weights(
        weights={k: float(v) for k, v in weights.items()},
        language_names=dict(data.get("languages", {})),
        **limits,
    )
    if not 1 <= result.default_level <= result.max_level:
        raise MatchingDataError(f"{Path(path).name}: default_level must be 1..max_level")
    return result


class Pool:
    """Volunteers laid out as arrays, built once and ranked against many requests."""

    def __init__(self, volunteers: Sequence[Volunteer], *, default_level: int = 2):
        """Precompute one array per attribute; skills without a level count as default_level."""
        self.volunteers = tuple(volunteers)
        vols = self.volunteers
        n = len(vols)
        self.ids = np.fromiter((v.id for v in vols), dtype=np.int64, count=n)
        self.active = np.fromiter((bool(v.active) for v in vols), dtype=bool, count=n)
        self.training = np.fromiter((bool(v.training_done) for v in vols), dtype=bool, count=n)
        self.max_open = np.fromiter((v.max_open for v in vols), dtype=np.int64, count=n)
        self.open_jobs = np.fromiter((v.open_jobs for v in vols), dtype=np.int64, count=n)
        self.recent = np.fromiter((v.recent_jobs for v in vols), dtype=np.int64, count=n)
        self.total = np.fromiter((v.total_jobs for v in vols), dtype=np.int64, count=n)
        self.rating = np.array(
            [np.nan if v.rating is None else v.rating for v in vols], dtype=np.float64
        )
        self.lat = np.radians(np.array([_nan(v.lat) for v in vols], dtype=np.float64))
        self.lon = np.radians(np.array([_nan(v.lon) for v in vols], dtype=np.float64))
        self.regions: dict[str, int] = {}
        region_of = self.regions.setdefault
        self.region = np.fromiter(
            (region_of(v.region, len(self.regions)) if v.region else -1 for v in vols),
            dtype=np.int64,
            count=n,
        )
        levels: dict[str, np.ndarray] = {}
        speakers: dict[str, list[int]] = {}
        owners, starts, ends = [], [], []
        pair_slot, pair_first, pair_last = [], [], []
        for i, v in enumerate(vols):
            for category, level in v.skills.items():
                if category not in levels:
                    levels[category] = np.zeros(n, dtype=np.int64)
                levels[category][i] = default_level if level is None else level
            for code in v.languages:
                speakers.setdefault(code, []).append(i)
            for slot in v.slots:
                # Each (slot, holiday) pair of one volunteer, to test occurrences against.
                for first, last in v.exceptions:
                    pair_slot.append(len(owners))
                    pair_first.append(first.toordinal())
                    pair_last.append(last.toordinal())
                owners.append(i)
                starts.append(slot.week_start)
                ends.append(slot.day * MINUTES_PER_DAY + slot.end)
        self.levels = levels
        self._speaker_index = {k: np.array(v, dtype=np.int64) for k, v in speakers.items()}
        self._speakers: dict[str, np.ndarray] = {}
        # Slots are appended owner by owner, so each owner's slots are one run.
        self.slot_owner = np.array(owners, dtype=np.int64)
        self.slot_start = np.array(starts, dtype=np.int64)
        self.slot_end = np.array(ends, dtype=np.int64)
        self.pair_slot = np.array(pair_slot, dtype=np.int64)
        self.pair_first = np.array(pair_first, dtype=np.int64)
        self.pair_last = np.array(pair_last, dtype=np.int64)
        # Per skill, the slots of volunteers who have it: most of the week's work is skipped.
        self.skill_slots = {
            category: np.flatnonzero(level[self.slot_owner] > 0)
            for category, level in levels.items()
        }

    def __len__(self) -> int:
        return len(self.volunteers)

    def speaks(self, code: str | None) -> np.ndarray:
        """Return which volunteers speak the language."""
        if code not in self._speakers:
            mask = np.zeros(len(self), dtype=bool)
            if code in self._speaker_index:
                mask[self._speaker_index[code]] = True
            self._speakers[code] = mask
        return self._speakers[code]

    def waits(self, when: datetime, horizon: int, among: np.ndarray, category: str) -> np.ndarray:
        """Return minutes each volunteer `among` those with the skill waits until free.

        _NEVER means not free within `horizon` minutes of `when` (wall-clock time).
        """
        wait = np.full(len(self), _NEVER, dtype=np.int64)
        chosen = self.skill_slots.get(category, np.zeros(0, dtype=np.int64))
        chosen = chosen[among[self.slot_owner[chosen]]]
        if not len(chosen):
            return wait
        week_minute = when.weekday() * MINUTES_PER_DAY + when.hour * 60 + when.minute
        start = self.slot_start[chosen]
        inside = (start <= week_minute) & (week_minute < self.slot_end[chosen])
        slot_wait = np.where(inside, 0, (start - week_minute) % MINUTES_PER_WEEK)
        if len(self.pair_slot):
            self._skip_holidays(when, horizon, chosen, inside, slot_wait)
        owners = self.slot_owner[chosen]
        runs = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        wait[owners[runs]] = np.minimum.reduceat(slot_wait, runs)
        return wait

    def _skip_holidays(self, when, horizon, chosen, inside, slot_wait):
        """Move each chosen slot's wait to its first occurrence not on a holiday, in place."""
        today = when.date().toordinal()
        last = today + horizon // MINUTES_PER_DAY + 1
        selected = np.zeros(len(self.slot_owner), dtype=bool)
        selected[chosen] = True
        hit = selected[self.pair_slot] & (self.pair_first <= last) & (self.pair_last >= today)
        if not hit.any():
            return
        pair_slot = self.pair_slot[hit]
        first, final = self.pair_first[hit], self.pair_last[hit]
        affected = np.unique(pair_slot)
        at = np.searchsorted(chosen, affected)  # where each affected slot sits in `chosen`
        pair_at = np.searchsorted(affected, pair_slot)
        base, now_inside = slot_wait[at], inside[at]
        day_minute = when.hour * 60 + when.minute
        result = np.full(len(affected), _NEVER, dtype=np.int64)
        pending = np.ones(len(affected), dtype=bool)
        for week in range(horizon // MINUTES_PER_WEEK + 2):
            if week == 0:
                waits = base
            else:
                # A slot open right now next starts a week after today's start.
                today_start = self.slot_start[affected] % MINUTES_PER_DAY - day_minute
                waits = np.where(now_inside, today_start, base) + week * MINUTES_PER_WEEK
            day = today + (day_minute + waits) // MINUTES_PER_DAY
            blocked_pair = (first <= day[pair_at]) & (day[pair_at] <= final)
            blocked = np.zeros(len(affected), dtype=bool)
            blocked[pair_at[blocked_pair]] = True
            free = pending & ~blocked
            result[free] = waits[free]
            pending &= blocked
            if not pending.any():
                break
        slot_wait[at] = result


def _nan(value):
    """Return the value, or NaN when it is unknown."""
    return np.nan if value is None else float(value)


def haversine_km(lat1, lon1, lat2, lon2):
    """Return the great-circle distance in km between points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def rank(
    need: Need,
    volunteers: Pool | Sequence[Volunteer],
    *,
    weights: Weights,
    now: datetime,
    tz: tzinfo = UTC,
    limit: int = 10,
    override_language: bool = False,
) -> Ranking:
    """Rank the volunteers who can help with the need; never a paused, unskilled,
    unavailable or fully loaded one. Ties go to the lower volunteer id."""
    if not isinstance(volunteers, Pool):
        volunteers = Pool(volunteers, default_level=weights.default_level)
    pool = volunteers
    w = weights.weights
    level = pool.levels.get(need.category)
    if level is None or limit <= 0 or not len(pool):
        return Ranking((), language=need.language)
    when = _local(need.when or now, tz)
    hours = weights.requested_horizon_hours if need.when else weights.horizon_hours
    horizon = int(hours * 60)

    mask = pool.active & (level > 0) & (pool.open_jobs < pool.max_open)
    wait = pool.waits(when, horizon, mask, need.category)
    mask &= wait <= horizon
    distance = np.full(len(pool), np.nan)
    if need.lat is not None and need.lon is not None:
        idx = np.flatnonzero(mask)
        distance[idx] = _distances(pool, idx, need.lat, need.lon)
        # Unknown homes stay in: the coordinator sees "distance unknown".
        mask &= ~(distance > weights.max_distance_km)

    speaks = pool.speaks(need.language) if need.language else np.zeros(len(pool), bool)
    speakers = int(np.count_nonzero(mask & speaks))
    nobody = bool(need.language) and speakers == 0
    set_aside = bool(need.language) and (nobody or override_language)
    preferred_mask = np.isin(pool.ids, np.array(need.preferred, dtype=np.int64))
    if need.language and weights.require_language and not set_aside:
        # A senior's own preferred volunteer already knows how to talk with them.
        mask &= speaks | preferred_mask

    idx = np.flatnonzero(mask)
    if not len(idx):
        return Ranking((), 0, need.language, speakers, set_aside)
    dist = distance[idx]
    region = pool.regions.get(need.region, -2) if need.region else -2
    parts = {
        "skill": np.minimum(level[idx], weights.max_level) / weights.max_level,
        "availability": 1.0 / (1.0 + wait[idx] / 60.0 / weights.availability_scale_hours),
        "distance": np.where(np.isnan(dist), 0.0, 1.0 / (1.0 + dist / weights.distance_scale_km)),
        "load": 1.0 - pool.open_jobs[idx] / np.maximum(pool.max_open[idx], 1),
        "language": speaks[idx].astype(np.float64),
        "rating": np.nan_to_num((pool.rating[idx] - 1.0) / 4.0, nan=0.0).clip(0.0, 1.0),
        "fairness": 1.0 / (1.0 + pool.recent[idx]),
        "newcomer": (pool.total[idx] == 0).astype(np.float64),
        "region": (pool.region[idx] == region).astype(np.float64),
        "training": pool.training[idx].astype(np.float64),
    }
    score = np.zeros(len(idx))
    for name, values in parts.items():
        score += w[name] * values
    preferred = preferred_mask[idx]
    key = score + preferred * _PREFERRED_BONUS
    chosen = np.arange(len(idx))
    if len(idx) > limit:
        kth = np.partition(key, len(key) - limit)[len(key) - limit]
        chosen = np.flatnonzero(key >= kth)
    order = chosen[np.lexsort((pool.ids[idx][chosen], -key[chosen]))][:limit]
    matches = tuple(
        Match(
            volunteer_id=int(pool.ids[idx[j]]),
            name=pool.volunteers[idx[j]].name,
            score=round(float(score[j]), 3),
            reasons=_reasons(
                pool.volunteers[idx[j]],
                need,
                weights,
                when=when,
                horizon=horizon,
                distance=float(dist[j]),
                speakers=speakers,
                set_aside=set_aside,
                preferred=bool(preferred[j]),
            ),
            preferred=bool(preferred[j]),
        )
        for j in order
    )
    return Ranking(matches, len(idx), need.language, speakers, set_aside)


def _local(moment: datetime, tz: tzinfo) -> datetime:
    """Return the moment as wall-clock time in the volunteers' time zone."""
    return moment.astimezone(tz) if moment.tzinfo else moment


def _distances(pool: Pool, idx: np.ndarray, lat: float, lon: float) -> np.ndarray:
    """Return km from the point to each chosen volunteer's home (NaN when unknown)."""
    p1, l1 = math.radians(lat), math.radians(lon)
    p2, l2 = pool.lat[idx], pool.lon[idx]
    a = np.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(1.0, a)))


def _reasons(v, need, weights, *, when, horizon, distance, speakers, set_aside, preferred):
    """Say why a volunteer is suggested, in words and numbers."""
    reasons = []
    if preferred:
        who = need.person or "the senior"
        reasons.append(f"{who}'s preferred volunteer")
    level = v.skills.get(need.category)
    if level is None:
        reasons.append(f"{need.category} skill")
    else:
        reasons.append(f"{need.category} skill, level {level} of {weights.max_level}")
    free = next_free(v.slots, v.exceptions, when, horizon)
    if free is not None:
        wait, slot = free
        if wait == 0:
            moment = "at the requested time" if need.when else "now"
            end = f"{slot.end // 60:02d}:{slot.end % 60:02d}"
            reasons.append(f"free {moment}, until {end}")
        else:
            start = when + timedelta(minutes=wait)
            reasons.append(f"free from {start:%a %H:%M} (in {wait / 60:.1f} h)")
    if math.isnan(distance):
        reasons.append("distance unknown")
    else:
        reasons.append(f"{distance:.1f} km away")
    reasons.append(f"{v.open_jobs} of {v.max_open} open jobs")
    if need.language:
        name = weights.language_name(need.language)
        if need.language in v.languages:
            others = "1 volunteer does" if speakers == 1 else f"{speakers} volunteers do"
            reasons.append(f"speaks {name} ({others})")
        elif speakers == 0:
            reasons.append(f"nobody eligible speaks {name}: language set aside")
        elif set_aside:
            reasons.append(f"does not speak {name} (language set aside)")
    if v.rating is None or not v.ratings:
        reasons.append("no ratings yet")
    else:
        reasons.append(f"rated {v.rating:.1f} of 5 from {v.ratings} visits")
    if v.total_jobs == 0:
        reasons.append("new volunteer: no jobs yet")
    else:
        reasons.append(f"{v.recent_jobs} jobs in the last {weights.fairness_window_days} days")
    if need.region and v.region == need.region:
        reasons.append(f"lives in {v.region}")
    if not v.training_done:
        reasons.append("training not done yet")
    return tuple(reasons)
