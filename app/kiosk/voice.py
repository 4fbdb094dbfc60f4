"""The kiosk's spoken words, rendered offline with espeak-ng for tablets without a voice.

Browsers speak with their own voices when they have one for the page's language; many
kiosk tablets (and Linux kiosks without speech-dispatcher) have none, so the page fetches
these WAVs instead. espeak-ng is the engine pyttsx3 drives on Linux; its command line is
used here because pyttsx3 keeps one global engine, which request threads must not share.
"""

import errno
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

from ..recordings import naming_full_disk

MAX_CHARS = 1500
TIMEOUT_S = 20
# A plain PCM WAV header, as the wave module writes it.
WAV_HEADER_BYTES = 44


class VoiceUnavailable(RuntimeError):
    """espeak-ng is not installed or failed, so nothing can be said aloud by the server."""


def render(text, *, voice, rate, cache_dir):
    """Return the path of a WAV saying text, rendering it once and caching it by content.

    Raises VoiceUnavailable when espeak-ng cannot speak, recordings.StorageFull or
    StorageUnavailable when the clip cannot be kept whole: nothing half-written is cached.
    """
    text = " ".join(text.split())[:MAX_CHARS]
    digest = hashlib.sha256(f"{voice}\0{rate}\0{text}".encode()).hexdigest()[:24]
    target = Path(cache_dir) / f"{digest}.wav"
    if target.exists():
        return target
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise VoiceUnavailable("espeak-ng is not installed")
    try:
        # "--" ends the options: the text can never be read as one. espeak-ng writing a file
        # itself exits 0 even when the disk cut the file short, so we write it ourselves.
        done = subprocess.run(
            [espeak, "-v", voice, "-s", str(rate), "--stdout", "--", text],
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise VoiceUnavailable("espeak-ng took too long") from exc
    if done.returncode != 0 or len(done.stdout) <= WAV_HEADER_BYTES:
        raise VoiceUnavailable(f"espeak-ng failed: {done.stderr.decode(errors='replace')}")
    params, frames = _frames(done.stdout)
    with naming_full_disk():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Named after this process, like every .part: the sweep removes it if we are killed.
        fd, partial = tempfile.mkstemp(suffix=f".wav.{os.getpid()}.part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as raw:
                with wave.open(raw, "wb") as out:
                    out.setparams(params)
                    out.setnframes(len(frames) // (params.sampwidth * params.nchannels))
                    out.writeframes(frames)
                raw.flush()
                os.fsync(raw.fileno())
            # Only a whole clip is cached: a short one would be served cut off for good.
            if Path(partial).stat().st_size != WAV_HEADER_BYTES + len(frames):
                raise OSError(errno.ENOSPC, "the spoken clip was cut short")
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
    return target


def _frames(wav_bytes):
    """Return the parameters and sample bytes of a WAV streamed with unknown length."""
    try:
        with wave.open(io.BytesIO(wav_bytes)) as clip:
            params = clip.getparams()
            # A streamed WAV's header cannot know its length: read what actually came.
            frames = clip.readframes(len(wav_bytes))
    except (wave.Error, EOFError) as exc:
        raise VoiceUnavailable(f"espeak-ng gave no WAV: {exc}") from exc
    if not frames:
        raise VoiceUnavailable("espeak-ng gave an empty WAV")
    return params, frames


def spell_number(number):
    """Spell a request number digit by digit, as people copy it down: 1 0 4."""
    return " ".join(str(number))
