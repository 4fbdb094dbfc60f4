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
