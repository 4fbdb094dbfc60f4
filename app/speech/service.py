"""SpeechService: the one object the app holds to turn audio into text, caching engines."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.speech.audio import Audio, AudioSource, load_audio
from app.speech.errors import (
    ModelUnavailable,
    NoGrammarModel,
    UnknownModel,
    UnsupportedLanguage,
)
from app.speech.models import (
    DEFAULT_MODELS_DIR,
    Manifest,
    install_command,
    load_manifest,
    model_path,
    verify,
)
from app.speech.result import Choice, Transcript

DEFAULT_ENGINES = {"en": "whisper:whisper-tiny-en", "ko": "vosk:vosk-ko"}


def parse_engine_spec(spec: str) -> tuple[str, str]:
    """Split "engine:model-name" into its two parts."""
    engine, sep, model = spec.partition(":")
    if not sep or engine not in ("whisper", "vosk") or not model:
        raise UnknownModel(f"Engine spec {spec!r} is not 'whisper:<model>' or 'vosk:<model>'.")
    return engine, model


class SpeechService:
    """Route each language to its engine, loading every model once and on first use."""

    def __init__(
        self,
        engines: Mapping[str, str] = DEFAULT_ENGINES,
        models_dir: str | os.PathLike = DEFAULT_MODELS_DIR,
        *,
        grammar_engines: Mapping[str, str] | None = None,
        manifest: Manifest | None = None,
        max_seconds: float = 600.0,
        whisper_options: Mapping[str, object] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.max_seconds = max_seconds
        self._manifest = manifest or load_manifest()
        self._engines = {lang: parse_engine_spec(s) for lang, s in engines.items()}
        if grammar_engines is None:
            grammar_engines = {
                lang: model for lang, (engine, model) in self._engines.items() if engine == "vosk"
            }
        self._grammar = {lang: spec.rpartition(":")[2] for lang, spec in grammar_engines.items()}
        for engine, model in [
            *self._engines.values(),
            *(("vosk", m) for m in self._grammar.values()),
        ]:
            if self._manifest.get(model).engine != engine:
                raise UnknownModel(f"Model {model} is not a {engine} model.")
        self._whisper_options = dict(whisper_options or {})
        self._loaded: dict[tuple[str, str], object] = {}
        # Why a model last failed to load; kept so readiness checks can tell without loading.
        self._failed: dict[tuple[str, str], str] = {}
        # A web request and the worker thread may ask for the same model at once.
        self._lock = threading.Lock()

    def problems(self) -> dict[str, str]:
        """Return, per configured language, why its model cannot be used (cheap: no loading).

        A model counts as broken when it last failed to load, or when it is not installed
        or its files' sizes differ from those recorded at install (a truncated download).
        """
        found = {}
        for language, (engine, model) in self._engines.items():
            key = (engine, model)
            # No lock: a load in progress holds it for seconds, and a dict lookup is atomic.
            if key in self._loaded:
                continue
            failed = self._failed.get(key)
            if failed is None:
                check = verify(model, self.models_dir, digests=False)
                if not check.installed:
                    failed = (
                        f"speech model {model} unavailable: not installed in {self.models_dir};"
                        f" install it with: {install_command(model)}"
                    )
                elif not check.ok:
                    failed = f"speech model {model} unavailable: {'; '.join(check.problems)}"
            if failed is not None:
                found[language] = failed
        return found

    @property
    def languages(self) -> tuple[str, ...]:
        """Return the languages that can be transcribed."""
        return tuple(self._engines)

    def engine(self, language: str):
        """Return the (loaded) transcription engine for a language."""
        try:
            engine, model = self._engines[language]
        except KeyError:
            known = ", ".join(self._engines) or "none"
            raise UnsupportedLanguage(
                f"No speech engine for language {language!r}; configured: {known}."
            ) from None
        return self._load(engine, model, language)

    def transcribe(self, source: Audio | AudioSource, language: str = "en") -> Transcript:
        """Decode audio and transcribe it with the engine configured for the language."""
        engine = self.engine(language)
        return engine.transcribe(self._audio(source), language)

    def recognize_choice(
        self, source: Audio | AudioSource, choices: Sequence[str], language: str
    ) -> Choice | None:
        """Return which of choices was said, using the language's Vosk grammar model."""
        try:
            model = self._grammar[language]
        except KeyError:
            raise NoGrammarModel(f"No Vosk grammar model configured for {language!r}.") from None
        return self._load("vosk", model, language).recognize_choice(self._audio(source), choices)

    def _audio(self, source: Audio | AudioSource) -> Audio:
        """Return source decoded, unless it already is Audio."""
        if isinstance(source, Audio):
            return source
        return load_audio(source, max_seconds=self.max_seconds)

    def _load(self, engine: str, model: str, language: str):
        """Return a cached engine, loading it under the lock on first use."""
        key = (engine, model)
        with self._lock:
            if key not in self._loaded:
                try:
                    self._loaded[key] = self._open(engine, model, language)
                except ModelUnavailable as exc:
                    raise self._unavailable(key, type(exc), exc) from exc
                except Exception as exc:
                    # CTranslate2 and Kaldi report a damaged file only as a bare
                    # RuntimeError or Exception; name it so callers stop retrying.
                    raise self._unavailable(key, ModelUnavailable, exc) from exc
                self._failed.pop(key, None)
            return self._loaded[key]

    def _unavailable(self, key: tuple[str, str], kind: type, exc: Exception) -> ModelUnavailable:
        """Remember why a model failed to load and return the error to raise."""
        # Not cached as a verdict: once an operator repairs the model, the next use loads it.
        failure = kind(f"speech model {key[1]} unavailable: {exc}")
        self._failed[key] = str(failure)
        return failure

    def _open(self, engine: str, model: str, language: str):
        """Load one engine's model from the models directory."""
        path = model_path(model, self.models_dir)
        if engine == "whisper":
            from app.speech.whisper import WhisperEngine

            return WhisperEngine(path, model=model, **self._whisper_options)
        from app.speech.vosk import VoskEngine

        return VoskEngine(path, model=model, language=language)
