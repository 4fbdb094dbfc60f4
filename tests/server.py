"""The real server in a subprocess, for outside-in tests and bench/faults.py.

`flask --app app serve` runs in its own process group on a free loopback port with its own
database and data directory, configured only through CARECALL_* environment variables, the
way an operator runs it. Twilio's side is played by scripts/simulate_call.py's MediaServer
(recordings behind HTTP basic auth on loopback) and by webhooks signed with the real
twilio RequestValidator over the URL the server checks (PUBLIC_BASE_URL).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests
from twilio.request_validator import RequestValidator

from scripts.simulate_call import API_VERSION, MediaServer, sid
from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "outside-in-secret-key-0123456789"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# The harness never goes through a proxy: everything it talks to is on loopback.
_NO_PROXY = {"http": None, "https": None}
# The last line of a logged traceback: "sqlite3.OperationalError: database is locked".
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Full|Locked)\b: ")


class ServerFailed(RuntimeError):
    """The server did not start, or stopped answering."""


def free_port():
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def session():
    """Return an HTTP session that never uses a proxy."""
    http = requests.Session()
    http.trust_env = False
    http.proxies.update(_NO_PROXY)
    return http


class Server:
    """One CareCall instance: its directories, its settings and its serve process."""

    def __init__(self, root, *, media=None, worker="none", settings=None, port=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.media = media
        self.port = port or free_port()
        self.process = None
        self.starts = 0
        self.settings = {
            "DATABASE": str(self.root / "carecall.db"),
            "DATA_DIR": str(self.root / "data"),
            "OUTBOX_DIR": str(self.root / "outbox"),
            "SECRET_KEY": SECRET_KEY,
            "WORKER": worker,
            "PUBLIC_BASE_URL": self.base_url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            # The fake media host is plain http on loopback, which check_host allows.
            "TWILIO_RECORDING_HOSTS": "127.0.0.1",
            "TWILIO_API_BASE_URL": media.base_url if media else "http://127.0.0.1:9",
            "JOB_BACKOFF_SECONDS": "0.2",
            **(settings or {}),
        }
        self.validator = RequestValidator(AUTH_TOKEN)

    # --- process ---------------------------------------------------------------------------

    @property
    def base_url(self):
        """Return the server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self):
        """Return the file holding the server's output, across restarts."""
        return self.root / "server.log"

    def env(self):
        """Return the environment the server and its CLI run with: ours, never the caller's."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CARECALL_", "TWILIO_", "FLASK_"))
        }
        env.update({f"CARECALL_{k}": str(v) for k, v in self.settings.items()})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout=60):
        """Start `flask --app app serve` and wait until /healthz answers."""
        if self.process is not None and self.process.poll() is None:
            raise ServerFailed("the server is already running")
        self.starts += 1
        log = open(self.log_path, "a")  # noqa: SIM115  closed in _reap
        log.write(f"\n=== start {self.starts} ===\n")
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # signals we send reach only the server
        )
        self._log = log
        try:
            self.wait_ready(timeout)
        except ServerFailed:
            self.kill()  # a server that never came up is not left behind
            raise
        return self

    def wait_ready(self, timeout=60):
        """Wait until the server answers /healthz (any status: it is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"serve exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                self.request("GET", "/healthz", timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise ServerFailed(f"serve did not answer in {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout=10):
        """Stop the server as Ctrl-C does, then for certain."""
        if self.process is None or self.process.poll() is not None:
            self._reap()
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        self._reap()

    def kill(self):
        """Kill the server with SIGKILL, as a power cut or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._reap()

    def restart(self, timeout=60):
        """Start the server again on the same port, database and data directory."""
        self.stop()
        return self.start(timeout)

    def _reap(self):
        """Close the log file of a process that has ended."""
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def log_tail(self, lines=60):
        """Return the end of the server's output."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def errors(self):
        """Count the exceptions the server logged, by their last line."""
        found = {}
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for line in text.splitlines():
            if _EXCEPTION.match(line):
                found[line[:160]] = found.get(line[:160], 0) + 1
        return found

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- command line ----------------------------------------------------------------------

    def flask(self, *args, check=True):
        """Run a `flask --app app` command against this server's database."""
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise ServerFailed(f"flask {' '.join(args)} failed:\n{result.stderr}{result.stdout}")
        return result

    def add_kiosk(self, name="Outside-in Centre", region="riverside"):
        """Register a kiosk with the CLI and return its bearer token."""
        out = self.flask("kiosks", "add", name, "--region", region, "--json").stdout
        return json.loads(out.strip().splitlines()[-1])["token"]

    def add_user(self, name, role="coordinator"):
        """Create a console user with the CLI and return the generated password."""
        out = self.flask("users", "create", name, "--role", role, "--generate-password").stdout
        return re.search(r"^password: (\S+)$", out, re.M).group(1)

    # --- database (read-only look from outside) -------------------------------------------

    def query(self, sql, params=()):
        """Run a read query on the server's database and return the rows."""
        db = sqlite3.connect(f"file:{self.settings['DATABASE']}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    @property
    def data_dir(self):
        """Return the server's data directory."""
        return Path(self.settings["DATA_DIR"])

    def orphans(self):
        """Return recording files no request points at, partial files, and double references."""
        stored = {
            str(p.relative_to(self.data_dir))
            for p in (self.data_dir / "recordings").rglob("*")
            if p.is_file()
        }
        referenced = [
            path
            for (path,) in self.query(
                "SELECT audio_path FROM requests WHERE audio_path IS NOT NULL"
                " UNION ALL SELECT video_path FROM requests WHERE video_path IS NOT NULL"
            )
        ]
        doubles = sorted({p for p in referenced if referenced.count(p) > 1})
        missing = sorted(set(referenced) - stored)
        return {
            "unreferenced": sorted(stored - set(referenced)),
            "double": doubles,
            "missing": missing,
        }

    def leftovers(self):
        """Return partial files (*.part) anywhere under the data directory."""
        return sorted(str(p) for p in self.data_dir.rglob("*.part"))

    # --- HTTP --------------------------------------------------------------------------------

    def url(self, path):
        """Return the absolute URL of a path on this server."""
        return self.base_url + path

    def sign(self, path, params):
        """Return X-Twilio-Signature for a POST of params to path, as Twilio computes it."""
        return self.validator.compute_signature(self.url(path), params)

    def request(self, method, path, *, http=None, **kwargs):
        """Send one request, on http if given, else on a session of its own; return it."""
        if http is not None:
            return http.request(method, self.url(path), **kwargs)
        with session() as own:
            return own.request(method, self.url(path), **kwargs)

    def twilio(self, path, params, *, http=None, timeout=30):
        """POST a signed Twilio webhook; return the response."""
        return self.request(
            "POST",
            path,
            http=http,
            data=params,
            headers={"X-Twilio-Signature": self.sign(path, params)},
            timeout=timeout,
        )

    def upload(self, token, audio, client_id, *, http=None, timeout=60, **fields):
        """Send a kiosk recording the way the kiosk page does; return the response."""
        data = {"client_id": client_id, **fields} if client_id else dict(fields)
        return self.request(
            "POST",
            "/api/v1/voicemail",
            http=http,
            files={"audio": ("audio.wav", audio, "audio/wav")},
            data=data,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def login(self, name, password, *, http=None):
        """Log in to the console with a fresh CSRF token; return (session, response)."""
        http = http or session()
        page = http.get(self.url("/console/login"), timeout=30)
        token = _CSRF.search(page.text).group(1)
        response = http.post(
            self.url("/console/login"),
            data={"name": name, "password": password, "csrf_token": token},
            allow_redirects=False,
            timeout=60,
        )
        return http, response


def wait_for(predicate, timeout=30.0, step=0.1):
    """Poll predicate until it returns something true; return it, or None on time-out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := predicate():
                return value
        time.sleep(step)
    return None


def kill_during_upload(server, token, audio, client_id):
    """Stream half an upload, kill -9 the server once it is spooling; return the spool files."""
    boundary = "killedmidstreamboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="client_id"\r\n\r\n'
        f"{client_id}\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    # Padded so that half of it is well past the first chunk the server spools.
    body = head + audio + b"\0" * 400_000 + f"\r\n--{boundary}--\r\n".encode()
    request = (
        f"POST /api/v1/voicemail HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request + body[: len(body) // 2])
        spooled = wait_for(lambda: list((server.data_dir / "incoming").glob("*.part")), 10)
        server.kill()
    return spooled or []


def kill_during_transcription(server, token, audio, tries=3):
    """Upload and kill -9 the server while its worker runs the transcription; return the id.

    Returns None when no try caught the job running (each try uploads a new recording).
    """
    for attempt in range(tries):
        response = server.upload(token, audio, f"killed-decode-{attempt:04d}")
        if response.status_code != 202:
            continue  # not accepted: nothing to kill the worker on
        job = f'%"request_id": {response.json()["id"]}}}%'
        wait_for(
            lambda job=job: server.query(
                "SELECT id FROM jobs WHERE kind = 'transcribe' AND state = 'running'"
                " AND payload LIKE ?",
                [job],
            ),
            30,
            0.01,
        )
        server.kill()
        state = server.query("SELECT state FROM jobs WHERE payload LIKE ?", [job])
        if state == [("running",)]:
            return response.json()["id"]  # killed mid-job: the row a dead worker leaves
        server.start()
    return None


def transcribed(server, request_id):
    """Tell whether a request's transcription job is done and its stage moved on."""
    return server.query(
        "SELECT 1 FROM jobs j, requests r WHERE r.id = ? AND r.stage != 'received'"
        " AND j.kind = 'transcribe' AND j.payload LIKE ? AND j.state = 'done'",
        [request_id, f'%"request_id": {request_id}}}%'],
    )


def call_params(call_sid, caller, status="in-progress"):
    """Return the parameters Twilio sends with every voice webhook of a call."""
    return {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": API_VERSION,
        "CallSid": call_sid,
        "CallStatus": status,
        "Called": "+15550100000",
        "Caller": caller,
        "Direction": "inbound",
        "From": caller,
        "To": "+15550100000",
    }


def recording_params(recording_sid, recording_url, duration_s=3):
    """Return what Twilio adds about a finished recording."""
    return {
        "RecordingSid": recording_sid,
        "RecordingUrl": recording_url,
        "RecordingDuration": str(duration_s),
    }


def status_params(call_sid, recording_sid, recording_url, duration_s=3):
    """Return the recording status callback's parameters."""
    return {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call_sid,
        "RecordingChannels": "1",
        "RecordingDuration": str(duration_s),
        "RecordingSid": recording_sid,
        "RecordingSource": "RecordVerb",
        "RecordingStatus": "completed",
        "RecordingUrl": recording_url,
    }


def race_recording(server, call_sid, caller, audio):
    """Play a call to its recording, then deliver recorded and status at the same moment.

    Return (recording_sid, the four status codes, the /recorded response): Twilio's normal
    race, the two callbacks for one RecordingSid arriving together.
    """
    import threading

    statuses = [
        server.twilio("/twilio/voice", call_params(call_sid, caller)).status_code,
        server.twilio(
            "/twilio/menu/main", {**call_params(call_sid, caller), "Digits": "1"}
        ).status_code,
    ]
    recording_sid, url = server.media.add(audio, call_sid)
    barrier = threading.Barrier(2, timeout=30)
    answers = {}
    recorded = (
        "/twilio/recorded/request",
        {**call_params(call_sid, caller), **recording_params(recording_sid, url)},
    )
    status = ("/twilio/recording-status/request", status_params(call_sid, recording_sid, url))

    def deliver(path, params):
        barrier.wait()
        answers[path] = server.twilio(path, params)

    threads = [threading.Thread(target=deliver, args=pair) for pair in (recorded, status)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses += [answers[recorded[0]].status_code, answers[status[0]].status_code]
    return recording_sid, statuses, answers[recorded[0]]


def new_call_sid():
    """Return a fresh Twilio-shaped CallSid."""
    return sid("CA")


@contextmanager
def running(root, *, worker="none", settings=None, media=None):
    """Run a server (and a fake Twilio media host unless one is given); yield the Server."""
    if media is None:
        with (
            MediaServer(ACCOUNT_SID, AUTH_TOKEN) as own_media,
            running(root, worker=worker, settings=settings, media=own_media) as server,
        ):
            yield server
        return
    server = Server(root, media=media, worker=worker, settings=settings)
    try:
        yield server.start()
    finally:
        server.stop()
