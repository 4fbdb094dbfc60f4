"""The command-line contract other tools rely on, and help text for every command."""

import json

import click
import pytest

from app import create_app
from app.db import migrate
from tests.speechgen import render, telephone


def all_commands(group, prefix=()):
    """Yield (path, command) for every command under a click group."""
    for name, command in group.commands.items():
        path = (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, path)
        yield path, command


def test_every_command_has_help_with_an_example(app):
    missing = [
        " ".join(path)
        for path, command in all_commands(app.cli)
        if "Example:" not in (command.help or "")
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("text", "category", "emergency"),
    [
        (
            "I need someone to come with me to my hospital appointment and sit with me",
            "medical",
            False,
        ),
        ("I smell gas in the kitchen", "emergency", True),
    ],
)
def test_classify_json_argument(runner, text, category, emergency):
    result = runner.invoke(args=["classify", text, "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert set(row) >= {"text", "category", "score", "alternatives", "urgency", "emergency"}
    assert (row["text"], row["category"], row["emergency"]) == (text, category, emergency)


def test_classify_json_reads_lines_from_stdin(runner):
    lines = "My telly remote is broken and I cannot work it\nThe bins need taking out\n"
    result = runner.invoke(args=["classify", "--json"], input=lines)
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["category"] for r in rows] == ["tech_help", "housekeeping"]


@pytest.mark.slow
def test_transcribe_json_contract(runner, tmp_path):
    wav = render("Please send someone to help me with my computer.")
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio at all")
    result = runner.invoke(args=["transcribe", str(wav), str(bad), "--json"])
    assert result.exit_code == 1
    good, failed = (json.loads(line) for line in result.output.splitlines())
    assert set(good) == {
        "file",
        "text",
        "language",
        "confidence",
        "engine",
        "model",
        "duration_s",
        "decode_s",
    }
    assert "computer" in good["text"].lower()
    assert (good["engine"], good["model"], good["language"]) == ("whisper", "whisper-tiny-en", "en")
    assert failed["file"] == str(bad) and failed["error"] == "NotAudio"


@pytest.mark.slow
def test_intake_json_prints_the_queued_request(runner):
    wav = telephone("I need a lift to the post office on Monday morning please.")
    result = runner.invoke(
        args=["intake", str(wav), "--phone", "+15551234567", "--channel", "voicemail", "--json"]
    )
    assert result.exit_code == 0, result.output
    request = json.loads(result.output)
    assert request["phone"] == "+15551234567" and request["channel"] == "voicemail"
    assert request["stage"] == "transcribed" and request["status"] == "new"
    assert request["category"] in {"transport", "groceries"}


def test_serve_prints_where_to_look_and_a_first_login(tmp_path, models_dir):
    """The command behind ./scripts/run: migrate, serve, and say where everything is."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "CARECALL_DATABASE": str(tmp_path / "serve.db"),
        "CARECALL_DATA_DIR": str(tmp_path / "data"),
        "CARECALL_SECRET_KEY": "test-secret-key-0123456789",
        "CARECALL_PASSWORD_HASH_MEMORY_KIB": "8192",
        # Korean configured but not installed: serve says so before it serves.
        "CARECALL_MODELS_DIR": models_dir({"whisper-tiny-en": "installed", "vosk-ko": "missing"}),
        "CARECALL_SPEECH_ENGINES": "en=whisper:whisper-tiny-en,ko=vosk:vosk-ko",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "serve", "--port", str(port)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as answer:
                    health = json.load(answer)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.2)
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0]
    assert health == {"status": "ok"}
    warning = "warning: CARECALL_SPEECH_ENGINES: ko=vosk:vosk-ko: speech model vosk-ko unavailable"
    assert warning in output
    for where in (
        "/console/",
        "/kiosk",
        "/twilio/voice",
        "first login: user admin, password",
        "swept ",
    ):
        assert where in output


HUGE = "999999999999999999999"


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "retry", HUGE],
        ["jobs", "retry", "0"],
        ["jobs", "retry", "--", "-5"],
        ["people", "link", "99999999999999999999", "1"],
        ["people", "link", "1", HUGE],
        ["people", "add", "Ann", "--prefer", HUGE],
        ["tokens", "revoke", HUGE],
        ["kiosks", "revoke", HUGE],
    ],
)
def test_an_id_out_of_range_is_a_clear_error_not_a_traceback(runner, args):
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert not isinstance(result.exception, OverflowError | TypeError | ValueError)
    assert "Traceback" not in result.output
    assert ("is not an id" in result.output) or ("no kiosk" in result.output)


@pytest.mark.parametrize(
    "args",
    [
        ["tokens", "create", "--role", "viewer"],
        ["users", "create", "alice", "--role", "coordinator", "--generate-password"],
        ["people", "add", "Ann"],
        ["kiosks", "add", "Riverside Centre", "--region", "riverside"],
        ["users", "list"],
    ],
)
def test_a_command_on_a_new_database_leaves_it_ready_to_serve(tmp_path, args):
    """A command run before the first serve migrates, so serve can still start after it."""
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-0123456789",
            "DATABASE": str(tmp_path / "new.db"),
            "DATA_DIR": str(tmp_path / "data"),
            "WORKER": "none",
            "PASSWORD_HASH_MEMORY_KIB": 8192,
        }
    )
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    assert migrate(app.config["DATABASE"]) == []
