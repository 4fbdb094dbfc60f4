"""Time the coordinator console on 1,000,000 requests: queue page, API list and FTS search.

The queue's work order (most urgent, then longest waiting) is the default of every case.

Seeds a throw-away database in a temp dir (bulk executemany, indexes and FTS built after
the load), then times real requests through the Flask test client, logged in as a
coordinator and with a bearer token, plus the bare queries underneath. Target: <= 100 ms.

Example:
    python bench/console.py
    python bench/console.py --rows 200000 --repeat 7
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app import accounts, create_app  # noqa: E402
from app.console import search  # noqa: E402
from app.db import connect, migrate  # noqa: E402

DATA = REPO / "bench" / "data" / "requests_en.tsv"
TARGET_MS = 100.0
REGIONS = [f"region-{i:02d}" for i in range(30)]
CHANNELS = [("phone", 55), ("voicemail", 25), ("kiosk", 15), ("video", 3), ("manual", 2)]
URGENCY = [("critical", 1), ("high", 14), ("normal", 65), ("low", 20)]
OPEN = ("new", "triaged", "assigned", "in_progress")
COLUMNS = (
    "channel, phone, language, region, stage, transcript, transcript_confidence, category,"
    " urgency, emergency, needs_review, status, created_at, updated_at, called_again"
)


def weighted(pairs, rng, n):
    """Draw n values from (value, weight) pairs."""
    values, weights = zip(*pairs, strict=True)
    return rng.choices(values, weights=weights, k=n)


def load_texts():
    """Return (transcript, category) pairs from the labelled bench data."""
    with open(DATA, encoding="utf-8", newline="") as fh:
        rows = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(r["text"], r["category"]) for r in rows if r.get("text")]


def rows(count, seed=5):
    """Yield request rows spread over two years, most old ones done, recent ones open."""
    rng = random.Random(seed)
    texts = load_texts()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    step = (2 * 365 * 86400) / count
    channels = weighted(CHANNELS, rng, count)
    urgencies = weighted(URGENCY, rng, count)
    for i in range(count):
        created = start + timedelta(seconds=i * step)
        updated = created + timedelta(seconds=rng.randint(0, 2 * 86400))
        # The most recent 3 % are still being worked on; older ones are mostly done.
        if i > count * 0.97:
            status = rng.choice(OPEN)
        else:
            status = "done" if rng.random() < 0.93 else "cancelled"
        text, category = texts[rng.randrange(len(texts))]
        urgency = urgencies[i]
        yield (
            channels[i],
            f"+1555{rng.randrange(100_000):07d}",
            "ko" if rng.random() < 0.08 else "en",
            REGIONS[rng.randrange(len(REGIONS))],
            "transcribed",
            f"{text} (ref {i})",
            round(rng.uniform(0.4, 0.99), 2),
            category,
            urgency,
            int(urgency == "critical"),
            int(rng.random() < 0.1),
            status,
            created.isoformat(timespec="seconds"),
            updated.isoformat(timespec="seconds"),
            0,
        )


def seed(path, count):
    """Create and bulk-load the bench database; return seconds taken."""
    started = time.perf_counter()
    migrate(path)
    db = connect(path)
    db.execute("PRAGMA synchronous=OFF")
    # Build indexes and the FTS table once, after the load: the end state is the migration's.
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'"
        " AND sql IS NOT NULL"
    ).fetchall()
    for name, _sql in indexes:
        db.execute(f'DROP INDEX "{name}"')
    db["requests"].disable_fts()
    placeholders = ", ".join("?" * len(COLUMNS.split(",")))
    batch = []
    for row in rows(count):
        batch.append(row)
        if len(batch) == 100_000:
            with db.atomic():
                db.conn.executemany(
                    f"INSERT INTO requests ({COLUMNS}) VALUES ({placeholders})", batch
                )
            batch = []
            print(f"  loaded {db['requests'].count:,} rows", file=sys.stderr)
    if batch:
        with db.atomic():
            db.conn.executemany(f"INSERT INTO requests ({COLUMNS}) VALUES ({placeholders})", batch)
    loaded = time.perf_counter() - started
    for _name, sql in indexes:
        db.execute(sql)
    indexed = time.perf_counter() - started
    db["requests"].enable_fts(["transcript"], create_triggers=True, tokenize="porter")
    db.execute("ANALYZE")
    db.close()
    done = time.perf_counter() - started
    return loaded, indexed, done


def timed(fn, repeat):
    """Run fn repeat times after one warm-up; return (median ms, max ms, last result)."""
    result = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times), result


CASES = [
    ("no filter (open)", {}),
    ("status=all", {"status": "all"}),
    ("status=new", {"status": "new"}),
    ("category=medical", {"category": "medical"}),
    ("urgency=high", {"urgency": "high"}),
    ("region=region-07", {"region": "region-07"}),
    ("channel=video", {"channel": "video"}),
    ("language=ko", {"language": "ko"}),
    ("phone (caller history)", {"phone": "<a caller's number>", "status": "all"}),
    ("one week (all)", {"date_from": "2026-03-01", "date_to": "2026-03-07", "status": "all"}),
    ("category+region (all)", {"category": "transport", "region": "region-03", "status": "all"}),
    ("q=prescription", {"q": "prescription", "status": "all"}),
    ("q=lift doctor", {"q": "lift doctor", "status": "all"}),
    ("q=boiler + open", {"q": "boiler"}),
    ("q=zebra (no hits)", {"q": "zebra", "status": "all"}),
    ("sort=newest (open)", {"sort": "newest"}),
    ("sort=newest (all)", {"sort": "newest", "status": "all"}),
    ("high, newest (all)", {"sort": "newest", "urgency": "high", "status": "all"}),
]


def main(argv=None):
    """Seed the bench database, time every case and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="carecall-bench-") as tmp:
        path = str(Path(tmp) / "bench.db")
        print(f"seeding {args.rows:,} requests in {tmp} ...", file=sys.stderr)
        loaded, indexed, total = seed(path, args.rows)
        size = Path(path).stat().st_size / 1e6
        print(
            f"seeded {args.rows:,} rows: load {loaded:.1f} s, +indexes {indexed - loaded:.1f} s,"
            f" +FTS/ANALYZE {total - indexed:.1f} s; database {size:.0f} MB"
        )
        app = create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "bench-secret-key-0123456789",
                "DATABASE": path,
                "DATA_DIR": str(Path(tmp) / "data"),
                "OUTBOX_DIR": str(Path(tmp) / "outbox"),
                "WORKER": "none",
                "WTF_CSRF_ENABLED": False,
            }
        )
        db = connect(path)
        accounts.create_user(db, "bench", "coordinator", "bench password")
        token, _ = accounts.create_token(db, "bench", "viewer")
        page = app.test_client()
        page.post("/console/login", data={"name": "bench", "password": "bench password"})
        api = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        caller = db.execute("SELECT phone FROM requests WHERE id = 500").fetchone()[0]

        print()
        print(f"{'case':<24} {'query ms':>9} {'page ms':>9} {'API ms':>9} {'rows':>5}  ok")
        print(f"{'':<24} {'(median)':>9} {'(median)':>9} {'(median)':>9}")
        worst = 0.0
        for name, filters in CASES:
            if "phone" in filters:
                filters = {**filters, "phone": caller}
            parsed = search.Filters.from_args(filters)
            q_ms, _, (found, _) = timed(
                lambda f=parsed: search.list_requests(db, f, limit=50, exclude_pinned=True),
                args.repeat,
            )
            page_ms, _, response = timed(
                lambda f=filters: page.get("/console/", query_string=f), args.repeat
            )
            assert response.status_code == 200, response.status_code
            api_ms, _, response = timed(
                lambda f=filters: api.get("/api/v1/requests", query_string=f, headers=headers),
                args.repeat,
            )
            assert response.status_code == 200, response.status_code
            worst = max(worst, page_ms, api_ms)
            ok = "yes" if max(page_ms, api_ms) <= TARGET_MS else "NO"
            print(f"{name:<24} {q_ms:>9.1f} {page_ms:>9.1f} {api_ms:>9.1f} {len(found):>5}  {ok}")
        pin_ms, _, pinned = timed(lambda: search.pinned(db), args.repeat)
        print(f"{'pinned critical (open)':<24} {pin_ms:>9.1f} {'':>9} {'':>9} {len(pinned):>5}")
        db.close()
        print(f"\nworst median {worst:.1f} ms (target {TARGET_MS:.0f} ms)")
    return 0 if worst <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
