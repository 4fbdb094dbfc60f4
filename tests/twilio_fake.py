"""Twilio's side of a call, for tests: the simulator's classes wired to the test app."""

from app import jobs
from scripts.simulate_call import (
    HANGUP,
    SILENCE,
    FlaskTransport,
    MediaServer,
    Speech,
    Twilio,
)

__all__ = [
    "ACCOUNT_SID",
    "AUTH_TOKEN",
    "HANGUP",
    "SILENCE",
    "Speech",
    "media_server",
    "twilio_for",
]

ACCOUNT_SID = "AC" + "5" * 32
AUTH_TOKEN = "test-auth-token-0123456789abcdef"


def media_server():
    """Serve recordings the way Twilio's media endpoint does, on loopback."""
    return MediaServer(ACCOUNT_SID, AUTH_TOKEN)


# The number CareCall sends from and is called on, in the tests.
SERVICE_NUMBER = "+15550009999"


def rest_settings(rest):
    """Return the settings that point the app's Twilio client at the loopback REST fake."""
    return {
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": SERVICE_NUMBER,
        "TWILIO_API_BASE_URL": rest.base_url,
    }


def twilio_for(app, media):
    """Return Twilio calling the test app; each <Pause> lets the job worker catch up."""
    app.config.update(
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_RECORDING_HOSTS=["127.0.0.1"],
        TWILIO_API_BASE_URL=media.base_url,
    )
    return Twilio(
        "http://localhost",
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        transport=FlaskTransport(app.test_client()),
        media=media,
        on_pause=lambda seconds: jobs.drain(app),
    )


def twiml_of(text):
    """Parse a TwiML document into an ElementTree root."""
    import xml.etree.ElementTree as ET

    return ET.fromstring(text)


class RestServer:
    """A loopback fake of Twilio's REST API for Messages and Calls, in its JSON wire format.

    POST .../Messages.json and .../Calls.json answer 201 with the resource; GET lists them.
    fail_next(n) answers 500 n times without creating anything; fail_next(n, lost=True)
    creates the message and then answers 500, as when Twilio's answer is lost on the way.
    """

    def __init__(self, account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages = []
        self.calls = []
        self.failures = 0
        self.lose_answer = False
        self.refused = set()  # numbers Twilio answers 400 for, as for an invalid 'To'
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  http.server's name
                fake._serve(self, "GET")

            def do_POST(self):  # noqa: N802
                fake._serve(self, "POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self):
        """Return the fake's base URL, like https://api.twilio.com."""
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def fail_next(self, count, *, lost=False):
        """Answer the next count creations with 500 (after creating, when lost)."""
        with self.lock:
            self.failures = count
            self.lose_answer = lost

    def _send(self, handler, status, payload):
        import json

        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _serve(self, handler, method):
        import base64
        import time
        from urllib.parse import parse_qs, urlsplit

        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if handler.headers.get("Authorization") != f"Basic {expected}":
            self._send(handler, 401, {"code": 20003, "message": "Authenticate", "status": 401})
            return
        parts = urlsplit(handler.path)
        base = f"/2010-04-01/Accounts/{self.account_sid}"
        kind = {f"{base}/Messages.json": "messages", f"{base}/Calls.json": "calls"}.get(parts.path)
        if kind is None:
            self._send(handler, 404, {"code": 20404, "message": "Not found", "status": 404})
            return
        if method == "GET":
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            with self.lock:
                items = [
                    item
                    for item in getattr(self, kind)
                    if query.get("To", item["to"]) == item["to"]
                    and query.get("From", item["from"]) == item["from"]
                ]
            self._send(
                handler,
                200,
                {
                    kind: items,
                    "uri": parts.path,
                    "first_page_uri": parts.path,
                    "next_page_uri": None,
                    "previous_page_uri": None,
                    "page": 0,
                    "page_size": 50,
                    "start": 0,
                    "end": max(0, len(items) - 1),
                },
            )
            return
        length = int(handler.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(handler.rfile.read(length).decode()).items()}
        if form.get("To") in self.refused:
            message = f"The 'To' number {form.get('To')} is not a valid phone number."
            self._send(handler, 400, {"code": 21211, "message": message, "status": 400})
            return
        stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        prefix = "SM" if kind == "messages" else "CA"
        from scripts.simulate_call import sid

        item = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "sid": sid(prefix),
            "to": form.get("To"),
            "from": form.get("From"),
            "status": "queued",
            "direction": "outbound-api",
            "date_created": stamp,
            "date_updated": stamp,
            "price": None,
            "price_unit": "USD",
        }
        if kind == "messages":
            item |= {
                "body": form.get("Body"),
                "date_sent": None,
                "num_segments": "1",
                "num_media": "0",
                "error_code": None,
                "error_message": None,
                "status_callback": form.get("StatusCallback"),
            }
        else:
            item |= {"url": form.get("Url"), "status_callback": form.get("StatusCallback")}
        item["uri"] = f"{base}/{kind.capitalize()}/{item['sid']}.json"
        with self.lock:
            failing = self.failures > 0
            self.failures -= 1 if failing else 0
            if not failing or self.lose_answer:
                getattr(self, kind).append(item)
        if failing:
            self._send(
                handler, 500, {"code": 20500, "message": "Internal Server Error", "status": 500}
            )
            return
        self._send(handler, 201, item)


def rest_server():
    """Serve Twilio's REST API for messages and calls on loopback."""
    return RestServer()
