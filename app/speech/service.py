"""SpeechService: the one object the app holds to turn audio into text, caching engines."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.speech.audio import Audio, AudioSource, load_audio
from app.speech.errors import NoGrammarModel, UnknownModel, UnsupportedLanguage
from app.speech.models import DEFAULT_MODELS_DIR, Manifest, load_manifest, model_path
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
        # A web request and the worker thread may ask for the same model at once.
        self._lock = threading.Lock()

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
                path = model_path(model, self.models_dir)
                if engine == "whisper":
                    from app.speech.whisper import WhisperEngine

                    self._loaded[key] = WhisperEngine(path, model=model, **self._whisper_options)
                else:
                    from app.speech.vosk import VoskEngine

                    self._loaded[key] = VoskEngine(path, model=model, language=language)
            return self._loaded[key]
