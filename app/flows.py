"""Phone flows as data: each language's prompts and menus from ivr_flows/<language>.toml."""

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .sentences import fill

# The accessibility contract: a key means the same thing in every menu of every language.
KEYS = {"1": "yes", "2": "no", "*": "repeat", "0": "person"}
MEANINGS = {meaning: key for key, meaning in KEYS.items()}
# What a menu's "yes" or "no" may lead to; app/telephony/views.py carries each one out.
ACTIONS = frozenset(
    {
        "record",
        "status",
        "confirm",
        "rerecord",
        "goodbye",
        "voicemail",
        "main",
        "person",
        "emergency",
        "check_in",  # a volunteer calling about a job taken (app/visits.py)
        "check_out",
        "caller",  # on to the greeting and main menu, as any caller hears them
    }
)
PACES = ("normal", "slow")
# Files in ivr_flows/ that are not phone flows.
NOT_FLOWS = frozenset({"categories", "matching", "places", "points", "queue"})


class FlowError(ValueError):
    """A flow file is missing, malformed, or refers to something that does not exist."""


class UnknownFlowLanguage(FlowError):
    """No flow file exists for that language."""


@dataclass(frozen=True)
class Menu:
    """One menu: what it says, and where yes, no, other keys and silence lead."""

    name: str
    prompt: str
    yes: str | None
    no: str | None
    on_silence: str
    # Keys beyond the contract's (e.g. 3), each with one meaning wherever it is offered.
    keys: dict = field(default_factory=dict)

    def action_for(self, meaning):
        """Return the action a meaning leads to in this menu, or None."""
        return {"yes": self.yes, "no": self.no}.get(meaning)


@dataclass(frozen=True)
class Timing:
    """How long the phone waits, and how often it asks again."""

    gather_seconds: int
    record_silence_seconds: int
    silence_retries: int
    poll_seconds: int
    poll_limit: int


@dataclass(frozen=True)
class Flow:
    """Everything a caller hears in one language, and where each key leads."""

    language: str
    name: str
    voice: str
    say_language: str
    select_key: str | None
    select_prompt: str | None
    pace: dict
    timing: Timing
    words: dict
    menus: dict
    prompts: dict
    status: dict
    sms: dict = field(default_factory=dict)  # offers to volunteers, their answers and keywords
    # Categories whose goodbye carries the "in danger or hurt" advice.
    danger_advice_categories: tuple = ()

    def prompt(self, key, **values):
        """Return a prompt's words with its placeholders filled in."""
        try:
            text = self.prompts[key]
        except KeyError:
            raise FlowError(f"flow {self.language!r} has no prompt {key!r}") from None
        return fill(text, **values) if values else text

    def menu(self, name):
        """Return a menu by name."""
        try:
            return self.menus[name]
        except KeyError:
            raise FlowError(f"flow {self.language!r} has no menu {name!r}") from None

    def rate(self, pace):
        """Return the SSML prosody rate for a caller's pace."""
        return self.pace.get(pace) or self.pace["normal"]

    def meaning_of_word(self, phrase):
        """Return what a recognised spoken answer means (yes, no, repeat, person), or None."""
        phrase = (phrase or "").strip().lower()
        for meaning, phrases in self.words.items():
            if phrase in phrases:
                return meaning
        return None

    def vocabulary(self):
        """Return every spoken answer this flow understands."""
        return [phrase for phrases in self.words.values() for phrase in phrases]


def parse_flow(data, source="<flow>"):
    """Build a Flow from a parsed TOML document, checking it refers only to what exists."""
    try:
        menus = {
            name: Menu(
                name=name,
                prompt=menu["prompt"],
                yes=menu.get("yes"),
                no=menu.get("no"),
                on_silence=menu.get("on_silence", "voicemail"),
                keys=dict(menu.get("keys", {})),
            )
            for name, menu in data["menus"].items()
        }
        flow = Flow(
            language=data["language"],
            name=data["name"],
            voice=data["voice"],
            say_language=data["say_language"],
            select_key=data.get("select_key"),
            select_prompt=data.get("select_prompt"),
            pace=dict(data["pace"]),
            timing=Timing(**data["timing"]),
            words={m: tuple(p.lower() for p in data["words"].get(m, ())) for m in MEANINGS},
            menus=menus,
            prompts=dict(data["prompts"]),
            status=dict(data.get("status", {})),
            sms=dict(data.get("sms", {})),
            danger_advice_categories=tuple(data.get("danger_advice_categories", ())),
        )
    except (KeyError, TypeError) as exc:
        raise FlowError(f"{source}: missing or malformed {exc}") from None
    for menu in menus.values():
        for key in menu.keys:
            if key in KEYS or key == flow.select_key or len(key) != 1 or key not in "3456789#":
                raise FlowError(f"{source}: menu {menu.name!r} key {key!r} is not free to use")
        for target in (menu.yes, menu.no, menu.on_silence, *menu.keys.values()):
            if target is not None and target not in ACTIONS:
                raise FlowError(f"{source}: menu {menu.name!r} leads to unknown {target!r}")
        if menu.prompt not in flow.prompts:
            raise FlowError(f"{source}: menu {menu.name!r} says missing prompt {menu.prompt!r}")
    if "normal" not in flow.pace:
        raise FlowError(f"{source}: [pace] needs a 'normal' rate")
    if flow.select_key in KEYS:
        raise FlowError(f"{source}: select_key {flow.select_key!r} is taken by the key contract")
    if flow.timing.record_silence_seconds < 5:
        raise FlowError(f"{source}: record_silence_seconds must be at least 5; seniors pause")
    return flow


@lru_cache(maxsize=32)
def load_flow(flows_dir, language):
    """Load and check the flow for a language from flows_dir, once."""
    path = Path(flows_dir) / f"{language}.toml"
    if language in NOT_FLOWS or not path.is_file():
        raise UnknownFlowLanguage(f"no phone flow for language {language!r} in {flows_dir}")
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise FlowError(f"{path}: {exc}") from None
    flow = parse_flow(data, str(path))
    if flow.language != language:
        raise FlowError(f"{path} says language {flow.language!r}, not {language!r}")
    return flow


@lru_cache(maxsize=8)
def available_languages(flows_dir):
    """Return the languages that have a phone flow file, sorted (read once, like the flows)."""
    return tuple(sorted(p.stem for p in Path(flows_dir).glob("*.toml") if p.stem not in NOT_FLOWS))
