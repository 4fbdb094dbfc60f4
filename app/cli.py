"""Command-line edges: transcribe, classify, intake and serve, as JSON lines when asked."""

import contextlib
import csv
import fcntl
import json
import secrets
import sqlite3
import sys
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from . import jobs, pipeline, recordings, textmodel, training
from .accounts import create_user, hasher_for
from .classify import (
    EXAMPLES_DIR,
    CategoryDataError,
    UnknownLanguage,
    classify,
    load_categories,
    read_examples,
)
from .db import DatabaseBusy, connect, get_db, migrate
from .health import startup_warnings
from .queue import CHANNELS
from .speech import SpeechError, load_audio
from .speech.errors import ModelNotInstalled
from .speech.models import models_cli


@click.command("transcribe")
@with_appcontext
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--language", default=None, help="Language code, e.g. en or ko.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
def transcribe_command(files, language, as_json):
    """Transcribe audio files offline.

    Example: flask --app app transcribe voicemail.wav --json
    """
    app = current_app
    language = language or app.config["DEFAULT_LANGUAGE"]
    speech = pipeline.speech_service(app)
    failed = False
    for name in files:
        started = time.perf_counter()
        try:
            audio = load_audio(name, max_seconds=app.config["MAX_AUDIO_SECONDS"])
            transcript = speech.transcribe(audio, language=language)
        except (SpeechError, OSError) as exc:
            failed = True
            _emit_error(name, exc, as_json)
            continue
        decode_s = round(time.perf_counter() - started, 3)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "file": name,
                        "text": transcript.text,
                        "language": transcript.language,
                        "confidence": round(transcript.confidence, 3),
                        "engine": transcript.engine,
                        "model": transcript.model,
                        "duration_s": round(transcript.duration_s, 3),
                        "decode_s": decode_s,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            click.echo(f"{name}: {transcript.text}")
    if failed:
        sys.exit(1)


class _TextOrCommand(click.Group):
    """A command group whose arguments, unless they name a subcommand, go to `text`."""

    def parse_args(self, ctx, args):
        """Send arguments that name no subcommand to the default one."""
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["text", *args]
        return super().parse_args(ctx, args)


@click.group("classify", cls=_TextOrCommand)
def classify_cli():
    """Classify request texts, or retrain the learned classifier.

    \b
    Example:
        flask --app app classify "I need a lift to the doctor" --json
        flask --app app classify train
    """


@classify_cli.command("text")
@with_appcontext
@click.argument("text", required=False)
@click.option("--language", default=None, help="Language of the text, e.g. en.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per request.")
@click.option("--rules-only", is_flag=True, help="Classify by the rules alone, without the model.")
def classify_command(text, language, as_json, rules_only):
    """Classify request texts (the TEXT argument, or one per line on stdin).

    Example: echo "I need a lift to the doctor" | flask --app app classify --json
    """
    language = language or current_app.config["DEFAULT_LANGUAGE"]
    try:
        categories = pipeline.categories_for(language)
    except (OSError, UnknownLanguage, CategoryDataError, csv.Error) as exc:
        raise click.ClickException(str(exc)) from exc
    model = None if rules_only else pipeline.text_classifier(current_app, language)
    if model is None and not rules_only:
        problems = textmodel.text_models(current_app).problems([language])
        if problems:
            why = "; ".join(problems.values())
            click.echo(f"warning: classifying by the rules alone: {why}", err=True)
    lines = [text] if text is not None else (line.rstrip("\n") for line in sys.stdin)
    for line in lines:
        if not line.strip() and text is None:
            continue
        result = classify(line, categories, model)
        if as_json:
            click.echo(json.dumps({"text": line, **result.to_dict()}, ensure_ascii=False))
        else:
            click.echo(f"{result.category:<14} {result.urgency:<8} {line}")


@classify_cli.command("train")
@with_appcontext
@click.option("--language", default=None, help="Language to train, e.g. en.")
@click.option("--force", is_flag=True, help="Install the new weights even if they score lower.")
def train_command(language, force):
    """Retrain the learned classifier on the examples and the coordinators' corrections.

    Trains on the embeddings of CARECALL_TEXT_MODEL (default e5-small+minilm-l6); scores the
    weights in use (on the text model they read) and the new ones on every held-out file,
    pooled (ivr_flows/heldout/LANG.tsv and LANG_*.tsv), and keeps the old ones if the new
    ones score lower. One weights file per language, ivr_flows/model/LANG.npz (kept in git), is
    replaced; serve and worker read it when they start. About 6 minutes on 2 cores.

    Example: flask --app app classify train
    """
    from .console.actions import labelled_examples

    language = language or current_app.config["DEFAULT_LANGUAGE"]
    flows = Path(current_app.config["FLOWS_DIR"])
    models = textmodel.text_models(current_app)
    embedder = models.embedder()
    if embedder is None:
        raise click.ClickException(f"no text model: {models.problems().get('model')}")
    try:
        categories = load_categories(language, flows / "categories.toml")
        sets = training.read_heldout_sets(flows, language)
        examples = flows / EXAMPLES_DIR / f"{language}.tsv"
        rows = read_examples(examples, categories.keys)
        blind = training.read_rule_blind(examples)
    except (OSError, KeyError, ValueError, csv.Error) as exc:
        raise click.ClickException(str(exc)) from exc
    heldout = [row for rows in sets.values() for row in rows]
    click.echo(
        "held-out: " + ", ".join(f"{p.relative_to(flows)} {len(r)}" for p, r in sets.items()),
        err=True,
    )
    try:
        corrections = [(t, c) for t, c, _ in labelled_examples(get_db()) if c in categories.keys]
    except sqlite3.Error as exc:
        raise click.ClickException(
            f"cannot read the corrections ({exc}); run: flask --app app migrate"
        ) from exc
    # The held-out sets only measure: a correction that repeats one of their rows stays out.
    kept = {_as_one(text) for text, *_ in heldout}
    every = [*rows, *corrections]
    rows = [row for row in every if _as_one(row[0]) not in kept]
    left_out = len(every) - len(rows)
    # A text given twice is learnt once, with its last label (a coordinator's correction
    # comes after the examples); twice, it could sit on both sides of a cross-validation fold.
    latest = {_as_one(text): (text, category) for text, category in rows}
    repeats = len(rows) - len(latest)
    rows = list(latest.values())
    click.echo(
        f"training on {len(rows)} rows ({len(corrections)} corrections; {left_out} held-out "
        f"rows left out{_repeats(repeats)})",
        err=True,
    )
    counts = {key: sum(c == key for _, c in rows) for key in categories.keys}
    few = {key: n for key, n in counts.items() if n < training.FOLDS}
    if few:
        raise click.ClickException(
            f"too few examples to train and cross-validate: every category needs {training.FOLDS}; "
            + ", ".join(f"{key} has {n}" for key, n in few.items())
        )
    # No rule phrase was written from a correction, so corrections are rule-blind too.
    blind = blind | {text for text, _ in corrections}
    path = textmodel.weights_path(flows, language)
    with _training_lock(path):
        _train_and_install(rows, heldout, categories, models, embedder, blind, path, force)


def _as_one(text):
    """Return text as training compares it: letter case and spacing do not count."""
    return " ".join(text.casefold().split())


def _repeats(n):
    """Return the training line's note of texts given more than once, if any."""
    if not n:
        return ""
    return f"; {n} repeated text{'' if n == 1 else 's'} learnt once"


def _train_and_install(rows, heldout, categories, models, embedder, blind, path, force):
    """Train new weights, score old and new on the held-out rows, install the new if no worse."""
    embeddings = embedder.embed([t for t, _ in rows])
    weights, _ = training.train(rows, embeddings, categories, models.name, blind)
    held = embedder.embed([t for t, *_ in heldout])
    old, old_held = _weights_in_use(path, models, [t for t, *_ in heldout], held)
    before = _heldout_line(heldout, old_held, categories, old)
    after = _heldout_line(heldout, held, categories, weights)
    info = weights.info
    click.echo(
        f"cross-validation of the new weights: accuracy {info['cv_accuracy']:.3f}, emergency "
        f"recall {info['cv_emergency_recall']:.3f}, false alarms {info['cv_false_alarms']:.3f}"
    )
    click.echo(f"held-out before: {before[0]}\nheld-out after:  {after[0]}")
    if after[1] < before[1] and not force:
        raise click.ClickException("the new weights score lower on the held-out set; kept the old")
    weights.save(path)
    click.echo(f"wrote {path}; restart serve and worker to use it")


def _weights_in_use(path, models, texts, embeddings):
    """Return the weights in use and the held-out embeddings they read, or None and the rules.

    Weights trained on another text model are scored on that model's own embeddings, so a
    change of model is judged against the classifier it replaces, not against the rules.
    """
    try:
        old = textmodel.load_weights(path)
    except textmodel.WeightsError as exc:
        click.echo(f"no usable weights in use ({exc}); comparing with the rules alone", err=True)
        return None, embeddings
    if old.embedder == models.name:
        return old, embeddings
    try:
        own = textmodel.load_embedder(old.embedder, models.models_dir)
    except (ModelNotInstalled, textmodel.TextModelError) as exc:
        click.echo(
            f"the weights in use read {old.embedder}, which cannot load ({exc}); "
            "comparing with the rules alone",
            err=True,
        )
        return None, embeddings
    click.echo(f"the weights in use read {old.embedder}; scoring them on it", err=True)
    return old, own.embed(texts)


@contextlib.contextmanager
def _training_lock(path):
    """Hold a lock beside the weights while training, so two runs never race to install."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    with open(lock, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(
                f"another `classify train` holds {lock}; wait for it to finish"
            ) from None
        yield


def _heldout_line(rows, embeddings, categories, weights):
    """Return a one-line held-out summary and the score that decides which weights to keep."""
    scored = training.score(rows, embeddings, categories, weights)
    mode = "fusion" if weights is not None else "rules"
    m = training.metrics(scored, training.verdicts(scored, mode, weights))
    line = (
        f"{mode} accuracy {m['accuracy']:.3f}, emergency recall {m['emergency_recall']:.3f}, "
        f"false alarms {m['false_alarms']:.3f} ({m['n']} requests)"
    )
    # Catching emergencies comes first, then getting the category right.
    return line, (m["emergency_recall"], m["accuracy"])


@click.command("intake")
@with_appcontext
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--phone", help="Caller's phone number, e.g. +15551234567.")
@click.option("--channel", type=click.Choice(CHANNELS), default="voicemail", show_default=True)
@click.option("--language", default=None, help="Language code, e.g. en.")
@click.option("--json", "as_json", is_flag=True, help="Print the request as JSON.")
def intake_command(file, phone, channel, language, as_json):
    """Store a recording, run the whole pipeline on it, and print the queued request.

    Example: flask --app app intake voicemail.wav --phone +15551234567 --channel voicemail --json
    """
    app = current_app._get_current_object()
    migrate(app.config["DATABASE"])
    try:
        request = pipeline.intake(app, file, channel=channel, phone=phone, language=language)
    except (recordings.StorageFull, DatabaseBusy) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(request, ensure_ascii=False))
        return
    click.echo(f"request {request['id']}: {request['category']} ({request['urgency']})")
    click.echo(f"  transcript: {request['transcript'] or request['error']}")


@click.command("serve")
@with_appcontext
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def serve_command(host, port):
    """Apply migrations, start the in-process worker, and serve CareCall.

    Example: flask --app app serve --port 5000
    """
    from werkzeug.serving import run_simple

    app = current_app._get_current_object()
    migrate(app.config["DATABASE"])
    # Said before serving: a broken model would otherwise surface only as failed requests.
    for line in startup_warnings(app):
        click.echo(line, err=True)
    click.echo(sweep_data(app))
    worker = jobs.start_worker(app) if app.config["WORKER"] == "inprocess" else None
    for line in banner(app, f"http://{host}:{port}", first_admin(app), worker is not None):
        click.echo(line)
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        if worker:
            worker.stop()


def sweep_data(app):
    """Tidy what a crash left in the data directory; return one line saying what was done."""
    data_dir = app.config["DATA_DIR"]
    return recordings.sweep(data_dir, get_db()).line(data_dir)


def first_admin(app):
    """Create an admin with a generated password when no one can administer; return both.

    Users made before the first start (a coordinator, say) do not stop it: without an
    active admin nobody could register kiosks or manage users from the console.
    """
    db = connect(app.config["DATABASE"])
    try:
        if db["users"].count_where("(role = 'admin' AND active) OR name = 'admin'"):
            return None
        password = secrets.token_urlsafe(12)
        try:
            create_user(db, "admin", "admin", password, hasher=hasher_for(app.config))
        except sqlite3.IntegrityError:
            return None  # another serve starting at the same moment made it first
        return "admin", password
    finally:
        db.close()


def banner(app, base, admin, in_process):
    """Return the lines that tell a person where everything is and how to log in."""
    config = app.config
    public = (config.get("PUBLIC_BASE_URL") or base).rstrip("/")
    lines = [
        f"CareCall is serving on {base}/",
        f"  coordinator console: {base}/console/",
        f"  kiosk page:          {base}/kiosk  (register a tablet at {base}/console/kiosks)",
        f"  Twilio voice webhook: POST {public}/twilio/voice"
        + ("" if config.get("TWILIO_AUTH_TOKEN") else "  (set TWILIO_AUTH_TOKEN to accept calls)"),
        f"  health:              {base}/healthz  (ready to work: {base}/readyz)",
        f"  database:            {config['DATABASE']}",
        f"  recordings:          {Path(config['DATA_DIR']) / 'recordings'}",
        f"  worker:              {'in-process' if in_process else 'run: flask --app app worker'}",
        f"  understanding:       {_understanding(app)}",
    ]
    if admin:
        lines.append(
            f"  first login: user {admin[0]}, password {admin[1]}  (shown once; change it at"
            f" {base}/console/password)"
        )
    else:
        lines.append(
            "  log in with your console user; add one: flask --app app users create NAME"
            " --role admin|coordinator|viewer; a lost password: flask --app app users"
            " reset-password NAME"
        )
    return lines


def _understanding(app):
    """Say what classifies requests: the rules with the text models, or the rules alone."""
    name = app.config["TEXT_MODEL"]
    if name == "none":
        return "the rules alone (CARECALL_TEXT_MODEL=none)"
    if textmodel.text_models(app).problems([app.config["DEFAULT_LANGUAGE"]]):
        return "the rules alone (a text model cannot load: see the warning above)"
    return f"the rules and the text models {name}"


def _emit_error(name, exc, as_json):
    """Report a file that could not be transcribed without stopping the others."""
    if as_json:
        click.echo(json.dumps({"file": name, "error": type(exc).__name__, "message": str(exc)}))
    else:
        click.echo(f"{name}: error: {exc}", err=True)


def init_app(app):
    """Register CareCall's commands on the app's CLI."""
    for command in (
        transcribe_command,
        classify_cli,
        intake_command,
        serve_command,
        models_cli,
    ):
        app.cli.add_command(command)
