"""Train the learned classifier, choose how it joins the rules, and measure both honestly.

Every number that tunes the fusion (the rules' share, the emergency threshold, the
temperature of the probabilities) is chosen on out-of-fold predictions over the training
examples, never on the held-out set; the held-out set only measures and gates.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classify import (
    Categories,
    Classification,
    classify_rules,
    fuse,
    with_examples,
)
from .textmodel import Weights, fit, folds

HELDOUT_DIR = "heldout"  # beside categories.toml: heldout/<language>.tsv
FOLDS = 5
# Most false alarms tolerated while reaching for every emergency (the target is 2 %).
MAX_FALSE_ALARMS = 0.02
_RULE_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0, 1, 21))
_THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0.05, 0.95, 19))
_TEMPERATURES = (0.5, 0.7, 0.85, 1.0, 1.25, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class Scored:
    """One labelled request with both paths' verdicts, ready to fuse."""

    text: str
    category: str
    emergency: bool
    rules: Classification
    probabilities: dict[str, float]


def read_heldout(path: Path) -> list[tuple[str, str, bool]]:
    """Read (text, category, emergency) rows from a held-out TSV with a header row."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = []
        for r in reader:
            if not r.get("text"):
                continue
            emergency = r.get("emergency")
            flag = r["category"] == "emergency" if emergency is None else emergency == "1"
            rows.append((r["text"], r["category"], flag))
    return rows


def digest(rows: Sequence[tuple[str, str]]) -> str:
    """Return a short fingerprint of training rows, recorded with the weights."""
    h = hashlib.sha256()
    for text, category in rows:
        h.update(f"{text}\t{category}\n".encode())
    return h.hexdigest()[:16]


def out_of_fold(
    rows: Sequence[tuple[str, str]],
    embeddings: np.ndarray,
    categories: Categories,
    embedder: str,
    k: int = FOLDS,
) -> list[Scored]:
    """Score every training row by a model and an example bank that never saw it."""
    scored: list[Scored | None] = [None] * len(rows)
    targets = [c for _, c in rows]
    for test in folds(len(rows), k):
        held = set(test.tolist())
        train = [i for i in range(len(rows)) if i not in held]
        weights = fit(embeddings[train], [targets[i] for i in train], categories.keys, embedder)
        bank = with_examples(categories, [rows[i] for i in train])
        probs = weights.probabilities(embeddings[test])
        for j, i in enumerate(test):
            text, category = rows[i]
            scored[i] = Scored(
                text,
                category,
                category == "emergency",
                classify_rules(text, bank),
                dict(zip(categories.keys, map(float, probs[j]), strict=True)),
            )
    return [s for s in scored if s is not None]


def score(
    rows: Sequence[tuple[str, str, bool]],
    embeddings: np.ndarray | None,
    categories: Categories,
    weights: Weights | None,
) -> list[Scored]:
    """Score labelled rows with the rules and, when given, a trained model."""
    probs = weights.probabilities(embeddings) if weights is not None else None
    out = []
    for i, (text, category, emergency) in enumerate(rows):
        p = {} if probs is None else dict(zip(weights.labels, map(float, probs[i]), strict=True))
        out.append(Scored(text, category, emergency, classify_rules(text, categories), p))
    return out


def verdicts(scored: Sequence[Scored], mode: str, weights: Weights | None) -> list[Classification]:
    """Return each row's classification by "rules", "model" or "fusion"."""
    if mode == "rules" or weights is None:
        return [s.rules for s in scored]
    if mode == "model":
        # The model alone: its own argmax, and its own emergency threshold, no safety net.
        return [
            fuse(_silent(s.rules), s.probabilities, 0.0, weights.emergency_threshold)
            for s in scored
        ]
    return [
        fuse(
            s.rules,
            s.probabilities,
            weights.rule_weight,
            weights.emergency_threshold,
            weights.disarmed_threshold,
            weights.calibration,
        )
        for s in scored
    ]


def _silent(rules: Classification) -> Classification:
    """Return a rules verdict with no evidence, so fusing it leaves the model alone."""
    return Classification("other", 0.0, (), "normal", False, ())


def metrics(
    scored: Sequence[Scored],
    predicted: Sequence[Classification],
    keys: Sequence[str] | None = None,
) -> dict:
    """Return accuracy, per-category recall, emergency recall and false alarms."""
    n = len(scored)
    per_category = {}
    # By default the categories the rows hold, in the order they first appear.
    for key in keys or dict.fromkeys(s.category for s in scored):
        support = [p for s, p in zip(scored, predicted, strict=True) if s.category == key]
        hits = sum(p.category == key for p in support)
        per_category[key] = {"recall": hits / len(support) if support else 1.0, "n": len(support)}
    emergencies = [p for s, p in zip(scored, predicted, strict=True) if s.emergency]
    calm = [p for s, p in zip(scored, predicted, strict=True) if not s.emergency]
    return {
        "n": n,
        "calibration_error": calibration_error(scored, predicted),
        "accuracy": sum(s.category == p.category for s, p in zip(scored, predicted, strict=True))
        / max(n, 1),
        "per_category": per_category,
        "emergency_recall": sum(p.emergency for p in emergencies) / max(len(emergencies), 1),
        "emergencies": len(emergencies),
        "missed": [
            s.text
            for s, p in zip(scored, predicted, strict=True)
            if s.emergency and not p.emergency
        ],
        "false_alarms": sum(p.emergency for p in calm) / max(len(calm), 1),
        "false_alarm_texts": [
            s.text
            for s, p in zip(scored, predicted, strict=True)
            if not s.emergency and p.emergency
        ],
        "errors": [
            (s.text, s.category, p.category)
            for s, p in zip(scored, predicted, strict=True)
            if s.category != p.category
        ],
    }


def calibration_error(scored: Sequence[Scored], predicted: Sequence[Classification]) -> float:
    """Return the expected calibration error: |score - accuracy| over ten score bins."""
    bins: dict[int, list[tuple[float, bool]]] = {}
    for s, p in zip(scored, predicted, strict=True):
        bins.setdefault(min(int(p.score * 10), 9), []).append((p.score, s.category == p.category))
    total = sum(len(b) for b in bins.values())
    gap = sum(abs(sum(x for x, _ in b) - sum(ok for _, ok in b)) for b in bins.values())
    return gap / max(total, 1)


def tune(scored: Sequence[Scored], weights: Weights) -> Weights:
    """Choose temperature, emergency threshold and rules' share on out-of-fold rows."""
    temperature = _temperature(scored)
    scaled = [_rescale(s, temperature) for s in scored]
    threshold, disarmed = _threshold(scaled)
    best = max(
        _RULE_WEIGHTS,
        key=lambda w: (
            _accuracy(scaled, w, threshold, disarmed),
            -abs(w - 0.5),  # ties go to the even mix
        ),
    )
    tuned = dataclasses.replace(
        weights,
        temperature=temperature,
        rule_weight=best,
        emergency_threshold=threshold,
        disarmed_threshold=disarmed,
    )
    fused = verdicts(scaled, "fusion", tuned)
    right = [s.category == f.category for s, f in zip(scaled, fused, strict=True)]
    return dataclasses.replace(tuned, calibration=_calibration([f.score for f in fused], right))


def _calibration(scores: Sequence[float], right: Sequence[bool]) -> tuple[float, float]:
    """Fit slope and offset of a logistic on the scores' logits to how often they were right."""
    p = np.clip(np.array(scores, dtype=float), 1e-6, 1 - 1e-6)
    x = np.log(p / (1 - p))
    y = np.array(right, dtype=float)
    best, loss = (1.0, 0.0), math.inf
    for slope in np.linspace(0.25, 4.0, 16):
        for offset in np.linspace(-2.0, 4.0, 25):
            q = np.clip(1 / (1 + np.exp(-(slope * x + offset))), 1e-9, 1 - 1e-9)
            nll = -np.sum(y * np.log(q) + (1 - y) * np.log(1 - q))
            if nll < loss:
                best, loss = (round(float(slope), 3), round(float(offset), 3)), nll
    return best


def _temperature(scored: Sequence[Scored]) -> float:
    """Return the softmax temperature that best fits out-of-fold probabilities (least NLL)."""

    def nll(t: float) -> float:
        total = 0.0
        for s in scored:
            logs = {k: math.log(max(p, 1e-12)) / t for k, p in s.probabilities.items()}
            top = max(logs.values())
            norm = top + math.log(sum(math.exp(v - top) for v in logs.values()))
            total -= logs[s.category] - norm
        return total

    return min(_TEMPERATURES, key=nll)


def _rescale(s: Scored, temperature: float) -> Scored:
    """Return s with its probabilities sharpened or softened by a temperature."""
    logs = {k: math.log(max(p, 1e-12)) / temperature for k, p in s.probabilities.items()}
    top = max(logs.values())
    exp = {k: math.exp(v - top) for k, v in logs.items()}
    total = sum(exp.values())
    return Scored(s.text, s.category, s.emergency, s.rules, {k: v / total for k, v in exp.items()})


def _threshold(scored: Sequence[Scored]) -> tuple[float, float]:
    """Return the thresholds catching the most emergencies within the false-alarm cap.

    The first is for any request, the second (never lower) for one whose danger phrase
    the rules set aside; among equals the highest thresholds, so the fewest false alarms.
    """
    best = (-1.0, -1.0, _THRESHOLDS[-1], _THRESHOLDS[-1])
    for t in _THRESHOLDS:
        # Never 1.0: a model sure enough still raises what the rules set aside.
        for d in (x for x in _THRESHOLDS if x >= t):
            caught = [
                s.rules.emergency or s.probabilities["emergency"] >= (d if s.rules.disarmed else t)
                for s in scored
            ]
            emergencies = [c for c, s in zip(caught, scored, strict=True) if s.emergency]
            calm = [c for c, s in zip(caught, scored, strict=True) if not s.emergency]
            recall = sum(emergencies) / max(len(emergencies), 1)
            alarms = sum(calm) / max(len(calm), 1)
            key = (recall, -alarms, t, d)
            if alarms <= MAX_FALSE_ALARMS and key > best:
                best = key
    return best[2], best[3]


def _accuracy(
    scored: Sequence[Scored], rule_weight: float, threshold: float, disarmed: float
) -> float:
    """Return the fused category accuracy for one choice of tuning."""
    hits = sum(
        fuse(s.rules, s.probabilities, rule_weight, threshold, disarmed).category == s.category
        for s in scored
    )
    return hits / max(len(scored), 1)


def train(
    rows: Sequence[tuple[str, str]],
    embeddings: np.ndarray,
    categories: Categories,
    embedder: str,
) -> tuple[Weights, list[Scored]]:
    """Train weights on every row, tuned by cross-validation; return them and the CV rows."""
    oof = out_of_fold(rows, embeddings, categories, embedder)
    weights = fit(embeddings, [c for _, c in rows], categories.keys, embedder)
    weights = tune(oof, weights)
    tuned_oof = [_rescale(s, weights.temperature) for s in oof]
    cv = metrics(tuned_oof, verdicts(tuned_oof, "fusion", weights))
    info = {
        "rows": len(rows),
        "rows_sha256": digest(rows),
        "cv_accuracy": round(cv["accuracy"], 4),
        "cv_emergency_recall": round(cv["emergency_recall"], 4),
        "cv_false_alarms": round(cv["false_alarms"], 4),
    }
    return dataclasses.replace(weights, info=info), tuned_oof
