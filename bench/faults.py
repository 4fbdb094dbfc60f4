"""Fault and load run: does CareCall keep every message under load, crashes and full disks?

Usage: python bench/faults.py [--seconds 15] [--fuzz-examples 500] [--only NAME ...]

Starts the real server (`flask --app app serve`, tests/server.py) on temporary directories
and prints one row per check:

  load held        requests/s at 8 concurrent clients (kiosk uploads, phone calls with the
                   recorded/status race, console pages), with zero errors
  kill mid-upload  kill -9 while an upload streams in; restart; no leftovers; the retry lands
  kill mid-decode  kill -9 while a transcription runs; restart; the job finishes in seconds
  disk full        DATA_DIR on a 2 MB tmpfs, filled: clear JSON error to the kiosk, no
                   partial files; once space is back the kiosk retry and the phone recording
                   (retried download, or the reconcile job) are both stored
  model broken     a truncated model.bin: the request is marked failed for a person, and
                   /readyz says not ready
  database ro      the database on a read-only mount: no traceback, no 500; once writable
                   again nothing was lost
  bad inputs       random signed webhooks and kiosk uploads (tests/fuzzing.py): no 5xx
  requests lost    recordings a client was told were kept, or retried until kept, that have
                   no request at the end: must be 0

Mount-based rows need root (tmpfs); they are reported as skipped otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.simulate_call import MediaServer  # noqa: E402
from tests import speechgen  # noqa: E402
from tests.server import (  # noqa: E402
    Server,
    kill_during_transcription,
    kill_during_upload,
    new_call_sid,
    race_recording,
    transcribed,
    wait_for,
)
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN  # noqa: E402

CLIENTS = 8
WAIT_S = 30.0


@dataclass
class Row:
    """One line of the table."""

    name: str
    ok: bool | None  # None: skipped
    numbers: str
    lost: int = 0


def kiosk_wav():
    """Return a spoken kiosk request (about 90 KB)."""
    return speechgen.render("Could somebody help me carry my shopping home on Friday?").read_bytes()


def phone_wav():
    """Return a spoken phone message as Twilio records it (8 kHz mu-law)."""
    return speechgen.telephone(
        "Hello, I need a lift to the clinic on Tuesday morning, please call me back."
    ).read_bytes()


def request_for(server, source_key):
    """Return (stage, urgency, needs_review) of the request with this source key, or None."""
    rows = server.query(
        "SELECT stage, urgency, needs_review FROM requests WHERE source_key = ?", [source_key]
    )
    return rows[0] if rows else None


def kiosk_key(server, client_id):
    """Return the source key of a kiosk client_id (the only kiosk is id 1... or any)."""
    rows = server.query(
        "SELECT source_key FROM requests WHERE source_key LIKE ?", [f"kiosk:%:{client_id}"]
    )
    return rows[0][0] if rows else None


def race_call(server, audio, n):
    """Play a call, deliver recorded + status at once; return (sid, statuses, told safe)."""
    call_sid, caller = new_call_sid(), f"+1555300{n % 10000:04d}"
    recording_sid, statuses, recorded = race_recording(server, call_sid, caller, audio)
    # Told safe: Twilio heard 204 for the status callback, or the caller heard "please wait
    # while I listen" rather than the apology and voicemail prompt.
    told_safe = statuses[3] == 204 or (statuses[2] == 200 and "/twilio/wait" in recorded.text)
    return recording_sid, statuses, told_safe


# --- rows ------------------------------------------------------------------------------------


def load_held(root, media, seconds):
    """Mixed traffic from 8 clients for a while: requests per second and errors."""
    server = Server(root / "load", media=media, worker="none").start()
    try:
        token = server.add_kiosk()
        password = server.add_user("loadtester")
        audio_kiosk, audio_phone = kiosk_wav(), phone_wav()
        stop = time.monotonic() + seconds
        counts = {"requests": 0, "errors": 0}
        kept = []  # (kind, key) a client was told is safe
        examples = []
        lock = threading.Lock()

        def client(c):
            http, response = server.login("loadtester", password)
            with http:
                traffic(c, http, response)

        def traffic(c, http, response):
            local = {"requests": 1, "errors": int(response.status_code != 303)}
            n = 0
            while time.monotonic() < stop:
                kind = n % 3
                try:
                    if kind == 0:
                        client_id = f"load-{c}-{n:05d}"
                        r = server.upload(token, audio_kiosk, client_id, http=http)
                        local["requests"] += 1
                        if r.status_code in (200, 202):
                            with lock:
                                kept.append(("kiosk", client_id))
                        else:
                            raise AssertionError(f"upload {r.status_code}")
                    elif kind == 1:
                        sid, statuses, told_safe = race_call(server, audio_phone, c * 100000 + n)
                        local["requests"] += 4
                        if told_safe:
                            with lock:
                                kept.append(("phone", sid))
                        if statuses != [200, 200, 200, 204]:
                            raise AssertionError(f"call {statuses}")
                    else:
                        for path in ("/console/", "/console/rows", "/healthz"):
                            r = http.get(server.url(path), timeout=30)
                            local["requests"] += 1
                            if r.status_code != 200:
                                raise AssertionError(f"GET {path} {r.status_code}")
                except Exception as exc:  # counted, and the client goes on like a real one
                    local["errors"] += 1
                    with lock:
                        if len(examples) < 3:
                            examples.append(str(exc)[:80])
                n += 1
            with lock:
                for key, value in local.items():
                    counts[key] += value

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(client, range(CLIENTS)))
        elapsed = time.monotonic() - started
        lost = sum(1 for kind, key in kept if not _stored(server, kind, key))
        rate = counts["requests"] / elapsed
        errors = counts["errors"]
        detail = f"{rate:.0f} req/s at {CLIENTS} clients, {counts['requests']} requests, "
        detail += f"{errors} errors" + (f" (e.g. {'; '.join(examples)})" if examples else "")
        locked = sum(n for line, n in server.errors().items() if "locked" in line)
        if locked:
            detail += f", {locked} 'database is locked' in the log"
        return Row("load held", errors == 0 and lost == 0, detail, lost)
    finally:
        server.stop()


def _stored(server, kind, key):
    """Tell whether a recording a client was told about has its request."""
    if kind == "kiosk":
        return kiosk_key(server, key) is not None
    return request_for(server, key) is not None


def kill_mid_upload(root, media):
    """kill -9 while an upload streams in; restart; no leftovers; the kiosk's retry lands."""
    server = Server(root / "kill-upload", media=media, worker="none").start()
    try:
        token = server.add_kiosk()
        audio = kiosk_wav()
        spooled = kill_during_upload(server, token, audio, "killed-upload-0001")
        server.start()
        time.sleep(1.0)  # give a start-up sweep its moment
        leftovers = server.leftovers()
        retry = server.upload(token, audio, "killed-upload-0001")
        stored = kiosk_key(server, "killed-upload-0001") is not None
        lost = int(not stored)
        ok = bool(spooled) and not leftovers and retry.status_code == 202 and stored
        detail = (
            f"spool file seen: {'yes' if spooled else 'no'}; after restart "
            f"{len(leftovers)} leftover .part file(s); retry answered {retry.status_code}"
        )
        return Row("kill -9 mid-upload", ok, detail, lost)
    finally:
        server.stop()


def kill_mid_transcription(root, media):
    """kill -9 while the worker transcribes; restart; the job finishes within seconds."""
    server = Server(root / "kill-decode", media=media, worker="inprocess")
    token = server.add_kiosk()  # before the worker starts writing
    server.start()
    try:
        request_id = kill_during_transcription(server, token, kiosk_wav())
        if request_id is None:
            return Row("kill -9 mid-transcription", None, "never killed a running job")
        restarted = time.monotonic()
        server.start()
        done = wait_for(lambda: transcribed(server, request_id), WAIT_S)
        took = time.monotonic() - restarted
        stage = server.query("SELECT stage FROM requests WHERE id = ?", [request_id])
        lost = int(not stage)
        detail = (
            f"job done {took:.1f} s after restart (stage {stage[0][0]})"
            if done
            else f"job not done {WAIT_S:.0f} s after restart (stage {stage[0][0]})"
        )
        return Row("kill -9 mid-transcription", bool(done) and not lost, detail, lost)
    finally:
        server.stop()


@contextlib.contextmanager
def tmpfs(path, size):
    """Mount a tmpfs of size at path (root only); unmount it afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory):
    """Fill a file system until it refuses another byte; return the filler file."""
    filler = directory / "filler.bin"
    # Unbuffered, so closing the file has nothing left to write into the full disk.
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


def disk_full(root, media):
    """A full data directory: clear answers, no partial files, nothing lost once space is back."""
    base = root / "disk-full"
    base.mkdir(parents=True)
    # Room for a few recordings once the filler is gone; none while it is there.
    with tmpfs(base / "data", "2m") as data:
        server = Server(base, media=media, worker="inprocess", settings={"DATA_DIR": str(data)})
        token = server.add_kiosk()  # before the worker starts writing
        server.start()
        try:
            filler = fill(data)
            kiosk = server.upload(token, kiosk_wav(), "disk-full-0001")
            sid, statuses, _ = race_call(server, phone_wav(), 1)
            leftovers = server.leftovers()
            filler.unlink()
            retry = server.upload(token, kiosk_wav(), "disk-full-0001")
            phone = wait_for(lambda: request_for(server, sid), 15)
            if not phone:  # the nightly job's way: list the account's recordings, fetch ours
                server.flask("twilio", "reconcile", "--days", "1")
                phone = wait_for(lambda: request_for(server, sid), 15)
            kiosk_stored = kiosk_key(server, "disk-full-0001") is not None
            lost = int(not kiosk_stored) + int(not phone)
            clear = kiosk.status_code != 500 and kiosk.headers.get("Content-Type", "").startswith(
                "application/json"
            )
            ok = clear and 500 not in statuses and not leftovers and lost == 0
            detail = (
                f"kiosk got {kiosk.status_code} {kiosk.headers.get('Content-Type', '')[:16]}; "
                f"call webhooks {statuses}; {len(leftovers)} .part left; after space freed: "
                f"kiosk retry {retry.status_code}, phone recording "
                f"{'stored' if phone else 'NOT stored'}"
            )
            return Row("disk full", ok, detail, lost)
        finally:
            server.stop()


def model_broken(root, media):
    """A truncated model file: the request is failed for a person; /readyz says not ready."""
    models = root / "broken-models"
    source = REPO / "speech_models"
    models.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.is_dir() and entry.name != "whisper-tiny-en":
            (models / entry.name).symlink_to(entry.resolve())
        elif entry.is_file():
            shutil.copy(entry, models / entry.name)
    broken = models / "whisper-tiny-en"
    broken.mkdir()
    for item in (source / "whisper-tiny-en").iterdir():
        if item.name == "model.bin":
            (broken / item.name).write_bytes(item.read_bytes()[: 1 << 20])
        else:
            (broken / item.name).symlink_to(item.resolve())
    server = Server(
        root / "model-broken",
        media=media,
        worker="inprocess",
        settings={"MODELS_DIR": str(models)},
    )
    token = server.add_kiosk()  # before the worker starts writing
    try:
        try:
            server.start()
        except Exception as exc:  # refusing to start with a broken model is also a clear answer
            text = str(exc)
            clean = "Traceback" not in text
            return Row("model broken", clean, f"serve refused to start: {text[-120:]!r}")
        response = server.upload(token, kiosk_wav(), "broken-model-0001")
        if response.status_code != 202:
            return Row("model broken", False, f"the upload answered {response.status_code}")
        request_id = response.json()["id"]
        started = time.monotonic()
        failed = wait_for(
            lambda: server.query(
                "SELECT stage, urgency, needs_review FROM requests WHERE id = ?"
                " AND stage = 'failed' AND needs_review = 1",
                [request_id],
            ),
            WAIT_S,
        )
        state = server.query(
            "SELECT stage, urgency, needs_review FROM requests WHERE id = ?", [request_id]
        )
        ready = server.request("GET", "/readyz", timeout=10).status_code
        ok = bool(failed) and ready == 503
        waited = f"{time.monotonic() - started:.1f} s" if failed else f"{WAIT_S:.0f} s (gave up)"
        detail = f"request (stage, urgency, review) {state[0] if state else None} after {waited};"
        detail += f" /readyz {ready}"
        return Row("model broken", ok, detail, int(not state))
    finally:
        server.stop()


def database_read_only(root, media):
    """A read-only database: no traceback and no 500; nothing lost once it is writable again."""
    base = root / "db-ro"
    base.mkdir(parents=True)
    with tmpfs(base / "db", "16m") as dbdir:
        settings = {"DATABASE": str(dbdir / "carecall.db")}
        server = Server(base, media=media, worker="none", settings=settings).start()
        token = server.add_kiosk()
        server.stop()
        subprocess.run(["mount", "-o", "remount,ro", str(dbdir)], check=True)
        started, statuses = True, []
        mark = server.log_path.stat().st_size
        try:
            server.start(timeout=20)
        except Exception:
            started = False
        if started:
            statuses.append(server.upload(token, kiosk_wav(), "read-only-0001").status_code)
            statuses.append(server.request("GET", "/healthz", timeout=10).status_code)
        server.stop()
        log = server.log_path.read_text(errors="replace")[mark:]
        traceback = "Traceback" in log
        subprocess.run(["mount", "-o", "remount,rw", str(dbdir)], check=True)
        server.start()
        try:
            retry = server.upload(token, kiosk_wav(), "read-only-0001")
            stored = kiosk_key(server, "read-only-0001") is not None
        finally:
            server.stop()
        ok = not traceback and 500 not in statuses and stored
        detail = (
            f"{'served' if started else 'refused to start'}"
            + (f" answering {statuses}" if statuses else "")
            + f"; traceback in log: {'yes' if traceback else 'no'}; once writable the retry"
            f" answered {retry.status_code}"
        )
        return Row("database read-only", ok, detail, int(not stored))


def bad_inputs(root, media, examples):
    """Random signed webhooks and uploads through the real app: count them, and any 5xx."""
    from tests.fuzzing import WAV, WEBHOOKS, Tally, fuzz_app, fuzz_uploads, fuzz_webhooks
    from tests.test_fuzz import build_app

    app = fuzz_app(build_app(root / "fuzz"), media)
    _, url = media.add(WAV)
    tally = Tally()
    failing = []
    for path in WEBHOOKS:
        try:
            fuzz_webhooks(
                app, path, max_examples=examples, recording_urls=(url,), tally=tally, shrink=False
            )
        except Exception as exc:  # hypothesis re-raises the first failing case
            failing.append(f"{path}: {str(exc).splitlines()[0][:60]}")
    from app.db import connect
    from app.kiosk import devices

    db = connect(app.config["DATABASE"])
    with app.app_context():
        _, token = devices.add(db, "Fuzz", region="riverside")
    db.close()
    try:
        fuzz_uploads(app, token, max_examples=examples * 4, tally=tally, shrink=False)
    except Exception as exc:
        failing.append(f"upload: {str(exc).splitlines()[0][:60]}")
    detail = f"{tally.cases} cases, {tally.requests} requests; {len(failing)} endpoint(s) failing"
    if failing:
        detail += f" (e.g. {failing[0]})"
    return Row("bad inputs tried", not failing, detail)


# --- the table -------------------------------------------------------------------------------

ROWS = {
    "load": lambda root, media, args: load_held(root, media, args.seconds),
    "kill-upload": lambda root, media, args: kill_mid_upload(root, media),
    "kill-decode": lambda root, media, args: kill_mid_transcription(root, media),
    "disk-full": lambda root, media, args: disk_full(root, media),
    "model-broken": lambda root, media, args: model_broken(root, media),
    "db-read-only": lambda root, media, args: database_read_only(root, media),
    "fuzz": lambda root, media, args: bad_inputs(root, media, args.fuzz_examples),
}
TITLES = {
    "load": "load held",
    "kill-upload": "kill -9 mid-upload",
    "kill-decode": "kill -9 mid-transcription",
    "disk-full": "disk full",
    "model-broken": "model broken",
    "db-read-only": "database read-only",
    "fuzz": "bad inputs tried",
}
NEEDS_ROOT = {"disk-full", "db-read-only"}


def main(argv=None):
    """Run the checks and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the load phase")
    parser.add_argument(
        "--fuzz-examples", type=int, default=500, help="random cases per webhook (x4 uploads)"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(ROWS), help="run only these rows")
    args = parser.parse_args(argv)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="carecall-faults-") as tmp,
        MediaServer(ACCOUNT_SID, AUTH_TOKEN) as media,
    ):
        root = Path(tmp)
        for name, run in ROWS.items():
            if args.only and name not in args.only:
                continue
            if name in NEEDS_ROOT and os.geteuid() != 0:
                rows.append(Row(TITLES[name], None, "skipped: mounting a tmpfs needs root"))
                continue
            print(f"... {name}", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                row = run(root, media, args)
            except Exception as exc:  # a check that cannot even run is a failed check
                last = str(exc).strip().splitlines()[-1:] or [""]
                row = Row(TITLES[name], False, f"check crashed: {type(exc).__name__}: {last[0]}")
            row.numbers += f"  [{time.monotonic() - started:.0f} s]"
            rows.append(row)
    lost = sum(r.lost for r in rows)
    rows.append(Row("requests lost", lost == 0, f"{lost} (must be 0)"))
    width = max(len(r.name) for r in rows)
    print(f"{'check':<{width}}  result  numbers")
    for row in rows:
        result = {True: "pass", False: "FAIL", None: "skip"}[row.ok]
        print(f"{row.name:<{width}}  {result:<6}  {row.numbers}")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
