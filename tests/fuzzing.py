"""Random but correctly signed webhooks and random kiosk uploads, for tests and bench/faults.py.

Each case is posted through the Flask test client of a real app (real SQLite, a real
loopback media host for recordings). A case passes when the answer is below 500 and no
telephony step crashed behind the spoken apology: a bad input deserves a deliberate answer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import wave
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from tests.twilio_fake import ACCOUNT_SID, AUTH_TOKEN

BASE = "http://localhost"
WEBHOOKS = (
    "/twilio/voice",
    "/twilio/menu/main",
    "/twilio/menu/readback",
    "/twilio/menu/after_status",
    "/twilio/menu/emergency",
    "/twilio/no-message/request",
    "/twilio/no-message/voicemail",
    "/twilio/recorded/request",
    "/twilio/recorded/voicemail",
    "/twilio/recorded/no-such-purpose",
    "/twilio/wait",
    "/twilio/dialed",
    "/twilio/recording-status/request",
    "/twilio/recording-status/voicemail",
    "/twilio/call-status",
)
# Each field with values Twilio really sends; odd values and random text are mixed in.
PLAUSIBLE = {
    "AccountSid": (ACCOUNT_SID,),
    "CallSid": ("CA" + "1" * 32, "CA" + "2" * 32),
    "From": ("+15551230001", "+15551230002", "anonymous"),
    "To": ("+15550100000",),
    "Caller": ("+15551230001",),
    "Called": ("+15550100000",),
    "Digits": ("1", "2", "0", "*", "9", "#", "12", "hangup"),
    "RecordingSid": ("RE" + "1" * 32, "RE" + "2" * 32),
    "RecordingUrl": ("http://127.0.0.1:9/2010-04-01/Recordings/RE1",),  # and the run's own
    "RecordingDuration": ("3", "0", "120"),
    "RecordingStatus": ("completed", "absent", "failed"),
    "CallStatus": ("in-progress", "completed", "busy", "no-answer", "failed", "canceled"),
    "CallDuration": ("12", "0"),
    "DialCallStatus": ("completed", "no-answer", "busy", "failed"),
    "Direction": ("inbound",),
}
FIELDS = tuple(PLAUSIBLE)
# Values that have broken parsers before, next to plausible ones.
ODD_VALUES = (
    "",
    "0",
    "1",
    "2",
    "9",
    "#",
    "*",
    "-1",
    "abc",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "9223372036854775808",
    "http://[::1",
    "https://1/x",
    "http://127.0.0.1:9/2010-04-01/Recordings/RE1",
    "file:///etc/passwd",
    "completed",
    "in-progress",
    "no-answer",
    "+15551230001",
    "CA" + "1" * 32,
    "RE" + "1" * 32,
    "\x00",
    "é" * 300,
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


PHASES = tuple(Phase)
# A bench wants the count of bad inputs tried, not the smallest failing one.
NO_SHRINK = tuple(p for p in Phase if p not in (Phase.shrink, Phase.explain))


@dataclass
class Tally:
    """What a fuzz run tried and what went wrong."""

    cases: int = 0
    requests: int = 0
    failures: list = field(default_factory=list)


class _Crashes(logging.Handler):
    """Collect telephony steps that crashed and were answered with the apology."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def _urls(name, extra):
    """Return the recording URLs a run adds, for the RecordingUrl field only."""
    return tuple(extra) if name == "RecordingUrl" else ()


def value(name, extra=()):
    """Return a strategy for one form field: a value Twilio sends, an odd one, or random text."""
    plausible = PLAUSIBLE[name] + _urls(name, extra)
    choices = [st.sampled_from(ODD_VALUES), TEXT]
    if plausible:
        choices.insert(0, st.sampled_from(plausible))
    return st.one_of(*choices)


def webhook(paths, extra_values=()):
    """Return a strategy for one webhook: (path, form, signing, headers)."""
    # Most cases are a real webhook with a few fields spoiled or dropped, so the deep paths
    # are reached; the rest are any mix of fields.
    real = st.fixed_dictionaries(
        {name: st.sampled_from(PLAUSIBLE[name] + _urls(name, extra_values)) for name in FIELDS}
    )
    spoiled = st.builds(
        lambda base, bad, dropped: {k: v for k, v in {**base, **bad}.items() if k not in dropped},
        real,
        st.dictionaries(
            st.sampled_from(FIELDS),
            st.one_of(st.sampled_from(ODD_VALUES), TEXT),
            min_size=1,
            max_size=3,
        ),
        st.sets(st.sampled_from(FIELDS), max_size=2),
    )
    mixed = st.fixed_dictionaries({}, optional={name: value(name, extra_values) for name in FIELDS})
    known = st.one_of(spoiled, spoiled, mixed)
    unknown = st.dictionaries(TEXT.filter(bool), TEXT, max_size=2)
    query = st.sampled_from(("", "?n=0", "?n=5", "?n=abc", "?n=99999999999999999999", "?x=1"))
    return st.tuples(
        st.builds(_with_query, st.sampled_from(paths), query),
        st.builds(lambda k, u: {**u, **k}, known, unknown),
        st.sampled_from(("signed", "signed", "signed", "signed", "wrong", "none")),
        st.dictionaries(
            st.sampled_from(
                ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Prefix", "User-Agent")
            ),
            HEADER_TEXT,
            max_size=2,
        ),
    )


def _with_query(path, query):
    """Give /twilio/wait its poll counter (odd ones too); other webhooks have no query."""
    return path + query if path == "/twilio/wait" else path


def post_webhook(client, case, validator):
    """Post one webhook case; return the response."""
    path, form, signing, headers = case
    headers = dict(headers)
    if signing == "signed":
        headers["X-Twilio-Signature"] = validator.compute_signature(BASE + path, form)
    elif signing == "wrong":
        headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
    return client.post(path, data=form, headers=headers)


def fuzz_webhooks(app, path, *, max_examples, recording_urls=(), tally=None, shrink=True):
    """Post random signed webhooks to path (after up to 2 others on the same calls)."""
    tally = tally or Tally()
    client = app.test_client()
    validator = RequestValidator(AUTH_TOKEN)
    crashes = _Crashes()
    logger = logging.getLogger("app.telephony.views")

    @settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=PHASES if shrink else NO_SHRINK,
    )
    @given(
        before=st.lists(webhook(WEBHOOKS, recording_urls), max_size=2),
        case=webhook((path,), recording_urls),
    )
    def run(before, case):
        tally.cases += 1
        for step in before:
            # Only to build up call state: each path's own run judges its answers.
            with contextlib.suppress(Exception):
                post_webhook(client, step, validator)
            tally.requests += 1
        crashes.records.clear()
        tally.requests += 1
        try:
            response = post_webhook(client, case, validator)
        except Exception as exc:  # the test client re-raises what the app did not answer
            problem = f"raised {type(exc).__name__}: {exc}"
        else:
            problem = f"{response.status_code}" if response.status_code >= 500 else None
        if problem is None and crashes.records:
            problem = f"crashed behind the apology: {crashes.records[0]}"
        if problem:
            tally.failures.append((case, problem))
            raise AssertionError(f"{case[0]} {case[1]!r} ({case[2]}): {problem}")

    logger.addHandler(crashes)
    try:
        run()
    finally:
        logger.removeHandler(crashes)
    return tally


def wav_bytes(seconds=1.0, rate=8000):
    """Return a small WAV of a tone, so a decodable recording is among the cases."""
    import math

    frames = bytearray()
    for n in range(int(seconds * rate)):
        sample = int(8000 * math.sin(2 * math.pi * 440 * n / rate))
        frames += sample.to_bytes(2, "little", signed=True)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return out.getvalue()


WAV = wav_bytes()
PART_NAMES = ("audio", "video", "client_id", "language", "phone", "answer", "")


def _part(name, filename, content):
    """Return one multipart part."""
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return f"Content-Disposition: {disposition}\r\n\r\n".encode() + content


def multipart(parts, boundary, cut):
    """Assemble a multipart body, optionally cut short at a byte offset."""
    sep = b"--" + boundary.encode()
    body = b"".join(sep + b"\r\n" + _part(*p) + b"\r\n" for p in parts) + sep + b"--\r\n"
    return body[:cut] if cut is not None else body


UPLOAD = st.one_of(
    st.tuples(
        st.sampled_from(("multipart/form-data; boundary=b0und", "text/plain", "", "audio/wav")),
        st.binary(max_size=2000),
    ),
    st.builds(
        lambda parts, cut: ("multipart/form-data; boundary=b0und", multipart(parts, "b0und", cut)),
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(PART_NAMES), HEADER_TEXT.filter(lambda s: '"' not in s)),
                st.one_of(st.none(), st.sampled_from(("a.wav", "v.webm", ""))),
                st.one_of(
                    st.just(WAV),
                    st.builds(lambda n: WAV[:n], st.integers(0, len(WAV))),
                    st.binary(max_size=500),
                    st.sampled_from(ODD_VALUES).map(lambda s: s.encode()),
                    st.sampled_from((b"en", b"ko", b"xx", b"client-0001", b"+15551230001")),
                ),
            ),
            max_size=5,
        ),
        st.one_of(st.none(), st.integers(0, 4000)),
    ),
)


def fuzz_uploads(app, token, *, max_examples, tally=None, shrink=True):
    """Post random bodies, fields and headers to the kiosk upload API."""
    tally = tally or Tally()
    client = app.test_client()

    @settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=PHASES if shrink else NO_SHRINK,
    )
    @given(
        upload=UPLOAD,
        auth=st.sampled_from(("good", "good", "good", "bad", "none")),
        headers=st.dictionaries(
            st.sampled_from(("Content-Length", "Transfer-Encoding", "X-Forwarded-For")),
            st.sampled_from(("0", "-1", "abc", "99999999999", "chunked", "1.2.3.4")),
            max_size=1,
        ),
    )
    def run(upload, auth, headers):
        tally.cases += 1
        content_type, body = upload
        headers = dict(headers)
        if auth != "none":
            headers["Authorization"] = f"Bearer {token if auth == 'good' else 'x' * 43}"
        if content_type:
            headers["Content-Type"] = content_type
        tally.requests += 1
        try:
            response = client.post("/api/v1/voicemail", data=body, headers=headers)
        except Exception as exc:  # the test client re-raises what the app did not answer
            problem = f"raised {type(exc).__name__}: {exc}"
        else:
            problem = _upload_problem(response)
        if problem:
            tally.failures.append(((content_type, body[:80], auth, headers), problem))
            raise AssertionError(f"upload ({content_type!r}, {len(body)} bytes, {auth}): {problem}")

    run()
    return tally


def _upload_problem(response):
    """Return what is wrong with the upload API's answer, or None."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.get_data(as_text=True)[:200]}"
    if response.status_code >= 400 and not response.is_json:
        return f"{response.status_code} answered as {response.mimetype}, not JSON"
    return None


def fuzz_app(make, media):
    """Return an app built by make(config) that may download from the fake media host."""
    return make(
        {
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_RECORDING_HOSTS": ["127.0.0.1"],
            "TWILIO_API_BASE_URL": media.base_url,
            "TWILIO_DOWNLOAD_TIMEOUT": 1.0,
            "PUBLIC_BASE_URL": BASE,
        }
    )
