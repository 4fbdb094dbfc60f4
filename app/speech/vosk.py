"""Vosk (Kaldi) engine: free transcription and closed-list grammar recognition."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import vosk

from app.speech.audio import Audio
from app.speech.errors import ModelNotInstalled, PhraseNotInVocabulary
from app.speech.result import Choice, Transcript, Word

# -2 also hides Kaldi warnings (e.g. about grammar words), which -1 would still print.
vosk.SetLogLevel(-2)

UNKNOWN = "[unk]"
# Vosk's own examples feed ~0.25 s chunks; smaller chunks only add call overhead.
_CHUNK_BYTES = 8000


class VoskEngine:
    """Transcribe speech, or pick one phrase from a list, with a Vosk model."""

    name = "vosk"

    def __init__(
        self, model_dir: str | os.PathLike, *, model: str | None = None, language: str = ""
    ) -> None:
        path = Path(model_dir)
        if not (path / "am").is_dir() and not (path / "final.mdl").is_file():
            raise ModelNotInstalled(f"No Vosk model in {path}.")
        self.model = model or path.name
        self.language = language
        # Always a path: Vosk's Model(lang=...) would try to download.
        self._vosk = vosk.Model(str(path))
        self._has_unknown = self.knows(UNKNOWN)

    def knows(self, word: str) -> bool:
        """Return whether the model's vocabulary contains the word."""
        return self._vosk.vosk_model_find_word(word) >= 0

    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        """Transcribe audio with the model's full vocabulary."""
        results = self._run(vosk.KaldiRecognizer(self._vosk, audio.sample_rate), audio)
        words = tuple(
            Word(
                text=w["word"],
                start=round(w["start"], 3),
                end=round(w["end"], 3),
                confidence=round(w["conf"], 4),
            )
            for r in results
            for w in r.get("result", ())
        )
        text = " ".join(r["text"] for r in results if r.get("text"))
        confidence = round(sum(w.confidence for w in words) / len(words), 4) if words else 0.0
        return Transcript(
            text=text,
            language=language or self.language,
            confidence=confidence,
            words=words,
            duration_s=round(audio.duration_s, 3),
            engine=self.name,
            model=self.model,
        )

    def recognize_choice(
        self, audio: Audio, choices: Sequence[str], *, min_confidence: float = 0.5
    ) -> Choice | None:
        """Return which of choices was said, or None when nothing matched confidently."""
        grammar = list(dict.fromkeys(c.strip() for c in choices if c.strip()))
        missing = [w for phrase in grammar for w in phrase.split() if not self.knows(w)]
        if missing:
            raise PhraseNotInVocabulary(
                f"Model {self.model} cannot recognise: {', '.join(missing)}."
            )
        # Without [unk] in the vocabulary (e.g. vosk-ko), off-list speech is forced onto
        # the nearest choice; callers should confirm the answer.
        if self._has_unknown:
            grammar.append(UNKNOWN)
        recognizer = vosk.KaldiRecognizer(
            self._vosk, audio.sample_rate, json.dumps(grammar, ensure_ascii=False)
        )
        results = self._run(recognizer, audio)
        words = [w for r in results for w in r.get("result", ())]
        said = " ".join(r["text"] for r in results if r.get("text")).split()
        if not words or UNKNOWN in said:
            return None
        phrase = _matching_phrase(said, grammar)
        confidence = min(w["conf"] for w in words)
        if phrase is None or confidence < min_confidence:
            return None
        return Choice(phrase=phrase, confidence=round(confidence, 4))

    def _run(self, recognizer: vosk.KaldiRecognizer, audio: Audio) -> list[dict]:
        """Feed audio through a recognizer and return every utterance result."""
        recognizer.SetWords(True)
        pcm = audio.pcm16()
        results = []
        for i in range(0, len(pcm), _CHUNK_BYTES):
            if recognizer.AcceptWaveform(pcm[i : i + _CHUNK_BYTES]):
                results.append(json.loads(recognizer.Result()))
        results.append(json.loads(recognizer.FinalResult()))
        return [r for r in results if r.get("text")]


def _matching_phrase(said: list[str], grammar: list[str]) -> str | None:
    """Return the phrase said, allowing it repeated ("네 네"), or None for a mix."""
    for phrase in grammar:
        words = phrase.split()
        if len(said) % len(words) == 0 and said == words * (len(said) // len(words)):
            return phrase
    return None
