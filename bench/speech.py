"""Benchmark the installed speech models on rendered, telephone-band elderly requests.

Usage: python bench/speech.py [--sets phone,wide] [--beam 1]

Each model runs in its own child process so load time and peak RSS are its own.
Targets for whisper-tiny-en on the phone set: WER <= 5 % at RTF <= 0.10 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
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
from tests.speechgen import render, telephone  # noqa: E402

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
    # (model, language, set, beam)
    ("whisper-tiny-en", "en", "phone", 1),
    ("whisper-tiny-en", "en", "phone", 5),
    ("whisper-tiny-en", "en", "wide", 1),
    ("whisper-base", "en", "phone", 1),
    ("vosk-ko", "ko", "phone-ko", 0),
]


def clips(name: str) -> list[tuple[str, Path]]:
    """Return (reference text, rendered file) pairs for a named set."""
    if name == "phone":
        return [(t, telephone(t)) for t in ENGLISH]
    if name == "wide":
        return [(t, render(t)) for t in ENGLISH]
    return [(t, telephone(t, voice="ko")) for t in KOREAN]


def run_one(model: str, language: str, set_name: str, beam: int) -> dict:
    """Load one model, transcribe a set, and return its measurements."""
    path = model_path(model, DEFAULT_MODELS_DIR)
    audios = [(ref, load_audio(p)) for ref, p in clips(set_name)]
    started = time.perf_counter()
    if model.startswith("whisper"):
        from app.speech.whisper import WhisperEngine

        engine = WhisperEngine(path, model=model, beam_size=beam)
    else:
        from app.speech.vosk import VoskEngine

        engine = VoskEngine(path, model=model, language=language)
    load_s = time.perf_counter() - started
    errors = words = 0.0
    decode_s = audio_s = 0.0
    worst = (0.0, "")
    for ref, audio in audios:
        started = time.perf_counter()
        text = engine.transcribe(audio, language).text
        decode_s += time.perf_counter() - started
        audio_s += audio.duration_s
        n = len(ref.split())
        rate = word_error_rate(ref, text)
        errors += rate * n
        words += n
        worst = max(worst, (rate, text))
    return {
        "model": model,
        "set": set_name,
        "beam": beam,
        "clips": len(audios),
        "audio_s": audio_s,
        "wer": errors / words,
        "rtf": decode_s / audio_s,
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
        model, language, set_name, beam = json.loads(args.one)
        print(json.dumps(run_one(model, language, set_name, beam)))
        return
    for name in {row[2] for row in ROWS}:
        clips(name)  # render (cached) before timing anything
    print(
        f"{'model':16} {'set':9} {'beam':>4} {'clips':>5} {'audio s':>8} {'WER':>6} "
        f"{'RTF':>6} {'load s':>7} {'peak RSS':>9}"
    )
    for row in ROWS:
        try:
            model_path(row[0], DEFAULT_MODELS_DIR)
        except ModelNotInstalled:
            print(f"{row[0]:16} (not installed; flask --app app models install {row[0]})")
            continue
        done = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(row)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{r['model']:16} {r['set']:9} {r['beam'] or '-':>4} {r['clips']:>5} "
            f"{r['audio_s']:8.1f} {r['wer']:6.1%} {r['rtf']:6.3f} {r['load_s']:7.2f} "
            f"{r['peak_rss_mb']:7.0f}MB"
        )
        print(f"{'':16} worst: {r['worst'][0]:.0%} {r['worst'][1]!r}")


if __name__ == "__main__":
    main()
