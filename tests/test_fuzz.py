"""Every webhook and the kiosk upload, fed random fields, bodies and headers: never a 5xx.

A few thousand cases in all; bench/faults.py runs the same strategies with many more.
"""

import pytest

from app import create_app
from app.db import connect, migrate
from app.kiosk import devices
from tests.fuzzing import WEBHOOKS, fuzz_app, fuzz_uploads, fuzz_webhooks
from tests.twilio_fake import media_server

WEBHOOK_EXAMPLES = 200
UPLOAD_EXAMPLES = 1000


def build_app(root):
    """Return a builder of one real app on a database and data directory under root."""

    def make(config):
        app = create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "fuzz-secret-key-0123456789",
                "DATABASE": str(root / "carecall.db"),
                "DATA_DIR": str(root / "data"),
                "OUTBOX_DIR": str(root / "outbox"),
                "WORKER": "none",
                **config,
            }
        )
        migrate(app.config["DATABASE"])
        return app

    return make


@pytest.fixture(scope="module")
def media():
    """Serve one real recording the way Twilio's media endpoint does."""
    with media_server() as server:
        yield server


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, media):
    """Return one app that every case of this module posts to, so state builds up."""
    return fuzz_app(build_app(tmp_path_factory.mktemp("fuzz")), media)


@pytest.fixture(scope="module")
def recording_urls(media):
    """Return the URL of a recording the fake media host really serves."""
    from tests.fuzzing import WAV

    _, url = media.add(WAV)
    return (url,)


@pytest.mark.parametrize("path", WEBHOOKS)
def test_signed_webhooks_with_random_fields_never_answer_5xx(fuzzed, recording_urls, path):
    tally = fuzz_webhooks(
        fuzzed, path, max_examples=WEBHOOK_EXAMPLES, recording_urls=recording_urls
    )
    assert tally.failures == [] and tally.cases >= WEBHOOK_EXAMPLES // 2


def test_kiosk_uploads_with_random_bodies_never_answer_5xx(fuzzed):
    db = connect(fuzzed.config["DATABASE"])
    try:
        with fuzzed.app_context():
            _, token = devices.add(db, "Fuzz Centre", region="riverside")
    finally:
        db.close()
    tally = fuzz_uploads(fuzzed, token, max_examples=UPLOAD_EXAMPLES)
    assert tally.failures == [] and tally.cases >= UPLOAD_EXAMPLES // 2
