"""Many at once against the real server: no 5xx, one request per recording, no orphan files."""

import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import speechgen
from tests.server import (
    new_call_sid,
    race_recording,
    running,
    session,
)

THREADS = 8
UPLOADS_PER_THREAD = 40
CALLS = 100
LOGINS = 16


@pytest.fixture
def server(tmp_path):
    """Run a real server of its own for each test (no worker: nothing waits for a transcript)."""
    with running(tmp_path / "server") as server:
        yield server


@pytest.fixture(scope="module")
def kiosk_wav():
    """Return a short spoken request as the kiosk would send it."""
    return speechgen.render("Could somebody help me carry my shopping home on Friday?").read_bytes()


@pytest.fixture(scope="module")
def phone_wav():
    """Return a short spoken request as a phone line records it."""
    return speechgen.telephone("Please call me back about a lift to the clinic.").read_bytes()


def assert_no_orphans(server):
    """Every recording file belongs to exactly one request and nothing is half written."""
    assert server.orphans() == {"unreferenced": [], "double": [], "missing": []}
    assert server.leftovers() == []
    incoming = server.data_dir / "incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []


def test_parallel_kiosk_uploads_each_become_one_request(server, kiosk_wav):
    token = server.add_kiosk("Concurrency Centre")
    results = {}

    def client(thread):
        with session() as http:
            for n in range(UPLOADS_PER_THREAD):
                client_id = f"thread{thread}-upload{n:03d}"
                response = server.upload(token, kiosk_wav, client_id, http=http)
                results[client_id] = (response.status_code, response.text[:200])

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(client, range(THREADS)))

    failures = {k: v for k, v in results.items() if v[0] != 202}
    assert len(results) == THREADS * UPLOADS_PER_THREAD
    assert failures == {}, (
        f"{len(failures)} uploads failed, e.g. {list(failures.items())[:2]}; "
        f"server errors: {server.errors()}"
    )
    counts = dict(
        server.query(
            "SELECT source_key, count(*) FROM requests WHERE source_key LIKE 'kiosk:%'"
            " GROUP BY source_key"
        )
    )
    sent = {key.rpartition(":")[2]: n for key, n in counts.items()}
    assert sent == dict.fromkeys(results, 1)
    assert_no_orphans(server)


def test_recorded_and_status_callbacks_racing_store_each_recording_once(server, phone_wav):
    def one_call(n):
        call_sid, caller = new_call_sid(), f"+1555200{n:04d}"
        recording_sid, statuses, recorded = race_recording(server, call_sid, caller, phone_wav)
        return {
            "recording_sid": recording_sid,
            "statuses": tuple(statuses),
            "recorded": recorded.text,
        }

    with ThreadPoolExecutor(THREADS) as pool:
        calls = list(pool.map(one_call, range(CALLS)))

    bad = [c for c in calls if c["statuses"] != (200, 200, 200, 204)]
    assert bad == [], (
        f"{len(bad)} of {CALLS} calls got an error, e.g. {bad[:1]};"
        f" server errors: {server.errors()}"
    )
    # The caller holds for the readback; the apology (a <Record> for voicemail) means a crash.
    apologised = [c for c in calls if not _holds_for_readback(c["recorded"])]
    assert apologised == [], (
        f"{len(apologised)} of {CALLS} callers heard the apology after their message was"
        f" stored; server errors: {server.errors()}"
    )
    sids = [c["recording_sid"] for c in calls]
    placeholders = ",".join("?" * len(sids))
    per_recording = dict(
        server.query(
            f"SELECT source_key, count(*) FROM requests WHERE source_key IN ({placeholders})"
            " GROUP BY source_key",
            sids,
        )
    )
    assert per_recording == dict.fromkeys(sids, 1)
    states = server.query(
        f"SELECT state, count(*) FROM twilio_recordings WHERE recording_sid IN ({placeholders})"
        " GROUP BY state",
        sids,
    )
    assert states == [("stored", CALLS)]
    assert_no_orphans(server)


def _holds_for_readback(twiml):
    """Tell whether TwiML is the 'please wait while I listen' hold, not the apology."""
    root = ET.fromstring(twiml)
    verbs = [verb.tag for verb in root]
    redirect = root.find("Redirect")
    return "Record" not in verbs and redirect is not None and "/twilio/wait" in redirect.text


def test_parallel_logins_all_succeed_while_kiosks_upload(server, kiosk_wav):
    password = server.add_user("racer", role="coordinator")
    token = server.add_kiosk("Login Race Centre")
    ready = threading.Barrier(LOGINS, timeout=60)
    done = threading.Event()
    uploads = []

    def kiosk(thread):
        n = 0
        with session() as http:
            while not done.is_set():
                client_id = f"login-race{thread}-{n:04d}"
                uploads.append(server.upload(token, kiosk_wav, client_id, http=http).status_code)
                n += 1

    def login(_):
        with session() as http:
            page = http.get(server.url("/console/login"), timeout=30)
            csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
            ready.wait()
            response = http.post(
                server.url("/console/login"),
                data={"name": "racer", "password": password, "csrf_token": csrf},
                allow_redirects=False,
                timeout=120,
            )
            queue = http.get(server.url("/console/"), allow_redirects=False, timeout=30)
            return response.status_code, queue.status_code

    with ThreadPoolExecutor(THREADS // 2) as background:
        busy = [background.submit(kiosk, t) for t in range(THREADS // 2)]
        try:
            with ThreadPoolExecutor(LOGINS) as pool:
                results = list(pool.map(login, range(LOGINS)))
        finally:
            done.set()
        for future in busy:
            future.result()

    assert results == [(303, 200)] * LOGINS, f"server errors: {server.errors()}"
    assert uploads and set(uploads) == {202}
    assert_no_orphans(server)
