"""The readback as a person hears it: each category's own sentence, as text and as speech."""

import re
import xml.etree.ElementTree as ET

import pytest

from app import queue
from app.classify import category_keys
from app.flows import load_flow
from app.kiosk import devices, messages, wording
from app.pipeline import categories_for
from app.speech import SpeechService
from app.speech.wer import word_error_rate
from app.telephony import store
from scripts.simulate_call import Call, sid
from tests import speechgen
from tests.test_ivr import CALLER, requests_of, spoken
from tests.test_speech import _installed

KEYS = category_keys()
EN = categories_for("en")
MAX_WORDS = 16
MAX_WER = 0.2
# What a caller might have said, ending the ways transcripts end.
TRANSCRIPTS = [
    "Can you come on Friday?",
    "I need milk and bread.",
    "I need milk and bread. .",
    "Well, I was wondering…",
    "Could someone take me to the clinic on Tuesday 8 December",
    "I need a lift to the community center?",
    "The meeting is on Tuesday...",
]


def problems(text, max_words=MAX_WORDS):
    """Return what a listener would trip over in text: doubled words, stray or missing marks.

    max_words: None for a caller's own words, read back however long they were.
    """
    found = []
    if m := re.search(r"\b(\w+(?: \w+){0,2}) \1\b", text, re.IGNORECASE):
        found.append(f"doubled {m.group(0)!r}")
    if m := re.search(r"[.?!…]\s*[.?!…]|\s[.,?!;:…]", text):
        found.append(f"stray mark {m.group(0)!r}")
    for sentence in re.split(r"(?<=[.?!])\s+", text.strip()):
        if not sentence[:1].isupper():
            found.append(f"no capital: {sentence!r}")
        if sentence[-1:] not in ".?!":
            found.append(f"no full stop: {sentence!r}")
        if max_words and len(sentence.split()) > max_words:
            found.append(f"{len(sentence.split())} words: {sentence!r}")
    return found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I heard: I need milk. It sounds like you need help.", []),
        ("You need help with help with a phone.", ["doubled 'help with help with'"]),
        ("I heard: a lift to the community center?.", ["stray mark '?.'"]),
        ("I heard: Tuesday.. This is it.", ["stray mark '..'"]),
        ("I heard: Tuesday. . This is it.", ["stray mark '. .'", "no capital: '.'"]),
        ("I heard: Tuesday . Yes.", ["stray mark ' .'"]),
        ("I heard: it. this is it.", ["no capital: 'this is it.'"]),
        ("It sounds like it", ["no full stop: 'It sounds like it'"]),
        (
            "One two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen.",
            [
                "17 words: 'One two three four five six seven eight "
                "nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen.'"
            ],
        ),
    ],
)
def test_the_listener_check_finds_what_it_should(text, expected):
    assert problems(text) == expected


@pytest.mark.parametrize("key", KEYS)
def test_every_category_has_its_own_plain_readback_sentence(key):
    sentence = EN.readback(key)
    assert sentence and problems(sentence) == []
    assert len(re.findall(r"[.?!]", sentence)) == 1  # one sentence, one mark at its end
    assert sentence not in {EN.readback(other) for other in KEYS if other != key}


def _kiosk_speech(transcript, key):
    request = {
        "stage": "transcribed",
        "transcript": transcript,
        "transcript_confidence": 0.9,
        "category": key,
        "emergency": False,
    }
    return messages.readback(
        request, wording.load("en"), EN, emergency_number="911", review_confidence=0.6
    )["speech"]


@pytest.mark.parametrize("transcript", TRANSCRIPTS)
@pytest.mark.parametrize("key", KEYS)
def test_the_kiosk_readback_reads_as_plain_sentences(transcript, key):
    speech = _kiosk_speech(transcript, key)
    assert problems(speech) == []
    assert EN.readback(key) in speech


def _waiting_call(db, **fields):
    """Return a call holding for its message, and the request that message became."""
    request, _ = queue.create(db, channel="phone", phone=CALLER, stage="transcribed", **fields)
    call = Call(sid("CA"), CALLER)
    store.start_call(db, call.call_sid, CALLER, default_language="en", languages=("en",))
    store.update_call(db, call.call_sid, menu="waiting", request_id=request["id"])
    return call, request


def _said(body):
    """Return the words of every <Say> in a TwiML answer, in order."""
    return ["".join(say.itertext()).strip() for say in ET.fromstring(body).iter("Say")]


@pytest.mark.parametrize("needs_review", [0, 1])
@pytest.mark.parametrize("transcript", TRANSCRIPTS)
def test_the_phone_readback_reads_as_plain_sentences(twilio, db, transcript, needs_review):
    for key in KEYS:
        call, _ = _waiting_call(
            db,
            transcript=transcript,
            transcript_confidence=0.9,
            category=key,
            needs_review=needs_review,
        )
        status, body = twilio.post("/twilio/wait?n=0", twilio.call_params(call))
        said = _said(body)
        assert status == 200 and EN.readback(key) in said
        assert ("I heard:" in said[0]) == (not needs_review)
        assert problems(" ".join(said)) == [], key


# --- as a listener hears them ------------------------------------------------------------


@pytest.fixture(scope="module")
def service():
    """Return the English speech engine the app uses, loaded once for the module."""
    _installed("whisper-tiny-en")
    return SpeechService({"en": "whisper:whisper-tiny-en"})


def _words_per_minute(flow, pace):
    """Return the espeak rate of a phone <Say> at a caller's pace ("90%" of speechgen's rate)."""
    return round(speechgen.RATE * float(flow.rate(pace).rstrip("%")) / 100)


@pytest.mark.slow
@pytest.mark.parametrize("pace", ["normal", "slow"])
@pytest.mark.parametrize("key", KEYS)
def test_whisper_hears_each_readback_sentence_on_a_phone_line(app, service, key, pace):
    sentence = EN.readback(key)
    flow = load_flow(app.config["FLOWS_DIR"], "en")
    audio = speechgen.telephone(
        sentence, voice=speechgen.CLEAR_VOICE, rate=_words_per_minute(flow, pace)
    )
    heard = service.transcribe(audio, language="en").text
    rate = word_error_rate(sentence, heard)
    print(f"WER {rate:.2f} {key} {pace}: {heard!r}")
    assert rate <= MAX_WER, heard


# What a caller says for each category, and whether the phone reads it back.
CALLERS = {
    "groceries": "Hello, I need someone to help me with my shopping this week because I "
    "cannot carry the bags.",
    "meals": "Could someone cook me a hot dinner? I cannot stand at the stove any more.",
    "medical": "I need to see a doctor about the pain in my knee.",
    "transport": "I need a lift to the hospital for my appointment on Thursday.",
    "home_repair": "My kitchen tap is dripping and I need someone to fix it.",
    "housekeeping": "I need help cleaning the house and doing my washing.",
    "companionship": "I would like someone to visit me for a chat.",
    "tech_help": "My computer does not work and I need help with my television.",
    "paperwork": "Could somebody help me fill in a form for my pension please?",
    "emergency": "Help, my husband has fallen down and he is not breathing.",
    "other": "Hello, I am just calling to say hello.",
}


def test_every_category_has_a_caller():
    assert set(CALLERS) == set(KEYS)


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS)
def test_a_call_reads_back_the_categorys_own_sentence(twilio, db, key):
    call = twilio.call(CALLER, ["1", spoken(CALLERS[key]), "1"])
    print(call.transcript())
    [request] = requests_of(db)
    assert request["category"] == key
    heard = call.heard()
    if key == "emergency":
        # No readback menu in an emergency: the advice to dial at once, and nothing to confirm.
        assert EN.readback(key) not in heard
        assert any(line.startswith("This sounds like an emergency") for line in heard)
        return
    readback = heard.index(EN.readback(key))
    assert heard[readback + 1].startswith("Press 1 if that is right")
    assert problems(heard[readback - 1], max_words=None) == []  # "I heard: …" or "Thank you…"
    assert problems(" ".join(heard[readback : readback + 2])) == []
    assert request["confirmed_at"]


@pytest.mark.parametrize("key", KEYS)
def test_the_kiosk_status_speaks_the_categorys_sentence(app, client, db, key):
    with app.app_context():
        from app.db import get_db

        kiosk, token = devices.add(get_db(), "Riverside Centre", region="riverside")
    made, _ = queue.create(
        db,
        channel="kiosk",
        source_key=f"{kiosk.source_prefix}rec-1",
        stage="transcribed",
        transcript="Could you help me, please?",
        transcript_confidence=0.9,
        category=key,
    )
    body = client.get(
        f"/api/v1/voicemail/{made['id']}", headers={"Authorization": f"Bearer {token}"}
    ).json
    assert body["state"] == "ready"
    assert EN.readback(key) in body["readback"]["speech"]
    assert body["readback"]["about"] == body["category_label"] == EN.label(key)
    assert problems(body["readback"]["speech"]) == []
