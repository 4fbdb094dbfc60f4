"""The kiosk in real headless Chromium: real microphone path, real MediaRecorder, real Whisper.

Chromium's fake capture device plays a rendered WAV (speech, then a long silence, looped)
as the microphone, so the page records real speech and stops by itself on the silence.
"""

import socket
import threading
from contextlib import contextmanager

import numpy as np
import pytest
from werkzeug.serving import make_server

from app import jobs, queue
from app.db import connect
from app.kiosk import devices
from app.pipeline import categories_for
from tests import speechgen
from tests.browser import assert_accessible, chromium, launched, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REQUEST = "Hello. Could somebody pick up my groceries from the supermarket this week, please?"
FALL = "Help me please, I have fallen down and I cannot get up."
# Chromium's fake microphone reads 16-bit PCM WAV; 48 kHz is what it captures at anyway.
RATE = 48000


def fake_microphone_wav(path, text=REQUEST, silence_s=8.0):
    """Write speech padded with silence, so the looped capture has a long pause to stop on."""
    if text is None:
        samples = np.zeros(int(RATE * silence_s), dtype=np.float32)
    else:
        speech = speechgen._read_mono(speechgen.render(text), RATE)
        pad = np.zeros(int(RATE * 0.5), dtype=np.float32)
        samples = np.concatenate([pad, speech, np.zeros(int(RATE * silence_s), np.float32)])
    return speechgen.write_wav(samples, path, sample_rate=RATE)


def fake_media_args(wav):
    """Return Chromium flags that answer getUserMedia with a fake camera and this WAV."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Start one Chromium whose microphone says REQUEST, for the whole module."""
    wav = fake_microphone_wav(tmp_path_factory.mktemp("mic") / "speech.wav")
    with chromium(fake_media_args(wav)) as browser:
        yield browser


@pytest.fixture
def kiosk_app(make_app):
    """Build an app with a registered kiosk, short pauses, and a running in-process worker."""
    app = make_app(
        KIOSK_SILENCE_SECONDS=1.5,
        KIOSK_QUIET_SECONDS=3,
        KIOSK_RETRY_MAX_SECONDS=1,
        KIOSK_RESET_SECONDS=120,
    )
    db = connect(app.config["DATABASE"])
    kiosk, token = devices.add(db, "Riverside Centre", region="riverside")
    db.close()
    app.kiosk_token = token
    worker = jobs.start_worker(app)
    yield app
    worker.stop()


def free_port():
    """Return a loopback port nobody is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app served on a fixed loopback port, which can be stopped and started again."""

    def __init__(self, app, port):
        self.app, self.port, self.server, self.thread = app, port, None, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self):
        """Listen and serve in a thread."""
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        """Stop and close the socket, so new connections are refused, not left waiting."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None


@contextmanager
def serve(app, port):
    """Serve the app on a fixed port for the duration of the block; yield its base URL."""
    server = Server(app, port).start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def kiosk_page(browser, url):
    """Open a page in a fresh context, failing on any console error (CSP included)."""
    context = browser.new_context(viewport={"width": 900, "height": 1200})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready=yes]")
    try:
        yield page
        policy = [e for e in errors if "Content Security Policy" in e or "Refused" in e]
        assert policy == [], policy
    finally:
        context.close()


def screen(page, name, timeout=30_000):
    """Wait until the page shows the named screen."""
    page.wait_for_selector(f"body[data-screen={name}]", timeout=timeout)


def no_phone(page):
    """Answer the call-back question with "No phone", and wait for the thank-you."""
    screen(page, "phone")
    page.get_by_role("button", name="No phone: a staff member will help").click()
    screen(page, "done")


def request_count(app):
    """Count the requests in the app's database."""
    db = connect(app.config["DATABASE"])
    try:
        return db["requests"].count
    finally:
        db.close()


def request_in_db(app, request_id):
    """Read a request from the app's database."""
    db = connect(app.config["DATABASE"])
    try:
        return queue.get(db, request_id)
    finally:
        db.close()


def test_voice_request_from_press_to_queue(browser, kiosk_app):
    with (
        serve(kiosk_app, free_port()) as base,
        kiosk_page(browser, f"{base}/kiosk?token={kiosk_app.kiosk_token}") as page,
    ):
        # The token is remembered and taken off the address bar.
        assert "token" not in page.url
        assert page.evaluate("localStorage.getItem('carecall.kiosk.token')")
        talk = page.get_by_role("button", name="Press and tell us what you need")
        assert_accessible(page, "kiosk-1-welcome")
        talk.click()
        page.wait_for_selector("body[data-recording=on]")
        assert page.get_by_role("button", name="I'm finished").is_visible()
        assert_accessible(page, "kiosk-2-recording")
        # No press: the recording stops by itself on the silence after the request.
        screen(page, "working")
        assert_accessible(page, "kiosk-2b-checking")
        screen(page, "readback")
        assert page.locator("body").get_attribute("data-category") == "groceries"
        assert page.locator("#rb-about").inner_text() == "shopping and errands"
        assert "groceries" in page.locator("#rb-heard").inner_text().lower()
        assert_accessible(page, "kiosk-3-readback")
        page.get_by_role("button", name="Yes, send it").click()
        # The call-back number: asked aloud and on screen, typed on the big keypad.
        screen(page, "phone")
        assert page.get_by_role("heading", level=1).inner_text() == (
            "What number can we call you back on?"
        )
        assert_accessible(page, "kiosk-3c-call-back-keypad")
        for key in "5551234568":
            page.get_by_role("button", name=key, exact=True).click()
        page.get_by_role("button", name="Delete the last number").click()
        page.get_by_role("button", name="7", exact=True).click()
        assert page.locator("#phone-display").inner_text() == "555 123 4567"
        page.get_by_role("button", name="Send this number").click()
        screen(page, "done")
        number = int(page.locator("#done-number").inner_text())
        assert page.locator("#done-phone-number").inner_text() == "5551234567"
        assert_accessible(page, "kiosk-4-thank-you")
        said = page.evaluate("window.carecallKiosk.spoken")
        assert categories_for("en").readback("groceries") in said[0]["text"]
        assert "Yes, send it" in said[0]["text"]
        assert said[1]["text"].startswith("What number can we call you back on?")
        digits = " ".join(str(number))
        assert said[2]["text"].startswith("Thank you. We will call you back on 5 5 5 1 2 3")
        assert f"Your request number is {digits}" in said[2]["text"]
        # Headless Chromium has no voices, so the server's espeak-ng rendering was played.
        assert all(s["via"] == "browser" or s["played"] for s in said), said
        request = request_in_db(kiosk_app, number)
        assert request["phone"] == "+15551234567"
        assert request["channel"] == "kiosk" and request["region"] == "riverside"
        assert request["category"] == "groceries" and request["confirmed_at"]
        assert request["source_key"].startswith("kiosk:1:")
        assert page.evaluate("window.carecallKiosk.store.all().then(i => i.length)") == 0


def test_keyboard_only_say_it_again_then_send(browser, kiosk_app):
    with (
        serve(kiosk_app, free_port()) as base,
        kiosk_page(browser, f"{base}/kiosk?token={kiosk_app.kiosk_token}") as page,
    ):
        first = None
        for reply in ("again", "yes"):
            # Focus starts on the big button: Enter starts, Enter again finishes.
            assert page.evaluate("document.activeElement.id") == "talk"
            page.keyboard.press("Enter")
            page.wait_for_selector("body[data-recording=on]")
            page.wait_for_timeout(5500)  # the whole request is spoken by now
            assert page.evaluate("document.activeElement.id") == "talk"
            page.keyboard.press("Enter")
            screen(page, "readback")
            assert page.evaluate("document.activeElement.id") == "yes"
            if reply == "again":
                page.keyboard.press("Tab")
                assert page.evaluate("document.activeElement.id") == "again"
                page.keyboard.press("Enter")
                screen(page, "talk")
                first = page.evaluate("performance.getEntriesByName('kiosk-readback').length")
            else:
                page.keyboard.press("Enter")
                # The keypad takes a keyboard's digits too; Tab reaches "Send this number".
                screen(page, "phone")
                page.keyboard.type("5550001111")
                assert page.locator("#phone-display").inner_text() == "555 000 1111"
                page.get_by_role("button", name="Send this number").focus()
                page.keyboard.press("Enter")
                screen(page, "done")
        number = int(page.locator("#done-number").inner_text())
        assert first == 1
    db = connect(kiosk_app.config["DATABASE"])
    rows = list(db["requests"].rows_where(order_by="id"))
    db.close()
    assert [(r["status"], bool(r["confirmed_at"])) for r in rows] == [
        ("cancelled", False),
        ("new", True),
    ]
    assert rows[1]["id"] == number and rows[1]["category"] == "groceries"
    assert rows[1]["phone"] == "+15550001111"


def test_video_message(browser, kiosk_app):
    import av

    with (
        serve(kiosk_app, free_port()) as base,
        kiosk_page(browser, f"{base}/kiosk/video?token={kiosk_app.kiosk_token}") as page,
    ):
        page.get_by_role("button", name="Press and record a video message").click()
        page.wait_for_selector("body[data-recording=on]")
        page.wait_for_function("() => document.getElementById('preview').videoWidth > 0")
        assert_accessible(page, "kiosk-video-1-recording")
        screen(page, "readback")
        assert page.locator("#rb-about").inner_text() == "shopping and errands"
        assert_accessible(page, "kiosk-video-2-readback")
        page.get_by_role("button", name="Yes, send it").click()
        no_phone(page)
        number = int(page.locator("#done-number").inner_text())
    request = request_in_db(kiosk_app, number)
    assert request["channel"] == "video" and request["category"] == "groceries"
    with av.open(str(kiosk_app.config["DATA_DIR"] + "/" + request["video_path"])) as video:
        assert video.streams.video and video.streams.audio


class CutUploads:
    """WSGI wrapper: each upload's connection is cut after its first bytes, as when the
    server dies mid-upload; everything else reaches the app."""

    def __init__(self, app):
        self.app = app
        self.cut = threading.Event()

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/api/v1/voicemail":
            environ["wsgi.input"].read(2048)
            environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            self.cut.set()
            raise ConnectionAbortedError("cut mid-upload by the test")
        return self.app(environ, start_response)


def test_server_down_during_upload_then_back(browser, kiosk_app):
    port = free_port()
    dying = CutUploads(kiosk_app)
    server = Server(dying, port).start()
    try:
        with kiosk_page(browser, f"{server.url}/kiosk?token={kiosk_app.kiosk_token}") as page:
            page.get_by_role("button", name="Press and tell us what you need").click()
            page.wait_for_selector("body[data-recording=on]")
            assert dying.cut.wait(30), "the page never started its upload"
            server.stop()
            # The upload broke off and the server is gone: the page keeps it and says so.
            screen(page, "saved")
            assert page.evaluate("window.carecallKiosk.store.all().then(i => i.length)") == 1
            assert_accessible(page, "kiosk-5-saved-offline")
            assert request_count(kiosk_app) == 0
            page.wait_for_timeout(1500)  # a retry or two fail against the closed port
            server = Server(kiosk_app, port).start()
            # Back on the same port: the page delivers from IndexedDB and carries on.
            screen(page, "readback")
            assert page.evaluate("window.carecallKiosk.store.all().then(i => i.length)") == 0
            page.get_by_role("button", name="Yes, send it").click()
            no_phone(page)
            number = int(page.locator("#done-number").inner_text())
    finally:
        server.stop()
    request = request_in_db(kiosk_app, number)
    assert request["category"] == "groceries" and request["confirmed_at"]
    assert request_count(kiosk_app) == 1


def second_chromium(browser, extra_args):
    """Launch another Chromium with other flags from the running Playwright."""
    return launched(browser.browser_type, extra_args)


def test_setup_and_problem_screens(tmp_path, browser, kiosk_app):
    wav = fake_microphone_wav(tmp_path / "silence.wav", text=None)
    with (
        serve(kiosk_app, free_port()) as base,
        second_chromium(browser, fake_media_args(wav)) as quiet,
    ):
        with kiosk_page(quiet, f"{base}/kiosk") as page:
            screen(page, "setup")
            assert_accessible(page, "kiosk-6-not-set-up")
        kiosk_app.config["KIOSK_RESET_SECONDS"] = 2
        with kiosk_page(quiet, f"{base}/kiosk?token={kiosk_app.kiosk_token}") as page:
            for attempt in ("press", "wait"):
                page.get_by_role("button", name="Press and tell us what you need").click()
                # Nothing is said: after the quiet time the page says so and sends nothing.
                screen(page, "problem")
                assert "could not hear anything" in page.locator("#problem-text").inner_text()
                if attempt == "press":
                    assert_accessible(page, "kiosk-7-could-not-hear")
                    page.get_by_role("button", name="Try again").click()
                # Either way it is ready for the next person, by itself after a while.
                screen(page, "talk")
            screenshot(page, "kiosk-8-ready-again")
    assert request_count(kiosk_app) == 0


def test_emergency_readback_tells_to_call_the_emergency_number(tmp_path, browser, kiosk_app):
    wav = fake_microphone_wav(tmp_path / "fall.wav", text=FALL)
    with (
        serve(kiosk_app, free_port()) as base,
        second_chromium(browser, fake_media_args(wav)) as fallen,
        kiosk_page(fallen, f"{base}/kiosk?token={kiosk_app.kiosk_token}") as page,
    ):
        page.get_by_role("button", name="Press and tell us what you need").click()
        screen(page, "readback")
        warning = page.locator("#rb-emergency")
        assert warning.is_visible()
        assert "please call 911 straight away" in warning.inner_text()
        # Said first, before anything else.
        first = page.evaluate("window.carecallKiosk.spoken[0].text")
        assert first.startswith(warning.inner_text())
        assert_accessible(page, "kiosk-3b-readback-emergency")
        # A phone and a tablet: the whole emergency advice and both answers in view.
        for name, width, height in [
            ("phone", 390, 664),
            ("tablet", 768, 1024),
            ("tablet-landscape", 1024, 768),
        ]:
            page.set_viewport_size({"width": width, "height": height})
            page.evaluate("window.scrollTo(0, 0)")
            screenshot(page, f"kiosk-3b-readback-emergency-{name}")
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            for element in ("#rb-emergency", "#yes", "#again"):
                box = page.locator(element).bounding_box()
                assert box["y"] >= 0 and box["y"] + box["height"] <= height, (name, element)
        page.get_by_role("button", name="Yes, send it").click()
        screen(page, "phone")
        page.set_viewport_size({"width": 390, "height": 664})
        screenshot(page, "kiosk-3c-call-back-keypad-phone")
        for element in ("#phone-display", "#phone-send", "#phone-none"):
            box = page.locator(element).bounding_box()
            assert box["y"] + box["height"] <= 664, element
        page.get_by_role("button", name="No phone: a staff member will help").click()
        screen(page, "done")
        number = int(page.locator("#done-number").inner_text())
        assert page.locator("#done-no-phone").is_visible()
    request = request_in_db(kiosk_app, number)
    assert request["emergency"] and request["urgency"] == "critical"
    assert request["phone"] is None
