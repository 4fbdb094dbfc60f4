"""Decode any caller audio (phone WAV, kiosk WebM, uploads) into 16 kHz mono float samples.

Policy for damaged input: whatever decodes before the damage is kept when it is at least
MIN_SECONDS long; otherwise the input is CorruptAudio (it looked like audio) or NotAudio.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from app.speech.errors import AudioTooLong, CorruptAudio, EmptyAudio, NotAudio, SilentAudio

MIN_SECONDS = 0.2
# Quiet telephone speech peaks around 0.03; a muted line or digital silence stays far below.
SILENT_PEAK = 0.01
SILENT_RMS = 0.001
# Keep ffmpeg's format probing bounded so odd input cannot make it read for long.
_OPEN_OPTIONS = {"probesize": str(1 << 20), "analyzeduration": str(5_000_000)}
# Leading bytes of containers we accept; used only to tell "damaged audio" from "not audio".
_AUDIO_MAGIC = (b"RIFF", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\x1aE\xdf\xa3", b"fLaC")

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


@dataclass(frozen=True, eq=False)
class Audio:
    """Mono float32 samples in [-1, 1] at a fixed sample rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Return the length in seconds."""
        return len(self.samples) / self.sample_rate

    def pcm16(self) -> bytes:
        """Return the samples as little-endian signed 16-bit PCM bytes."""
        clipped = np.clip(self.samples, -1.0, 1.0)
        return (clipped * 32767.0).astype("<i2").tobytes()


def audio_from_samples(samples: np.ndarray, sample_rate: int = 16000) -> Audio:
    """Wrap already-decoded mono samples, checking length and loudness like load_audio."""
    array = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    array.setflags(write=False)
    audio = Audio(samples=array, sample_rate=sample_rate)
    _check_content(audio)
    return audio


def load_audio(
    source: AudioSource, *, max_seconds: float = 600.0, sample_rate: int = 16000
) -> Audio:
    """Decode a path, bytes or binary file into mono float32 samples at sample_rate."""
    if isinstance(source, Audio):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise EmptyAudio("The audio is empty (0 bytes).")
        source = io.BytesIO(bytes(source))
    head = _peek(source)
    if head == b"":
        raise EmptyAudio("The audio is empty (0 bytes).")
    head = head or b""
    try:
        container = av.open(source, mode="r", options=_OPEN_OPTIONS, metadata_errors="ignore")
    except FileNotFoundError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        if head.startswith(_AUDIO_MAGIC):
            raise CorruptAudio(
                f"The audio file is damaged and cannot be opened: {_reason(e)}."
            ) from e
        raise NotAudio(f"This is not an audio file we can decode: {_reason(e)}.") from e
    with container:
        samples = _decode(container, head, max_seconds, sample_rate)
    return audio_from_samples(samples, sample_rate)


def _peek(source) -> bytes | None:
    """Return the first bytes of a path or seekable file without consuming them, or None."""
    if isinstance(source, str | os.PathLike):
        try:
            with open(source, "rb") as f:
                return f.read(16)
        except OSError:
            return None
    try:
        pos = source.tell()
        head = source.read(16)
        source.seek(pos)
        return head
    except (OSError, AttributeError, ValueError):
        return None


def _decode(container, head: bytes, max_seconds: float, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream, stopping as soon as it passes max_seconds."""
    if not container.streams.audio:
        raise NotAudio("The file has no audio track.")
    stream = container.streams.audio[0]
    declared = _declared_seconds(container, stream)
    # Refuse a 3-hour recording from its header instead of decoding all of it.
    if declared is not None and declared > max_seconds + 1.0:
        raise AudioTooLong(_too_long(declared, max_seconds))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    total = 0
    limit = int(max_seconds * sample_rate)
    failure: Exception | None = None
    try:
        for frame in container.decode(stream):
            frame.pts = None  # broken timestamps must not make the resampler stall
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1)
                chunks.append(chunk)
                total += len(chunk)
            if total > limit:
                raise AudioTooLong(_too_long(total / sample_rate, max_seconds, at_least=True))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except AudioTooLong:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        failure = e
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if len(samples) > limit:
        raise AudioTooLong(_too_long(len(samples) / sample_rate, max_seconds))
    if failure is not None and len(samples) < MIN_SECONDS * sample_rate:
        if head.startswith(_AUDIO_MAGIC) or samples.size:
            raise CorruptAudio(
                f"The audio is damaged; decoding failed: {_reason(failure)}."
            ) from failure
        raise NotAudio(f"This is not an audio file we can decode: {_reason(failure)}.") from failure
    return samples


def _reason(error: Exception) -> str:
    """Return ffmpeg's reason without its errno and file-name noise."""
    return getattr(error, "strerror", None) or str(error)


def _declared_seconds(container, stream) -> float | None:
    """Return the duration the container header claims, if any."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _too_long(seconds: float, max_seconds: float, *, at_least: bool = False) -> str:
    """Return the message for audio over the length limit."""
    prefix = "at least " if at_least else ""
    return f"The audio is {prefix}{seconds:.1f} s long; the limit is {max_seconds:g} s."


def _check_content(audio: Audio) -> None:
    """Raise EmptyAudio or SilentAudio when there is nothing worth transcribing."""
    if audio.duration_s < MIN_SECONDS:
        raise EmptyAudio(
            f"The audio is {audio.duration_s:.2f} s long; at least {MIN_SECONDS} s is needed."
        )
    samples = audio.samples
    peak = float(np.max(np.abs(samples)))
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if peak < SILENT_PEAK or rms < SILENT_RMS:
        raise SilentAudio(f"The audio is silent (peak {peak:.4f}, rms {rms:.5f}).")
