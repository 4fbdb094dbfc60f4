"""Storage that waits and retries: concurrent writers, unwritable databases, recordings on disk."""

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest

from app import pipeline, queue, recordings
from app.accounts import create_token, create_user, password_hasher
from app.db import connect, get_db, migrate
from app.kiosk import devices
from tests import speechgen
from tests.twilio_fake import ACCOUNT_SID, twilio_for

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"


def hammer(path, tag, rounds):
    """Create and then update requests, each update reading before it writes; return errors."""
    db = connect(path)
    errors = []
    try:
        for n in range(rounds):
            try:
                request, _ = queue.create(db, channel="kiosk", source_key=f"{tag}:{n}")
                # queue.update reads the row, then writes it and an event: a deferred
                # transaction that must upgrade from reader to writer.
                queue.update(db, request["id"], {"urgency": "high"}, actor="t", action="bump")
            except Exception as exc:  # every error is counted, none may happen
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        db.close()
    return errors


HAMMER_SCRIPT = (
    "import sys; from tests.test_storage import hammer;"
    " errors = hammer(sys.argv[1], sys.argv[2], int(sys.argv[3]));"
    " print(len(errors)); print(*errors[:3], sep='\\n')"
)


@pytest.mark.parametrize(("threads", "processes", "rounds"), [(6, 0, 40), (4, 2, 30)])
def test_concurrent_writers_wait_instead_of_failing(tmp_path, threads, processes, rounds):
    path = tmp_path / "busy.db"
    migrate(path)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER_SCRIPT, str(path), f"p{i}", str(rounds)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = [None] * threads

    def run(i):
        results[i] = hammer(path, f"t{i}", rounds)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert [e for errors in results for e in errors] == []
    assert [out.splitlines()[0] for out in outputs] == ["0"] * processes, outputs
    db = connect(path)
    assert db["requests"].count == (threads + processes) * rounds
    assert db["events"].count == 2 * (threads + processes) * rounds


def test_processes_starting_together_migrate_once(tmp_path):
    path, go = tmp_path / "fresh.db", tmp_path / "go"
    # Each process waits for the same signal, so they all migrate at the same moment.
    script = (
        "import sys, time, pathlib; from app.db import migrate\n"
        "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.005)\n"
        "print(len(migrate(sys.argv[1])))"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(2)  # time to import the app
    go.touch()
    done = [(child.wait(timeout=120), *child.communicate()) for child in children]
    assert [code for code, *_ in done] == [0] * 4, [err for *_, err in done]
    # Exactly one process applied the migrations; the others found nothing pending.
    applied = sorted(int(out) for _, out, _ in done)
    assert applied[:3] == [0, 0, 0] and applied[3] > 0


@contextlib.contextmanager
def served(tmp_path):
    """Run `flask serve` (threaded, no in-process worker) in a subprocess; yield its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = carecall_env(tmp_path, tmp_path / "served.db") | {
        "CARECALL_WORKER": "none",
        "CARECALL_PASSWORD_HASH_MEMORY_KIB": "8192",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz").close()
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.communicate(timeout=10)


def post_upload(base, token, data, client_id):
    """Send one kiosk upload over HTTP; return the status code."""
    boundary = "carecallboundary"
    body = b"".join(
        [
            f'--{boundary}\r\nContent-Disposition: form-data; name="client_id"\r\n\r\n'
            f"{client_id}\r\n".encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="audio";'
            f' filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    request = urllib.request.Request(
        f"{base}/api/v1/voicemail",
        data=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def log_in(base, name, password):
    """Log in to the console as a browser would; return the status of the answer."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(f"{base}/console/login", timeout=60) as page:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.read().decode())[1]
    form = {"name": name, "password": password, "csrf_token": csrf}
    try:
        with opener.open(f"{base}/console/login", urlencode(form).encode(), timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_real_server_under_parallel_uploads_logins_and_another_writer(tmp_path, recording):
    with served(tmp_path) as base:
        database = tmp_path / "served.db"
        db = connect(database)
        token = devices.add(db, "Riverside", region="r")[1]
        hasher = password_hasher(1, 8192, 1)
        for n in range(4):
            create_user(db, f"coordinator{n}", "coordinator", PASSWORD, hasher=hasher)
        # Another process writes all the while, as a worker or a second server would.
        other = subprocess.Popen(
            [sys.executable, "-c", HAMMER_SCRIPT, str(database), "other", "60"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        with ThreadPoolExecutor(max_workers=8) as pool:
            uploads = [
                pool.submit(post_upload, base, token, recording, f"upload-{n:04d}")
                for n in range(40)
            ]
            # Right and wrong passwords: both write (last login, failure counts).
            logins = [
                pool.submit(log_in, base, f"coordinator{n % 4}", PASSWORD if n % 2 else "wrong")
                for n in range(16)
            ]
            statuses = [f.result() for f in uploads]
            login_statuses = sorted({f.result() for f in logins})
        assert other.communicate(timeout=120)[0].splitlines()[0] == "0"
    assert sorted(set(statuses)) == [202]
    assert login_statuses == [200, 401]  # 200: the console, after the login's redirect
    kiosk_requests = list(db["requests"].rows_where("channel = 'kiosk' AND audio_path IS NOT NULL"))
    assert len(kiosk_requests) == 40
    data = tmp_path / "data"
    assert files_under(data / "recordings") == sorted(
        str(Path(r["audio_path"]).relative_to("recordings")) for r in kiosk_requests
    )
    assert files_under(data / "incoming") == []


# --- a database that cannot be written ----------------------------------------------------


@contextlib.contextmanager
def read_only(path):
    """Make a file or folder read-only, even for root (a read-only bind mount)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    done = subprocess.run(["mount", "--bind", path, path], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount as root: {done.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path, path], check=True)
        yield
    finally:
        subprocess.run(["umount", path], check=True)


def unwritable_database(tmp_path, what):
    """Return (database path, the path made read-only) for one kind of unwritable database."""
    folder = tmp_path / "db"
    folder.mkdir()
    database = folder / "carecall.db"
    if what == "file":
        migrate(database)
        # Folded back into one file, as a copied or restored database would be.
        connect(database).execute("PRAGMA journal_mode=DELETE")
        return database, database
    if what == "migrated folder":
        migrate(database)
        return database, folder
    return database, folder  # "empty folder": no database yet


def carecall_env(tmp_path, database):
    """Return an environment that points a CareCall process at database."""
    return {
        **os.environ,
        "CARECALL_DATABASE": str(database),
        "CARECALL_DATA_DIR": str(tmp_path / "data"),
        "CARECALL_SECRET_KEY": "test-secret-key-0123456789",
    }


def run_flask(tmp_path, database, *command):
    """Run one flask command of the app on database, as an operator would; return it done."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *command],
        cwd=REPO,
        env=carecall_env(tmp_path, database),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("what", ["file", "migrated folder", "empty folder"])
@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "0"]])
def test_unwritable_database_is_one_clear_line(tmp_path, what, command):
    database, frozen = unwritable_database(tmp_path, what)
    with read_only(frozen):
        done = run_flask(tmp_path, database, *command)
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, len(lines)) == (1, 1), done.stderr
    assert lines[0].startswith(f"Error: database {database} cannot be written: ")


def test_a_command_that_only_reads_works_on_a_database_that_cannot_be_written(tmp_path):
    """Commands bring a new database's schema up to date, but only read one already so."""
    database = tmp_path / "db" / "carecall.db"
    database.parent.mkdir()
    migrate(database)
    with read_only(database):
        done = run_flask(tmp_path, database, "tokens", "list")
    assert done.returncode == 0, done.stderr


def _damaged(tmp_path):
    """Return a migrated database whose second page (the migrations' table) is overwritten."""
    path = tmp_path / "whole.db"
    migrate(path)
    connect(path).execute("PRAGMA journal_mode=DELETE")
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096
    return bytes(data)


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp_path: bytes(range(256)) * 20,
        lambda tmp_path: b"SQLite format 3\x00" + b"\xff" * 4080,
        _damaged,
    ],
)
@pytest.mark.parametrize("command", [["tokens", "list"], ["serve", "--port", "0"]])
def test_a_file_that_is_not_a_database_is_one_clear_line(tmp_path, make, command):
    database = tmp_path / "carecall.db"
    content = make(tmp_path)
    database.write_bytes(content)
    done = run_flask(tmp_path, database, *command)
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, len(lines)) == (1, 1), done.stderr
    assert lines[0].startswith(f"Error: database {database} is damaged or not a SQLite database (")
    # Nothing written past SQLite's header (whose journal-mode bytes may be set on opening).
    assert database.read_bytes()[100:] == content[100:]


# --- recordings: written under a temporary name, published with their request ------------


@pytest.fixture(scope="module")
def recording():
    """Return a real spoken recording as WAV bytes."""
    return speechgen.render("Could somebody help me with my shopping this week?").read_bytes()


@pytest.fixture
def kiosk_token(app):
    """Register a kiosk and return its Authorization header."""
    with app.app_context():
        return {"Authorization": f"Bearer {devices.add(get_db(), 'Riverside', region='r')[1]}"}


def upload(client, headers, data, client_id="rec-00001"):
    """Post a recording the way the kiosk page does."""
    form = {"audio": (io.BytesIO(data), "audio.wav"), "client_id": client_id}
    return client.post(
        "/api/v1/voicemail", data=form, headers=headers, content_type="multipart/form-data"
    )


def files_under(folder):
    """Return every file under folder, relative to it."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# A trigger makes the database refuse one row, the way a real constraint or I/O error would.
REFUSE = (
    "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.action = '{}'"
    " BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
)


@pytest.mark.parametrize(
    "refused",
    [
        "received",  # inside receive(), before the file is published
        "uploaded",  # after receive() published it, in the kiosk's own transaction
    ],
)
def test_a_failed_save_leaves_no_recording(app, db, client, kiosk_token, recording, refused):
    db.execute(REFUSE.format(refused))
    # Something nobody named: still JSON the tablet retries, with an id to find it in the log.
    failed = upload(client, kiosk_token, recording)
    assert failed.status_code == 500 and failed.json["error"] == "internal"
    assert failed.json["request_id"]
    assert db["requests"].count == 0
    assert files_under(app.config["DATA_DIR"]) == []
    db.execute("DROP TRIGGER refuse")
    response = upload(client, kiosk_token, recording)
    assert response.status_code == 202, response.json
    stored = queue.get(db, response.json["id"])["audio_path"]
    assert files_under(app.config["DATA_DIR"]) == [stored]


# --- a full disk ----------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder, size, *, read_only=False):
    """Mount a real filesystem of size bytes at folder (a tmpfs; needs root)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=True)


# Room on the data disk, as a share of the recording's size.
ROOM = [
    pytest.param(0.5, id="the upload itself does not fit"),
    pytest.param(1.5, id="the upload fits, its saved copy does not"),
]


@pytest.mark.parametrize("room", ROOM)
def test_full_disk_is_507_json_for_the_kiosk_and_leaves_nothing(
    make_app, tmp_path, recording, room
):
    data = tmp_path / "small"
    with small_disk(data, int(len(recording) * room)):
        app = make_app(DATA_DIR=str(data))
        with app.app_context():
            token = devices.add(get_db(), "Riverside", region="r")[1]
        response = upload(app.test_client(), {"Authorization": f"Bearer {token}"}, recording)
        assert response.status_code == 507
        assert response.json["error"] == "storage_full"
        assert "no room" in response.json["message"] and "Errno" not in response.json["message"]
        assert files_under(data) == []
        assert connect(app.config["DATABASE"])["requests"].count == 0


@pytest.mark.parametrize("audio", ["bytes", "file"])
def test_receive_on_a_full_disk_raises_storage_full_and_saves_nothing(
    make_app, tmp_path, recording, audio
):
    source = tmp_path / "call.wav"
    source.write_bytes(recording)
    data = tmp_path / "small"
    with small_disk(data, len(recording) // 2):
        app = make_app(DATA_DIR=str(data))
        with app.app_context(), pytest.raises(recordings.StorageFull):
            given = recording if audio == "bytes" else str(source)
            pipeline.receive(get_db(), given, channel="voicemail", source_key="RE1")
        assert files_under(data) == []
        assert connect(app.config["DATABASE"])["requests"].count == 0


def fill(folder):
    """Fill the filesystem under folder to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as out:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                continue


@pytest.fixture
def unwritable_data_dir(tmp_path):
    """Return a builder of a DATA_DIR that cannot be written, in one of the ways it happens."""

    @contextlib.contextmanager
    def build(how):
        data = tmp_path / "data"
        if how == "a regular file":
            data.write_text("not a folder")
            yield data
        else:
            with small_disk(data, 1 << 20, read_only=True):
                yield data

    return build


UNWRITABLE = ["a regular file", "a read-only disk"]


@pytest.mark.parametrize("how", UNWRITABLE)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/v1/voicemail"), ("GET", "/kiosk/speech/en/speech/saved.wav")],
)
def test_an_unwritable_data_dir_is_a_json_503_for_the_kiosk(
    make_app, recording, unwritable_data_dir, how, method, path
):
    with unwritable_data_dir(how) as data:
        app = make_app(DATA_DIR=str(data))
        with app.app_context():
            token = devices.add(get_db(), "Riverside", region="r")[1]
        headers = {"Authorization": f"Bearer {token}"}
        if method == "POST":
            response = upload(app.test_client(), headers, recording)
        else:
            response = app.test_client().get(path)
        assert response.status_code == 503 and response.is_json, response.get_data(True)
        assert response.json["error"] == "storage_unavailable"
        assert "Errno" not in response.json["message"]
        assert int(response.headers["Retry-After"]) > 0
        assert connect(app.config["DATABASE"])["requests"].count == 0


@pytest.fixture
def full_database(make_app, tmp_path):
    """Return an app (and a kiosk's headers) whose database's disk is full."""
    disk = tmp_path / "dbdisk"
    with small_disk(disk, 2 << 20):
        app = make_app(DATABASE=str(disk / "carecall.db"))
        with app.app_context():
            token = devices.add(get_db(), "Riverside", region="r")[1]
        fill(disk)
        yield app, {"Authorization": f"Bearer {token}"}
        pool = app.extensions["carecall.db_pool"]
        while not pool.empty():
            pool.get_nowait().close()


def test_a_full_database_disk_is_507_json_for_the_kiosk(full_database, recording):
    app, headers = full_database
    response = upload(app.test_client(), headers, recording)
    assert response.status_code == 507 and response.is_json, response.get_data(True)
    assert response.json["error"] == "storage_full"
    assert int(response.headers["Retry-After"]) > 0
    assert files_under(app.config["DATA_DIR"]) == []


def test_a_busy_database_is_503_with_retry_after_for_the_kiosk(make_app, recording):
    app = make_app(DB_BUSY_TIMEOUT_SECONDS=0.1)
    with app.app_context():
        token = devices.add(get_db(), "Riverside", region="r")[1]
    holder = connect(app.config["DATABASE"])
    holder.execute("BEGIN IMMEDIATE")
    try:
        response = upload(app.test_client(), {"Authorization": f"Bearer {token}"}, recording)
    finally:
        holder.conn.rollback()
    assert response.status_code == 503 and response.json["error"] == "busy"
    assert int(response.headers["Retry-After"]) > 0


# --- the start-up sweep ---------------------------------------------------------------------

HOUR = 3600
# (file under DATA_DIR, age in seconds, named by a request?) -> where it is after the sweep.
LEFTOVERS = [
    ("recordings/2026/01/02/crashed.wav.part", 2 * HOUR, False, None),
    (
        "recordings/2026/01/02/saving-now.wav.part",
        60,
        False,
        "recordings/2026/01/02/saving-now.wav.part",
    ),
    ("incoming/upload-killed.part", 2 * HOUR, False, None),
    ("incoming/upload-arriving.part", 60, False, "incoming/upload-arriving.part"),
    (
        "recordings/2026/01/02/unclaimed.wav",
        2 * HOUR,
        False,
        "orphans/recordings/2026/01/02/unclaimed.wav",
    ),
    ("recordings/2026/01/02/publishing.wav", 60, False, "recordings/2026/01/02/publishing.wav"),
    ("recordings/2026/01/02/kept.wav", 2 * HOUR, True, "recordings/2026/01/02/kept.wav"),
    ("kiosk-speech/prompt.wav", 2 * HOUR, False, "kiosk-speech/prompt.wav"),
]


def leave(app, db):
    """Leave the files of LEFTOVERS in the app's data directory, with their ages."""
    data = Path(app.config["DATA_DIR"])
    for name, age, claimed, _ in LEFTOVERS:
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF" + name.encode())
        os.utime(path, (time.time() - age, time.time() - age))
        if claimed:
            queue.create(db, channel="kiosk", audio_path=name)


def test_sweep_removes_old_parts_and_moves_unclaimed_recordings(app, db):
    leave(app, db)
    data = Path(app.config["DATA_DIR"])
    swept = recordings.sweep(data, db)
    assert (swept.parts_removed, swept.orphans_moved) == (2, 1)
    assert files_under(data) == sorted(where for *_, where in LEFTOVERS if where)
    moved = data / "orphans/recordings/2026/01/02/unclaimed.wav"
    assert moved.read_bytes() == b"RIFFrecordings/2026/01/02/unclaimed.wav"


@pytest.fixture
def writers():
    """Return the pids of a live process, an ended one and a killed one not yet reaped."""
    live = subprocess.Popen(["sleep", "60"])
    ended = subprocess.Popen(["true"])
    ended.wait()
    zombie = subprocess.Popen(["sleep", "60"])
    zombie.kill()  # kill -9; its parent (us) has not reaped it yet
    time.sleep(0.2)
    yield {"live": live.pid, "ended": ended.pid, "killed": zombie.pid, "this": os.getpid()}
    live.kill()
    live.wait()
    zombie.wait()


# (file, whose) -> removed at once? Young files named after a process that is gone go now.
NAMED_PARTS = [
    ("incoming/upload-{pid}-abc123.part", "ended", True),
    ("incoming/upload-{pid}-abc123.part", "killed", True),
    ("incoming/upload-{pid}-abc123.part", "live", False),
    ("incoming/upload-{pid}-abc123.part", "this", False),
    ("recordings/2026/01/02/call.wav.{pid}.part", "ended", True),
    ("recordings/2026/01/02/call.wav.{pid}.part", "killed", True),
    ("recordings/2026/01/02/call.wav.{pid}.part", "live", False),
    ("kiosk-speech/tmpab12.wav.{pid}.part", "killed", True),
    ("kiosk-speech/tmpab12.wav.{pid}.part", "this", False),
]


@pytest.mark.parametrize(("name", "whose", "removed"), NAMED_PARTS)
def test_a_part_whose_writer_is_gone_is_swept_at_once(app, db, writers, name, whose, removed):
    data = Path(app.config["DATA_DIR"])
    path = data / name.format(pid=writers[whose])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half an upload")
    swept = recordings.sweep(data, db)
    assert swept.parts_removed == int(removed)
    assert path.exists() is not removed


def test_parts_are_named_after_their_writer(app, recording, tmp_path):
    from app.kiosk.upload import read_upload

    staged = recordings.stage(app.config["DATA_DIR"], recording, ".wav")
    assert staged.partial.name.endswith(f".wav.{os.getpid()}.part") and staged.partial.exists()
    staged.discard()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
        + recording
        + b"\r\n--b--\r\n"
    )
    form = read_upload(
        io.BytesIO(body), "multipart/form-data; boundary=b", {"audio": 10**7}, tmp_path
    )
    assert form.path.name.startswith(f"upload-{os.getpid()}-") and form.path.name.endswith(".part")
    form.discard()


def test_a_running_worker_sweeps_again_not_only_at_start_up(make_app, writers):
    from app import jobs

    app = make_app(DATA_SWEEP_SECONDS=1)
    part = Path(app.config["DATA_DIR"]) / f"incoming/upload-{writers['killed']}-xyz.part"
    part.parent.mkdir(parents=True)
    worker = jobs.start_worker(app, "worker")
    try:
        part.write_bytes(b"half an upload, after the worker started")
        deadline = time.monotonic() + 10
        while part.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop()
    assert not part.exists()


def test_worker_start_up_sweeps_and_says_so(app, db, runner):
    leave(app, db)
    result = runner.invoke(args=["worker", "--burst"])
    assert result.exit_code == 0, result.output
    data = app.config["DATA_DIR"]
    assert (
        f"swept {data}: 2 unfinished file(s) removed, 1 unclaimed recording(s) moved to"
        f" {Path(data) / 'orphans'}"
    ) in result.output


# --- a lock that outlasts the busy timeout ---------------------------------------------------


@pytest.mark.parametrize(
    ("held", "status"),
    [
        (1.0, 202),  # longer than one wait of 0.5 s: the retry after a pause gets the lock
        (None, 503),  # never let go: a clear "busy" answer the tablet retries, nothing kept
    ],
)
def test_a_long_held_lock_is_retried_then_answered_busy(make_app, recording, held, status):
    app = make_app(DB_BUSY_TIMEOUT_SECONDS=0.5)
    with app.app_context():
        token = devices.add(get_db(), "Riverside", region="r")[1]
    holder = connect(app.config["DATABASE"])
    holder.execute("BEGIN IMMEDIATE")
    if held is not None:
        release = threading.Timer(held, holder.conn.rollback)
        release.start()
    try:
        started = time.monotonic()
        response = upload(app.test_client(), {"Authorization": f"Bearer {token}"}, recording)
        waited = time.monotonic() - started
    finally:
        if held is None:
            holder.conn.rollback()
        else:
            release.join()
    assert response.status_code == status, response.json
    db = connect(app.config["DATABASE"])
    if status == 503:
        assert response.json["error"] == "busy" and "try again" in response.json["message"]
        assert db["requests"].count == 0
        assert files_under(app.config["DATA_DIR"]) == []
        assert 1.5 <= waited < 15  # three waits of 0.5 s and two short pauses, not 30 s
    else:
        assert db["requests"].count == 1


@pytest.mark.parametrize("seconds", [0.5, 2.0, 4.5])
def test_busy_timeout_comes_from_the_setting(make_app, seconds):
    app = make_app(DB_BUSY_TIMEOUT_SECONDS=seconds)
    with app.app_context():
        assert get_db().execute("PRAGMA busy_timeout").fetchone()[0] == seconds * 1000


@pytest.mark.parametrize(
    ("fail_inner", "fail_outer", "undone"),
    [
        (False, False, []),
        (True, False, ["inner"]),  # the savepoint rolled back, the transaction committed
        (False, True, ["inner", "outer"]),
        (True, True, ["inner", "outer"]),
    ],
)
def test_work_outside_the_database_is_undone_with_its_transaction(
    tmp_path, fail_inner, fail_outer, undone
):
    db = connect(tmp_path / "undo.db")
    done = []
    with contextlib.suppress(RuntimeError), db.atomic():
        db.on_rollback(lambda: done.append("outer"))
        with contextlib.suppress(RuntimeError), db.atomic():
            db.on_rollback(lambda: done.append("inner"))
            if fail_inner:
                raise RuntimeError("inner")
        if fail_outer:
            raise RuntimeError("outer")
    assert sorted(done) == undone


def test_intake_on_a_full_disk_is_one_clear_line(make_app, tmp_path, recording):
    source = tmp_path / "message.wav"
    source.write_bytes(recording)
    data = tmp_path / "small"
    with small_disk(data, len(recording) // 2):
        app = make_app(DATA_DIR=str(data))
        result = app.test_cli_runner().invoke(args=["intake", str(source)])
        assert files_under(data) == []
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: There is no room left to save recordings, so this one was not saved."
    ]


# --- Twilio's race: the recording's action and its status callback at the same moment -------


def test_twilio_recorded_and_status_racing_store_one_request_each(app, db, media, recording):
    callers = [twilio_for(app, media), twilio_for(app, media)]  # one test client each
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer as in production: the apology
    answers = []
    for n in range(20):
        call_sid, phone = f"CA{n:032d}", f"+1555010{n:04d}"
        recording_sid, url = media.add(recording, call_sid)
        params = {
            "AccountSid": ACCOUNT_SID,
            "CallSid": call_sid,
            "From": phone,
            "RecordingSid": recording_sid,
            "RecordingUrl": url,
            "RecordingDuration": "3",
        }
        start = threading.Barrier(2)

        def send(twilio, path, extra, start=start, params=params):
            start.wait()
            return twilio.post(path, {**params, **extra})

        with ThreadPoolExecutor(max_workers=2) as pool:
            recorded = pool.submit(send, callers[0], "/twilio/recorded/voicemail", {"Digits": "#"})
            status = pool.submit(
                send,
                callers[1],
                "/twilio/recording-status/voicemail",
                {"RecordingStatus": "completed"},
            )
            answers.append((recorded.result(), status.result()))
    heard = [body for (_, body), _ in answers]
    assert [s for (s, _), _ in answers] == [200] * 20
    assert [s for _, (s, _) in answers] == [204] * 20
    assert all("We have your message" in body and "Sorry" not in body for body in heard)
    rows = list(db["requests"].rows)
    assert len(rows) == 20 and len({r["source_key"] for r in rows}) == 20
    assert files_under(Path(app.config["DATA_DIR"]) / "recordings") == sorted(
        str(Path(r["audio_path"]).relative_to("recordings")) for r in rows
    )


def test_sweeps_starting_together_share_the_work(app, db):
    leave(app, db)
    data = Path(app.config["DATA_DIR"])
    start = threading.Barrier(4)

    def sweep():
        start.wait()
        return recordings.sweep(data, connect(app.config["DATABASE"]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: sweep(), range(4)))
    assert sum(r.parts_removed for r in results) == 2
    assert sum(r.orphans_moved for r in results) == 1
    assert files_under(data) == sorted(where for *_, where in LEFTOVERS if where)


@pytest.mark.parametrize("password", [PASSWORD, "wrong password"])
def test_a_login_behind_a_held_lock_is_503_to_try_again(make_app, password):
    app = make_app(DB_BUSY_TIMEOUT_SECONDS=0.2)
    create_user(connect(app.config["DATABASE"]), "alice", "coordinator", PASSWORD)
    client = app.test_client()
    page = client.get("/console/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    holder = connect(app.config["DATABASE"])
    holder.execute("BEGIN IMMEDIATE")
    try:
        response = client.post(
            "/console/login", data={"name": "alice", "password": password, "csrf_token": csrf}
        )
    finally:
        holder.conn.rollback()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert "try again in a moment" in response.get_data(as_text=True)


# --- spoken kiosk prompts -----------------------------------------------------------------

SAVED = "/kiosk/speech/en/speech/saved.wav"


def test_a_spoken_prompt_is_cached_whole(app):
    response = app.test_client().get(SAVED)
    assert response.status_code == 200
    [cached] = (Path(app.config["DATA_DIR"]) / "kiosk-speech").iterdir()
    with wave.open(str(cached)) as clip:
        whole = clip.getnframes() * clip.getsampwidth() * clip.getnchannels()
    assert cached.stat().st_size == 44 + whole and whole > 20000
    assert cached.read_bytes() == response.get_data()


@pytest.mark.parametrize("room", [16 * 1024, 64 * 1024])
def test_a_prompt_cut_short_by_a_full_disk_is_507_and_never_cached(make_app, tmp_path, room):
    data = tmp_path / "small"
    with small_disk(data, room):
        app = make_app(DATA_DIR=str(data))
        response = app.test_client().get(SAVED)
        assert response.status_code == 507 and response.json["error"] == "storage_full"
        assert int(response.headers["Retry-After"]) > 0
        assert files_under(data) == []


def test_a_full_database_disk_is_507_on_the_console_and_the_api(make_app, tmp_path):
    """Logging in, logging out and API writes say the disk is full, never a bare 500."""
    from tests.test_console import FAST, login, make_user, post_form

    disk = tmp_path / "dbdisk"
    with small_disk(disk, 2 << 20):
        app = make_app(DATABASE=str(disk / "carecall.db"), **FAST)
        with app.app_context():
            db = get_db()
            make_user(db, "pat", "coordinator")
            token = create_token(db, "monitor", "coordinator")[0]
            request_id = queue.create(db, channel="phone", phone="+15550000001")[0]["id"]
        console = app.test_client()
        assert login(console, "pat").status_code == 303
        fill(disk)
        answers = {
            "login": login(app.test_client(), "pat"),
            "logout": post_form(console, "/console/logout", {}),
            "api": app.test_client().patch(
                f"/api/v1/requests/{request_id}",
                json={"status": "triaged"},
                headers={"Authorization": f"Bearer {token}"},
            ),
        }
        pool = app.extensions["carecall.db_pool"]
        while not pool.empty():
            pool.get_nowait().close()
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 507)
    assert answers["api"].json["error"] == "storage_full"
    assert all(int(r.headers["Retry-After"]) > 0 for r in answers.values())
