"""The kiosk's spoken words, rendered offline with espeak-ng for tablets without a voice.

Browsers speak with their own voices when they have one for the page's language; many
kiosk tablets (and Linux kiosks without speech-dispatcher) have none, so the page fetches
these WAVs instead. espeak-ng is the engine pyttsx3 drives on Linux; its command line is
used here because pyttsx3 keeps one global engine, which request threads must not share.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

MAX_CHARS = 1500
TIMEOUT_S = 20


class VoiceUnavailable(RuntimeError):
    """espeak-ng is not installed or failed, so nothing can be said aloud by the server."""


def render(text, *, voice, rate, cache_dir):
    """Return the path of a WAV saying text, rendering it once and caching it by content."""
    text = " ".join(text.split())[:MAX_CHARS]
    digest = hashlib.sha256(f"{voice}\0{rate}\0{text}".encode()).hexdigest()[:24]
    target = Path(cache_dir) / f"{digest}.wav"
    if target.exists():
        return target
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise VoiceUnavailable("espeak-ng is not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".wav.part", dir=target.parent)
    os.close(fd)
    try:
        # "--" ends the options: the text can never be read as one.
        done = subprocess.run(
            [espeak, "-v", voice, "-s", str(rate), "-w", partial, "--", text],
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or Path(partial).stat().st_size <= 44:
            raise VoiceUnavailable(f"espeak-ng failed: {done.stderr.decode(errors='replace')}")
        os.replace(partial, target)
    except subprocess.TimeoutExpired as exc:
        raise VoiceUnavailable("espeak-ng took too long") from exc
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def spell_number(number):
    """Spell a request number digit by digit, as people copy it down: 1 0 4."""
    return " ".join(str(number))
