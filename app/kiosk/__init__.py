"""The one-button kiosk: a community-centre tablet that records a request and reads it back.

devices   kiosk tablets and their hashed bearer tokens
upload    a multipart upload streamed to disk under per-field size limits
messages  decode-check, queue, read back and settle a kiosk recording
wording   what the page shows and speaks, one TOML file per language
views     the page (GET /kiosk, /kiosk/video) and the API (/api/v1/voicemail...)
cli       flask --app app kiosks add | list | revoke
"""

from .cli import kiosks_cli
from .views import bp

DEFAULTS = {
    "KIOSK_MAX_AUDIO_BYTES": 50_000_000,
    "KIOSK_MAX_VIDEO_BYTES": 200_000_000,
    "KIOSK_LANGUAGE": None,  # None: the app's DEFAULT_LANGUAGE
    # After "thank you" or "saved", the page waits this long before greeting the next person.
    "KIOSK_RESET_SECONDS": 30,
    # A readback nobody answers is left for a coordinator after this long.
    "KIOSK_READBACK_SECONDS": 300,
    # Older speakers pause mid-sentence; only a long silence after speech ends a recording.
    "KIOSK_SILENCE_SECONDS": 4.0,
    # Nothing heard at all for this long: the person has walked away or the mic is dead.
    "KIOSK_QUIET_SECONDS": 45.0,
    "KIOSK_MAX_RECORD_SECONDS": 300,
    # Loudness (RMS, 0..1) above which the page counts sound as speech.
    "KIOSK_SILENCE_LEVEL": 0.015,
    "KIOSK_RETRY_MAX_SECONDS": 30,
    # Past this, the page thanks the person without a readback (e.g. no worker is running).
    "KIOSK_READBACK_WAIT_SECONDS": 90,
    "EMERGENCY_NUMBER": "911",
}


def init_app(app):
    """Set kiosk defaults, register the kiosk blueprint and the kiosks command."""
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    app.register_blueprint(bp)
    app.cli.add_command(kiosks_cli)
