"""Request classifier: categories, urgency, emergency guards, robustness and the labelled set."""

import dataclasses
import importlib.util
import json
import math
import re
import shutil
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import pipeline, queue
from app.classify import (
    DEFAULT_PATH,
    MAX_EXPANSIONS,
    MAX_TOKENS,
    MODEL_MAX_CHARS,
    MODEL_MAX_WORDS,
    TRUNCATED_NOTE,
    URGENCIES,
    CategoryDataError,
    Classification,
    UnknownLanguage,
    category_keys,
    classify,
    classify_rules,
    fuse,
    load_categories,
    model_text,
    read_examples,
)
from app.console.actions import change
from app.db import connect
from app.health import startup_warnings
from app.textmodel import (
    TextClassifier,
    Weights,
    WeightsError,
    fit,
    load_embedder,
    load_weights,
    neighbour_vote,
    softmax,
    weights_path,
)
from app.training import (
    MIN_BLIND_EMERGENCIES,
    MIN_BLIND_ROWS,
    Scored,
    metrics,
    read_heldout,
    read_rule_blind,
    score,
    tune_threshold,
    tuning_rows,
    verdicts,
)

REPO = Path(__file__).resolve().parent.parent
CATEGORY_KEYS = category_keys()


@pytest.fixture(scope="module")
def en():
    """Load the English categories once for the module."""
    return load_categories("en")


def load_bench():
    """Import bench/classify.py, which is a script rather than a package module."""
    spec = importlib.util.spec_from_file_location("bench_classify", REPO / "bench" / "classify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("could someone nip to tesco for me", "groceries"),
        ("i need my perscription picked up from boots", "groceries"),
        ("the post office has a parcel waiting for me, could someone collect it", "groceries"),
        ("I can't get to the shops, my cupboards are bare", "groceries"),
        ("can somebody cook me a hot meal on sundays", "meals"),
        ("i'd love a home-cooked dinner delivered", "meals"),
        ("i can't make my own food anymore, i need help with meals", "meals"),
        ("can someone help me sort my pills into the dosette box", "medical"),
        ("i need somebody to come to the doctors with me on monday", "medical"),
        ("my gp wants a video consultation and I need someone to sit with me for it", "medical"),
        ("Could someone take me to the hospital for my appointment on Friday", "medical"),
        ("i need a lift to the shops", "transport"),
        ("can someone drive me to my daughters in leeds", "transport"),
        ("i need to get to the hospital for my scan, can anyone give me a ride", "transport"),
        ("i fell last year and now need a ride to physio", "transport"),
        ("the sink is blocked and the water won't drain", "home_repair"),
        ("could someone clear the snow off my path", "home_repair"),
        ("my back gate's hanging off its hinges", "home_repair"),
        ("the smoke alarm needs a new battery", "home_repair"),
        ("my heating's broken, can someone look at it", "home_repair"),
        ("i need someone to do the hoovering and change the sheets", "housekeeping"),
        ("my bins need taking out", "housekeeping"),
        ("could a volunteer do my ironing", "housekeeping"),
        ("i'm so lonely, nobody ever calls", "companionship"),
        ("i'd like a cuppa and a chat with someone", "companionship"),
        ("could someone read my letters to me, my eyesight's gone", "companionship"),
        ("the telly's gone all fuzzy", "tech_help"),
        ("my computers playing up again", "tech_help"),
        ("can someone help me set up facetime on my ipad", "tech_help"),
        ("i need to fill in a form for my pension", "paperwork"),
        ("could someone help me sort out the council tax", "paperwork"),
        ("i'd like help with my gas bill", "paperwork"),
        ("can someone walk my dog", "other"),
        ("thank you for all your help", "other"),
        ("i want to be a volunteer", "other"),
        ("hello", "other"),
    ],
)
def test_category(en, text, category):
    result = classify(text, en)
    assert result.category == category, result
    assert not result.emergency


@pytest.mark.parametrize(
    "text",
    [
        "I've fallen and I can't get up",
        "ive fallen and i cant get up",
        "my husband collapsed",
        "I smell gas",
        "there's someone in my house",
        "I can't breathe",
        "my face is drooping",
        "my heating's broken and it's freezing",
        "help me i've fell down the stairs",
        "mum's had a fall and she's not moving",
        "oh no, I think he's having a heart attack",
        "my wife fell and hit her head and there's blood",
        "the kitchen's full of smoke and I can't see",
        "Um, I'm afraid I've fallen in the hall, dear, and my hip hurts",
    ],
)
def test_emergency(en, text):
    result = classify(text, en)
    assert (result.category, result.urgency, result.emergency) == ("emergency", "critical", True)


@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("the toaster gave me a shock and my hand's gone funny", True),
        ("I've had an electric shock off the lamp", True),
        ("the sofa cushion is alight", True),
        ("they've kicked the back door in", True),
        ("my lodger has been hitting me", True),
        ("he's threatening to hurt my cat and me", True),
        ("there's no point in living, I've got the pills ready", True),
        ("I'm too weak to stand and there's nobody here", True),
        ("it was a shock when the bill came", False),
        ("I got a shock off the switch last year, could someone check the wiring", False),
        ("my son had a shock when he saw the state of my garden, could someone tidy it", False),
    ],
)
def test_emergency_kinds_missed_on_cross_validation(en, text, emergency):
    result = classify(text, en)
    assert result.emergency == emergency, result


@pytest.mark.parametrize(
    "text",
    [
        "I fell last year and now need a ride to physio",
        "my chest X-ray appointment is on Friday",
        "the smoke alarm needs a new battery",
        "I'd like help with my gas bill",
        "I haven't fallen, I just need help with the bins",
        "it's not an emergency, I just need some milk",
        "my husband had a stroke years ago and I need help with his forms",
        "I was in the fire brigade and I'd like someone to chat to",
        "the fence has fallen down in the wind",
        "I can't get up the stairs to change the light bulb",
        "I'm scared there might be someone in my garden, could someone fit a security light",
        "Could someone fix my glasses, a screw has fallen out of the arm.",
    ],
)
def test_emergency_guards(en, text):
    result = classify(text, en)
    assert not result.emergency, result
    assert result.category != "emergency"


@pytest.mark.parametrize(
    "text",
    [
        "he's gone grey and isn't answering me, please come quick",
        "Mum's slumped in the chair and I can't wake her.",
        "I took all my tablets. All of them. I'm sorry.",
        "i cant feel my legs and im stuck on the bathroom floor",
        "My heart is racing and my arm's gone numb.",
        "It's freezing in here and the boiler's dead, I've no heating and I'm shaking.",
        "Me dad's after falling down the stairs and he's not moving at all.",
        "she swallowed a whole packet of paracetamol about an hour ago",
        "The heating packed in two days ago and it's bitter, I can see my breath indoors.",
        "i feel really poorly my chest is crushing and im sweating buckets",
        "I've scalded my leg with the kettle and the skin's all blistered and peeling.",
        "Me wife's gone off somewhere in her nightie, she's got dementia and it's dark out.",
        "My sugar's dropped really low and I'm shaking and can't think straight.",
        "My mother's fallen and banged her head, she's awake but very confused and being sick.",
        "He cut himself shaving and it's just pouring, it won't stop.",
        "My husband has dementia and he's gone out and I don't know where he is.",
        "I'm really worried, I think I can smell gas coming from the meter cupboard.",
    ],
)
def test_indirect_emergency(en, text):
    result = classify(text, en)
    assert (result.category, result.urgency, result.emergency) == ("emergency", "critical", True)


@pytest.mark.parametrize(
    ("text", "category"),
    [
        (
            "My friend had a fall last month, could someone visit her? She's very low.",
            "companionship",
        ),
        ("I need help paying the gas bill, it's gone sky high.", "paperwork"),
        ("The fire alarm keeps beeping, I think it needs a battery.", "home_repair"),
        ("need a lift to my cardiology check next tuesday", "transport"),
        ("Could someone come with me to the blood test appointment on Friday?", "medical"),
        ("I'd like to learn to use the emergency button on my phone.", "tech_help"),
        (
            "Could someone help me write to the council about the smoke from the bonfires?",
            "paperwork",
        ),
        (
            "Somebody needs to clear the leaves off my path, I nearly slipped yesterday.",
            "home_repair",
        ),
        ("Could someone take me to have my bloods done on Tuesday morning?", "medical"),
        ("how do i set up the emergency contacts on my new iphone", "tech_help"),
        ("I'm scared of falling in the shower, could someone fit a grab rail?", "home_repair"),
        (
            "Can someone come to the heart failure clinic with me, I never remember what they say.",
            "medical",
        ),
        (
            "My radiator is cold, I think it needs bleeding, could a handyman come round?",
            "home_repair",
        ),
        ("Could someone go with me to my blood transfusion at the hospital?", "medical"),
        (
            "My doctor says I had a mini stroke, I need a lift to the stroke clinic next week.",
            "transport",
        ),
        ("The telly's gone blue and says no signal since the storm.", "tech_help"),
        ("The kitchen tap's been dripping for a week and it's driving me mad.", "home_repair"),
    ],
)
def test_tricky_non_emergency(en, text, category):
    result = classify(text, en)
    assert not result.emergency, result
    assert result.category == category, result


@pytest.mark.parametrize(
    ("word", "family"),
    [("leaking", "leaks"), ("neighbors", "neighbour"), ("driving", "drive"), ("took", "taken")],
)
def test_word_families_meet(en, word, family):
    assert en.stem(word) == en.stem(family)


def test_tablets_are_not_a_tablet(en):
    assert en.stem("tablets") != en.stem("tablet")


def _data_phrases(node, where=""):
    """Yield (where, phrase) for every phrase string in a categories.toml table."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, list):
        for item in node:
            yield from _data_phrases(item, where)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in ("text", "tuning", "name", "label", "readback"):
                yield from _data_phrases(value, f"{where}.{key}")


def test_no_multi_word_alternatives():
    # `a|b` offers one-word alternatives: "with cooking|the cooking" means
    # "with cooking cooking" or "with the cooking", never "with cooking".
    with open(DEFAULT_PATH, "rb") as fh:
        data = tomllib.load(fh)
    bad = []
    for where, phrase in _data_phrases(data):
        words = phrase.split()
        if any(w.startswith("|") or w.endswith("|") or "||" in w for w in words):
            bad.append((where, phrase))
        for left, right in zip(words, words[1:], strict=False):
            if "|" in left + right and set(left.split("|")) & set(right.split("|")) - {"_"}:
                bad.append((where, phrase))
    assert bad == []


def test_no_phrase_expands_past_the_cap():
    # The loader keeps only the first MAX_EXPANSIONS variants of a phrase, silently: the
    # alternatives of its first words past the cap would never match.
    with open(DEFAULT_PATH, "rb") as fh:
        data = tomllib.load(fh)
    too_many = [
        (where, phrase)
        for where, phrase in _data_phrases(data)
        if math.prod(len(word.split("|")) for word in phrase.split()) > MAX_EXPANSIONS
    ]
    assert too_many == []


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("my hips are killing me, could someone hoover the stairs", "housekeeping"),
        ("i'm dying for a fish and chip supper could someone bring one round", "meals"),
        ("the laptop keeps dying halfway through my emails", "tech_help"),
        ("my sister is worried sick about her pension letter", "paperwork"),
        ("i go faint at the sight of blood, could someone come to my injection", "medical"),
        ("my husband burns every dinner he makes, could someone cook for us", "meals"),
        ("the parking at the surgery is a nightmare, could someone drive me", "transport"),
        ("i nearly died laughing at the quiz, can we do it again", "companionship"),
        ("my feet are on fire after the shops could someone fetch the heavy things", "groceries"),
        ("the chest freezer has stopped working", "home_repair"),
        ("we get on like a house on fire, could she visit again", "companionship"),
        (
            "i can't breathe a word of this to my son, could someone drive me to the bank",
            "transport",
        ),
        (
            "my computer keeps saying there's an emergency update and won't let me log in",
            "tech_help",
        ),
    ],
)
def test_idioms_are_not_emergencies(en, text, category):
    result = classify(text, en)
    assert not result.emergency
    assert result.category == category


@pytest.mark.parametrize(
    "text",
    [
        "my back's been killing me for days and now i've fallen and can't get up",
        "i think i'm dying please help",
        "i feel like i'm dying to be honest please help me",
        "the phone died and there's smoke coming from the kitchen",
        "he's killing me, he's hitting me",
    ],
)
def test_idioms_leave_real_emergencies_alone(en, text):
    assert classify(text, en).emergency


@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        # Unpunctuated: "but", "so", "because" and "now" end the guard's reach.
        ("i went to the clinic yesterday but now my husband has collapsed in the hall", True),
        ("the nurse used to come on tuesdays but now mum is not breathing properly", True),
        ("i had a fall last year and now i have fallen again and cannot get up", True),
        # "and" chains one past story, so its guard still holds.
        ("i fell last year and broke my hip so i need a lift to physio", False),
        ("i had a fall in march and i need help with the shopping", False),
        # Punctuated text keeps sentence-level guards.
        ("I saw a film about a fire last night. Now I can smell burning in the hall.", True),
        ("I went to the clinic yesterday, but I had a fall there last year.", False),
    ],
)
def test_guards_stop_at_clause_boundaries(en, text, emergency):
    assert classify(text, en).emergency is emergency


# The rules are the safety net: fusion raises emergency whenever they do, so these tables
# check the rules alone (no example vote, no model), as the fusion sees them.
def _rules_alarm(en, text):
    """Tell whether the phrase rules alone raise an emergency for `text`."""
    return classify_rules(text, en, vote=False).emergency


@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("Could someone take me to give blood at the town hall on Saturday?", False),
        ("There's an old blood stain on the carpet I can't shift.", False),
        ("I cut my finger last week and got blood on the tablecloth, can someone wash it?", False),
        ("The socket by the bed is cracked, nothing is sparking but I'd like it looked at.", False),
        ("No sparks or anything, the lights just keep tripping.", False),
        ("My back door lock is stiff and the key sticks.", False),
        ("My knees are stiff in the mornings, could someone walk the dog?", False),
        ("The coal fire won't light and the chimney needs sweeping.", False),
        ("Could someone clean out my fireplace before winter?", False),
        ("The burglar alarm panel is beeping, I think the battery is low.", False),
        ("The intruder alarm keeps going off by itself, can someone look at the sensor?", False),
        ("My shed was broken into a couple of years ago and I'd like a better lock on it.", False),
        ("Somebody tried the handle of my garage at the weekend, could someone fit a bolt?", False),
        ("The cat is choking on a hairball, is there a vet who visits?", False),
        ("I'm worried about my dog, he hasn't eaten for three days.", False),
        ("I'm scared I might fall in the bath, could someone fit a rail?", False),
        ("I'm afraid I'll fall on the ice, could someone grit my path?", False),
        ("I worry my husband will fall on the stairs at night.", False),
        ("I keep having nightmares about falling down the stairs.", False),
        ("I really don't want an ambulance, I just need a lift to the minor injuries.", False),
        ("The smoke alarm keeps beeping, it wants a new battery.", False),
        ("The CO alarm is beeping, I think the battery is low.", False),
        ("Could someone help me read my gas meter?", False),
        ("I've had a huge gas bill and I don't understand it.", False),
        ("My legs have gone on me a bit lately, could someone do my shopping?", False),
        ("There's a brown stain on the kitchen floor that won't come off.", False),
        ("The bedroom window is painted shut and I can't get any air in at night.", False),
        ("There's smoke damage on the ceiling from years ago, could someone repaint it?", False),
        ("My tablecloth has a burn mark, can it be cleaned?", False),
        ("I want to give up smoking, is there a group?", False),
        ("The shelf came down in the night, nobody was hurt, could someone put it back?", False),
        ("Mum's gone all confused with her new tablets, could someone sort her pill box?", False),
        ("My friend is a bit of a live wire, she'd love a visitor.", False),
        ("My grandson hits me up for money every week, could someone help with my budget?", False),
        ("My daughter is coming back for me at five, but I need a lift there.", False),
        ("The wind is rattling the letterbox all night, could someone fix it?", False),
        ("I can't get myself off the toilet without a rail, could someone fit one?", False),
        ("He's not drinking alcohol these days, but he needs a lift to the club.", False),
    ],
)
def test_harmless_look_alikes_do_not_alarm(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("The smoke alarm is going off and the kitchen is full of smoke.", True),
        ("I came to give blood but my husband's collapsed in the car park.", True),
        ("The fire won't light and I can smell gas all through the house.", True),
        ("The intruder alarm's going off and there's a man in my hallway.", True),
        ("I'm afraid I'll fall, I'm stuck on the floor and can't get up.", True),
        (
            "I don't want an ambulance fuss but my chest is crushing and I'm grey and sweating.",
            True,
        ),
        ("The burglar alarm is beeping and someone is trying to get in the back door.", True),
        ("My dog's choking and my husband's collapsed trying to help him.", True),
        ("I fell last year, and today I've fallen again and I can't get up.", True),
        ("He's threatening to hurt me if I tell anyone.", True),
        ("Someone rang and said they'd burn my house down if I don't pay.", True),
        ("I can't see the point in living any more.", True),
        ("I don't want to go on any more, I've had enough.", True),
        ("I don't see much point carrying on any more.", True),
        ("I don't see the point in carrying on.", True),
        ("I'm not sure I see much point carrying on.", True),
        ("There's not much point to me any more, is there.", True),
        ("my daughter is bleeding heavily after her operation and she's gone very pale", True),
        ("my son is bleeding a lot after his operation yesterday and he looks grey", True),
        ("I took my tablets twice this morning by mistake, I think I took the whole week's", True),
        (
            "I was bleeding heavily after my operation last year, now I need a lift to the clinic",
            False,
        ),
        ("I'd like help writing a card to my friend who's dying in the hospice", False),
        ("I'd like a lift to the hospice to visit my dying brother", False),
        ("I take my tablets twice a day, could someone collect my prescription", False),
        ("I took my tablets twice a day like the doctor said", False),
        ("I don't see much point carrying on with the bowls club", False),
        ("I don't see much point in carrying on with my pension form", False),
        ("there's not much point in me fixing the fence now", False),
        ("I don't see much point in going on any more", True),
        ("what's the point of me any more", True),
        ("I don't know why I bother carrying on", True),
        (
            "Honestly I'm not sure I see much point carrying on, but don't you worry about me,"
            " it's the bins I rang about.",
            True,
        ),
    ],
)
def test_real_danger_beside_a_look_alike_still_alarms(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("I fell last year and broke my wrist, now I need help with the shopping.", False),
        ("After my stroke in 2019 I can't drive, could someone take me to church?", False),
        ("My friend had a heart attack years ago and I'd like to visit her.", False),
        ("I slid off the bed this morning but I'm fine now, I just need a grab rail.", False),
        ("I had a stroke last year and my speech is slurred, could someone ring the bank?", False),
        ("Nobody was hurt but the fence blew down across the path.", False),
        ("I've never wanted to end my life, I'm just lonely.", False),
        ("I want to learn first aid in case my husband chokes.", False),
    ],
)
def test_negated_and_past_cues_do_not_alarm(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        # Falls.
        ("I've gone down between the bed and the wall and I can't shift.", True),
        ("My husband is on the floor and I can't lift him.", True),
        ("She's lying at the bottom of the stairs and not moving.", True),
        ("I've come off the ladder and I think I've broken my leg.", True),
        # Chest.
        ("I've got a tight feeling in my chest and it's going down my arm.", True),
        ("There's a heavy pressure on my chest and I feel sick.", True),
        ("It's like a weight sitting on my chest.", True),
        # Stroke.
        ("Her mouth's gone lopsided and she can't lift her arm.", True),
        ("He's talking gibberish all of a sudden and his face has dropped.", True),
        ("My husband's arm has gone floppy and his speech is slurred.", True),
        ("Dad is suddenly confused and keeps calling me by the wrong name.", True),
        # Breathing.
        ("I can't catch my breath, I'm gasping.", True),
        ("He's struggling for air and his lips are going blue.", True),
        # Fire and smoke.
        ("The curtains are on fire.", True),
        ("The electric heater is smouldering and the room is filling with smoke.", True),
        ("There's smoke coming from under the bedroom door.", True),
        # Gas.
        ("There's a strong smell of gas and I feel dizzy.", True),
        ("It smells like rotten eggs in the hall.", True),
        ("The gas is on and not lit and my husband is asleep.", True),
        # Electrical.
        ("The socket is sparking and there's a burning smell.", True),
        ("There are exposed wires hanging out of the wall.", True),
        ("The plug socket is crackling and I can smell hot plastic.", True),
        # Intruders.
        ("Someone is trying to get in through my back door.", True),
        ("There's a man in my garden trying the door.", True),
        ("There's a stranger in my kitchen.", True),
        ("Someone's broken into the house and they're still downstairs.", True),
        ("Someone's rattling the door handle and it's three in the morning.", True),
        # Threats and being hit.
        ("My son's been hitting me and he's threatening to do it again.", True),
        ("My son-in-law punched me and says he'll do it again.", True),
        ("A man at the door has got a knife.", True),
        # Self-harm.
        ("I don't want to be here any more, I've had enough.", True),
        ("I've saved up my tablets and I'm going to take them tonight.", True),
        ("I've got the pills ready.", True),
        # Not eaten or drunk for days.
        ("My mother hasn't eaten or drunk anything for three days.", True),
        ("He hasn't had a drink for two days and he's very drowsy.", True),
        ("I haven't eaten properly today, could someone bring a hot meal?", False),
    ],
)
def test_emergency_cue_families_alarm(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# A switch to the present ("but now", "and now", "but this time") starts a new clause even
# after a comma, so a guard or past marker before it cannot reach the danger after it;
# within its own clause the guard still works.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("Nobody got hurt the other time, but now he's waving a knife about.", True),
        ("No one was hurt last Christmas but now he's got a knife.", True),
        ("I had a little fall in March, and now I've fallen again and can't get up.", True),
        ("The alarm needed a battery last week, but this time the hall is full of smoke.", True),
        ("He used to shout a lot, but today he's threatening to kill me.", True),
        ("nobody was hurt last time but now he has got a knife", True),
        ("I fell last year, and now I'm nervous on the stairs.", False),
        ("Nobody was hurt when the shelf came down, but now I need someone to put it back.", False),
        ("I had a fall in January and now I'd like a grab rail by the bath.", False),
        ("The fire brigade came last week but now it all needs repainting.", False),
    ],
)
def test_a_switch_to_the_present_ends_a_guards_reach(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# Round 2 of issue #11: the cue families the rules still missed, each beside the harmless
# talk that looks like it.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        # Cuts and bleeding that will not stop.
        ("She's slit her wrists in the bathroom.", True),
        ("I cut my finger and it won't stop bleeding.", True),
        ("I've sliced my hand on a tin lid and it's gushing, I've got a towel round it.", True),
        ("There's blood spurting out of his leg where he caught it on the mower.", True),
        ("I cut my finger chopping onions, could someone bring some plasters?", False),
        ("I cut my wrist on a tin lid last month and it's healed up nicely.", False),
        # Nosebleeds that go on, on blood thinners.
        ("My wife's nose has been bleeding for over an hour and she's on warfarin.", True),
        ("I get the odd nosebleed in the dry weather, could someone fetch tissues?", False),
        # A sudden, worst-ever headache.
        ("It's the worst headache I've ever had, it came on all of a sudden.", True),
        ("He says he's never had a headache like this, like being hit with a hammer.", True),
        ("I've had a headache since Tuesday, could someone fetch paracetamol?", False),
        ("The council forms are giving me a headache, could someone help me fill them in?", False),
        # Fits that will not stop.
        ("Dad's had a seizure and it's been going ten minutes.", True),
        ("She's having one of her fits and it hasn't stopped.", True),
        ("I had a fit of giggles at the pictures, it was lovely.", False),
        ("Could someone fit a new curtain rail in the lounge?", False),
        # Choking on food.
        ("He's got a piece of meat stuck and he can't breathe.", True),
        ("There's something stuck in her throat and she can't cough it out.", True),
        ("My tablets get stuck in my throat, could they be crushed?", False),
        # Carbon monoxide alarms.
        ("The carbon monoxide alarm is going off and I've got a headache.", True),
        ("The CO detector is screaming and we both feel dizzy.", True),
        ("My CO alarm needs a new battery.", False),
        ("The carbon monoxide alarm keeps going off, I think the battery is flat.", False),
        ("Could someone fit a carbon monoxide detector by the boiler?", False),
        # Water on the electrics.
        ("Water's pouring through the ceiling onto the light fitting and it's fizzing.", True),
        ("The kitchen's flooded round the sockets and the lights keep flickering.", True),
        ("There's a drip onto the light switch from the bathroom, could a plumber come?", False),
        # On a bridge, going to jump.
        ("I'm on the bridge and I want to jump.", True),
        ("I'm stood at the edge of the cliff and nobody will miss me.", True),
        ("I'm going to jump on the bus into town, could someone meet me?", False),
        ("We used to walk on the bridge by the river, could someone take me again?", False),
        # Allergic reactions: throat or tongue swelling.
        ("My tongue's swelling up after a peanut.", True),
        ("I've been stung and my throat feels tight.", True),
        ("He's had a reaction to the new tablets and his throat is closing up.", True),
        ("I've got a sore throat, could someone fetch some lozenges?", False),
        ("My throat's swollen with this cold, could someone fetch some honey?", False),
        ("My mouth is all swollen after the dentist took a tooth out.", False),
        ("Could someone collect my EpiPen prescription from the chemist?", False),
        ("I've used his EpiPen and his lips are still swelling.", True),
        ("I've just come back from the dentist and her face has dropped on one side.", True),
        ("My glands are up and I can't breathe.", True),
        ("I'd jump at the chance of a trip out, I'm going to jump at it.", False),
        ("My grandson is on the roof fixing the aerial and I've had enough of the noise.", False),
    ],
)
def test_round_two_cue_families_and_their_look_alikes(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# Pain down the arm or in the jaw is the heart's warning only with the chest, sweat,
# sickness or breathlessness; a gas smell gone since the engineer came is over.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("The pain runs down my arm from my neck, it's my arthritis, could someone shop?", False),
        ("the ache goes down his arm from the shoulder he has arthritis", False),
        ("I've a pain in my jaw, I think it's a tooth, could I get a lift to the dentist?", False),
        ("The smell of gas went once the engineer had been, thank you.", False),
        ("the gas smell has gone since the engineer came round", False),
        ("The pain's going down my left arm and I'm all sweaty.", True),
        ("My jaw aches and I feel sick and clammy.", True),
        ("The pain goes down my arm and there's a tightness across my chest.", True),
        ("The engineer came last week, but now I can smell gas again.", True),
    ],
)
def test_arm_or_jaw_pain_alone_and_gas_gone_do_not_alarm(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# A year named marks a past event, as a month does; a switch to the present ends its reach.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("I had a stroke in 2019, could someone help with my shopping?", False),
        ("My husband fell in 2021 and broke his hip, he needs a lift to the day centre.", False),
        ("He had a heart attack back in 2015, he'd like some company.", False),
        # Any year in digits, not a list that would need this year added each January.
        ("My wife had a stroke in 1987, could someone sit with her on Sunday?", False),
        ("Mum had her heart attack in 2029, she would like a visitor.", False),
        ("I had a stroke in 2019, but now my face has dropped again.", True),
    ],
)
def test_a_year_named_is_a_past_event(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# "and" with a new subject in the present starts a clause: a past cue, guard or negation
# stays in its own.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("I had a stroke in 2019 and I've fallen and can't get up.", True),
        ("i had a stroke in 2019 and ive fallen and cant get up", True),
        ("My husband had a heart attack years ago and he's collapsed in the garden.", True),
        ("She had her hip done last month and she's fallen in the bathroom.", True),
        ("I was at the clinic last week and there's smoke coming from the kitchen.", True),
        ("I've told nobody and I've fallen over.", True),
        ("My husband had a stroke in 2018 and he is slurring his words now.", True),
        ("i had a fall last year and today ive fallen again", True),
        ("i had a stroke in 2019 and this morning my face went all lopsided", True),
        ("dad had a stroke in 2018 and mum has found him on the floor", True),
        ("my husband had a stroke years ago and the carer has found him on the floor", True),
        ("she had a heart attack in 2019 and last night she had chest pains again", True),
        ("I fell last year and today I need a grab rail fitted", False),
        ("I fell in March and yesterday the physio said I need a frame", False),
        ("My husband had a fall last month and the carer has asked for a commode", False),
        # Without a new subject in the present, "and" chains one past story, as before.
        ("I fell last year and broke my hip, could someone take me to physio?", False),
        ("I fell last year and I broke my hip.", False),
        ("Last year my husband and I both had a fall, could someone fit rails?", False),
        ("I had a fall last year and broke my wrist, could someone do my shopping?", False),
        ("I had a stroke in 2019 and I need help with my shopping.", False),
        ("My wife fell in March and she needs a lift to the hospital.", False),
        ("He had a heart attack years ago and he'd like some company.", False),
    ],
)
def test_and_with_a_new_subject_ends_a_guards_reach(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# A reassurance reaches a danger phrase just before it across a clause start; a negated one
# ("i am not ok") reassures nobody; "but" with a new subject starts a clause after a comma.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("i slipped in the kitchen and im fine i got myself up i just need a new mat", False),
        ("my husband fell in the garden and he is alright he got back up", False),
        ("i had a little fall and i am ok nobody needs to come i just want a grab rail", False),
        ("i tripped on the rug and i am not hurt but could someone tape it down", False),
        ("He fell over and he's all right now.", False),
        ("I fell, but I'm fine.", False),
        ("He fell, but he got himself up.", False),
        ("I had a fall last year, but I'm alright now.", False),
        ("he is not alright he has collapsed", True),
        ("i am not ok i have fallen and cannot get up", True),
        ("I've fallen and I'm not alright, I can't get up.", True),
        ("she's fallen and she isn't ok", True),
        ("I've fallen. I am not ok.", True),
        ("i am fine but now my husband has collapsed", True),
        ("I'm fine, but my husband has collapsed on the floor.", True),
        ("I had a stroke in 2019, but I've fallen today.", True),
    ],
)
def test_a_reassurance_after_a_fall_sets_it_aside_and_a_negated_one_does_not(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# "no" and "cannot" right before a danger phrase negate it; days with no food or water alarm.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("ive got no chest pain or anything i just need my prescription picking up", False),
        ("i cant smell gas its just the boiler making a funny noise", False),
        ("I can't smell any burning but the toaster has stopped working", False),
        ("I had nothing to eat for lunch, could someone bring a meal?", False),
        ("he's got no pulse", True),
        ("no one is here and I've fallen", True),
        ("I cannot get up, I've fallen", True),
        ("she cannot speak properly and her face is drooping", True),
        ("no, I've fallen and I can't get up", True),
        ("i can smell gas", True),
        ("I've had no food for four days", True),
        ("mum has had no water since the weekend", True),
        ("i have had nothing to eat for three days", True),
        # "no" inside a phrase about not going on is part of it, not a negation.
        ("there's no point in living like this", True),
        ("i just dont see the point in going on anymore", True),
        ("i dont think i want to be here anymore", True),
        ("I don't see the point any more, I've had enough.", True),
        ("I don't see the point in going on the coach trip if it rains.", False),
        ("I don't think I want to be here when the builders come.", False),
        ("there's no point in going on about it", False),
    ],
)
def test_no_and_cannot_negate_and_days_without_food_alarm(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# Whisper and Vosk often drop apostrophes: a contraction without one reads the same.
@pytest.mark.parametrize(
    ("bare", "written"),
    [
        ("its been three days since I ate", "it's been three days since I ate"),
        ("im on the floor in the kitchen", "i'm on the floor in the kitchen"),
        ("ive fallen over by the back door", "i've fallen over by the back door"),
        ("i cant get up off the carpet", "i can't get up off the carpet"),
        ("i dont feel right at all", "i don't feel right at all"),
        ("it wont stop bleeding", "it won't stop bleeding"),
        ("he didnt wake up this morning", "he didn't wake up this morning"),
        ("i havent eaten since friday", "i haven't eaten since friday"),
        ("she hasnt had a drink all day", "she hasn't had a drink all day"),
        ("he isnt breathing right", "he isn't breathing right"),
        ("theyre saying hes gone a funny colour", "they're saying he's gone a funny colour"),
        ("youve been ever so kind", "you've been ever so kind"),
        ("whos going to fetch my tablets", "who's going to fetch my tablets"),
        ("itll need a new fuse", "it'll need a new fuse"),
        ("i shouldve rung sooner", "i should've rung sooner"),
    ],
)
def test_contractions_without_apostrophes_read_the_same(en, bare, written):
    assert en.normalise(bare) == en.normalise(written)
    assert classify_rules(bare, en, vote=False) == classify_rules(written, en, vote=False)


@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("hes cut his hand on a tin and its pouring", True),
        ("its been two days and ive not had anything to eat or drink", True),
        ("im on the floor and i cant get up", True),
        ("its been three days since the shopping came, could someone pop to the shop", False),
    ],
)
def test_transcripts_without_apostrophes_alarm_as_written(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# "Crushing" alarms beside the chest or heart, not for fingers, cans or garlic.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("I crushed my finger in the door, could someone bring some plasters?", False),
        ("Could someone help me with crushing the cans for recycling?", False),
        ("I've been crushing garlic for the stew and now my hands smell.", False),
        ("My husband crushed his foot under the mower, could someone drive him to A&E?", False),
        ("The crush at the bus station was awful, could someone drive me into town?", False),
        ("I've got a crushing pain in my chest.", True),
        ("There's a crushing feeling in my chest and I can't get comfortable.", True),
        ("My chest feels crushed.", True),
        ("I've got a crushing feeling behind my ribs.", True),
        ("It's like my heart is being crushed in a vice.", True),
        ("i have this crushing pain in my chest and its going down my left arm", True),
    ],
)
def test_crushing_alarms_only_beside_the_chest(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


# A combo's second cue must be close by and about the same thing: "the phone won't stop
# ringing" is not a cut that will not stop bleeding.
@pytest.mark.parametrize(
    ("text", "emergency"),
    [
        ("I cut my finger chopping onions and the phone won't stop ringing.", False),
        ("i cut my finger and the phone has not stopped ringing for hours", False),
        ("i nicked my finger with the scissors and i spent hours on the phone to the bank", False),
        ("i cut my finger and the bus took over an hour", False),
        ("the carbon monoxide detector is going to be fitted by my neighbour next week", False),
        ("the carbon monoxide alarm is going and I feel dizzy", True),
        ("my dog hasnt eaten for two days can someone take him to the vet", False),
        ("i havent eaten meat for three days im trying to be healthy", False),
        ("i havent eaten chocolate for a week im on a diet", False),
        ("mum hasnt eaten anything for three days", True),
        ("I cut my hand and it has been bleeding for hours.", True),
        ("I cut my hand and it has been bleeding for an hour.", True),
        ("My wife sliced her thumb on the mandoline, and the dog won't stop barking.", False),
        (
            "I nicked my thumb on a tin this morning, could someone come round? "
            "The rain won't stop and I can't get to the shop.",
            False,
        ),
        ("The boiler's not working and I've got a stinking cold, could someone look at it?", False),
        ("Water's dripping onto the light switch, my neighbour popped round to look at it.", False),
        (
            "The heating's not working in the spare room. My grandson is coming on Sunday to fit "
            "a new thermostat, and the forecast says it'll be icy next week.",
            False,
        ),
        (
            "I meet my friend on the bridge by the cafe on Tuesdays for a coffee and a natter, "
            "could someone walk me there? She always gives me a big hug goodbye.",
            False,
        ),
        (
            "I've a pain in my jaw from a bad tooth, could someone take me to the dentist on "
            "Friday? My husband has been feeling sick all week with a tummy bug.",
            False,
        ),
        (
            "The carbon monoxide alarm my son bought is still in its box, could a volunteer put "
            "it up for me? My landline keeps ringing with sales calls.",
            False,
        ),
        ("I haven't eaten anything yet today, my daughter does my big shop once a week.", False),
        ("I've not had a bite since breakfast, could someone bring me a meal once a week?", False),
        # The real thing, its second cue close by, in its own clause or sentence.
        ("Mum hasn't had a drink for almost a week.", True),
        ("I cut my hand on the bread knife and it won't stop bleeding.", True),
        ("Grandad's sliced his hand open on a broken glass and the blood won't stop.", True),
        ("My nose has been bleeding all morning. It won't stop.", True),
        ("She's had a seizure and it hasn't stopped.", True),
        ("The carbon monoxide alarm is going off and I feel dizzy.", True),
        ("Water's coming through the light fitting and the fuse has tripped.", True),
        ("The boiler's not working and it's freezing, I'm shivering.", True),
    ],
)
def test_a_combos_second_cue_must_be_near_and_about_it(en, text, emergency):
    assert _rules_alarm(en, text) is emergency


@pytest.mark.parametrize(
    ("text", "urgency"),
    [
        ("nothing urgent, but my gutter needs clearing", "low"),
        ("it's not urgent at all, the hedge wants cutting", "low"),
        ("it isn't that urgent, my hedge wants a trim", "low"),
        ("it's not desperate but the fence is leaning", "normal"),
        ("I'm locked out of my banking app", "normal"),
        ("I've locked myself out of my email account", "normal"),
        ("I'm locked out of the house and it's getting dark", "high"),
        ("i have no bread today", "high"),
    ],
)
def test_negated_and_misplaced_urgency_cues(en, text, urgency):
    assert classify(text, en).urgency == urgency


@pytest.mark.parametrize(
    ("text", "urgency"),
    [
        ("I've run out of milk and I can't get out", "high"),
        ("could someone get my shopping today please", "high"),
        ("I need my prescription collected right away", "high"),
        ("no rush, but could someone mow the lawn", "low"),
        ("whenever suits, I'd like some shelves put up", "low"),
        ("I'd like help with my tax return some time next month", "low"),
        ("could someone help me with my tablet", "normal"),
        ("I've fallen and can't get up", "critical"),
    ],
)
def test_urgency(en, text, urgency):
    assert classify(text, en).urgency == urgency


def test_two_needs_give_runner_up(en):
    result = classify(
        "I need a lift to the hospital on Tuesday, and could someone also do a bit of "
        "shopping for me while I'm there",
        en,
    )
    assert result.category == "transport"
    assert "groceries" in [key for key, _ in result.alternatives]
    assert result.score >= result.alternatives[0][1]


def test_result_is_json_ready(en):
    result = classify("My telly remote is broken and I cannot work it", en)
    row = json.loads(json.dumps(result.to_dict()))
    assert set(row) == {"category", "score", "alternatives", "urgency", "emergency", "matched"}
    assert row["category"] == "tech_help"
    assert all(set(alt) == {"category", "score"} for alt in row["alternatives"])
    assert row["matched"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "?!...,,", "um, er, hmm", "\u2019\u2019"])
def test_empty_like_text_is_other(en, text):
    result = classify(text, en)
    assert result == Classification("other", 0.0, (), "normal", False, ())


def test_very_long_text_is_classified_quickly(en):
    text = "well you see dear I was thinking " * 2000 + "could someone mow my lawn"
    started = time.perf_counter()
    result = classify(text, en)
    assert time.perf_counter() - started < 2.0
    assert result.category in CATEGORY_KEYS


# The rules read at most MAX_TOKENS words (a stuck recording must not stall them) and say
# so among the reasons, so a coordinator knows the rest went unread.
@pytest.mark.parametrize(
    ("text", "truncated"),
    [
        ("could someone mow my lawn", False),
        ("lawn " * MAX_TOKENS, False),
        ("lawn. " * MAX_TOKENS, False),
        ("lawn " * MAX_TOKENS + "um, er. hmm.", False),
        ("lawn " * (MAX_TOKENS + 1), True),
        ("lawn. " * MAX_TOKENS + "hedge.", True),
        ("well you see dear I was thinking " * 400 + "and now I've fallen and can't get up", True),
    ],
)
def test_reading_stops_at_the_cap_and_says_so(en, caplog, text, truncated):
    result = classify(text, en)
    assert (TRUNCATED_NOTE in result.matched) is truncated
    assert (TRUNCATED_NOTE in classify_rules(text, en, vote=False).matched) is truncated
    assert ("read only the first" in caplog.text) is truncated


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_classify_never_raises(text):
    result = classify(text, load_categories_cached())
    assert result.category in CATEGORY_KEYS
    assert result.urgency in URGENCIES
    assert 0.0 <= result.score <= 1.0
    assert all(k in CATEGORY_KEYS and k != result.category for k, _ in result.alternatives)
    assert result.emergency == (result.category == "emergency")


_CACHE = {}


def load_categories_cached():
    """Return English categories, loaded once (hypothesis cannot take function fixtures)."""
    if "en" not in _CACHE:
        _CACHE["en"] = load_categories("en")
    return _CACHE["en"]


def test_every_category_has_label_and_phrases(en):
    tags = {p.tag for p in en.phrases}
    for key in CATEGORY_KEYS:
        assert en.label(key) and en.label(key) != key
        assert key in tags
    assert en.language == "en"
    assert en.label("transport") == "a ride somewhere"
    assert len(en.phrases) > 500


def test_no_phrase_belongs_to_two_categories(en):
    owners = {}
    for phrase in en.phrases:
        if phrase.pool == "category":
            owners.setdefault(phrase.tokens, set()).add(phrase.tag)
    assert {tokens: tags for tokens, tags in owners.items() if len(tags) > 1} == {}


def test_unknown_language_raises():
    with pytest.raises(UnknownLanguage):
        load_categories("xx")


def _category_table(language, key, label):
    """Return one category's table: its label, its readback sentence and one phrase."""
    return (
        f'[{language}.categories.{key}]\nlabel = "{label}"\n'
        f'readback = "{label}."\nphrases = ["{key} word"]'
    )


def test_new_language_is_just_data(tmp_path):
    categories = "\n".join(_category_table("zz", key, f"{key} label") for key in CATEGORY_KEYS)
    path = tmp_path / "categories.toml"
    path.write_text(categories + '\n[zz.urgency]\nhigh = ["pronto"]\n', encoding="utf-8")
    zz = load_categories("zz", path)
    result = classify("Meals word pronto", zz)
    assert (zz.language, zz.label("meals")) == ("zz", "meals label")
    assert (result.category, result.urgency) == ("meals", "high")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # The setting that sat under the wrong table and was silently ignored.
        (
            '[zz.text.stemming]\nno_fuzzy = ["could"]',
            "unknown key zz.text.stemming.no_fuzzy; it belongs in [zz.text]",
        ),
        ("[zz.tuning]\nmax_gapp = 3", "unknown key zz.tuning.max_gapp"),
        (
            '[zz.categories.meals]\nlabel = "x"\nreadback = "X."\nstrongg = ["y"]',
            "unknown key zz.categories.meals.strongg",
        ),
        ('[zz.urgency]\nhigh = ["pronto"]\ncritical = ["now"]', "unknown key zz.urgency.critical"),
        ('[zz.emergencies]\nguards = ["a"]', "unknown key zz.emergencies"),
        ('[zz]\nemergency = "fire"', "[zz.emergency] must be a table"),
        (
            '[[zz.emergency.combos]]\nphrases = ["a"]\nneeds = ["b"]',
            "unknown key zz.emergency.combos.needs",
        ),
    ],
)
def test_rule_file_is_checked_against_its_schema(tmp_path, extra, message):
    categories = "\n".join(
        _category_table("zz", key, f"{key} label")
        for key in CATEGORY_KEYS
        if not (key == "meals" and "categories.meals" in extra)
    )
    path = tmp_path / "categories.toml"
    path.write_text(extra + "\n" + categories + "\n", encoding="utf-8")
    with pytest.raises(CategoryDataError) as caught:
        load_categories("zz", path)
    assert str(caught.value).startswith("categories.toml: ")
    assert message in str(caught.value)


def _categories_file(tmp_path, *tables):
    """Write a categories.toml of (language, [(key, label)]) tables; return its path."""
    text = "\n".join(
        _category_table(language, key, label)
        for language, categories in tables
        for key, label in categories
    )
    # A language with no categories at all is a bare table.
    text += "".join(f'\n[{language}]\nname = "{language}"' for language, c in tables if not c)
    path = tmp_path / "categories.toml"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def test_categories_keys_order_and_labels_come_from_the_data(tmp_path):
    order = [("pets", "a pet"), ("emergency", "an emergency"), ("garden", "the garden")]
    path = _categories_file(tmp_path, ("zz", [*order, ("other", "something else")]))
    zz = load_categories("zz", path)
    assert zz.keys == category_keys(path) == ("pets", "emergency", "garden", "other")
    assert (zz.label("pets"), zz.label("garden")) == ("a pet", "the garden")
    assert classify("garden word", zz).category == "garden"
    assert classify("pets word", zz).category == "pets"


def test_shipped_categories_are_the_data_files_own():
    data = tomllib.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    assert category_keys() == tuple(data["en"]["categories"])
    assert {"emergency", "other"} <= set(category_keys())


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([("zz", [("meals", "m"), ("other", "o")])], "[zz.categories.emergency] is missing"),
        (
            [("zz", [("emergency", "e"), ("other", "o")]), ("yy", [])],
            "[yy.categories.emergency] is missing",
        ),
        ([("zz", [("meals", "m"), ("emergency", "e")])], "[zz.categories.other] is missing"),
        (
            [("zz", [("emergency", "e"), ("other", "o")]), ("yy", [("emergency", "e")])],
            "[yy.categories.other] is missing",
        ),
        (
            [
                ("zz", [("emergency", "e"), ("other", "o")]),
                ("yy", [("emergency", "e"), ("other", "o"), ("pets", "p")]),
            ],
            "key yy.categories.pets differs from zz",
        ),
        (
            [
                ("zz", [("emergency", "e"), ("other", "o")]),
                ("yy", [("other", "o"), ("emergency", "e")]),
            ],
            "yy.categories differs from zz",
        ),
        (
            [("zz", [("emergency", "e"), ("other", "o"), ("Big-Pets", "p")])],
            "category key zz.categories.Big-Pets must be lower-case",
        ),
        ([("zz", [("emergency", "e"), ("other", "")])], "zz.categories.other needs a label"),
    ],
)
def test_category_tables_are_checked_naming_file_and_key(tmp_path, tables, message):
    path = _categories_file(tmp_path, *tables)
    with pytest.raises(CategoryDataError) as caught:
        load_categories("zz", path)
    assert str(caught.value).startswith("categories.toml: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("readback", ["", 'readback = ""\n'])
def test_a_category_without_its_readback_sentence_is_refused_naming_file_and_key(
    tmp_path, readback
):
    path = _categories_file(tmp_path, ("zz", [("emergency", "e"), ("other", "o")]))
    path.write_text(path.read_text().replace('readback = "o."\n', readback), encoding="utf-8")
    with pytest.raises(CategoryDataError) as caught:
        load_categories("zz", path)
    assert str(caught.value) == "categories.toml: zz.categories.other needs a readback sentence"


def test_shipped_rule_file_passes_its_schema():
    for language in tomllib.loads(DEFAULT_PATH.read_text(encoding="utf-8")):
        assert load_categories(language).language == language


def _language_with_examples(tmp_path, examples):
    """Write a minimal zz language and its examples file; return the categories.toml path."""
    categories = "\n".join(_category_table("zz", key, f"{key} label") for key in CATEGORY_KEYS)
    path = tmp_path / "categories.toml"
    path.write_text(categories + '\n[zz.examples]\nstop_words = ["the"]\n', encoding="utf-8")
    (tmp_path / "examples").mkdir()
    lines = ["text\tcategory\turgency"] + [f"{t}\t{c}\tnormal" for t, c in examples]
    (tmp_path / "examples" / "zz.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_examples_file_gives_a_second_opinion(tmp_path):
    path = _language_with_examples(
        tmp_path,
        [("the lorry broke down", "transport"), ("the budgie sings", "other")],
    )
    zz = load_categories("zz", path)
    result = classify("my lorry broke", zz)
    assert result.category == "transport"
    assert "example: the lorry broke down" in result.matched
    assert classify("Meals word", zz).category == "meals"


def test_examples_file_with_unknown_category_raises(tmp_path):
    path = _language_with_examples(tmp_path, [("the lorry broke down", "lorries")])
    with pytest.raises(CategoryDataError):
        load_categories("zz", path)


def test_english_examples_are_loaded(en):
    assert len(en.examples.texts) >= 700
    assert set(en.examples.labels) == set(CATEGORY_KEYS)


@pytest.mark.parametrize(
    "text",
    [
        "I haven't fallen over, I just need a hand with the hoovering.",
        "A screw has fallen out of my glasses, could someone fix them?",
    ],
)
def test_guarded_words_do_not_reach_the_examples(en, text):
    assert not classify(text, en).emergency


@pytest.fixture(scope="module")
def model():
    """Load the committed English weights and the installed embedders they were trained on."""
    weights = load_weights(weights_path(REPO / "ivr_flows", "en"))
    return TextClassifier(load_embedder(weights.embedder, REPO / "speech_models"), weights)


def _verdict(category, emergency=False, score=0.8, alternatives=(), disarmed=()):
    """Return a rules verdict to fuse."""
    urgency = "critical" if emergency else "normal"
    return Classification(category, score, alternatives, urgency, emergency, (), disarmed)


GAS = ("smell gas",)
MEDICAL = (("medical", 0.3),)


def _probs(**given):
    """Return model probabilities: the given ones, the rest shared out evenly."""
    rest = (1 - sum(given.values())) / (len(CATEGORY_KEYS) - len(given))
    return {k: given.get(k, rest) for k in CATEGORY_KEYS}


@pytest.mark.parametrize(
    ("rules", "probs", "category", "urgency"),
    [
        # The rules are the safety net: a model sure it is nothing stops no emergency.
        (_verdict("emergency", True, 0.95), _probs(meals=0.99), "emergency", "critical"),
        # The model joins them: it raises an emergency the rules missed.
        (_verdict("meals"), _probs(emergency=0.9), "emergency", "critical"),
        # Nearly sure enough (half the threshold or more): a possible emergency, urgency high.
        (_verdict("meals"), _probs(emergency=0.4), "meals", "high"),
        (_verdict("meals"), _probs(emergency=0.2), "meals", "normal"),
        # Where the rules set a danger phrase aside ("I don't smell gas"), it must be surer.
        (_verdict("home_repair", disarmed=GAS), _probs(emergency=0.8), "home_repair", "high"),
        (_verdict("home_repair", disarmed=GAS), _probs(emergency=0.4), "home_repair", "normal"),
        (_verdict("home_repair", disarmed=GAS), _probs(emergency=0.97), "emergency", "critical"),
        # Both paths weigh in on the category; a confident model outvotes a weak rule.
        (_verdict("other", score=0.1), _probs(transport=0.9), "transport", "normal"),
        (_verdict("transport", alternatives=MEDICAL), _probs(medical=0.2), "transport", "normal"),
    ],
)
def test_fusion_never_lets_one_path_alone_miss_an_emergency(rules, probs, category, urgency):
    result = fuse(rules, probs, rule_weight=0.5, emergency_threshold=0.5, disarmed_threshold=0.95)
    assert (result.category, result.urgency) == (category, urgency)
    assert result.emergency is (category == "emergency")
    assert 0.0 <= result.score <= 1.0
    assert all(k != result.category for k, _ in result.alternatives)
    possible = urgency == "high"
    assert (result.alternatives[:1] == (("emergency", probs["emergency"]),)) is possible
    assert all(s >= 0.05 for k, s in result.alternatives if k != "emergency")


def test_a_possible_emergency_never_lowers_the_rules_urgency():
    rules = dataclasses.replace(_verdict("medical"), urgency="critical")
    result = fuse(rules, _probs(emergency=0.3), rule_weight=0.5, emergency_threshold=0.5)
    assert (result.category, result.urgency, result.emergency) == ("medical", "critical", False)


def test_embeddings_are_normalised_deterministic_and_robust(model):
    texts = ["I fell in the kitchen", "could someone do my shopping", "", "\ud800 nul\0 here"]
    vectors = model.embedder.embed(texts)
    assert vectors.shape == (4, model.embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.array_equal(model.embedder.embed(texts[:1])[0], vectors[0])
    assert model.embedder.embed([]).shape == (0, model.embedder.dim)
    # Similar requests sit closer together than different ones.
    a, b, c = model.embedder.embed(["I've fallen and can't get up", "I fell over", "my tap drips"])
    assert a @ b > a @ c


def test_weights_round_trip_and_refuse_garbage(tmp_path, model):
    path = tmp_path / "model" / "en.npz"
    model.weights.save(path)
    again = load_weights(path)
    assert again.labels == model.weights.labels
    assert np.allclose(again.coef, model.weights.coef)
    assert np.array_equal(again.hidden_coef, model.weights.hidden_coef)
    assert np.array_equal(again.neighbours, model.weights.neighbours)
    assert again.neighbour_share == model.weights.neighbour_share
    vectors = model.embedder.embed(["I need a lift to the doctor", "the tap drips"])
    assert np.allclose(again.probabilities(vectors), model.weights.probabilities(vectors))
    assert again.emergency_threshold == model.weights.emergency_threshold
    path.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="not a classifier weights file"):
        load_weights(path)
    with pytest.raises(WeightsError, match="classify train"):
        load_weights(tmp_path / "missing.npz")


def test_weights_without_a_hidden_layer_still_load_and_run(tmp_path):
    """Weights trained before the hidden layer are logistic regression, and still work."""
    rng = np.random.default_rng(0)
    labels = ("emergency", "meals", "other")
    linear = Weights(
        labels=labels,
        mean=rng.normal(size=4),
        scale=rng.uniform(0.5, 2, size=4),
        coef=rng.normal(size=(3, 4)),
        bias=rng.normal(size=3),
        embedder="e5-small",
    )
    path = tmp_path / "en.npz"
    linear.save(path)
    with np.load(path) as data:
        # As an older file: no hidden layer stored at all.
        old = {k: data[k] for k in data.files if not k.startswith("hidden_")}
    np.savez(path, **old)
    again = load_weights(path)
    x = rng.normal(size=(2, 4))
    logits = ((x - linear.mean) / linear.scale) @ linear.coef.T + linear.bias
    assert len(again.hidden_bias) == 0
    assert np.allclose(again.probabilities(x), softmax(logits), atol=1e-5)


def test_the_classifier_is_its_networks_averaged(model):
    """Networks from several seeds join into one wider network that averages their logits."""
    rows = read_examples(REPO / "ivr_flows" / "examples" / "en.tsv")[::40]
    x = model.embedder.embed([t for t, _ in rows])
    labels = sorted({c for _, c in rows})
    joined = fit(x, [c for _, c in rows], labels, "e5-small+minilm-l6", seeds=2)
    again = fit(x, [c for _, c in rows], labels, "e5-small+minilm-l6", seeds=2)
    assert np.array_equal(joined.hidden_coef, again.hidden_coef)
    first = fit(x, [c for _, c in rows], labels, "e5-small+minilm-l6", seeds=1)
    units = len(first.hidden_bias)
    assert len(joined.hidden_bias) == 2 * units
    assert np.array_equal(joined.hidden_coef[:units], first.hidden_coef)
    scaled = (x - joined.mean) / joined.scale

    def logits(coef, bias, out, out_bias):
        return np.maximum(scaled @ coef.T + bias, 0) @ out.T + out_bias

    halves = [slice(0, units), slice(units, 2 * units)]
    # Each network's own output layer is twice its share of the joined one.
    own = [
        logits(joined.hidden_coef[h], joined.hidden_bias[h], 2 * joined.coef[:, h], 0)
        for h in halves
    ]
    expected = softmax((own[0] + own[1]) / 2 + joined.bias)
    probabilities = joined.probabilities(x)
    assert np.allclose(probabilities, expected, atol=1e-5)
    trained = [labels.index(c) for _, c in rows]
    assert (probabilities.argmax(axis=1) == trained).mean() > 0.5


def _small_network():
    """Return a tiny valid network's weights."""
    return Weights(
        labels=("emergency", "meals", "other"),
        mean=np.zeros(4),
        scale=np.ones(4),
        coef=np.ones((3, 2)),
        bias=np.zeros(3),
        embedder="e5-small",
        hidden_coef=np.ones((2, 4)),
        hidden_bias=np.zeros(2),
        neighbours=np.eye(4)[:3],
        neighbour_labels=np.array([0, 1, 2]),
        neighbour_share=0.25,
    )


def _with(arrays=None, meta=None):
    """Return a change to a stored weights file: arrays replaced, meta keys set."""

    def change(stored):
        if meta is not None:
            table = json.loads(str(stored["meta"]))
            table = meta if not isinstance(meta, dict) else table | meta
            stored["meta"] = np.array(json.dumps(table))
        return stored | (arrays or {})

    return change


NAN = float("nan")


@pytest.mark.parametrize(
    "change",
    [
        _with({"coef": np.array([[1, NAN]] * 3)}),
        _with({"hidden_coef": np.full((2, 4), np.inf)}),
        _with({"bias": np.array([0, np.inf, 0])}),
        _with({"scale": np.zeros(4)}),
        _with({"mean": np.array(0.0)}),
        _with({"mean": np.array(["a", "b", "c", "d"])}),
        _with({"hidden_bias": np.zeros((2, 2))}),
        _with({"neighbour_labels": np.array([0.0, 1.5, 2.0])}),
        _with(meta=[]),
        _with(meta={"temperature": None}),
        _with(meta={"temperature": 0}),
        _with(meta={"temperature": -1}),
        _with(meta={"emergency_threshold": -1}),
        _with(meta={"rule_weight": 5}),
        _with(meta={"neighbour_share": 2}),
        _with(meta={"neighbour_k": 0}),
        _with(meta={"neighbour_temperature": 0}),
        _with(meta={"calibration": [1]}),
        _with(meta={"embedder": 7}),
        # Each value finite, but together not: overflow, a denormal scale, 0/0 in the vote.
        _with({"coef": np.full((3, 2), 3e38)}),
        _with({"hidden_bias": np.full(2, 3e38)}),
        _with({"scale": np.full(4, 1e-45)}),
        _with(meta={"neighbour_temperature": 1e-300}),
        # A calibration whose logistic overflows; numbers JSON allows but floats do not.
        _with(meta={"calibration": [1.0, -1000.0]}),
        _with(meta={"calibration": [1e6, 0.0]}),
        _with(meta={"temperature": 10**400}),
        _with({"meta": np.array('{"info":' + "[" * 100_000 + "]" * 100_000 + "}")}),
        # Layers whose shapes disagree.
        _with({"hidden_coef": np.zeros((5, 4)), "hidden_bias": np.zeros(5)}),
        _with({"hidden_coef": np.zeros((2, 7))}),
        _with({"bias": np.zeros(2)}),
        _with({"scale": np.ones(3)}),
        # A few hundred kilobytes that would unpack to 300 MB.
        _with({"padding": np.zeros(300 * 1024 * 1024, np.uint8)}),
    ],
)
def test_weights_with_values_that_cannot_work_are_refused_naming_the_file(tmp_path, change):
    """A NaN would pick categories silently and never raise an emergency: refuse it."""
    path = tmp_path / "en.npz"
    _small_network().save(path)
    with np.load(path) as data:
        stored = {k: data[k] for k in data.files}
    np.savez_compressed(path, **change(stored))
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        load_weights(path)


def test_a_small_network_passes_the_checks(tmp_path):
    path = tmp_path / "en.npz"
    _small_network().save(path)
    assert load_weights(path).probabilities(np.eye(4)).shape == (4, 3)


def _cut(data):
    """Return the weights without their last 100 bytes, as a copy interrupted would be."""
    return data[:-100]


def _flip(data):
    """Return the weights with one byte in the middle changed."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.mark.parametrize("damage", [lambda d: b"", _cut, lambda d: d[:30000], _flip])
def test_damaged_weights_are_a_weights_error_naming_the_file(tmp_path, model, damage):
    path = tmp_path / "en.npz"
    model.weights.save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(WeightsError, match=f"{path}: not a classifier weights file"):
        load_weights(path)


def test_weights_are_saved_whole_or_not_at_all(tmp_path, model):
    path = tmp_path / "model" / "en.npz"
    model.weights.save(path)
    model.weights.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["en.npz"]
    assert path.stat().st_mode & 0o777 == 0o644
    assert load_weights(path).labels == model.weights.labels


@pytest.mark.parametrize(
    ("text", "category", "emergency"),
    [
        ("I haven't had a proper meal since my daughter left", "meals", False),
        ("I fell last year and need a grab rail fitting", "home_repair", False),
        ("my husband's gone grey and he's clutching his chest", "emergency", True),
        ("I'm thinking of ending it all", "emergency", True),
    ],
)
def test_model_understands_indirect_requests(en, model, text, category, emergency):
    result = classify(text, en, model)
    assert (result.category, result.emergency) == (category, emergency)
    assert any(m.startswith("model: ") for m in result.matched)


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=400))
def test_classify_with_the_model_never_raises(text):
    result = classify(text, load_categories_cached(), _model_cached())
    assert result.category in CATEGORY_KEYS
    assert 0.0 <= result.score <= 1.0
    assert result.emergency == (result.category == "emergency")


def _model_cached():
    """Return the text classifier, loaded once (hypothesis cannot take function fixtures)."""
    if "model" not in _CACHE:
        weights = load_weights(weights_path(REPO / "ivr_flows", "en"))
        embedder = load_embedder(weights.embedder, REPO / "speech_models")
        _CACHE["model"] = TextClassifier(embedder, weights)
    return _CACHE["model"]


HELDOUT = {"A": "en.tsv", "B": "en_b.tsv", "C": "en_c.tsv"}

# Four neighbours on a circle: two "a" near (1, 0), one "b" at (0, 1), one "c" at (-1, 0).
_NEAR = np.array([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0], [-1.0, 0.0]])
_NEAR_LABELS = np.array([0, 0, 1, 2])


@pytest.mark.parametrize(
    ("point", "k", "temperature", "winner", "share"),
    [
        ((1.0, 0.0), 2, 0.05, 0, 1.0),  # both nearest are "a"
        ((0.0, 1.0), 1, 0.05, 1, 1.0),  # the one nearest is "b"
        ((0.0, 1.0), 4, 10.0, 0, 0.5),  # everyone votes, almost evenly: "a" has two
        ((-1.0, 0.0), 2, 0.02, 2, 0.99),  # the closer neighbour outweighs the farther
        ((1.0, 0.0), 50, 0.05, 0, 0.9),  # k beyond the bank means every neighbour
    ],
)
def test_neighbour_vote_weighs_the_nearest_examples(point, k, temperature, winner, share):
    vote = neighbour_vote(np.array([point]), _NEAR, _NEAR_LABELS, 3, k, temperature)
    assert vote.shape == (1, 3)
    assert np.isclose(vote.sum(), 1.0)
    assert vote[0].argmax() == winner
    assert vote[0, winner] >= share - 0.02


def test_rule_blind_rows_are_read_from_the_examples(tmp_path):
    path = tmp_path / "en.tsv"
    path.write_text(
        "text\tcategory\turgency\trules_seen\n"
        "seen\tmeals\tnormal\t1\nfresh\tmeals\tnormal\t0\nunmarked\tmeals\tnormal\t\n",
        encoding="utf-8",
    )
    assert read_rule_blind(path) == {"fresh"}
    shipped = REPO / "ivr_flows" / "examples" / "en.tsv"
    assert len(read_rule_blind(shipped)) >= MIN_BLIND_ROWS


def _scored(n, emergencies):
    """Return n scored rows named r0.., the first `emergencies` of them emergencies."""
    silent = Classification("other", 0.0, (), "normal", False, ())
    return [
        Scored(f"r{i}", "emergency" if i < emergencies else "other", i < emergencies, silent, {})
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("blind_rows", "blind_emergencies", "tuned_on_blind"),
    [
        (MIN_BLIND_ROWS, MIN_BLIND_EMERGENCIES, True),
        (MIN_BLIND_ROWS - 1, MIN_BLIND_EMERGENCIES, False),
        (MIN_BLIND_ROWS, MIN_BLIND_EMERGENCIES - 1, False),
    ],
)
def test_fusion_is_tuned_on_rule_blind_rows_when_there_are_enough(
    blind_rows, blind_emergencies, tuned_on_blind
):
    rows = _scored(blind_rows + 100, blind_emergencies)
    blind = {s.text for s in rows[:blind_rows]}
    chosen = tuning_rows(rows, blind)
    assert len(chosen) == (blind_rows if tuned_on_blind else len(rows))


def _alarming(n, emergencies, rule_alarms, model_p):
    """Return scored rows: emergencies the model gives model_p, calm rows it gives model_p - 0.4,
    the rules raising the first `rule_alarms` calm rows."""
    loud = Classification("emergency", 0.9, (), "critical", True, ())
    silent = Classification("other", 0.0, (), "normal", False, ())
    rows = []
    for i in range(n):
        emergency = i < emergencies
        rules = loud if emergencies <= i < emergencies + rule_alarms else silent
        p = model_p if emergency else model_p - 0.4
        rows.append(
            Scored(
                f"r{i}",
                "emergency" if emergency else "other",
                emergency,
                rules,
                {"emergency": p, "other": 1 - p},
            )
        )
    return rows


@pytest.mark.parametrize(
    ("rule_alarms", "model_p", "threshold"),
    [
        # Rules quiet: the model's threshold catches every emergency, no calm row at 0.3.
        (0, 0.7, 0.7),
        # Rules alarm on 3 of 100 calm rows (over the 2 % target on their own): the model
        # still catches the emergencies, rather than being pushed to its highest threshold.
        (3, 0.7, 0.7),
        (3, 0.5, 0.5),
    ],
)
def test_the_emergency_threshold_reaches_for_recall_when_the_rules_alone_alarm_too_much(
    rule_alarms, model_p, threshold
):
    rows = _alarming(120, 20, rule_alarms, model_p)
    chosen, _ = tune_threshold(rows)
    assert chosen <= threshold
    caught = [s.rules.emergency or s.probabilities["emergency"] >= chosen for s in rows[:20]]
    assert all(caught)


def test_the_emergency_threshold_keeps_a_margin_below_the_faintest_emergency_seen():
    # Every emergency at 0.7, calm rows just under 0.3: any threshold from 0.3 to 0.7 catches
    # all with no false alarm; the lowest leaves room for a fainter emergency next time.
    rows = _alarming(120, 20, 0, 0.7)
    assert tune_threshold(rows) == (0.3, 0.3)
    # With calm rows up to 0.5 the cap (2 % of 100) holds it at their level.
    louder = [
        dataclasses.replace(s, probabilities={"emergency": 0.5 + 0.01 * i, "other": 0.5})
        for i, s in enumerate(rows[20:25])
    ]
    chosen, _ = tune_threshold(rows[:20] + louder + rows[25:])
    assert chosen == 0.55


def test_a_cue_the_rules_set_aside_needs_the_model_surer_than_any_calm_request_seen():
    """Past or negated danger ("I fell last year"): above the calm rows, not at the threshold."""
    set_aside = Classification("other", 0.0, (), "normal", False, (), ("fell",))
    rows = _alarming(120, 20, 0, 0.7)
    # Calm rows whose cue the rules set aside, which the model still gives 0.62 and 0.74.
    rows[20:22] = [
        dataclasses.replace(s, rules=set_aside, probabilities={"emergency": p, "other": 1 - p})
        for s, p in zip(rows[20:22], (0.62, 0.74), strict=True)
    ]
    # An emergency the rules set aside too ("I'm all right, it's just I've fallen"), at 0.95.
    rows[0] = dataclasses.replace(
        rows[0], rules=set_aside, probabilities={"emergency": 0.95, "other": 0.05}
    )
    assert tune_threshold(rows) == (0.3, 0.75)
    # An emergency set aside at 0.7 comes first: caught, with the calm 0.74 still raised.
    rows[0] = dataclasses.replace(rows[0], probabilities={"emergency": 0.7, "other": 0.3})
    assert tune_threshold(rows) == (0.3, 0.65)


_LONG = " ".join(f"w{i}" for i in range(1000))


@pytest.mark.parametrize(
    ("text", "read"),
    [
        # What speech engines write for no words, and too few words, are not for the model.
        ("[Music]", None),
        ("[BLANK_AUDIO]", None),
        ("\u266a \u266a", None),
        ("'", None),
        ("1", None),
        ("\U0001f525", None),
        ("fire", None),
        ("[Music] I've fallen [Music]", "I've fallen"),
        ("I've fallen", "I've fallen"),
        # A rambling text: its first and last halves; one endless word: a bounded piece.
        (
            _LONG,
            " ".join(_LONG.split()[: MODEL_MAX_WORDS // 2] + ["..."])
            + " "
            + " ".join(_LONG.split()[-MODEL_MAX_WORDS // 2 :]),
        ),
        ("help me " + "x" * 100_000, ("help me " + "x" * 100_000)[:MODEL_MAX_CHARS]),
        # Letters of three bytes each cost the engines three times as much: bytes are capped.
        ("help me " + "\ua74f" * 1000, "help me " + "\ua74f" * ((MODEL_MAX_CHARS - 8) // 3)),
    ],
)
def test_the_model_reads_words_and_a_bounded_length(text, read):
    assert model_text(text) == read
    assert read is None or len(read.encode()) <= MODEL_MAX_CHARS


@pytest.mark.parametrize(
    "text", ["[Music]", "\u266a", "'", "1", "\U0001f525", "[BLANK_AUDIO]", "(inaudible) ."]
)
def test_a_call_with_no_words_is_no_emergency(en, model, text):
    # The model alone called these an emergency (0.67-0.87): a silent call raised an alarm.
    assert not classify(text, en, model).emergency


@pytest.mark.parametrize(
    "text",
    [
        "fire",
        "help " * 400 + "and now I've fallen and I can't get up",
        "[Music] my husband's collapsed and he's not breathing [Music]",
    ],
)
def test_emergencies_beside_noise_or_rambling_are_still_caught(en, model, text):
    assert classify(text, en, model).emergency


def test_the_example_vote_stands_in_only_when_there_is_no_model(en, model):
    text = "could someone cut my hedge and mow the lawn"
    assert any(m.startswith("example: ") for m in classify(text, en).matched)
    fused = classify(text, en, model)
    assert not any(m.startswith("example: ") for m in fused.matched)
    assert any(m.startswith("model: ") for m in fused.matched)


@pytest.fixture(scope="module", params=sorted(HELDOUT))
def heldout(request, en, model):
    """Score a held-out set, never trained on, with the rules and the model."""
    rows = read_heldout(REPO / "ivr_flows" / "heldout" / HELDOUT[request.param])
    embeddings = model.embedder.embed([t for t, *_ in rows])
    return request.param, score(rows, embeddings, en, model.weights)


@pytest.mark.parametrize(("name", "least"), [("en.tsv", 300), ("en_b.tsv", 200), ("en_c.tsv", 300)])
def test_heldout_sets_are_large_and_apart_from_the_training_examples(name, least):
    rows = read_heldout(REPO / "ivr_flows" / "heldout" / name)
    examples = read_examples(REPO / "ivr_flows" / "examples" / "en.tsv")
    assert len(rows) >= least
    assert {c for _, c, _ in rows} == set(CATEGORY_KEYS)
    assert all(emergency == (c == "emergency") for _, c, emergency in rows)
    assert not {t for t, *_ in rows} & {t for t, _ in examples}


# Measured when the weights were trained on 1,761 examples (bench/classify.py), fusion then
# rules alone:
#   A: accuracy 0.926 / 0.886, emergencies 67 of 67 / 62, false alarms 2.7 % / 1.6 %,
#      calibration error 0.012;
#   B: accuracy 0.907 / 0.864, emergencies 49 of 50 / 45, false alarms 2.4 % / 2.4 %,
#      calibration error 0.038;
#   C: accuracy 0.916 / 0.883, emergencies 61 of 66 / 60, false alarms 2.6 % / 0.8 %,
#      calibration error 0.017.
# The targets (0.95, every emergency, 2 %) are not reached yet; these gates sit a
# little below what was met, so they stop it getting worse without failing on noise.
GATES = {
    "A": {"accuracy": 0.91, "emergency_recall": 0.98, "false_alarms": 0.035},
    "B": {"accuracy": 0.89, "emergency_recall": 0.96, "false_alarms": 0.035},
    "C": {"accuracy": 0.90, "emergency_recall": 0.9, "false_alarms": 0.035},
}


def test_fusion_meets_what_it_reached_on_the_heldout_sets(heldout, model):
    name, scored = heldout
    gate = GATES[name]
    fused = metrics(scored, verdicts(scored, "fusion", model.weights))
    rules = metrics(scored, verdicts(scored, "rules", model.weights))
    assert fused["accuracy"] >= gate["accuracy"]
    assert fused["emergency_recall"] >= gate["emergency_recall"]
    assert fused["false_alarms"] <= gate["false_alarms"]
    assert fused["accuracy"] > rules["accuracy"]
    assert fused["emergency_recall"] > rules["emergency_recall"]
    # The score is a calibrated confidence: within 10 points of how often it is right.
    assert fused["calibration_error"] <= 0.1


def test_rules_alone_still_classify_when_the_text_model_is_missing(make_app, models_dir):
    app = make_app(MODELS_DIR=models_dir({"whisper-tiny-en": "installed"}))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["classify", "there's smoke in the kitchen", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert result.stderr.startswith("warning: classifying by the rules alone: ")
    assert (answer["category"], answer["emergency"]) == ("emergency", True)
    assert not any(m.startswith("model: ") for m in answer["matched"])
    warnings = startup_warnings(app)
    assert any(
        w.startswith("warning: CARECALL_TEXT_MODEL=e5-small+minilm-l6: Text model 'e5-small'")
        and w.endswith("classifying by the rules alone")
        for w in warnings
    )


def _flows(tmp_path, examples, heldout, more_heldout=()):
    """Write a flows folder with the real categories, the examples and two held-out files."""
    flows = tmp_path / "flows"
    (flows / "examples").mkdir(parents=True)
    (flows / "heldout").mkdir()
    (flows / "categories.toml").write_bytes(DEFAULT_PATH.read_bytes())
    # The app refuses a flows folder without a phone flow for its default language.
    (flows / "en.toml").write_bytes((DEFAULT_PATH.parent / "en.toml").read_bytes())
    (flows / "points.toml").write_bytes((DEFAULT_PATH.parent / "points.toml").read_bytes())
    lines = ["text\tcategory\turgency"] + [f"{t}\t{c}\tnormal" for t, c in examples]
    (flows / "examples" / "en.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = ["text\tcategory\temergency"] + [
        f"{t}\t{c}\t{int(c == 'emergency')}" for t, c in heldout
    ]
    (flows / "heldout" / "en.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = ["text\tcategory\temergency"] + [
        f"{t}\t{c}\t{int(c == 'emergency')}" for t, c in more_heldout
    ]
    (flows / "heldout" / "en_b.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return flows


def test_train_installs_better_weights_and_refuses_worse(tmp_path, make_app):
    every = read_examples(REPO / "ivr_flows" / "examples" / "en.tsv")
    heldout = [(t, c) for t, c, _ in read_heldout(REPO / "ivr_flows" / "heldout" / "en.tsv")]
    heldout_b = [(t, c) for t, c, _ in read_heldout(REPO / "ivr_flows" / "heldout" / "en_b.tsv")]
    by_category = {}
    for text, category in every:
        by_category.setdefault(category, []).append((text, category))
    good = [row for rows in by_category.values() for row in rows[:6]]
    flows = _flows(tmp_path, good, heldout[::5], heldout_b[::5])
    app = make_app(FLOWS_DIR=str(flows))
    # A coordinator's correction teaches it; one repeating a row of any held-out file stays out.
    db = connect(app.config["DATABASE"])
    texts = ("the boiler is banging and there's no hot water", heldout[0][0], heldout_b[0][0])
    for text in texts:
        item, _ = queue.create(
            db, channel="phone", phone="+15550000001", transcript=text, category="other"
        )
        change(db, item["id"], {"category": "home_repair"}, actor="user:coordinator1")
    db.close()
    result = app.test_cli_runner().invoke(args=["classify", "train"])
    assert result.exit_code == 0, result.output
    assert f"training on {len(good) + 1} rows (3 corrections; 2 held-out rows left out)" in (
        result.output
    )
    # Both held-out files are scored, as one pool.
    pooled = len(heldout[::5]) + len(heldout_b[::5])
    assert f"({pooled} requests)" in result.output
    assert "held-out before: rules accuracy" in result.output
    assert "held-out after:  fusion accuracy" in result.output
    trained = load_weights(flows / "model" / "en.npz")
    assert trained.info["rows"] == len(good) + 1
    # Labels shuffled among the examples make a worse model, which is not installed.
    labels = [c for _, c in good]
    worse = [(t, labels[(i * 7 + 3) % len(labels)]) for i, (t, _) in enumerate(good)]
    _flows(tmp_path / "again", worse, heldout[::5], heldout_b[::5])
    (flows / "examples" / "en.tsv").write_text(
        (tmp_path / "again" / "flows" / "examples" / "en.tsv").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    result = app.test_cli_runner().invoke(args=["classify", "train"])
    assert result.exit_code != 0
    assert "score lower on the held-out set" in result.output
    assert load_weights(flows / "model" / "en.npz").info == trained.info


def _first_of_each(n):
    """Return the first n examples of each category, those examples by category, and set A."""
    heldout = [(t, c) for t, c, _ in read_heldout(REPO / "ivr_flows" / "heldout" / "en.tsv")]
    by_category = {}
    for text, category in read_examples(REPO / "ivr_flows" / "examples" / "en.tsv"):
        by_category.setdefault(category, []).append((text, category))
    return [row for rows in by_category.values() for row in rows[:n]], by_category, heldout


def test_train_learns_a_repeated_text_once_and_refuses_a_category_it_cannot_check(
    tmp_path, make_app
):
    good, by_category, heldout = _first_of_each(5)
    # Each row again, some in capitals: on both sides of a fold they would leak.
    repeated = good + [(t.upper() if i % 2 else t, c) for i, (t, c) in enumerate(good)]
    # A held-out request in capitals and other spacing is still the held-out request.
    text, category = heldout[0]
    repeated.append((" " + text.upper().replace(" ", "  "), category))
    flows = _flows(tmp_path, repeated, heldout[::9], heldout[1::9])
    result = make_app(FLOWS_DIR=str(flows)).test_cli_runner().invoke(args=["classify", "train"])
    assert result.exit_code == 0, result.output
    assert (
        f"training on {len(good)} rows (0 corrections; 1 held-out rows left out; "
        f"{len(good)} repeated texts learnt once)"
    ) in result.output
    assert load_weights(flows / "model" / "en.npz").info["rows"] == len(good)
    few = [row for row in good if row[1] != "paperwork"] + by_category["paperwork"][:2]
    flows = _flows(tmp_path / "few", few, heldout[::9], heldout[1::9])
    result = make_app(FLOWS_DIR=str(flows)).test_cli_runner().invoke(args=["classify", "train"])
    assert result.exit_code != 0
    assert "every category needs 5; paperwork has 2" in result.output
    assert not (flows / "model" / "en.npz").exists()


def test_train_scores_the_weights_in_use_on_their_own_text_model(tmp_path, make_app, models_dir):
    """A change of text model is judged against the classifier it replaces, not the rules."""
    good, by_category, heldout = _first_of_each(5)
    flows = _flows(tmp_path, good, heldout[::9], heldout[1::9])
    result = (
        make_app(FLOWS_DIR=str(flows), TEXT_MODEL="minilm-l6")
        .test_cli_runner()
        .invoke(args=["classify", "train"])
    )
    assert result.exit_code == 0, result.output
    assert load_weights(flows / "model" / "en.npz").embedder == "minilm-l6"
    app = make_app(FLOWS_DIR=str(flows))
    result = app.test_cli_runner().invoke(args=["classify", "train", "--force"])
    assert result.exit_code == 0, result.output
    assert "the weights in use read minilm-l6; scoring them on it" in result.output
    assert "held-out before: fusion accuracy" in result.output
    assert load_weights(flows / "model" / "en.npz").embedder == "e5-small+minilm-l6"
    # With the old model gone, the rules stand in for the weights it read.
    folder = models_dir({"whisper-tiny-en": "installed", "e5-small": "installed"})
    app = make_app(FLOWS_DIR=str(flows), TEXT_MODEL="e5-small", MODELS_DIR=folder)
    result = app.test_cli_runner().invoke(args=["classify", "train", "--force"])
    assert result.exit_code == 0, result.output
    assert "read e5-small+minilm-l6, which cannot load" in result.output
    assert "held-out before: rules accuracy" in result.output


def test_the_app_reads_the_categories_in_its_flows_folder(tmp_path, make_app):
    flows = tmp_path / "flows"
    shutil.copytree(REPO / "ivr_flows", flows)
    toml = flows / "categories.toml"
    text = toml.read_text(encoding="utf-8")
    toml.write_text(text.replace('"a ride somewhere"', '"a lift somewhere"', 1), encoding="utf-8")
    app = make_app(FLOWS_DIR=str(flows))
    with app.app_context():
        assert pipeline.categories_for("en").label("transport") == "a lift somewhere"
    with make_app().app_context():
        assert pipeline.categories_for("en").label("transport") == "a ride somewhere"


def test_train_refuses_while_another_run_holds_the_lock(tmp_path, make_app):
    import fcntl

    every = read_examples(REPO / "ivr_flows" / "examples" / "en.tsv")
    heldout = [(t, c) for t, c, _ in read_heldout(REPO / "ivr_flows" / "heldout" / "en.tsv")]
    flows = _flows(tmp_path, every[::20], heldout[::10], heldout[1::10])
    app = make_app(FLOWS_DIR=str(flows))
    lock = flows / "model" / "en.lock"
    lock.parent.mkdir()
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = app.test_cli_runner().invoke(args=["classify", "train"])
    assert result.exit_code != 0
    assert f"another `classify train` holds {lock}" in result.output
    assert not (flows / "model" / "en.npz").exists()


def test_train_names_each_heldout_file_and_refuses_an_empty_one(tmp_path, make_app):
    every = read_examples(REPO / "ivr_flows" / "examples" / "en.tsv")
    heldout = [(t, c) for t, c, _ in read_heldout(REPO / "ivr_flows" / "heldout" / "en.tsv")]
    flows = _flows(tmp_path, every[::40], heldout[::10])
    app = make_app(FLOWS_DIR=str(flows))
    result = app.test_cli_runner().invoke(args=["classify", "train"])
    assert result.exit_code != 0
    assert f"{flows / 'heldout' / 'en_b.tsv'}: no held-out requests in it" in result.output


def test_classify_says_when_it_falls_back_to_the_rules(make_app):
    app = make_app(TEXT_MODEL="e5-small", MODELS_DIR=str(REPO / "ivr_flows"))
    result = app.test_cli_runner().invoke(args=["classify", "my husband collapsed"])
    assert result.exit_code == 0, result.output
    assert "warning: classifying by the rules alone: " in result.output
    assert result.output.rstrip().endswith("emergency      critical my husband collapsed")


def test_text_model_none_classifies_by_rules_alone_without_a_warning(make_app):
    app = make_app(TEXT_MODEL="none")
    result = app.test_cli_runner().invoke(
        args=["classify", "I need a lift to the doctor", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert not any(m.startswith("model: ") for m in json.loads(result.output)["matched"])
    assert not [w for w in startup_warnings(app) if "TEXT_MODEL" in w]


def _phone_sentences():
    """Return every phone prompt that reads a category label back, from ivr_flows/en.toml."""
    flows = tomllib.loads((REPO / "ivr_flows" / "en.toml").read_text(encoding="utf-8"))
    found = []

    def walk(table):
        for value in table.values():
            if isinstance(value, dict):
                walk(value)
            elif isinstance(value, str) and "{category}" in value:
                found.append(value)

    walk(flows)
    return found


@pytest.mark.parametrize("template", _phone_sentences())
def test_labels_read_back_as_a_listener_hears_them(en, template):
    for key in CATEGORY_KEYS:
        sentence = template.replace("{category}", en.label(key))
        spoken = sentence.lower()
        assert "help with help" not in spoken and "with help with" not in spoken, sentence
        assert not any(mark in sentence for mark in ("..", "?.", ",.", " .")), sentence


def test_latency_bench_times_every_path_against_the_raw_embedding(en, model):
    bench = load_bench()
    result = bench.timings(["I've run out of milk", "my husband collapsed"], en, model)
    assert set(result) == {"rules", "embedding", "model", "fusion"}
    for m in result.values():
        assert 0 < m["median"] <= m["p95"]
        assert 0 <= m["cpu_median"] <= m["cpu_p95"]
    # The rules alone never run the embedding, so they cost a fraction of it.
    assert result["rules"]["cpu_median"] < result["embedding"]["cpu_median"]
    assert bench.rss_mb() > 0
