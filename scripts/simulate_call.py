#!/usr/bin/env python
"""Play Twilio's part in a phone call to CareCall, and print what the caller hears.

Each webhook is signed exactly as Twilio signs it (X-Twilio-Signature over the full URL
and the sorted POST parameters); the TwiML that comes back is followed verb by verb:
<Gather> sends the next key, <Record> serves the next WAV from a local fake of Twilio's
media endpoint (HTTP basic auth with AccountSid:AuthToken), <Redirect> is followed,
<Say>/<Play> are printed. Tests and bench/ivr.py drive calls through the same classes.

Example:
    export TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_AUTH_TOKEN=test-token-1
    CARECALL_TWILIO_RECORDING_HOSTS=127.0.0.1 .venv/bin/flask --app app serve --port 5000 &
    .venv/bin/python scripts/simulate_call.py --url http://127.0.0.1:5000 \\
        --from +15551234567 1 request.wav 1
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from twilio.request_validator import RequestValidator

API_VERSION = "2010-04-01"
SILENCE = None  # the caller says and presses nothing
HANGUP = "hangup"  # the caller puts the phone down


@dataclass(frozen=True)
class Speech:
    """A spoken answer: the audio Twilio would record, and how long it lasts."""

    audio: bytes
    duration_s: float = 5.0

    @classmethod
    def from_file(cls, path):
        """Read a WAV file as a spoken answer, measuring its length from the RIFF header."""
        data = Path(path).read_bytes()
        return cls(data, wav_seconds(data))


def wav_seconds(data, default=5.0):
    """Return a WAV's duration from its fmt and data chunks (PCM or mu-law alike)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return default
    offset, byte_rate = 12, None
    while offset + 8 <= len(data):
        chunk, size = (
            data[offset : offset + 4],
            int.from_bytes(data[offset + 4 : offset + 8], "little"),
        )
        if chunk == b"fmt ":
            byte_rate = int.from_bytes(data[offset + 16 : offset + 20], "little")
        elif chunk == b"data" and byte_rate:
            return min(size, len(data) - offset - 8) / byte_rate
        offset += 8 + size + (size & 1)
    return default


def sid(prefix):
    """Make a Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


class MediaServer:
    """A fake of Twilio's recording media endpoint: WAVs behind HTTP basic auth."""

    def __init__(self, account_sid, auth_token):
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.recordings = {}
        self.calls = {}  # RecordingSid -> CallSid, for the REST API's list
        self.failures = 0
        self.requests = []
        self._lock = threading.Lock()
        media = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  http.server's name
                media._serve(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self):
        """Return the fake's base URL, like Twilio's API host."""
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def add(self, audio, call_sid=None):
        """Keep a recording and return (RecordingSid, RecordingUrl) as Twilio sends them."""
        recording_sid = sid("RE")
        with self._lock:
            self.recordings[recording_sid] = audio
            self.calls[recording_sid] = call_sid
        path = f"/{API_VERSION}/Accounts/{self.account_sid}/Recordings/{recording_sid}"
        return recording_sid, self.base_url + path

    def fail_next(self, count):
        """Make the next count downloads fail with 503, as a busy media server does."""
        with self._lock:
            self.failures = count

    def _serve(self, handler):
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        with self._lock:
            self.requests.append(handler.path)
            failing = self.failures > 0
            self.failures -= 1 if failing else 0
        if handler.headers.get("Authorization") != f"Basic {expected}":
            handler.send_response(401)
            handler.send_header("WWW-Authenticate", 'Basic realm="Twilio API"')
            handler.end_headers()
            return
        if failing:
            handler.send_response(503)
            handler.end_headers()
            return
        name = Path(urlsplit(handler.path).path).name
        if name == "Recordings.json":
            self._list(handler)
            return
        recording_sid, _, suffix = name.partition(".")
        audio = self.recordings.get(recording_sid)
        if audio is None or suffix not in ("", "wav"):
            handler.send_response(404)
            handler.end_headers()
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "audio/x-wav")
        handler.send_header("Content-Length", str(len(audio)))
        handler.end_headers()
        handler.wfile.write(audio)

    def _list(self, handler):
        """Answer the REST API's recordings list, one page, in Twilio's JSON wire format."""
        import json

        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Recordings"
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        with self._lock:
            items = [
                {
                    "account_sid": self.account_sid,
                    "api_version": API_VERSION,
                    "call_sid": self.calls.get(recording_sid),
                    "channels": 1,
                    "date_created": now,
                    "date_updated": now,
                    "duration": "5",
                    "sid": recording_sid,
                    "source": "RecordVerb",
                    "start_time": now,
                    "status": "completed",
                    "uri": f"{base}/{recording_sid}.json",
                }
                for recording_sid in self.recordings
            ]
        body = json.dumps(
            {
                "recordings": items,
                "start": 0,
                "end": max(0, len(items) - 1),
                "page": 0,
                "page_size": 50,
                "first_page_uri": f"{base}.json?PageSize=50&Page=0",
                "next_page_uri": None,
                "previous_page_uri": None,
                "uri": f"{base}.json?PageSize=50&Page=0",
            }
        ).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


class HttpTransport:
    """Posts webhooks over HTTP to a running CareCall."""

    def post(self, url, params, headers):
        """POST form params to url; return (status, body)."""
        data = urlencode(params).encode()
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


class FlaskTransport:
    """Posts webhooks to an app in this process through Flask's test client."""

    def __init__(self, client):
        self.client = client

    def post(self, url, params, headers):
        """POST form params to url; return (status, body)."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        response = self.client.post(
            path, data=params, headers=headers, base_url=f"{parts.scheme}://{parts.netloc}"
        )
        return response.status_code, response.get_data(as_text=True)


@dataclass
class Call:
    """One simulated call: what was said, what was pressed, and how each webhook went."""

    call_sid: str
    caller: str  # the other party: who rang CareCall, or whom CareCall rang (outbound-api)
    direction: str = "inbound"
    lines: list = field(default_factory=list)
    webhooks: list = field(default_factory=list)  # (path, status, seconds)
    recordings: list = field(default_factory=list)  # RecordingSids made in this call
    recorded_at: list = field(default_factory=list)  # perf_counter when each recording ended
    heard_at: list = field(default_factory=list)  # (perf_counter, text) for each <Say>
    ended: str = ""

    def heard(self):
        """Return everything CareCall said, in order."""
        return [text for who, text in self.lines if who == "carecall"]

    def transcript(self):
        """Return the conversation as printable lines."""
        names = {"carecall": "CareCall", "caller": "Caller", "twilio": "Twilio"}
        return "\n".join(f"{names[who]:>8}: {text}" for who, text in self.lines)


class Twilio:
    """Twilio's side of inbound calls to one CareCall: signs webhooks and follows TwiML."""

    def __init__(
        self,
        base_url,
        *,
        account_sid,
        auth_token,
        transport,
        media=None,
        number="+15550100000",
        on_pause=None,
        dial_status="no-answer",
        max_steps=200,
        on_answer=None,
    ):
        self.base_url = base_url.rstrip("/")
        self.account_sid = account_sid
        self.validator = RequestValidator(auth_token)
        self.transport = transport
        self.media = media
        self.number = number
        self.on_pause = on_pause or time.sleep
        self.dial_status = dial_status
        self.max_steps = max_steps
        # Called before each answer: a caller listens to the whole prompt before pressing.
        self.on_answer = on_answer or (lambda: None)

    def sign(self, url, params):
        """Compute X-Twilio-Signature for a POST to url, exactly as Twilio does."""
        return self.validator.compute_signature(url, params)

    def post(self, url, params, *, signature=None, call=None):
        """Sign and POST a webhook; return (status, body)."""
        url = urljoin(self.base_url + "/", url)
        headers = {"X-Twilio-Signature": signature or self.sign(url, params)}
        started = time.perf_counter()
        status, body = self.transport.post(url, params, headers)
        if call is not None:
            call.webhooks.append((urlsplit(url).path, status, time.perf_counter() - started))
        return status, body

    def call_params(self, call, status="in-progress"):
        """Return the parameters Twilio sends with every voice webhook of a call."""
        # A call CareCall placed through the REST API comes from its number to the other party.
        ours, theirs = self.number, call.caller
        source, target = (ours, theirs) if call.direction == "outbound-api" else (theirs, ours)
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.call_sid,
            "CallStatus": status,
            "Called": target,
            "Caller": source,
            "Direction": call.direction,
            "From": source,
            "To": target,
        }

    def call(
        self,
        caller,
        answers,
        *,
        call_sid=None,
        voice_path="/twilio/voice",
        status_path="/twilio/call-status",
        direction="inbound",
    ):
        """Ring CareCall (or answer a call it placed: outbound-api), answer its prompts in order,
        and return the Call."""
        call = Call(call_sid or sid("CA"), caller, direction)
        answers = iter(answers)
        started = time.monotonic()
        step = (urljoin(self.base_url + "/", voice_path.lstrip("/")), {}, None)
        for _ in range(self.max_steps):
            url, extra, body = step
            if body is None:
                status, body = self.post(url, {**self.call_params(call), **extra}, call=call)
                if status != 200:
                    call.lines.append(("twilio", f"{urlsplit(url).path} answered {status}"))
                    call.ended = f"http {status}"
                    break
            step = self._follow(call, url, body, answers)
            if step is None:
                break
        else:
            call.ended = "too many steps"
        duration = max(1, round(time.monotonic() - started))
        if status_path:
            params = {**self.call_params(call, "completed"), "CallDuration": str(duration)}
            self.post(status_path, params, call=call)
        return call

    def _follow(self, call, url, body, answers):
        """Carry out one TwiML document; return the next (url, params, body) or None."""
        root = ET.fromstring(body)
        for verb in root:
            if verb.tag == "Say":
                self._say(call, verb)
            elif verb.tag == "Play":
                call.lines.append(("carecall", f"[plays {verb.text}]"))
            elif verb.tag == "Pause":
                self.on_pause(float(verb.get("length", 1)))
            elif verb.tag == "Gather":
                for inner in verb:
                    if inner.tag == "Say":
                        self._say(call, inner)
                self.on_answer()
                answer = next(answers, HANGUP)
                if answer == HANGUP:
                    call.lines.append(("caller", "(hangs up)"))
                    call.ended = "caller hung up"
                    return None
                action = urljoin(url, verb.get("action", url))
                if answer is SILENCE:
                    call.lines.append(("caller", "(silence)"))
                    if verb.get("actionOnEmptyResult") == "true":
                        return action, {}, None
                    continue
                call.lines.append(("caller", f"presses {answer}"))
                return action, {"Digits": str(answer)}, None
            elif verb.tag == "Record":
                step = self._record(call, url, verb, next(answers, HANGUP))
                if step == "continue":
                    continue
                return step
            elif verb.tag == "Redirect":
                return urljoin(url, verb.text.strip()), {}, None
            elif verb.tag == "Dial":
                number = "".join(verb.itertext()).strip()
                call.lines.append(("twilio", f"dials {number}: {self.dial_status}"))
                if verb.get("action"):
                    action = urljoin(url, verb.get("action"))
                    return action, {"DialCallStatus": self.dial_status}, None
                continue
            elif verb.tag in ("Hangup", "Reject"):
                call.ended = "carecall hung up"
                return None
            else:
                raise ValueError(f"the simulator does not know <{verb.tag}>")
        call.ended = "end of TwiML"
        return None

    def _say(self, call, verb):
        text = " ".join("".join(verb.itertext()).split())
        call.lines.append(("carecall", text))
        call.heard_at.append((time.perf_counter(), text))

    def _record(self, call, url, verb, answer):
        """Record an answer: serve it as media, post the action, then the status callback."""
        if answer == HANGUP:
            call.ended = "caller hung up"
            return None
        if answer is SILENCE or not isinstance(answer, Speech):
            call.lines.append(("caller", "(silence)"))
            return "continue"  # Twilio moves to the next verb when nothing was recorded
        recording_sid, recording_url = self.media.add(answer.audio, call.call_sid)
        call.recordings.append(recording_sid)
        call.lines.append(("caller", f"(speaks for {answer.duration_s:.0f} s)"))
        call.recorded_at.append(time.perf_counter())
        recording = {
            "RecordingSid": recording_sid,
            "RecordingUrl": recording_url,
            "RecordingDuration": str(max(1, round(answer.duration_s))),
        }
        action = urljoin(url, verb.get("action", url))
        status, body = self.post(
            action, {**self.call_params(call), **recording, "Digits": "#"}, call=call
        )
        callback = verb.get("recordingStatusCallback")
        if callback:
            self.recording_status(
                call, urljoin(url, callback), recording_sid, recording_url, answer.duration_s
            )
        if status != 200:
            call.ended = f"http {status}"
            return None
        return action, {}, body

    def recording_status(self, call, url, recording_sid, recording_url, duration_s, **extra):
        """Send the recording status callback Twilio sends when a recording is ready."""
        params = {
            "AccountSid": self.account_sid,
            "CallSid": call.call_sid,
            "RecordingChannels": "1",
            "RecordingDuration": str(max(1, round(duration_s))),
            "RecordingSid": recording_sid,
            "RecordingSource": "RecordVerb",
            "RecordingStartTime": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
            "RecordingStatus": "completed",
            "RecordingUrl": recording_url,
            **extra,
        }
        return self.post(url, params, call=call)


def main(argv=None):
    """Simulate one call against a running CareCall and print the conversation."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "answers", nargs="*", help="in order: a key (1, 2, *, 0), '-' for silence, or a WAV file"
    )
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="CareCall's base URL")
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"))
    parser.add_argument(
        "--account-sid", default=os.environ.get("TWILIO_ACCOUNT_SID") or "AC" + "0" * 32
    )
    parser.add_argument("--from", dest="caller", default="+15551234567")
    parser.add_argument(
        "--pause",
        choices=("real", "none"),
        default="real",
        help="sleep for <Pause> as a phone would, or not at all",
    )
    args = parser.parse_args(argv)
    if not args.auth_token:
        parser.error(
            "--auth-token or TWILIO_AUTH_TOKEN is required: CareCall refuses unsigned calls"
        )
    answers = []
    for item in args.answers:
        if item == "-":
            answers.append(SILENCE)
        elif Path(item).is_file():
            answers.append(Speech.from_file(item))
        else:
            answers.append(item)
    with MediaServer(args.account_sid, args.auth_token) as media:
        twilio = Twilio(
            args.url,
            account_sid=args.account_sid,
            auth_token=args.auth_token,
            transport=HttpTransport(),
            media=media,
            on_pause=time.sleep if args.pause == "real" else (lambda s: None),
        )
        call = twilio.call(args.caller, itertools.chain(answers))
    print(call.transcript())
    print(f"--- call {call.call_sid} ended: {call.ended}")
    return 0 if not call.ended.startswith("http") else 1


if __name__ == "__main__":
    sys.exit(main())
