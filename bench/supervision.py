"""Time the supervision sweep and page on a large registry.

Seeds a throw-away database (requests over two years, volunteers, accepted offers, dead
jobs), then times: the conditions alone, the first sweep (which opens the items), a second
sweep (which opens nothing), and GET /console/supervision as a coordinator. Target: a
sweep that finds nothing new within 250 ms, so opening the page stays quick.

Example:
    python bench/supervision.py
    python bench/supervision.py --requests 1000000 --volunteers 5000
"""

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app import accounts, create_app, supervision  # noqa: E402
from app.db import connect, migrate  # noqa: E402

TARGET_MS = 250.0
URGENCIES = ("critical", "high", "normal", "normal", "normal", "low")


def stamp(moment):
    """Return a time as the database writes it."""
    return moment.isoformat(timespec="seconds")


def seed(path, requests, volunteers, now):
    """Bulk-load the bench database."""
    migrate(path)
    db = connect(path)
    db.execute("PRAGMA synchronous=OFF")
    rng = random.Random(10)
    start = now - timedelta(days=730)
    step = 730 * 86400 / requests
    with db.atomic():
        db.conn.executemany(
            "INSERT INTO volunteers (name, phone, max_open, active, training_done, created_at)"
            " VALUES (?, ?, ?, ?, 1, ?)",
            [
                (
                    f"Volunteer {i}",
                    f"+1555{i:07d}",
                    rng.choice((1, 2, 3)),
                    int(rng.random() > 0.1),
                    stamp(start + timedelta(days=rng.randrange(700))),
                )
                for i in range(volunteers)
            ],
        )
        rows = []
        for i in range(requests):
            created = start + timedelta(seconds=i * step)
            recent = i > requests * 0.97
            status = rng.choice(("new", "triaged", "assigned")) if recent else "done"
            rows.append((rng.choice(URGENCIES), status, stamp(created), stamp(created)))
        db.conn.executemany(
            "INSERT INTO requests (channel, stage, urgency, status, created_at, updated_at)"
            " VALUES ('phone', 'transcribed', ?, ?, ?, ?)",
            rows,
        )
        # An accepted offer for every assigned request and for one done request in ten.
        taken = db.execute(
            "SELECT id, created_at FROM requests WHERE status = 'assigned' OR"
            " (status = 'done' AND id % 10 = 0)"
        ).fetchall()
        db.conn.executemany(
            "INSERT INTO assignments (request_id, volunteer_id, state, code, channel,"
            " offered_at, answered_at) VALUES (?, ?, 'accepted', ?, 'sms', ?, ?)",
            [
                (rid, rng.randrange(1, volunteers + 1), str(rid), created, created)
                for rid, created in taken
            ],
        )
        db.conn.executemany(
            "INSERT INTO jobs (kind, payload, state, priority, attempts, max_attempts,"
            " run_after, last_error, created_at, updated_at)"
            " VALUES ('bench.dead', '{}', 'dead', 0, 5, 5, 0, 'Boom: it broke', ?, ?)",
            [(now.timestamp() - i, now.timestamp() - i) for i in range(200)],
        )
    db.execute("ANALYZE")
    db.close()


def timed(fn):
    """Return (result, milliseconds) of fn()."""
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1000


def main():
    """Seed, time and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--volunteers", type=int, default=2_000)
    args = parser.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.db")
        _, seed_ms = timed(lambda: seed(path, args.requests, args.volunteers, now))
        app = create_app(
            {
                "DATABASE": path,
                "DATA_DIR": tmp,
                "OUTBOX_DIR": tmp,
                "WORKER": "none",
                "SECRET_KEY": "bench-secret-key-0123456789",
                "PASSWORD_HASH_TIME_COST": 1,
                "PASSWORD_HASH_MEMORY_KIB": 64,
                "PASSWORD_HASH_PARALLELISM": 1,
            }
        )
        db = connect(path)
        found, conditions_ms = timed(
            lambda: supervision.conditions(db, moment=now, config=app.config)
        )
        first, first_ms = timed(lambda: supervision.sweep(db, moment=now, config=app.config))
        second, second_ms = timed(lambda: supervision.sweep(db, moment=now, config=app.config))
        accounts.create_user(
            db, "bench", "coordinator", "bench password 1", hasher=accounts.hasher_for(app.config)
        )
        client = app.test_client()
        page = client.get("/console/login").get_data(as_text=True)
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        client.post(
            "/console/login",
            data={"name": "bench", "password": "bench password 1", "csrf_token": token},
        )
        response, page_ms = timed(lambda: client.get("/console/supervision"))
        assert response.status_code == 200, response.status_code
        by_kind = {}
        for condition in found:
            by_kind[condition.kind] = by_kind.get(condition.kind, 0) + 1
    print(
        f"{args.requests:,} requests, {args.volunteers:,} volunteers"
        f" (seeded in {seed_ms / 1000:.1f} s)"
    )
    print(f"conditions found: {sum(by_kind.values()):,} {by_kind}")
    print(f"conditions alone      {conditions_ms:8.1f} ms")
    print(f"first sweep           {first_ms:8.1f} ms  opened {len(first.opened):,} items")
    print(f"second sweep          {second_ms:8.1f} ms  opened {len(second.opened):,} items")
    print(f"GET /console/supervision {page_ms:5.1f} ms  (sweep + 200 items with history)")
    verdict = "ok" if second_ms <= TARGET_MS else "SLOW"
    print(f"target: a sweep that finds nothing new <= {TARGET_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
