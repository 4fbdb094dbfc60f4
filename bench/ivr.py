"""Benchmark the phone line: webhook latency under load, and the wait for a readback.

Usage: python bench/ivr.py [--callers 100] [--readbacks 3]

A live CareCall (threaded werkzeug server, in-process job worker, temporary database)
is called by the simulator in scripts/simulate_call.py over loopback HTTP, with real
Twilio signatures. Part 1: N callers at once walk menus that do no speech work (greeting,
repeat, status, goodbye, call status). Part 2: one caller leaves a ~20 s message and we
time the end of the recording to the first word of the readback, polling as Twilio would.
Targets: p99 <= 25 ms for TwiML without speech work; readback <= 4 s after a 20 s message.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from werkzeug.serving import make_server  # noqa: E402

from app import create_app, jobs  # noqa: E402
from app.db import migrate  # noqa: E402
from scripts.simulate_call import HttpTransport, MediaServer, Speech, Twilio  # noqa: E402
from tests.speechgen import telephone  # noqa: E402

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-auth-token"
MESSAGE = (
    "Hello, my name is Margaret and I live on Elm Street. I need someone to help me with "
    "my shopping this week, because my knees are bad and I cannot carry the heavy bags "
    "home from the store. Thursday or Friday morning would be best for me, because my "
    "daughter visits in the afternoon. Thank you very much."
)
SPEECH_PATHS = ("/twilio/recorded/request", "/twilio/recording-status/request")


def percentile(values, p):
    """Return the p-th percentile of values (nearest rank)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def serve(tmp, ready, stop, api_base):
    """Serve CareCall on a free loopback port with a worker until stop is set."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(
        {
            "DATABASE": str(Path(tmp) / "bench.db"),
            "DATA_DIR": str(Path(tmp) / "data"),
            "OUTBOX_DIR": str(Path(tmp) / "outbox"),
            "SECRET_KEY": "bench-secret-key-0123456789",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_RECORDING_HOSTS": ["127.0.0.1"],
            # The nightly reconcile must talk to the local fake, never to a real host.
            "TWILIO_API_BASE_URL": api_base,
        }
    )
    migrate(app.config["DATABASE"])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    worker = jobs.start_worker(app)
    ready.put(f"http://127.0.0.1:{server.server_port}")
    stop.wait()
    worker.stop()
    server.shutdown()


def load_test(url, media, callers, think, spread):
    """Run callers concurrent calls that do no speech work; return latencies in seconds."""
    latencies, errors = [], []
    barrier = threading.Barrier(callers)

    def one(n):
        rng = random.Random(n)
        twilio = Twilio(
            url,
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            transport=HttpTransport(),
            media=media,
            on_pause=lambda s: None,
            on_answer=lambda: time.sleep(rng.uniform(*think)),
        )
        barrier.wait()
        time.sleep(rng.uniform(0, spread))  # callers dial over a few seconds, not in lockstep
        call = twilio.call(f"+1555{n:07d}", ["*", "2", "2"])
        latencies.extend((path, s) for path, status, s in call.webhooks if path not in SPEECH_PATHS)
        errors.extend(status for _, status, _ in call.webhooks if status >= 400)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - started


def readback(url, media, speech):
    """Leave one message and return seconds from the end of recording to the readback."""
    twilio = Twilio(
        url,
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        transport=HttpTransport(),
        media=media,
        on_pause=time.sleep,
    )
    call = twilio.call("+15559990000", ["1", speech, "1"])
    ended = call.recorded_at[0]
    heard = next(
        t for t, text in call.heard_at if t > ended and ("I heard" in text or "sounds like" in text)
    )
    return heard - ended, call


def main(argv=None):
    """Print the phone line's figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--readbacks", type=int, default=3)
    args = parser.parse_args(argv)
    speech = Speech.from_file(telephone(MESSAGE))
    # The server runs in its own process, so the simulated callers do not share its GIL.
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    with tempfile.TemporaryDirectory() as tmp, MediaServer(ACCOUNT_SID, AUTH_TOKEN) as media:
        server = context.Process(target=serve, args=(tmp, ready, stop, media.base_url), daemon=True)
        server.start()
        url = ready.get(timeout=120)
        try:
            rows = []
            for name, think, spread in (
                ("in conversation (dial within 5 s, answer after 1-3 s)", (1.0, 3.0), 5.0),
                ("all at the same instant, no pauses (worst case)", (0.0, 0.0), 0.0),
            ):
                latencies, errors, wall = load_test(url, media, args.callers, think, spread)
                ms = [s * 1000 for _, s in latencies]
                by_path = {}
                for path, s in latencies:
                    by_path.setdefault(path, []).append(s * 1000)
                rows.append((name, ms, errors, wall, by_path))
            # Load the model once, as a running server has it loaded before the first call.
            readback(url, media, speech)
            waits = [readback(url, media, speech)[0] for _ in range(args.readbacks)]
        finally:
            stop.set()
            server.join(30)
    print("| measure | value | target |")
    print("| --- | --- | --- |")
    for name, ms, errors, wall, by_path in rows:
        print(
            f"| {args.callers} callers {name}: webhooks | {len(ms)} in {wall:.1f} s, "
            f"{len(errors)} errors | |"
        )
        print(
            f"| ... TwiML p50 / p99 / max | {percentile(ms, 50):.1f} / "
            f"{percentile(ms, 99):.1f} / {max(ms):.1f} ms | p99 <= 25 ms |"
        )
        for path, values in sorted(by_path.items()):
            print(
                f"| ... {path} p50 / p99 | {percentile(values, 50):.1f} / "
                f"{percentile(values, 99):.1f} ms | |"
            )
    print(f"| load average during the run | {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs | |")
    print(f"| message length | {speech.duration_s:.1f} s | ~20 s |")
    print(
        f"| end of recording -> readback | median {statistics.median(waits):.2f} s, "
        f"max {max(waits):.2f} s ({len(waits)} calls) | <= 4 s |"
    )


if __name__ == "__main__":
    main()
