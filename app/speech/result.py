"""Plain results of speech recognition: words, transcripts and grammar choices."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Word:
    """One recognised word with its time span in seconds and a 0..1 confidence."""

    text: str
    start: float
    end: float
    confidence: float

    def to_dict(self) -> dict:
        """Return the word as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Transcript:
    """What an engine heard in one piece of audio."""

    text: str
    language: str
    confidence: float
    words: tuple[Word, ...]
    duration_s: float
    engine: str
    model: str

    def to_dict(self) -> dict:
        """Return the transcript as a JSON-ready dict."""
        return {
            "text": self.text,
            "language": self.language,
            "confidence": self.confidence,
            "words": [w.to_dict() for w in self.words],
            "duration_s": self.duration_s,
            "engine": self.engine,
            "model": self.model,
        }


@dataclass(frozen=True)
class Choice:
    """The phrase a caller said out of a closed list, with a 0..1 confidence."""

    phrase: str
    confidence: float

    def to_dict(self) -> dict:
        """Return the choice as a JSON-ready dict."""
        return asdict(self)
