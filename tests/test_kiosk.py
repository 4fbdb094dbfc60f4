"""The kiosk API, registry, wording and CLI, through the real app and real audio files."""

import io
import json
import re
import time
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app import jobs, queue
from app.kiosk import devices, messages, wording
from app.kiosk.upload import CHUNK_BYTES, UploadError, read_upload
from app.pipeline import categories_for
from app.speech import load_audio
from tests import speechgen

GROCERIES = "Hello. Could somebody pick up my groceries from the supermarket this week, please?"


@pytest.fixture(scope="module")
def speech_wav():
    """Return a rendered WAV of a grocery request."""
    return speechgen.render(GROCERIES).read_bytes()


@pytest.fixture(scope="module")
def speech_webm(tmp_path_factory, speech_wav):
    """Return the grocery request as WebM/Opus, the way Chromium's MediaRecorder sends it."""
    samples = speechgen._read_mono(speechgen.render(GROCERIES), 48000)
    path = tmp_path_factory.mktemp("webm") / "speech.webm"
    speechgen.encode(samples, path, sample_rate=48000, codec="libopus", container="webm")
    return path.read_bytes()


@pytest.fixture(scope="module")
def speech_video(tmp_path_factory):
    """Return the grocery request as a WebM video with a picture track."""
    samples = speechgen._read_mono(speechgen.render(GROCERIES), 48000)
    path = tmp_path_factory.mktemp("video") / "speech.webm"
    speechgen.encode(
        samples, path, sample_rate=48000, codec="libopus", container="webm", video=True
    )
    return path.read_bytes()


@pytest.fixture
def kiosk(app):
    """Register a kiosk and return (kiosk, token)."""
    with app.app_context():
        from app.db import get_db

        return devices.add(get_db(), "Riverside Centre", region="riverside")


@pytest.fixture
def auth(kiosk):
    """Return the kiosk's Authorization header."""
    return {"Authorization": f"Bearer {kiosk[1]}"}


def post(client, headers, *, field="audio", data=b"", client_id="rec-0001", extra=None):
    """Post a recording to the upload API the way the kiosk page does."""
    form = {field: (io.BytesIO(data), f"{field}.webm")}
    if client_id:
        form["client_id"] = client_id
    form |= extra or {}
    return client.post(
        "/api/v1/voicemail", data=form, headers=headers, content_type="multipart/form-data"
    )


def incoming(app):
    """Return the upload spool's leftover files."""
    spool = Path(app.config["DATA_DIR"]) / "incoming"
    return sorted(spool.iterdir()) if spool.exists() else []


# --- the registry ------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_revocable(db):
    kiosk, token = devices.add(db, "Riverside Centre", region="riverside")
    row = db["kiosks"].get(kiosk.id)
    assert token not in json.dumps(row)
    assert row["token_hash"] == devices.hash_token(token)
    assert devices.authenticate(db, token).name == "Riverside Centre"
    devices.revoke(db, kiosk.id)
    with pytest.raises(devices.BadToken):
        devices.authenticate(db, token)


@pytest.mark.parametrize("token", [None, "", "nope", "x" * 200])
def test_unknown_tokens_are_refused(db, token):
    devices.add(db, "Riverside Centre", region="riverside")
    with pytest.raises(devices.BadToken):
        devices.authenticate(db, token)


@pytest.mark.parametrize(
    ("source_key", "found"),
    [("kiosk:1:abc12345", True), ("kiosk:2:abc12345", False), ("CA123", False), (None, False)],
)
def test_kiosk_of_a_request(db, source_key, found):
    kiosk, _ = devices.add(db, "Riverside Centre", region="riverside")
    result = devices.kiosk_of(db, {"source_key": source_key})
    assert (result == kiosk) if found else result is None


def test_whoami_names_the_centre_and_region(client, auth):
    body = client.get("/api/v1/kiosk", headers=auth).json
    assert (body["name"], body["region"], body["ok"]) == ("Riverside Centre", "riverside", True)
    assert "token_hash" not in body
    assert client.get("/api/v1/kiosk").status_code == 401


@pytest.mark.parametrize(
    ("asked", "configured", "expected"),
    [(None, None, "en"), ("xx", None, "en"), ("en", "xx", "en"), (None, "en", "en")],
)
def test_page_language_falls_back_to_one_with_wording(app, client, asked, configured, expected):
    app.config["KIOSK_LANGUAGE"] = configured
    page = client.get("/kiosk", query_string={"lang": asked} if asked else None)
    assert f'<html lang="{expected}">' in page.get_data(as_text=True)


# --- the upload API ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}],
    ids=["missing", "unknown", "not-bearer"],
)
def test_upload_without_a_valid_token_is_401(client, kiosk, speech_wav, headers):
    response = post(client, headers, data=speech_wav)
    assert response.status_code == 401
    assert response.json["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_kiosk_gets_401(app, client, kiosk, auth, speech_wav):
    with app.app_context():
        from app.db import get_db

        devices.revoke(get_db(), kiosk[0].id)
    assert post(client, auth, data=speech_wav).status_code == 401


def test_upload_is_stored_and_queued_before_202(app, client, db, kiosk, auth, speech_webm):
    response = post(client, auth, data=speech_webm, extra={"phone": "+15551230000"})
    assert response.status_code == 202, response.json
    body = response.json
    assert body["state"] == "transcribing" and body["created"] is True
    request = queue.get(db, body["id"])
    assert request["channel"] == "kiosk"
    assert request["region"] == "riverside"
    assert request["phone"] == "+15551230000"
    assert request["source_key"] == f"kiosk:{kiosk[0].id}:rec-0001"
    stored = Path(app.config["DATA_DIR"], request["audio_path"])
    assert stored.suffix == ".webm" and stored.read_bytes() == speech_webm
    assert [j["kind"] for j in db["jobs"].rows] == ["transcribe"]
    actions = [(e["actor"], e["action"]) for e in queue.events(db, body["id"])]
    assert ("kiosk:Riverside Centre", "uploaded") in actions
    assert incoming(app) == []


def test_repeated_upload_of_one_recording_is_one_request(client, db, auth, speech_webm):
    first = post(client, auth, data=speech_webm, client_id="same-recording-1")
    again = post(client, auth, data=speech_webm, client_id="same-recording-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json["id"] == again.json["id"]
    assert db["requests"].count == 1 and db["jobs"].count == 1


def test_video_is_stored_as_video(app, client, db, auth, speech_video):
    response = post(client, auth, field="video", data=speech_video)
    assert response.status_code == 202, response.json
    request = queue.get(db, response.json["id"])
    assert request["channel"] == "video" and request["video_path"].endswith(".webm")
    assert request["audio_path"] is None


def silent_wav():
    """Return two seconds of digital silence as WAV bytes."""
    buffer = io.BytesIO()
    import numpy as np

    path = Path(speechgen.ARTIFACTS) / "kiosk-silence.wav"
    speechgen.write_wav(np.zeros(32000, dtype="float32"), path)
    buffer.write(path.read_bytes())
    return buffer.getvalue()


BAD_UPLOADS = [
    (
        "text",
        "audio",
        b"Dear CareCall, this is a letter, not a recording.\n" * 20,
        415,
        "not_audio",
    ),
    ("png", "audio", b"\x89PNG\r\n\x1a\n" + b"\x00" * 400, 415, "not_audio"),
    ("corrupt", "audio", b"RIFF\x24\x08\x00\x00WAVEfmt " + b"\xff" * 300, 422, "corrupt"),
    ("empty", "audio", b"", 422, "empty"),
    ("silent", "audio", "silent", 422, "silent"),
    ("audio-as-video", "video", "speech", 415, "not_video"),
]


@pytest.mark.parametrize(
    ("field", "data", "status", "code"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_uploads_get_a_clear_4xx(app, client, db, auth, speech_wav, field, data, status, code):
    data = {"silent": silent_wav(), "speech": speech_wav}.get(data, data)
    response = post(client, auth, field=field, data=data)
    assert response.status_code == status, response.json
    assert response.json["error"] == code
    assert response.json["message"]
    assert db["requests"].count == 0
    assert incoming(app) == []


FORM_ERRORS = [
    ("not-multipart", {"content_type": "application/json", "data": "{}"}, 415, "not_multipart"),
    ("no-recording", {"data": {"client_id": "abcdefgh1"}}, 400, "missing_recording"),
    ("bad-client-id", {"data": {"client_id": "../../etc", "audio": "wav"}}, 400, "bad_field"),
    ("unknown-file", {"data": {"picture": "wav"}}, 400, "bad_field"),
    ("bad-language", {"data": {"language": "tlh", "audio": "wav"}}, 400, "bad_field"),
    ("bad-phone", {"data": {"phone": "call me maybe", "audio": "wav"}}, 400, "bad_field"),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"), [c[1:] for c in FORM_ERRORS], ids=[c[0] for c in FORM_ERRORS]
)
def test_malformed_forms_get_400s(app, client, auth, speech_wav, kwargs, status, code):
    kwargs = dict(kwargs)
    if isinstance(kwargs["data"], dict):
        kwargs["data"] = {
            k: (io.BytesIO(speech_wav), "x.wav") if v == "wav" else v
            for k, v in kwargs["data"].items()
        }
        kwargs.setdefault("content_type", "multipart/form-data")
    response = client.post("/api/v1/voicemail", headers=auth, **kwargs)
    assert (response.status_code, response.json["error"]) == (status, code)
    assert incoming(app) == []


class Endless(io.RawIOBase):
    """A request body of `size` bytes made on the fly; counts what was read."""

    def __init__(self, head, size):
        self.head, self.size, self.sent = head, size, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.sent >= self.size:
            return 0
        n = min(len(buffer), self.size - self.sent)
        start = self.sent
        chunk = (self.head[start:] + b"\x00" * n)[:n] if start < len(self.head) else b"\x00" * n
        buffer[:n] = chunk
        self.sent += n
        return n


def multipart_head(field="audio", boundary="kioskboundary"):
    """Return the start of a multipart body whose file part never ends."""
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.webm"\r\n'
        f"Content-Type: audio/webm\r\n\r\n"
    ).encode() + b"\x1aE\xdf\xa3"


def raw_post(app, headers, body, content_length=None):
    """Post a streamed body straight to the WSGI app, as a server would hand it over."""
    environ = EnvironBuilder(path="/api/v1/voicemail", method="POST", headers=headers).get_environ()
    environ["CONTENT_TYPE"] = "multipart/form-data; boundary=kioskboundary"
    environ["wsgi.input"] = body
    if content_length is None:
        # A chunked upload: no length, the server marks the stream as terminated.
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    app_iter, status, _ = run_wsgi_app(app, environ, buffered=True)
    payload = json.loads(b"".join(app_iter))
    return int(status.split()[0]), payload


def test_a_1gb_upload_is_refused_from_its_header_without_reading(app, auth):
    body = Endless(multipart_head(), 1 << 30)
    status, payload = raw_post(app, auth, body, content_length=1 << 30)
    assert status == 413 and payload["error"] == "too_large"
    assert body.sent == 0


@pytest.mark.parametrize("field", ["audio", "video"])
def test_an_oversized_stream_is_cut_off_at_its_field_limit(app, auth, field):
    app.config |= {"KIOSK_MAX_AUDIO_BYTES": 2_000_000, "KIOSK_MAX_VIDEO_BYTES": 8_000_000}
    limit = app.config[f"KIOSK_MAX_{field.upper()}_BYTES"]
    # No Content-Length (chunked): only the streaming check can stop it.
    body = Endless(multipart_head(field), 300_000_000)
    tracemalloc.start()
    status, payload = raw_post(app, auth, body)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert status == 413 and payload["error"] == "too_large"
    assert limit < body.sent <= limit + 2 * CHUNK_BYTES + 4096
    assert peak < 4_000_000, f"upload held {peak} bytes in memory"
    assert incoming(app) == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=3000),
        st.builds(lambda tail: multipart_head() + tail, st.binary(max_size=3000)),
        st.builds(
            lambda tail: multipart_head() + tail + b"\r\n--kioskboundary--\r\n",
            st.binary(max_size=3000),
        ),
    )
)
def test_read_upload_fails_only_with_named_errors_and_leaves_nothing(tmp_path, body):
    spool = tmp_path / "spool"
    try:
        upload = read_upload(
            io.BytesIO(body),
            "multipart/form-data; boundary=kioskboundary",
            {"audio": 1000, "video": 2000},
            spool,
        )
    except UploadError:
        assert not spool.exists() or list(spool.iterdir()) == []
    else:
        assert upload.path.stat().st_size == upload.size <= 1000
        upload.discard()


def test_a_cut_off_upload_is_400_and_leaves_nothing(app, client, auth, speech_wav):
    body = multipart_head() + speech_wav[:5000]
    response = client.post(
        "/api/v1/voicemail",
        headers=auth,
        data=body,
        content_type="multipart/form-data; boundary=kioskboundary",
    )
    assert (response.status_code, response.json["error"]) == (400, "truncated")
    assert incoming(app) == []


# --- status and confirmation -------------------------------------------------------------


def test_status_is_transcribing_until_the_job_runs(client, auth, speech_webm):
    request_id = post(client, auth, data=speech_webm).json["id"]
    response = client.get(f"/api/v1/voicemail/{request_id}", headers=auth)
    assert response.status_code == 200
    assert response.json["state"] == "transcribing"
    assert response.headers["Cache-Control"] == "no-store"


def test_another_kiosk_cannot_read_or_confirm(app, client, auth, speech_webm):
    request_id = post(client, auth, data=speech_webm).json["id"]
    with app.app_context():
        from app.db import get_db

        _, other = devices.add(get_db(), "Hillside Library", region="hillside")
    other_auth = {"Authorization": f"Bearer {other}"}
    assert client.get(f"/api/v1/voicemail/{request_id}", headers=other_auth).status_code == 404
    confirm = client.post(
        f"/api/v1/voicemail/{request_id}/confirm", json={"answer": "yes"}, headers=other_auth
    )
    assert confirm.status_code == 404
    assert client.get("/api/v1/voicemail/999", headers=auth).status_code == 404


@pytest.mark.parametrize(
    ("answer", "status", "confirmed", "request_status"),
    [("yes", 200, True, "new"), ("again", 200, False, "cancelled"), ("maybe", 400, False, "new")],
)
def test_confirm_answers(client, db, auth, speech_webm, answer, status, confirmed, request_status):
    request_id = post(client, auth, data=speech_webm).json["id"]
    response = client.post(
        f"/api/v1/voicemail/{request_id}/confirm", json={"answer": answer}, headers=auth
    )
    assert response.status_code == status
    request = queue.get(db, request_id)
    assert bool(request["confirmed_at"]) is confirmed
    assert request["status"] == request_status


@pytest.mark.parametrize(
    ("answers", "confirmed", "request_status"),
    [(["yes", "again"], True, "new"), (["again", "yes"], False, "cancelled")],
)
def test_a_late_second_answer_does_not_undo_the_first(
    client, db, auth, speech_webm, answers, confirmed, request_status
):
    request_id = post(client, auth, data=speech_webm).json["id"]
    for answer in answers:
        response = client.post(
            f"/api/v1/voicemail/{request_id}/confirm", json={"answer": answer}, headers=auth
        )
        assert response.status_code == 200
    request = queue.get(db, request_id)
    assert bool(request["confirmed_at"]) is confirmed and request["status"] == request_status
    assert response.json["status"] == request_status


@pytest.mark.slow
def test_readback_after_real_transcription(app, client, auth, speech_webm):
    request_id = post(client, auth, data=speech_webm).json["id"]
    assert jobs.drain(app) == 1
    body = client.get(f"/api/v1/voicemail/{request_id}", headers=auth).json
    assert body["state"] == "ready"
    assert body["category"] == "groceries"
    assert body["category_label"] == "shopping and errands"
    assert "groceries" in body["transcript"].lower()
    assert categories_for("en").readback("groceries") in body["readback"]["speech"]
    assert body["readback"]["emergency"] is None


@pytest.mark.slow
def test_an_emergency_readback_says_to_call_the_emergency_number(app, client, auth, tmp_path):
    app.config["EMERGENCY_NUMBER"] = "112"
    wav = speechgen.render("Help me please, I have fallen down and I cannot get up.")
    request_id = post(client, auth, data=wav.read_bytes()).json["id"]
    jobs.drain(app)
    body = client.get(f"/api/v1/voicemail/{request_id}", headers=auth).json
    assert body["emergency"] is True
    assert "please call 112 straight away" in body["readback"]["emergency"]
    assert body["readback"]["speech"].startswith(body["readback"]["emergency"])


# --- spoken words for tablets without a voice ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/kiosk/speech/en/speech/saved.wav", 200),
        ("/kiosk/speech/en/problems/silent.wav", 200),
        ("/kiosk/speech/xx/speech/again.wav", 200),  # falls back to the default language
        ("/kiosk/speech/en/speech/done.wav", 404),  # has a blank: said per request only
        ("/kiosk/speech/en/speech/nothing.wav", 404),
        ("/kiosk/speech/en/screens/title.wav", 404),
    ],
)
def test_fixed_sentences_are_served_as_speech(client, path, status):
    response = client.get(path)
    assert response.status_code == status
    if status == 200:
        assert response.mimetype == "audio/wav"
        assert load_audio(response.get_data()).duration_s > 1.0
    response.close()


def test_request_speech_needs_the_kiosk_and_a_transcript(client, auth, speech_webm):
    request_id = post(client, auth, data=speech_webm).json["id"]
    base = f"/api/v1/voicemail/{request_id}/speech"
    assert client.get(f"{base}/done.wav").status_code == 401
    assert client.get(f"{base}/readback.wav", headers=auth).status_code == 404  # not yet
    done = client.get(f"{base}/done.wav", headers=auth)
    assert done.status_code == 200 and done.headers["Cache-Control"] == "no-store"
    assert load_audio(done.get_data()).duration_s > 2.0
    done.close()


# --- the readback's words, as data -------------------------------------------------------

READBACKS = [
    # (request fields, words expected in the speech, words that must not be there)
    (
        {"transcript": "I need milk", "transcript_confidence": 0.9, "category": "groceries"},
        [
            "I heard: I need milk. It sounds like you need some shopping done for you.",
            "Is that right?",
        ],
        ["911"],
    ),
    (
        {"transcript": "mumble", "transcript_confidence": 0.2, "category": "other"},
        ["could not make out every word", "you need help with something else"],
        ["mumble"],
    ),
    (
        {
            "transcript": "I fell and can't get up",
            "transcript_confidence": 0.9,
            "category": "emergency",
            "emergency": True,
        },
        ["please call 911 straight away", "I heard: I fell"],
        [],
    ),
    (
        {"stage": "failed", "transcript": None, "category": "other"},
        ["could not make out the words", "say it again"],
        ["It sounds like", "something else"],
    ),
    # A transcript that ends its own sentence keeps one stop, not two.
    (
        {"transcript": "I need help.", "transcript_confidence": 0.9, "category": "other"},
        ["I heard: I need help. It sounds like you need help with something else."],
        ["..", "help.."],
    ),
    (
        {"transcript": "Can you come Friday? ", "transcript_confidence": 0.9, "category": "other"},
        ["I heard: Can you come Friday. It sounds like"],
        ["?."],
    ),
]


@pytest.mark.parametrize(("fields", "said", "unsaid"), READBACKS)
def test_readback_wording(fields, said, unsaid):
    request = {"stage": "transcribed", "emergency": False, "transcript_confidence": None, **fields}
    spoken = messages.readback(
        request,
        wording.load("en"),
        categories_for("en"),
        emergency_number="911",
        review_confidence=0.6,
    )["speech"]
    for phrase in said:
        assert phrase in spoken
    for phrase in unsaid:
        assert phrase not in spoken


@pytest.mark.parametrize("language", wording.available())
def test_every_language_has_all_the_kiosk_words(language):
    words = wording.load(language)
    english = wording.load("en")
    for section in wording.SECTIONS:
        assert set(getattr(words, section)) >= set(getattr(english, section))


# --- the page ----------------------------------------------------------------------------


class PageAudit(HTMLParser):
    """Collect what a CSP without 'unsafe-inline' and without external hosts would block."""

    def __init__(self):
        super().__init__()
        self.problems, self.assets = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "style" in attrs or any(name.startswith("on") for name in attrs):
            self.problems.append(f"inline style or handler on <{tag}>")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script" and "src" not in attrs and attrs.get("type") != "application/json":
            self.problems.append("inline <script>")
        for name in ("src", "href"):
            if name in attrs:
                self.assets.append(attrs[name])


@pytest.mark.parametrize("path", ["/kiosk", "/kiosk/video"])
def test_pages_are_self_contained_under_the_csp(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    audit = PageAudit()
    audit.feed(response.get_data(as_text=True))
    assert audit.problems == []
    # Served by CareCall itself (a path) or inline data the CSP allows for images.
    local = [a for a in audit.assets if a.startswith("/") and not a.startswith("//")]
    assert local and set(audit.assets) - set(local) <= {"data:,"}
    for asset in audit.assets:
        if asset.startswith("/static/"):
            asset_response = client.get(asset)
            assert asset_response.status_code == 200, asset
            asset_response.close()
    assert re.search(r'<html lang="en">', response.get_data(as_text=True))


def test_static_scripts_use_no_eval_or_inline_styles():
    static = Path(__file__).resolve().parent.parent / "app" / "static" / "kiosk"
    for script in static.glob("*.js"):
        text = script.read_text()
        assert "eval(" not in text and "new Function" not in text
        assert ".style." not in text and 'setAttribute("style"' not in text
        assert "http://" not in text and "https://" not in text, script.name


# --- the CLI -----------------------------------------------------------------------------


def test_kiosks_cli_add_list_revoke(runner, db):
    added = runner.invoke(args=["kiosks", "add", "Riverside Centre", "--region", "riverside"])
    assert added.exit_code == 0, added.output
    token = re.search(r"token: (\S+)", added.output).group(1)
    assert devices.authenticate(db, token).region == "riverside"
    listed = runner.invoke(args=["kiosks", "list"])
    assert "Riverside Centre" in listed.output and token not in listed.output
    revoked = runner.invoke(args=["kiosks", "revoke", "Riverside Centre"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert runner.invoke(args=["kiosks", "list"]).output.strip() == ""
    assert "Riverside Centre" in runner.invoke(args=["kiosks", "list", "--all"]).output
    missing = runner.invoke(args=["kiosks", "revoke", "99"])
    assert missing.exit_code != 0 and "no kiosk 99" in missing.output
    audit = db.execute("SELECT actor, action FROM events ORDER BY id").fetchall()
    assert [action for _, action in audit] == ["kiosk_added", "kiosk_revoked"]
    assert all(actor.startswith("cli:") for actor, _ in audit)


@pytest.mark.parametrize(("language", "added"), [("ko", True), ("en", True), ("xx", False)])
def test_kiosks_cli_refuses_a_language_nobody_can_transcribe(runner, db, language, added):
    result = runner.invoke(
        args=["kiosks", "add", "Hall", "--region", "riverside", "--language", language]
    )
    assert (result.exit_code == 0) is added, result.output
    if not added:
        assert "--language 'xx' has no speech engine; use one of en, ko" in result.output
    assert db["kiosks"].count == int(added)


@pytest.mark.parametrize("ident", ["99", "0", str(2**63)])
def test_kiosks_cli_names_a_missing_kiosk_clearly(runner, db, ident):
    result = runner.invoke(args=["kiosks", "revoke", ident])
    assert result.exit_code == 1 and f"no kiosk {ident}" in result.output


@pytest.mark.parametrize("command", [[], ["add"], ["list"], ["revoke"]])
def test_every_kiosks_command_has_an_example(runner, command):
    result = runner.invoke(args=["kiosks", *command, "--help"])
    assert result.exit_code == 0
    assert "Example: flask --app app kiosks" in result.output


def test_a_broken_model_answers_the_kiosk_with_failed_and_words_to_show(
    make_app, models_dir, speech_wav
):
    """The page is not left 'transcribing' until it gives up: it hears 'failed' at once."""
    app = make_app(MODELS_DIR=models_dir({"whisper-tiny-en": "truncated", "vosk-ko": "installed"}))
    client = app.test_client()
    with app.app_context():
        from app.db import get_db

        _, token = devices.add(get_db(), "Riverside Centre", region="riverside")
    auth = {"Authorization": f"Bearer {token}"}
    request_id = post(client, auth, data=speech_wav).json["id"]
    assert jobs.drain(app) == 1
    body = client.get(f"/api/v1/voicemail/{request_id}", headers=auth).json
    assert body["state"] == "failed" and body["urgency"] == "high"
    assert body["readback"]["note"].startswith("I could not make out the words of your message")
    assert body["readback"]["speech"] == body["readback"]["note"]


def test_racing_retries_of_one_recording_are_created_and_audited_once(
    make_app, speech_webm, tmp_path
):
    """Retries that all pass the first look before any is saved still make one request."""
    from concurrent.futures import ThreadPoolExecutor

    from app.db import connect

    app = make_app(DB_BUSY_TIMEOUT_SECONDS=4.5)
    with app.app_context():
        from app.db import get_db

        token = devices.add(get_db(), "Riverside Centre", region="riverside")[1]
    headers = {"Authorization": f"Bearer {token}"}
    holder = connect(app.config["DATABASE"])
    # Every upload checks, decodes, then waits here for the write lock, as when they race.
    holder.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(4) as pool:
        sent = [
            pool.submit(post, app.test_client(), headers, data=speech_webm, client_id="racing-01")
            for _ in range(4)
        ]
        time.sleep(3)
        holder.conn.rollback()
        answers = [f.result() for f in sent]
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 202]
    assert [a.json["created"] for a in answers].count(True) == 1
    assert len({a.json["id"] for a in answers}) == 1
    db = connect(app.config["DATABASE"])
    uploaded = [e for e in queue.events(db, answers[0].json["id"]) if e["action"] == "uploaded"]
    assert len(uploaded) == 1 and db["requests"].count == 1
    assert incoming(app) == []


@pytest.mark.parametrize(
    "body", ["[" * 100000 + "]" * 100000, '{"answer": "\\ud800"}', '{"answer": ' * 3000]
)
def test_a_deep_or_broken_json_answer_is_a_400(client, auth, speech_webm, body):
    sent = post(client, auth, data=speech_webm).json
    response = client.post(
        f"/api/v1/voicemail/{sent['id']}/confirm",
        data=body,
        headers=auth,
        content_type="application/json",
    )
    assert response.status_code == 400 and response.json["error"] == "bad_answer"
