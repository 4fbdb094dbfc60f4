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


def init_app(app):
    """Register the kiosk blueprint and the kiosks command."""
    app.register_blueprint(bp)
    app.cli.add_command(kiosks_cli)
