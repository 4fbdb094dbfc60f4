"""What the kiosk says, per language: one TOML file per language in app/kiosk/languages/."""

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

LANGUAGES_DIR = Path(__file__).resolve().parent / "languages"
SECTIONS = ("screens", "speech", "readback", "problems")


class UnknownKioskLanguage(LookupError):
    """There is no kiosk wording file for the language."""


class WordingError(ValueError):
    """A kiosk wording file is missing a section or a key the page needs."""


@dataclass(frozen=True)
class Wording:
    """Every sentence the kiosk shows or speaks in one language."""

    language: str
    screens: MappingProxyType
    speech: MappingProxyType
    readback: MappingProxyType
    problems: MappingProxyType
    voice: MappingProxyType  # espeak-ng voice and rate for tablets with no voice of their own

    def for_page(self):
        """Return the sentences the page's script needs, as a JSON-ready dict."""
        return {
            "speech": dict(self.speech),
            "problems": dict(self.problems),
            "screens": dict(self.screens),
        }


def available(directory=LANGUAGES_DIR):
    """Return the language codes that have kiosk wording."""
    return sorted(path.stem for path in Path(directory).glob("*.toml"))


@lru_cache(maxsize=16)
def load(language, directory=LANGUAGES_DIR):
    """Load the kiosk wording for a language."""
    path = Path(directory) / f"{language}.toml"
    if not path.is_file() or "/" in language or language.startswith("."):
        raise UnknownKioskLanguage(f"no kiosk wording for language {language!r}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    reference = _reference_keys(directory, language)
    sections = {}
    for section in SECTIONS:
        table = data.get(section)
        if not isinstance(table, dict):
            raise WordingError(f"{path.name}: missing [{section}]")
        missing = reference.get(section, set()) - set(table)
        if missing:
            raise WordingError(f"{path.name}: [{section}] lacks {', '.join(sorted(missing))}")
        sections[section] = MappingProxyType({k: str(v) for k, v in table.items()})
    voice = {"espeak": language, "rate": 140} | data.get("voice", {})
    return Wording(language=language, voice=MappingProxyType(voice), **sections)


def _reference_keys(directory, language):
    """Return the keys English defines, which every other language must define too."""
    if language == "en":
        return {}
    english = tomllib.loads((Path(directory) / "en.toml").read_text(encoding="utf-8"))
    return {section: set(english.get(section, {})) for section in SECTIONS}
