"""Render speech to WAV files for tests and benches, with espeak-ng or Festival.

espeak-ng (the engine pyttsx3 drives) speaks every language the tests use; Festival's HTS
voice "festival-slt" is a clearer, more natural English voice for benches (see BENCH_VOICE).
Rendered files are cached under tests/artifacts/speech/, keyed by a hash of the engine and
the arguments, so reruns cost nothing. Telephone audio is made the way a phone line makes
it: band-limited to 300-3400 Hz and stored as 8 kHz mu-law.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "speech"
# Short names, which tests write, to (engine, the engine's voice id); a name not listed is
# taken as an espeak-ng voice id. espeak-ng ids are as pyttsx3 reports them.
# "+klatt*" are espeak-ng's Klatt-synthesiser variants of the voice, shipped in espeak-ng-data.
# Through a 300-3400 Hz phone band Whisper tiny.en mishears them far less than the default
# voice (~30 % vs ~38 % WER on 48 requests; see bench/speech.py), so accuracy tests use one.
VOICES = {
    "en-us": ("espeak-ng", "gmw/en-us"),
    "en-us-klatt": ("espeak-ng", "gmw/en-us+klatt"),
    "en-us-klatt2": ("espeak-ng", "gmw/en-us+klatt2"),
    "ko": ("espeak-ng", "ko"),
    "cmn": ("espeak-ng", "sit/cmn"),
    # Festival's HMM voice of CMU ARCTIC's "slt" (Debian festvox-us-slt-hts).
    "festival-slt": ("festival", "cmu_us_slt_arctic_hts"),
}
CLEAR_VOICE = "en-us-klatt2"
# The voice benches speak with when it is installed. On 120 requests from
# ivr_flows/examples/en.tsv over the phone band, Whisper tiny.en's WER was 5.2 % with it,
# against 7.9 % for Piper's joe, 16 % for flite's kal and 41 % for espeak-ng's en-us (29 % for
# en-us-klatt2 on 40 of them); it renders deterministically, in ~0.6 s a sentence (issue #11).
BENCH_VOICE = "festival-slt"
# espeak-ng words per minute of a render; a phone <Say> at prosody rate 100% stands for this.
# Other engines speak at their own pace, scaled by rate / RATE.
RATE = 140
CODECS = ("pcm_s16le", "pcm_mulaw")
# Part of every cache key, so one engine's files are never taken for another's: bump an
# engine's entry when its rendering changes, so stale files are not reused.
RENDERERS = {"espeak-ng": "espeak-ng-cli-1", "festival": "festival-text2wave-1"}


class RenderError(Exception):
    """Text could not be rendered to speech."""


def render(
    text: str,
    path: str | os.PathLike | None = None,
    *,
    voice: str = "en-us",
    rate: int = RATE,
    sample_rate: int = 16000,
    codec: str = "pcm_s16le",
) -> Path:
    """Render text as speech to a mono WAV at sample_rate and return its path."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}")
    engine, _ = engine_of(voice)
    key = json.dumps([RENDERERS[engine], text, voice, rate, sample_rate, codec], ensure_ascii=False)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cached = ARTIFACTS / f"{digest}.wav"
    if not cached.exists():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ARTIFACTS) as tmp:
            raw = Path(tmp) / "raw.wav"
            _speak(text, raw, voice=voice, rate=rate)
            out = Path(tmp) / "out.wav"
            _convert(raw, out, sample_rate=sample_rate, codec=codec)
            out.replace(cached)
    if path is None:
        return cached
    shutil.copyfile(cached, path)
    return Path(path)


def telephone(text: str, path: str | os.PathLike | None = None, **kwargs) -> Path:
    """Render text as 8 kHz mu-law telephone-band speech."""
    return render(text, path, sample_rate=8000, codec="pcm_mulaw", **kwargs)


def installed(voice: str) -> bool:
    """Return whether the engine and voice data behind a voice name are installed."""
    try:
        require(voice)
    except RenderError:
        return False
    return True


def require(voice: str) -> None:
    """Raise RenderError naming what to install when a voice's engine or data is missing."""
    _require(*engine_of(voice))


def engine_of(voice: str) -> tuple[str, str]:
    """Return (engine, engine's voice id) for a voice name or a bare espeak-ng voice id."""
    return VOICES.get(voice, ("espeak-ng", voice))


def _speak(text: str, path: Path, *, voice: str, rate: int) -> None:
    """Synthesise text to a WAV with the voice's engine, at the engine's own sample rate."""
    engine, voice_id = engine_of(voice)
    _require(engine, voice_id)
    if engine == "festival":
        _festival(text, path, voice=voice_id, rate=rate)
    else:
        _espeak_cli(text, path, voice=voice_id, rate=rate)


def _require(engine: str, voice_id: str) -> None:
    """Raise RenderError naming the package when an engine or its voice is missing."""
    if engine == "festival":
        _require_festival_voice(voice_id)
    else:
        _require_voice(voice_id)


def _require_voice(voice_id: str) -> None:
    """Raise RenderError naming the package when an espeak-ng voice variant is missing."""
    # espeak-ng and pyttsx3 silently fall back to the plain voice for an unknown "+variant",
    # which would mislabel every WER measured with it.
    _, plus, variant = voice_id.partition("+")
    if plus and variant not in _espeak_variants():
        raise RenderError(
            f"espeak-ng voice variant {variant!r} is not installed; "
            "install the Debian package espeak-ng-data (scripts/setup does)."
        )


@functools.cache
def _espeak_variants() -> frozenset[str]:
    """Return the voice variant files espeak-ng has, e.g. "klatt"."""
    done = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False)
    # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/x86_64-linux-gnu/espeak-ng-data"
    data = Path(done.stdout.partition("Data at:")[2].strip())
    variants = data / "voices" / "!v"
    return frozenset(p.name for p in variants.iterdir()) if variants.is_dir() else frozenset()


# pyttsx3 drives espeak-ng; in a subprocess it sometimes exits 0 having written nothing, and
# in-process it carries samples over between utterances. The espeak-ng command line gives the
# same samples as pyttsx3 when pyttsx3 works (checked for en-us, cmn and ko), every time.
def _espeak_cli(text: str, path: Path, *, voice: str, rate: int) -> None:
    """Synthesise text with the espeak-ng command line."""
    command = ["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), "--", text]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0 or not path.exists():
        raise RenderError(f"espeak-ng failed: {done.stderr.decode(errors='replace')}")


# Debian packages each Festival voice on its own; the HTS ones are named festvox-us-*-hts.
FESTIVAL_PACKAGES = {"cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}


def _require_festival_voice(voice_id: str) -> None:
    """Raise RenderError naming the Debian packages when Festival or the voice is missing."""
    if voice_id not in _festival_voices():
        package = FESTIVAL_PACKAGES.get(voice_id, "the festvox package of that voice")
        raise RenderError(
            f"Festival voice {voice_id!r} is not installed; install the Debian packages "
            f"festival and {package} (scripts/setup --test does)."
        )


@functools.cache
def _festival_voices() -> frozenset[str]:
    """Return the voices Festival can load, or none when Festival is not installed."""
    if not shutil.which("festival") or not shutil.which("text2wave"):
        return frozenset()
    command = ["festival", "--batch", "(print (voice.list))"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    # "(cmu_us_slt_arctic_hts ked_diphone kal_diphone)"
    return frozenset(done.stdout.strip().strip("()").split())


def _festival(text: str, path: Path, *, voice: str, rate: int) -> None:
    """Synthesise text with Festival's text2wave (its HTS voices ignore Duration_Stretch)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "text.txt"
        # text2wave reads a file, so no text is ever taken for an option or Scheme.
        source.write_text(text, encoding="utf-8")
        speed = f'(set! hts_engine_params (cons (list "-r" {rate / RATE:.4f}) hts_engine_params))'
        command = ["text2wave", "-eval", f"(voice_{voice})", "-eval", speed]
        done = subprocess.run(
            [*command, str(source), "-o", str(path)], capture_output=True, check=False
        )
    # text2wave exits 0 on a Scheme error, having written nothing.
    if done.returncode != 0 or not path.exists() or path.stat().st_size <= 44:
        raise RenderError(f"festival failed: {done.stderr.decode(errors='replace')}")


def _convert(src: Path, dst: Path, *, sample_rate: int, codec: str) -> None:
    """Resample to sample_rate and encode as codec, band-limiting telephone audio."""
    if sample_rate <= 8000 and shutil.which("sox"):
        encoding = ["-e", "u-law"] if codec == "pcm_mulaw" else ["-e", "signed", "-b", "16"]
        # -D: no dither. sox dithers with fresh random noise on every run by default, so the
        # same sentence decoded differently each time (one CI run: WER 0.8 on a line that is 0).
        rate = ["-r", str(sample_rate)]
        command = ["sox", "-R", "-D", str(src), *rate, *encoding, str(dst), "sinc", "300-3400"]
        subprocess.run(command, check=True, capture_output=True)
        return
    samples = _read_mono(src, sample_rate)
    write_wav(samples, dst, sample_rate=sample_rate, codec=codec)


def _read_mono(path: Path, sample_rate: int) -> np.ndarray:
    """Decode a file to mono float32 at sample_rate with PyAV."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(chunks)


def write_wav(
    samples: np.ndarray,
    path: str | os.PathLike,
    *,
    sample_rate: int = 16000,
    codec: str = "pcm_s16le",
) -> Path:
    """Write mono float samples to a WAV with the given PCM codec."""
    return encode(samples, path, sample_rate=sample_rate, codec=codec, container="wav")


def encode(
    samples: np.ndarray,
    path: str | os.PathLike,
    *,
    sample_rate: int,
    codec: str,
    container: str,
    video: bool = False,
) -> Path:
    """Encode mono float samples with PyAV, optionally beside a tiny video track."""
    with av.open(str(path), mode="w", format=container) as out:
        if video:
            picture = out.add_stream("libvpx" if container == "webm" else "mpeg4", rate=5)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        stream = out.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        encoder_format = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=encoder_format, layout="mono", rate=sample_rate)
        frame_size = stream.codec_context.frame_size or 1024
        data = np.asarray(samples, dtype=np.float32).reshape(-1)
        for start in range(0, len(data), frame_size):
            chunk = data[start : start + frame_size].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = sample_rate
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
        if video:
            for i in range(int(len(data) / sample_rate * 5) + 1):
                image = av.VideoFrame.from_ndarray(
                    np.full((48, 64, 3), 40, dtype=np.uint8), format="rgb24"
                )
                image.pts = i
                out.mux(picture.encode(image))
            out.mux(picture.encode(None))
    return Path(path)


def has_encoder(name: str) -> bool:
    """Return whether the PyAV build can encode with the named codec."""
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def require_encoder(name: str) -> None:
    """Skip the calling test, naming the codec, when PyAV cannot encode with it."""
    import pytest

    if not has_encoder(name):
        pytest.skip(f"this PyAV build has no {name} encoder")
