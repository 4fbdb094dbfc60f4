"""Offline speech: decode caller audio, transcribe it, and recognise closed-list answers.

Engines import heavy libraries (faster-whisper, vosk) only when SpeechService first needs
them, so importing this package stays cheap for the web process.
"""

from __future__ import annotations

from typing import Protocol

from app.speech.audio import Audio, audio_from_samples, load_audio
from app.speech.errors import (
    AudioError,
    AudioTooLong,
    CorruptAudio,
    EmptyAudio,
    ModelNotInstalled,
    ModelUnavailable,
    NoGrammarModel,
    NotAudio,
    PhraseNotInVocabulary,
    SilentAudio,
    SpeechError,
    UnknownModel,
    UnsupportedLanguage,
)
from app.speech.result import Choice, Transcript, Word
from app.speech.service import SpeechService


class Engine(Protocol):
    """What SpeechService needs from a speech engine."""

    name: str
    model: str

    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        """Transcribe decoded audio."""
        ...


__all__ = [
    "Audio",
    "AudioError",
    "AudioTooLong",
    "Choice",
    "CorruptAudio",
    "EmptyAudio",
    "Engine",
    "ModelNotInstalled",
    "ModelUnavailable",
    "NoGrammarModel",
    "NotAudio",
    "PhraseNotInVocabulary",
    "SilentAudio",
    "SpeechError",
    "SpeechService",
    "Transcript",
    "UnknownModel",
    "UnsupportedLanguage",
    "Word",
    "audio_from_samples",
    "load_audio",
]
