"""Crashes of the real server: kill -9 mid-upload and mid-transcription lose nothing."""

import time

import pytest

from tests import speechgen
from tests.server import (
    Server,
    kill_during_transcription,
    kill_during_upload,
    running,
    transcribed,
    wait_for,
)

# Well inside the 300 s job lease: a restarted worker must not wait for it to run out.
RESUME_SECONDS = 30


@pytest.fixture(scope="module")
def kiosk_wav():
    """Return a short spoken request as the kiosk would send it."""
    return speechgen.render("Could somebody help me carry my shopping home on Friday?").read_bytes()


def test_kill_mid_upload_leaves_no_partial_file_and_the_retry_lands(tmp_path, kiosk_wav):
    with running(tmp_path / "server") as server:
        token = server.add_kiosk()
        spooled = kill_during_upload(server, token, kiosk_wav, "killed-upload-0001")
        assert spooled, "the upload never reached the spool: nothing was killed mid-upload"
        # Not aged: the spool file names its dead writer, so the restart removes it at once.
        server.start()
        assert wait_for(lambda: not server.leftovers(), 5), server.leftovers()
        retry = server.upload(token, kiosk_wav, "killed-upload-0001")
        assert retry.status_code == 202
        assert server.query("SELECT count(*) FROM requests WHERE source_key LIKE 'kiosk:%'") == [
            (1,)
        ]


@pytest.mark.slow
def test_kill_mid_transcription_resumes_within_seconds_of_restart(tmp_path, kiosk_wav):
    server = Server(tmp_path / "server", worker="inprocess")
    token = server.add_kiosk()  # before the worker starts writing
    server.start()
    try:
        request_id = kill_during_transcription(server, token, kiosk_wav)
        assert request_id is not None, "no try caught the transcription running"
        started = time.monotonic()
        server.start()
        assert wait_for(lambda: transcribed(server, request_id), RESUME_SECONDS), (
            f"not transcribed {RESUME_SECONDS} s after restart"
        )
        assert time.monotonic() - started < RESUME_SECONDS
    finally:
        server.stop()
