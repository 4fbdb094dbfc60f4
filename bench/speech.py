"""Benchmark the installed speech models on rendered, telephone-band elderly requests.

Usage: python bench/speech.py

Each row runs in its own child process so load time and peak RSS are its own. Rows differ by
model, set (phone = 8 kHz mu-law 300-3400 Hz, wide = 16 kHz), voice (espeak-ng's, or Festival's
festival-slt) and beam, so the table shows how much of the error is the synthetic voice and how
much the model.
Targets for whisper-tiny-en on the phone set: WER <= 5 % at RTF <= 0.10 on 2 cores.
RTF is wall time and rises when other jobs load the machine (see the load column); CPU is
decode CPU-seconds per audio second over all threads, which load does not inflate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.speech import load_audio  # noqa: E402
from app.speech.errors import ModelNotInstalled  # noqa: E402
from app.speech.models import DEFAULT_MODELS_DIR, model_path  # noqa: E402
from app.speech.wer import word_error_rate  # noqa: E402
from tests.speechgen import BENCH_VOICE, CLEAR_VOICE, RenderError, render, require, telephone  # noqa: E402

ENGLISH = [
    "Hello, this is Margaret on Elm Street. I need a ride to my doctor's appointment "
    "on Thursday at ten in the morning.",
    "My husband passed away last year and I cannot lift the heavy boxes in the garage "
    "by myself anymore.",
    "Could somebody pick up my blood pressure medicine from the pharmacy on Main Street?",
    "I would like someone to help me with my groceries this week, my knees are bad.",
    "The light bulb in my hallway is out and I am afraid to climb the ladder.",
    "I am calling because my kitchen sink has been leaking since Sunday night.",
    "Is there a volunteer who could drive me to church on Sunday morning?",
    "My computer will not turn on and I need to talk to my grandson tonight.",
    "I need help filling out some forms from the bank, the letters are very small.",
    "Please send someone to shovel the snow from my front steps before Tuesday.",
    "I fell last week and now I need help taking out the trash every Monday.",
    "Can a volunteer walk my dog in the afternoon while my hip is healing?",
    "I have not talked to anybody in two weeks and I would like someone to visit.",
    "My smoke alarm keeps beeping and I cannot reach it to change the battery.",
    "I need a ride to the hospital for my eye surgery next Wednesday at noon.",
    "Could someone help me read my mail? My eyes are not what they used to be.",
    "The grass in my yard is very long and my son lives far away.",
    "I would like help cooking a warm meal a few times a week.",
    "My phone bill looks wrong and I do not understand what they are charging me for.",
    "Please call me back in the afternoon, I take a nap in the morning.",
    "I need somebody to help me move my bed downstairs because of my knees.",
    "Can someone bring me to the library on Friday so I can return my books?",
]
KOREAN = [
    "병원에 가고 싶어요",
    "약국에 가야 해요",
    "도움이 필요해요",
    "장을 봐 주세요",
    "내일 아침에 전화해 주세요",
]
ROWS = [
    # (model, language, set, voice, beam)
    ("whisper-tiny-en", "en", "phone", "en-us", 1),
    ("whisper-tiny-en", "en", "phone", "en-us-klatt", 1),
    ("whisper-tiny-en", "en", "phone", CLEAR_VOICE, 1),
    ("whisper-tiny-en", "en", "phone", CLEAR_VOICE, 3),
    ("whisper-tiny-en", "en", "phone", BENCH_VOICE, 1),
    ("whisper-tiny-en", "en", "wide", "en-us", 1),
    ("whisper-tiny-en", "en", "wide", CLEAR_VOICE, 1),
    ("whisper-base", "en", "phone", CLEAR_VOICE, 1),
    ("vosk-ko", "ko", "phone", "ko", 0),
]


def clips(set_name: str, voice: str) -> list[tuple[str, Path]]:
    """Return (reference text, rendered file) pairs for a set spoken by a voice."""
    texts = KOREAN if voice == "ko" else ENGLISH
    make = telephone if set_name == "phone" else render
    return [(t, make(t, voice=voice)) for t in texts]


def run_one(model: str, language: str, set_name: str, voice: str, beam: int) -> dict:
    """Load one model, transcribe a set, and return its measurements."""
    path = model_path(model, DEFAULT_MODELS_DIR)
    audios = [(ref, load_audio(p)) for ref, p in clips(set_name, voice)]
    started = time.perf_counter()
    if model.startswith("whisper"):
        from app.speech.whisper import WhisperEngine

        engine = WhisperEngine(path, model=model, beam_size=beam)
    else:
        from app.speech.vosk import VoskEngine

        engine = VoskEngine(path, model=model, language=language)
    load_s = time.perf_counter() - started
    errors = words = 0.0
    decode_s = cpu_s = audio_s = 0.0
    worst = (0.0, "")
    load = os.getloadavg()[0]
    for ref, audio in audios:
        started, cpu_started = time.perf_counter(), time.process_time()
        text = engine.transcribe(audio, language).text
        decode_s += time.perf_counter() - started
        cpu_s += time.process_time() - cpu_started
        audio_s += audio.duration_s
        n = len(ref.split())
        rate = word_error_rate(ref, text)
        errors += rate * n
        words += n
        worst = max(worst, (rate, text))
    return {
        "model": model,
        "set": set_name,
        "voice": voice,
        "beam": beam,
        "clips": len(audios),
        "audio_s": audio_s,
        "wer": errors / words,
        "rtf": decode_s / audio_s,
        "cpu": cpu_s / audio_s,
        "load": load,
        "load_s": load_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worst": worst,
    }


def main() -> None:
    """Render the sets, benchmark every installed model, and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one))))
        return
    missing = {}
    for _, _, set_name, voice, _ in ROWS:
        try:
            require(voice)
        except RenderError as e:
            missing[voice] = str(e)
            continue
        clips(set_name, voice)  # render (cached) before timing anything
    print(
        f"{'model':16} {'set':5} {'voice':12} {'beam':>4} {'clips':>5} {'audio s':>7} "
        f"{'WER':>6} {'RTF':>6} {'CPU':>6} {'load':>5} {'load s':>6} {'peak RSS':>8}"
    )
    for row in ROWS:
        try:
            model_path(row[0], DEFAULT_MODELS_DIR)
        except ModelNotInstalled:
            print(f"{row[0]:16} (not installed; flask --app app models install {row[0]})")
            continue
        if row[3] in missing:
            print(f"{row[0]:16} {row[2]:5} {row[3]:12} ({missing[row[3]]})")
            continue
        done = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(row)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{r['model']:16} {r['set']:5} {r['voice']:12} {r['beam'] or '-':>4} "
            f"{r['clips']:>5} {r['audio_s']:7.1f} {r['wer']:6.1%} {r['rtf']:6.3f} "
            f"{r['cpu']:6.3f} {r['load']:5.1f} {r['load_s']:6.2f} {r['peak_rss_mb']:6.0f}MB"
        )
        print(f"{'':16} worst: {r['worst'][0]:.0%} {r['worst'][1]!r}")


if __name__ == "__main__":
    main()
