"""Turn a request transcript into a demand category and an urgency.

Pure core: no Flask, no I/O except `load_categories`. Every phrase, cue, guard and weight
lives in ivr_flows/categories.toml, one table per language, and labelled example requests
in ivr_flows/examples/<language>.tsv, so a new language is new data.

Two kinds of evidence are combined: phrases from the data file, and the votes of the
labelled examples that share the most rare words with the request (nearest neighbours).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import re
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

# The categories every language must define: the code routes danger and the unsure to them.
REQUIRED_CATEGORIES = ("emergency", "other")
URGENCIES = ("critical", "high", "normal", "low")

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "ivr_flows" / "categories.toml"
# Labelled example requests live beside categories.toml, one TSV per language.
EXAMPLES_DIR = "examples"

# Transcripts are a few sentences; anything far longer is a stuck recording, not a request.
MAX_TOKENS = 2000
# Said among a classification's reasons when the text ran past MAX_TOKENS.
TRUNCATED_NOTE = f"note: only the first {MAX_TOKENS} words were read"
# The learned model reads at most MODEL_MAX_WORDS words of a text, its first and last
# halves (a rambling caller often says what they need at the end), and MODEL_MAX_CHARS
# characters (counted as UTF-8 bytes): its time grows with length (400 words took over a
# second, one 100,000-letter word a minute). It was trained on requests of 39 words at most;
# the rules read them all.
MODEL_MAX_WORDS = 160
MODEL_MAX_CHARS = 1600
# A text of fewer words says too little for the model, which called "1" and "[music]" an
# emergency; the rules alone judge it.
MODEL_MIN_WORDS = 2
# A model probability of emergency at least this share of the alarm threshold, but under
# it, makes a possible emergency: urgency at least high, and emergency offered first among
# the alternatives, so a coordinator sees it. On cross-validation (2,064 examples) half the
# threshold showed every emergency the fusion missed (3) and 2.2 % of the calm requests.
POSSIBLE_EMERGENCY = 0.5
# Alternatives inside one phrase ("fix|mend tap|taps") expand to at most this many phrases.
MAX_EXPANSIONS = 256

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:'[^\W_{_CJK}]+)*")
# Guards only reach across words of the same sentence; Whisper punctuates sentences.
_SENTENCE_RE = re.compile(r"[.!?;\u3002\uff01\uff1f]+")
# A year in digits, 1900-2099: "in 2019" is a past event whatever the year is now.
_YEAR_RE = re.compile(r"(?:19|20)\d\d")
# Text with none of these marks was not punctuated, so clause words stand in for them.
_PUNCTUATION_RE = re.compile(r"[.,!?;:\u3001\u3002\uff01\uff0c\uff1f]")
_KEY_RE = re.compile(r"[a-z][a-z0-9_]*")
# What speech engines write for sounds that are not words: "[Music]", "[BLANK_AUDIO]", "♪".
_NON_SPEECH_RE = re.compile(r"\[[^\]]*\]|[\u266a\u266b\u266c]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})

log = logging.getLogger(__name__)

# Pools of phrases matched independently of each other.
_CATEGORY, _URGENCY, _GUARD, _IDIOM = "category", "urgency", "guard", "idiom"


class UnknownLanguage(ValueError):
    """Raised when categories.toml has no table for the requested language."""


class CategoryDataError(ValueError):
    """Raised when categories.toml is missing or malforms a required entry."""


@dataclass(frozen=True)
class Classification:
    category: str
    score: float
    alternatives: tuple[tuple[str, float], ...]
    urgency: str
    emergency: bool
    matched: tuple[str, ...]
    # Danger phrases the rules heard but set aside as negated or harmless ("I haven't fallen").
    disarmed: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Return the classification as a JSON-ready dict."""
        return {
            "category": self.category,
            "score": self.score,
            "alternatives": [{"category": c, "score": s} for c, s in self.alternatives],
            "urgency": self.urgency,
            "emergency": self.emergency,
            "matched": list(self.matched),
        }


@dataclass(frozen=True)
class _Phrase:
    tokens: tuple[str, ...]
    source: str  # the phrase as written in the data file, shown to coordinators
    pool: str
    tag: str  # category key, urgency level, or guard kind
    weight: float
    max_gap: int = 2  # other words allowed between two phrase words
    needs: str = ""  # context group that must also be present (emergency combos)
    otherwise: str = ""  # category to count towards when `needs` is absent
    guarded: bool = True  # whether harmless context nearby can set it aside (not `decisive`)
    needs_within: int = 0  # how many words from the phrase the `needs` cue may sit


@dataclass(frozen=True)
class _Match:
    phrase: _Phrase
    positions: tuple[int, ...]

    @property
    def start(self) -> int:
        return self.positions[0]

    @property
    def end(self) -> int:
        return self.positions[-1]


@dataclass(frozen=True)
class ExampleBank:
    """Labelled example requests, indexed by word for nearest-neighbour lookup."""

    texts: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    postings: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    idf: Mapping[str, float] = field(default_factory=dict)
    norms: tuple[float, ...] = ()
    vocab_by_shape: Mapping[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    stop_words: frozenset[str] = frozenset()
    k: int = 11
    power: float = 2.0
    weight: float = 0.5
    min_similarity: float = 0.2
    emergency_share: float = 0.5
    emergency_similarity: float = 0.4
    emergency_shared: int = 1
    guarded_emergency_share: float = 0.8
    veto_share: float = 0.0
    veto_below: float = 3.0
    _fuzzy_cache: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Categories:
    """Phrase lists, cues and tuning for one language, precompiled for fast matching."""

    language: str
    keys: tuple[str, ...]  # category keys in the data file's order
    labels: Mapping[str, str]
    readbacks: Mapping[str, str]  # the whole sentence a person hears about their category
    contractions: Mapping[str, tuple[str, ...]]
    suffixes: tuple[tuple[str, str], ...]
    fillers: frozenset[str]
    clause_words: frozenset[str]
    # Word runs that start a clause in any text, by their first word.
    clause_starts: Mapping[str, tuple[tuple[str, ...], ...]]
    year_word: str  # what a year written in digits ("2019") becomes, or "" to keep it
    word_forms: Mapping[str, str]
    stem_endings: tuple[tuple[str, str], ...]
    stem_tidy: tuple[tuple[str, str], ...]
    stem_keep: frozenset[str]
    min_stem: int
    rewrite_re: re.Pattern[str] | None
    rewrites: Mapping[str, str]
    phrases: tuple[_Phrase, ...]
    index: Mapping[str, tuple[int, ...]]
    vocab_by_shape: Mapping[tuple[str, int], tuple[str, ...]]
    vocab: frozenset[str]
    no_fuzzy: frozenset[str]
    max_gap: int
    fuzzy_min_length: int
    fuzzy_two_edits_length: int
    negation_window: int
    calm_window: int
    guard_window: int
    other_threshold: float
    emergency_score: float
    evidence_decay: float
    examples: ExampleBank = field(default_factory=ExampleBank)
    _fuzzy_cache: dict[str, frozenset[str]] = field(default_factory=dict, compare=False)
    _stem_cache: dict[str, str] = field(default_factory=dict, compare=False)

    def label(self, key: str) -> str:
        """Return the plain words for a category key, to fit in sentences about a request."""
        return self.labels.get(key, self.labels.get("other", key))

    def readback(self, key: str) -> str:
        """Return the sentence that tells a person which kind of help we understood."""
        return self.readbacks.get(key, self.readbacks.get("other", ""))

    def normalise(self, text: str) -> list[str]:
        """Split text into normalised tokens: lowercase, contractions expanded, fillers gone."""
        return self.sentences(text)[0]

    def sentences(self, text: str) -> tuple[list[str], list[int]]:
        """Return normalised tokens and, for each, the number of the sentence it is in.

        In unpunctuated text ("i fell and cannot get up") a clause word such as "and"
        starts a new sentence, so a guard cannot reach across a whole transcript; in any
        text a switch to the present ("but now") starts one.
        """
        tokens, sentence_of, _cut = self._read(text)
        return tokens, sentence_of

    def _read(self, text: str) -> tuple[list[str], list[int], bool]:
        """Return `sentences(text)` and whether words past MAX_TOKENS were left unread."""
        tokens: list[str] = []
        sentence_of: list[int] = []
        clauses = self.clause_words if _PUNCTUATION_RE.search(text) is None else frozenset()
        number = 0
        cut = False
        pieces = _SENTENCE_RE.split(text)
        for k, sentence in enumerate(pieces):
            words = self._normalise_sentence(sentence)
            for i, word in enumerate(words):
                # A comma does not end a sentence, so "..., but now he has a knife" needs
                # its switch to the present spotted in punctuated text too.
                if word in clauses or any(
                    tuple(words[i : i + len(run)]) == run
                    for run in self.clause_starts.get(word, ())
                ):
                    number += 1
                tokens.append(word)
                sentence_of.append(number)
            number += 1
            if len(tokens) >= MAX_TOKENS:
                rest = (self._normalise_sentence(s) for s in pieces[k + 1 :])
                cut = len(tokens) > MAX_TOKENS or any(rest)
                break
        return tokens[:MAX_TOKENS], sentence_of[:MAX_TOKENS], cut

    def _normalise_sentence(self, text: str) -> list[str]:
        """Normalise one sentence's words."""
        out: list[str] = []
        for raw in _TOKEN_RE.findall(text.translate(_APOSTROPHES).lower()):
            if raw in self.contractions:
                out.extend(self.contractions[raw])
                continue
            token = raw
            if "'" in token:
                for suffix, replacement in self.suffixes:
                    if token.endswith(suffix) and len(token) > len(suffix):
                        token = token[: -len(suffix)] + replacement
                        break
                token = token.replace("'", "")
            out.extend(t for t in token.split() if t not in self.fillers)
        if self.year_word:
            out = [self.year_word if _YEAR_RE.fullmatch(t) else t for t in out]
        if self.rewrite_re is not None and out:
            joined = self.rewrite_re.sub(lambda m: self.rewrites[m.group(0)], " ".join(out))
            out = joined.split()
        return [self.stem(t) for t in out]

    def stem(self, word: str) -> str:
        """Fold a word to its family form, so "leaks", "leaking" and "leaked" are "leak"."""
        cached = self._stem_cache.get(word)
        if cached is not None:
            return cached
        form = self.word_forms.get(word, word)
        if form not in self.stem_keep:
            form = self._strip(self._strip(form, self.stem_endings), self.stem_tidy)
        if len(self._stem_cache) < 50_000:
            self._stem_cache[word] = form
        return form

    def _strip(self, word: str, endings: tuple[tuple[str, str], ...]) -> str:
        """Apply the first ending rule that leaves a stem long enough to mean something."""
        for ending, replacement in endings:
            if word.endswith(ending):
                stem = word[: -len(ending)]
                if len(stem) >= self.min_stem and any(c in "aeiouy" for c in stem):
                    return stem + replacement
                return word
        return word

    def _token_matches(self, token: str) -> frozenset[str]:
        """Return the vocabulary words a text token stands for, exact or close misspelling."""
        if token in self.vocab:
            return frozenset((token,))
        if len(token) < self.fuzzy_min_length or token in self.no_fuzzy:
            return frozenset()
        cached = self._fuzzy_cache.get(token)
        if cached is not None:
            return cached
        # Recognisers keep the first sound and slip on one letter; a looser match turns
        # "sitting" into "fitting" and "sweating" into "eating".
        edits = 2 if len(token) >= self.fuzzy_two_edits_length else 1
        candidates = self.vocab_by_shape.get((token[0], len(token)), ())
        found = frozenset(
            word
            for word, _distance, _i in process.extract(
                token, candidates, scorer=Levenshtein.distance, score_cutoff=edits, limit=None
            )
        )
        if len(self._fuzzy_cache) < 50_000:
            self._fuzzy_cache[token] = found
        return found


@functools.lru_cache(maxsize=8)
def cached_categories(path: Path, language: str) -> Categories:
    """Load one language's categories from one file once per process (errors are not kept)."""
    return load_categories(language, path)


def load_categories(language: str = "en", path: Path | None = None) -> Categories:
    """Load one language's phrase lists from categories.toml and its labelled examples."""
    path = Path(path or DEFAULT_PATH)
    data = _read_toml(path)
    if language not in data or not isinstance(data[language], dict):
        known = ", ".join(sorted(k for k, v in data.items() if isinstance(v, dict)))
        raise UnknownLanguage(f"no categories for language {language!r} (have: {known})")
    check_schema(data[language], language, path.name)
    _check_keys(data, path.name)
    try:
        categories = _build(language, data[language], path.name)
    except CategoryDataError:
        raise
    except (TypeError, ValueError) as exc:
        raise CategoryDataError(f"{path}: a wrong value in [{language}]: {exc}") from None
    examples = path.parent / EXAMPLES_DIR / f"{language}.tsv"
    if examples.is_file():
        categories = with_examples(categories, read_examples(examples, categories.keys))
    return categories


def _read_toml(path: Path) -> dict:
    """Read a categories file; a syntax error is a CategoryDataError naming it."""
    with open(path, "rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise CategoryDataError(f"{path}: not valid TOML ({exc})") from None


@functools.cache
def _keys_in(path: Path) -> tuple[str, ...]:
    """Return the category keys a categories.toml defines, read once per file."""
    return _check_keys(_read_toml(path), path.name)


def category_keys(path: Path | None = None) -> tuple[str, ...]:
    """Return the category keys, in order, as categories.toml defines them for every language."""
    return _keys_in(Path(path or DEFAULT_PATH).resolve())


def _check_keys(data: dict, filename: str) -> tuple[str, ...]:
    """Return the languages' shared category keys; raise CategoryDataError where they differ."""
    found: tuple[str, ...] | None = None
    first = ""
    for language, table in data.items():
        if not isinstance(table, dict):
            continue
        categories = table.get("categories")
        keys = tuple(categories) if isinstance(categories, dict) else ()
        for key in REQUIRED_CATEGORIES:
            if key not in keys:
                raise CategoryDataError(
                    f"{filename}: [{language}.categories.{key}] is missing; every language needs it"
                )
        if found is None:
            found, first = keys, language
        elif keys != found:
            extra = [k for k in keys if k not in found] or [k for k in found if k not in keys]
            what = f"key {language}.categories.{extra[0]}" if extra else f"{language}.categories"
            raise CategoryDataError(
                f"{filename}: {what} differs from {first}: every language lists the same "
                f"categories in the same order ({', '.join(found)})"
            )
    if found is None:
        raise CategoryDataError(f"{filename}: no [LANGUAGE.categories.KEY] tables")
    return found


# Every key a language table may hold, by table; a dict is a sub-table, None any value.
_LIST_KEYS = ("decisive", "strong", "phrases", "weak", "hints")
_CATEGORY_TABLE = {"label": None, "readback": None, **dict.fromkeys(_LIST_KEYS)}
SCHEMA: dict = {
    "name": None,
    "tuning": dict.fromkeys(
        (
            "max_gap",
            "fuzzy_min_length",
            "fuzzy_two_edits_length",
            "length_bonus",
            "other_threshold",
            "emergency_score",
            "negation_window",
            "guard_window",
            "list_weights",
            "evidence_decay",
            "combo_window",
        )
    ),
    "text": {
        **dict.fromkeys(
            (
                "fillers",
                "contractions",
                "suffixes",
                "rewrites",
                "optional",
                "no_fuzzy",
                "clause_words",
                "clause_starts",
                "year_word",
            )
        ),
        "stemming": dict.fromkeys(("forms", "endings", "tidy", "keep", "min_stem")),
    },
    # Any category key: the keys, their order, labels and readbacks are the data's own.
    "categories": {"*": _CATEGORY_TABLE},
    "emergency": {
        **dict.fromkeys(("max_gap", "negations", "guards", "reassurances", "idioms")),
        "combos": [dict.fromkeys(("phrases", "with", "otherwise", "window"))],
    },
    "neutral": {"phrases": None},
    "urgency": dict.fromkeys(("high", "low", "neutral", "negations", "negation_window")),
    "examples": dict.fromkeys(
        (
            "stop_words",
            "k",
            "power",
            "weight",
            "min_similarity",
            "emergency_share",
            "emergency_similarity",
            "emergency_shared",
            "guarded_emergency_share",
            "veto_share",
            "veto_below",
        )
    ),
}


def check_schema(table: dict, language: str, filename: str) -> None:
    """Raise CategoryDataError naming the file and key of anything the loader would ignore."""
    homes = _homes(SCHEMA, language)

    def walk(value, schema, where: str) -> None:
        if isinstance(schema, list):
            if not isinstance(value, list):
                raise CategoryDataError(f"{filename}: [[{where}]] must be an array of tables")
            for item in value:
                walk(item, schema[0], where)
        elif isinstance(schema, dict):
            if not isinstance(value, dict):
                raise CategoryDataError(f"{filename}: [{where}] must be a table")
            for key, item in value.items():
                if key not in schema and "*" not in schema:
                    home = [h for h in homes.get(key, ()) if h != f"{where}.{key}"]
                    hint = f"; it belongs in [{home[0].rsplit('.', 1)[0]}]" if home else ""
                    raise CategoryDataError(f"{filename}: unknown key {where}.{key}{hint}")
                walk(item, schema.get(key, schema.get("*")), f"{where}.{key}")

    walk(table, SCHEMA, language)


def _homes(schema, where: str) -> dict[str, list[str]]:
    """Return, for each key name, the dotted places the schema allows it."""
    found: dict[str, list[str]] = defaultdict(list)
    if isinstance(schema, list):
        schema = schema[0]
    if isinstance(schema, dict):
        for key, sub in schema.items():
            found[key].append(f"{where}.{key}")
            for name, places in _homes(sub, f"{where}.{key}").items():
                found[name].extend(places)
    return found


def read_examples(path: Path, keys: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """Read (text, category) rows from a labelled examples TSV with a header row.

    The categories are checked against `keys`, by default those of categories.toml.
    """
    keys = frozenset(category_keys() if keys is None else keys)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            rows = [(r["text"], r["category"]) for r in reader if r.get("text")]
        except csv.Error as exc:
            raise CategoryDataError(f"{path.name} line {reader.line_num}: {exc}") from exc
    for text, category in rows:
        if category not in keys:
            raise CategoryDataError(f"{path.name}: unknown category {category!r} for {text!r}")
    return rows


def with_examples(categories: Categories, rows: Iterable[tuple[str, str]]) -> Categories:
    """Return a copy of `categories` whose example bank holds exactly these labelled rows."""
    old = categories.examples
    texts: list[str] = []
    labels: list[str] = []
    words: list[frozenset[str]] = []
    for text, category in rows:
        found = _example_words(categories.normalise(text), old.stop_words)
        if found:
            texts.append(text)
            labels.append(category)
            words.append(found)
    frequency: dict[str, int] = defaultdict(int)
    for found in words:
        for word in found:
            frequency[word] += 1
    # Rare words tell requests apart; a word in every example ("shop") says little.
    idf = {w: math.log((len(words) + 1) / (n + 0.5)) for w, n in frequency.items()}
    postings: dict[str, list[int]] = defaultdict(list)
    for i, found in enumerate(words):
        for word in found:
            postings[word].append(i)
    by_shape: dict[tuple[str, int], list[str]] = defaultdict(list)
    for word in sorted(idf):
        if len(word) >= categories.fuzzy_min_length:
            for n in range(len(word) - 2, len(word) + 3):
                by_shape[(word[0], n)].append(word)
    bank = dataclasses.replace(
        old,
        texts=tuple(texts),
        labels=tuple(labels),
        postings={w: tuple(ids) for w, ids in postings.items()},
        idf=idf,
        norms=tuple(math.sqrt(sum(idf[w] ** 2 for w in found)) for found in words),
        vocab_by_shape={k: tuple(v) for k, v in by_shape.items()},
        _fuzzy_cache={},
    )
    return dataclasses.replace(categories, examples=bank)


def _example_words(tokens: Iterable[str], stop_words: frozenset[str]) -> frozenset[str]:
    """Return the words of a request that say what it is about."""
    return frozenset(t for t in tokens if t not in stop_words)


def _build(language: str, lang: dict, filename: str = "categories.toml") -> Categories:
    """Compile one language table into a Categories object."""
    text = lang.get("text", {})
    tuning = lang.get("tuning", {})
    contractions = {
        k.translate(_APOSTROPHES).lower(): tuple(v.split())
        for k, v in text.get("contractions", {}).items()
    }
    suffixes = tuple((k.translate(_APOSTROPHES), v) for k, v in text.get("suffixes", {}).items())
    fillers = frozenset(text.get("fillers", ()))
    stemming = text.get("stemming", {})
    rewrites = {k: v for k, v in text.get("rewrites", {}).items()}
    rewrite_re = None
    if rewrites:
        alternation = "|".join(re.escape(k) for k in sorted(rewrites, key=len, reverse=True))
        rewrite_re = re.compile(rf"(?<!\S)(?:{alternation})(?!\S)")

    base = Categories(
        language=language,
        keys=tuple(lang.get("categories", {})),
        labels={},
        readbacks={},
        contractions=contractions,
        suffixes=suffixes,
        fillers=fillers,
        clause_words=frozenset(),
        clause_starts={},
        year_word=str(text.get("year_word", "")),
        word_forms=dict(stemming.get("forms", {})),
        stem_endings=tuple(tuple(rule) for rule in stemming.get("endings", ())),
        stem_tidy=tuple(tuple(rule) for rule in stemming.get("tidy", ())),
        stem_keep=frozenset(stemming.get("keep", ())),
        min_stem=int(stemming.get("min_stem", 3)),
        rewrite_re=rewrite_re,
        rewrites=rewrites,
        phrases=(),
        index={},
        vocab_by_shape={},
        vocab=frozenset(),
        no_fuzzy=frozenset(),
        max_gap=int(tuning.get("max_gap", 2)),
        fuzzy_min_length=int(tuning.get("fuzzy_min_length", 7)),
        fuzzy_two_edits_length=int(tuning.get("fuzzy_two_edits_length", 10)),
        negation_window=int(tuning.get("negation_window", 2)),
        calm_window=int(lang.get("urgency", {}).get("negation_window", 1)),
        guard_window=int(tuning.get("guard_window", 7)),
        other_threshold=float(tuning.get("other_threshold", 0.5)),
        emergency_score=float(tuning.get("emergency_score", 0.9)),
        evidence_decay=float(tuning.get("evidence_decay", 1.0)),
    )
    examples = lang.get("examples", {})
    defaults = ExampleBank()
    bank = ExampleBank(
        stop_words=frozenset(
            w for word in examples.get("stop_words", ()) for w in base.normalise(word)
        ),
        k=int(examples.get("k", defaults.k)),
        power=float(examples.get("power", defaults.power)),
        weight=float(examples.get("weight", defaults.weight)),
        min_similarity=float(examples.get("min_similarity", defaults.min_similarity)),
        emergency_share=float(examples.get("emergency_share", defaults.emergency_share)),
        emergency_similarity=float(
            examples.get("emergency_similarity", defaults.emergency_similarity)
        ),
        emergency_shared=int(examples.get("emergency_shared", defaults.emergency_shared)),
        guarded_emergency_share=float(
            examples.get("guarded_emergency_share", defaults.guarded_emergency_share)
        ),
        veto_share=float(examples.get("veto_share", defaults.veto_share)),
        veto_below=float(examples.get("veto_below", defaults.veto_below)),
    )
    weights = tuning.get(
        "list_weights", {"decisive": 3.0, "strong": 2.0, "phrases": 1.0, "weak": 0.5}
    )
    length_bonus = float(tuning.get("length_bonus", 0.25))

    def compile_list(
        items: Iterable[str],
        pool: str,
        tag: str,
        weight: float,
        max_gap: int = base.max_gap,
        needs: str = "",
        otherwise: str = "",
        guarded: bool = True,
        needs_within: int = 0,
    ) -> None:
        for source in items:
            for variant in _expand(source):
                tokens = tuple(base.normalise(variant))
                trimmed = tuple(t for t in tokens if t not in optional)
                if len(trimmed) >= 2:
                    tokens = trimmed
                if tokens:
                    w = weight * (1 + length_bonus * (len(tokens) - 1))
                    phrases.append(
                        _Phrase(
                            tokens,
                            variant,
                            pool,
                            tag,
                            w,
                            max_gap,
                            needs,
                            otherwise,
                            guarded,
                            needs_within,
                        )
                    )

    optional = frozenset(text.get("optional", ()))
    phrases: list[_Phrase] = []
    labels: dict[str, str] = {}
    readbacks: dict[str, str] = {}
    cats = lang.get("categories", {})
    emergency = lang.get("emergency", {})
    # Emergency phrases are matched more tightly: "broken ... in" is not "broken in".
    emergency_gap = int(emergency.get("max_gap", base.max_gap))
    for key, entry in cats.items():
        # Keys are stored with each request and sent in forms: plain lower-case words.
        if not _KEY_RE.fullmatch(key):
            raise CategoryDataError(
                f"{filename}: category key {language}.categories.{key} must be lower-case "
                "letters, digits and underscores"
            )
        if not entry.get("label"):
            raise CategoryDataError(f"{filename}: {language}.categories.{key} needs a label")
        labels[key] = entry["label"]
        if not entry.get("readback"):
            raise CategoryDataError(
                f"{filename}: {language}.categories.{key} needs a readback sentence"
            )
        readbacks[key] = entry["readback"]
        gap = emergency_gap if key == "emergency" else base.max_gap
        for list_name, weight in weights.items():
            # A decisive phrase names the need outright, so no nearby context outweighs it:
            # "I don't want to go on any more" is not a past event.
            guarded = list_name != "decisive"
            compile_list(
                entry.get(list_name, ()), _CATEGORY, key, float(weight), gap, guarded=guarded
            )
    compile_list(lang.get("neutral", {}).get("phrases", ()), _CATEGORY, "", 0.0)

    combo_window = int(tuning.get("combo_window", 10))
    for i, combo in enumerate(emergency.get("combos", ())):
        group = f"combo{i}"
        otherwise = combo.get("otherwise", "")
        if otherwise and otherwise not in cats:
            raise CategoryDataError(
                f"{filename}: {language}.emergency.combos otherwise {otherwise!r} is not a category"
            )
        compile_list(
            combo.get("phrases", ()),
            _CATEGORY,
            "emergency",
            float(weights.get("strong", 2.0)),
            needs=group,
            otherwise=otherwise,
            needs_within=int(combo.get("window", combo_window)),
        )
        compile_list(combo.get("with", ()), _GUARD, group, 0.0)
    compile_list(emergency.get("negations", ()), _GUARD, "negation", 0.0)
    compile_list(emergency.get("guards", ()), _GUARD, "guard", 0.0)
    compile_list(emergency.get("reassurances", ()), _GUARD, "reassurance", 0.0)
    compile_list(emergency.get("idioms", ()), _IDIOM, "idiom", 0.0)

    urgency = lang.get("urgency", {})
    for level in ("high", "low"):
        compile_list(urgency.get(level, ()), _URGENCY, level, 1.0)
    compile_list(urgency.get("neutral", ()), _URGENCY, "", 0.0)
    compile_list(urgency.get("negations", ()), _GUARD, "calm", 0.0)

    index: dict[str, list[int]] = {}
    vocab: set[str] = set()
    for i, phrase in enumerate(phrases):
        index.setdefault(phrase.tokens[0], []).append(i)
        vocab.update(phrase.tokens)
    by_shape: dict[tuple[str, int], list[str]] = {}
    for word in sorted(vocab):
        if len(word) >= base.fuzzy_min_length:
            for n in range(len(word) - 2, len(word) + 3):
                by_shape.setdefault((word[0], n), []).append(word)

    return dataclasses.replace(
        base,
        labels=labels,
        readbacks=readbacks,
        phrases=tuple(phrases),
        index={k: tuple(v) for k, v in index.items()},
        vocab=frozenset(vocab),
        vocab_by_shape={k: tuple(v) for k, v in by_shape.items()},
        no_fuzzy=frozenset(base.stem(w) for w in text.get("no_fuzzy", ())),
        clause_words=frozenset(
            w for word in text.get("clause_words", ()) for w in base.normalise(word)
        ),
        clause_starts=_runs_by_first_word(
            base.normalise(variant)
            for run in text.get("clause_starts", ())
            for variant in _expand(run)
        ),
        examples=bank,
        _fuzzy_cache={},
        _stem_cache={},
    )


def _expand(source: str) -> list[str]:
    """Expand `a|b c|d` alternatives in a data phrase into plain phrases."""
    options = [word.split("|") for word in source.split()]
    combos = itertools.islice(itertools.product(*options), MAX_EXPANSIONS)
    return [" ".join(w for w in combo if w != "_") for combo in combos]


def _runs_by_first_word(runs: Iterable[list[str]]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Index word runs by their first word, so a text word finds its runs at once."""
    found: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for run in runs:
        if run:
            found[run[0]].append(tuple(run))
    return {word: tuple(runs) for word, runs in found.items()}


def _find_matches(tokens: list[str], categories: Categories) -> list[_Match]:
    """Find every phrase occurrence, allowing a few filler words between phrase words."""
    matches_at = [categories._token_matches(t) for t in tokens]
    found: list[_Match] = []
    for i, words in enumerate(matches_at):
        for word in words:
            for pid in categories.index.get(word, ()):
                phrase = categories.phrases[pid]
                gap = phrase.max_gap
                positions = [i]
                for want in phrase.tokens[1:]:
                    last = positions[-1]
                    for j in range(last + 1, min(last + 2 + gap, len(tokens))):
                        if want in matches_at[j]:
                            positions.append(j)
                            break
                    else:
                        break
                if len(positions) == len(phrase.tokens):
                    found.append(_Match(phrase, tuple(positions)))
    return found


def _resolve(matches: list[_Match]) -> list[_Match]:
    """Keep the longest, heaviest matches; a word counts towards one phrase only."""
    taken: set[int] = set()
    kept: list[_Match] = []
    ordered = sorted(matches, key=lambda m: (-len(m.positions), -m.phrase.weight, m.start))
    for m in ordered:
        if taken.isdisjoint(m.positions):
            taken.update(m.positions)
            kept.append(m)
    kept.sort(key=lambda m: m.start)
    return kept


def _near(m: _Match, others: list[_Match], window: int, sentence_of: list[int]) -> bool:
    """Tell whether any of `others` sits in `m`'s sentence within `window` tokens of it."""
    return any(
        o.start <= m.end + window
        and o.end >= m.start - window
        and sentence_of[o.start] == sentence_of[m.start]
        for o in others
    )


def _within(m: _Match, others: list[_Match], window: int) -> bool:
    """Tell whether any of `others` sits within `window` words of `m`, clauses or not.

    A combo's second cue is often its own clause ("i cut my hand and it will not stop").
    """
    return any(o.start <= m.end + window and o.end >= m.start - window for o in others)


def _reassured(m: _Match, reassurances: list[_Match], window: int, sentence_of: list[int]) -> bool:
    """Tell whether a reassurance follows `m` closely, in its clause or the next one.

    "i slipped and i am fine" is one story though "and i am" starts a clause; a
    reassurance before a new clause ("i am fine but now he has collapsed") is not.
    """
    return any(
        m.end < r.start <= m.end + window and sentence_of[r.start] - sentence_of[m.start] in (0, 1)
        for r in reassurances
    )


def _emergency_rule(m: _Match) -> bool:
    """Tell whether a match feeds the emergency decision: a danger phrase, cue or guard."""
    phrase = m.phrase
    if phrase.pool == _CATEGORY:
        return phrase.tag == "emergency"
    return phrase.pool == _GUARD and phrase.tag != "calm"


def _negated(m: _Match, negations: list[_Match], window: int, sentence_of: list[int]) -> bool:
    """Tell whether a negation in `m`'s clause sits just before it or between its words."""
    clauses = {sentence_of[i] for i in m.positions}
    return any(
        m.start - window <= o.end <= m.end
        and o.start not in m.positions
        and sentence_of[o.end] in clauses
        for o in negations
    )


def _confidence(value: float, total: float) -> float:
    """Turn a raw phrase score into a 0..1 confidence: share of evidence times saturation."""
    if value <= 0 or total <= 0:
        return 0.0
    return round(value / total * (1 - math.exp(-value)), 3)


def _bank_word(token: str, categories: Categories) -> str:
    """Return the example-bank word a text token stands for, or the token itself."""
    bank = categories.examples
    if (
        token in bank.idf
        or len(token) < categories.fuzzy_min_length
        or token in categories.no_fuzzy
    ):
        return token
    cached = bank._fuzzy_cache.get(token)
    if cached is not None:
        return cached
    edits = 2 if len(token) >= categories.fuzzy_two_edits_length else 1
    candidates = bank.vocab_by_shape.get((token[0], len(token)), ())
    best = process.extractOne(token, candidates, scorer=Levenshtein.distance, score_cutoff=edits)
    word = best[0] if best else token
    if len(bank._fuzzy_cache) < 50_000:
        bank._fuzzy_cache[token] = word
    return word


def nearest_examples(tokens: list[str], categories: Categories) -> list[tuple[float, int]]:
    """Return (similarity, example index) of the examples closest to normalised tokens."""
    bank = categories.examples
    if not bank.texts:
        return []
    words = {_bank_word(t, categories) for t in _example_words(tokens, bank.stop_words)}
    words = {w for w in words if w in bank.idf}
    if not words:
        return []
    # Cosine similarity over rare-word-weighted word sets, via the inverted index.
    overlap: dict[int, float] = defaultdict(float)
    for word in words:
        weight = bank.idf[word] ** 2
        for i in bank.postings[word]:
            overlap[i] += weight
    norm = math.sqrt(sum(bank.idf[w] ** 2 for w in words))
    return heapq.nlargest(
        bank.k, ((value / (norm * bank.norms[i]), i) for i, value in overlap.items() if value)
    )


def _shared_words(tokens: list[str], example: int, categories: Categories) -> int:
    """Count the words of a request that one example also has."""
    bank = categories.examples
    words = {_bank_word(t, categories) for t in _example_words(tokens, bank.stop_words)}
    return sum(1 for w in words if example in bank.postings.get(w, ()))


def _votes(neighbours: list[tuple[float, int]], bank: ExampleBank) -> dict[str, float]:
    """Share out the neighbours' votes by category, closer neighbours counting more."""
    if not neighbours or neighbours[0][0] < bank.min_similarity:
        return {}
    votes: dict[str, float] = defaultdict(float)
    for similarity, i in neighbours:
        votes[bank.labels[i]] += similarity**bank.power
    total = sum(votes.values())
    return {key: value / total for key, value in votes.items()} if total > 0 else {}


def model_text(text: str) -> str | None:
    """Return the part of a text the model reads, or None when it holds too few words."""
    heard = _NON_SPEECH_RE.sub(" ", text)
    words = [m for m in _TOKEN_RE.finditer(heard) if not m.group().isdigit()]
    if len(words) < MODEL_MIN_WORDS:
        return None
    if len(words) > MODEL_MAX_WORDS:
        half = MODEL_MAX_WORDS // 2
        head = heard[: words[half - 1].end()][: MODEL_MAX_CHARS // 2]
        tail = heard[words[-half].start() :][-(MODEL_MAX_CHARS // 2) :]
        heard = f"{head.strip()} ... {tail.strip()}"
    # The engines' time grows with UTF-8 bytes, not letters: "ꝏ" is three (#11, attack).
    return _cut_utf8(heard[:MODEL_MAX_CHARS], MODEL_MAX_CHARS).strip()


def _cut_utf8(text: str, limit: int) -> str:
    """Return the longest start of text that is at most `limit` bytes in UTF-8."""
    raw = text.encode("utf-8", "replace")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def classify(text: str, categories: Categories, model=None) -> Classification:
    """Classify a request's text into a category and urgency, by rules and model together."""
    if model is None or not isinstance(text, str) or not text.strip():
        return classify_rules(text, categories)
    read = model_text(text)
    if read is None:
        return classify_rules(_NON_SPEECH_RE.sub(" ", text), categories)
    rules = classify_rules(text, categories, vote=False)
    return fuse(
        rules,
        model.probabilities(read),
        model.rule_weight,
        model.emergency_threshold,
        model.disarmed_threshold,
        model.calibration,
    )


def fuse(
    rules: Classification,
    probabilities: Mapping[str, float],
    rule_weight: float,
    emergency_threshold: float,
    disarmed_threshold: float = 1.0,
    calibration: tuple[float, float] = (1.0, 0.0),
) -> Classification:
    """Join the rules' verdict with a learned model's category probabilities.

    Emergency is raised when either path raises it (the rules are the safety net); the
    category among the rest is the weighted mix of both paths' scores. Where the rules heard
    a danger phrase and set it aside ("I don't smell gas"), the model needs more certainty.
    A model nearly sure enough makes a possible emergency (POSSIBLE_EMERGENCY).
    """
    rule_scores = {rules.category: rules.score, **dict(rules.alternatives)}
    rule_scores.pop("emergency", None)
    p_emergency = probabilities.get("emergency", 0.0)
    rest = max(1.0 - p_emergency, 1e-9)
    fused = {}
    # The model's labels are the data's category keys, in their order.
    keys = [*probabilities, *(k for k in rule_scores if k not in probabilities)]
    for key in keys:
        if key == "emergency":
            continue
        # The rules' own confidence, not renormalised: a weak rule verdict stays weak.
        from_rules = min(rule_scores.get(key, 0.0), 1.0)
        from_model = probabilities.get(key, 0.0) / rest
        fused[key] = rule_weight * from_rules + (1 - rule_weight) * from_model
    ranked = sorted(fused, key=lambda k: (-fused[k], keys.index(k)))
    threshold = max(emergency_threshold, disarmed_threshold if rules.disarmed else 0.0)
    model_alarm = p_emergency >= threshold
    emergency = rules.emergency or model_alarm
    if emergency:
        category = "emergency"
        score = max(rules.score if rules.emergency else 0.0, p_emergency)
    else:
        category = ranked[0]
        score = fused[category] * (1 - p_emergency)
    confidence = calibrate(min(score, 1.0), calibration)
    # Alternatives a coordinator might weigh: the chance the answer is wrong, shared among
    # the runners-up by their fused scores; only those with a real share are offered.
    others = [k for k in ranked if k != category]
    spread = sum(fused[k] for k in others)
    alternatives = tuple(
        (k, round((1 - confidence) * fused[k] / spread, 3))
        for k in others
        if spread and (1 - confidence) * fused[k] / spread >= 0.05
    )
    urgency = "critical" if emergency else rules.urgency
    if not emergency and p_emergency >= threshold * POSSIBLE_EMERGENCY:
        alternatives = (("emergency", round(p_emergency, 3)), *alternatives)
        urgency = min(urgency, "high", key=URGENCIES.index)
    best = max(probabilities, key=probabilities.get)
    matched = (*rules.matched, f"model: {best} {probabilities[best]:.2f}")
    return dataclasses.replace(
        rules,
        category=category,
        score=round(confidence, 3),
        alternatives=alternatives,
        urgency=urgency,
        emergency=emergency,
        matched=matched,
    )


def calibrate(score: float, calibration: tuple[float, float]) -> float:
    """Map a fused score to the chance it is right, by a logistic fitted on held-back rows."""
    slope, offset = calibration
    if (slope, offset) == (1.0, 0.0):
        return score
    p = min(max(score, 1e-6), 1 - 1e-6)
    return 1 / (1 + math.exp(-(slope * math.log(p / (1 - p)) + offset)))


def classify_rules(text: str, categories: Categories, vote: bool = True) -> Classification:
    """Classify a request's text by the phrase lists and, if `vote`, the nearest examples.

    The examples' word-overlap vote stands in for the learned model when there is none;
    next to the model it added nothing on cross-validation, so `classify` leaves it out.
    """
    tokens, sentence_of, cut = categories._read(text) if isinstance(text, str) else ([], [], False)
    found = _find_matches(tokens, categories)
    # Figures of speech ("my back is killing me", "dying for a cuppa") are taken out of
    # the emergency rules and the examples: their words neither alarm nor reassure.
    idiom_words = {i for m in found if m.phrase.pool == _IDIOM for i in range(m.start, m.end + 1)}
    if idiom_words:
        found = [m for m in found if not _emergency_rule(m) or idiom_words.isdisjoint(m.positions)]
    guards = [m for m in found if m.phrase.pool == _GUARD]
    cues: dict[str, list[_Match]] = defaultdict(list)
    for m in guards:
        cues[m.phrase.tag].append(m)
    negations = [m for m in guards if m.phrase.tag == "negation"]
    # "i am not ok" is no reassurance.
    reassurances = [
        m
        for m in guards
        if m.phrase.tag == "reassurance"
        and not _negated(m, negations, categories.negation_window, sentence_of)
    ]
    harmless = [m for m in guards if m.phrase.tag == "guard"] + reassurances

    keys = categories.keys
    evidence: dict[str, list[float]] = {key: [] for key in keys}
    first_seen: dict[str, int] = {}
    matched: list[str] = []
    disarmed: list[str] = []
    is_emergency = False
    # Words that neutral phrases use up, or that made an emergency phrase the guards
    # turned down, are kept from the examples too: "haven't fallen" is not "fallen".
    spent: set[int] = set()
    categorised = _resolve([m for m in found if m.phrase.pool == _CATEGORY])
    spent.update(idiom_words.difference(*(m.positions for m in categorised if m.phrase.tag)))
    for m in categorised:
        tag = m.phrase.tag
        if not tag:
            spent.update(m.positions)
            continue
        if tag == "emergency":
            if m.phrase.needs and not _within(m, cues[m.phrase.needs], m.phrase.needs_within):
                tag = m.phrase.otherwise
            elif _negated(m, negations, categories.negation_window, sentence_of) or (
                m.phrase.guarded
                and (
                    _near(m, harmless, categories.guard_window, sentence_of)
                    or _reassured(m, reassurances, categories.guard_window, sentence_of)
                )
            ):
                spent.update(m.positions)
                disarmed.append(m.phrase.source)
                continue
            else:
                is_emergency = True
            if not tag:
                continue
        evidence[tag].append(m.phrase.weight)
        first_seen.setdefault(tag, m.start)
        matched.append(m.phrase.source)

    # Diminishing returns: the strongest evidence counts in full, each further piece less.
    decay = categories.evidence_decay
    scores = {
        key: sum(w * decay**i for i, w in enumerate(sorted(weights, reverse=True)))
        for key, weights in evidence.items()
    }

    urgency_hits = set()
    calm = [m for m in guards if m.phrase.tag == "calm"]
    for m in _resolve([m for m in found if m.phrase.pool == _URGENCY]):
        # "nothing urgent" and "no need to rush" ask for no hurry.
        if m.phrase.tag == "high" and _negated(m, calm, categories.calm_window, sentence_of):
            continue
        if m.phrase.tag:
            urgency_hits.add(m.phrase.tag)
            matched.append(m.phrase.source)

    # Second opinion: how were the labelled examples most like this request classified?
    bank = categories.examples
    unspent = [t for i, t in enumerate(tokens) if i not in spent]
    neighbours = nearest_examples(unspent, categories) if vote else []
    votes = _votes(neighbours, bank)
    knn_emergency = (
        votes.get("emergency", 0.0) >= bank.emergency_share
        and bank.labels[neighbours[0][1]] == "emergency"
        and neighbours[0][0] >= bank.emergency_similarity
        and _shared_words(unspent, neighbours[0][1], categories) >= bank.emergency_shared
        and (not harmless or votes["emergency"] >= bank.guarded_emergency_share)
    )
    # A lone weak emergency phrase ("killing me") that no similar example backs is a figure
    # of speech; a decisive one ("can't breathe") always stands.
    vetoed = bool(votes) and (
        votes.get("emergency", 0.0) <= bank.veto_share and scores["emergency"] < bank.veto_below
    )
    is_emergency = (is_emergency and not vetoed) or knn_emergency

    total = sum(scores.values())
    combined = {
        key: _confidence(scores[key], total) + bank.weight * votes.get(key, 0.0)
        for key in keys
        if key != "emergency"
    }
    scale = 1 + bank.weight if votes else 1.0
    ranked = sorted(
        (k for k in combined if combined[k] > 0),
        key=lambda k: (-combined[k], first_seen.get(k, 0), keys.index(k)),
    )
    phrase_best = max((scores[k] for k in combined), default=0.0)
    if is_emergency:
        category = "emergency"
        score = max(categories.emergency_score, _confidence(scores["emergency"], total))
    elif ranked and (phrase_best >= categories.other_threshold or votes):
        category = ranked[0]
        score = round(combined[category] / scale, 3)
    else:
        category, score = "other", round(combined["other"] / scale, 3)
    alternatives = tuple((k, round(combined[k] / scale, 3)) for k in ranked if k != category)
    nearest = next((i for _, i in neighbours if bank.labels[i] == category), None)
    if nearest is not None and votes:
        matched.append(f"example: {bank.texts[nearest]}")
    if cut:
        # The cap bounds the time a stuck recording takes; whoever reads the request should
        # know the rest of it was not read.
        matched.append(TRUNCATED_NOTE)
        log.warning(
            "classify read only the first %d words of a %d-character text", MAX_TOKENS, len(text)
        )

    if is_emergency:
        urgency = "critical"
    elif "high" in urgency_hits:
        urgency = "high"
    elif "low" in urgency_hits:
        urgency = "low"
    else:
        urgency = "normal"
    return Classification(
        category=category,
        score=min(score, 1.0),
        alternatives=alternatives,
        urgency=urgency,
        emergency=is_emergency,
        matched=tuple(dict.fromkeys(matched)),
        disarmed=tuple(dict.fromkeys(disarmed)),
    )
