"""Score the request classifier and print a plain-text report.

With no option it compares the rules alone, the learned model alone and their fusion (what
the app runs): accuracy, recall by category, emergency recall, false alarms and median
time per request, on the three held-out sets (ivr_flows/heldout/en.tsv, en_b.tsv and
en_c.tsv, never trained on), on older held-out files the rules were tuned against
(bench/data/heldout_r7.tsv, heldout_r8.tsv), and by 5-fold cross-validation on the
training examples (model and example bank rebuilt without each fold), over every row and
over the rule-blind rows (`rules_seen` 0: no rule phrase was written from them).
It needs the text models the weights were trained on (e5-small and minilm-l6; scripts/setup).

The options below score the rules alone on any labelled TSV, as before the model.

Example:
    python bench/classify.py
    python bench/classify.py --compare --errors
    python bench/classify.py --audio 3      # every 3rd request of each held-out set, as a call
    python bench/classify.py --audio 3 --voice en-us   # the same, spoken by espeak-ng
    python bench/classify.py --latency      # milliseconds per path, and the app's memory
    python bench/classify.py --data bench/data/requests_en.tsv
    python bench/classify.py --data bench/data/requests_en.tsv --language en
    python bench/classify.py --data bench/data/heldout_r1.tsv --data bench/data/heldout_r2.tsv
    python bench/classify.py --data bench/data/heldout_r5.tsv --held-out
    python bench/classify.py --leave-one-out --examples-only

The example bank (ivr_flows/examples/<lang>.tsv) usually holds the rows being scored, so
plain runs flatter the nearest-example vote. --held-out scores each file with a bank that
lacks that file's rows; --leave-one-out scores each row with a bank that lacks that row.
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app import training  # noqa: E402
from app.classify import (  # noqa: E402
    DEFAULT_PATH,
    EXAMPLES_DIR,
    Categories,
    Classification,
    classify,
    load_categories,
    nearest_examples,
    read_examples,
    with_examples,
)
from app.speech import load_audio  # noqa: E402
from app.textmodel import load_embedder, load_weights, weights_path  # noqa: E402

DEFAULT_DATA = REPO / "bench" / "data" / "requests_en.tsv"
HELDOUT = REPO / "ivr_flows" / "heldout" / "en.tsv"
HELDOUT_B = REPO / "ivr_flows" / "heldout" / "en_b.tsv"
HELDOUT_C = REPO / "ivr_flows" / "heldout" / "en_c.tsv"
OLDER_HELDOUT = [REPO / "bench" / "data" / f"heldout_r{i}.tsv" for i in (7, 8)]


def read_rows(path: Path) -> list[tuple[str, str, str]]:
    """Read (text, category, urgency) rows from a TSV file with a header row."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(r["text"], r["category"], r["urgency"]) for r in reader if r.get("text")]


def examples_only(text: str, categories: Categories) -> Classification:
    """Classify by the nearest examples' vote alone, ignoring the phrase lists."""
    bank = categories.examples
    neighbours = nearest_examples(categories.normalise(text), categories)
    votes: dict[str, float] = {}
    if neighbours and neighbours[0][0] >= bank.min_similarity:
        for similarity, i in neighbours:
            votes[bank.labels[i]] = votes.get(bank.labels[i], 0.0) + similarity**bank.power
    category = max(votes, key=votes.get) if votes else "other"
    emergency = category == "emergency"
    return Classification(category, 0.0, (), "critical" if emergency else "normal", emergency, ())


def without(categories: Categories, bank: list[tuple[str, str]], texts: set[str]) -> Categories:
    """Return categories whose example bank lacks the given request texts."""
    return with_examples(categories, [row for row in bank if row[0] not in texts])


def evaluate(
    rows: list[tuple[str, str, str]],
    categories: Categories,
    predict=classify,
    leave_one_out: list[tuple[str, str]] | None = None,
) -> dict:
    """Classify every row and return accuracy, per-category and emergency metrics.

    With `leave_one_out` (the example bank's rows), each row is classified by a bank
    rebuilt without it; timing then includes the rebuilds.
    """
    started = time.perf_counter()
    if leave_one_out is None:
        scored = [(text, c, u, predict(text, categories)) for text, c, u in rows]
    else:
        scored = [
            (text, c, u, predict(text, without(categories, leave_one_out, {text})))
            for text, c, u in rows
        ]
    elapsed = time.perf_counter() - started

    per_category = {}
    for key in categories.keys:
        tp = sum(1 for _, c, _, p in scored if c == key and p.category == key)
        predicted = sum(1 for *_, p in scored if p.category == key)
        support = sum(1 for _, c, _, _ in scored if c == key)
        per_category[key] = {
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / support if support else 0.0,
            "support": support,
        }
    emergencies = [p for _, c, _, p in scored if c == "emergency"]
    others = [p for _, c, _, p in scored if c != "emergency"]
    n = len(scored)
    return {
        "n": n,
        "accuracy": sum(p.category == c for _, c, _, p in scored) / n if n else 0.0,
        "per_category": per_category,
        "emergency_recall": (
            sum(p.emergency for p in emergencies) / len(emergencies) if emergencies else 1.0
        ),
        "false_alarm_rate": sum(p.emergency for p in others) / len(others) if others else 0.0,
        "urgency_accuracy": sum(p.urgency == u for _, _, u, p in scored) / n if n else 0.0,
        "mean_us": elapsed / n * 1e6 if n else 0.0,
        "errors": [row for row in scored if row[3].category != row[1] or row[3].urgency != row[2]],
    }


def report(result: dict, show_errors: bool = False) -> str:
    """Format an `evaluate` result as a plain-text table."""
    lines = [f"{'category':<15}{'precision':>10}{'recall':>10}{'support':>9}"]
    for key, m in result["per_category"].items():
        lines.append(f"{key:<15}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['support']:>9d}")
    lines += [
        "",
        f"{'requests':<28}{result['n']:>8d}",
        f"{'category accuracy':<28}{result['accuracy']:>8.3f}",
        f"{'emergency recall':<28}{result['emergency_recall']:>8.3f}",
        f"{'emergency false-alarm rate':<28}{result['false_alarm_rate']:>8.3f}",
        f"{'urgency accuracy':<28}{result['urgency_accuracy']:>8.3f}",
        f"{'mean classify time (us)':<28}{result['mean_us']:>8.0f}",
    ]
    if show_errors:
        lines.append("")
        for text, category, urgency, p in result["errors"]:
            lines.append(f"want {category}/{urgency} got {p.category}/{p.urgency} {p.matched}")
            lines.append(f"    {text}")
    return "\n".join(lines)


def compare_table(name: str, scored, weights, keys=None, timing=None) -> tuple[str, dict]:
    """Return rules / model / fusion lines for one set of scored rows, and fusion's metrics."""
    keys = keys or weights.labels
    lines = [f"== {name} ({len(scored)} requests)"]
    head = (
        f"{'':8}{'accuracy':>9}{'emerg. recall':>15}{'missed':>8}{'false alarms':>14}"
        f"{'calibration error':>19}"
    )
    if timing:
        head += f"{'median ms':>11}"
    lines.append(head)
    per = {}
    for mode in ("rules", "model", "fusion"):
        m = training.metrics(scored, training.verdicts(scored, mode, weights), keys)
        per[mode] = m
        line = (
            f"{mode:8}{m['accuracy']:>9.3f}{m['emergency_recall']:>15.3f}"
            f"{len(m['missed']):>8d}{m['false_alarms']:>14.3f}{m['calibration_error']:>19.3f}"
        )
        if timing:
            line += f"{timing[mode]:>11.1f}"
        lines.append(line)
    lines.append("recall by category:  " + "  ".join(k[:8] for k in keys))
    for mode in ("rules", "model", "fusion"):
        recalls = per[mode]["per_category"]
        lines.append(
            f"{mode:21}"
            + "  ".join(f"{recalls[k]['recall']:>{len(k[:8])}.2f}" for k in keys if k in recalls)
        )
    return "\n".join(lines), per["fusion"]


def latency(texts, categories, model, repeat: int = 1) -> dict[str, float]:
    """Return the median milliseconds per request of rules alone, model alone and fusion."""
    return {mode: m["median"] for mode, m in timings(texts, categories, model, repeat).items()}


def timings(texts, categories, model, repeat: int = 1) -> dict[str, dict[str, float]]:
    """Time rules, raw embedding, model and fusion per request, interleaved in one run.

    Each text goes through every path in turn, so a burst of load from another process
    falls on all of them alike and the ratios to the raw embedding stay fair. Wall-clock
    and CPU (the whole process's: the joined models embed on their own threads)
    milliseconds, median and 95th percentile.
    """
    runs = {
        "rules": lambda t: classify(t, categories),
        "embedding": lambda t: model.embedder.embed([t]),
        "model": model.probabilities,
        "fusion": lambda t: classify(t, categories, model),
    }
    wall: dict[str, list[float]] = {mode: [] for mode in runs}
    cpu: dict[str, list[float]] = {mode: [] for mode in runs}
    for text in texts * repeat:
        for mode, run in runs.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            run(text)
            wall[mode].append((time.perf_counter() - started) * 1000)
            cpu[mode].append((time.process_time() - started_cpu) * 1000)
    return {
        mode: {
            "median": statistics.median(wall[mode]),
            "p95": statistics.quantiles(wall[mode], n=20)[-1],
            "cpu_median": statistics.median(cpu[mode]),
            "cpu_p95": statistics.quantiles(cpu[mode], n=20)[-1],
        }
        for mode in runs
    }


def rss_mb() -> float:
    """Return this process's resident memory now, in MB (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def speed(repeat: int, models_dir: Path = REPO / "speech_models") -> int:
    """Print per-request latency of each path against the raw embedding, and the app's memory.

    The app is built as it runs (create_app on a scratch instance), its English classifier
    loaded through the app's own text models, so the memory is the serving process's.
    """
    import os
    import tempfile

    from app import create_app
    from app.pipeline import categories_for, text_classifier

    before = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {
                "SECRET_KEY": "bench-secret-key-0123456789",
                "DATABASE": str(Path(tmp) / "carecall.db"),
                "DATA_DIR": str(Path(tmp) / "data"),
                "OUTBOX_DIR": str(Path(tmp) / "outbox"),
                "WORKER": "none",
                "MODELS_DIR": str(models_dir),
            }
        )
        categories = categories_for("en")
        model = text_classifier(app, "en")
        if model is None:
            print("the learned classifier did not load; run scripts/setup")
            return 1
        loaded = rss_mb()
        texts = [t for t, *_ in training.read_heldout(HELDOUT)] + [
            t for t, *_ in training.read_heldout(HELDOUT_B)
        ]
        texts = texts[::4]
        classify(texts[0], categories, model)  # first call warms caches, as the app's would
        result = timings(texts, categories, model, repeat)
        after = rss_mb()
    print(
        f"{len(texts) * repeat} requests (every 4th held-out text, x{repeat}); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'ms per request':16}{'median':>8}{'p95':>8}{'CPU med':>9}{'CPU p95':>9}{'x embed':>9}")
    raw = result["embedding"]["median"]
    for mode, m in result.items():
        print(
            f"{mode:16}{m['median']:>8.1f}{m['p95']:>8.1f}{m['cpu_median']:>9.1f}"
            f"{m['cpu_p95']:>9.1f}{m['median'] / raw:>9.2f}"
        )
    print(
        f"memory (RSS): {before:.0f} MB before the app, {loaded:.0f} MB with the app and the "
        f"English classifier loaded, {after:.0f} MB after the run"
    )
    return 0


def compare(show_errors: bool = False, models_dir: Path = REPO / "speech_models") -> int:
    """Print the rules / model / fusion comparison on held-out sets and by cross-validation."""
    categories = load_categories("en")
    weights = load_weights(weights_path(REPO / "ivr_flows", "en"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    embedder = load_embedder(weights.embedder, models_dir)
    model = training_classifier(embedder, weights)
    print(f"model {weights.embedder}; weights {weights.info}")
    print(
        f"tuning (chosen by cross-validation): rules' share {weights.rule_weight}, "
        f"emergency threshold {weights.emergency_threshold} "
        f"({weights.disarmed_threshold} where the rules set a danger phrase aside), "
        f"temperature {weights.temperature}\n"
    )
    sets = [
        ("held-out A ivr_flows/heldout/en.tsv", training.read_heldout(HELDOUT)),
        ("held-out B ivr_flows/heldout/en_b.tsv", training.read_heldout(HELDOUT_B)),
        ("held-out C ivr_flows/heldout/en_c.tsv", training.read_heldout(HELDOUT_C)),
    ]
    older = [row for path in OLDER_HELDOUT for row in training.read_heldout(path)]
    sets.append(("older held-out bench/data/heldout_r7+r8 (rules were tuned on them)", older))
    for name, rows in sets:
        scored = training.score(rows, embedder.embed([t for t, *_ in rows]), categories, weights)
        # Every 4th request, so the timing covers short and long ones without taking long.
        timing = latency([t for t, *_ in rows[::4]], categories, model)
        table, fusion = compare_table(name, scored, weights, categories.keys, timing)
        print(table)
        if show_errors:
            for text, want, got in fusion["errors"]:
                print(f"  want {want:13} got {got:13} {text}")
            for text in fusion["false_alarm_texts"]:
                print(f"  false alarm: {text}")
        print()
    examples = DEFAULT_PATH.parent / EXAMPLES_DIR / "en.tsv"
    rows = read_examples(examples, categories.keys)
    blind = training.read_rule_blind(examples)
    embeddings = embedder.embed([t for t, _ in rows])
    mix = (weights.neighbour_share, weights.neighbour_temperature)
    oof = training.out_of_fold(rows, embeddings, categories, weights.embedder, mix=mix)
    oof = [training._rescale(s, weights.temperature) for s in oof]
    for name, scored in (
        ("5-fold cross-validation on ivr_flows/examples/en.tsv", oof),
        ("the same, rule-blind rows only (rules_seen 0)", [s for s in oof if s.text in blind]),
    ):
        table, _ = compare_table(name, scored, weights, categories.keys)
        print(table)
        print()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"peak memory of this process: {after / 1024:.0f} MB ({(after - before) / 1024:.0f} MB "
        "since loading the model and embedding every set)"
    )
    return 0


def audio(step: int, voice: str | None = None, models_dir: Path = REPO / "speech_models") -> int:
    """Print the comparison on held-out requests spoken by a synthetic voice over a phone line.

    Every STEPth request of each held-out set is rendered as 8 kHz mu-law speech and
    transcribed by Whisper tiny.en, as a phone call would be; the transcript is then
    classified. The voice is speechgen's BENCH_VOICE (Festival) when installed, else
    espeak-ng's en-us. Synthetic voices are harder for Whisper than people, so this is a
    floor rather than a forecast.
    """
    import tempfile

    from app.speech.service import SpeechService
    from tests.speechgen import BENCH_VOICE, RenderError, engine_of, installed, require, telephone

    if voice is None:
        voice = BENCH_VOICE if installed(BENCH_VOICE) else "en-us"
    try:
        require(voice)
    except RenderError as e:
        print(e)
        return 1
    print("voice: {} ({} {})".format(voice, *engine_of(voice)))
    categories = load_categories("en")
    weights = load_weights(weights_path(REPO / "ivr_flows", "en"))
    embedder = load_embedder(weights.embedder, models_dir)
    speech = SpeechService(
        engines={"en": "whisper:whisper-tiny-en"}, models_dir=models_dir, max_seconds=600
    )
    pooled_written, pooled_heard = [], []
    for name, path in (("A", HELDOUT), ("B", HELDOUT_B), ("C", HELDOUT_C)):
        rows = training.read_heldout(path)[::step]
        heard = []
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for i, (text, category, emergency) in enumerate(rows):
                wav = telephone(text, Path(tmp) / f"{i}.wav", voice=voice)
                said = speech.transcribe(load_audio(wav), "en").text
                heard.append((said, category, emergency))
        print(
            f"held-out {name}: transcribed {len(heard)} requests in "
            f"{time.perf_counter() - started:.0f} s"
        )
        written = training.score(rows, embedder.embed([t for t, *_ in rows]), categories, weights)
        scored = training.score(heard, embedder.embed([t for t, *_ in heard]), categories, weights)
        pooled_written += written
        pooled_heard += scored
        print(compare_table(f"held-out {name}, 1 in {step}, as written", written, weights)[0])
        table, fusion = compare_table(
            f"held-out {name}, the same {len(heard)} as telephone audio", scored, weights
        )
        print(table)
        for text in fusion["missed"]:
            print(f"  missed emergency, heard as: {text}")
        print()
    n = len(pooled_heard)
    print(compare_table(f"all three, {n} requests as written", pooled_written, weights)[0])
    print(compare_table(f"all three, {n} requests as telephone audio", pooled_heard, weights)[0])
    return 0


def training_classifier(embedder, weights):
    """Return the classifier the app builds from an embedder and weights."""
    from app.textmodel import TextClassifier

    return TextClassifier(embedder, weights)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        help="labelled TSV file; repeat for a table per file (default: requests_en.tsv)",
    )
    parser.add_argument("--language", default="en", help="language table in categories.toml")
    parser.add_argument("--errors", action="store_true", help="list misclassified requests")
    parser.add_argument(
        "--held-out", action="store_true", help="score each file without its rows in the bank"
    )
    parser.add_argument(
        "--leave-one-out", action="store_true", help="score each row without itself in the bank"
    )
    parser.add_argument(
        "--examples-only", action="store_true", help="score the nearest-example vote alone"
    )
    parser.add_argument(
        "--compare", action="store_true", help="rules / model / fusion (the default)"
    )
    parser.add_argument(
        "--latency",
        type=int,
        nargs="?",
        const=3,
        metavar="REPEAT",
        help="time rules, embedding, model and fusion per request, and the app's memory",
    )
    parser.add_argument(
        "--audio",
        type=int,
        metavar="STEP",
        help="the comparison on every STEPth request of each held-out set as telephone audio",
    )
    parser.add_argument(
        "--voice",
        metavar="NAME",
        help="with --audio, the voice that speaks the requests (tests/speechgen.py VOICES; "
        "default festival-slt when installed, else en-us)",
    )
    args = parser.parse_args(argv)
    if args.voice and not args.audio:
        parser.error("--voice goes with --audio")
    if args.latency:
        return speed(args.latency)
    if args.audio:
        return audio(args.audio, args.voice)
    legacy = args.data or args.held_out or args.leave_one_out or args.examples_only
    if args.compare or not legacy:
        return compare(show_errors=args.errors)
    categories = load_categories(args.language)
    bank_path = DEFAULT_PATH.parent / EXAMPLES_DIR / f"{args.language}.tsv"
    bank = read_examples(bank_path) if bank_path.is_file() else []
    predict = examples_only if args.examples_only else classify
    paths = args.data or [DEFAULT_DATA]
    for path in paths:
        if len(paths) > 1:
            print(f"== {path.name}")
        rows = read_rows(path)
        scoring = categories
        if args.held_out:
            scoring = without(categories, bank, {text for text, _, _ in rows})
        loo = bank if args.leave_one_out else None
        result = evaluate(rows, scoring, predict=predict, leave_one_out=loo)
        print(report(result, show_errors=args.errors))
        if len(paths) > 1:
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
