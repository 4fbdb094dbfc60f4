"""Whisper (faster-whisper / CTranslate2) engine, loaded only from a local model directory."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

# Must be set before faster_whisper (huggingface_hub) is imported: nothing downloads at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ctranslate2  # noqa: E402
from faster_whisper import WhisperModel  # noqa: E402

from app.speech.audio import Audio  # noqa: E402
from app.speech.errors import ModelNotInstalled, UnsupportedLanguage  # noqa: E402
from app.speech.result import Transcript, Word  # noqa: E402

# Beam 1 (greedy) stays: on bench/speech.py beams 2-5, a generic initial prompt,
# no_repeat_ngram_size and repetition_penalty each moved WER by at most ~3 points, within the
# noise of 22 clips, and cost up to twice the decode time.
_FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class WhisperEngine:
    """Transcribe speech with a CTranslate2 Whisper model on the CPU."""

    name = "whisper"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        model: str | None = None,
        compute_type: str = "int8",
        cpu_threads: int = 2,
        beam_size: int = 1,
    ) -> None:
        path = Path(model_dir)
        if not (path / "model.bin").is_file():
            raise ModelNotInstalled(f"No Whisper model.bin in {path}.")
        self.model = model or path.name
        self.beam_size = beam_size
        self._whisper = WhisperModel(
            str(path),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=1,
            local_files_only=True,
        )
        # One decode at a time: the CPU threads are already shared by the whole model.
        self._lock = threading.Lock()

    @property
    def multilingual(self) -> bool:
        """Return whether the model knows languages other than English."""
        return bool(self._whisper.model.is_multilingual)

    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        """Transcribe audio; language None lets a multilingual model detect it."""
        if not self.multilingual:
            if language not in (None, "en"):
                raise UnsupportedLanguage(f"Model {self.model} only understands English.")
            language = "en"
        with self._lock:
            # The fallback samples at temperature > 0: seed it so the same audio always
            # gives the same transcript (reproducible for coordinators and for tests).
            ctranslate2.set_random_seed(0)
            segments, info = self._whisper.transcribe(
                audio.samples,
                language=language,
                beam_size=self.beam_size,
                # Re-decode at rising temperature when greedy output loops or is unlikely
                # (faster-whisper's defaults, spelled out). It misses a loop whose segment
                # stays under the 2.4 compression ratio.
                temperature=_FALLBACK_TEMPERATURES,
                compression_ratio_threshold=2.4,
                log_prob_threshold=-1.0,
                # The console's clickable words need them; they cost ~3 % of decode time.
                word_timestamps=True,
                # Seniors pause mid-sentence; a VAD would cut them off, and clips are short.
                vad_filter=False,
                # Each request stands alone; carrying text over only spreads hallucinations.
                condition_on_previous_text=False,
            )
            segments = list(segments)
        words = tuple(
            Word(
                text=w.word.strip(),
                start=round(float(w.start), 3),
                end=round(float(w.end), 3),
                confidence=round(float(w.probability), 4),
            )
            for s in segments
            for w in s.words or ()
            if w.word.strip()
        )
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        return Transcript(
            text=text,
            language=info.language,
            confidence=_confidence(words, [s.avg_logprob for s in segments]),
            words=words,
            duration_s=round(audio.duration_s, 3),
            engine=self.name,
            model=self.model,
        )


def _confidence(words: tuple[Word, ...], avg_logprobs: list[float]) -> float:
    """Return mean word probability, falling back to exp(mean segment log-probability)."""
    if words:
        return round(sum(w.confidence for w in words) / len(words), 4)
    if avg_logprobs:
        return round(math.exp(float(sum(avg_logprobs)) / len(avg_logprobs)), 4)
    return 0.0
