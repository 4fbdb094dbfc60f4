"""Time ranked matching: top 10 among 1k, 10k and 100k volunteers. Target: <= 20 ms at 100k.

Volunteers are synthetic but shaped like a city's registry: one to three skills of the
eleven categories, one or two languages, homes spread over ~40 km, two to four weekly
slots, some paused, some busy, some on holiday. Each request has a random category,
language, place and time. The pool's arrays are built once per size (shown apart), as a
long-running server would keep them; each timing is one `rank` call, reasons included.

Example:
    python bench/matching.py
    python bench/matching.py --sizes 1000 100000 --requests 200
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.availability import Slot  # noqa: E402
from app.classify import category_keys  # noqa: E402
from app.matching import Need, Pool, Volunteer, load_weights, rank  # noqa: E402

TARGET_MS = 20.0
CENTRE = (51.5079, -0.0877)
LANGUAGES = [("en", 70), ("ko", 6), ("es", 8), ("zh", 6), ("pl", 5), ("ar", 5)]
SKILLS = [c for c in category_keys() if c not in ("emergency", "other")]
START = datetime(2026, 11, 30, tzinfo=UTC)


def weighted(pairs, rng):
    """Draw one value from (value, weight) pairs."""
    values, weights = zip(*pairs, strict=True)
    return rng.choices(values, weights=weights)[0]


def make_volunteers(count, seed=9):
    """Return `count` synthetic volunteers."""
    rng = random.Random(seed)
    result = []
    for i in range(1, count + 1):
        languages = {weighted(LANGUAGES, rng) for _ in range(rng.choice((1, 1, 2)))}
        slots = set()
        for _ in range(rng.randint(2, 4)):
            start = rng.randrange(7 * 60, 18 * 60, 30)
            slots.add(
                Slot(rng.randrange(7), start, min(24 * 60, start + rng.choice((60, 120, 180, 240))))
            )
        holiday = ()
        if rng.random() < 0.05:
            first = date(2026, 11, 30) + timedelta(days=rng.randint(-5, 10))
            holiday = ((first, first + timedelta(days=rng.randint(0, 14))),)
        total = rng.choice((0, 0, 1, 3, 8, 20, 40))
        result.append(
            Volunteer(
                id=i,
                name=f"Volunteer {i}",
                skills={
                    s: rng.choice((None, 1, 2, 3)) for s in rng.sample(SKILLS, rng.randint(1, 3))
                },
                languages=tuple(sorted(languages)),
                region=f"region-{rng.randrange(30):02d}",
                lat=CENTRE[0] + rng.uniform(-0.18, 0.18),
                lon=CENTRE[1] + rng.uniform(-0.28, 0.28),
                slots=tuple(sorted(slots)),
                exceptions=holiday,
                max_open=rng.choice((1, 2, 3)),
                active=rng.random() > 0.1,
                training_done=rng.random() > 0.2,
                open_jobs=rng.choice((0, 0, 0, 1, 2)),
                recent_jobs=min(total, rng.randint(0, 4)),
                total_jobs=total,
                rating=round(rng.uniform(3, 5), 1) if total else None,
                ratings=total,
            )
        )
    return result


def make_needs(count, seed=11):
    """Return `count` random requests across categories, languages, places and times."""
    rng = random.Random(seed)
    return [
        Need(
            category=rng.choice(SKILLS),
            language=weighted(LANGUAGES, rng),
            region=f"region-{rng.randrange(30):02d}",
            lat=CENTRE[0] + rng.uniform(-0.15, 0.15),
            lon=CENTRE[1] + rng.uniform(-0.25, 0.25),
            when=None if rng.random() < 0.7 else START + timedelta(minutes=rng.randrange(10080)),
            preferred=(rng.randint(1, 1000),) if rng.random() < 0.2 else (),
        )
        for _ in range(count)
    ]


def percentile(values, share):
    """Return the value below which `share` of the sorted values fall."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv=None):
    """Print median and p95 ms of top-10 ranking for each registry size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args(argv)
    weights = load_weights(REPO / "ivr_flows" / "matching.toml")
    needs = make_needs(args.requests)
    print(f"top {args.limit} of N volunteers, {args.requests} random requests each")
    heads = f"{'volunteers':>10} | {'build s':>7} | {'eligible':>8} | {'median ms':>9}"
    print(f"{heads} | {'p95 ms':>7} | target")
    print(f"{'-' * 10}-|-{'-' * 7}-|-{'-' * 8}-|-{'-' * 9}-|-{'-' * 7}-|-------")
    for size in args.sizes:
        volunteers = make_volunteers(size)
        started = time.perf_counter()
        pool = Pool(volunteers, default_level=weights.default_level)
        build = time.perf_counter() - started
        times, eligible = [], []
        for i, need in enumerate(needs):
            now = START + timedelta(minutes=(i * 97) % 10080)
            started = time.perf_counter()
            ranking = rank(need, pool, weights=weights, now=now, limit=args.limit)
            times.append((time.perf_counter() - started) * 1000)
            eligible.append(ranking.eligible)
        median, p95 = statistics.median(times), percentile(times, 0.95)
        ok = "ok" if median <= TARGET_MS else "SLOW"
        print(
            f"{size:>10,} | {build:>7.2f} | {statistics.median(eligible):>8,.0f} |"
            f" {median:>9.2f} | {p95:>7.2f} | {ok}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
