"""Score the request classifier against a labelled TSV and print a plain-text report.

Example:
    python bench/classify.py
    python bench/classify.py --data bench/data/requests_en.tsv --language en
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.classify import CATEGORY_KEYS, Categories, classify, load_categories  # noqa: E402

DEFAULT_DATA = REPO / "bench" / "data" / "requests_en.tsv"


def read_rows(path: Path) -> list[tuple[str, str, str]]:
    """Read (text, category, urgency) rows from a TSV file with a header row."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(r["text"], r["category"], r["urgency"]) for r in reader if r.get("text")]


def evaluate(rows: list[tuple[str, str, str]], categories: Categories) -> dict:
    """Classify every row and return accuracy, per-category and emergency metrics."""
    started = time.perf_counter()
    scored = [(text, c, u, classify(text, categories)) for text, c, u in rows]
    elapsed = time.perf_counter() - started

    per_category = {}
    for key in CATEGORY_KEYS:
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled TSV file")
    parser.add_argument("--language", default="en", help="language table in categories.toml")
    parser.add_argument("--errors", action="store_true", help="list misclassified requests")
    args = parser.parse_args(argv)
    categories = load_categories(args.language)
    print(report(evaluate(read_rows(args.data), categories), show_errors=args.errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
